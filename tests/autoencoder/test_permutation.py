"""Hidden-unit permutations found in real timm architectures compute the same function."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import timm
import torch

from geosane.autoencoder import find_permutation_groups, permute_state_dict, random_permutations

# (timm name, kwargs, input size, at least this many groups, kinds of group expected)
SMALL_CONVNEXT = {"dims": (16, 32, 64, 128), "depths": (1, 1, 2, 1)}
ARCHITECTURES = [
    ("resnet18", {}, 32, 8, {"conv1"}),  # BasicBlock
    ("test_resnet", {}, 32, 5, {"conv1", "conv2"}),  # Bottleneck
    ("seresnet18", {}, 32, 16, {"conv1", "se"}),  # squeeze-excitation reduction units
    ("test_vit", {}, 32, 8, {"mlp", "heads"}),
    ("mobilenetv3_small_050", {}, 32, 15, {"expansion", "se"}),  # depthwise expansion through SE
    ("test_efficientnet_ln", {}, 32, 6, {"expansion", "se"}),  # LayerNorm2d on the path
    ("convnext_atto", SMALL_CONVNEXT, 32, 5, {"mlp"}),
    ("convnextv2_atto", SMALL_CONVNEXT, 32, 5, {"mlp"}),  # GlobalResponseNorm on the hidden units
]
SLOW_ARCHITECTURES = [
    ("resnet26", {}, 32, 16, {"conv1", "conv2"}),
    ("efficientnet_b0", {}, 32, 25, {"expansion", "se"}),
    ("efficientnetv2_rw_t", {}, 32, 30, {"expansion"}),  # EdgeResidual
    ("mobilenetv4_conv_small", {}, 32, 10, {"expansion"}),  # UniversalInvertedResidual
    ("swin_tiny_patch4_window7_224", {"img_size": 56, "window_size": 7}, 56, 12, {"mlp"}),
    ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "depth": 4}, 32, 8, {"mlp", "heads"}),
]


def _randomised(name: str, kwargs: dict) -> torch.nn.Module:
    """A random-init model with no trivially symmetric values left (biases, BN stats, heads)."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=5, **kwargs).double().eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim <= 1 or param.abs().sum() == 0:  # zero-init biases/heads, unit norm scales
                param.add_(0.1 * torch.randn_like(param))
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model


def _check(name: str, kwargs: dict, size: int, min_groups: int, kinds: set[str]) -> None:
    model = _randomised(name, kwargs)
    groups = find_permutation_groups(model)
    assert len(groups) >= min_groups
    assert kinds <= {g.name.rsplit(".", 1)[-1] for g in groups}
    state = model.state_dict()
    permuted_state = permute_state_dict(state, groups, random_permutations(groups, torch.Generator().manual_seed(1)))
    moved = sum(int((state[k] != permuted_state[k]).sum()) for k in state)
    assert moved > 0.3 * sum(t.numel() for t in state.values())  # most weights really moved
    permuted = copy.deepcopy(model)
    permuted.load_state_dict(permuted_state)
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    with torch.no_grad():
        y, y_permuted = model(x), permuted(x)
    assert y.abs().max() > 1e-3
    assert torch.allclose(y, y_permuted, rtol=1e-7, atol=1e-9 * float(y.abs().max()))
    # negative control: moving only the producing rows of one group changes the function
    group = max(groups, key=lambda g: g.size)
    broken = dict(state)
    first = group.members[0]
    perm = torch.roll(torch.arange(group.size), 1)
    broken[first.key] = permute_state_dict(state, [type(group)(group.name, group.size, (first,))], {group.name: perm})[
        first.key
    ]
    permuted.load_state_dict(broken)
    with torch.no_grad():
        assert not torch.allclose(y, permuted(x), rtol=1e-4)


@pytest.mark.parametrize(("name", "kwargs", "size", "min_groups", "kinds"), ARCHITECTURES, ids=[a[0] for a in ARCHITECTURES])
def test_permutation_preserves_function(name: str, kwargs: dict, size: int, min_groups: int, kinds: set[str]) -> None:
    _check(name, kwargs, size, min_groups, kinds)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "kwargs", "size", "min_groups", "kinds"), SLOW_ARCHITECTURES, ids=[a[0] for a in SLOW_ARCHITECTURES]
)
def test_permutation_preserves_function_more_architectures(
    name: str, kwargs: dict, size: int, min_groups: int, kinds: set[str]
) -> None:
    _check(name, kwargs, size, min_groups, kinds)


def test_grouped_convolutions_are_left_alone() -> None:
    resnext = timm.create_model("resnet26", pretrained=False, cardinality=4, base_width=16)
    names = {g.name for g in find_permutation_groups(resnext)}
    assert not any(n.endswith(".conv1") or n.endswith(".conv2") for n in names)  # conv2 is grouped


def test_unknown_architecture_has_no_groups() -> None:
    plain = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    assert find_permutation_groups(plain) == []


def test_permuted_views_reach_training_as_function_preserving_variants(random_store: Path, tmp_path: Path) -> None:
    """`loss.permutation_variants`: tokenized permuted copies line up with the originals and decode
    to models that compute the same function; training pairs each window with a variant's window."""
    from geosane.autoencoder import load_autoencoder_config
    from geosane.autoencoder.data import TokenWindowDataModule
    from geosane.autoencoder.training import train
    from geosane.tokens import detokenize
    from geosane.tokens.store import TokenStore
    from geosane.zoo import ArchSpec, build_architecture

    cache = tmp_path / "perm-cache"
    cfg = load_autoencoder_config("tiny", [
        f"data.store={random_store}", f"train.out={tmp_path / 'run'}", f"data.permuted_cache={cache}",
        "loss.permutation_variants=2", "model.window=8", "model.d_model=32", "model.n_heads=2",
        "data.batch_size=4", "train.max_steps=2", "train.progress=false", "data.val_fraction=0.2",
    ])
    assert train(cfg).steps == 2
    store = TokenStore(random_store)
    variants = [TokenStore(cache / "v0"), TokenStore(cache / "v1")]
    datamodule = TokenWindowDataModule(cfg)
    assert variants[0].ids == datamodule.train_ids  # held-out models get no variants
    model_id = next(m for m in datamodule.train_ids if store.record(m).family == "test_resnet")
    original = store.load(model_id)
    spec = ArchSpec.from_dict(store.record(model_id).arch)
    net = build_architecture(spec).eval()
    net.load_state_dict(detokenize(original))
    x = torch.randn(2, 3, 32, 32)
    for variant in variants:
        tm = variant.load(model_id)
        assert torch.equal(tm.positions, original.positions) and torch.equal(tm.mask, original.mask)
        assert not torch.equal(tm.tokens, original.tokens)
        other = build_architecture(spec).eval()
        other.load_state_dict(detokenize(tm))
        with torch.no_grad():
            assert torch.allclose(net(x), other(x), atol=1e-5)
    assert not torch.equal(variants[0].load(model_id).tokens, variants[1].load(model_id).tokens)
    # the training stream pairs a window with the same window of a variant
    datamodule.setup()
    item = datamodule.train_dataloader().dataset[3]
    assert item["tokens_b"].shape == item["tokens"].shape and torch.equal(item["mask_b"], item["mask"])
    # a second run reuses the cache instead of rebuilding it
    stamp = (cache / "cache.json").stat().st_mtime_ns
    TokenWindowDataModule(cfg).setup()
    assert (cache / "cache.json").stat().st_mtime_ns == stamp
