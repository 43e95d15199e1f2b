"""Published geospatial foundation-model checkpoints (Prithvi, SatMAE, SSL4EO-S12, DINOv2 in
transformers' layout) through the real loaders, offline.

Each checkpoint is written here in its published key layout, nesting and dtype, with random
values. The key sets are spelled out from the publishing code (MAE's ``MaskedAutoencoderViT``,
TerraTorch's ``PrithviMAE``, SSL4EO-S12's ``builder.MoCo`` on torchvision's ResNet-50, DINO's
``MultiCropWrapper`` teacher, transformers' ``convert_dinov2_to_hf`` names), not derived from the
models geosane builds. Width and depth are shrunk (the loaders read both from the checkpoint or
config.json); the published full sizes are checked on the meta device, without memory.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from geosane.arch.layouts import HLS_BANDS, LAYOUTS, S2_L1C_BANDS, convert_checkpoint
from geosane.arch.prithvi import sincos_3d
from geosane.errors import SourceError
from geosane.zoo import resolve
from tests.conftest import run_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _shapes_to_tensors(shapes: dict[str, tuple[int, ...]], device: str = "cpu") -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    out = {}
    for key, shape in shapes.items():
        if device == "meta":
            out[key] = torch.empty(shape, device="meta")
        elif key.endswith("num_batches_tracked") or key.endswith("queue_ptr"):
            out[key] = torch.zeros(shape, dtype=torch.long)
        else:
            out[key] = torch.randn(shape, generator=gen)
    return out


def vit_block(prefix: str, dim: int, hidden: int) -> dict[str, tuple[int, ...]]:
    """timm's ``Block`` as MAE/DINO/Prithvi publish it (qkv bias, LayerNorms, MLP)."""
    return {
        f"{prefix}.norm1.weight": (dim,), f"{prefix}.norm1.bias": (dim,),
        f"{prefix}.attn.qkv.weight": (3 * dim, dim), f"{prefix}.attn.qkv.bias": (3 * dim,),
        f"{prefix}.attn.proj.weight": (dim, dim), f"{prefix}.attn.proj.bias": (dim,),
        f"{prefix}.norm2.weight": (dim,), f"{prefix}.norm2.bias": (dim,),
        f"{prefix}.mlp.fc1.weight": (hidden, dim), f"{prefix}.mlp.fc1.bias": (hidden,),
        f"{prefix}.mlp.fc2.weight": (dim, hidden), f"{prefix}.mlp.fc2.bias": (dim,),
    }  # fmt: skip


def mae_shapes(
    dim: int, depth: int, chans: int, tokens: int, patch: tuple[int, ...], dec: int = 32, dec_depth: int = 1
) -> dict[str, tuple[int, ...]]:
    """MAE's ``MaskedAutoencoderViT`` state dict (encoder, then the decoder)."""
    shapes: dict[str, tuple[int, ...]] = {
        "cls_token": (1, 1, dim), "pos_embed": (1, tokens + 1, dim),
        "patch_embed.proj.weight": (dim, chans, *patch), "patch_embed.proj.bias": (dim,),
    }  # fmt: skip
    for i in range(depth):
        shapes.update(vit_block(f"blocks.{i}", dim, 4 * dim))
    shapes.update({"norm.weight": (dim,), "norm.bias": (dim,)})
    shapes.update({"decoder_embed.weight": (dec, dim), "decoder_embed.bias": (dec,), "mask_token": (1, 1, dec),
                   "decoder_pos_embed": (1, tokens + 1, dec)})  # fmt: skip
    for i in range(dec_depth):
        shapes.update(vit_block(f"decoder_blocks.{i}", dec, 4 * dec))
    pixels = chans
    for p in patch:
        pixels *= p
    shapes.update({"decoder_norm.weight": (dec,), "decoder_norm.bias": (dec,),
                   "decoder_pred.weight": (pixels, dec), "decoder_pred.bias": (pixels,)})  # fmt: skip
    return shapes


