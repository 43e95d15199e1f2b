"""Local paths: a ``.safetensors`` / ``.pt`` / ``.pth`` / ``.bin`` / ``.ckpt`` / ``.onnx`` file,
or a directory holding exactly one (see :mod:`geosane.zoo.formats`) plus an optional card."""

from __future__ import annotations

from pathlib import Path

from geosane.arch.spec import LoadedModel
from geosane.zoo.formats import read_weights
from geosane.zoo.schemes.cards import describe_arch, read_local_card

__all__ = ["resolve_file"]


def resolve_file(
    path: str, *, random_init: bool = False, in_chans: int | None = None, num_classes: int | None = None
) -> LoadedModel:
    location = Path(path)
    state_dict, info = read_weights(location)
    arch = None
    license_ = None
    if location.is_dir():
        config, license_ = read_local_card(location)
        arch = describe_arch(path, config, state_dict) if state_dict else None
    return LoadedModel(
        source=str(path),
        state_dict=state_dict,
        arch=arch,
        info={"pretrained": True, "license": license_, **info},
    )
