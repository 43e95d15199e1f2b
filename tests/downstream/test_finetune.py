from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from geosane.downstream import (
    ArchConfig,
    DataConfig,
    FinetuneConfig,
    TaskConfig,
    build_task_model,
    finetune,
    load_task_data,
)
from geosane.downstream.finetuning import initialization_from_source
from geosane.errors import GeosaneError, Interrupted
from geosane.tasks import FitConfig, evaluate
from tests.conftest import REPO_ROOT, run_cli

TINY = [
    "arch.name=test_resnet",
    "data.image_size=32",
    "data.train_per_class=4",
    "data.max_samples.select=14",
    "data.max_samples.test=28",
    "train.epochs=2",
    "train.batch_size=14",
    "train.lr=0.003",
]


def run_cli_subprocess(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "geosane", *args], cwd=REPO_ROOT, capture_output=True, text=True, env=env
    )


def _files(path: Path) -> dict[str, int]:
    return {str(p.relative_to(path)): p.stat().st_mtime_ns for p in path.rglob("*")} if path.exists() else {}


def test_finetune_cli_on_rsscn7_writes_metrics_history_weights_and_skips_a_rerun(
    rsscn7_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    args = ["finetune", "rsscn7", *TINY, "--data", str(rsscn7_root), "--init", "scratch", "--out", str(out)]
    done = run_cli_subprocess(*args, "--json")  # the real entry point, in a fresh interpreter
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["metric"] == "accuracy" and metrics["sizes"] == {"train": 28, "select": 14, "test": 28}
    assert printed["test"] == metrics["test"] and 0.0 <= metrics["test"] <= 1.0
    history = (out / "history.csv").read_text().splitlines()
    assert history[0] == "epoch,train_loss,lr,select_accuracy" and len(history) == 3
    assert not (out / "checkpoint.ckpt").exists() and not (out / "run.json").exists()
    # the saved weights are the fine-tuned classifier: they reproduce the reported test accuracy
    with safe_open(out / "weights.safetensors", "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["classes"])[0] == "aGrass" and json.loads(meta["arch"])["name"] == "test_resnet"
    config = FinetuneConfig(
        arch=ArchConfig(name="test_resnet"),
        data=DataConfig(
            root=rsscn7_root, image_size=32, train_per_class=4, max_samples={"select": 14, "test": 28}
        ),
    )
    data = load_task_data(config.data)
    model = build_task_model(initialization_from_source("scratch", config.arch), data, TaskConfig())
    model.load_state_dict(load_file(out / "weights.safetensors"))
    assert evaluate(model, "classification", 7, data.test)["accuracy"] == pytest.approx(metrics["test"])

    before = _files(out)
    code, _, err = run_cli(capsys, *args)
    assert code == 0 and "already finished" in err
    assert _files(out) == before
    code, _, err = run_cli(capsys, *[a if a != "train.epochs=2" else "train.epochs=3" for a in args])
    assert code == 2 and "other settings" in err and "--overwrite" in err
    assert _files(out) == before


def test_finetune_cli_segments_csmask_chips_and_scores_miou_without_ignored_pixels(
    mini_csmask: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "seg"
    code, _, err = run_cli(
        capsys,
        "finetune", "csmask", "--data", str(mini_csmask), "--init", "scratch", "--out", str(out),
        "arch.name=test_resnet", "data.chip_size=32", "data.group_by=scene", "data.test_scenes=[]",
        "task.decoder_channels=8", "train.epochs=2", "train.batch_size=8", "train.lr=0.003",
    )  # fmt: skip
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "segmentation" and metrics["metric"] == "miou"
    data = load_task_data(DataConfig(kind="csmask", root=mini_csmask, chip_size=32, group_by="scene"))
    assert len({tuple(v) for v in data.info["scenes"].values()}) == 3  # one scene per split
    init = initialization_from_source("scratch", ArchConfig(name="test_resnet"))
    model = build_task_model(init, data, TaskConfig(decoder_channels=8))
    model.load_state_dict(load_file(out / "weights.safetensors"))
    model.eval()
    with torch.no_grad():
        images = torch.stack([data.test[i][0] for i in range(len(data.test))])
        target = torch.stack([data.test[i][1] for i in range(len(data.test))])
        pred = model(images).argmax(1)
    valid = target != 255
    assert (~valid).any()  # the test scene has ignored pixels
    ious = []
    for c in range(3):  # mIoU by hand over labelled pixels, classes present in prediction or target
        inter = ((pred == c) & (target == c) & valid).sum().item()
        union = (((pred == c) | (target == c)) & valid).sum().item()
        if union:
            ious.append(inter / union)
    assert metrics["test"] == pytest.approx(float(np.mean(ious)), abs=1e-5)
    counted = target.clone()
    counted[~valid] = 0  # scoring ignored pixels as "clear" changes the number
    wrong = []
    for c in range(3):
        inter = ((pred == c) & (counted == c)).sum().item()
        union = ((pred == c) | (counted == c)).sum().item()
        if union:
            wrong.append(inter / union)
    assert float(np.mean(wrong)) != pytest.approx(metrics["test"], abs=1e-4)


class _Interrupt(L.Callback):
    """Simulates Ctrl-C at batch ``batch`` of epoch ``epoch`` (0-based)."""

    def __init__(self, epoch: int, batch: int = 0) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: object, idx: int) -> None:
        if trainer.current_epoch == self.epoch and idx == self.batch:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_ctrl_c_leaves_a_resumable_run_and_says_how_to_resume(rsscn7_root: Path, tmp_path: Path) -> None:
    """SIGINT to a real `geosane finetune` after its first epoch: rc 130, one line, a rerun finishes it."""
    out = tmp_path / "run"
    args = ["finetune", "rsscn7", *TINY, "train.epochs=100", "--data", str(rsscn7_root), "--init", "scratch",
            "--out", str(out)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "COLUMNS": "400"}
    # the user's shell delivers Ctrl-C: a child inherits an *ignored* SIGINT from its parent, and
    # something in a long pytest session may leave it ignored, so the child starts with the default
    inherited = signal.getsignal(signal.SIGINT)
    proc = subprocess.Popen(
        [sys.executable, "-m", "geosane", *args], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.ckpt").is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, f"parent's SIGINT handler {inherited!r}; {err}"
    lines = [line for line in err.splitlines() if line.strip() and "Detected KeyboardInterrupt" not in line]
    assert lines[-1].startswith("interrupted: the last finished epoch is saved in") and "Traceback" not in err
    assert lines[-1].endswith("rerun the same command to resume")
    assert (out / "checkpoint.ckpt").is_file() and not (out / "metrics.json").exists()
    done = run_cli_subprocess(*args)
    assert done.returncode == 0 and "resuming the interrupted run" in done.stderr, done.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed"] and len((out / "history.csv").read_text().splitlines()) == 1 + 100


def _resume_config(root: Path, out: Path) -> FinetuneConfig:
    return FinetuneConfig(
        init="scratch",
        arch=ArchConfig(name="test_resnet"),
        data=DataConfig(root=root, image_size=32, train_per_class=4, max_samples={"select": 7, "test": 14}),
        train=FitConfig(epochs=3, batch_size=7, lr=0.003),  # 4 batches per epoch, augmentation on
        out=out,
    )


@pytest.mark.parametrize(("epoch", "batch"), [(1, 0), (1, 2), (2, 3)])
def test_interrupted_finetune_resumes_bitwise(rsscn7_root: Path, tmp_path: Path, epoch: int, batch: int) -> None:
    """Ctrl-C at an epoch start or mid-epoch, then a rerun: the same history and weights, bit for bit."""
    reference = finetune(_resume_config(rsscn7_root, tmp_path / "reference"), show_progress=False)
    config = _resume_config(rsscn7_root, tmp_path / "resumed")
    with pytest.raises(Interrupted, match="rerun the same command to resume"):
        finetune(config, show_progress=False, callbacks=[_Interrupt(epoch, batch)])
    assert (config.out / "checkpoint.ckpt").is_file() and not (config.out / "metrics.json").exists()
    interrupted = torch.load(config.out / "checkpoint.ckpt", weights_only=True)
    assert interrupted["epoch"] == epoch - 1 and len(interrupted["geosane_history"]) == epoch  # last finished
    result = finetune(config, show_progress=False)
    assert result.history == reference.history  # losses, lr and select metric of every epoch
    assert (result.select, result.test) == (reference.select, reference.test)
    got, want = load_file(config.out / "weights.safetensors"), load_file(tmp_path / "reference" / "weights.safetensors")
    assert list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert not (config.out / "checkpoint.ckpt").exists() and (config.out / "metrics.json").is_file()


def _image_folder(root: Path, classes: dict[str, int]) -> Path:
    from PIL import Image

    for cls, count in classes.items():
        (root / cls).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (16, 16), (i * 20, 40, 90)).save(root / cls / f"{i}.png")
    return root


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("test_classes", "class folders differ between training data"),
        ("select_small", "has 2 image(s) for 3 classes"),
        ("arch_mismatch", "not the compared architecture"),
        ("missing_init", "model file not found"),
        ("scratch_no_arch", "init=scratch needs the architecture"),
        ("no_data", "data.root is not set"),
        ("typo", "did you mean 'train.epochs'"),
        ("bad_generated", "is not a `geosane generate` output directory"),
    ],
)
def test_finetune_bad_input_fails_clearly_and_writes_nothing(
    tmp_path: Path,
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
    case: str,
    message: str,
) -> None:
    train = _image_folder(tmp_path / "train", {"a": 5, "b": 5, "c": 5})
    out = tmp_path / "out"
    args = [
        "finetune",
        "rsscn7",
        "--out",
        str(out),
        "--data",
        str(train),
        "data.image_size=16",
        "arch.name=test_resnet",
    ]
    extra = {
        "test_classes": ["--test-data", str(_image_folder(tmp_path / "test", {"a": 2, "b": 2, "x": 2}))],
        "select_small": ["--select-data", str(_image_folder(tmp_path / "sel", {"a": 1, "b": 1}))],
        "arch_mismatch": [
            "--init",
            str(request.getfixturevalue("generated_dir")),
            "arch.name=test_efficientnet",
        ]
        if case == "arch_mismatch"
        else [],
        "missing_init": ["--init", str(tmp_path / "nope.safetensors")],
        "scratch_no_arch": ["--init", "scratch"],
        "no_data": ["data.root=null"],
        "typo": ["train.epoch=3"],
        "bad_generated": ["--init", str(tmp_path / "train")],
    }[case]
    if case == "select_small":
        (tmp_path / "sel" / "c").mkdir()
    if case == "bad_generated":
        (tmp_path / "train" / "candidate_1.safetensors").touch()
        extra = ["--init", str(tmp_path / "train" / "candidate_1.safetensors")]
        (tmp_path / "train" / "model_card.json").write_text("{}")
        message = "'arch' must be"
    if case == "no_data":
        args = [a for a in args if a not in ("--data", str(train))]
    if case == "scratch_no_arch":
        config = tmp_path / "no_arch.yaml"
        config.write_text("data: {kind: folder}\n")
        args = [a if a != "rsscn7" else str(config) for a in args if a != "arch.name=test_resnet"]
    code, _, err = run_cli(capsys, *args, *extra)
    assert code == 2, err
    assert message in " ".join(err.split()) and "Traceback" not in err
    assert not out.exists()