def prithvi_v2_shapes(
    dim: int, depth: int, frames: int = 4, coords: bool = True, dec: int = 32
) -> dict[str, tuple[int, ...]]:
    """TerraTorch's ``PrithviMAE``: ``encoder.*`` (PrithviViT) and ``decoder.*`` (MAEDecoder)."""
    mae = mae_shapes(dim, depth, 6, frames * 196, (1, 16, 16), dec)
    out: dict[str, tuple[int, ...]] = {}
    for key, shape in mae.items():
        if key.startswith(("decoder_", "mask_token")):
            out[f"decoder.{key}"] = shape
        else:
            out[f"encoder.{key}"] = shape
    if coords:
        out["encoder.temporal_embed_enc.scale"] = (1,)
        out["encoder.location_embed_enc.scale"] = (1,)
        out["decoder.temporal_embed_dec.scale"] = (1,)
        out["decoder.location_embed_dec.scale"] = (1,)
    return out


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def fake_hub_repo(cache: Path, repo_id: str, files: dict[str, bytes]) -> Path:
    """A repo snapshot laid out as huggingface_hub writes it."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    for name, content in files.items():
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).write_bytes(content)
    return snapshot


def _bytes(obj: Any, tmp_path: Path) -> bytes:
    path = tmp_path / "blob.pt"
    torch.save(obj, path)
    return path.read_bytes()


@pytest.fixture(autouse=True)
def _no_grad() -> Iterator[None]:
    with torch.no_grad():
        yield


def _all_used(loaded: Any, published: dict[str, torch.Tensor], rename: Any = lambda k: k) -> None:
    """Every published tensor is in the state dict (under its new name) or listed as dropped."""
    dropped = set(loaded.info["dropped"])
    for key, value in published.items():
        if key in dropped:
            continue
        new = rename(key)
        assert new in loaded.state_dict, f"{key} neither used nor listed as dropped"
        assert torch.equal(loaded.state_dict[new], value), key
    assert len(loaded.state_dict) + len(dropped) == len(published)


# ---------------------------------------------------------------------------------------------
# Prithvi


def test_prithvi_v1_local_file_by_key_signature(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    published = _shapes_to_tensors(mae_shapes(64, 2, 6, 3 * 196, (1, 16, 16)))
    published["pos_embed"] = sincos_3d(64, (3, 14, 14))  # fixed, as Prithvi initialises (and freezes) it
    path = tmp_path / "Prithvi_EO_V1_100M.pt"
    torch.save(published, path)
    loaded = resolve(str(path))
    assert loaded.info["layout"] == "prithvi-eo-1"
    assert loaded.arch is not None and (loaded.arch.library, loaded.arch.name) == ("geosane", "prithvi_vit")
    assert loaded.arch.kwargs["num_frames"] == 3 and loaded.arch.kwargs["patch_size"] == [1, 16, 16]
    _all_used(loaded, published)
    assert sorted(loaded.info["dropped"]) == sorted(
        k for k in published if k.startswith(("decoder_", "mask_token"))
    )
    assert loaded.info["bands"] == list(HLS_BANDS)
    norm = loaded.info["metadata"]["input"]["normalization"]
    assert norm["mean"][0] == pytest.approx(775.2290211032589) and norm["std"][5] == pytest.approx(
        1154.505683480695
    )
    model = loaded.build()
    assert model.temporal_frames == 3 and model.num_prefix_tokens == 1
    tokens = model.forward_features(torch.randn(2, 3, 6, 224, 224))  # [B, T, C, H, W]
    assert tokens.shape == (2, 1 + 3 * 196, 64)
    assert model(torch.randn(1, 1, 6, 64, 64)).shape == (1, 64)  # another T and size: sin-cos recomputed
    code, out, err = run_cli(capsys, "zoo", "describe", str(path), "--json")
    assert code == 0, err
    row = json.loads(out)
    assert row["bands"] == list(HLS_BANDS) and row["arch"]["name"] == "prithvi_vit"
    assert row["normalization"]["units"].startswith("HLS surface reflectance")
    assert any("is the fixed 3D sin-cos embedding" in n for n in row["remapped"])
    code, _, err = run_cli(capsys, "zoo", "describe", str(path))  # the table (stderr)
    assert code == 0, err
    rows = {
        line.split("│")[1].strip(): line.split("│")[2].strip()
        for line in err.splitlines()
        if line.count("│") == 3
    }
    assert rows["layout"] == "prithvi-eo-1" and rows["temporal_frames"] == "3 (input [B, T, C, H, W])"
    assert rows["dropped"].startswith(
        f"{len(loaded.info['dropped'])} published tensors: decoder_embed.weight"
    )


def test_prithvi_v2_tl_from_the_hub_cache(tmp_path: Path, offline_hub: Path) -> None:
    published = _shapes_to_tensors(prithvi_v2_shapes(64, 2))
    config = {"architecture": "prithvi_eo_v2_300_tl", "num_features": 64, "pretrained_cfg": {
        "img_size": 224, "num_frames": 4, "patch_size": [1, 16, 16], "in_chans": 6, "embed_dim": 64, "depth": 2,
        "num_heads": 2, "mlp_ratio": 4, "coords_encoding": ["time", "location"], "coords_scale_learn": True,
        "bands": ["B02", "B03", "B04", "B05", "B06", "B07"],
        "mean": [1087.0, 1342.0, 1433.0, 2734.0, 1958.0, 1363.0], "std": [2248.0, 2179.0, 2178.0, 1850.0, 1242.0, 1049.0]}}  # fmt: skip
    fake_hub_repo(offline_hub, "ibm-nasa-geospatial/Prithvi-EO-2.0-300M-TL", {
        "Prithvi_EO_V2_300M_TL.pt": _bytes(published, tmp_path),
        "inference.py.bin": _bytes({"x": torch.zeros(1)}, tmp_path),  # a second candidate: the layout's name wins
        "config.json": json.dumps(config).encode(), "README.md": b"---\nlicense: apache-2.0\n---\n"})  # fmt: skip
    loaded = resolve("hf:ibm-nasa-geospatial/Prithvi-EO-2.0-300M-TL")
    assert loaded.info["layout"] == "prithvi-eo-2" and loaded.info["hf_repo"].endswith("300M-TL")
    assert loaded.arch is not None and loaded.arch.kwargs["coords_encoding"] == ["time", "location"]
    assert loaded.arch.kwargs["num_heads"] == 2 and loaded.info["temporal_frames"] == 4
    _all_used(loaded, published, lambda k: k.removeprefix("encoder."))
    assert all(k.startswith("decoder.") for k in loaded.info["dropped"])
    assert (
        loaded.info["metadata"]["input"]["normalization"]["published"]
        == "config.json pretrained_cfg mean/std"
    )
    model = loaded.build()
    x = torch.randn(1, 4, 6, 224, 224)
    coords_t = torch.tensor([[[2020.0, 10.0], [2020.0, 50.0], [2020.0, 90.0], [2020.0, 130.0]]])
    plain, with_coords = (
        model.forward_features(x),
        model.forward_features(x, coords_t, torch.tensor([[46.0, 7.0]])),
    )
    assert plain.shape == with_coords.shape == (1, 785, 64) and not torch.allclose(plain, with_coords)
    with pytest.raises(Exception, match=r"expects 6 bands per frame"):
        model(torch.randn(1, 4, 5, 224, 224))


def test_prithvi_zoo_record_rebuilds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The architecture record a zoo stores rebuilds the geosane model (library 'geosane')."""
    path = tmp_path / "prithvi.pt"
    torch.save(_shapes_to_tensors(mae_shapes(32, 1, 6, 3 * 196, (1, 16, 16))), path)
    zoo = tmp_path / "zoo"
    code, _, err = run_cli(capsys, "zoo", "add", str(path), "--zoo", str(zoo), "--id", "prithvi")
    assert code == 0, err
    again = resolve(f"zoo:{zoo}#prithvi")
    assert again.arch is not None and again.arch.library == "geosane"
    assert again.build().forward_features(torch.randn(1, 3, 6, 32, 32)).shape == (1, 1 + 3 * 4, 32)


