"""Fixtures for the token tests: a small zoo of random-init timm models and its token store."""

from __future__ import annotations

from pathlib import Path

import pytest

from geosane.tokens import TokenStore, tokenize_zoo
from geosane.zoo import Zoo, resolve

from .tokens_testutil import timm_model


def make_zoo(path: Path) -> Zoo:
    """Three real architectures at small widths, with an accuracy in their metadata."""
    zoo = Zoo.create(path)
    zoo.add(
        resolve("timm:test_resnet", random_init=True, num_classes=4),
        family="resnet",
        metadata={"accuracy": 0.61},
    )
    zoo.add(
        resolve("timm:mobilenetv3_small_050", random_init=True, num_classes=4),
        family="mobilenet",
        metadata={"accuracy": 0.52},
    )
    zoo.add(timm_model("test_vit", num_classes=4), family="vit", metadata={"accuracy": 0.47})
    return zoo


@pytest.fixture(scope="session")
def small_zoo(tmp_path_factory: pytest.TempPathFactory) -> Zoo:
    return make_zoo(tmp_path_factory.mktemp("zoo") / "zoo")


@pytest.fixture(scope="session")
def small_store(small_zoo: Zoo, tmp_path_factory: pytest.TempPathFactory) -> TokenStore:
    """The dense d_t=230 store of ``small_zoo`` (do not modify it: tests share it)."""
    return tokenize_zoo(small_zoo, tmp_path_factory.mktemp("store") / "store")