def test_finetune_from_a_generated_candidate_loads_its_weights(
    rsscn7_root: Path, generated_dir: Path
) -> None:
    init = initialization_from_source(str(generated_dir / "candidate_2.safetensors"), ArchConfig())
    assert init.arch.name == "test_resnet" and init.state_dict is not None
    data = load_task_data(
        DataConfig(root=rsscn7_root, image_size=32, train_per_class=1, max_samples={"select": 7, "test": 7})
    )
    model = build_task_model(init, data, TaskConfig())
    torch.testing.assert_close(model.conv1[0].weight, init.state_dict["conv1.0.weight"])
    assert model.get_classifier().out_features == 7
    # a fitting head of the weights is replaced by a fresh one (seeded) unless reset_head is off
    assert not torch.equal(model.fc.weight, init.state_dict["fc.weight"])
    torch.manual_seed(5)
    first = build_task_model(init, data, TaskConfig()).fc.weight
    torch.manual_seed(5)
    assert torch.equal(build_task_model(init, data, TaskConfig()).fc.weight, first)
    kept = build_task_model(init, data, TaskConfig(reset_head=False))
    assert torch.equal(kept.fc.weight, init.state_dict["fc.weight"])
    with pytest.raises(GeosaneError, match="weights do not fit"):
        bad = dict(init.state_dict)
        bad["conv1.0.weight"] = torch.zeros(3, 3, 5, 5)
        build_task_model(type(init)("x", "source", init.arch, bad, "x"), data, TaskConfig())


