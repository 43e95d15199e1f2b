"""Every source type on real (random-init) timm architectures, and every bad source input."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from geosane.errors import SourceError, UnsafeCheckpointError
from geosane.zoo import ArchSpec, Zoo, build_architecture, resolve
from geosane.zoo.formats import read_weights
from geosane.zoo.sources import check_fits, choose_weight_files, torchgeo_arch
from tests.conftest import run_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL_RESNET = {"num_classes": 5, "channels": (8, 8, 16, 16)}


def small_resnet() -> torch.nn.Module:
    return timm.create_model("resnet18", **SMALL_RESNET)


def assert_same_tensors(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key].dtype == value.dtype and torch.equal(got[key], value), key


# ---------------------------------------------------------------------------------------------
# local formats


def test_safetensors_file_and_arch_restores_model_order(tmp_path):
    model = small_resnet()
    sd = model.state_dict()
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))  # plain safetensors: order lost
    loaded = resolve(str(path))
    assert_same_tensors(loaded.state_dict, sd)
    assert loaded.arch is None and list(loaded.state_dict) != list(sd)
    with_arch = resolve(str(path), arch=ArchSpec("timm", "resnet18", SMALL_RESNET))
    assert list(with_arch.state_dict) == list(sd)  # the architecture's key order is restored
    net = with_arch.build().eval()
    assert net(torch.zeros(1, 3, 32, 32)).shape == (1, 5)


def test_arch_that_does_not_fit_is_refused(tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file(small_resnet().state_dict(), str(path))
    with pytest.raises(
        SourceError,
        match=r"weights do not fit timm:resnet18: unexpected '.*' \(6 unexpected\), 'fc.bias' has shape \(5,\), the architecture expects \(1000,\)",
    ):
        resolve(str(path), arch="timm:resnet18")  # default widths: shapes differ


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin"])
@pytest.mark.parametrize("wrap", [None, "state_dict", "model"])
def test_weights_only_pickles(tmp_path, suffix, wrap):
    sd = small_resnet().state_dict()
    path = tmp_path / f"weights{suffix}"
    torch.save(sd if wrap is None else {wrap: sd, "epoch": 3}, path)
    loaded = resolve(str(path))
    assert_same_tensors(loaded.state_dict, sd)
    assert list(loaded.state_dict) == list(sd)


def test_lightning_checkpoint_strips_the_wrapper_prefix(tmp_path):
    from geosane.tasks import FitConfig, TaskModule

    model = small_resnet()
    module = TaskModule(model, "classification", 5, FitConfig(epochs=1))
    data = torch.utils.data.TensorDataset(torch.randn(4, 3, 32, 32), torch.randint(0, 5, (4,)))
    trainer = L.Trainer(
        max_steps=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path, accelerator="cpu",
    )  # fmt: skip
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=4))
    ckpt = tmp_path / "run.ckpt"
    trainer.save_checkpoint(ckpt)
    raw = torch.load(ckpt, weights_only=True)
    assert all(k.startswith("model.") for k in raw["state_dict"])
    loaded = resolve(str(ckpt), arch=ArchSpec("timm", "resnet18", SMALL_RESNET))
    assert_same_tensors(loaded.state_dict, model.state_dict())  # trained weights, prefix removed
    assert loaded.info["stripped_prefix"] == "model."


def test_onnx_initializers_of_an_exported_timm_model(tmp_path):
    model = small_resnet()
    path = tmp_path / "resnet.onnx"
    torch.onnx.export(
        model, (torch.zeros(2, 3, 32, 32),), str(path), dynamo=False,
        training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False,
    )  # fmt: skip
    loaded = resolve(str(path))
    sd = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert_same_tensors(loaded.state_dict, sd)
    assert loaded.info["in_chans"] == 3


def test_directory_with_timm_config_and_card(tmp_path):
    model = small_resnet()
    folder = tmp_path / "repo"
    folder.mkdir()
    save_file(model.state_dict(), str(folder / "model.safetensors"))
    config = {"architecture": "resnet18", "num_classes": 5, "model_args": {"channels": [8, 8, 16, 16]}}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "README.md").write_text("---\nlicense: apache-2.0\nlibrary_name: timm\n---\n# resnet\n")
    loaded = resolve(str(folder))
    assert loaded.arch == ArchSpec("timm", "resnet18", {"channels": [8, 8, 16, 16], "num_classes": 5})
    assert loaded.info["license"] == "apache-2.0"
    assert list(loaded.state_dict) == list(model.state_dict())
    torch.testing.assert_close(
        loaded.build().eval()(torch.ones(1, 3, 32, 32)), model.eval()(torch.ones(1, 3, 32, 32))
    )


def test_directory_with_none_or_several_weight_files(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no weights here")
    with pytest.raises(SourceError, match=r"holds no weights file"):
        resolve(str(empty))
    several = tmp_path / "several"
    several.mkdir()
    sd = small_resnet().state_dict()
    save_file(sd, str(several / "a.safetensors"))
    torch.save(sd, several / "b.pt")
    with pytest.raises(SourceError, match=r"holds several weights files \(a\.safetensors, b\.pt\)"):
        resolve(str(several))


def test_zoo_source_round_trips(tmp_path):
    zoo = Zoo.create(tmp_path / "zoo")
    original = resolve("timm:resnet18", random_init=True, num_classes=3)
    entry, _ = zoo.add(original)
    loaded = resolve(f"zoo:{zoo.path}#{entry.id}")
    assert list(loaded.state_dict) == list(original.state_dict)  # key order survives safetensors
    assert_same_tensors(loaded.state_dict, original.state_dict)
    assert loaded.arch == original.arch
    with pytest.raises(SourceError, match=r"zoo:ZOO_DIR#MODEL_ID"):
        resolve(f"zoo:{zoo.path}")


def test_dedupe_ignores_file_format_and_key_order(tmp_path):
    sd = small_resnet().state_dict()
    path = tmp_path / "w.safetensors"
    save_file(sd, str(path))  # scrambled key order
    torch.save(sd, tmp_path / "w.pt")
    zoo = Zoo.create(tmp_path / "zoo")
    first, added = zoo.add(resolve(str(tmp_path / "w.pt")))
    again, added_again = zoo.add(resolve(str(path)))
    assert added and not added_again and again.id == first.id and len(zoo) == 1


# ---------------------------------------------------------------------------------------------
# Hugging Face Hub (offline, from a local cache laid out as huggingface_hub writes it)


def _fake_hf_cache(root: Path, repo_id: str, files: dict[str, bytes]) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, content in files.items():
        (snapshot / name).write_bytes(content)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def test_hf_timm_repo_from_offline_cache(tmp_path, offline_hub):
    model = small_resnet()
    save_file(model.state_dict(), str(tmp_path / "m.safetensors"))
    torch.save({k: v + 1 for k, v in model.state_dict().items()}, tmp_path / "m.bin")
    config = {"architecture": "resnet18", "num_classes": 5, "model_args": {"channels": [8, 8, 16, 16]}}
    _fake_hf_cache(
        offline_hub,
        "someorg/tiny-resnet",
        {
            "model.safetensors": (tmp_path / "m.safetensors").read_bytes(),
            "pytorch_model.bin": (tmp_path / "m.bin").read_bytes(),
            "config.json": json.dumps(config).encode(),
            "README.md": b"---\nlicense: cc-by-4.0\ntags: [sentinel-2]\n---\n",
        },
    )
    loaded = resolve("hf:someorg/tiny-resnet")
    assert_same_tensors(loaded.state_dict, model.state_dict())  # safetensors chosen over the pickle
    assert loaded.arch is not None and loaded.arch.name == "resnet18"
    assert loaded.info["license"] == "cc-by-4.0" and loaded.info["num_classes"] == 5
    assert list(loaded.state_dict) == list(model.state_dict())


def test_hf_not_cached_offline_and_bad_spec(offline_hub):
    with pytest.raises(
        SourceError, match=r"hf:someorg/absent is not in the local Hugging Face cache and the Hub is offline"
    ):
        resolve("hf:someorg/absent")
    with pytest.raises(SourceError, match=r"must look like hf:ORG/NAME\[@REVISION\]"):
        resolve("hf:no-slash")


def test_choose_weight_files_prefers_safetensors():
    assert choose_weight_files(["README.md", "pytorch_model.bin", "model.safetensors"]) == [
        "model.safetensors"
    ]
    assert choose_weight_files(["x.ckpt", "open_clip_pytorch_model.bin"]) == ["open_clip_pytorch_model.bin"]
    with pytest.raises(SourceError, match="several candidate weight files"):
        choose_weight_files(["a.safetensors", "b.safetensors"])


# ---------------------------------------------------------------------------------------------
# TorchGeo


@pytest.mark.parametrize(
    ("enum", "timm_name", "stem_key", "in_chans"),
    [
        ("ResNet18_Weights.SENTINEL2_ALL_MOCO", "resnet18", "conv1.weight", 13),
        ("ResNet50_Weights.FMOW_RGB_GASSL", "resnet50", "conv1.weight", 3),
        ("ResNet152_Weights.SENTINEL2_MI_MS_SATLAS", "resnet152", "conv1.weight", 9),
        ("ViTSmall16_Weights.LANDSAT_TM_TOA_MOCO", "vit_small_patch16_224", "patch_embed.proj.weight", 7),
        (
            "ViTSmall14_DINOv2_Weights.SENTINEL2_ALL_SOFTCON",
            "vit_small_patch14_dinov2",
            "patch_embed.proj.weight",
            13,
        ),
    ],
)
def test_torchgeo_enum_maps_to_a_timm_backbone(enum, timm_name, stem_key, in_chans):
    pytest.importorskip("torchgeo")
    from torchgeo.models import get_weight

    arch = torchgeo_arch(get_weight(enum))
    assert arch is not None and arch.name == timm_name and arch.kwargs["num_classes"] == 0
    with torch.device("meta"):
        net = build_architecture(arch)
    assert net.state_dict()[stem_key].shape[1] == in_chans
    assert not any(k.startswith(("fc.", "head.")) for k in net.state_dict())


def test_torchgeo_from_cache_and_offline_refusal(tmp_path, monkeypatch):
    pytest.importorskip("torchgeo")
    from huggingface_hub import constants
    from torchgeo.models import get_weight

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        name = "ResNet18_Weights.SENTINEL2_ALL_MOCO"
        with pytest.raises(
            SourceError,
            match=r"torchgeo:ResNet18_Weights\.SENTINEL2_ALL_MOCO: weights are not cached and downloads are off",
        ):
            resolve(f"torchgeo:{name}")
        # the file as TorchGeo would have cached it: a 13-band resnet18 backbone without head
        weights = get_weight(name)
        backbone = timm.create_model("resnet18", in_chans=13, num_classes=0).state_dict()
        cached = tmp_path / "hub" / "checkpoints" / Path(weights.url).name
        cached.parent.mkdir(parents=True)
        torch.save(backbone, cached)
        loaded = resolve(f"torchgeo:{name}")
        assert_same_tensors(loaded.state_dict, backbone)
        assert loaded.info["in_chans"] == 13 and len(loaded.info["bands"]) == 13
        assert loaded.build().eval()(torch.zeros(1, 13, 32, 32)).shape == (1, 512)
    finally:
        torch.hub.set_dir(str(Path.home() / ".cache" / "torch" / "hub"))


def test_torchgeo_unknown_enum_and_missing_extra(monkeypatch):
    pytest.importorskip("torchgeo")
    with pytest.raises(
        SourceError, match=r"unknown TorchGeo weights 'ResNet18_Weights\.NOPE'; e\.g\. ResNet18_Weights\."
    ):
        resolve("torchgeo:ResNet18_Weights.NOPE")
    monkeypatch.setitem(__import__("sys").modules, "torchgeo.models", None)
    with pytest.raises(SourceError, match=r"pip install 'geosane\[torchgeo\]'"):
        resolve("torchgeo:ResNet18_Weights.SENTINEL2_ALL_MOCO")


# ---------------------------------------------------------------------------------------------
# bad input


class _WritesMarker:
    """Unpickling this would call ``Path.write_text(marker, 'pwned')``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


