"""Permutation alignment (git re-basin weight matching) on real timm ResNets, and --align-anchors."""

from __future__ import annotations

import pytest
import torch

from geosane.autoencoder.permutation import permute_state_dict, random_permutations
from geosane.generation.align import alignment_groups, resnet_stream_groups, weight_matching
from geosane.zoo import ArchSpec, build_architecture


@pytest.mark.parametrize(
    "arch",
    [
        ArchSpec("timm", "resnet18", {"channels": [16, 32, 64, 128], "num_classes": 4}),
        ArchSpec("timm", "resnet26", {"channels": [8, 16, 32, 64], "num_classes": 3}),  # Bottleneck blocks
    ],
)
def test_weight_matching_undoes_a_hidden_permutation_of_units_and_streams(arch: ArchSpec) -> None:
    torch.manual_seed(0)
    model = build_architecture(arch).eval()
    groups = alignment_groups(model)
    streams = resnet_stream_groups(model)
    assert len(streams) == 5 and {g.name for g in streams} <= {g.name for g in groups}
    reference = model.state_dict()
    perms = random_permutations(groups, torch.Generator().manual_seed(1))
    shuffled = permute_state_dict(dict(reference), groups, perms)
    other = build_architecture(arch).eval()
    other.load_state_dict(shuffled)
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(model(x), other(x), atol=1e-5)  # every group, streams included, keeps the function
    assert any(not torch.equal(shuffled[k], reference[k]) for k in reference)
    found, info = weight_matching(reference, shuffled, groups)
    aligned = permute_state_dict(dict(shuffled), groups, found)
    assert all(torch.equal(aligned[k], reference[k]) for k in reference)  # recovered exactly
    assert info["similarity_after"] == pytest.approx(1.0) and info["similarity_before"] < 0.9


def test_independent_models_get_closer_and_other_families_have_no_streams() -> None:
    arch = ArchSpec("timm", "resnet18", {"channels": [16, 32, 64, 128], "num_classes": 4})
    torch.manual_seed(0)
    a = build_architecture(arch).state_dict()
    torch.manual_seed(1)
    b_model = build_architecture(arch).eval()
    groups = alignment_groups(b_model)
    _, info = weight_matching(a, b_model.state_dict(), groups)
    assert info["similarity_after"] > info["similarity_before"]
    mobilenet = build_architecture(ArchSpec("timm", "mobilenetv3_small_050", {}))
    assert resnet_stream_groups(mobilenet) == [] and alignment_groups(mobilenet)  # hidden units only
