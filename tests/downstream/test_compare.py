from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors.torch import load_file

from geosane.downstream import compare, load_compare_config, run_compare, ties_merge
from geosane.downstream.report import InitSummary, verdict
from geosane.errors import Interrupted
from geosane.zoo import Zoo
from tests.conftest import REPO_ROOT, run_cli

from .downstream_fakes import ARCH, write_generated_dir

TINY = [
    "seeds=[0, 1]",
    "data.image_size=16",
    "data.train_per_class=3",
    "data.max_samples.select=14",
    "data.max_samples.test=28",
    "train.epochs=1",
    "train.batch_size=21",
    "arch.name=test_resnet",
    "generated.top_k=2",
]


def _setup(tmp_path: Path, tiny_zoo: Path) -> Path:
    return write_generated_dir(tmp_path / "generated", prompt=f"zoo:{tiny_zoo}#base")


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("metrics.json")}


def test_compare_runs_every_initialization_and_writes_report_csv_plots(
    rsscn7_root: Path, tiny_zoo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    generated = _setup(tmp_path, tiny_zoo)
    out = tmp_path / "cmp"
    args = ["compare", "compare_rsscn7", *TINY, "--data", str(rsscn7_root), "--zoo", str(tiny_zoo)]
    args += ["--generated", str(generated), "--out", str(out)]
    code, _, err = run_cli(capsys, *args)
    assert code == 0, err
    names = ["scratch", "prompt", "zoo_average", "ties", "dare", "generated-1", "generated-2"]
    with open(out / "results.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [(r["init"], r["seed"]) for r in rows] == [(n, str(s)) for n in names for s in (0, 1)]
    assert all(r["test_accuracy"] and r["select_accuracy"] for r in rows)  # one epoch: last row of each run
    runs = [json.loads(p.read_text()) for p in sorted(out.glob("runs/*/seed*/metrics.json"))]
    assert len(runs) == 14 and len({(r["epochs"], json.dumps(r["sizes"])) for r in runs}) == 1  # same budget
    report = (out / "report.md").read_text()
    for name in names:
        assert f"| {name} |" in report
    assert "## Verdict" in report and "target" in report and "test fixture" in report
    for png in ("curves.png", "final_metric.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the TIES initialization really is the TIES merge of the zoo members over the recorded base
    zoo = Zoo(tiny_zoo)
    expected = ties_merge(
        zoo.load_state_dict("base"), [zoo.load_state_dict(f"member-{i}") for i in range(3)], density=0.2
    ).state_dict
    saved = load_file(out / "inits" / "ties.safetensors")
    assert all(torch.equal(saved[k], expected[k]) for k in expected)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["verdict"].startswith("Generated weights (rank-1 candidate)")
    assert [s["name"] for s in summary["inits"]] == names

    before = _mtimes(out)
    code, _, err = run_cli(capsys, *args)  # rerun: every finished run is skipped
    assert code == 0 and "0 run(s) to do, 14 finished" in " ".join(err.split())
    assert _mtimes(out) == before
    code, _, err = run_cli(capsys, *[a if a != "train.epochs=1" else "train.epochs=2" for a in args])
    assert code == 2 and "other settings" in err and _mtimes(out) == before


class _InterruptSecondRun(L.Callback):
    """Simulates a killed `compare` in the second epoch of its second run."""

    def __init__(self) -> None:
        self.runs = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.runs += 1

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.runs == 2 and trainer.current_epoch == 1:
            raise KeyboardInterrupt


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("test_curve", [False, True])
def test_an_interrupted_compare_resumes_and_records_wall_time(
    rsscn7_root: Path, tiny_zoo: Path, tmp_path: Path, test_curve: bool
) -> None:
    out = tmp_path / "cmp"
    overrides = {
        "seeds": [0], "inits": ["scratch", "zoo_average"], "arch.name": "test_resnet", "zoo.dir": tiny_zoo,
        "data.root": rsscn7_root, "data.image_size": 16, "data.train_per_class": 2,
        "data.max_samples": {"select": 7, "test": 14}, "train.epochs": 2, "train.batch_size": 7, "out": out,
        "test_curve": test_curve,
    }  # fmt: skip
    epochs = [0.0, 1.0, 2.0] if test_curve else [1.0, 2.0]  # the test curve starts at the init itself
    config = load_compare_config("compare_rsscn7", overrides)
    with pytest.raises(Interrupted, match="rerun the same command to resume"):
        compare(config, show_progress=False, callbacks=[_InterruptSecondRun()])
    first, second = out / "runs" / "scratch" / "seed0", out / "runs" / "zoo_average" / "seed0"
    assert (first / "metrics.json").is_file() and not (second / "metrics.json").exists()
    checkpoint = torch.load(second / "checkpoint.ckpt", weights_only=True)
    assert len(checkpoint["geosane_history"]) == len(epochs) - 1 and not (out / "report.md").exists()
    elapsed_before = next(v for v in checkpoint["callbacks"].values() if "elapsed_s" in v)["elapsed_s"]
    before = _mtimes(out)

    result = run_compare("compare_rsscn7", overrides, show_progress=False)  # the demo's entry point
    finished = str(first.relative_to(out) / "metrics.json")
    assert _mtimes(out)[finished] == before[finished]  # the finished run was not redone
    resumed = result.results["zoo_average"][0]
    assert [row["epoch"] for row in resumed.history] == epochs
    assert resumed.history[:-1] == checkpoint["geosane_history"]  # epoch 1 (and 0) were not redone
    metrics = json.loads((second / "metrics.json").read_text())
    assert metrics["resumed"] and metrics["wall_s"] > elapsed_before > 0 and metrics["threads"] == 1
    assert not (second / "checkpoint.ckpt").exists() and result.report == out / "report.md"
    recorded = [json.loads(p.read_text())["wall_s"] for p in out.glob("runs/*/seed0/metrics.json")]
    assert result.report.is_file() and len(result.plots) == 2
    assert result.runs_wall_s == pytest.approx(sum(recorded))
    reference = run_compare("compare_rsscn7", {**overrides, "out": tmp_path / "uninterrupted"}, show_progress=False)
    for init in ("scratch", "zoo_average"):  # the resumed comparison is bitwise the uninterrupted one
        want, got = reference.results[init][0], result.results[init][0]
        assert (got.history, got.select, got.test) == (want.history, want.select, want.test)
    assert "s/run" in result.report.read_text() and "2 fine-tuning runs" in result.report.read_text()


def _folder(root: Path, classes: tuple[str, ...]) -> Path:
    from PIL import Image

    for cls in classes:
        (root / cls).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(root / cls / f"{i}.png")
    return root


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["generated.top_k=5"], "generated.top_k=5 but"),
        (["zoo.dir=null"], "need a zoo: set zoo.dir"),
        (["arch.name=test_efficientnet"], "compare needs one architecture"),
        (["inits=[scratch, ties, soup]"], "unknown init(s) ['soup']"),
        (["seeds=[0, 0]"], "distinct integers"),
        (["zoo.members=[member-0, other-arch]"], "are not timm:test_resnet"),
        (["zoo.exclude=[nobody]"], "no model 'nobody' in zoo"),
        (["--workers", "0"], "'workers' and 'threads_per_worker' must be >= 1"),
        (["--test-data", "{tmp}/test"], "class folders differ between training data"),
        (["--generated", "{tmp}/train"], "is not a `geosane generate` output directory"),
        (["--zoo", "{tmp}/train"], "is not a zoo (no manifest.json)"),
    ],
)
def test_compare_bad_input_fails_clearly_and_writes_nothing(
    tmp_path: Path, tiny_zoo: Path, capsys: pytest.CaptureFixture[str], overrides: list[str], message: str
) -> None:
    generated = _setup(tmp_path, tiny_zoo)
    train = _folder(tmp_path / "train", ("a", "b"))
    _folder(tmp_path / "test", ("a", "c"))
    out = tmp_path / "cmp"
    overrides = [o.format(tmp=tmp_path) for o in overrides]
    args = ["compare", "compare_rsscn7", "data.image_size=16", "arch.name=test_resnet", "train.epochs=1"]
    args += ["--data", str(train), "--out", str(out)]
    if "--generated" not in overrides:
        args += ["--generated", str(generated)]
    if "zoo.dir=null" not in overrides and "--zoo" not in overrides:
        args += ["--zoo", str(tiny_zoo)]
    code, _, err = run_cli(capsys, *args, *overrides)
    assert code == 2, err
    assert message in " ".join(err.split()) and "Traceback" not in err
    assert not out.exists()