@pytest.mark.parametrize("how", ["torch.save", "pickle.dump"])
def test_code_executing_pickle_is_refused_and_not_run(tmp_path, how):
    marker = tmp_path / "marker.txt"
    path = tmp_path / "evil.pt"
    payload = {"state_dict": {"w": torch.zeros(2)}, "trap": _WritesMarker(marker)}
    if how == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(
        UnsafeCheckpointError, match=rf"refusing to load {path}: it is not a weights-only checkpoint"
    ):
        resolve(str(path))
    assert not marker.exists()


def test_unsafe_message_names_the_needed_global(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "trap": _WritesMarker(tmp_path / "m")}, path)
    with pytest.raises(
        UnsafeCheckpointError, match=r"\(needs builtins\.getattr, pathlib\.Path, pathlib\.PosixPath\)"
    ):
        resolve(str(path))


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _saved(tmp_path: Path, suffix: str) -> Path:
    model = small_resnet()
    path = tmp_path / f"m{suffix}"
    if suffix == ".safetensors":
        save_file(model.state_dict(), str(path))
    elif suffix == ".onnx":
        torch.onnx.export(model.eval(), (torch.zeros(1, 3, 32, 32),), str(path), dynamo=False)
    else:
        torch.save({"state_dict": model.state_dict()}, path)
    return path


