"""Local paths: a ``.safetensors`` / ``.pt`` / ``.pth`` / ``.bin`` / ``.ckpt`` / ``.onnx`` file,
or a directory holding exactly one (see :mod:`geosane.zoo.formats`) plus an optional card.

A ``geosane finetune`` task model (``weights.safetensors`` whose metadata records ``arch``, ``task``
and ``classes``) brings its architecture record, so a fine-tuned classifier, segmenter or detector
can join a zoo as it is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from geosane.arch.spec import ArchSpec, LoadedModel
from geosane.errors import SourceError
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
    elif location.suffix == ".safetensors":
        arch, task_info = _task_model_record(location)
        info = {**info, **task_info}
    return LoadedModel(
        source=str(path),
        state_dict=state_dict,
        arch=arch,
        info={"pretrained": True, "license": license_, **info},
    )


def _task_model_record(path: Path) -> tuple[ArchSpec | None, dict[str, Any]]:
    """The architecture and task a ``geosane finetune`` weights file records, if it records them."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "arch" not in meta or "task" not in meta:
        return None, {}
    try:
        arch = ArchSpec.from_dict(json.loads(meta["arch"]))
        classes = json.loads(meta.get("classes", "[]"))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise SourceError(f"{path}: unreadable architecture record in its metadata ({exc})") from None
    info: dict[str, Any] = {"task": meta["task"], "classes": classes, "num_classes": len(classes)}
    if "in_chans" in meta:
        info["in_chans"] = int(meta["in_chans"])
    return arch, info
