"""Real ONNX models as zoo citizens: the ukis-csmask U-Nets (smp mapping, sidecar metadata, parity
with onnxruntime, tokenize, zero-shot masks, fine-tune, generation) and converted graphs."""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from geosane.errors import GeosaneError, SourceError
from geosane.zoo import ArchSpec, Zoo, resolve
from geosane.zoo.onnx import check_parity, load_parity_images
from tests.conftest import run_cli

_NEEDS_CSMASK = pytest.mark.skipif(
    importlib.util.find_spec("ukis_csmask") is None or importlib.util.find_spec("onnxruntime") is None,
    reason="the csmask extra (ukis-csmask, onnxruntime) is not installed: pip install 'geosane[csmask]'",
)
UNUSED_BY_THE_GRAPH = [
    "encoder._conv_head.weight",
    "encoder._bn1.weight",
    "encoder._bn1.bias",
    "encoder._bn1.running_mean",
    "encoder._bn1.running_var",
]


def csmask_file(name: str) -> Path:
    import ukis_csmask

    return Path(ukis_csmask.__file__).parent / name


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread: None) -> Iterator[None]:
    yield


@pytest.fixture(scope="module")
def unet() -> object:
    return resolve(str(csmask_file("model_6b_l2a.onnx")))


# ---------------------------------------------------------------------------------------------
# the csmask U-Nets


@_NEEDS_CSMASK
def test_a_package_source_names_the_shipped_file_portably(unet: object) -> None:
    packaged = resolve("pkg:ukis_csmask/model_6b_l2a.onnx")
    assert packaged.arch == unet.arch and packaged.info["license"] == "Apache-2.0"  # type: ignore[attr-defined]
    assert packaged.source == "pkg:ukis_csmask/model_6b_l2a.onnx"  # what a zoo manifest records
    assert Path(packaged.info["file"]).name == "model_6b_l2a.onnx"
    assert all(torch.equal(packaged.state_dict[k], v) for k, v in unet.state_dict.items())  # type: ignore[attr-defined]
    with pytest.raises(SourceError, match="the path leaves the package folder"):
        resolve("pkg:ukis_csmask/../torch/__init__.py")
    with pytest.raises(SourceError, match=r"no file nope\.onnx in .*weights there: model_4b_l1c\.onnx"):
        resolve("pkg:ukis_csmask/nope.onnx")


def test_a_package_source_of_a_missing_package_or_without_a_path_fails_clearly() -> None:
    with pytest.raises(SourceError, match="Python package 'no_such_package_xyz' is not installed"):
        resolve("pkg:no_such_package_xyz/model.onnx")
    with pytest.raises(SourceError, match="must look like pkg:PACKAGE/PATH"):
        resolve("pkg:ukis_csmask")


@_NEEDS_CSMASK
def test_csmask_unet_is_an_smp_unet_with_its_sidecar_metadata(unet: object) -> None:
    assert unet.arch == ArchSpec("smp", "Unet", {"encoder_name": "efficientnet-b4", "in_channels": 6, "classes": 3})
    info = unet.info
    assert (info["in_chans"], info["num_classes"], info["task"], info["license"]) == (6, 3, "segmentation", "Apache-2.0")
    assert info["bands"] == ["blue", "green", "red", "nir", "swir16", "swir22"]
    sidecar = json.loads(csmask_file("model_6b_l2a.json").read_text())
    mean, std = sidecar["data"]["dataset_statistics"]["img"]
    assert info["metadata"]["normalization"] == {"mean": mean, "std": std}
    assert info["filled_from_init"] == UNUSED_BY_THE_GRAPH  # the only tensors ONNX export dropped
    parity = info["metadata"]["onnx_parity"]
    assert parity["checked"] and parity["relative"] < 1e-3
    import onnx

    graph = onnx.load(str(csmask_file("model_6b_l2a.onnx"))).graph
    from onnx import numpy_helper

    for init in graph.initializer[:50]:  # the pretrained tensors themselves, not re-initialised ones
        want = torch.from_numpy(numpy_helper.to_array(init).copy())
        assert torch.equal(unet.state_dict[init.name.removeprefix("model.")], want)


@_NEEDS_CSMASK
def test_parity_with_onnxruntime_on_the_real_scenes(unet: object, csmask_root: Path) -> None:
    images = load_parity_images(csmask_root, unet)
    assert images.shape == (8, 6, 256, 256)
    report = check_parity(unet, images)
    assert report.relative < 1e-3 and report.argmax_agreement > 0.999 and "8 real image(s)" in report.inputs
    with pytest.raises(SourceError, match=r"differs from onnxruntime by .* > tolerance 1e-07\) on 8 real"):
        check_parity(unet, images, tolerance=1e-7)


