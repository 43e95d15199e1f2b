from __future__ import annotations

import pytest
import torch

from geosane.errors import GeosaneError, SourceError
from geosane.tasks import build_classifier, build_decoder, build_segmenter
from geosane.zoo import ArchSpec, resolve


@pytest.mark.parametrize("decoder", ["linear", "unet", "upernet"])
def test_decoders_map_pyramids_to_logits(decoder: str) -> None:
    feats = [torch.randn(2, c, s, s) for c, s in [(8, 16), (16, 8), (32, 4)]]
    head = build_decoder(decoder, [8, 16, 32], num_classes=5, channels=16)
    assert head(feats).shape == (2, 5, 16, 16)
    same_stride = [torch.randn(2, 12, 4, 4) for _ in range(3)]  # plain ViT: every level at stride 16
    assert build_decoder(decoder, [12] * 3, 3, 8)(same_stride).shape == (2, 3, 4, 4)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("resnet18", {}),
        ("convnext_atto", {}),
        ("mobilenetv3_small_050", {}),
        ("vit_tiny_patch16_224", {"img_size": 64}),
        ("swin_tiny_patch4_window7_224", {"img_size": 64, "window_size": 4}),
    ],
)
def test_segmenter_on_timm_backbones_loads_classifier_weights(name: str, kwargs: dict) -> None:
    source = resolve(f"timm:{name}", random_init=True, num_classes=10)
    source = type(source)(
        source.source,
        source.state_dict,
        ArchSpec("timm", name, {**source.arch.kwargs, **kwargs}),
        source.info,
    )
    if kwargs:  # rebuild weights for the resized architecture
        source.state_dict = source.build(load_weights=False).state_dict()
    seg = build_segmenter(source, num_classes=3, decoder="upernet", decoder_channels=16, in_chans=3)
    assert seg(torch.randn(2, 3, 64, 64)).shape == (2, 3, 64, 64)
    # the backbone carries the source weights, not a fresh init
    first_key = next(k for k in source.state_dict if k.endswith("weight") and source.state_dict[k].ndim == 4)
    got = dict(seg.backbone.model.named_parameters())[first_key]
    assert torch.equal(got, source.state_dict[first_key])


def test_classifier_keeps_backbone_and_resets_head() -> None:
    source = resolve("timm:resnet18", random_init=True, num_classes=4)
    model = build_classifier(source, num_classes=7)
    assert model.fc.out_features == 7
    assert torch.equal(model.conv1.weight, source.state_dict["conv1.weight"])
    same = build_classifier(source, num_classes=4)
    assert torch.equal(same.fc.weight, source.state_dict["fc.weight"])  # matching head is kept


def test_mismatched_weights_and_unknown_decoder_are_clear_errors() -> None:
    source = resolve("timm:resnet18", random_init=True)
    with pytest.raises(SourceError, match=r"'conv1.weight' has shape \(64, 3, 7, 7\)"):
        build_classifier(ArchSpec("timm", "resnet18", {"in_chans": 4}), 2, state_dict=source.state_dict)
    with pytest.raises(GeosaneError, match="unknown decoder 'fpn'"):
        build_segmenter(source, 2, decoder="fpn")
