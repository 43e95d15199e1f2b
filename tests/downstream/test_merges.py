from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

from geosane.downstream.merges import average_merge, dare_merge, task_vectors, ties_merge
from geosane.errors import GeosaneError
from geosane.io import save_safetensors
from tests.conftest import run_cli


def _sd(w: list[float], **extra: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"layer.weight": torch.tensor(w), **extra}


def test_average_is_elementwise_mean_and_keeps_dtypes() -> None:
    a = _sd([1.0, 2.0, 3.0], **{"bn.num_batches_tracked": torch.tensor(5)})
    b = _sd([3.0, 2.0, -3.0], **{"bn.num_batches_tracked": torch.tensor(9)})
    a["half"] = torch.tensor([1.0, 2.0], dtype=torch.float16)
    b["half"] = torch.tensor([2.0, 4.0], dtype=torch.float16)
    result = average_merge([a, b])
    assert torch.equal(result.state_dict["layer.weight"], torch.tensor([2.0, 2.0, 0.0]))
    assert result.state_dict["half"].dtype == torch.float16
    assert torch.equal(result.state_dict["half"], torch.tensor([1.5, 3.0], dtype=torch.float16))
    # integers cannot be averaged: taken from the first model
    assert result.state_dict["bn.num_batches_tracked"].item() == 5
    assert result.copied == ["bn.num_batches_tracked"] and list(result.state_dict) == list(a)


def test_ties_trims_elects_sign_and_takes_disjoint_mean() -> None:
    base = _sd([0.0, 0.0, 0.0, 0.0])
    # task vectors: t1 = [3, -1, 0.5, 2], t2 = [1, 2, -4, -0.25], t3 = [-2, 1.5, -1, 0.1]
    m1 = _sd([3.0, -1.0, 0.5, 2.0])
    m2 = _sd([1.0, 2.0, -4.0, -0.25])
    m3 = _sd([-2.0, 1.5, -1.0, 0.1])
    # density 0.5 keeps the 2 largest magnitudes per task vector:
    #   t1 -> [3, 0, 0, 2], t2 -> [0, 2, -4, 0], t3 -> [-2, 1.5, 0, 0]
    # elected signs of the sums [1, 3.5, -4, 2] -> [+, +, -, +]
    # disjoint means over agreeing non-zeros: [3, (2 + 1.5) / 2, -4, 2]
    result = ties_merge(base, [m1, m2, m3], density=0.5, lam=1.0)
    torch.testing.assert_close(result.state_dict["layer.weight"], torch.tensor([3.0, 1.75, -4.0, 2.0]))
    # lambda scales the merged task vector around a non-zero base
    shifted = {k: v + 1 for k, v in base.items()}
    moved = [{k: v + 1 for k, v in m.items()} for m in (m1, m2, m3)]
    scaled = ties_merge(shifted, moved, density=0.5, lam=0.5)
    torch.testing.assert_close(scaled.state_dict["layer.weight"], torch.tensor([2.5, 1.875, -1.0, 2.0]))


def test_ties_trims_over_the_whole_task_vector_not_per_tensor() -> None:
    base = {"a": torch.zeros(2), "b": torch.zeros(2)}
    member = {"a": torch.tensor([5.0, 4.0]), "b": torch.tensor([0.1, 0.2])}
    result = ties_merge(base, [member], density=0.5)
    assert torch.equal(result.state_dict["a"], torch.tensor([5.0, 4.0]))
    assert torch.equal(result.state_dict["b"], torch.zeros(2))


def test_ties_with_full_density_and_one_member_returns_the_member() -> None:
    base = _sd([0.5, -1.0, 2.0])
    member = _sd([1.5, -3.0, 2.25])
    result = ties_merge(base, [member], density=1.0, lam=1.0)
    torch.testing.assert_close(result.state_dict["layer.weight"], member["layer.weight"])


def test_dare_drops_rescales_and_is_seeded() -> None:
    base = {"w": torch.zeros(10_000)}
    member = {"w": torch.ones(10_000)}
    result = dare_merge(base, [member], drop_rate=0.75, lam=1.0, seed=3)
    merged = result.state_dict["w"]
    values = set(torch.unique(merged).tolist())
    assert values == {0.0, 4.0}  # dropped, or kept and rescaled by 1 / (1 - 0.75)
    kept = (merged != 0).float().mean().item()
    assert 0.22 < kept < 0.28
    assert abs(merged.mean().item() - 1.0) < 0.1  # expectation preserved
    again = dare_merge(base, [member], drop_rate=0.75, seed=3).state_dict["w"]
    other = dare_merge(base, [member], drop_rate=0.75, seed=4).state_dict["w"]
    assert torch.equal(merged, again) and not torch.equal(merged, other)