@_NEEDS_CSMASK
def test_zoo_add_records_metadata_and_parity_and_the_member_rebuilds(
    unet: object, csmask_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    zoo_dir = tmp_path / "zoo"
    code, _, err = run_cli(
        capsys, "zoo", "add", str(csmask_file("model_6b_l2a.onnx")), "--zoo", str(zoo_dir),
        "--parity-data", str(csmask_root),
    )  # fmt: skip
    assert code == 0, err
    assert "vs onnxruntime" in " ".join(err.split()) and "8 real image(s)" in " ".join(err.split())
    entry = Zoo(zoo_dir).get("model_6b_l2a")
    assert (entry.family, entry.task, entry.in_chans, entry.license) == ("unet-efficientnet", "segmentation", 6, "Apache-2.0")
    assert entry.metadata["onnx_parity"]["inputs"] == "8 real image(s) (6, 256, 256)"
    member = Zoo(zoo_dir).load("model_6b_l2a")
    x = torch.randn(1, 6, 64, 64)
    with torch.no_grad():
        assert torch.equal(member.build().eval()(x), unet.build().eval()(x))


@_NEEDS_CSMASK
def test_tokenize_round_trip_is_bitwise(unet: object) -> None:
    from geosane.tokens import detokenize, tokenize

    tm = tokenize(unet.state_dict, token_size=256, module=unet.build(load_weights=False))
    back = detokenize(tm)
    assert list(back) == list(unet.state_dict)
    assert all(torch.equal(back[k], v) and back[k].dtype == v.dtype for k, v in unet.state_dict.items())


@_NEEDS_CSMASK
def test_zero_shot_masks_agree_with_the_reference_masks(csmask_root: Path) -> None:
    """The real model on the real scenes, with its own head and normalization: clearly not random."""
    from geosane.downstream.config import load_finetune_config
    from geosane.downstream.evaluation import evaluate_source

    config = load_finetune_config(
        "csmask_unet", {"init": str(csmask_file("model_6b_l2a.onnx")), "data": {"root": str(csmask_root)}}
    )
    result = evaluate_source(config)
    assert result.normalization == "model" and result.classes == ["clear", "cloud", "shadow"]
    assert result.scores["test"] > 0.6  # measured 72.4 (docs/zoo.md)
    assert all(iou > 0.5 for iou in result.per_class["test"])


@_NEEDS_CSMASK
def test_finetune_a_csmask_unet_keeps_its_weights_as_the_start(csmask_root: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from geosane.downstream.config import load_finetune_config
    from geosane.downstream.finetuning import finetune

    source = str(csmask_file("model_4b_l2a.onnx"))  # four bands: data.bands picks them from the scenes
    overrides = {"init": source, "out": str(tmp_path / "run"), "data": {"root": str(csmask_root), "bands": [0, 1, 2, 3]},
                 "train": {"epochs": 1, "lr": 1e-9}, "task": {"reset_head": False}}  # fmt: skip
    result = finetune(load_finetune_config("csmask_unet", overrides), show_progress=False)
    weights = load_file(tmp_path / "run" / "weights.safetensors")
    pretrained = resolve(source).state_dict
    stem = "encoder._conv_stem.weight"
    assert torch.allclose(weights[stem], pretrained[stem].float(), atol=1e-5)  # lr ~0: still the pretrained U-Net
    assert result.test > 0.6 and json.loads((tmp_path / "run" / "metrics.json").read_text())["arch"]["library"] == "smp"


@_NEEDS_CSMASK
@pytest.mark.slow
def test_pretrained_unet_beats_the_same_unet_from_scratch(csmask_root: Path, tmp_path: Path) -> None:
    from geosane.downstream.config import load_finetune_config
    from geosane.downstream.finetuning import finetune

    scores = {}
    for init in (str(csmask_file("model_6b_l2a.onnx")), "scratch"):
        overrides = {"init": init, "out": str(tmp_path / Path(init).stem), "data": {"root": str(csmask_root)},
                     "train": {"epochs": 2}}  # fmt: skip
        scores[init] = finetune(load_finetune_config("csmask_unet", overrides), show_progress=False).test
    assert scores[str(csmask_file("model_6b_l2a.onnx"))] > scores["scratch"] + 0.05


@_NEEDS_CSMASK
def test_generation_with_a_csmask_prompt(tmp_path: Path, csmask_root: Path) -> None:
    from safetensors.torch import load_file

    from geosane.autoencoder import ModelConfig, WeightAutoencoder, save_autoencoder
    from geosane.generation import generate
    from geosane.generation.pipeline import config_from_kwargs
    from geosane.tokens.store import tokenize_zoo

    zoo = Zoo.create(tmp_path / "zoo")
    for name in ("model_6b_l2a", "model_6b_l1c"):
        zoo.add(resolve(str(csmask_file(f"{name}.onnx"))), model_id=name)
    store = tokenize_zoo(zoo, tmp_path / "store", token_size=1024)
    torch.manual_seed(0)
    ae = WeightAutoencoder(ModelConfig(d_t=1024, d_model=32, n_heads=2, n_layers=1, lat_dim=16, window=64,
                                       max_layers=1024, max_chunks=4096, proj_hidden=16, proj_dim=8))  # fmt: skip
    save_autoencoder(ae, tmp_path / "ae.safetensors", extra={"tokenizer": json.dumps(store.settings)})
    select = tmp_path / "select"  # the selection scene only: the test scene (landsat7) never ranks
    select.mkdir()
    shutil.copy(csmask_root / "sentinel2.npz", select / "sentinel2.npz")
    out = tmp_path / "gen"
    config = config_from_kwargs(ae=tmp_path / "ae.safetensors", prompt=f"zoo:{zoo.path}#model_6b_l2a", out=out,
                                num_candidates=2, top_k=2, decode="residual", bandwidth=0.0,
                                select_data=select, select_split="all", image_size=64, bn_batches=0)  # fmt: skip
    generate(config)
    card = json.loads((out / "model_card.json").read_text())
    assert card["arch"]["library"] == "smp" and len(card["candidates"]) == 2
    assert card["proxy"] == "miou" and card["prompt_proxy_score"] > 0.6  # the real model, its own head
    assert all(c["proxy_score"] == pytest.approx(card["prompt_proxy_score"], abs=1e-6) for c in card["candidates"])
    candidate = load_file(out / "candidate_1.safetensors")
    prompt = zoo.load_state_dict("model_6b_l2a")
    model = zoo.load("model_6b_l2a").build()
    model.load_state_dict(candidate)  # generated weights are a loadable smp U-Net
    assert torch.equal(candidate["encoder._conv_stem.weight"], prompt["encoder._conv_stem.weight"])  # zero bandwidth
    import runpy

    loader = runpy.run_path(str(out / "load_generated.py"))  # the stand-alone loader builds smp models too
    assert loader["load"](rank=2).state_dict()["encoder._conv_stem.weight"].shape == (48, 6, 3, 3)


# ---------------------------------------------------------------------------------------------
# bad input


def _copy_with_sidecar(tmp_path: Path, **changes: int) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    target = folder / "model_6b_l2a.onnx"
    shutil.copy(csmask_file("model_6b_l2a.onnx"), target)
    sidecar = json.loads(csmask_file("model_6b_l2a.json").read_text())
    sidecar["data"].update(changes)
    (folder / "model_6b_l2a.json").write_text(json.dumps(sidecar))
    return target


@_NEEDS_CSMASK
@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"in_channels": 4}, "says in_channels 4, but the weights take 6 bands"),
        ({"classes": 5}, "says classes 5, but the weights output 3 classes"),
    ],
)
def test_a_sidecar_contradicting_the_weights_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], changes: dict[str, int], message: str
) -> None:
    path = _copy_with_sidecar(tmp_path, **changes)
    code, _, err = run_cli(capsys, "zoo", "add", str(path), "--zoo", str(tmp_path / "zoo"))
    assert code == 2 and message in " ".join(err.split()) and "Traceback" not in err
    assert not (tmp_path / "zoo").exists()


