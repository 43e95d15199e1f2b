"""Token stores for the autoencoder tests, built with the real zoo and tokenizer APIs."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import timm
import torch

from geosane.cli import main
from geosane.tokens.store import tokenize_zoo
from geosane.zoo import ArchSpec, LoadedModel, Zoo


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread is faster, and on a shared CPU it avoids the OpenMP
    oversubscription that made these tests ~20x slower (measured: 78 s -> 4 s for a 12-step run)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


# real (small) timm architectures, random init: (id, timm name, seed)
RANDOM_MODELS = [
    ("resnet-a", "test_resnet", 0),
    ("vit-a", "test_vit", 0),
    ("effnet-a", "test_efficientnet", 0),
    ("convnext-a", "test_convnext", 0),
    ("vit-b", "test_vit", 1),
]


@pytest.fixture(scope="session")
def random_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A token store (token size 32) of five random-init timm models with an ``accuracy`` property."""
    root = tmp_path_factory.mktemp("ae-random")
    zoo = Zoo.create(root / "zoo")
    with one_thread():
        _add_random_models(zoo)
        tokenize_zoo(zoo, root / "store", token_size=32)
    return root / "store"


def _add_random_models(zoo: Zoo) -> None:
    for i, (model_id, name, seed) in enumerate(RANDOM_MODELS):
        torch.manual_seed(seed)
        model = timm.create_model(name, pretrained=False, num_classes=3)
        zoo.add(
            LoadedModel(f"timm:{name}", model.state_dict(), ArchSpec("timm", name, {"num_classes": 3})),
            model_id=model_id,
            family=name,
            metadata={"accuracy": 0.3 + 0.1 * i},
        )


@pytest.fixture(scope="session")
def tiny_zoo_store(tmp_path_factory: pytest.TempPathFactory, rsscn7_root: Path) -> Path:
    """``geosane zoo build`` (packaged tiny recipe, one short epoch on rsscn7), then ``geosane tokenize`` at 32."""
    root = tmp_path_factory.mktemp("ae-tiny-zoo")
    with one_thread():
        _cli("zoo", "build", "tiny", f"dataset={rsscn7_root}", "defaults.epochs=1", "limit_per_class=12",
             "--zoo", str(root / "zoo"))
        _cli("tokenize", "--zoo", str(root / "zoo"), "--out", str(root / "store"), "--token-size", "32")
    return root / "store"


def _cli(*args: str) -> None:
    """Run a ``geosane`` command in-process; fail the fixture on a non-zero exit."""
    try:
        main(list(args))
    except SystemExit as exc:
        assert not exc.code, f"geosane {' '.join(args)} exited with {exc.code}"


@pytest.fixture(scope="session")
def trained_tiny(tiny_zoo_store: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """The tiny preset trained by `geosane train` on the tiny zoo (all models are training models)."""
    out = tmp_path_factory.mktemp("ae-tiny") / "run"
    started = time.perf_counter()
    with one_thread():
        _cli("train", "tiny", f"data.store={tiny_zoo_store}", f"train.out={out}", "data.val_fraction=0",
             "train.progress=false")
    return out, time.perf_counter() - started