def test_ties_and_dare_need_a_base(tmp_path: Path, tiny_zoo: Path) -> None:
    zoo = Zoo(tiny_zoo)
    for entry in zoo.entries:
        entry.metadata.pop("init_from", None)
    zoo.save()
    config = load_compare_config(
        "compare_rsscn7",
        [
            "inits=[zoo_average, ties]",
            "arch.name=test_resnet",
            f"zoo.dir={tiny_zoo}",
            "data.root=/nonexistent",
            f"out={tmp_path / 'o'}",
        ],
    )
    from geosane.downstream import build_initializations
    from geosane.errors import GeosaneError

    with pytest.raises(GeosaneError, match="TIES/DARE need the shared base"):
        build_initializations(config)
    config.zoo.base = "base"
    _, inits = build_initializations(config)
    assert [i.name for i in inits] == ["zoo_average", "ties"]
    assert inits[1].info["members"] == ["member-0", "member-1", "member-2"]  # base and other-arch excluded


def test_verdict_is_honest_whatever_the_numbers() -> None:
    def s(name: str, kind: str, mean: float, std: float = 0.01) -> InitSummary:
        return InitSummary(name, kind, "", mean, std, mean, std, [mean], 1.0)

    losing = verdict(
        [s("scratch", "scratch", 0.60), s("ties", "ties", 0.75), s("generated-1", "generated", 0.65)],
        "accuracy",
    )
    assert "+5.0 points vs scratch" in losing and "does NOT meet" in losing and "does NOT beat TIES" in losing
    assert "Not compared: the zoo average, DARE, the prompt" in losing
    winning = verdict(
        [
            s("scratch", "scratch", 0.50),
            s("zoo_average", "zoo_average", 0.70),
            s("generated-1", "generated", 0.72, 0.05),
        ],
        "accuracy",
    )
    assert (
        "+22.0 points vs scratch" in winning
        and "which meets" in winning
        and "beats the zoo average (70.0, +2.0) within seed noise" in winning
    )
    assert "No generated initialization" in verdict([s("scratch", "scratch", 0.5)], "accuracy")
    assert ARCH.name == "test_resnet"


