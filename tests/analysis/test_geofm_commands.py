"""The README's / docs/analysis.md's GeoFM commands, offline: a probe, a decoder comparison and a
CKA run over two real-layout geospatial foundation models on a TorchGeo dataset.

The two TorchGeo weights are written into torch hub's cache in their published layouts (GASSL's
ResNet-50 as the timm state dict TorchGeo loads; Satlas' Swin-V2-B as TorchGeo's builder loads it,
see ``tests/zoo/test_torchgeo_models.py``), the dataset is a fake LandCoverAI on disk, and the
commands are the documented ones with only the paths and sizes overridden.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from tests.conftest import run_cli

from .conftest import torchgeo_file, write_fake_landcoverai

pytest.importorskip("torchgeo")

GASSL = "ResNet50_Weights.FMOW_RGB_GASSL"
SATLAS = "Swin_V2_B_Weights.NAIP_RGB_SI_SATLAS"


@pytest.fixture
def published_weights(torch_hub_checkpoints: Path) -> None:
    import timm
    from torchgeo.models import get_weight

    from tests.zoo.test_torchgeo_models import published_checkpoint

    torch.manual_seed(0)
    resnet = timm.create_model("resnet50", num_classes=0).state_dict()
    torch.save(resnet, torchgeo_file(torch_hub_checkpoints, GASSL))
    torch.save(published_checkpoint(get_weight(SATLAS)), torchgeo_file(torch_hub_checkpoints, SATLAS))


@pytest.mark.slow
def test_probe_decoders_and_cka_over_two_geofms_on_a_torchgeo_dataset(
    published_weights: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write_fake_landcoverai(tmp_path / "landcoverai")
    small = [f"data.root={root}", "data.image_size=32"]

    code, _, err = run_cli(
        capsys,
        "probe",
        "probe_landcoverai_geofm.yaml",
        *small,
        "probe.seeds=[0]",
        f"output_dir={tmp_path / 'probe'}",
    )
    assert code == 0, err
    with open(tmp_path / "probe" / "probe.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["model"] for r in rows} == {"gassl-resnet50", "satlas-swinv2b"}
    assert {r["layer"] for r in rows if r["model"] == "satlas-swinv2b"} == {
        f"features.{i}" for i in (1, 3, 5, 7)
    }
    assert all(r["metric"] == "miou" for r in rows)

    code, _, err = run_cli(
        capsys, "probe", "probe_landcoverai_geofm.yaml", "--mode", "decoders", *small,
        "decoders.seeds=[0]", "decoders.label_fractions=[1.0]", "decoders.fit.epochs=1", "decoders.channels=16",
        f"output_dir={tmp_path / 'decoders'}",
    )  # fmt: skip
    assert code == 0, err
    with open(tmp_path / "decoders" / "decoders.csv", newline="") as f:
        runs = list(csv.DictReader(f))
    assert len(runs) == 2 * 2 * 2  # models x decoders x adaptations
    assert {"iou_Building", "f1_Road"} <= set(runs[0])

    code, _, err = run_cli(
        capsys, "cka", "cka_landcoverai_geofm.yaml", *small, "batch_size=4", f"output_dir={tmp_path / 'cka'}"
    )
    assert code == 0, err
    with open(tmp_path / "cka" / "cka.csv", newline="") as f:
        pairs = list(csv.DictReader(f))
    assert len(pairs) == 4 * 4  # every layer of one against every layer of the other
