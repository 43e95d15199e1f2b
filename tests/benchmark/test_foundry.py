"""``geosane bench foundry``: the source/target split, the leakage check, bad input, and (slow) a
whole tiny benchmark that resumes to the same numbers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from geosane.benchmark.foundry import (
    FoundryBenchConfig,
    _check_leakage,
    load_bench_config,
    run_foundry_bench,
    split_source_target,
)
from geosane.config import save_config
from geosane.errors import ConfigError, GeosaneError
from geosane.zoo import build_zoo
from tests.conftest import REPO_ROOT, run_cli

S1 = ["aGrass", "bField", "cIndustry", "dRiverLake"]
S2 = ["eForest", "fResident", "gParking", "aGrass"]
S4 = ["cIndustry", "dRiverLake", "eForest", "gParking"]
QUARTER = {"name": "resnet18", "kwargs": {"channels": [16, 32, 64, 128]}}


def _recipe(path: Path, members: list[dict[str, object]]) -> Path:
    recipe = {
        "name": path.stem, "dataset": "unused", "image_size": 16, "num_threads": 1,
        "fractions": {"train": 0.7, "select": 0.15, "test": 0.15},
        "defaults": {"epochs": 1, "lr": 0.003, "batch_size": 64}, "members": members,
    }  # fmt: skip
    path.write_text(yaml.safe_dump(recipe))
    return path


def _tiny_config(tmp_path: Path, data: Path, extra: tuple[str, ...] = ()) -> FoundryBenchConfig:
    zoo = _recipe(tmp_path / "source.yaml", [
        {"name": "q-base", "arch": QUARTER, "seed": 1, "classes": S1},
        {"name": "q-ft", "init_from": "q-base", "seed": 2, "classes": S2},
        {"name": "h-s1", "arch": {"name": "resnet18", "kwargs": {"channels": [32, 64, 128, 256]}}, "seed": 3, "classes": S1},
    ])  # fmt: skip
    prompts = _recipe(
        tmp_path / "prompts.yaml", [{"name": "prompt-a", "arch": QUARTER, "seed": 4, "classes": S4}]
    )
    return load_bench_config("quick", [
        f"out={tmp_path / 'bench'}", f"data={data}", "image_size=16", f"zoo_recipe={zoo}",
        f"prompts_recipe={prompts}", "cases=[{name: a, prompt: prompt-a, description: in the zoo}]",
        "autoencoder.train.max_steps=6", "autoencoder.train.ckpt_every=3", "autoencoder.train.val_every=3",
        "budget.seeds=[0]", *extra,
    ])  # fmt: skip


def test_split_keeps_source_and_target_apart_and_is_seeded(rsscn7_root: Path, tmp_path: Path) -> None:
    cfg = FoundryBenchConfig(out=tmp_path / "a", data=rsscn7_root)
    parts = split_source_target(cfg)
    listing = json.loads((cfg.out / "data" / "split.json").read_text())["files"]
    assert sorted(listing) == sorted(p.name for p in rsscn7_root.iterdir())
    for cls, chunks in listing.items():
        names = [n for chunk in chunks.values() for n in chunk]
        assert len(names) == len(set(names)) == 300  # every image in exactly one part
        assert len(chunks["source"]) == 150 and (
            len(chunks["train"]),
            len(chunks["select"]),
            len(chunks["test"]),
        ) == (75, 30, 45)
        for part, folder in parts.items():
            assert sorted(p.name for p in (folder / cls).iterdir()) == sorted(chunks[part])
    again = split_source_target(FoundryBenchConfig(out=tmp_path / "b", data=rsscn7_root))
    assert all(
        sorted(p.name for p in (again[k] / "aGrass").iterdir())
        == sorted(p.name for p in (parts[k] / "aGrass").iterdir())
        for k in parts
    )
    with pytest.raises(ConfigError, match="split with other settings \\(seed"):
        split_source_target(FoundryBenchConfig(out=tmp_path / "a", data=rsscn7_root, split_seed=1))


def test_a_zoo_member_that_saw_target_images_is_refused_by_name(rsscn7_root: Path, tmp_path: Path) -> None:
    cfg = _tiny_config(tmp_path, rsscn7_root)
    parts = split_source_target(cfg)
    leaky = _recipe(tmp_path / "leaky.yaml", [{"name": "leaky", "arch": QUARTER, "seed": 1, "classes": S1}])
    build_zoo(leaky, cfg.out / "zoo", {"dataset": str(parts["test"])})  # trained on the target's test images
    build_zoo(cfg.prompts_recipe, cfg.out / "prompts", {"dataset": str(parts["source"])})
    with pytest.raises(GeosaneError, match="zoo member 'leaky' saw 180 of the target's 1050 images"):
        _check_leakage(cfg, parts)


def test_bad_settings_and_data_are_refused_before_anything_is_written(
    rsscn7_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench"
    for override, message in (
        ("controls=[scratch, nope]", "unknown control(s) ['nope']"),
        ("controls=[scratch, prompt]", "controls must include 'generated'"),
        (
            "levers=[{name: x, settings: {bandwith: 1}}]",
            "lever 'x': unknown generator setting(s) ['bandwith']",
        ),
        ("lever_case=z", "lever_case 'z' is not a prompt case"),
        ("cases=[{name: c, prompt: prompt-a, target: eurosat}]", "case 'c': target 'eurosat' is unknown"),
        ("cases=[{name: c, prompt: prompt-a, target: csmask}]", "case 'c': data: a csmask case needs"),
        (
            "cases=[{name: c, prompt: prompt-a, target: csmask, data: x, budget: {epoch: 1}}]",
            "case 'c': budget: unknown key(s) ['epoch']",
        ),
        (
            f"cases=[{{name: c, prompt: prompt-a, target: csmask, data: {tmp_path}}}] && levers=[]",
            f"case 'c': data={tmp_path} holds no csmask scenes",
        ),
        ("levers=[{name: wide, zoo_recipe: no_such_recipe}]", "lever 'wide': zoo_recipe:"),
        (
            "cases=[{name: u, prompt: p, target: csmask, data: x, compare_preset: nope}]",
            "case 'u': compare_preset 'nope' is not a packaged downstream config",
        ),
        (
            "cases=[{name: u, prompt: p, target: csmask, data: x, compare: {seeds: [1]}}]",
            "case 'u': compare: ['seeds'] are set by the benchmark itself",
        ),
        (
            "cases=[{name: a, prompt: prompt-a, zoo: [x]}]",
            "case 'a': zoo / autoencoder: a case zoo is for csmask cases",
        ),
        (
            "cases=[{name: u, prompt: p, target: csmask, data: x, autoencoder: {train.max_steps: 5}}]",
            "case 'u': autoencoder: needs the case's own zoo",
        ),
        ("cases=[{name: u, prompt: p, target: csmask, data: x, zoo: [m, m]}]", "case 'u': zoo: sources repeat"),
        (
            "cases=[{name: u, prompt: p, target: csmask, data: x, generator: {anchor: 1}}]",
            "case 'u': generator: unknown setting(s) ['anchor']",
        ),
        (
            "levers=[{name: x, settings: {anchors: 0}}] && lever_case=c && "
            "cases=[{name: c, prompt: prompt-a, target: csmask, data: x}]",
            "lever_case 'c' must be an rsscn7 case",
        ),
    ):
        code, _, err = run_cli(
            capsys,
            "bench",
            "foundry",
            "--quick",
            "--data",
            str(rsscn7_root),
            "--out",
            str(out),
            *override.split(" && "),
        )
        assert code == 2 and message in " ".join(err.split()), err
        assert not out.exists()
    code, _, err = run_cli(
        capsys, "bench", "foundry", "--quick", "--data", str(tmp_path / "missing"), "--out", str(out)
    )
    assert code == 2 and "is not a directory" in err
    code, _, err = run_cli(capsys, "bench", "foundry", "--quick", "--out", str(out))
    assert code == 2 and "pass the image folder with --data" in err
    assert not out.exists()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "notes.txt").write_text("mine")
    code, _, err = run_cli(
        capsys, "bench", "foundry", "--quick", "--data", str(rsscn7_root), "--out", str(tmp_path / "notes")
    )
    assert code == 2 and (tmp_path / "notes" / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in (tmp_path / "notes").iterdir()) == ["notes.txt"]


@pytest.mark.slow
def test_tiny_benchmark_reports_every_control_and_resumes_to_the_same_numbers(
    rsscn7_root: Path, tmp_path: Path
) -> None:
    cfg = _tiny_config(tmp_path, rsscn7_root)
    result = run_foundry_bench(cfg)
    report = result.report.read_text()
    case = result.summary["cases"][0]
    names = [r["name"] for r in case["rows"]]
    assert names == ["scratch", "prompt", "prompt_noise", "nearest", "reconstruction", "zoo_average", "ties",
                     "dare", "weight_selection", "pruned", "distillation", "generated-1"]  # fmt: skip
    assert case["not_applicable"] == {}  # q-ft has a recorded base; h-s1 is larger than the prompt
    assert "## Generator levers" in report and "(teacher)" in report
    assert sorted(result.summary["teacher"]["fine_tuned"]) == ["h-s1", "q-base", "q-ft"]
    assert case["novelty"][0]["nearest"] in ("q-base", "q-ft")
    for png in ("paired_differences.png", "test_curves.png"):
        assert (cfg.out / png).read_bytes()[:4] == b"\x89PNG"
    # interrupted after the first comparison: drop what came later and rerun
    first = json.loads((cfg.out / "report.json").read_text())
    shutil.rmtree(cfg.out / "levers")
    (cfg.out / "report.md").unlink()
    for run in (cfg.out / "compare" / "a" / "runs" / "generated-1").iterdir():
        (run / "metrics.json").unlink()
    again = run_foundry_bench(cfg)
    second = json.loads((cfg.out / "report.json").read_text())
    assert second["cases"] == first["cases"] and second["levers"] == first["levers"]
    assert again.report.read_text().split("## Plots")[0] == report.split("## Plots")[0]


@pytest.mark.slow
def test_csmask_case_and_zoo_levers_report_and_resume_to_the_same_numbers(
    rsscn7_root: Path, csmask_root: Path, tmp_path: Path
) -> None:
    wide = _recipe(tmp_path / "wide.yaml", [
        {"name": "q-1", "arch": QUARTER, "seed": 5, "classes": S1},
        {"name": "q-2", "arch": QUARTER, "seed": 6, "classes": S2},
        {"name": "e-1", "arch": {"name": "resnet18", "kwargs": {"channels": [8, 16, 32, 64]}}, "seed": 7, "classes": S2},
    ])  # fmt: skip
    pytest.importorskip("ukis_csmask", reason="the csmask extra ships the real U-Nets of case u")
    unets = '["pkg:ukis_csmask/model_6b_l2a.onnx", "pkg:ukis_csmask/model_6b_l1c.onnx"]'
    cfg = _tiny_config(tmp_path, rsscn7_root, (
        "cases=[{name: a, prompt: prompt-a}, {name: c, prompt: prompt-a, target: csmask, in_chans: 6, "
        f"data: {csmask_root}, budget: {{epochs: 1, batch_size: 16}}}}, "
        '{name: u, prompt: "pkg:ukis_csmask/model_6b_l2a.onnx", target: csmask, in_chans: 6, '
        f"data: {csmask_root}, budget: {{epochs: 1, batch_size: 16}}, compare_preset: csmask_unet, zoo: {unets}, "
        "autoencoder: {train.max_steps: 4}, generator: {anchors: 1}}]",
        "controls=[scratch, prompt, prompt_noise, nearest, zoo_average, reconstruction, distillation, generated]",
        f"levers=[{{name: wide, zoo_recipe: {wide}}}, {{name: perm, autoencoder: {{loss.permutation_variants: 2}}}}, "
        "{name: typo, settings: {generate_only: ['no_such_tensor*']}}]",
    ))  # fmt: skip
    result = run_foundry_bench(cfg)
    case = next(c for c in result.summary["cases"] if c["name"] == "c")
    assert case["metric"] == "miou" and case["target"] == "csmask" and case["in_chans"] == 6
    names = [r["name"] for r in case["rows"]]
    assert names[:2] == ["scratch", "prompt"] and names[-1] == "generated-1"
    assert set(case["not_applicable"]) >= {"reconstruction", "distillation"}
    assert "prompt_noise" in names + list(case["not_applicable"]) and "nearest" in names + list(
        case["not_applicable"]
    )
    assert sorted(case["unseen"]["scenes"]) == sorted(p.name for p in csmask_root.glob("*.npz"))
    assert case["unseen"]["zoo_trained_on"] == [str((cfg.out / "data" / "source").resolve())]
    card = json.loads((cfg.out / "generated" / "c" / "model_card.json").read_text())
    assert len(card["candidates"]) == 1  # no ranking: one seeded sample
    unet = next(c for c in result.summary["cases"] if c["name"] == "u")  # the real U-Nets as the case's zoo
    assert unet["case_zoo"]["members"] == 2 and (cfg.out / "cases" / "u" / "tokens" / "index.json").is_file()
    assert unet["prompt"].startswith("zoo:") and unet["prompt"].endswith("#model_6b_l2a")
    rows = {r["name"]: r for r in unet["rows"]}
    assert "model_6b_l1c" in rows["nearest"]["source"]  # the prompt's own weights are passed over
    assert {"zoo_average", "generated-1"} <= set(rows)
    assert unet["case_zoo"]["autoencoder_fit"]["steps"] == 4
    levers = {lever["name"]: lever for lever in result.summary["levers"]}
    assert levers["wide"]["zoo"]["members"] == 3 and (cfg.out / "levers" / "wide" / "tokens").is_dir()
    assert levers["perm"]["autoencoder"] == {"loss.permutation_variants": 2}
    assert "no tensor of the prompt" in levers["typo"]["not_applicable"]
    report = result.report.read_text()
    assert "## Case c:" in report and "csmask was never seen by the zoo" in report
    assert "The case's own zoo of 2 real models" in " ".join(report.split())
    assert "not applicable: the teacher is an RSSCN7 scene classifier" in report
    assert "| typo |  | not applicable: " in report
    first = json.loads((cfg.out / "report.json").read_text())
    shutil.rmtree(cfg.out / "levers" / "wide" / "compare")
    (cfg.out / "report.md").unlink()
    again = run_foundry_bench(cfg)
    second = json.loads((cfg.out / "report.json").read_text())
    assert second["cases"] == first["cases"] and second["levers"] == first["levers"]
    assert again.report.read_text().split("## Plots")[0] == report.split("## Plots")[0]


def test_the_full_config_adds_the_expensive_levers_to_the_default_ones() -> None:
    default = [lever.name for lever in load_bench_config("foundry").levers]
    full = [lever.name for lever in load_bench_config("foundry_full").levers]
    assert "zoo-wide" not in default and "ae-permutation" not in default
    assert full == [*default, "ae-permutation", "zoo-wide"]
    assert load_bench_config("foundry_full").extra_levers == []  # merged once; bench.yaml reloads the same


def _numbers(report: Path) -> dict[str, object]:
    """What a benchmark measured (test and select values of every row, case and lever), no paths."""
    summary = json.loads(report.read_text())
    keys = ("name", "values", "select_mean", "curve", "paired_diffs")
    return {
        "cases": [[{k: row.get(k) for k in keys} for row in case["rows"]] for case in summary["cases"]],
        "levers": [{k: lever.get(k) for k in keys} for lever in summary["levers"]],
        "teacher": {k: (v["select"], v["test"]) for k, v in summary["teacher"]["fine_tuned"].items()},
    }


def _kill_when(args: list[str], env: dict[str, str], pattern: str, root: Path) -> None:
    """Start ``args``; SIGKILL it (no clean-up of any kind) as soon as a file ``pattern`` exists."""
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while not any(root.glob(pattern)):
            assert proc.poll() is None, f"the run ended before {pattern} appeared"
            assert time.monotonic() < deadline, f"{pattern} never appeared"
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow
def test_a_benchmark_killed_in_the_middle_of_stages_resumes_to_the_uninterrupted_numbers(
    rsscn7_root: Path, tmp_path: Path
) -> None:
    """SIGKILL (a power cut, not a clean interruption) in the autoencoder's training, between its
    checkpoints, and in the middle of a comparison; the resumed run measures what a run that was
    never interrupted measures, in another process (nothing may depend on the process)."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "COLUMNS": "200"}
    cfg = _tiny_config(tmp_path, rsscn7_root, ("autoencoder.train.max_steps=40",
                                               "autoencoder.train.ckpt_every=10",
                                               "autoencoder.train.val_every=20"))  # fmt: skip
    config = tmp_path / "bench.yaml"
    save_config(cfg, config)

    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "geosane", "bench", "foundry", "--config", str(config),
                "--data", str(rsscn7_root), "--out", str(out)]  # fmt: skip

    whole = subprocess.run(command(tmp_path / "whole"), env=env, capture_output=True, text=True, timeout=900)
    assert whole.returncode == 0, whole.stderr[-3000:]
    cut = tmp_path / "cut"
    _kill_when(command(cut), env, "autoencoder/checkpoints/step-0000010.ckpt", cut)
    _kill_when(command(cut), env, "compare/a/runs/*/seed0/metrics.json", cut)
    assert not (cut / "report.json").exists()
    again = subprocess.run(command(cut), env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _numbers(cut / "report.json") == _numbers(tmp_path / "whole" / "report.json")
