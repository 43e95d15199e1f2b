"""Local paths: a ``.safetensors`` / ``.pt`` / ``.pth`` / ``.bin`` / ``.ckpt`` / ``.onnx`` file,
or a directory holding exactly one (see :mod:`geosane.zoo.formats`) plus an optional card.

A ``geosane finetune`` task model (``weights.safetensors`` whose metadata records ``arch``, ``task``
and ``classes``) brings its architecture record, so a fine-tuned classifier, segmenter or detector
can join a zoo as it is. A published foundation-model checkpoint (Prithvi, SatMAE, SSL4EO-S12,
DINOv2 in transformers' layout) is recognised by its key signature
(:mod:`geosane.zoo.schemes.geofm`); ``geofm:LAYOUT:PATH`` names the layout instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from geosane.arch.spec import ArchSpec, LoadedModel
from geosane.errors import SourceError
from geosane.zoo.formats import find_weights_in_dir, read_weights
from geosane.zoo.schemes.cards import describe_arch, read_local_card, timm_arch_from_config
from geosane.zoo.schemes.geofm import published_model, read_card_config, state_from_object

__all__ = ["resolve_file"]


def resolve_file(
    path: str, *, random_init: bool = False, in_chans: int | None = None, num_classes: int | None = None
) -> LoadedModel:
    location = Path(path)
    arch = None
    license_ = None
    task_info: dict[str, Any] = {}
    config: dict[str, Any] = {}
    info: dict[str, Any]
    if location.is_dir():
        config, license_ = read_local_card(location)
    elif location.suffix == ".safetensors":
        arch, task_info = _task_model_record(location)
    if location.exists() and arch is None and timm_arch_from_config(config) is None:
        published, obj = published_model(
            str(path), location, read_card_config(location, config) if location.is_dir() else {},
            in_chans=in_chans, license_=license_,
        )  # fmt: skip
        if published is not None:
            return published
        if obj is not None:
            weights_file = find_weights_in_dir(location) if location.is_dir() else location
            state_dict, info = state_from_object(obj, weights_file), {}
        else:
            state_dict, info = read_weights(location)
    else:
        state_dict, info = read_weights(location)
    info = {**info, **task_info}
    if location.is_dir():
        arch = describe_arch(path, config, state_dict) if state_dict else None
    return LoadedModel(
        source=str(path),
        state_dict=state_dict,
        arch=arch,
        info={"pretrained": True, "license": license_, **info},
    )


def _task_model_record(path: Path) -> tuple[ArchSpec | None, dict[str, Any]]:
    """The architecture and task a ``geosane finetune`` weights file records, if it records them.

    An unreadable file records nothing here; reading its tensors then reports it.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError):
        return None, {}
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
