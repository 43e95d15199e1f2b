from __future__ import annotations

from pathlib import Path

import pytest

from geosane.errors import GeosaneError
from geosane.zoo import Zoo, resolve


def test_add_dedupes_by_sha_and_round_trips(tmp_path: Path) -> None:
    zoo = Zoo.create(tmp_path / "zoo")
    model = resolve("timm:resnet18", random_init=True, num_classes=5)
    entry, added = zoo.add(model, family="resnet", metadata={"accuracy": 0.5})
    assert added and entry.id == "resnet18" and entry.num_classes == 5
    again, added_again = zoo.add(model)
    assert not added_again and again.id == entry.id and len(zoo) == 1
    reopened = Zoo(tmp_path / "zoo")
    loaded = reopened.load("resnet18")
    assert loaded.info["accuracy"] == 0.5
    net = loaded.build()  # architecture recorded: the model rebuilds with the stored weights
    assert net.fc.out_features == 5


def test_missing_weights_file_is_reported(tmp_path: Path) -> None:
    zoo = Zoo.create(tmp_path / "zoo")
    entry, _ = zoo.add(resolve("timm:resnet18", random_init=True, num_classes=2))
    (zoo.path / entry.file).unlink()
    with pytest.raises(GeosaneError, match=r"points to missing file models/resnet18\.safetensors"):
        Zoo(zoo.path).load_state_dict("resnet18")


def test_not_a_zoo(tmp_path: Path) -> None:
    with pytest.raises(GeosaneError, match="is not a zoo"):
        Zoo(tmp_path)
