"""Data-parallel training for real: two gloo processes on CPU against one process.

With the same global batch (2 ranks x 4 == 1 rank x 8), the same seed and no noise, DDP must give
the single-process loss curve: the stream sampler hands each rank its slice of the same batches,
and DDP averages the gradients. Only rank 0 writes the run's files.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from geosane.autoencoder.training import read_metrics

pytestmark = pytest.mark.slow

# deterministic: no masking noise, no contrastive head (gamma=0: DDP must find the unused params)
COMMON = [
    "train.progress=false", "model.window=8", "model.d_model=32", "model.n_heads=2", "train.log_every=1",
    "train.val_every=1000", "data.val_fraction=0", "train.max_steps=6", "loss.gamma=0",
    "loss.normalize=token", "loss.multiplicative_noise=0", "loss.additive_noise=0", "train.lr=0.01",
    "train.accelerator=cpu", "train.threads=1",
]


def _train(store: Path, out: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": str(29500 + os.getpid() % 1000)}
    return subprocess.run(
        [sys.executable, "-m", "geosane", "train", "tiny", f"data.store={store}", f"train.out={out}", *COMMON,
         *overrides],
        capture_output=True, text=True, timeout=600, env=env,
    )


def _losses(out: Path) -> list[float]:
    rows = [r for r in read_metrics(out) if "train/loss" in r]
    return [r["train/loss"] for r in sorted(rows, key=lambda r: r["step"])]


def test_ddp_on_two_cpu_processes_matches_one_process(random_store: Path, tmp_path: Path) -> None:
    single = _train(random_store, tmp_path / "single", "data.batch_size=8")
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = _train(random_store, tmp_path / "ddp", "data.batch_size=4", "train.devices=2", "train.strategy=ddp")
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    one, two = _losses(tmp_path / "single"), _losses(tmp_path / "ddp")
    assert len(one) == len(two) == 6
    assert two == pytest.approx(one, rel=1e-5)
    # rank 0 alone wrote: one config, one export, one metrics file, no stray rank-1 folders
    assert (tmp_path / "ddp" / "config.yaml").is_file() and (tmp_path / "ddp" / "autoencoder.safetensors").is_file()
    assert sorted(p.name for p in (tmp_path / "ddp" / "logs").iterdir()) == sorted(
        p.name for p in (tmp_path / "single" / "logs").iterdir()
    )


def test_fsdp_on_cpu_is_refused_in_one_line(random_store: Path, tmp_path: Path) -> None:
    # Lightning's FSDP needs GPUs; on CPU the command says so before writing anything
    run = _train(random_store, tmp_path / "fsdp", "train.devices=2", "train.strategy=fsdp")
    assert run.returncode == 2
    assert "train.strategy=fsdp needs GPUs" in run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "fsdp").exists()
