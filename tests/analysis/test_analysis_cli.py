"""`geosane probe` / `geosane cka` from the command line, on tiny settings."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from geosane.cli import main
from tests.conftest import REPO_ROOT

from .conftest import TINY_VIT, tiny_vit_spec


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(args)
    captured = capsys.readouterr()
    return int(info.value.code or 0), captured.out, captured.err


def _read_csv(path: str) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _probe_yaml(tmp_path: Path, root: Path) -> Path:
    config = {
        "data": {"root": str(root), "image_size": 32, "split": {"train": 0.5, "select": 0.2, "test": 0.3}},
        "models": [
            tiny_vit_spec(name="vit"),
            {"source": "timm:resnet10t", "random_init": True, "name": "r10"},
        ],
        "probe": {"methods": ["ridge"], "fractions": [0.5, 1.0], "seeds": [0]},
        "output_dir": str(tmp_path / "probe"),
    }
    path = tmp_path / "probe.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_probe_command_end_to_end(
    colour_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _probe_yaml(tmp_path, colour_folder)
    code, out, err = _run(["probe", str(config), "probe.seeds=[0,1]", "--json"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["features_computed"] == 18 and summary["probes_fitted"] == 24  # 6 layers x 3 splits
    assert {b["model"] for b in summary["best"]} == {"vit", "r10"}
    rows = _read_csv(summary["csv"])
    assert len(rows) == 24 and {r["layer"] for r in rows if r["model"] == "vit"} == {"blocks.0", "blocks.1"}
    assert Path(summary["plot"]).stat().st_size > 10_000
    assert yaml.safe_load((tmp_path / "probe" / "config.yaml").read_text())["probe"]["seeds"] == [0, 1]


def test_cli_errors_are_one_line_with_exit_status_2(
    colour_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _probe_yaml(tmp_path, colour_folder)
    code, _, err = _run(["probe", str(config), "probe.fractions=[0.01]"], capsys)
    assert code == 2 and "label fraction 0.01 leaves class 'class0' with 0 training samples" in err
    code, _, err = _run(["probe", str(config), "probe.method=[ridge]"], capsys)
    assert code == 2 and "unknown config key 'probe.method'; did you mean 'probe.methods'?" in err
    code, _, err = _run(["probe", "no_such_config.yaml"], capsys)
    assert code == 2 and "packaged analysis configs:" in err and "probe_rsscn7.yaml" in err
    code, _, err = _run(["probe", str(config), "--mode", "decoders"], capsys)
    assert code == 2 and "set task: segmentation" in err
    assert not (tmp_path / "probe").exists()


def test_cka_command_pretrained_vs_perturbed(
    colour_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    from geosane.io import save_safetensors
    from geosane.zoo import ArchSpec, build_architecture

    torch.manual_seed(0)
    model = build_architecture(ArchSpec.from_dict(TINY_VIT))
    save_safetensors(model.state_dict(), tmp_path / "a.safetensors")
    with torch.no_grad():  # "fine-tuning" that only touches the second block's first MLP layer
        model.blocks[1].mlp.fc1.weight.add_(torch.randn_like(model.blocks[1].mlp.fc1.weight))
    save_safetensors(model.state_dict(), tmp_path / "b.safetensors")
    config = {
        "data": {
            "root": str(colour_folder),
            "image_size": 32,
            "split": {"train": 0.5, "select": 0.2, "test": 0.3},
        },
        "model_a": {"source": str(tmp_path / "a.safetensors"), "arch": TINY_VIT, "name": "before"},
        "model_b": {"source": str(tmp_path / "b.safetensors"), "arch": TINY_VIT, "name": "after"},
        "split": "train",
        "batch_size": 10,
        "output_dir": str(tmp_path / "cka"),
    }
    path = tmp_path / "cka.yaml"
    path.write_text(yaml.safe_dump(config))
    code, out, err = _run(["cka", str(path), "--json"], capsys)
    assert code == 0, err
    summary = json.loads(out)
    rows = _read_csv(summary["csv"])
    layers = ["blocks.0.attn", "blocks.0.mlp.fc1", "blocks.0.mlp.fc2", "blocks.0",
              "blocks.1.attn", "blocks.1.mlp.fc1", "blocks.1.mlp.fc2", "blocks.1"]  # fmt: skip
    assert len(rows) == len(layers) ** 2
    diagonal = {r["layer_a"]: float(r["cka"]) for r in rows if r["layer_a"] == r["layer_b"]}
    assert list(diagonal) == layers
    for unchanged in layers[:5]:  # everything before the edited layer is identical
        assert diagonal[unchanged] == pytest.approx(1.0, abs=1e-9)
    changed = [layer for layer in layers if diagonal[layer] < 0.99]
    assert changed == ["blocks.1.mlp.fc1", "blocks.1.mlp.fc2", "blocks.1"]  # the edit and what follows
    assert summary["lowest_diagonal"][0]["layer"] in changed
    assert (
        Path(summary["heatmap"]).stat().st_size > 10_000 and Path(summary["diagonal"]).stat().st_size > 10_000
    )


def test_registering_the_analysis_commands_does_not_import_torch() -> None:
    code = "import sys, geosane.analysis.cli; print(sorted({'torch', 'timm'} & set(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT, capture_output=True, text=True, env={"PYTHONPATH": str(REPO_ROOT / "src"), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"  # `geosane --help` stays fast as far as this stage goes


def test_bench_cka_reports_throughput(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(["bench", "cka", "--samples", "64", "--features", "32", "--layers", "3",
                           "--batch-size", "32"], capsys)  # fmt: skip
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["samples"] == 64 and result["samples_per_s"] > 0


def test_shipped_decoder_configs_from_the_command_line(
    csmask_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny = [
        f"data.root={csmask_root}",
        "data.chip_size=32",
        "data.max_samples=16",
        "models=[{source: timm:resnet10t, random_init: true, name: r10}]",
        "decoders.names=[linear]",
        "decoders.adaptations=[frozen]",
        "decoders.seeds=[0]",
        "decoders.channels=16",
        "decoders.fit.epochs=1",
        f"output_dir={tmp_path / 'out'}",
        "progress=false",
    ]
    code, out, err = _run(
        ["probe", "decoders_csmask_cloud_fraction.yaml", *tiny, "decoders.label_fractions=[0.5, 1.0]", "--mode",
         "decoders", "--json"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads(out)
    assert summary["trained"] == 2 and summary["settings_changed"] == []
    assert [(r["target"], r["fraction"], r["n_train"]) for r in summary["rows"]] == [
        ("fraction:cloud", 0.5, 8),
        ("fraction:cloud", 1.0, 16),
    ]
    for bad, message in (
        ("decoders.label_fractions=[0.5, 0]", "decoders.label_fractions must be in (0, 1], got [0]"),
        ("decoders.target=band:blue", "decoders.target: band blue (0) is one of the input bands"),
    ):
        code, _, err = _run(["probe", "decoders_csmask_swir.yaml", *tiny[:-2], bad, f"output_dir={tmp_path / 'no'}",
                             "--mode", "decoders"], capsys)  # fmt: skip
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "no").exists()
