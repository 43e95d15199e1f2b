"""The control initializations (geosane.downstream.controls) on real timm ResNets, and in compare."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from geosane.downstream import compare, load_compare_config
from geosane.downstream.controls import (
    NotApplicable,
    larger_member,
    matched_noise,
    nearest_member,
    prune_to,
    select_weights,
    weight_distance,
)
from geosane.errors import GeosaneError
from geosane.zoo import ArchSpec, LoadedModel, Zoo, build_architecture

from .downstream_fakes import perturbed, write_generated_dir

QUARTER = ArchSpec("timm", "resnet18", {"channels": [16, 32, 64, 128], "num_classes": 4})
HALF = ArchSpec("timm", "resnet18", {"channels": [32, 64, 128, 256], "num_classes": 4})
SMALL = ArchSpec("timm", "resnet18", {"channels": [12, 24, 48, 96], "num_classes": 7})


def _weights(arch: ArchSpec, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return build_architecture(arch).state_dict()


def test_matched_noise_moves_every_tensor_exactly_as_far_as_the_generated_weights() -> None:
    prompt = _weights(QUARTER, 0)
    generated = perturbed(prompt, 1, 0.05)
    noisy, info = matched_noise(prompt, generated, seed=3)
    moved = 0
    for key, value in prompt.items():
        if key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert torch.equal(noisy[key], value)  # statistics stay the prompt's
            continue
        target = (generated[key] - value).norm()
        assert torch.allclose((noisy[key] - value).norm(), target, rtol=1e-4, atol=1e-7)
        moved += int(target > 0)
        if target > 0:  # a new direction, not the generated offset
            assert not torch.allclose(noisy[key], generated[key])
    assert moved == info["tensors"] == 65  # every weight, bias and norm affine of resnet18
    assert info["distance"] == pytest.approx(weight_distance(generated, prompt), rel=1e-6)
    again, _ = matched_noise(prompt, generated, seed=3)
    assert all(torch.equal(again[k], noisy[k]) for k in noisy)  # seeded


def test_weight_selection_takes_the_leading_channels_and_prune_keeps_the_function() -> None:
    larger = _weights(HALF, 0)
    selected = select_weights(SMALL, larger)
    model = build_architecture(SMALL)
    missing, unexpected = model.load_state_dict(selected, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected  # the head is the task's
    for key, value in selected.items():  # every tensor is the leading block of the larger one's
        assert torch.equal(value, larger[key][tuple(slice(0, n) for n in value.shape)])
    assert selected["layer1.0.conv1.weight"].shape[0] == 12 and larger["layer1.0.conv1.weight"].shape[0] == 32
    # pruning to the same size only reorders hidden units: the network computes the same function
    big = build_architecture(HALF).eval()
    big.load_state_dict(larger)
    same = build_architecture(HALF).eval()
    same.load_state_dict(prune_to(HALF, HALF, larger))
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(big(x), same(x), atol=1e-5)
    pruned = prune_to(SMALL, HALF, larger)
    assert weight_distance(pruned, selected) > 0.1  # other hidden units than weight selection's
    assert torch.equal(pruned["conv1.weight"], selected["conv1.weight"])  # the residual stream: leading


def test_weight_selection_refuses_a_model_that_is_not_larger() -> None:
    with pytest.raises(NotApplicable, match=r"cannot supply .* tensor"):
        select_weights(HALF, _weights(QUARTER, 0))


def _zoo(tmp_path: Path) -> Zoo:
    zoo = Zoo.create(tmp_path / "zoo")
    grey = ArchSpec("timm", "resnet18", {**QUARTER.kwargs, "in_chans": 1})
    for model_id, arch, seed in (
        ("q-0", QUARTER, 0),
        ("q-1", QUARTER, 1),
        ("grey", grey, 2),
        ("h-0", HALF, 3),
    ):
        zoo.add(
            LoadedModel(model_id, _weights(arch, seed), arch),
            model_id=model_id,
            metadata={"select_accuracy": 0.5},
        )
    return zoo


def test_nearest_and_larger_members(tmp_path: Path) -> None:
    zoo = _zoo(tmp_path)
    prompt = perturbed(zoo.load_state_dict("q-1"), 0, 0.001)
    assert nearest_member(zoo, QUARTER, prompt).entry.id == "q-1"
    # the 1-band member is excluded even when it is nearest on the tensors both have
    grey_like = {k: v.clone() for k, v in zoo.load_state_dict("grey").items()}
    grey_like["conv1.weight"] = prompt["conv1.weight"]
    assert nearest_member(zoo, QUARTER, grey_like).entry.id in ("q-0", "q-1")
    assert larger_member(zoo, SMALL).entry.id == "q-0"  # the smallest that covers 12..96 channels
    assert larger_member(zoo, ArchSpec("timm", "resnet18", {"channels": [24, 48, 96, 192]})).entry.id == "h-0"
    with pytest.raises(NotApplicable, match="no larger timm:resnet18"):
        larger_member(zoo, ArchSpec("timm", "resnet18", {"channels": [64, 128, 256, 512]}))
    with pytest.raises(NotApplicable, match=r"no timm:resnet18 .* member"):
        nearest_member(zoo, SMALL, _weights(SMALL, 0))


def test_compare_runs_the_controls_and_reports_the_inapplicable_ones(
    rsscn7_root: Path, tiny_zoo: Path, tmp_path: Path
) -> None:
    generated = write_generated_dir(tmp_path / "generated", prompt=f"zoo:{tiny_zoo}#base")
    inits = ["scratch", "prompt_noise", "nearest", "reconstruction", "weight_selection", "generated"]
    overrides = {
        "data.root": str(rsscn7_root), "data.image_size": 16, "data.train_per_class": 3,
        "data.max_samples.select": 14, "data.max_samples.test": 28, "train.epochs": 1, "train.batch_size": 21,
        "seeds": [0], "inits": inits, "zoo.dir": str(tiny_zoo), "generated.dir": str(generated),
        "generated.top_k": 1, "out": str(tmp_path / "cmp"), "plots": False, "test_curve": True,
    }  # fmt: skip
    config = load_compare_config("compare_rsscn7", overrides)
    with pytest.raises(
        NotApplicable, match=r"init 'reconstruction' is not applicable: it needs controls\.reconstruction_dir"
    ):
        compare(config)
    assert not (tmp_path / "cmp").exists()  # refused before anything was written
    config.controls.not_applicable = "report"
    result = compare(config)
    names = [s.name for s in result.summaries]
    assert names == ["scratch", "prompt_noise", "nearest", "generated-1"]
    summary = json.loads((tmp_path / "cmp" / "summary.json").read_text())
    assert set(summary["not_applicable"]) == {"reconstruction", "weight_selection"}
    assert "no larger timm:test_resnet" in summary["not_applicable"]["weight_selection"]
    assert "weight_selection: not applicable: the zoo has no larger" in result.report.read_text()
    assert summary["init_info"]["nearest"]["member"] in ("base", "member-0", "member-1", "member-2")
    # the test curve: epoch 0 (the init as it is) and every epoch, reported in history.csv
    history = (tmp_path / "cmp" / "runs" / "nearest" / "seed0" / "history.csv").read_text().splitlines()
    assert history[0].endswith("test_accuracy") and [row.split(",")[0] for row in history[1:]] == ["0", "1"]
    final = result.results["nearest"][0]
    assert final.history[-1]["report_accuracy"] == pytest.approx(final.test)


def test_distillation_loss_is_zero_against_itself_and_positive_otherwise() -> None:
    from geosane.tasks import Distillation

    torch.manual_seed(0)
    teacher = torch.nn.Linear(4, 3)
    x = torch.randn(8, 4)
    distill = Distillation(teacher, alpha=1.0, temperature=2.0)
    assert float(distill.loss(teacher(x).detach(), x)) == pytest.approx(0.0, abs=1e-6)
    assert float(distill.loss(torch.zeros(8, 3), x)) > 0 and not any(
        p.requires_grad for p in teacher.parameters()
    )
    with pytest.raises(ValueError, match="alpha"):
        Distillation(teacher, alpha=1.5)


def test_compare_distils_from_a_finetuned_teacher_and_refuses_one_for_other_classes(
    rsscn7_root: Path, tmp_path: Path
) -> None:
    from geosane.downstream import finetune, load_finetune_config

    data = {"data.root": str(rsscn7_root), "data.image_size": 16, "data.train_per_class": 3,
            "data.max_samples.select": 14, "data.max_samples.test": 28, "train.epochs": 1,
            "train.batch_size": 21, "arch.name": "test_resnet"}  # fmt: skip
    teacher = finetune(
        load_finetune_config("rsscn7", {**data, "out": str(tmp_path / "teacher")}), show_progress=False
    )
    overrides = {**data, "seeds": [0], "inits": ["scratch", "distillation"], "controls.teacher": str(teacher.out_dir),
                 "out": str(tmp_path / "cmp"), "plots": False}  # fmt: skip
    result = compare(load_compare_config("compare_rsscn7", overrides))
    scratch, distilled = result.results["scratch"][0], result.results["distillation"][0]
    assert scratch.history[0]["train_loss"] != distilled.history[0]["train_loss"]  # the teacher's term
    assert (
        "distilled from"
        in json.loads((tmp_path / "cmp" / "summary.json").read_text())["init_info"]["distillation"]["source"]
    )
    # a teacher for other classes is refused before anything is written
    three = tmp_path / "three"
    for cls in sorted(p.name for p in rsscn7_root.iterdir())[:3]:
        shutil.copytree(rsscn7_root / cls, three / cls)
    other = {**overrides, "data.root": str(three), "out": str(tmp_path / "cmp3")}
    with pytest.raises(GeosaneError, match=r"the teacher .* predicts"):
        compare(load_compare_config("compare_rsscn7", other))
    assert not (tmp_path / "cmp3").exists()


def test_nearest_passes_over_the_prompts_own_weights(tmp_path: Path) -> None:
    zoo = Zoo.create(tmp_path / "zoo")
    for seed in (0, 1):
        zoo.add(LoadedModel(f"w{seed}", _weights(QUARTER, seed), QUARTER), model_id=f"q-{seed}")
    prompt = _weights(QUARTER, 0)  # q-0's own weights
    assert nearest_member(zoo, QUARTER, prompt).entry.id == "q-1"
    alone = Zoo.create(tmp_path / "alone")
    alone.add(LoadedModel("w0", _weights(QUARTER, 0), QUARTER), model_id="q-0")
    with pytest.raises(
        NotApplicable, match=r"only .* member with the prompt's tensor shapes is the prompt \(q-0\)"
    ):
        nearest_member(alone, QUARTER, prompt)


def test_zoo_average_leaves_out_members_of_other_bands(tmp_path: Path) -> None:
    from geosane.downstream.config import ZooInitConfig
    from geosane.downstream.inits import zoo_initializations

    zoo = _zoo(tmp_path)  # q-0, q-1 (RGB), grey (1 band, same architecture otherwise), ...
    (average,) = zoo_initializations(ZooInitConfig(dir=zoo.path), QUARTER, ["zoo_average"])
    assert "grey" not in average.info["members"] and {"q-0", "q-1"} <= set(average.info["members"])
    assert "without ['grey'] (other tensor shapes)" in average.info["selection"]
    assert average.state_dict is not None and average.state_dict["conv1.weight"].shape[1] == 3
    with pytest.raises(GeosaneError, match=r"zoo.members \['grey'\] do not have the prompt's tensor shapes"):
        zoo_initializations(ZooInitConfig(dir=zoo.path, members=["q-0", "grey"]), QUARTER, ["zoo_average"])
