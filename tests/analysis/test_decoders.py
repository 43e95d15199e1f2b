"""`geosane probe --mode decoders` on csmask chips (real cloud/shadow scenes)."""

from __future__ import annotations

import csv
import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from geosane.analysis import ProbeConfig, load_analysis_data, run_decoders
from geosane.analysis.decoders import (
    label_fraction_subsets,
    load_decoder_data,
    parse_target,
    segmentation_scores,
)
from geosane.config import load_config
from geosane.data import IGNORE_INDEX, Normalization, TensorImageDataset, cap_samples
from geosane.errors import ConfigError, GeosaneError, SourceError


def _config(
    csmask_root: Path,
    out: Path,
    names: list[str],
    epochs: int = 1,
    label_fractions: list[float] | None = None,
    **data: object,
) -> ProbeConfig:
    fractions = {"label_fractions": label_fractions} if label_fractions is not None else {}
    return load_config(
        ProbeConfig,
        None,
        {
            "task": "segmentation",
            "data": {
                "kind": "csmask",
                "root": str(csmask_root),
                "chip_size": 32,
                "bands": [2, 1, 0],
                "test_scenes": ["landsat7"],
                "split": {"train": 0.8, "select": 0.2},
                "max_samples": 32,
                **data,
            },
            "models": [{"source": "timm:resnet10t", "random_init": True, "name": "r10"}],
            "decoders": {
                "names": names,
                "channels": 16,
                "fit": {"epochs": epochs, "batch_size": 16},
                **fractions,
            },
            "output_dir": str(out),
            "progress": False,
        },
    )


def test_frozen_and_finetuned_linear_heads_then_resume(csmask_root: Path, tmp_path: Path) -> None:
    cfg = _config(csmask_root, tmp_path / "dec", ["linear"])
    result = run_decoders(cfg)
    assert [(r["decoder"], r["adaptation"]) for r in result.rows] == [
        ("linear", "frozen"),
        ("linear", "finetuned"),
    ]
    frozen, finetuned = result.rows
    assert frozen["trainable_params"] < finetuned["trainable_params"]  # only the head trains when frozen
    assert all(0.0 <= r["test"] <= 1.0 for r in result.rows) and result.trained == 2
    table = result.table_path.read_text()
    assert table.startswith(
        "| model | decoder | labels | frozen (test mIoU) | finetuned (test mIoU) | fine-tuning gain |"
    )
    assert result.plot_path.read_bytes()[:4] == b"\x89PNG"
    again = run_decoders(cfg)  # finished runs are read back, not retrained
    assert again.trained == 0 and again.resumed == 2 and again.rows == result.rows


def test_band_mismatch_is_reported_before_training(csmask_root: Path, tmp_path: Path) -> None:
    cfg = _config(csmask_root, tmp_path / "never", ["linear"], bands=None)
    with pytest.raises(SourceError, match="takes 3 input bands but the data has 6"):
        run_decoders(cfg)
    assert not (tmp_path / "never").exists()