def test_bench_finetune_reports_wall_time_per_run(
    rsscn7_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["bench", "finetune", "rsscn7", "--data", str(rsscn7_root), "init=scratch", *TINY, "--json"]
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    record = json.loads(out)
    assert record["sizes"] == {"train": 28, "select": 14, "test": 28} and len(record["run_s"]) == 1
    assert record["run_s"][0] > 0 and record["train_images_per_s"] > 0 and "accuracy" in record["last_metric"]
    assert not any(tmp_path.iterdir())  # a benchmark writes nothing


def test_finetune_bad_input_is_one_line_and_writes_nothing(
    rsscn7_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A one-class folder, a negative lr and a user's folder as --out: rc 2, one line, nothing written."""
    one_class = _image_folder(tmp_path / "one", {"only": 6})
    out = tmp_path / "out"
    cases = [
        (["--data", str(one_class)], "has 1 class folder(s) (only); classification needs at least 2"),
        (["--data", str(rsscn7_root), "train.lr=-1"], "train.lr must be a positive number, got -1"),
        (["--data", str(rsscn7_root), "train.epochs=0"], "train.epochs must be >= 1, got 0"),
    ]
    for args, message in cases:
        code, _, err = run_cli(capsys, "finetune", "rsscn7", *TINY, *args, "--init", "scratch", "--out", str(out))
        assert code == 2 and message in " ".join(err.split()), err
        assert not out.exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    code, _, err = run_cli(capsys, "finetune", "rsscn7", *TINY, "--data", str(rsscn7_root), "--out", str(mine))
    assert code == 2 and "geosane did not write it (holds notes.txt)" in " ".join(err.split())
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    code, _, err = run_cli(capsys, "finetune", "rsscn7", *TINY, "--data", str(rsscn7_root), "--out", str(rsscn7_root))
    assert code == 2 and "is or holds this run's input data.root" in " ".join(err.split())
