from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

import geosane.tasks
from geosane.errors import ConfigError, GeosaneError
from geosane.zoo import Zoo, build_architecture, build_zoo, prepare_build

VIT_KWARGS = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def folder_recipe(root: Path, **extra: Any) -> dict[str, Any]:
    """Three small members (resnet, convnext, vit) on the 3-class tiny folder."""
    recipe: dict[str, Any] = {
        "name": "unit",
        "dataset": str(root),
        "image_size": 32,
        "defaults": {"epochs": 1, "batch_size": 8},
        "members": [
            {"name": "res", "arch": {"name": "resnet18", "kwargs": {"channels": [8, 8, 16, 16]}}},
            {
                "name": "cnx",
                "arch": {"name": "convnext_atto", "kwargs": {"dims": [8, 8, 16, 16], "depths": [1, 1, 1, 1]}},
            },
            {"name": "vit", "arch": {"name": "vit_tiny_patch16_224", "kwargs": VIT_KWARGS}, "seed": 3},
        ],
    }
    recipe.update(extra)
    return recipe


class _CrashAt(L.Callback):
    def on_train_batch_end(self, *args: Any) -> None:
        raise RuntimeError("simulated crash mid-member")


def test_interrupted_build_resumes_without_retraining(tmp_path, tiny_image_folder, monkeypatch):
    zoo_dir = tmp_path / "zoo"
    recipe = folder_recipe(tiny_image_folder)
    real_fit = geosane.tasks.fit
    trained: list[int] = []

    def crash_on_third(*args: Any, **kwargs: Any):
        trained.append(args[2])
        if len(trained) == 3:  # the third member dies in its first training step
            kwargs["callbacks"] = [*kwargs.get("callbacks", []), _CrashAt()]
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(geosane.tasks, "fit", crash_on_third)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_zoo(recipe, zoo_dir)
    zoo = Zoo(zoo_dir)
    assert zoo.ids == ["res", "cnx"]
    before = {e.id: (e.sha256, zoo.weights_path(e).stat().st_mtime_ns) for e in zoo}
    assert not (zoo_dir / "models" / "vit.safetensors").exists()

    trained.clear()
    monkeypatch.setattr(geosane.tasks, "fit", lambda *a, **k: (trained.append(a[2]), real_fit(*a, **k))[1])
    zoo = build_zoo(recipe, zoo_dir)
    assert len(trained) == 1  # only the unfinished member was trained
    assert zoo.ids == ["res", "cnx", "vit"]
    after = {e.id: (e.sha256, zoo.weights_path(e).stat().st_mtime_ns) for e in zoo if e.id in before}
    assert after == before

    trained.clear()
    build_zoo(recipe, zoo_dir)  # a finished build is a no-op
    assert trained == []


class _CrashInSecondEpoch(L.Callback):
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        if trainer.current_epoch == 1 and idx == 1:
            raise RuntimeError("simulated crash in epoch 2")


def test_a_member_killed_mid_training_resumes_bitwise(tmp_path, tiny_image_folder, monkeypatch):
    """The member resumes from its epoch checkpoint; every zoo row equals an uninterrupted build."""
    recipe = folder_recipe(tiny_image_folder, defaults={"epochs": 3, "batch_size": 4})
    reference = build_zoo(recipe, tmp_path / "reference")
    real_fit = geosane.tasks.fit
    calls: list[int] = []

    def crash_second_member(*args: Any, **kwargs: Any):
        calls.append(1)
        if len(calls) == 2:
            kwargs["callbacks"] = [*kwargs.get("callbacks", []), _CrashInSecondEpoch()]
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(geosane.tasks, "fit", crash_second_member)
    with pytest.raises(RuntimeError, match="simulated crash in epoch 2"):
        build_zoo(recipe, tmp_path / "zoo")
    (checkpoint,) = (tmp_path / "zoo" / "checkpoints").glob("cnx-*.ckpt")
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 0  # epoch 1 finished and saved
    monkeypatch.setattr(geosane.tasks, "fit", real_fit)
    zoo = build_zoo(recipe, tmp_path / "zoo")
    assert [(e.id, e.sha256) for e in zoo] == [(e.id, e.sha256) for e in reference]
    assert [e.metadata["history"] for e in zoo] == [e.metadata["history"] for e in reference]
    assert not list((tmp_path / "zoo" / "checkpoints").iterdir())  # removed once the member is in the zoo