@pytest.mark.slow
def test_all_three_heads_with_both_adaptations(csmask_root: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    result = run_decoders(_config(csmask_root, tmp_path / "all", ["linear", "upernet", "unet"], epochs=2))
    assert len(result.rows) == 6
    assert {(r["decoder"], r["adaptation"]) for r in result.rows} == {
        (d, a) for d in ("linear", "upernet", "unet") for a in ("frozen", "finetuned")
    }
    main, per_class = result.table_path.read_text().split("Per-class test IoU and F1")
    assert len([line for line in main.splitlines() if line.startswith("| r10 |")]) == 3  # one per decoder
    assert len([line for line in per_class.splitlines() if line.startswith("| r10 |")]) == 6


# --- label fractions, per-class scores, regression targets, resume, bad inputs -----------------


def _grid(cfg: ProbeConfig, **decoders: object) -> ProbeConfig:
    return dataclasses.replace(cfg, decoders=dataclasses.replace(cfg.decoders, **decoders))


def test_label_fraction_subsets_are_capped_nested_and_shared(csmask_root: Path, tmp_path: Path) -> None:
    cfg = _grid(_config(csmask_root, tmp_path / "f", ["linear"]), label_fractions=[0.25, 0.5, 1.0])
    data = load_decoder_data(cfg, parse_target(cfg))
    n = len(data.parts["train"])
    subsets = label_fraction_subsets(cfg, data)
    assert [s.size for s in subsets.values()] == [round(0.25 * n), round(0.5 * n), n]
    for fraction, chosen in subsets.items():  # geosane.data.task's capping rule, seed label_seed
        assert np.array_equal(chosen, cap_samples(np.arange(n), round(fraction * n), 0))
    assert set(subsets[0.25]) <= set(subsets[0.5]) <= set(subsets[1.0])
    other = label_fraction_subsets(_grid(cfg, label_seed=1), data)
    assert not np.array_equal(other[0.25], subsets[0.25])


def test_runs_per_fraction_and_seed_with_per_class_iou_and_f1(csmask_root: Path, tmp_path: Path) -> None:
    cfg = _grid(
        _config(csmask_root, tmp_path / "dec", ["linear"]),
        label_fractions=[0.5, 1.0],
        seeds=[0, 1],
        adaptations=["frozen"],
    )
    result = run_decoders(cfg)
    assert result.trained == 4
    assert [(r["fraction"], r["seed"], r["n_train"]) for r in result.rows] == [
        (0.5, 0, 16), (0.5, 1, 16), (1.0, 0, 32), (1.0, 1, 32)
    ]  # fmt: skip
    with open(result.csv_path, newline="") as f:
        csv_rows = list(csv.DictReader(f))
    columns = list(csv_rows[0])
    per_class = [f"{m}_{c}" for m in ("iou", "f1") for c in ("clear", "cloud", "shadow")]
    assert columns[:10] == [
        "model", "target", "decoder", "adaptation", "fraction", "seed", "n_train", "metric", "select", "test"
    ]  # fmt: skip
    assert columns[10:] == [*per_class, "f1", "trainable_params", "seconds"]
    for row in result.rows:
        ious = [row[f"iou_{c}"] for c in ("clear", "cloud", "shadow")]
        assert row["test"] == pytest.approx(np.nanmean(ious), abs=1e-5)  # mIoU is the mean class IoU
        assert all(0.0 <= row[k] <= 1.0 for k in per_class)
    table = result.table_path.read_text()
    first = [r for r in result.rows if r["fraction"] == 0.5]
    tests = [r["test"] for r in first]
    assert f"| r10 | linear | 50% | {np.mean(tests):.3f} ± {np.std(tests):.3f} |" in table
    shadow = [r["iou_shadow"] for r in first]
    assert f"{np.mean(shadow):.3f} ± {np.std(shadow):.3f}" in table.split("Per-class test IoU and F1")[1]
    assert result.plot_path.read_bytes()[:4] == b"\x89PNG"


class _Echo(nn.Module):
    """Predicts the class whose input band is largest: the test fixes the predictions through the images."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_per_class_scores_match_a_hand_count() -> None:
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, size=(6, 8, 8))
    truth[0, 0, :4] = IGNORE_INDEX
    predicted = np.where(rng.random((6, 8, 8)) < 0.7, truth % 255, rng.integers(0, 3, size=(6, 8, 8)))
    predicted[truth == IGNORE_INDEX] = 0
    predicted[predicted == 2] = 1  # class 'c' is never predicted: IoU 0, F1 0
    images = torch.nn.functional.one_hot(torch.as_tensor(predicted), 3).permute(0, 3, 1, 2).float()
    data = TensorImageDataset(images, torch.as_tensor(truth), Normalization((0.0,) * 3, (1.0,) * 3))
    scores = segmentation_scores(_Echo(), data, ("a", "b", "c"), batch_size=4)
    valid = truth != IGNORE_INDEX
    for c, name in enumerate("abc"):
        tp = np.sum((predicted == c) & (truth == c) & valid)
        fp = np.sum((predicted == c) & (truth != c) & valid)
        fn = np.sum((predicted != c) & (truth == c) & valid)
        assert scores[f"iou_{name}"] == pytest.approx(tp / (tp + fp + fn))
        assert scores[f"f1_{name}"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert scores["iou_c"] == 0.0
    assert scores["miou"] == pytest.approx(np.mean([scores[f"iou_{n}"] for n in "abc"]))
    assert scores["f1"] == pytest.approx(np.mean([scores[f"f1_{n}"] for n in "abc"]))


def test_fraction_and_band_targets_come_from_the_scenes(csmask_root: Path, tmp_path: Path) -> None:
    cfg = _config(csmask_root, tmp_path / "t", ["linear"])
    masks = load_decoder_data(cfg, parse_target(cfg))
    cloud = load_decoder_data(
        _grid(cfg, target="fraction:cloud"), parse_target(_grid(cfg, target="fraction:cloud"))
    )
    band_cfg = _grid(cfg, target="band:swir1")
    band = load_decoder_data(band_cfg, parse_target(band_cfg))
    raw = load_analysis_data(dataclasses.replace(cfg.data, bands=None), "segmentation")
    for split in ("train", "select", "test"):
        m = masks.parts[split].targets
        expected = ((m == 1).flatten(1).sum(1) / (m != IGNORE_INDEX).flatten(1).sum(1)).float()
        assert torch.allclose(cloud.parts[split].targets, expected)
        assert torch.equal(cloud.parts[split].images, masks.parts[split].images)  # same chips, same inputs
        assert torch.equal(band.parts[split].targets, raw.splits[split].images[:, 4])  # swir1 = band 4
        assert torch.equal(band.parts[split].images, masks.parts[split].images)
    assert len({masks.key, cloud.key, band.key}) == 3


def test_regression_heads_per_image_and_per_pixel(csmask_root: Path, tmp_path: Path) -> None:
    for target in ("fraction:cloud", "band:swir1"):  # a value per chip, a value per pixel
        cfg = _grid(_config(csmask_root, tmp_path / target.replace(":", "-"), ["linear"]), target=target)
        result = run_decoders(cfg)
        assert result.trained == 2
        for row in result.rows:
            assert row["metric"] == "r2" and row["target"] == target
            assert row["rmse"] > 0 and row["mae"] > 0 and row["rmse"] >= row["mae"]
            assert "iou_clear" not in row
        table = result.table_path.read_text()
        assert table.startswith("| model | decoder | labels | frozen (test R²) | finetuned (test R²) |")
        assert "Test RMSE and MAE" in table
        with open(result.csv_path, newline="") as f:
            assert float(next(iter(csv.DictReader(f)))["rmse"]) > 0


def test_rerun_skips_finished_runs_and_a_changed_setting_is_redone(
    csmask_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _grid(_config(csmask_root, tmp_path / "dec", ["linear"]), adaptations=["frozen"])
    first = run_decoders(cfg)
    assert (first.trained, first.resumed, first.settings_changed) == (1, 0, [])
    more = run_decoders(_grid(cfg, seeds=[0, 1], label_fractions=[0.5, 1.0]))  # a larger grid
    assert (more.trained, more.resumed) == (3, 1)
    assert [r for r in more.rows if r["seed"] == 0 and r["fraction"] == 1.0] == first.rows
    longer = _grid(cfg, fit=dataclasses.replace(cfg.decoders.fit, epochs=2))
    redone = run_decoders(longer)
    assert (redone.trained, redone.resumed) == (1, 0)
    assert redone.settings_changed == ["decoders.fit.epochs: 1 -> 2"]
    assert "decoders.fit.epochs: 1 -> 2" in capsys.readouterr().err
    assert run_decoders(longer).trained == 0  # the new settings' runs are finished now
    back = run_decoders(cfg)  # and the earlier settings' runs were kept
    assert back.trained == 0 and back.rows == first.rows


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5, float("nan")])
def test_label_fractions_outside_0_1_are_refused(csmask_root: Path, tmp_path: Path, fraction: float) -> None:
    out = tmp_path / "never"
    with pytest.raises(ConfigError, match=r"decoders.label_fractions must be in \(0, 1\]"):
        _config(csmask_root, out, ["linear"], label_fractions=[0.5, fraction])
    cfg = _config(csmask_root, out, ["linear"])
    cfg.decoders.label_fractions = [fraction]  # changed in Python after loading: checked again
    with pytest.raises(ConfigError, match=r"^decoders.label_fractions must be in \(0, 1\]"):
        run_decoders(cfg)
    assert not out.exists()


def _write_scene(path: Path, shadow_chips: int, size: int = 128, chip: int = 32) -> None:
    """A 6-band scene whose mask is clear with a cloud in every chip and shadow in the first chips."""
    rng = np.random.default_rng(len(path.stem))
    img = rng.random((size, size, 6), dtype=np.float32)
    msk = np.full((size, size, 1), 1, dtype=np.uint8)  # clear
    msk[::chip, ::chip] = 4  # one cloud pixel per chip
    for k in range(shadow_chips):
        top, left = divmod(k * chip, size)
        msk[top * chip + 1, left + 1] = 0  # shadow
    np.savez(path, img=img, msk=msk)


def test_a_fraction_leaving_a_class_empty_names_the_class_and_the_smallest_fraction(tmp_path: Path) -> None:
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    _write_scene(scenes / "a.npz", shadow_chips=1)  # 16 chips, one with a shadow pixel
    _write_scene(scenes / "b.npz", shadow_chips=16)
    out = tmp_path / "never"
    cfg = _config(
        scenes, out, ["linear"], test_scenes=["b"], max_samples=None, split={"train": 0.75, "select": 0.25}
    )
    cfg = _grid(cfg, label_fractions=[0.2])
    with pytest.raises(ConfigError) as info:
        run_decoders(cfg)
    message = str(info.value)
    match = re.fullmatch(
        r"decoders.label_fractions: 0.2 \(2 of 12 training chips, label_seed 0\) leaves class 'shadow' with "
        r"0 labelled pixels; use a fraction >= ([0-9.]+)",
        message,
    )
    assert match, message
    assert not out.exists()
    smallest = float(match.group(1))
    data = load_decoder_data(cfg, parse_target(cfg))
    assert label_fraction_subsets(_grid(cfg, label_fractions=[smallest]), data)  # that fraction works
    below = round(smallest * 12 - 1) / 12
    if below * 12 >= 1.5:
        with pytest.raises(ConfigError, match="leaves class 'shadow'"):
            label_fraction_subsets(_grid(cfg, label_fractions=[below]), data)
    with pytest.raises(ConfigError, match="keeps 1 of 12 training chips; at least 2 are needed"):
        label_fraction_subsets(_grid(cfg, label_fractions=[0.1]), data)


@pytest.mark.parametrize(
    ("target", "data", "message"),
    [
        (
            "value",
            {},
            r"decoders.target: value \(regression per image\) needs an image folder with data.targets",
        ),
        ("band:red", {}, r"decoders.target: band red \(2\) is one of the input bands data.bands \[2, 1, 0\]"),
        ("band:thermal", {}, "decoders.target: unknown band 'thermal'"),
        ("fraction:snow", {}, "decoders.target: no class 'snow' in the masks; classes: clear, cloud, shadow"),
        ("fraction", {}, "decoders.target: 'fraction' needs a class"),
        ("height", {}, "decoders.target: unknown target 'height'"),
    ],
)
def test_targets_the_data_does_not_have_are_refused(
    csmask_root: Path, tmp_path: Path, target: str, data: dict, message: str
) -> None:
    out = tmp_path / "never"
    cfg = _grid(_config(csmask_root, out, ["linear"], **data), target=target)
    with pytest.raises(GeosaneError, match=f"^{message}"):
        run_decoders(cfg)
    assert not out.exists()


def test_regression_on_an_image_folder_needs_data_targets(colour_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "never"
    for target, message in (
        (None, "decoders.target: value (regression per image) needs an image folder with data.targets"),
        (
            "fraction:cloud",
            "decoders.target: fraction:cloud is derived from masks (csmask or TorchGeo segmentation data)",
        ),
    ):
        cfg = load_config(
            ProbeConfig,
            None,
            {
                "task": "regression",
                "data": {"root": str(colour_folder), "image_size": 32},
                "models": [{"source": "timm:resnet10t", "random_init": True}],
                "decoders": {"names": ["linear"], "target": target},
                "output_dir": str(out),
                "progress": False,
            },
        )
        with pytest.raises(ConfigError, match=f"^{re.escape(message)}"):
            run_decoders(cfg)
        assert not out.exists()


def test_per_image_value_targets_from_a_csv(colour_folder: Path, tmp_path: Path) -> None:
    files = sorted(colour_folder.rglob("*.png"))
    targets = tmp_path / "targets.csv"
    targets.write_text(
        "file,target\n"
        + "".join(f"{p.relative_to(colour_folder)},{i % 7 / 7}\n" for i, p in enumerate(files))
    )
    cfg = load_config(
        ProbeConfig,
        None,
        {
            "task": "regression",
            "data": {"root": str(colour_folder), "image_size": 32, "targets": str(targets)},
            "models": [{"source": "timm:resnet10t", "random_init": True, "name": "r10"}],
            "decoders": {
                "names": ["linear"],
                "adaptations": ["frozen"],
                "fit": {"epochs": 1, "batch_size": 8},
            },
            "output_dir": str(tmp_path / "out"),
            "progress": False,
        },
    )
    result = run_decoders(cfg)
    assert [(r["target"], r["metric"]) for r in result.rows] == [("value", "r2")]
    assert result.rows[0]["n_train"] == len(load_analysis_data(cfg.data, "regression").splits["train"])
