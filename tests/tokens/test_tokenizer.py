from __future__ import annotations

import pytest
import timm
import torch

from geosane.tasks import build_segmenter
from geosane.tokens import LayerType, TokenizerError, detokenize, tokenize
from geosane.zoo import ArchSpec

from .tokens_testutil import TiedLM, Tiny, assert_bitwise_equal, cast_floats

# real timm architectures at small widths (timm's test_* variants where one exists)
ARCHS = {
    "resnet": ("test_resnet", {}),
    "mobilenetv3": ("mobilenetv3_small_050", {}),
    "efficientnet": ("test_efficientnet", {}),
    "convnext": ("test_convnext", {}),
    "vit": ("test_vit", {}),
    "swin": (
        "swin_tiny_patch4_window7_224",
        {"embed_dim": 24, "depths": (1, 1), "num_heads": (1, 2), "img_size": 56},
    ),
}


@pytest.fixture(scope="module", params=list(ARCHS))
def timm_net(request: pytest.FixtureRequest) -> torch.nn.Module:
    name, kwargs = ARCHS[request.param]
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **kwargs)


@pytest.mark.parametrize(("mode", "token_size"), [("dense", 230), ("row", 32)])
def test_round_trip_is_bitwise_exact_on_timm_architectures(
    timm_net: torch.nn.Module, mode: str, token_size: int
) -> None:
    state_dict = timm_net.state_dict()
    tm = tokenize(state_dict, token_size, mode)
    assert_bitwise_equal(detokenize(tm), state_dict)
    # every tensor is accounted for, and only BatchNorm statistics are carried
    assert list(tm.layout) == list(state_dict)
    assert set(tm.carried) == {
        k for k in state_dict if k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    }
    assert tm.summary()["tokenized_values"] + tm.summary()["carried_values"] == sum(
        t.numel() for t in state_dict.values()
    )
    # learnable non-"weight" tensors are tokenized (the GeoSANE reference silently copied them)
    for name in ("pos_embed", "cls_token", "relative_position_bias_table", "gamma"):
        for key in (k for k in state_dict if k.rsplit(".", 1)[-1] == name):
            assert tm.layout[key].kind == "tokenized", key
    # the module-aware path and the name/shape rules agree on these architectures
    assert torch.equal(tokenize(timm_net, token_size, mode).layer_type, tm.layer_type)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_round_trip_keeps_half_precision(timm_net: torch.nn.Module, dtype: torch.dtype) -> None:
    state_dict = cast_floats(timm_net.state_dict(), dtype)
    for mode in ("dense", "row"):
        tm = tokenize(state_dict, 48, mode)
        assert tm.tokens.dtype == torch.float32
        assert_bitwise_equal(detokenize(tm), state_dict)


def test_round_trip_on_a_unet_segmenter() -> None:
    model = build_segmenter(
        ArchSpec("timm", "test_resnet", {}), num_classes=3, decoder="unet", out_indices=(1, 2, 3)
    )
    state_dict = model.state_dict()
    assert any(k.startswith("decoder.") for k in state_dict)
    for mode, token_size in (("dense", 230), ("row", 32)):
        tm = tokenize(model, token_size, mode)
        assert_bitwise_equal(detokenize(tm), state_dict)
        assert tm.layout["decoder.classifier.weight"].layer_type == "conv2d"
        assert tm.layout["decoder.classifier.bias"].col == tm.layout["decoder.classifier.weight"].width - 1


