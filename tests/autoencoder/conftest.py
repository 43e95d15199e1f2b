"""Token stores for the autoencoder tests, built with the real zoo and tokenizer APIs."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from geosane.tokens.store import tokenize_zoo
from geosane.zoo import ArchSpec, LoadedModel, Zoo

# real (small) timm architectures, random init: (id, timm name, seed)
@pytest.fixture(autouse=True)
def _one_thread() -> object:
    """Tiny tensors: one intra-op thread is faster, and on a shared CPU it avoids the OpenMP
    oversubscription that made these tests ~20x slower (measured: 78 s -> 4 s for a 12-step run)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
    for i, (model_id, name, seed) in enumerate(RANDOM_MODELS):
        torch.manual_seed(seed)
        model = timm.create_model(name, pretrained=False, num_classes=3)
        zoo.add(
            LoadedModel(f"timm:{name}", model.state_dict(), ArchSpec("timm", name, {"num_classes": 3})),
            model_id=model_id,
            family=name,
            metadata={"accuracy": 0.3 + 0.1 * i},
        )
    tokenize_zoo(zoo, root / "store", token_size=32)
    return root / "store"


@pytest.fixture(scope="session")
def tiny_zoo_store(tmp_path_factory: pytest.TempPathFactory, rsscn7_root: Path) -> Path:
    """``geosane zoo build`` with the packaged tiny recipe on rsscn7 (one short epoch), tokenized at 32."""
    from geosane.zoo.build import build_zoo

    root = tmp_path_factory.mktemp("ae-tiny-zoo")
    zoo = build_zoo("tiny", root / "zoo", [f"dataset={rsscn7_root}", "defaults.epochs=1", "limit_per_class=12"])
    tokenize_zoo(zoo, root / "store", token_size=32)
    return root / "store"