def test_member_metadata_and_rebuild(tmp_path, tiny_image_folder):
    recipe = folder_recipe(
        tiny_image_folder,
        members=[
            {"name": "base", "arch": {"name": "resnet18", "kwargs": {"channels": [8, 8, 16, 16]}}},
            {"name": "child", "init_from": "base", "classes": ["gamma", "alpha"], "bands": [0, 2], "seed": 1},
        ],
    )
    with pytest.raises(ConfigError, match=r"member 'child'.*architecture of its init_from parent"):
        build_zoo(recipe, tmp_path / "bad")  # child with 2 bands cannot start from a 3-band parent
    assert not (tmp_path / "bad").exists()

    recipe["members"][1]["bands"] = None
    zoo = build_zoo(recipe, tmp_path / "zoo")
    base, child = zoo.get("base"), zoo.get("child")
    assert child.classes == ["gamma", "alpha"] and child.num_classes == 2 and child.in_chans == 3
    assert child.metadata["init_from"] == "base" and child.metadata["train_config"]["seed"] == 1
    assert base.family == "resnet" and base.bands == ["red", "green", "blue"]
    for entry in (base, child):
        assert 0.0 <= entry.metadata["accuracy"] <= 1.0
        assert entry.metadata["split_sizes"]["test"] > 0
    # the child starts from the parent: its backbone stays close to the base, unlike a fresh init
    base_sd, child_sd = zoo.load_state_dict("base"), zoo.load_state_dict("child")
    fresh = build_architecture(zoo.get("base").arch_spec).state_dict()
    key = "layer1.0.conv1.weight"
    assert (child_sd[key] - base_sd[key]).norm() < (fresh[key] - base_sd[key]).norm()
    # the stored architecture rebuilds with the stored weights and runs
    net = zoo.load("child").build().eval()
    assert net(torch.zeros(1, 3, 32, 32)).shape == (1, 2)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"members": [{"name": "a", "arch": "resnet18", "classes": ["alpha", "nope"]}]},
            r"member 'a': unknown classes \['nope'\]",
        ),
        (
            {"members": [{"name": "a", "arch": "resnet18", "bands": [0, 5]}]},
            r"band indices \[0, 5\] invalid for 3-band",
        ),
        (
            {"members": [{"name": "a", "arch": "resnet_nonexistent"}]},
            r"unknown timm architecture 'resnet_nonexistent'",
        ),
        ({"members": [{"name": "a", "init_from": "ghost"}]}, r"init_from 'ghost' is not a member"),
        (
            {"members": [{"name": "a", "init_from": "b"}, {"name": "b", "init_from": "a"}]},
            r"init_from forms a cycle",
        ),
        (
            {"members": [{"name": "a", "arch": "resnet18"}, {"name": "a", "arch": "resnet18"}]},
            r"two members are named 'a'",
        ),
        ({"members": [{"name": "Bad Name", "arch": "resnet18"}]}, r"member name 'Bad Name' must be"),
        (
            {"members": [{"name": "a", "arch": {"name": "resnet18", "kwargs": {"num_classes": 3}}}]},
            r"set 'num_classes' through classes",
        ),
        (
            {
                "members": [
                    {"name": "a", "arch": {"name": "vit_tiny_patch16_224", "kwargs": {"img_size": 64}}}
                ]
            },
            r"does not run on 32px inputs",
        ),
        ({"members": [{"name": "a", "arch": "resnet18", "epochs": 0}]}, r"epochs must be >= 1"),
        (
            {"members": [{"name": "a", "arch": "resnet18", "epoch": 2}]},
            r"unknown config key 'members\[0\]\.epoch'; did you mean 'members\[0\]\.epochs'",
        ),
        ({"members": []}, r"defines no members"),
        ({"dataset": "/nonexistent/folder"}, r"image folder not found: /nonexistent/folder"),
    ],
)
def test_bad_recipes_fail_before_writing(tmp_path, tiny_image_folder, change, message):
    zoo_dir = tmp_path / "zoo"
    with pytest.raises(GeosaneError, match=message):
        build_zoo(folder_recipe(tiny_image_folder, **change), zoo_dir)
    assert not zoo_dir.exists()


def test_changed_member_config_is_refused(tmp_path, tiny_image_folder):
    recipe = folder_recipe(tiny_image_folder, members=folder_recipe(tiny_image_folder)["members"][:1])
    zoo = build_zoo(recipe, tmp_path / "zoo")
    manifest = (zoo.path / "manifest.json").read_bytes()
    with pytest.raises(
        GeosaneError, match=r"already has a model 'res' built with a different config \(seed: 0 -> 7"
    ):
        build_zoo(recipe, tmp_path / "zoo", overrides={"members": [{**recipe["members"][0], "seed": 7}]})
    assert (zoo.path / "manifest.json").read_bytes() == manifest


def test_grid_expansion_names_members(tiny_image_folder):
    recipe = {
        "dataset": str(tiny_image_folder),
        "image_size": 32,
        "grid": {
            "arch": ["resnet18", {"name": "vit_tiny_patch16_224", "label": "vit", "kwargs": VIT_KWARGS}],
            "seed": [0, 1],
            "classes": [None, ["alpha", "beta"]],
        },
    }
    plan = prepare_build(recipe)
    names = [m.name for m in plan.members]
    assert names == [
        "resnet18-s0-c0", "resnet18-s0-c1", "resnet18-s1-c0", "resnet18-s1-c1",
        "vit-s0-c0", "vit-s0-c1", "vit-s1-c0", "vit-s1-c1",
    ]  # fmt: skip
    by_name = {m.name: m for m in plan.members}
    assert by_name["vit-s1-c1"].num_classes == 2 and by_name["vit-s1-c0"].classes == (
        "alpha",
        "beta",
        "gamma",
    )
    assert by_name["vit-s0-c0"].family == "vision_transformer"


def test_packaged_recipes_plan_on_rsscn7(rsscn7_root):
    tiny = prepare_build("tiny", [f"dataset={rsscn7_root}"]).members
    assert len({m.family for m in tiny}) >= 4 and all(m.train.epochs <= 2 for m in tiny)
    small = prepare_build("small", [f"dataset={rsscn7_root}"]).members
    assert len(small) >= 20 and len({m.family for m in small}) >= 4
    children = [m for m in small if m.init_from]
    assert len(children) >= 3 and len({m.init_from for m in children}) >= 1
