"""Temporal stacks [N, T, C, H, W] in probe, --mode decoders and cka: per-frame backbones with mean or
L-TAE aggregation, a natively temporal backbone (``temporal_frames``), and the bad inputs.

The natively temporal backbone is a real timm ViT run on the mean of its frames, registered as an
architecture library for the test (what a library such as Prithvi's does in geosane)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer

from geosane.analysis import CkaConfig, ProbeConfig, run_cka, run_decoders, run_probe
from geosane.analysis.probes import LinearProbeConfig, fit_ltae_probe, score_readout
from geosane.analysis.temporal import LTAE, TemporalSettings
from geosane.arch.libraries import ARCH_LIBRARIES, ArchLibrary
from geosane.config import find_config, load_config
from geosane.errors import GeosaneError
from tests.temporal_fakes import write_fake_pastis, write_fake_sen1floods11

R18 = {"source": "timm:resnet18", "random_init": True, "in_chans": 10, "name": "r18"}


class FrameMeanViT(VisionTransformer):
    """A natively temporal backbone: takes ``[B, T, C, H, W]`` (``temporal_frames`` of them) and runs
    a ViT on the mean frame."""

    def __init__(self, temporal_frames: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.temporal_frames = temporal_frames

    def _frames(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            raise ValueError(f"expected [B, T, C, H, W], got {tuple(x.shape)}")
        return x.mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self._frames(x))

    def forward_intermediates(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        return super().forward_intermediates(self._frames(x), *args, **kwargs)


@pytest.fixture(autouse=True)
def _temporal_library(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    library = ArchLibrary(
        name="temporal-test",
        build=lambda name, kwargs: FrameMeanViT(**kwargs),
        check_name=lambda name: None,
        family=lambda name, kwargs: "vision_transformer",
        in_chans_key="in_chans",
        classes_key="num_classes",
        head_prefixes=(),
        task="classification",
    )
    monkeypatch.setitem(ARCH_LIBRARIES, "temporal-test", library)
    yield


def native(frames: int = 4) -> dict[str, Any]:
    kwargs = {"temporal_frames": frames, "img_size": 32, "patch_size": 8, "depth": 4, "embed_dim": 64}
    return {
        "source": "temporal-test:frame-mean-vit",
        "random_init": True,
        "name": "native",
        "arch": {
            "library": "temporal-test",
            "name": "frame-mean-vit",
            "kwargs": {**kwargs, "num_heads": 2, "in_chans": 10},
        },
    }


@pytest.fixture(scope="module")
def pastis(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torchgeo")
    return write_fake_pastis(tmp_path_factory.mktemp("pastis") / "pastis")


def _pastis(root: Path, **extra: object) -> dict[str, Any]:
    return {
        "kind": "torchgeo",
        "dataset": "pastis",
        "root": str(root),
        "image_size": 32,
        "time_steps": 4,
        "normalization": "dataset",
        **extra,
    }


def _probe(data: dict[str, Any], models: list[dict[str, Any]], out: Path, **extra: object) -> ProbeConfig:
    settings: dict[str, Any] = {
        "task": "segmentation",
        "data": data,
        "models": models,
        "probe": {"methods": ["ridge"], "fractions": [1.0], "seeds": [0]},
        "output_dir": str(out),
        "progress": False,
        **extra,
    }
    return load_config(ProbeConfig, None, settings)


def test_ltae_learns_to_attend_to_the_informative_frame() -> None:
    """Classes are written into frame 2 only; the other frames are loud noise. The L-TAE trained with
    the linear probe puts most of its attention on frame 2 and classifies well."""
    generator = torch.Generator().manual_seed(0)
    n, frames, dim = 240, 5, 16
    labels = torch.arange(n) % 3
    x = torch.randn(n, frames, dim, generator=generator) * 3.0
    x[:, 2] = torch.randn(n, dim, generator=generator) * 0.3
    x[torch.arange(n), 2, labels] += 2.0
    train, select = slice(0, 160), slice(160, None)
    settings = TemporalSettings("ltae", heads=2, key_dim=8)
    fit = fit_ltae_probe(
        "classification",
        (x[train], labels[train]),
        (x[select], labels[select]),
        3,
        settings,
        seed=0,
        linear=LinearProbeConfig(optimizer="adamw", lr=0.01, epochs=60, batch_size=32),
    )
    aggregator = fit.readout.aggregator  # type: ignore[union-attr]
    with torch.no_grad():
        weights = aggregator.attention(x[select]).mean(dim=(0, 1))
    assert weights.sum() == pytest.approx(1.0, abs=1e-5)
    assert weights.argmax() == 2 and weights[2] > 0.5
    assert score_readout(fit.readout, "classification", x[select], labels[select], 3) > 0.9
    maps = torch.randn(2, frames, dim, 3, 3, generator=generator)
    assert aggregator.forward_map(maps).shape == (2, dim, 3, 3)
    with pytest.raises(GeosaneError, match=r"built for 5 frames, got 4"):
        aggregator(x[:2, :4])
    assert LTAE(6, 5, heads=4).heads == 3  # the largest divisor of the width


def test_probe_on_temporal_stacks_mean_ltae_and_a_native_model(pastis: Path, tmp_path: Path) -> None:
    mean = run_probe(
        _probe(_pastis(pastis), [R18, native()], tmp_path / "mean", temporal={"aggregation": "mean"})
    )
    rows = {(r["model"], r["layer"]): r for r in mean.rows}
    assert set(rows) == {("r18", f"layer{i}") for i in range(1, 5)} | {
        ("native", f"blocks.{i}") for i in range(4)
    }
    # the classes are in the time series; chance mIoU over 19 classes is about 0.05
    assert max(r["test"] for r in mean.rows if r["model"] == "r18") > 0.2
    cache = tmp_path / "mean" / "feature_cache"
    per_frame = load_file(str(next(cache.glob("*/*/train/layer1.map.safetensors"))))["features"]
    assert tuple(per_frame.shape) == (12, 4, 64, 8, 8)  # [N, T, C, h, w]: the frames are kept
    whole = load_file(str(next(cache.glob("*/*/train/blocks.0.map.safetensors"))))["features"]
    assert tuple(whole.shape) == (12, 64, 4, 4)  # the native model took the stack: no T
    again = run_probe(
        _probe(_pastis(pastis), [R18, native()], tmp_path / "mean", temporal={"aggregation": "mean"})
    )
    assert again.features_computed == 0 and again.probes_fitted == 0
    assert [r["test"] for r in again.rows] == [r["test"] for r in mean.rows]

    ltae = run_probe(
        _probe(
            _pastis(pastis),
            [R18],
            tmp_path / "ltae",
            temporal={"aggregation": "ltae", "heads": 2},
            probe={"methods": ["linear"], "fractions": [1.0], "seeds": [0], "linear": {"epochs": 3}},
            cache_dir=str(cache),
        )
    )
    assert (
        ltae.features_computed == 0 and ltae.features_loaded == 12
    )  # 4 layers x 3 splits: the per-frame cache is shared
    assert [r["choice"] for r in ltae.rows] == ["ltae"] * 4
    assert all(0 <= r["test"] <= 1 for r in ltae.rows)


def test_decoders_on_temporal_stacks(pastis: Path, tmp_path: Path) -> None:
    trainable = {}
    for aggregation in ("mean", "ltae"):
        cfg = _probe(
            _pastis(pastis),
            [R18, native()],
            tmp_path / aggregation,
            temporal={"aggregation": aggregation},
            decoders={
                "names": ["linear"],
                "adaptations": ["frozen"],
                "channels": 16,
                "augment": True,
                "fit": {"epochs": 1, "batch_size": 4},
            },
        )
        result = run_decoders(cfg)
        assert [r["model"] for r in result.rows] == ["r18", "native"]
        assert all(0 <= r["test"] <= 1 for r in result.rows)
        trainable[aggregation] = {r["model"]: r["trainable_params"] for r in result.rows}
    # one L-TAE per feature level is trained with the head (the backbone is frozen) ...
    levels = (64, 128, 256, 512)
    ltae_params = sum(sum(p.numel() for p in LTAE(c, 4).parameters()) for c in levels)
    assert trainable["ltae"]["r18"] - trainable["mean"]["r18"] == ltae_params
    # ... and a natively temporal model has nothing to aggregate
    assert trainable["ltae"]["native"] == trainable["mean"]["native"]


def test_cka_on_temporal_stacks_averages_frames(pastis: Path, tmp_path: Path) -> None:
    cfg = load_config(
        CkaConfig,
        None,
        {
            "data": _pastis(pastis),
            "model_a": R18,
            "model_b": native(),
            "temporal": {"aggregation": "mean"},
            "split": "train",
            "batch_size": 6,
            "output_dir": str(tmp_path / "cka"),
            "progress": False,
        },
    )
    result = run_cka(cfg)
    assert (
        result.matrix.shape == (len(result.layers_a), len(result.layers_b)) and "blocks.0" in result.layers_b
    )
    assert torch.isfinite(result.matrix).all()
    assert (tmp_path / "cka" / "cka.csv").is_file()


def _refused(run: Any, cfg: Any, out: Path, *fragments: str) -> None:
    with pytest.raises(GeosaneError) as caught:
        run(cfg)
    for fragment in fragments:
        assert fragment in str(caught.value), str(caught.value)
    assert not out.exists()


def test_bad_temporal_inputs_are_refused_before_any_output(
    pastis: Path, fake_landcoverai: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    single = {"kind": "torchgeo", "dataset": "LandCoverAI", "root": str(fake_landcoverai), "image_size": 32}
    r18_rgb = {"source": "timm:resnet18", "random_init": True, "name": "r18"}
    native_rgb = native()
    native_rgb["arch"]["kwargs"]["in_chans"] = 3
    for run in (run_probe, run_decoders):
        _refused(
            run,
            _probe(single, [native_rgb], out, decoders={"names": ["linear"], "adaptations": ["frozen"]}),
            out,
            "model 'native' is natively temporal",
            "stacks of 4 frames [B, 4, C, H, W]",
            "single images [N, C, H, W] = [2, 3, 32, 32]",
        )
    _refused(
        run_probe,
        _probe(single, [r18_rgb], out, temporal={"aggregation": "mean"}),
        out,
        "temporal.aggregation=mean aggregates temporal stacks",
        "single images [N, C, H, W]",
    )
    _refused(
        run_probe,
        _probe(_pastis(pastis, time_steps=3), [native(4)], out),
        out,
        "model 'native' takes stacks of 4 frames (temporal_frames), but the data's stacks have 3",
        "data.time_steps: 4",
    )
    _refused(
        run_decoders,
        _probe(_pastis(pastis), [R18], out, decoders={"names": ["linear"], "adaptations": ["frozen"]}),
        out,
        "model 'r18' takes single images",
        "temporal stacks of 4 frames",
        "set temporal.aggregation (mean or ltae)",
    )
    _refused(
        run_probe,
        _probe(_pastis(pastis), [R18], out, temporal={"aggregation": "ltae"}),
        out,
        "temporal.aggregation=ltae trains its attention with the probe",
        "probe.methods: [linear]",
    )
    cka = load_config(
        CkaConfig,
        None,
        {
            "data": _pastis(pastis),
            "model_a": R18,
            "model_b": R18,
            "temporal": {"aggregation": "ltae"},
            "output_dir": str(out),
            "progress": False,
        },
    )
    _refused(run_cka, cka, out, "cka compares fixed representations", "use mean")
    with pytest.raises(ValueError, match=r"temporal.aggregation must be one of mean, ltae"):
        TemporalSettings("median")  # type: ignore[arg-type]


def test_shipped_temporal_presets_run_on_the_fake_layouts(pastis: Path, tmp_path: Path) -> None:
    """probe_pastis.yaml and decoders_pastis.yaml as shipped, with the data root and sizes overridden."""
    small = [
        "data.image_size=32",
        "data.time_steps=4",
        "probe.seeds=[0]",
        "probe.fractions=[1.0]",
        "progress=false",
    ]
    probe = load_config(
        ProbeConfig,
        find_config("probe_pastis.yaml", "analysis"),
        [f"data.root={pastis}", f"output_dir={tmp_path / 'probe'}", *small],
    )
    assert probe.temporal.aggregation == "mean" and probe.data.dataset == "pastis"
    assert run_probe(probe).rows
    decoders = load_config(
        ProbeConfig,
        find_config("decoders_pastis.yaml", "analysis"),
        [
            f"data.root={pastis}",
            f"output_dir={tmp_path / 'decoders'}",
            *small,
            "decoders.names=[linear]",
            "decoders.adaptations=[frozen]",
            "decoders.seeds=[0]",
            "decoders.label_fractions=[1.0]",
            "decoders.fit.epochs=1",
        ],
    )
    assert decoders.temporal.aggregation == "ltae"
    assert len(run_decoders(decoders).rows) == 1


def test_shipped_sen1floods11_preset_runs_on_the_fake_layout(tmp_path: Path) -> None:
    """probe_sen1floods11.yaml (S1 VV, VH) on a fake v1.1 layout, where open water is dark in radar."""
    root = write_fake_sen1floods11(tmp_path / "v1.1")
    cfg = load_config(
        ProbeConfig,
        find_config("probe_sen1floods11.yaml", "analysis"),
        [
            f"data.root={root}",
            f"output_dir={tmp_path / 'out'}",
            "data.image_size=32",
            "probe.seeds=[0]",
            "progress=false",
        ],
    )
    assert cfg.data.kind == "sen1floods11" and cfg.data.sensor == "s1"
    result = run_probe(cfg)
    assert {r["n_train"] for r in result.rows} == {1, 6}  # 10 % and 100 % of the 6 training chips
    assert max(r["test"] for r in result.rows if r["fraction"] == 1.0) > 0.6  # water vs land mIoU


def test_prithvi_takes_the_whole_stack_in_probe_and_refuses_another_frame_count(
    pastis: Path, tmp_path: Path
) -> None:
    """geosane's Prithvi encoder (a natively temporal backbone) on 6 of PASTIS' 10 bands, 3 frames."""
    prithvi = {
        "source": "geosane:prithvi_vit",
        "random_init": True,
        "name": "prithvi",
        "layers": ["blocks.0", "blocks.1"],
        "arch": {
            "library": "geosane",
            "name": "prithvi_vit",
            "kwargs": {
                "img_size": 32,
                "patch_size": [1, 8, 8],
                "num_frames": 3,
                "embed_dim": 64,
                "depth": 2,
                "num_heads": 2,
            },
        },
    }
    data = _pastis(pastis, time_steps=3, bands=[0, 1, 2, 6, 8, 9])  # B2 B3 B4 B8 B11 B12, HLS-like
    result = run_probe(_probe(data, [prithvi], tmp_path / "prithvi"))
    assert {r["layer"] for r in result.rows} == {"blocks.0", "blocks.1"}
    whole = load_file(
        str(next((tmp_path / "prithvi" / "feature_cache").glob("*/*/train/blocks.0.map.safetensors")))
    )
    assert whole["features"].shape[:2] == (12, 64)  # one map per series: the stack went in whole
    out = tmp_path / "single"
    with pytest.raises(GeosaneError, match="prithvi"):
        run_probe(_probe(_pastis(pastis, time_steps=4, bands=[0, 1, 2, 6, 8, 9]), [prithvi], out))
    assert not out.exists()