# ---------------------------------------------------------------------------------------------
# SatMAE, SSL4EO-S12


def test_satmae_fmow_rgb_with_training_args(tmp_path: Path) -> None:
    """MAE's save_model: {'model', 'optimizer', 'epoch', 'scaler', 'args' (a Namespace)}."""
    model = _shapes_to_tensors(mae_shapes(64, 2, 3, 196, (16, 16)))
    path = tmp_path / "fmow_pretrain.pth"
    torch.save({"model": model, "optimizer": {"state": {}, "param_groups": []}, "epoch": 799,
                "scaler": {"scale": 65536.0}, "args": argparse.Namespace(model="mae_vit_large_patch16", mask_ratio=0.75)}, path)  # fmt: skip
    loaded = resolve(str(path))
    assert loaded.info["layout"] == "satmae-fmow-rgb"
    assert loaded.arch is not None and loaded.arch.name == "vit_large_patch16_224"
    assert (
        loaded.arch.kwargs["embed_dim"] == 64 and loaded.arch.kwargs["in_chans"] == 3
    )  # shrunk: sizes recorded
    _all_used(loaded, model)
    assert any("optimizer, epoch, scaler, args" in n for n in loaded.info["remapped"])
    assert loaded.info["metadata"]["input"]["normalization"]["mean"][0] == pytest.approx(0.4182007312774658)
    assert loaded.build()(torch.randn(1, 3, 224, 224)).shape == (1, 64)
    renamed = tmp_path / "some_mae.pth"  # an RGB MAE by another name: not taken for SatMAE's
    renamed.write_bytes(path.read_bytes())
    with pytest.raises(Exception, match="refusing to load"):
        resolve(str(renamed))  # so its training args are refused as for any pickle
    assert resolve(f"geofm:satmae-fmow-rgb:{renamed}").info["layout"] == "satmae-fmow-rgb"


def satmae_group_shapes(
    dim: int, depth: int, chan: int = 16, patch: int = 8, side: int = 12, dec: int = 32
) -> dict[str, tuple[int, ...]]:
    """SatMAE's MaskedAutoencoderGroupChannelViT state dict (groups of 4, 4 and 2 bands)."""
    sizes, tokens = (4, 4, 2), side * side
    shapes: dict[str, tuple[int, ...]] = {"cls_token": (1, 1, dim), "pos_embed": (1, tokens + 1, dim - chan),
                                          "channel_embed": (1, 3, chan)}  # fmt: skip
    for i, size in enumerate(sizes):
        shapes.update(
            {f"patch_embed.{i}.proj.weight": (dim, size, patch, patch), f"patch_embed.{i}.proj.bias": (dim,)}
        )
    for i in range(depth):
        shapes.update(vit_block(f"blocks.{i}", dim, 4 * dim))
    shapes.update({"norm.weight": (dim,), "norm.bias": (dim,), "decoder_embed.weight": (dec, dim),
                   "decoder_embed.bias": (dec,), "mask_token": (1, 1, dec), "decoder_pos_embed": (1, tokens + 1, dec - 8),
                   "decoder_channel_embed": (1, 4, 8)})  # fmt: skip
    shapes.update(vit_block("decoder_blocks.0", dec, 4 * dec))
    shapes.update({"decoder_norm.weight": (dec,), "decoder_norm.bias": (dec,)})
    for i, size in enumerate(sizes):
        shapes.update(
            {
                f"decoder_pred.{i}.weight": (size * patch * patch, dec),
                f"decoder_pred.{i}.bias": (size * patch * patch,),
            }
        )
    return shapes