def _graph_with_op(path: Path, op: str) -> Path:
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.eye(3, dtype=np.float32)[None], "w")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["h"], name="add"), helper.make_node(op, ["h"], ["y"], name="the_det")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], [weight],
    )  # fmt: skip
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return path


def test_an_unsupported_op_is_named_with_its_node(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _graph_with_op(tmp_path / "det.onnx", "Det")
    code, _, err = run_cli(capsys, "zoo", "add", str(path), "--zoo", str(tmp_path / "zoo"))
    message = " ".join(err.split())
    assert code == 0 and "ONNX op 'Det' of node 'the_det' has no PyTorch converter" in message  # a member to tokenize
    assert Zoo(tmp_path / "zoo").get("det").arch is None
    with pytest.raises(GeosaneError, match=r"architecture .*unknown.*ONNX op 'Det' of node 'the_det'"):
        Zoo(tmp_path / "zoo").load("det").build()  # anything needing the architecture says why


# ---------------------------------------------------------------------------------------------
# graphs no library describes: converted with onnx2torch


def _exported_resnet(path: Path) -> torch.nn.Module:
    model = timm.create_model("resnet18", channels=[8, 8, 16, 16], num_classes=5).eval()
    torch.onnx.export(
        model, (torch.zeros(1, 3, 32, 32),), str(path), dynamo=False, opset_version=17,
        input_names=["x"], dynamic_axes={"x": {0: "batch"}},
    )  # fmt: skip
    return model


def test_an_unknown_graph_is_converted_rebuilt_from_its_record_and_checked(tmp_path: Path) -> None:
    original = _exported_resnet(tmp_path / "net.onnx")
    loaded = resolve(str(tmp_path / "net.onnx"))
    assert loaded.arch is not None and loaded.arch.library == "onnx"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded.build().eval()(x), original(x), atol=1e-5)
    if importlib.util.find_spec("onnxruntime") is not None:
        assert loaded.info["metadata"]["onnx_parity"]["relative"] < 1e-5
    zoo = Zoo.create(tmp_path / "zoo")
    zoo.add(loaded, model_id="net")
    with torch.no_grad():
        assert torch.allclose(zoo.load("net").build().eval()(x), original(x), atol=1e-5)
    (tmp_path / "net.onnx").write_bytes((tmp_path / "net.onnx").read_bytes() + b"\0")
    with pytest.raises(SourceError, match=r"net.onnx changed since it was recorded"):
        zoo.load("net").build()


