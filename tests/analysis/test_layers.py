from __future__ import annotations

import pytest
import timm
import torch

from geosane.analysis import (
    LayerRecorder,
    block_layers,
    model_family,
    pool_output,
    resolve_layers,
    sublayer_layers,
)
from geosane.analysis.layers import output_map
from geosane.errors import GeosaneError


@pytest.fixture(scope="module")
def vit() -> torch.nn.Module:
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=3).eval()


@pytest.fixture(scope="module")
def resnet() -> torch.nn.Module:
    return timm.create_model("resnet10t").eval()


def test_default_layers_per_family(vit: torch.nn.Module, resnet: torch.nn.Module) -> None:
    assert model_family(vit) == "vit"
    assert block_layers(vit) == ["blocks.0", "blocks.1", "blocks.2"]
    assert block_layers(resnet) == ["layer1", "layer2", "layer3", "layer4"]
    convnext = timm.create_model("convnext_atto")
    assert model_family(convnext) == "convnext"
    assert block_layers(convnext) == ["stages.0", "stages.1", "stages.2", "stages.3"]
    swin = timm.create_model("swin_tiny_patch4_window7_224", img_size=64, window_size=4, depths=(1, 1, 2, 1))
    assert model_family(swin) == "swin"
    assert block_layers(swin) == [
        "layers.0.blocks.0", "layers.1.blocks.0", "layers.2.blocks.0", "layers.2.blocks.1", "layers.3.blocks.0",
    ]  # fmt: skip
    assert "layers.2.blocks.1.mlp.fc1" in sublayer_layers(swin)


def test_sublayers_and_execution_order(vit: torch.nn.Module, resnet: torch.nn.Module) -> None:
    assert sublayer_layers(vit)[:3] == ["blocks.0.attn", "blocks.0.mlp.fc1", "blocks.0.mlp.fc2"]
    everything = resolve_layers(vit, ["all"])
    assert everything[:5] == [
        "blocks.0.attn",
        "blocks.0.mlp.fc1",
        "blocks.0.mlp.fc2",
        "blocks.0",
        "blocks.1.attn",
    ]
    convs = sublayer_layers(resnet)
    assert "layer1.0.conv1" in convs and "layer2.0.downsample.1" in convs
    assert all(isinstance(resnet.get_submodule(p), torch.nn.Conv2d) for p in convs)
    assert resolve_layers(vit, ["blocks.*.mlp.fc1"]) == [
        "blocks.0.mlp.fc1",
        "blocks.1.mlp.fc1",
        "blocks.2.mlp.fc1",
    ]


def test_unknown_hook_path_lists_the_valid_ones(vit: torch.nn.Module) -> None:
    with pytest.raises(GeosaneError) as info:
        resolve_layers(vit, ["blocks.7.mlp.fc1"], what="model 'vit'")
    message = str(info.value)
    assert "no module 'blocks.7.mlp.fc1' in model 'vit'" in message
    assert (
        "valid module paths:" in message and "blocks.2.mlp.fc1" in message and "patch_embed.proj" in message
    )
    assert "\n" not in message
    with pytest.raises(GeosaneError, match="matches no module"):
        resolve_layers(vit, ["stages.*"])


def test_recorder_shapes_and_pooling(vit: torch.nn.Module, resnet: torch.nn.Module) -> None:
    images = torch.randn(2, 3, 32, 32)
    with LayerRecorder(vit, ["blocks.1", "blocks.1.mlp.fc1"]) as rec:
        out = rec.run(images)
    tokens = out["blocks.1"]
    assert tokens.shape == (2, 17, 192)  # class token + 4x4 patches
    assert torch.equal(pool_output(tokens, "cls", 1), tokens[:, 0])
    assert torch.allclose(pool_output(tokens, "mean", 1), tokens[:, 1:].mean(1))
    assert torch.allclose(pool_output(tokens, "gap", 1), tokens.mean(1))
    assert pool_output(tokens, "flatten", 1).shape == (2, 17 * 192)
    assert output_map(tokens, 1).shape == (2, 192, 4, 4)
    assert out["blocks.1.mlp.fc1"].shape == (2, 17, 768)
    assert not vit.blocks[1]._forward_hooks  # hooks are removed on exit
    with LayerRecorder(resnet, ["layer2"]) as rec:
        fmap = rec.run(images)["layer2"]
    assert pool_output(fmap, "mean", 0).shape == (2, fmap.shape[1])
    with pytest.raises(GeosaneError, match="pooling 'cls' needs tokens"):
        pool_output(fmap, "cls", 0, "layer2")


def test_channels_last_and_windowed_outputs() -> None:
    swin = timm.create_model(
        "swin_tiny_patch4_window7_224", img_size=64, window_size=4, depths=(1, 1, 1, 1)
    ).eval()
    with LayerRecorder(swin, ["layers.0.blocks.0"]) as rec:
        out = rec.run(torch.randn(2, 3, 64, 64))["layers.0.blocks.0"]
    assert out.shape == (2, 96, 16, 16)  # NHWC block output turned channels-first
    with (
        LayerRecorder(swin, ["layers.0.blocks.0.attn"]) as rec,
        pytest.raises(GeosaneError, match="not one row per image"),
    ):
        rec.run(torch.randn(2, 3, 64, 64))


def test_torchvision_swin_stages_are_turned_channels_first() -> None:
    """TorchGeo's Swin weights are torchvision Swin Transformers: their stages pass [B, H, W, C]."""
    import torchvision

    swin = torchvision.models.swin_v2_t().eval()
    with LayerRecorder(swin, ["features.0", "features.1", "features.3", "norm"]) as rec:
        outputs = rec.run(torch.randn(2, 3, 64, 64))
    assert outputs["features.0"].shape == (2, 96, 16, 16)  # patch embedding: 96 channels on a 16x16 grid
    assert outputs["features.1"].shape == (2, 96, 16, 16)
    assert outputs["features.3"].shape == (2, 192, 8, 8)
    assert outputs["norm"].shape == (2, 768, 2, 2)


def test_smp_segmenters_probe_their_encoder_and_decoder_blocks() -> None:
    import segmentation_models_pytorch as smp

    from geosane.analysis.layers import LayerRecorder

    unet = smp.Unet("resnet18", encoder_weights=None, in_channels=4, classes=2).eval()
    layers = block_layers(unet)
    assert layers == [*(f"encoder.layer{i}" for i in range(1, 5)), *(f"decoder.blocks.{i}" for i in range(5))]
    with LayerRecorder(unet, layers) as recorder:
        maps = recorder.run(torch.randn(2, 4, 64, 64))
    assert list(maps) == layers and maps["decoder.blocks.4"].shape[-1] == 64
    effnet = smp.Unet("efficientnet-b0", encoder_weights=None, in_channels=3, classes=2)
    assert block_layers(effnet)[0] == "encoder._blocks.0" and block_layers(effnet)[-1] == "decoder.blocks.4"