def test_satmae_group_channels(tmp_path: Path) -> None:
    model = _shapes_to_tensors(satmae_group_shapes(64, 2))
    path = tmp_path / "pretrain-vit-large-e199.pth"
    torch.save({"model": model, "epoch": 199, "args": argparse.Namespace(model_type="group_c")}, path)
    loaded = resolve(str(path))
    assert loaded.info["layout"] == "satmae-group-channels"
    assert loaded.arch is not None and (loaded.arch.library, loaded.arch.name) == (
        "geosane",
        "satmae_group_vit",
    )
    assert loaded.arch.kwargs["channel_groups"] == [[0, 1, 2, 6], [3, 4, 5, 7], [8, 9]]
    assert loaded.arch.kwargs["img_size"] == 96 and loaded.arch.kwargs["channel_embed"] == 16
    _all_used(loaded, model)
    assert (
        "decoder_pred.2.weight" in loaded.info["dropped"]
        and "decoder_channel_embed" in loaded.info["dropped"]
    )
    assert loaded.info["bands"] == ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]
    norm = loaded.info["metadata"]["input"]["normalization"]
    assert norm["mean"][0] == pytest.approx(1184.3824625 - 2 * 650.2842772) and norm["std"][
        -1
    ] == pytest.approx(4 * 1087.6020813)
    net = loaded.build()
    tokens = net.forward_features(torch.randn(2, 10, 96, 96))
    assert tokens.shape == (2, 1 + 3 * 144, 64) and net(torch.randn(1, 10, 96, 96)).shape == (1, 64)
    with pytest.raises(Exception, match=r"takes \[B, 10, H, W\]"):
        net(torch.randn(1, 13, 96, 96))
    odd = dict(model)
    odd["patch_embed.2.proj.weight"] = torch.randn(64, 3, 8, 8)
    torch.save({"model": odd}, tmp_path / "odd.pth")
    with pytest.raises(SourceError, match=r"band groups of sizes \[4, 4, 3\]; SatMAE's published grouping"):
        resolve(str(tmp_path / "odd.pth"))