# ---------------------------------------------------------------------------------------------
# smp as an architecture library


def test_smp_architectures_build_segmenters_and_refuse_to_classify() -> None:
    from geosane.tasks import build_classifier, build_segmenter
    from geosane.zoo.sources import arch_family, parse_arch

    spec = parse_arch("smp:Unet", {"encoder_name": "resnet18", "in_channels": 4, "classes": 3})
    assert arch_family(spec) == "unet-resnet"
    with pytest.raises(SourceError, match=r"unknown smp architecture 'Unett' \(known: .*Unet"):
        parse_arch("smp:Unett")
    torch.manual_seed(0)
    source = build_segmenter(spec, num_classes=3)
    model = build_segmenter(spec, num_classes=5, state_dict=source.state_dict(), in_chans=4)
    same = {k: v for k, v in model.state_dict().items() if not k.startswith("segmentation_head.")}
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in same.items())  # only the head is new
    assert model.eval()(torch.randn(2, 4, 64, 64)).shape == (2, 5, 64, 64)
    with pytest.raises(GeosaneError, match=r"smp:Unet is a segmentation model; it cannot be a classifier"):
        build_classifier(spec, num_classes=3)


def test_torchgeo_unet_weights_are_smp_unets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A TorchGeo U-Net checkpoint, written in its published layout (the smp state dict) where
    TorchGeo caches it, resolves to the smp U-Net with the weights' metadata."""
    pytest.importorskip("torchgeo")
    import segmentation_models_pytorch as smp
    from huggingface_hub import constants
    from torchgeo.models import get_weight

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    name = "Unet_Weights.OAM_RGB_RESNET34_TCD"
    weights = get_weight(name)
    torch.manual_seed(0)
    published = smp.create_model("Unet", encoder_name="resnet34", encoder_weights=None, in_channels=3, classes=2)
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        cached = tmp_path / "hub" / "checkpoints" / Path(weights.url).name
        cached.parent.mkdir(parents=True)
        torch.save(published.state_dict(), cached)
        loaded = resolve(f"torchgeo:{name}")
    finally:
        torch.hub.set_dir(str(Path.home() / ".cache" / "torch" / "hub"))
    assert loaded.arch == ArchSpec("smp", "Unet", {"encoder_name": "resnet34", "in_channels": 3, "classes": 2})
    assert (loaded.info["task"], loaded.info["num_classes"]) == ("segmentation", 2)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.build().eval()(x), published.eval()(x))