def test_dare_without_drop_is_task_arithmetic() -> None:
    base = _sd([1.0, 1.0])
    m1, m2 = _sd([2.0, 0.0]), _sd([4.0, 1.0])  # task vectors [1, -1] and [3, 0]
    mean = dare_merge(base, [m1, m2], drop_rate=0.0, lam=1.0, combine="mean").state_dict["layer.weight"]
    total = dare_merge(base, [m1, m2], drop_rate=0.0, lam=0.5, combine="sum").state_dict["layer.weight"]
    torch.testing.assert_close(mean, torch.tensor([3.0, 0.5]))
    torch.testing.assert_close(total, torch.tensor([3.0, 0.5]))


def test_running_stats_are_averaged_not_trimmed_and_int_buffers_come_from_base() -> None:
    base = _sd(
        [0.0, 0.0], **{"bn.running_var": torch.tensor([1.0, 1.0]), "bn.num_batches_tracked": torch.tensor(1)}
    )
    m1 = _sd(
        [1.0, 0.0], **{"bn.running_var": torch.tensor([2.0, 4.0]), "bn.num_batches_tracked": torch.tensor(7)}
    )
    m2 = _sd(
        [0.0, 1.0], **{"bn.running_var": torch.tensor([4.0, 2.0]), "bn.num_batches_tracked": torch.tensor(9)}
    )
    for result in (ties_merge(base, [m1, m2], density=0.5), dare_merge(base, [m1, m2], drop_rate=0.9)):
        # a DARE-dropped or TIES-trimmed variance would be meaningless: running stats are averaged
        torch.testing.assert_close(result.state_dict["bn.running_var"], torch.tensor([7 / 3, 7 / 3]))
        assert result.state_dict["bn.num_batches_tracked"].item() == 1
        assert result.averaged_stats == ["bn.running_var"] and result.copied == ["bn.num_batches_tracked"]


def test_shape_mismatch_is_skipped_and_missing_keys_are_errors() -> None:
    a = _sd([1.0, 2.0], head=torch.zeros(3, 4))
    b = _sd([3.0, 4.0], head=torch.zeros(5, 4))
    result = average_merge([a, b])
    assert result.skipped == ["head"] and "head" not in result.state_dict
    with pytest.raises(GeosaneError, match="different tensors"):
        average_merge([a, {"layer.weight": torch.zeros(2)}], names=["a", "b"])
    with pytest.raises(GeosaneError, match="density"):
        ties_merge(a, [a], density=0.0)
    with pytest.raises(GeosaneError, match="drop_rate"):
        dare_merge(a, [a], drop_rate=1.0)
    with pytest.raises(GeosaneError, match="at least one member"):
        ties_merge(a, [])


def test_merges_of_a_real_timm_architecture_load_and_run() -> None:
    torch.manual_seed(0)
    base_model = timm.create_model("test_resnet", num_classes=5)
    base = base_model.state_dict()
    members = []
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        members.append(
            {
                k: v + 0.01 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v + seed
                for k, v in base.items()
            }
        )
    vectors = task_vectors(base, members, ["fc.weight"])
    assert torch.allclose(vectors[0]["fc.weight"], members[0]["fc.weight"] - base["fc.weight"])
    for result in (
        average_merge(members),
        ties_merge(base, members, density=0.2),
        dare_merge(base, members, drop_rate=0.5, seed=0),
    ):
        assert list(result.state_dict) == list(base) and not result.skipped
        assert all(result.state_dict[k].dtype == base[k].dtype for k in base)
        model = timm.create_model("test_resnet", num_classes=5)
        model.load_state_dict(result.state_dict, strict=True)
        assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 5)
        assert not torch.equal(result.state_dict["fc.weight"], base["fc.weight"])
    ties = ties_merge(base, members, density=0.2).state_dict
    merged_delta = torch.cat([(ties[k] - base[k]).flatten() for k in base if k.endswith("conv1.weight")])
    assert 0.05 < (merged_delta != 0).float().mean().item() < 0.6  # trimmed: most entries stay at the base
    assert (
        average_merge(members).state_dict["bn1.num_batches_tracked"].item()
        == members[0]["bn1.num_batches_tracked"].item()
    )


def test_merge_command_writes_the_merge_and_refuses_ties_without_base(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(0)
    states = [timm.create_model("test_resnet", num_classes=3).state_dict() for _ in range(2)]
    files = []
    for i, state in enumerate(states):
        files.append(str(tmp_path / f"m{i}.safetensors"))
        save_safetensors(state, files[-1])
    out = tmp_path / "avg.safetensors"
    code, _, err = run_cli(capsys, "merge", *files, "--arch", "test_resnet", "--out", str(out))
    assert code == 0, err
    merged = load_file(out)
    torch.testing.assert_close(merged["fc.weight"], (states[0]["fc.weight"] + states[1]["fc.weight"]) / 2)
    bad = tmp_path / "ties.safetensors"
    code, _, err = run_cli(capsys, "merge", *files, "--method", "ties", "--out", str(bad))
    assert code == 2 and "needs --base" in err and not bad.exists()