def test_positions_layer_types_and_values_dense() -> None:
    model = Tiny()
    tm = tokenize(model.state_dict(), token_size=10, mode="dense")
    # layers in state-dict order: pos_embed [3,4] (12 values), conv [3, 8+1] (27), bn [3, 2] (6), fc [4, 5+1] (24)
    assert (
        repr(tm) == "TokenizedModel(9 tokens x 10 (dense), 4 layers; tensors: 7 tokenized, 3 carried, 0 tied)"
    )
    assert tm.positions[:, 0].tolist() == list(range(9))
    assert tm.positions[:, 1].tolist() == [0, 0, 1, 1, 1, 2, 3, 3, 3]
    assert tm.positions[:, 2].tolist() == [0, 1, 0, 1, 2, 0, 0, 1, 2]
    assert tm.mask.sum(1).tolist() == [10, 2, 10, 10, 7, 6, 10, 10, 4]
    L = LayerType
    assert tm.layer_type.tolist() == [L.EMBEDDING] * 2 + [L.CONV2D] * 3 + [L.BATCHNORM] + [L.LINEAR] * 3
    assert tm.carried.keys() == {"bn.running_mean", "bn.running_var", "bn.num_batches_tracked"}
    # the conv bias is the last column of its matrix: token 2 = row 0 (8 weights + bias) + first weight of row 1
    w, b = model.conv.weight.detach(), model.conv.bias.detach()
    assert torch.equal(tm.tokens[2, :8], w[0].flatten())
    assert tm.tokens[2, 8] == b[0] and tm.tokens[2, 9] == w[1].flatten()[0]
    # BatchNorm scale and shift side by side ([C, 2]); padding is zero and masked out
    assert torch.equal(tm.tokens[5, :6], torch.stack([model.bn.weight, model.bn.bias], 1).detach().flatten())
    assert not tm.tokens[~tm.mask].any()
    entry = tm.layout["fc.bias"]
    assert (entry.kind, entry.layer, entry.start, entry.stop, entry.rows, entry.width, entry.col) == (
        "tokenized",
        3,
        6,
        9,
        4,
        6,
        5,
    )


def test_positions_row_mode() -> None:
    tm = tokenize(Tiny().state_dict(), token_size=4, mode="row")
    # pos_embed 3 rows x 1 token, conv 3 rows x ceil(9/4)=3, bn 3 rows x 1, fc 4 rows x ceil(6/4)=2
    assert tm.num_tokens == 3 + 9 + 3 + 8
    assert tm.positions[:, 1].tolist() == [0] * 3 + [1] * 9 + [2] * 3 + [3] * 8
    assert tm.positions[:, 2].tolist() == [
        0,
        1,
        2,
        0,
        0,
        0,
        1,
        1,
        1,
        2,
        2,
        2,
        0,
        1,
        2,
        0,
        0,
        1,
        1,
        2,
        2,
        3,
        3,
    ]
    assert tm.mask[3:6].sum(1).tolist() == [4, 4, 1]  # one conv row: 9 values over 3 tokens
    assert tm.mask[12:15].sum(1).tolist() == [2, 2, 2]


def test_tied_weights_are_tokenized_once_and_restored_tied() -> None:
    model = TiedLM()
    tm = tokenize(model)
    assert tm.layout["head.weight"].kind == "tied" and tm.layout["head.weight"].tied_to == "emb.weight"
    assert tm.layout["emb.weight"].layer_type == "embedding"
    assert tm.layout["norm.weight"].layer_type == "layernorm"
    assert tm.summary()["tokenized_values"] == 10 * 4 + 4 * 2
    restored = detokenize(tm)
    assert_bitwise_equal(restored, model.state_dict())
    assert restored["head.weight"].data_ptr() == restored["emb.weight"].data_ptr()
    fresh = TiedLM()
    fresh.load_state_dict(restored)
    assert fresh.head.weight is fresh.emb.weight and torch.equal(fresh.head.weight, model.emb.weight)