@pytest.mark.slow
def test_parallel_workers_give_the_same_results_as_one_process(
    rsscn7_root: Path, tiny_zoo: Path, tmp_path: Path
) -> None:
    overrides = [*TINY, "inits=[scratch, ties]", f"zoo.dir={tiny_zoo}", f"data.root={rsscn7_root}"]
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = compare(load_compare_config("compare_rsscn7", [*overrides, f"out={tmp_path / 'one'}"]))
    finally:
        torch.set_num_threads(previous)
    two = compare(
        load_compare_config(
            "compare_rsscn7", [*overrides, f"out={tmp_path / 'two'}", "workers=2", "threads_per_worker=1"]
        )
    )
    for name in ("scratch", "ties"):
        assert [r.test for r in one.results[name]] == [r.test for r in two.results[name]]
        assert [r.history for r in one.results[name]] == [r.history for r in two.results[name]]


_ORPHAN = """
import os, sys, time, multiprocessing
from concurrent.futures import ProcessPoolExecutor
from geosane.downstream.comparison import _worker_setup

if __name__ == "__main__":
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(1, mp_context=context, initializer=_worker_setup, initargs=(1, os.getpid()))
    print(pool.submit(os.getpid).result(), flush=True)
    pool.submit(time.sleep, 600)  # a long run in progress when the parent is killed
    time.sleep(0.5)
    os.kill(os.getpid(), 9)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in state  # a zombie has ended (nobody reaped it yet)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads process states from /proc")
def test_compare_workers_end_when_their_parent_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "orphan.py"
    script.write_text(_ORPHAN)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    log = tmp_path / "log.txt"
    with open(log, "w") as out:  # a file, not a pipe: an orphan would hold a pipe open
        done = subprocess.run([sys.executable, str(script)], stdout=out, stderr=out, env=env, timeout=120)
    assert done.returncode == -9, log.read_text()[-2000:]
    worker = int(log.read_text().split()[0])
    deadline = time.monotonic() + 15
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = _alive(worker)
    if alive:
        os.kill(worker, 9)
    assert not alive, "the compare worker went on running after its parent was killed"