@_NEEDS_CSMASK
def test_scene_selection_data_must_be_a_folder_of_selection_scenes(
    tmp_path: Path, csmask_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from geosane.autoencoder import ModelConfig, WeightAutoencoder, save_autoencoder

    ae = WeightAutoencoder(ModelConfig(d_t=32, d_model=32, n_heads=2, n_layers=1, lat_dim=16, window=16,
                                       max_layers=256, max_chunks=256, proj_hidden=16, proj_dim=8))  # fmt: skip
    save_autoencoder(ae, tmp_path / "ae.safetensors")
    code, _, err = run_cli(
        capsys, "generate", "--ae", str(tmp_path / "ae.safetensors"), "--prompt", str(csmask_file("model_6b_l2a.onnx")),
        "--select-data", str(csmask_root), "--out", str(tmp_path / "gen"),
    )  # fmt: skip
    message = " ".join(err.split())
    assert code == 2 and "holds .npz scenes: pass --select-split all with a folder of the selection scenes only" in message
    assert not (tmp_path / "gen").exists()


@_NEEDS_CSMASK
def test_the_real_graph_without_its_sidecar_is_converted_and_parity_decides(tmp_path: Path) -> None:
    """No sidecar, so no smp record: the csmask graph goes through onnx2torch, whose module drifts
    from onnxruntime by ~1e-2 (relative) on this fp16 graph: refused at the default tolerance,
    accepted (and recorded) when the user allows it."""
    path = tmp_path / "model_6b_l2a.onnx"
    shutil.copy(csmask_file("model_6b_l2a.onnx"), path)
    with pytest.raises(SourceError, match=r"the rebuilt onnx:model_6b_l2a differs from onnxruntime by .*> tolerance 1e-03"):
        resolve(str(path))
    loaded = resolve(str(path), parity_tolerance=5e-2)
    assert loaded.arch.library == "onnx" and loaded.info["metadata"]["onnx_parity"]["relative"] < 5e-2
    assert loaded.info["license"] is None  # a copy outside the package: no license is claimed
    assert loaded.build().eval()(torch.randn(1, 6, 64, 64)).shape == (1, 3, 64, 64)


# ---------------------------------------------------------------------------------------------
# out-of-domain members: the MTCNN face detectors of facenet-pytorch


class _PNet(torch.nn.Module):
    """facenet-pytorch's MTCNN P-Net, layer for layer (its ``data/pnet.pt`` is this state dict)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = torch.nn.Conv2d(3, 10, 3), torch.nn.PReLU(10)
        self.conv2, self.prelu2 = torch.nn.Conv2d(10, 16, 3), torch.nn.PReLU(16)
        self.conv3, self.prelu3 = torch.nn.Conv2d(16, 32, 3), torch.nn.PReLU(32)
        self.conv4_1, self.conv4_2 = torch.nn.Conv2d(32, 2, 1), torch.nn.Conv2d(32, 4, 1)


def _mtcnn_files(tmp_path: Path) -> list[Path]:
    """The real files when facenet-pytorch is installed (``pip install --no-deps facenet-pytorch``),
    else a P-Net checkpoint written in the published layout (an OrderedDict saved by torch.save)."""
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is not None and spec.origin is not None:
        data = Path(spec.origin).parent / "data"
        return [data / f"{name}.pt" for name in ("pnet", "rnet", "onet")]
    torch.manual_seed(0)
    path = tmp_path / "pnet.pt"
    torch.save(_PNet().state_dict(), path)
    return [path]


def test_mtcnn_face_detectors_are_out_of_domain_members(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from geosane.tokens import TokenStore, detokenize

    files = _mtcnn_files(tmp_path)
    zoo_dir = tmp_path / "zoo"
    code, _, err = run_cli(
        capsys, "zoo", "add", *map(str, files), "--zoo", str(zoo_dir),
        "--task", "face-detection", "--modality", "rgb", "--license", "MIT",
    )  # fmt: skip
    assert code == 0, err
    entry = Zoo(zoo_dir).get("pnet")
    assert (entry.task, entry.modality, entry.license, entry.arch) == ("face-detection", "rgb", "MIT", None)
    assert entry.num_params == 6632  # P-Net's published size
    code, _, err = run_cli(capsys, "tokenize", "--zoo", str(zoo_dir), "--out", str(tmp_path / "store"))
    assert code == 0, err
    store = TokenStore(tmp_path / "store")
    back = detokenize(store.load("pnet"))
    want = Zoo(zoo_dir).load_state_dict("pnet")
    assert list(back) == list(want) and all(torch.equal(back[k], want[k]) for k in want)
