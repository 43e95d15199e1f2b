"""``metadata.trained_on`` of `zoo build` members and :func:`check_disjoint` (real builds, no mocks)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from geosane.errors import GeosaneError
from geosane.zoo import (
    LoadedModel,
    TrainedOn,
    Zoo,
    build_zoo,
    check_disjoint,
    image_digest,
    members_seeing,
    read_image_list,
    record_trained_on,
)

CLASSES = ("alpha", "beta", "gamma")
SMALL_RESNET = {"name": "resnet18", "kwargs": {"channels": [8, 8, 16, 16]}}


def make_folder(root: Path, per_class: int, seed: int) -> Path:
    """A 3-class RGB folder of random 32x32 PNGs (as the ``tiny_image_folder`` fixture builds)."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            base = np.zeros((32, 32, 3), dtype=np.uint8)
            base[..., c] = 160
            noise = rng.integers(0, 60, size=(32, 32, 3), dtype=np.uint8)
            Image.fromarray(base + noise).save(root / name / f"{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(image folder, zoo) of three one-epoch members: all classes, two classes, a child of the first."""
    base = tmp_path_factory.mktemp("provenance")
    folder = make_folder(base / "data", per_class=6, seed=0)
    recipe = {
        "name": "prov",
        "dataset": str(folder),
        "image_size": 32,
        "num_threads": 1,
        "defaults": {"epochs": 1, "batch_size": 8, "augment": False},
        "members": [
            {"name": "res", "arch": SMALL_RESNET},
            {"name": "pair", "arch": SMALL_RESNET, "classes": ["alpha", "beta"], "seed": 1},
            {"name": "child", "init_from": "res", "classes": ["beta", "alpha"], "seed": 2},
        ],
    }
    threads = torch.get_num_threads()
    try:
        build_zoo(recipe, base / "zoo")
    finally:
        torch.set_num_threads(threads)
    return folder, base / "zoo"


def images(folder: Path, *classes: str) -> list[Path]:
    return sorted(p for c in classes for p in (folder / c).glob("*.png"))


def test_each_member_records_its_images(built):
    folder, zoo_dir = built
    zoo = Zoo(zoo_dir)
    records = {e.id: TrainedOn.from_dict(e.metadata["trained_on"]) for e in zoo}
    assert {k: (r.classes, r.num_images) for k, r in records.items()} == {
        "res": (["alpha", "beta", "gamma"], 18),
        "pair": (["alpha", "beta"], 12),
        "child": (["beta", "alpha", "gamma"], 18),  # its parent's images count: it starts from them
    }
    for entry in zoo:
        assert "trained_on" not in entry.metadata["train_config"]  # compared on resume
        record = records[entry.id]
        assert record.root == str(folder.resolve())
        assert record.image_list == f"trained_on/{record.images_sha256[:16]}.json"
        assert "train" in record.splits and "test" in record.splits
        stored = json.loads((zoo_dir / record.image_list).read_text())
        assert stored["format"] == "geosane-image-list" and stored["version"] == 1
        assert stored["images"] == sorted(stored["images"])
    assert "init_from" in records["child"].splits
    # content-addressed: the child saw exactly the parent's images, so they share one list
    assert records["child"].image_list == records["res"].image_list
    assert len(list((zoo_dir / "trained_on").glob("*.json"))) == 2
    expected = {image_digest(p) for p in images(folder, "alpha", "beta")}
    assert read_image_list(zoo_dir, records["pair"]) == expected
    # a finished build is a no-op and keeps the records
    assert [e.metadata["trained_on"] for e in build_zoo_again(zoo_dir)] == [
        e.metadata["trained_on"] for e in zoo
    ]


def build_zoo_again(zoo_dir: Path) -> Zoo:
    recipe = zoo_dir / "recipes" / "prov.yaml"
    return build_zoo(recipe, zoo_dir)


def test_check_disjoint_refuses_seen_images_even_copied(built, tmp_path):
    folder, zoo_dir = built
    zoo = Zoo(zoo_dir)
    target = make_folder(tmp_path / "target", per_class=3, seed=99)
    fresh = images(target, *CLASSES)
    assert check_disjoint(zoo, fresh) == []  # disjoint target: no member saw it, none unknown

    seen, unknown = members_seeing(zoo, {image_digest(p) for p in fresh})
    assert seen == {} and unknown == []

    with pytest.raises(GeosaneError, match=r"zoo member 'res' saw 1 of the target's 10 images") as info:
        check_disjoint(zoo, [*fresh, folder / "alpha" / "00.png"])
    message = str(info.value)
    assert "'pair' saw 1" in message and "'child' saw 1" in message
    assert f"trained_on root {folder.resolve()}" in message and "\n" not in message

    # a copy of a gamma training image under another name (and a symlink to it) is still recognised
    copy = tmp_path / "renamed.png"
    shutil.copyfile(folder / "gamma" / "03.png", copy)
    link = tmp_path / "link.png"
    link.symlink_to(folder / "gamma" / "04.png")
    with pytest.raises(GeosaneError, match=r"saw 2 of rsscn7's 11 images") as info:
        check_disjoint(zoo, [*fresh, copy, link], what="rsscn7")
    assert "'res'" in str(info.value) and "'child'" in str(info.value)
    assert "'pair'" not in str(info.value)  # pair never saw gamma
    assert members_seeing(zoo, {image_digest(copy)})[0] == {"res": 1, "child": 1}


def test_tampered_list_is_refused(built, tmp_path):
    folder, zoo_dir = built
    zoo_copy = Path(shutil.copytree(zoo_dir, tmp_path / "zoo"))
    zoo = Zoo(zoo_copy)
    record = TrainedOn.from_dict(zoo.get("pair").metadata["trained_on"])
    list_file = zoo_copy / record.image_list
    data = json.loads(list_file.read_text())
    data["images"] = data["images"][1:]  # an image dropped from the list, checksum left as it was
    list_file.write_text(json.dumps(data))
    with pytest.raises(GeosaneError, match=rf"{list_file.name}: checksum mismatch"):
        read_image_list(zoo_copy, record)
    with pytest.raises(GeosaneError, match="checksum mismatch"):
        check_disjoint(zoo, [folder / "alpha" / "00.png"])


def test_image_list_outside_the_zoo_is_refused(built, tmp_path):
    folder, zoo_dir = built
    zoo = Zoo(zoo_dir)
    record = TrainedOn.from_dict(zoo.get("res").metadata["trained_on"])
    for bad in ("../x.json", str(zoo_dir.parent / "x.json")):
        record.image_list = bad
        with pytest.raises(GeosaneError, match="leaves its directory"):
            read_image_list(zoo_dir, record)
    zoo.get("res").metadata["trained_on"]["image_list"] = "../x.json"  # an edited manifest row
    with pytest.raises(GeosaneError, match="leaves its directory"):
        check_disjoint(zoo, [folder / "alpha" / "00.png"])


def test_member_without_record_is_unknown(built, tmp_path):
    folder, zoo_dir = built
    zoo = Zoo(shutil.copytree(zoo_dir, tmp_path / "zoo"))
    zoo.add(LoadedModel(source="test:imported", state_dict={"w": torch.ones(3)}), model_id="imported")
    target = images(make_folder(tmp_path / "target", per_class=1, seed=5), *CLASSES)
    assert check_disjoint(zoo, target) == ["imported"]
    seen, unknown = members_seeing(zoo, {image_digest(folder / "beta" / "01.png")})
    assert seen == {"res": 1, "pair": 1, "child": 1} and unknown == ["imported"]


def test_record_trained_on_hashes_once_and_writes_once(tmp_path):
    folder = make_folder(tmp_path / "data", per_class=2, seed=1)
    paths = [str(p) for p in images(folder, *CLASSES)]
    cache: dict[str, str] = {}
    first = record_trained_on(tmp_path / "zoo", folder, list(CLASSES), paths, cache=cache)
    assert set(cache) == set(paths) and first.num_images == 6
    list_file = tmp_path / "zoo" / first.image_list
    stamp = list_file.stat().st_mtime_ns
    again = record_trained_on(tmp_path / "zoo", folder, list(CLASSES), reversed(paths), cache=cache)
    assert again == first and list_file.stat().st_mtime_ns == stamp  # same content, same file, kept
    # the cache is trusted within a build: a path already hashed is not read again
    cache[paths[0]] = "0" * 16
    assert (
        record_trained_on(tmp_path / "zoo", folder, [], paths, cache=cache).images_sha256
        != first.images_sha256
    )
    with pytest.raises(GeosaneError, match="cannot read image"):
        image_digest(tmp_path / "missing.png")