def test_carried_tensors_and_selection_patterns() -> None:
    state_dict = {
        "a.weight": torch.randn(3, 4),
        "a.bias": torch.randn(3),
        "table": torch.randn(5, 2, dtype=torch.float64),
        "index": torch.arange(6),
        "flag": torch.tensor([True, False]),
        "empty": torch.zeros(0, 3),
        "b.running_mean": torch.randn(3),
    }
    tm = tokenize(state_dict, 4)
    reasons = {k: e.reason for k, e in tm.layout.items() if e.kind == "carried"}
    assert "float64" in reasons["table"] and "int64" in reasons["index"] and "bool" in reasons["flag"]
    assert reasons["empty"] == "empty" and reasons["b.running_mean"] == "buffer"
    assert_bitwise_equal(detokenize(tm), state_dict)

    excluded = tokenize(state_dict, 4, exclude=["a.bias"])
    assert excluded.layout["a.bias"].reason == "excluded" and excluded.layout["a.weight"].width == 4
    included = tokenize(state_dict, 4, include=["a.*", "*running_mean"])  # an explicit include beats "buffer"
    assert included.names("tokenized") == ["a.weight", "a.bias", "b.running_mean"]
    only_weights = tokenize(state_dict, 4, include=["*.weight"])
    assert only_weights.layout["a.bias"].reason == "not included"
    for tm in (excluded, included, only_weights):
        assert_bitwise_equal(detokenize(tm), state_dict)
    with pytest.raises(TokenizerError, match="no tensor of the 7 in the state dict is selected"):
        tokenize(state_dict, include=["nothing*"])


def test_module_buffers_are_carried() -> None:
    class WithBuffer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(3, 3)
            self.register_buffer("scale", torch.ones(3))

    model = WithBuffer()
    assert tokenize(model).layout["scale"].reason == "buffer"
    assert tokenize(model.state_dict()).layout["scale"].kind == "tokenized"  # no module: names decide


def test_detokenize_onto_new_tokens_and_shape_check() -> None:
    model = Tiny()
    tm = tokenize(model.state_dict(), 10)
    restored = detokenize(tm, tm.tokens * 2)
    assert torch.equal(restored["fc.weight"], model.fc.weight.detach() * 2)
    assert torch.equal(restored["bn.running_var"], model.bn.running_var)  # carried values are untouched
    with pytest.raises(TokenizerError, match="do not fit this layout"):
        detokenize(tm, tm.tokens[:-1])


# --- bad input ------------------------------------------------------------------------------


def test_empty_state_dict_is_refused() -> None:
    with pytest.raises(TokenizerError, match="the state dict is empty"):
        tokenize({})


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "230"])
def test_token_size_must_be_positive(bad: object) -> None:
    with pytest.raises(TokenizerError, match="token_size must be a positive integer"):
        tokenize({"w": torch.ones(2)}, bad)  # type: ignore[arg-type]


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(TokenizerError, match="unknown tokenization mode 'cols'"):
        tokenize({"w": torch.ones(2)}, 8, "cols")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "value", "kind"),
    [
        ("fc.weight", float("nan"), "NaN"),
        ("fc.bias", float("inf"), "Inf"),
        ("bn.running_var", float("-inf"), "Inf"),
    ],
)
def test_nonfinite_values_are_reported_by_name(name: str, value: float, kind: str) -> None:
    state_dict = Tiny().state_dict()
    state_dict[name] = state_dict[name].clone()
    state_dict[name].view(-1)[1] = value
    with pytest.raises(
        TokenizerError, match=rf"tensor '{name}' holds 1 non-finite values \({kind}\).*allow_nonfinite=True"
    ):
        tokenize(state_dict, 10)
    tm = tokenize(state_dict, 10, allow_nonfinite=True)
    assert_bitwise_equal(detokenize(tm), state_dict)


def test_non_tensor_entry_is_refused() -> None:
    with pytest.raises(TokenizerError, match="entry 'step' is a int, not a tensor"):
        tokenize({"w": torch.ones(2), "step": 3})  # type: ignore[dict-item]


def test_meta_tensors_are_refused() -> None:
    with pytest.raises(TokenizerError, match="tensor 'w' is on the meta device"):
        tokenize({"w": torch.empty(3, 3, device="meta")})