def test_plain_namespace_pickle_is_still_refused(tmp_path: Path) -> None:
    """The Namespace allowance is for recognised layouts only."""
    path = tmp_path / "other.pth"
    torch.save({"model": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(Exception, match="refusing to load"):
        resolve(str(path))


def _moco_checkpoint(chans: int = 13, queue: int = 16) -> dict[str, Any]:
    """SSL4EO-S12's builder.MoCo(resnet50, mlp=True, bands='B13') in DDP, as pretrain_moco_v2_s2c saves it."""
    from torchvision.models.resnet import Bottleneck, ResNet

    def encoder() -> torch.nn.Module:
        net = ResNet(Bottleneck, [1, 1, 1, 1], num_classes=128)  # the repo's resnet50 is [3, 4, 6, 3]
        net.conv1 = torch.nn.Conv2d(chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
        net.fc = torch.nn.Sequential(torch.nn.Linear(2048, 2048), torch.nn.ReLU(), net.fc)
        return net

    state = {f"module.encoder_q.{k}": v for k, v in encoder().state_dict().items()}
    state.update({f"module.encoder_k.{k}": v for k, v in encoder().state_dict().items()})
    state["module.queue"] = torch.randn(128, queue)
    state["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    return {
        "epoch": 100,
        "arch": "resnet50",
        "state_dict": state,
        "optimizer": {"state": {}, "param_groups": []},
    }


def _moco_shapes(layers: list[int]) -> dict[str, tuple[int, ...]]:
    """The query/key encoders' shapes of torchvision's ResNet-50 with ``layers`` blocks (on meta)."""
    from torchvision.models.resnet import Bottleneck, ResNet

    with torch.device("meta"):
        net = ResNet(Bottleneck, layers, num_classes=128)
        net.conv1 = torch.nn.Conv2d(13, 64, kernel_size=7, stride=2, padding=3, bias=False)
        net.fc = torch.nn.Sequential(torch.nn.Linear(2048, 2048), torch.nn.ReLU(), net.fc)
    shapes = {f"module.encoder_{e}.{k}": tuple(v.shape) for e in "qk" for k, v in net.state_dict().items()}
    return {**shapes, "module.queue": (128, 65536), "module.queue_ptr": (1,)}


def test_ssl4eo_moco_rn50(tmp_path: Path) -> None:
    ckpt = _moco_checkpoint()
    path = tmp_path / "B13_rn50_moco_0099_ckpt.pth"
    torch.save(ckpt, path)
    loaded = resolve(str(path))
    assert loaded.info["layout"] == "ssl4eo-moco-rn50" and loaded.info["bands"] == list(S2_L1C_BANDS)
    assert (
        loaded.arch is not None
        and loaded.arch.name == "resnet50"
        and loaded.arch.kwargs["layers"] == [1, 1, 1, 1]
    )
    _all_used(loaded, ckpt["state_dict"], lambda k: k.removeprefix("module.encoder_q."))
    dropped = loaded.info["dropped"]
    assert (
        "module.encoder_q.fc.0.weight" in dropped
        and "module.queue" in dropped
        and "module.encoder_k.conv1.weight" in dropped
    )
    norm = loaded.info["metadata"]["input"]["normalization"]
    assert norm["std"] == [10000.0] * 13 and norm["mean"] == [0.0] * 13 and "uint8" in norm["published"]
    assert loaded.build()(torch.randn(1, 13, 64, 64)).shape == (1, 2048)


def test_ssl4eo_dino_and_mae_vits16(tmp_path: Path, offline_hub: Path) -> None:
    vit = mae_shapes(64, 2, 13, 196, (16, 16))
    backbone = {k: v for k, v in vit.items() if not k.startswith(("decoder_", "mask_token"))}
    head = {"head.mlp.0.weight": (32, 64), "head.mlp.0.bias": (32,), "head.mlp.2.weight": (32, 32),
            "head.mlp.2.bias": (32,), "head.mlp.4.weight": (16, 32), "head.mlp.4.bias": (16,),
            "head.last_layer.weight_g": (8, 1), "head.last_layer.weight_v": (8, 16)}  # fmt: skip
    teacher = _shapes_to_tensors({**{f"backbone.{k}": s for k, s in backbone.items()}, **head})
    student = {f"module.{k}": v + 1 for k, v in teacher.items()}
    dino = {"student": student, "teacher": teacher, "optimizer": {"state": {}, "param_groups": []}, "epoch": 100,
            "args": argparse.Namespace(arch="vit_small", patch_size=16), "dino_loss": {"center": torch.zeros(1, 8)}}  # fmt: skip
    mae = {
        "model": _shapes_to_tensors(vit),
        "epoch": 99,
        "args": argparse.Namespace(model="mae_vit_small_patch16"),
    }
    fake_hub_repo(offline_hub, "wangyi111/SSL4EO-S12", {
        "B13_vits16_dino_0099_ckpt.pth": _bytes(dino, tmp_path), "B13_vits16_mae_0099_ckpt.pth": _bytes(mae, tmp_path),
        "README.md": b"---\nlicense: cc-by-4.0\n---\n"})  # fmt: skip
    loaded = resolve("hf:wangyi111/SSL4EO-S12/B13_vits16_dino_0099_ckpt.pth")
    assert loaded.info["layout"] == "ssl4eo-dino-vits16" and loaded.info["license"] == "cc-by-4.0"
    _all_used(loaded, teacher, lambda k: k.removeprefix("backbone."))
    assert sorted(loaded.info["dropped"]) == sorted(head)
    assert any("student" in n for n in loaded.info["remapped"])
    assert loaded.build()(torch.randn(1, 13, 224, 224)).shape == (1, 64)
    loaded_mae = resolve("hf:wangyi111/SSL4EO-S12/B13_vits16_mae_0099_ckpt.pth")
    assert loaded_mae.info["layout"] == "ssl4eo-mae-vits16" and "mask_token" in loaded_mae.info["dropped"]
    _all_used(loaded_mae, mae["model"])
    with pytest.raises(SourceError, match="several candidate weight files"):
        resolve("hf:wangyi111/SSL4EO-S12")  # two published files: name one
    with pytest.raises(SourceError, match=r"has no file 'B13_rn50_moco_0099_ckpt.pth' in the cache"):
        resolve("hf:wangyi111/SSL4EO-S12/B13_rn50_moco_0099_ckpt.pth")


# ---------------------------------------------------------------------------------------------
# DINOv2 in transformers' layout


def hf_dinov2_state(
    dim: int, depth: int, chans: int, side: int, registers: int = 0
) -> dict[str, torch.Tensor]:
    """transformers' Dinov2Model names (convert_dinov2_to_hf.py's rename table)."""
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.cls_token": (1, 1, dim), "embeddings.mask_token": (1, dim),
        "embeddings.position_embeddings": (1, 1 + side * side, dim),
        "embeddings.patch_embeddings.projection.weight": (dim, chans, 14, 14),
        "embeddings.patch_embeddings.projection.bias": (dim,),
    }  # fmt: skip
    if registers:
        shapes["embeddings.register_tokens"] = (1, registers, dim)
    for i in range(depth):
        p = f"encoder.layer.{i}"
        for part in ("query", "key", "value"):
            shapes[f"{p}.attention.attention.{part}.weight"] = (dim, dim)
            shapes[f"{p}.attention.attention.{part}.bias"] = (dim,)
        shapes.update({
            f"{p}.norm1.weight": (dim,), f"{p}.norm1.bias": (dim,), f"{p}.norm2.weight": (dim,), f"{p}.norm2.bias": (dim,),
            f"{p}.attention.output.dense.weight": (dim, dim), f"{p}.attention.output.dense.bias": (dim,),
            f"{p}.layer_scale1.lambda1": (dim,), f"{p}.layer_scale2.lambda1": (dim,),
            f"{p}.mlp.fc1.weight": (4 * dim, dim), f"{p}.mlp.fc1.bias": (4 * dim,),
            f"{p}.mlp.fc2.weight": (dim, 4 * dim), f"{p}.mlp.fc2.bias": (dim,)})  # fmt: skip
    shapes.update({"layernorm.weight": (dim,), "layernorm.bias": (dim,)})
    return _shapes_to_tensors(shapes)


@pytest.mark.parametrize("registers", [0, 4])
def test_hf_dinov2_remapped_onto_timm(tmp_path: Path, offline_hub: Path, registers: int) -> None:
    state = hf_dinov2_state(64, 2, 4, 4, registers)
    save_file(state, str(tmp_path / "model.safetensors"))
    config = {"model_type": "dinov2_with_registers" if registers else "dinov2", "architectures": ["Dinov2Model"],
              "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 56, "patch_size": 14,
              "num_channels": 4, "mlp_ratio": 4, "layer_norm_eps": 1e-6, "use_swiglu_ffn": False,
              **({"num_register_tokens": registers} if registers else {})}  # fmt: skip
    pre = {
        "image_mean": [0.1, 0.2, 0.3, 0.4],
        "image_std": [0.5, 0.5, 0.5, 0.5],
        "rescale_factor": 1 / 255,
        "do_rescale": True,
    }
    fake_hub_repo(offline_hub, "someorg/dinov2-rs", {
        "model.safetensors": (tmp_path / "model.safetensors").read_bytes(), "config.json": json.dumps(config).encode(),
        "preprocessor_config.json": json.dumps(pre).encode()})  # fmt: skip
    loaded = resolve("hf:someorg/dinov2-rs")
    assert loaded.info["layout"] == "hf-dinov2" and loaded.arch is not None
    assert loaded.arch.name == ("vit_base_patch14_reg4_dinov2" if registers else "vit_base_patch14_dinov2")
    assert loaded.arch.kwargs["img_size"] == 56 and loaded.arch.kwargs["in_chans"] == 4
    assert loaded.info["dropped"] == ["embeddings.mask_token"]
    sd = loaded.state_dict
    qkv = sd["blocks.1.attn.qkv.weight"]
    assert torch.equal(qkv[:64], state["encoder.layer.1.attention.attention.query.weight"])
    assert torch.equal(qkv[128:], state["encoder.layer.1.attention.attention.value.weight"])
    assert torch.equal(sd["blocks.0.ls2.gamma"], state["encoder.layer.0.layer_scale2.lambda1"])
    if registers:  # timm's no_embed_class: the class position folded into the class token
        pos = state["embeddings.position_embeddings"]
        assert torch.equal(sd["cls_token"], state["embeddings.cls_token"] + pos[:, :1])
        assert torch.equal(sd["pos_embed"], pos[:, 1:]) and torch.equal(
            sd["reg_token"], state["embeddings.register_tokens"]
        )
    else:
        assert torch.equal(sd["pos_embed"], state["embeddings.position_embeddings"])
    norm = loaded.info["metadata"]["input"]["normalization"]
    assert norm["mean"] == [0.1, 0.2, 0.3, 0.4] and "0.00392157" in norm["units"]
    assert loaded.build()(torch.randn(1, 4, 56, 56)).shape == (1, 64)


# ---------------------------------------------------------------------------------------------
# the published full sizes, on the meta device


def _meta(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return _shapes_to_tensors(shapes, device="meta")


def test_published_full_sizes_map_to_plain_architectures() -> None:
    v1 = convert_checkpoint(
        LAYOUTS["prithvi-eo-1"], _meta(mae_shapes(768, 12, 6, 3 * 196, (1, 16, 16), 512, 8))
    )
    assert v1.arch.kwargs["num_heads"] == 12 and v1.arch.kwargs["depth"] == 12
    v2 = convert_checkpoint(
        LAYOUTS["prithvi-eo-2"], _meta(prithvi_v2_shapes(1024, 24, coords=False, dec=512))
    )
    assert v2.arch.kwargs["num_heads"] == 16 and v2.arch.kwargs["coords_encoding"] == []
    sat = convert_checkpoint(
        LAYOUTS["satmae-fmow-rgb"], {"model": _meta(mae_shapes(1024, 24, 3, 196, (16, 16), 512, 8))}
    )
    assert (sat.arch.name, sat.arch.kwargs) == (
        "vit_large_patch16_224",
        {"num_classes": 0, "img_size": 224, "in_chans": 3},
    )
    mae = convert_checkpoint(
        LAYOUTS["ssl4eo-mae-vits16"], {"model": _meta(mae_shapes(384, 12, 13, 196, (16, 16), 512, 8))}
    )
    assert mae.arch.name == "vit_small_patch16_224" and "embed_dim" not in mae.arch.kwargs
    group = convert_checkpoint(
        LAYOUTS["satmae-group-channels"], {"model": _meta(satmae_group_shapes(1024, 24, 256, 8, 12, 512))}
    )
    assert group.arch.kwargs["img_size"] == 96 and group.arch.kwargs["num_heads"] == 16
    rn50 = convert_checkpoint(LAYOUTS["ssl4eo-moco-rn50"], {"state_dict": _meta(_moco_shapes([3, 4, 6, 3]))})
    assert (rn50.arch.name, rn50.arch.kwargs) == ("resnet50", {"num_classes": 0, "in_chans": 13})


# ---------------------------------------------------------------------------------------------
# bad input


def test_keys_not_matching_the_declared_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    published = _shapes_to_tensors(mae_shapes(32, 2, 6, 3 * 196, (1, 16, 16)))
    published["blocks.1.mlp.fc3.weight"] = published.pop("blocks.1.mlp.fc2.weight")
    path = tmp_path / "renamed.pt"
    torch.save(published, path)
    zoo = tmp_path / "zoo"
    code, _, err = run_cli(capsys, "zoo", "add", f"geofm:prithvi-eo-1:{path}", "--zoo", str(zoo))
    text = " ".join(err.split())
    assert code == 2 and "Traceback" not in err
    assert "does not match layout 'prithvi-eo-1'" in text
    assert (
        "missing 'blocks.1.mlp.fc2.weight' (1 missing), unexpected 'blocks.1.mlp.fc3.weight' (1 unexpected)"
        in text
    )
    assert not zoo.exists()
    with pytest.raises(
        SourceError, match=r"does not match layout 'prithvi-eo-2': missing 'patch_embed.proj.weight'"
    ):
        resolve(f"geofm:prithvi-eo-2:{path}")  # a v1 file named as v2: no 'encoder.' tensors at all


def test_band_count_mismatch_names_the_expected_bands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "moco12.pth"
    torch.save(_moco_checkpoint(chans=12, queue=4), path)
    zoo = tmp_path / "zoo"
    code, _, err = run_cli(capsys, "zoo", "add", f"geofm:ssl4eo-moco-rn50:{path}", "--zoo", str(zoo))
    text = " ".join(err.split())
    assert code == 2 and "Traceback" not in err
    assert "stem takes 12 bands, but SSL4EO-S12 MoCo-v2 ResNet-50" in text
    assert "expects 13 bands (B01, B02, B03, B04, B05, B06, B07, B08, B8A, B09, B10, B11, B12)" in text
    assert not zoo.exists()
    prithvi = tmp_path / "prithvi.pt"
    torch.save(_shapes_to_tensors(mae_shapes(32, 1, 6, 3 * 196, (1, 16, 16))), prithvi)
    with pytest.raises(
        SourceError,
        match=r"in_chans=4, but Prithvi-EO-1.0.* expects 6 bands \(Blue, Green, Red, Narrow NIR, SWIR 1, SWIR 2\)",
    ):
        resolve(str(prithvi), in_chans=4)


def test_unknown_layouts_and_plain_files(tmp_path: Path) -> None:
    path = tmp_path / "plain.pt"
    torch.save({"w": torch.ones(3)}, path)
    with pytest.raises(
        SourceError, match=r"unknown checkpoint layout 'nope' \(known: prithvi-eo-1, prithvi-eo-2"
    ):
        resolve(f"geofm:nope:{path}")
    with pytest.raises(SourceError, match=r"geofm sources look like geofm:LAYOUT:PATH"):
        resolve("geofm:prithvi-eo-1")
    assert resolve(str(path)).arch is None  # no layout: a plain state dict stays a plain state dict
    with pytest.raises(SourceError, match=r"does not match layout 'ssl4eo-mae-vits16': no 'model' entry"):
        resolve(f"geofm:ssl4eo-mae-vits16:{path}")


def test_prithvi_stem_is_not_adapted_silently(tmp_path: Path) -> None:
    """Other band counts are refused with the model's own count (a Conv3d stem is not repeated)."""
    from geosane.arch.stem import adapt_stem

    path = tmp_path / "prithvi.pt"
    torch.save(_shapes_to_tensors(mae_shapes(32, 1, 6, 3 * 196, (1, 16, 16))), path)
    with pytest.raises(
        Exception, match=r"'patch_embed.proj.weight' is not a 2D convolution .* pass data with 6 bands"
    ):
        adapt_stem(resolve(str(path)), 4)


def test_prithvi_frames_follow_the_stored_position_embedding(tmp_path: Path) -> None:
    path = tmp_path / "prithvi_1frame.pt"
    torch.save(_shapes_to_tensors(mae_shapes(32, 1, 6, 196, (1, 16, 16))), path)
    loaded = resolve(str(path))
    assert (
        loaded.arch is not None
        and loaded.arch.kwargs["num_frames"] == 1
        and loaded.info["temporal_frames"] == 1
    )
    assert any("1 frames (from pos_embed; the published default is 3)" in n for n in loaded.info["remapped"])


def test_dinov2_classifier_checkpoint_by_key_signature(tmp_path: Path) -> None:
    """Dinov2ForImageClassification: ``dinov2.*`` + ``classifier.*``; no config.json (sizes from tensors)."""
    state = {f"dinov2.{k}": v for k, v in hf_dinov2_state(64, 1, 3, 2).items()}
    state.update({"classifier.weight": torch.randn(5, 128), "classifier.bias": torch.randn(5)})
    path = tmp_path / "model.safetensors"
    save_file(state, str(path))
    loaded = resolve(str(path))
    assert loaded.info["layout"] == "hf-dinov2" and loaded.arch is not None
    assert loaded.arch.kwargs["img_size"] == 28 and loaded.arch.kwargs["num_heads"] == 1
    assert sorted(loaded.info["dropped"]) == ["classifier.bias", "classifier.weight", "embeddings.mask_token"]
    assert loaded.info["metadata"]["input"]["normalization"] == "unknown"
    assert "RGB" in loaded.info["metadata"]["input"]["bands_note"]
    assert loaded.build()(torch.randn(1, 3, 28, 28)).shape == (1, 64)


def _dinov2_reference(
    state: dict[str, torch.Tensor], x: torch.Tensor, heads: int, depth: int
) -> torch.Tensor:
    """transformers' Dinov2Model forward written out on its own tensor names (last hidden state):
    embeddings (class token, [registers], patches + positions), pre-norm blocks with layer scale."""
    import torch.nn.functional as F

    patches = F.conv2d(x, state["embeddings.patch_embeddings.projection.weight"],
                       state["embeddings.patch_embeddings.projection.bias"], stride=14).flatten(2).transpose(1, 2)  # fmt: skip
    cls = state["embeddings.cls_token"].expand(x.shape[0], -1, -1)
    h = torch.cat([cls, patches], dim=1) + state["embeddings.position_embeddings"]
    if "embeddings.register_tokens" in state:
        regs = state["embeddings.register_tokens"].expand(x.shape[0], -1, -1)
        h = torch.cat([h[:, :1], regs, h[:, 1:]], dim=1)
    dim = h.shape[-1]
    for i in range(depth):
        p = f"encoder.layer.{i}."
        y = F.layer_norm(h, (dim,), state[p + "norm1.weight"], state[p + "norm1.bias"], eps=1e-6)

        def proj(name: str, y: torch.Tensor = y, p: str = p) -> torch.Tensor:
            out = F.linear(
                y,
                state[f"{p}attention.attention.{name}.weight"],
                state[f"{p}attention.attention.{name}.bias"],
            )
            return out.view(y.shape[0], y.shape[1], heads, dim // heads).transpose(1, 2)

        att = torch.softmax(
            proj("query") @ proj("key").transpose(-1, -2) / (dim // heads) ** 0.5, dim=-1
        ) @ proj("value")
        att = F.linear(att.transpose(1, 2).reshape(h.shape), state[p + "attention.output.dense.weight"],
                       state[p + "attention.output.dense.bias"])  # fmt: skip
        h = h + state[p + "layer_scale1.lambda1"] * att
        y = F.layer_norm(h, (dim,), state[p + "norm2.weight"], state[p + "norm2.bias"], eps=1e-6)
        y = F.linear(F.gelu(F.linear(y, state[p + "mlp.fc1.weight"], state[p + "mlp.fc1.bias"])),
                     state[p + "mlp.fc2.weight"], state[p + "mlp.fc2.bias"])  # fmt: skip
        h = h + state[p + "layer_scale2.lambda1"] * y
    return F.layer_norm(h, (dim,), state["layernorm.weight"], state["layernorm.bias"], eps=1e-6)


@pytest.mark.parametrize("registers", [0, 4])
def test_dinov2_remap_computes_what_dinov2model_computes(tmp_path: Path, registers: int) -> None:
    state = {k: v * 0.2 for k, v in hf_dinov2_state(64, 2, 3, 3, registers).items()}
    folder = tmp_path / "dinov2"  # a model folder: config.json (4 heads) beside the weights
    folder.mkdir()
    save_file(state, str(folder / "model.safetensors"))
    config = {"model_type": "dinov2", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "image_size": 42, "patch_size": 14, "num_channels": 3}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    loaded = resolve(str(folder))
    assert loaded.arch is not None and loaded.arch.kwargs["num_heads"] == 4
    model = loaded.build().eval()
    x = torch.randn(2, 3, 42, 42)
    ours = model.forward_features(x)
    reference = _dinov2_reference(state, x, heads=4, depth=2)
    assert ours.shape == reference.shape and torch.allclose(ours, reference, atol=1e-5), (
        (ours - reference).abs().max()
    )
    wrong_heads = _dinov2_reference(state, x, heads=2, depth=2)  # the check can fail: heads matter
    assert not torch.allclose(ours, wrong_heads, atol=1e-3)


def test_prithvi_computes_what_prithvis_encoder_computes(tmp_path: Path) -> None:
    """Prithvi's encoder forward written out on the published names (mask ratio 0): Conv3d over
    [B, C, T, H, W], tokens time-major, + pos_embed, class token + its position, timm blocks
    with LayerNorm eps 1e-5, final norm."""
    import torch.nn.functional as F

    published = {
        k: v * 0.2 for k, v in _shapes_to_tensors(mae_shapes(64, 2, 6, 3 * 196, (1, 16, 16))).items()
    }
    config = {"pretrained_cfg": {"num_heads": 4, "num_frames": 3, "img_size": 224}}
    folder = tmp_path / "prithvi"
    folder.mkdir()
    torch.save(published, folder / "Prithvi_EO_V1_100M.pt")
    (folder / "config.json").write_text(json.dumps(config))
    model = resolve(str(folder)).build().eval()
    video = torch.randn(1, 3, 6, 224, 224)  # [B, T, C, H, W]
    s = published
    h = F.conv3d(
        video.permute(0, 2, 1, 3, 4),
        s["patch_embed.proj.weight"],
        s["patch_embed.proj.bias"],
        stride=(1, 16, 16),
    )
    h = h.flatten(2).transpose(1, 2) + s["pos_embed"][:, 1:]
    h = torch.cat([s["cls_token"] + s["pos_embed"][:, :1], h], dim=1)
    dim, heads = 64, 4
    for i in range(2):
        p = f"blocks.{i}."
        y = F.layer_norm(h, (dim,), s[p + "norm1.weight"], s[p + "norm1.bias"], eps=1e-5)
        q, k, v = (
            F.linear(y, s[p + "attn.qkv.weight"], s[p + "attn.qkv.bias"])
            .view(1, -1, 3, heads, dim // heads)
            .unbind(2)
        )
        att = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        h = h + F.linear(
            att.transpose(1, 2).reshape(h.shape), s[p + "attn.proj.weight"], s[p + "attn.proj.bias"]
        )
        y = F.layer_norm(h, (dim,), s[p + "norm2.weight"], s[p + "norm2.bias"], eps=1e-5)
        h = h + F.linear(
            F.gelu(F.linear(y, s[p + "mlp.fc1.weight"], s[p + "mlp.fc1.bias"])),
            s[p + "mlp.fc2.weight"],
            s[p + "mlp.fc2.bias"],
        )
    reference = F.layer_norm(h, (dim,), s["norm.weight"], s["norm.bias"], eps=1e-5)
    ours = model.forward_features(video)
    assert torch.allclose(ours, reference, atol=1e-5), (ours - reference).abs().max()
    swapped = model.forward_features(
        video.transpose(1, 2).reshape(1, 3, 6, 224, 224)
    )  # the frame/band axes matter
    assert not torch.allclose(swapped, reference, atol=1e-3)


def test_prithvi_blocks_are_recorded_like_a_timm_vit(tmp_path: Path) -> None:
    """analysis' default layers, hooks and pooling work on the temporal backbone as on a timm ViT."""
    from geosane.analysis.layers import LayerRecorder, block_layers, num_prefix_tokens, pool_output

    path = tmp_path / "prithvi.pt"
    torch.save(_shapes_to_tensors(mae_shapes(32, 2, 6, 3 * 196, (1, 16, 16))), path)
    model = resolve(str(path)).build().eval()
    layers = block_layers(model)
    assert layers == ["blocks.0", "blocks.1"] and num_prefix_tokens(model) == 1
    with LayerRecorder(model, layers) as recorder:
        model(torch.randn(2, 3, 6, 32, 32))
    tokens = recorder.outputs["blocks.1"]
    assert tokens.shape == (2, 1 + 3 * 4, 32)
    assert pool_output(tokens, "mean", num_prefix_tokens(model)).shape == (2, 32)