@pytest.mark.parametrize(
    ("suffix", "message"),
    [
        (".safetensors", r"corrupt or truncated safetensors file"),
        (".pt", r"corrupt or truncated checkpoint"),
        (".ckpt", r"corrupt or truncated checkpoint"),
        (".onnx", r"corrupt or truncated ONNX file"),
    ],
)
def test_truncated_files(tmp_path, suffix, message):
    path = _truncate(_saved(tmp_path, suffix))
    with pytest.raises(SourceError, match=rf"{message} {path}"):
        resolve(str(path))


def test_garbage_file(tmp_path):
    path = tmp_path / "noise.safetensors"
    path.write_bytes(b"\x00\x01not a safetensors header" * 10)
    with pytest.raises(SourceError, match=r"corrupt or truncated safetensors file"):
        resolve(str(path))


def test_empty_state_dict(tmp_path):
    torch.save({}, tmp_path / "empty.pt")
    with pytest.raises(SourceError, match=r"empty\.pt: the state dict is empty"):
        resolve(str(tmp_path / "empty.pt"))
    save_file({}, str(tmp_path / "empty.safetensors"))
    with pytest.raises(SourceError, match=r"the state dict is empty"):
        resolve(str(tmp_path / "empty.safetensors"))


def test_nonfinite_tensor_is_named_unless_allowed(tmp_path):
    sd = small_resnet().state_dict()
    sd["layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    sd["fc.bias"][1] = float("inf")
    path = tmp_path / "nan.safetensors"
    save_file(sd, str(path))
    with pytest.raises(
        SourceError,
        match=r"tensor '(layer2\.0\.conv1\.weight|fc\.bias)' holds NaN/Inf values \(1 of \d+\); pass allow_nonfinite=True",
    ):
        resolve(str(path))
    loaded = resolve(str(path), allow_nonfinite=True)
    assert torch.isnan(loaded.state_dict["layer2.0.conv1.weight"]).sum() == 1


def test_unknown_scheme_and_missing_file(tmp_path):
    with pytest.raises(
        SourceError,
        match=r"unknown source scheme 'foo:' in 'foo:bar' \(known: geofm:, hf:, pkg:, timm:, torchgeo:, zoo:",
    ):
        resolve("foo:bar")
    with pytest.raises(SourceError, match=r"model file not found: .*nothing\.safetensors"):
        resolve(str(tmp_path / "nothing.safetensors"))


def test_unsupported_suffix(tmp_path):
    (tmp_path / "w.h5").write_bytes(b"x")
    with pytest.raises(SourceError, match=r"unsupported model file type '\.h5'"):
        resolve(str(tmp_path / "w.h5"))


def test_check_fits_reports_shape_mismatch():
    sd = small_resnet().state_dict()
    problems = check_fits(ArchSpec("timm", "resnet18", {"num_classes": 7, "channels": (8, 8, 16, 16)}), sd)
    assert problems == ["'fc.weight' has shape (5, 16), the architecture expects (7, 16)"]


def test_timm_pretrained_offline_is_refused_without_random_init(offline_hub):
    with pytest.raises(
        SourceError,
        match=r"pretrained weights for timm:resnet18\.a1_in1k could not be fetched .*random_init=True",
    ):
        resolve("timm:resnet18.a1_in1k")
    loaded = resolve("timm:resnet18.a1_in1k", random_init=True, in_chans=4, num_classes=3)
    assert loaded.state_dict["conv1.weight"].shape[1] == 4 and loaded.info["pretrained"] is False


def test_first_nonfinite_edge_cases():
    from geosane.zoo.sources import first_nonfinite

    big = torch.full((4,), 1e308, dtype=torch.float64)  # finite entries whose sum overflows
    assert first_nonfinite({"big": big, "ints": torch.arange(3)}) is None
    both = torch.tensor([float("inf"), float("-inf")])  # sums to NaN
    assert first_nonfinite({"ok": torch.ones(2), "both": both}) == "both"
    assert first_nonfinite({"half": torch.tensor([65504.0, 65504.0], dtype=torch.float16)}) is None


def _onnx_with_external_data(folder: Path, location: str) -> Path:
    """A one-MatMul ONNX graph whose weight lives in an external data file at ``location``."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), "w")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "48")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], [weight],
    )  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString())
    return path


def test_onnx_external_data_inside_its_folder_is_read(tmp_path):
    pytest.importorskip("onnx")
    path = _onnx_with_external_data(tmp_path / "m", "weights.bin")
    (tmp_path / "m" / "weights.bin").write_bytes(np.arange(12, dtype=np.float32).tobytes())
    weight = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    initializers, _ = read_weights(path)
    assert torch.equal(initializers["w"], weight)
    loaded = resolve(str(path))  # the graph converts (onnx2torch) and computes x @ w
    x = torch.randn(1, 4)
    assert loaded.arch.library == "onnx" and torch.allclose(loaded.build()(x), x @ weight)


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/hostname"])
def test_onnx_external_data_outside_its_folder_is_refused_in_one_line(tmp_path, capsys, location):
    pytest.importorskip("onnx")
    (tmp_path / "secret.bin").write_bytes(bytes(48))
    path = _onnx_with_external_data(tmp_path / "m", location)
    code, _, err = run_cli(capsys, "zoo", "add", str(path), "--zoo", str(tmp_path / "zoo"))
    message = " ".join(err.split())
    assert code == 2 and f"initializer 'w' external data: file path '{location}' leaves its directory" in message
    assert "Traceback" not in err and not (tmp_path / "zoo").exists()
