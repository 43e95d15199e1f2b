"""`run_probe` end to end: caching, model sources, bad input (checked before anything is written)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import geosane.analysis.features as features_module
from geosane.analysis import ProbeConfig, run_probe
from geosane.config import load_config
from geosane.errors import DataError, GeosaneError, SourceError
from geosane.io import save_safetensors, write_json
from geosane.zoo import ArchSpec, LoadedModel, Zoo, build_architecture

from .conftest import TINY_VIT, tiny_vit_spec


def _config(root: Path, out: Path, models: list[dict], **extra: object) -> ProbeConfig:
    settings: dict = {
        "data": {"root": str(root), "image_size": 32, "split": {"train": 0.5, "select": 0.2, "test": 0.3}},
        "models": models,
        "probe": {"methods": ["ridge"], "fractions": [0.5, 1.0], "seeds": [0, 1]},
        "output_dir": str(out),
        "progress": False,
    }
    for key, value in extra.items():
        settings[key] = {**settings[key], **value} if isinstance(value, dict) and key in settings else value
    return load_config(ProbeConfig, None, settings)


RESNET = {"source": "timm:resnet10t", "random_init": True, "name": "r10", "layers": ["layer1", "layer2"]}


def test_outputs_and_a_rerun_reads_every_feature_and_probe_from_the_cache(
    colour_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    cfg = _config(colour_folder, out, [RESNET, tiny_vit_spec(name="vit")])
    first = run_probe(cfg)
    # 2 models x 2 layers x (2 fractions x 2 seeds) rows; 4 layers x 3 splits feature files
    assert len(first.rows) == 16 and first.features_computed == 12 and first.features_loaded == 0
    with open(first.csv_path, newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 16 and {"model", "layer", "fraction", "seed", "metric", "test"} <= table[0].keys()
    assert first.plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cached = sorted(p for p in (out / "feature_cache").rglob("*.safetensors"))
    stamps = [p.stat().st_mtime_ns for p in cached]

    def no_model_runs(*args: object, **kwargs: object) -> None:
        raise AssertionError("a rerun must not run the model")

    monkeypatch.setattr(features_module, "extract_features", no_model_runs)
    again = run_probe(cfg)
    assert again.features_computed == 0 and again.features_loaded == 12
    assert again.probes_fitted == 0 and again.probes_cached == 16
    assert [p.stat().st_mtime_ns for p in cached] == stamps
    assert [r["test"] for r in again.rows] == [r["test"] for r in first.rows]
    monkeypatch.undo()

    # a new layer is the only thing computed; other models' features stay cached
    more = _config(colour_folder, out, [{**RESNET, "layers": ["layer1", "layer2", "layer3"]}])
    third = run_probe(more)
    assert third.features_computed == 3 and third.features_loaded == 6


def test_bad_hook_path_and_empty_label_fraction_fail_before_writing(
    colour_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "never"
    with pytest.raises(GeosaneError) as info:
        run_probe(_config(colour_folder, out, [{**RESNET, "layers": ["layer9"]}]))
    assert "no module 'layer9' in model 'r10'" in str(info.value)
    assert "valid module paths: conv1" in str(info.value) and "layer4.0.conv2" in str(info.value)
    with pytest.raises(DataError) as info:
        run_probe(_config(colour_folder, out, [RESNET], probe={"fractions": [0.01, 1.0]}))
    assert str(info.value) == (
        "label fraction 0.01 leaves class 'class0' with 0 training samples (10 in the train split); "
        "use a fraction >= 0.05"
    )
    with pytest.raises(SourceError, match="takes 3 input bands but the data has 1"):
        run_probe(_config(colour_folder, out, [RESNET], data={"bands": [0]}))
    with pytest.raises(SourceError, match="cannot take inputs of shape"):
        run_probe(_config(colour_folder, out, [tiny_vit_spec()], data={"image_size": 48}))
    assert not out.exists()


def test_generated_candidate_zoo_entry_and_bare_weights_with_arch(
    colour_folder: Path, tmp_path: Path
) -> None:
    torch.manual_seed(3)
    weights = build_architecture(ArchSpec.from_dict(TINY_VIT)).state_dict()
    generated = tmp_path / "generated"
    save_safetensors(weights, generated / "candidate_0.safetensors")
    write_json(generated / "model_card.json", {"arch": TINY_VIT, "candidates": ["candidate_0.safetensors"]})
    bare = tmp_path / "bare.safetensors"
    save_safetensors(weights, bare)
    write_json(tmp_path / "arch.json", TINY_VIT)
    zoo = Zoo.create(tmp_path / "zoo")
    zoo.add(LoadedModel("test", dict(weights), ArchSpec.from_dict(TINY_VIT)), "tiny-vit")
    models = [
        {"source": str(generated / "candidate_0.safetensors"), "name": "generated", "layers": ["blocks.1"]},
        {"source": str(bare), "arch": str(tmp_path / "arch.json"), "name": "bare", "layers": ["blocks.1"]},
        {"source": f"zoo:{tmp_path / 'zoo'}#tiny-vit", "layers": ["blocks.1"]},
    ]
    result = run_probe(
        _config(colour_folder, tmp_path / "out", models, probe={"fractions": [1.0], "seeds": [0]})
    )
    values = {r["model"]: r["test"] for r in result.rows}
    assert set(values) == {"generated", "bare", "tiny-vit"}
    assert len(set(values.values())) == 1  # the same weights give the same probe, whatever the source
    assert result.features_computed == 3 and result.features_loaded == 6  # one cache entry per content
    with pytest.raises(SourceError, match="no architecture record"):
        run_probe(_config(colour_folder, tmp_path / "none", [{"source": str(bare)}]))


def test_regression_targets_from_csv(colour_folder: Path, tmp_path: Path) -> None:
    rows = ["file,target"]
    for path in sorted(colour_folder.rglob("*.png")):
        red = np.asarray(Image.open(path), dtype=np.float64)[..., 0].mean()
        rows.append(f"{path.relative_to(colour_folder)},{red / 255:.5f}")
    targets = tmp_path / "targets.csv"
    targets.write_text("\n".join(rows) + "\n")
    cfg = _config(colour_folder, tmp_path / "reg", [{**RESNET, "layers": ["layer1"]}], task="regression",
                  data={"targets": str(targets)}, probe={"methods": ["ridge", "linear"], "fractions": [1.0]})  # fmt: skip
    result = run_probe(cfg)
    assert {r["metric"] for r in result.rows} == {"r2"}
    assert min(r["test"] for r in result.rows) > 0.8
    targets.write_text("\n".join(rows[:-1]) + "\n")
    with pytest.raises(DataError, match="has no target for 1 image"):
        run_probe(
            _config(
                colour_folder, tmp_path / "bad", [RESNET], task="regression", data={"targets": str(targets)}
            )
        )
    assert not (tmp_path / "bad").exists()


def test_segmentation_probe_on_csmask_chips(csmask_root: Path, tmp_path: Path) -> None:
    data = {"kind": "csmask", "root": str(csmask_root), "chip_size": 32, "bands": [2, 1, 0],
            "test_scenes": ["landsat7"], "split": {"train": 0.8, "select": 0.2}, "max_samples": 48}  # fmt: skip
    cfg = _config(tmp_path, tmp_path / "seg", [RESNET], task="segmentation", data=data,
                  probe={"methods": ["ridge", "linear"], "fractions": [1.0], "seeds": [0]})  # fmt: skip
    result = run_probe(cfg)
    assert {r["metric"] for r in result.rows} == {"miou"} and len(result.rows) == 4
    assert all(0.0 < r["test"] <= 1.0 for r in result.rows)


def test_probe_refuses_a_folder_it_did_not_write_and_its_own_data(colour_folder: Path, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(GeosaneError, match=r"geosane did not write it \(holds notes.txt\)"):
        run_probe(_config(colour_folder, mine, [RESNET]))
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    before = sorted(p.name for p in colour_folder.rglob("*"))
    with pytest.raises(GeosaneError, match=r"is or holds this run's input data\.root"):
        run_probe(_config(colour_folder, colour_folder, [RESNET]))
    assert sorted(p.name for p in colour_folder.rglob("*")) == before
