"""probe, cka and the decoder study read TorchGeo datasets by name (fake on-disk layouts, offline)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from geosane.analysis import CkaConfig, ProbeConfig, load_analysis_data, run_cka, run_decoders, run_probe
from geosane.config import load_config
from geosane.errors import GeosaneError

R10 = {"source": "timm:resnet10t", "random_init": True, "name": "r10"}


def _landcoverai(root: Path, **extra: object) -> dict:
    return {"kind": "torchgeo", "dataset": "LandCoverAI", "root": str(root), "image_size": 32, **extra}


def test_a_torchgeo_segmentation_set_is_read_with_its_own_splits(fake_landcoverai: Path) -> None:
    data = load_analysis_data(
        load_config(ProbeConfig, None, {"data": _landcoverai(fake_landcoverai), "models": [R10]}).data, "any"
    )
    assert data.task == "segmentation"
    assert data.class_names == ("Background", "Building", "Woodland", "Water", "Road")
    assert {n: len(p) for n, p in data.splits.items()} == {
        "train": 12,
        "select": 4,
        "test": 6,
    }  # train/val/test
    assert tuple(data.splits["train"].images.shape[1:]) == (3, 32, 32)
    capped = load_analysis_data(
        load_config(
            ProbeConfig, None, {"data": _landcoverai(fake_landcoverai, max_samples=5), "models": [R10]}
        ).data,
        "segmentation",
    )
    assert {n: len(p) for n, p in capped.splits.items()} == {"train": 5, "select": 4, "test": 5}
    assert capped.key != data.key


def test_decoders_on_a_torchgeo_dataset_per_class_and_per_image(
    fake_landcoverai: Path, tmp_path: Path
) -> None:
    for target in ("mask", "fraction:Building"):
        cfg = load_config(
            ProbeConfig,
            None,
            {
                "task": "segmentation",
                "data": _landcoverai(fake_landcoverai),
                "models": [R10],
                "decoders": {
                    "names": ["linear"],
                    "adaptations": ["frozen"],
                    "target": target,
                    "label_fractions": [0.5, 1.0],
                    "channels": 16,
                    "fit": {"epochs": 1, "batch_size": 8},
                },
                "output_dir": str(tmp_path / target.replace(":", "-")),
                "progress": False,
            },
        )
        result = run_decoders(cfg)
        assert [r["n_train"] for r in result.rows] == [6, 12]
        if target == "mask":
            assert {"iou_Building", "f1_Road"} <= set(result.rows[0])
        else:
            assert result.rows[0]["metric"] == "r2" and result.rows[0]["rmse"] > 0


def test_probe_and_cka_on_a_torchgeo_dataset(fake_landcoverai: Path, tmp_path: Path) -> None:
    probe = load_config(
        ProbeConfig,
        None,
        {
            "task": "segmentation",
            "data": _landcoverai(fake_landcoverai),
            "models": [R10],
            "probe": {"methods": ["ridge"], "fractions": [1.0], "seeds": [0], "pixels_per_image": 64},
            "output_dir": str(tmp_path / "probe"),
            "progress": False,
        },
    )
    rows = run_probe(probe).rows
    assert {r["layer"] for r in rows} == {"layer1", "layer2", "layer3", "layer4"}
    assert all(0.0 <= r["test"] <= 1.0 for r in rows)
    cka = load_config(
        CkaConfig,
        None,
        {
            "model_a": R10,
            "model_b": {**R10, "name": "r10b", "layers": ["layer1", "layer4"]},
            "data": _landcoverai(fake_landcoverai),
            "split": "test",
            "batch_size": 6,
            "output_dir": str(tmp_path / "cka"),
            "progress": False,
        },
    )
    result = run_cka(cka)
    assert result.csv_path.is_file()


def test_eurosat_probe_by_name(tmp_path: Path) -> None:
    pytest.importorskip("rasterio")
    from tests.downstream.downstream_fakes import write_fake_eurosat100

    root = write_fake_eurosat100(tmp_path / "eurosat100")
    cfg = load_config(
        ProbeConfig,
        None,
        {
            "data": {"kind": "torchgeo", "dataset": "eurosat100", "root": str(root), "image_size": 32},
            "models": [{**R10, "in_chans": 13}],
            "probe": {"methods": ["ridge"], "fractions": [1.0], "seeds": [0]},
            "output_dir": str(tmp_path / "probe"),
            "progress": False,
        },
    )
    rows = run_probe(cfg).rows
    assert len(rows) == 4 and rows[0]["metric"] == "accuracy"


@pytest.mark.parametrize(
    ("data", "task", "message"),
    [
        ({"dataset": None}, "segmentation", "data.kind: torchgeo needs data.dataset (e.g. "),
        ({"test_scenes": ["a"]}, "segmentation", "data.test_scenes applies to csmask scenes"),
        ({}, "classification", "TorchGeo LandCoverAI is a segmentation dataset, not classification"),
        ({"dataset": "NoSuchSet"}, "segmentation", "unknown TorchGeo dataset 'NoSuchSet'"),
    ],
)
def test_torchgeo_mistakes_are_one_line_and_write_nothing(
    fake_landcoverai: Path, tmp_path: Path, data: dict, task: str, message: str
) -> None:
    out = tmp_path / "never"
    cfg = load_config(
        ProbeConfig,
        None,
        {
            "task": task,
            "data": _landcoverai(fake_landcoverai, **data),
            "models": [R10],
            "output_dir": str(out),
        },
    )
    with pytest.raises(GeosaneError, match=f"^{re.escape(message)}"):
        run_probe(cfg)
    assert not out.exists()


def test_the_decoder_study_refuses_a_torchgeo_classification_set(tmp_path: Path) -> None:
    pytest.importorskip("rasterio")
    from tests.downstream.downstream_fakes import write_fake_eurosat100

    root = write_fake_eurosat100(tmp_path / "eurosat100")
    out = tmp_path / "never"
    cfg = load_config(
        ProbeConfig,
        None,
        {
            "task": "segmentation",
            "data": {"kind": "torchgeo", "dataset": "eurosat100", "root": str(root)},
            "models": [R10],
            "output_dir": str(out),
        },
    )
    with pytest.raises(
        GeosaneError, match=r"^TorchGeo eurosat100 is a classification dataset, not segmentation"
    ):
        run_decoders(cfg)
    assert not out.exists()
