"""geosane.arch: the one meta-device build, and the names other stages re-export from it."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import geosane.analysis.models
import geosane.arch
import geosane.downstream.inits
import geosane.generation
import geosane.generation.stem
import geosane.zoo
import geosane.zoo.libraries
import geosane.zoo.sources
from geosane.arch import ARCH_LIBRARIES, ArchLibrary, ArchSpec, empty_architecture
from geosane.errors import SourceError
from geosane.tokens.store import _meta_module
from geosane.zoo import load_zoo_source, split_zoo_source


class _NeedsRealTensors(nn.Module):
    """A constructor that reads a value during init, as some timm models do (meta tensors refuse)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(2, 3))
        self.scale = float(self.weight.sum().item())


@pytest.fixture
def fake_library(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A ``fake`` architecture library; the list records the device of every build."""
    builds: list[str] = []

    def build(name: str, kwargs: dict[str, Any]) -> nn.Module:
        builds.append(str(torch.empty(0).device))
        if name == "bad":
            raise SourceError("cannot instantiate fake architecture 'bad'")
        return _NeedsRealTensors() if name == "needs-real" else nn.Linear(3, 2)

    def check(name: str) -> None:
        return None

    library = ArchLibrary("fake", build, check, lambda n, k: "fake", "in_chans", "num_classes", (), "unknown")
    monkeypatch.setitem(ARCH_LIBRARIES, "fake", library)
    return builds


def test_empty_architecture_is_on_meta(fake_library: list[str]) -> None:
    module = empty_architecture(ArchSpec("fake", "linear"))
    assert {p.device.type for p in module.parameters()} == {"meta"}
    assert fake_library == ["meta"]


def test_meta_failure_falls_back_to_cpu_or_raises(fake_library: list[str]) -> None:
    module = empty_architecture(ArchSpec("fake", "needs-real"))
    assert {p.device.type for p in module.parameters()} == {"cpu"}
    assert fake_library == ["meta", "cpu"]
    with pytest.raises(Exception, match="meta"):
        empty_architecture(ArchSpec("fake", "needs-real"), cpu_fallback=False)
    assert fake_library == ["meta", "cpu", "meta"]  # no CPU build without the fallback


def test_source_errors_are_not_retried_on_cpu(fake_library: list[str]) -> None:
    with pytest.raises(SourceError, match="cannot instantiate fake architecture 'bad'"):
        empty_architecture(ArchSpec("fake", "bad"))
    assert fake_library == ["meta"]


def test_token_store_module_is_meta_or_nothing(fake_library: list[str]) -> None:
    """The store only refines layer types with a module; it never pays for a real build."""
    assert _meta_module(None) is None
    assert _meta_module({"library": "fake", "name": "needs-real"}) is None
    assert _meta_module({"library": "nope", "name": "x"}) is None
    assert _meta_module({"name": "no library"}) is None
    assert fake_library == ["meta"]
    module = _meta_module({"library": "fake", "name": "linear"})
    assert module is not None and {p.device.type for p in module.parameters()} == {"meta"}


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("zoo:runs/zoo#resnet18-s0", ("runs/zoo", "resnet18-s0")),
        ("zoo:/data/my#zoo#m1", ("/data/my#zoo", "m1")),  # the id follows the last '#'
        ("zoo:runs/zoo", None),
        ("zoo:#m1", None),
        ("zoo:runs/zoo#", None),
        ("runs/zoo#m1", None),
        ("timm:resnet18", None),
    ],
)
def test_split_zoo_source(source: str, expected: tuple[str, str] | None) -> None:
    assert split_zoo_source(source) == expected


def test_malformed_zoo_source_is_refused_everywhere() -> None:
    message = r"zoo source must look like zoo:ZOO_DIR#MODEL_ID, got 'zoo:runs/zoo'"
    with pytest.raises(SourceError, match=message):
        load_zoo_source("zoo:runs/zoo")
    with pytest.raises(SourceError, match=message):
        geosane.zoo.resolve("zoo:runs/zoo")
    with pytest.raises(SourceError, match=message):
        geosane.downstream.inits.load_source("zoo:runs/zoo")


def test_old_import_paths_re_export_the_same_objects() -> None:
    for name in ("ArchSpec", "LoadedModel", "build_architecture"):
        assert getattr(geosane.zoo, name) is getattr(geosane.arch, name)
    for name in ("ArchSpec", "LoadedModel", "build_architecture", "check_fits", "empty_architecture",
                 "order_like_architecture", "parse_arch", "arch_family"):  # fmt: skip
        assert getattr(geosane.zoo.sources, name) is getattr(geosane.arch, name)
    for name in ("ARCH_LIBRARIES", "ArchLibrary", "arch_library"):
        assert getattr(geosane.zoo.libraries, name) is getattr(geosane.arch, name)
    for name in ("adapt_stem", "stem_weight_names"):
        assert getattr(geosane.generation, name) is getattr(geosane.arch, name)
        assert getattr(geosane.generation.stem, name) is getattr(geosane.arch, name)
    assert geosane.downstream.inits.same_architecture is geosane.arch.same_architecture
    assert geosane.analysis.models.load_zoo_source is load_zoo_source


def test_key_mismatch_names_the_first_missing_unexpected_and_reshaped_key() -> None:
    from geosane.arch import key_mismatch

    expected = {"a": torch.zeros(2), "b": torch.zeros(3), "c": torch.zeros(1)}
    assert key_mismatch(expected, dict(expected)) is None
    given = {"b": torch.zeros(4), "x": torch.zeros(1), "y": torch.zeros(1)}
    assert key_mismatch(expected, given) == (
        "missing 'a' (2 missing), unexpected 'x' (2 unexpected), 'b' has shape (4,), the architecture expects (3,)"
    )
    assert key_mismatch(expected, {"b": torch.zeros(3)}, tolerated={"a", "c"}) is None
