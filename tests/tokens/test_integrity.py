"""Concurrent writers, `geosane tokens verify` / `zoo verify`, and corrupted token values at load time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from geosane.errors import GeosaneError
from geosane.tokens import TokenStore, tokenize_zoo
from geosane.tokens.store import verify_store
from geosane.zoo import Zoo, verify_zoo
from tests.conftest import REPO_ROOT, run_cli

from .tokens_testutil import timm_model


def _geosane(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "COLUMNS": "300", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "geosane", *args], cwd=REPO_ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def _zoo_of(path: Path, prefix: str, count: int) -> Zoo:
    zoo = Zoo.create(path)
    for i in range(count):
        torch.manual_seed(hash((prefix, i)) % 2**31)
        zoo.add(timm_model("test_resnet", num_classes=3), model_id=f"{prefix}{i}")
    return zoo


@pytest.mark.slow
def test_two_concurrent_tokenize_runs_into_one_store_lose_nothing(tmp_path: Path) -> None:
    """Two real processes tokenize two zoos (4 models each) into one store at once: 8 rows, no orphan."""
    zoos = [_zoo_of(tmp_path / name, name, 4) for name in ("a", "b")]
    store = tmp_path / "store"
    procs = [_geosane("tokenize", "--zoo", str(z.path), "--out", str(store), "--token-size", "64") for z in zoos]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    index = TokenStore(store)
    assert sorted(index.ids) == [f"{p}{i}" for p in "ab" for i in range(4)]
    assert sorted(p.name for p in (store / "tokens").iterdir()) == sorted(f"{i}.safetensors" for i in index.ids)
    assert all(problem is None for _, problem in verify_store(store))


@pytest.mark.slow
def test_three_concurrent_zoo_adds_keep_every_model_with_unique_ids(tmp_path: Path) -> None:
    zoo = tmp_path / "zoo"
    names = ["test_resnet", "test_vit", "test_efficientnet"]
    procs = [_geosane("zoo", "add", f"timm:{n}", "--random-init", "--id", "net", "--zoo", str(zoo)) for n in names]
    outputs = []
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode in (0, 2), err
        outputs.append(" ".join(err.split()))
    added = [o for o in outputs if "added net" in o]
    assert len(added) == 1  # one --id net: the others are refused under the lock, not overwritten
    assert sum("already has a model with id 'net'" in o for o in outputs) == 2
    procs = [_geosane("zoo", "add", f"timm:{n}", "--random-init", "--zoo", str(zoo)) for n in names]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        assert "(1 added by this run)" in " ".join(err.split())
    result = Zoo(zoo)
    assert len(result) == 4 and len(set(result.ids)) == 4
    assert sorted(p.name for p in (zoo / "models").iterdir()) == sorted(f"{i}.safetensors" for i in result.ids)
    assert all(problem is None for _, problem in verify_zoo(zoo))


def _snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(root.rglob("*"))
            if p.is_file()}  # fmt: skip


def test_tokens_verify_reports_every_problem_and_changes_nothing(
    small_zoo: Zoo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json
    import shutil

    store = tmp_path / "store"
    tokenize_zoo(small_zoo, store)
    code, _, err = run_cli(capsys, "tokens", "verify", str(store))
    assert code == 0 and "3 of 3 ok" in err
    first, second, third = TokenStore(store).records
    data = bytearray((store / first.file).read_bytes())
    data[-40:-24] = bytes(b ^ 0xFF for b in data[-40:-24])  # 16 flipped bytes
    (store / first.file).write_bytes(bytes(data))
    index = json.loads((store / "index.json").read_text())
    index["models"][1]["sha256"] = "0" * 64
    index["models"][2]["num_tokens"] += 1
    (store / "index.json").write_text(json.dumps(index))
    before = _snapshot(store)
    code, _, err = run_cli(capsys, "tokens", "verify", str(store))
    text = " ".join(err.split())
    assert code == 1 and "0 of 3 ok, 3 with problems (nothing was changed)" in text
    assert all(r.id in text for r in (first, second, third))
    problems = dict(verify_store(store))
    assert "SHA-256" in problems[first.id] and "is not the recorded 000000000000" in problems[second.id]
    assert f"'{third.id}' has {third.num_tokens} tokens, the index says {third.num_tokens + 1}" in problems[third.id]
    assert _snapshot(store) == before
    shutil.rmtree(store)


def test_nan_tokens_are_refused_at_load_even_without_hash_checks(small_zoo: Zoo, tmp_path: Path) -> None:
    """A token file overwritten with NaN in the exact layout (hashes re-recorded or checks off)."""
    store_dir = tmp_path / "store"
    tokenize_zoo(small_zoo, store_dir)
    record = TokenStore(store_dir).records[0]
    path = store_dir / record.file
    with safe_open(str(path), framework="pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    tensors["tokens"] = torch.full_like(tensors["tokens"], float("nan"))
    save_file(tensors, str(path), metadata=metadata)
    store = TokenStore(store_dir, check_hashes=False)
    with pytest.raises(GeosaneError, match=rf"tokens 0..16 of '{record.id}' .* hold NaN/Inf values"):
        store.read_window(record.id, 0, 16)
    with pytest.raises(GeosaneError, match=rf"the tokens of '{record.id}' .* hold NaN/Inf values"):
        store.load(record.id)
    problems = dict(verify_store(store_dir))
    assert "SHA-256" in (problems[record.id] or "")  # with hashes on, the checksum catches it first


def test_zoo_verify_finds_a_changed_model(small_zoo: Zoo, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    zoo_dir = tmp_path / "zoo"
    shutil.copytree(small_zoo.path, zoo_dir)
    zoo = Zoo(zoo_dir)
    victim = zoo.entries[1]
    weights = zoo.weights_path(victim)
    with safe_open(str(weights), framework="pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    name = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[name] = tensors[name] + 1
    save_file(tensors, str(weights), metadata=metadata)
    (zoo_dir / zoo.entries[2].file).unlink()
    before = _snapshot(zoo_dir)
    code, _, err = run_cli(capsys, "zoo", "verify", "--zoo", str(zoo_dir))
    text = " ".join(err.split())
    assert code == 1 and "1 of 3 ok, 2 with problems" in text and _snapshot(zoo_dir) == before
    problems = dict(verify_zoo(zoo_dir))
    assert "is not the recorded" in problems[victim.id] and "is missing" in problems[zoo.entries[2].id]
