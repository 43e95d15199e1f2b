"""Published geospatial foundation-model checkpoints (:mod:`geosane.arch.layouts`) as sources.

Three ways in, one loader:

- ``hf:ORG/NAME[/FILE][@REV]`` whose repo is not timm-shaped: the layout comes from the repo id
  (e.g. ``ibm-nasa-geospatial/Prithvi-EO-2.0-300M``) or else the checkpoint's key signature;
- a local ``.pt`` / ``.pth`` / ``.bin`` / ``.safetensors`` file (or a model folder) recognised by
  its key signature;
- ``geofm:LAYOUT:PATH`` names the layout explicitly (a checkpoint that does not match it is
  refused with the first missing and the first unexpected key).

Reads are weights-only (safetensors, or ``torch.load(weights_only=True)``); the training
arguments MAE and DINO pickle beside the weights (an ``argparse.Namespace``) are let through for
files recognised as one of these layouts, and for nothing else.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from geosane.arch.layouts import (
    LAYOUTS,
    CheckpointLayout,
    convert_checkpoint,
    expected_bands,
    layout,
    layout_for_file,
    layout_for_repo,
    recognise_layout,
)
from geosane.arch.spec import LoadedModel
from geosane.errors import SourceError, UnsafeCheckpointError
from geosane.zoo.formats import (
    PICKLE_SUFFIXES,
    SHARD_INDEX_SUFFIX,
    find_weights_in_dir,
    pickle_globals,
    read_pickle,
    read_weights,
)

__all__ = ["published_model", "read_card_config", "read_published", "resolve_geofm", "state_from_object"]

_TRAINING_ARGS = "argparse.Namespace"


def _is_layout_file(path: Path) -> bool:
    name = path.name.lower()
    return path.suffix.lower() in (*PICKLE_SUFFIXES, ".safetensors") or name.endswith(SHARD_INDEX_SUFFIX)


def read_published(path: Path, *, training_args: bool = False) -> Any:
    """The checkpoint object as published (nesting kept); a flat dict for safetensors.

    ``training_args``: let an ``argparse.Namespace`` through (weights-only otherwise).
    """
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return read_pickle(path, (argparse.Namespace,) if training_args else ())
    return read_weights(path)[0]


def _read_for_layouts(path: Path) -> tuple[Any, UnsafeCheckpointError | None]:
    """The object, or (when its only non-tensor global is a Namespace) the object read with that
    let through plus the refusal to raise should no layout recognise it."""
    try:
        return read_published(path), None
    except UnsafeCheckpointError as refusal:
        if pickle_globals(path) != [_TRAINING_ARGS]:
            raise
        return read_published(path, training_args=True), refusal


def _inputs(entry: CheckpointLayout, in_chans: int, config: Mapping[str, Any]) -> dict[str, Any]:
    """Bands and normalisation, in the shape ``torchgeo_inputs`` records them."""
    bands = list(entry.bands) if entry.bands else None
    note = None if bands else (entry.bands_note or "unknown")
    if bands is None and in_chans == 3:
        note = (
            f"3 channels, RGB by the look of it ({entry.bands_note or 'the checkpoint does not name them'})"
        )
    return {
        "in_chans": in_chans,
        "bands": bands,
        "bands_note": note,
        "normalization": entry.normalization(config),
    }


def published_model(
    source: str,
    path: Path,
    config: Mapping[str, Any] | None = None,
    *,
    layout_name: str | None = None,
    repo_id: str | None = None,
    in_chans: int | None = None,
    license_: str | None = None,
) -> tuple[LoadedModel | None, Any]:
    """``path`` loaded through its layout, plus the object as read (for callers to fall back on).

    The layout is ``layout_name``, else the one the Hub repo publishes, else the key signature;
    ``(None, obj)`` when none applies (``obj`` is None for files that are not pickles/safetensors).
    """
    config = dict(config or {})
    if path.is_dir():
        path = find_weights_in_dir(path)
    if not _is_layout_file(path):
        if layout_name is not None:
            raise SourceError(f"{source}: {path.name} is not a .pt/.pth/.bin/.safetensors checkpoint")
        return None, None
    obj, refusal = _read_for_layouts(path)
    entry: CheckpointLayout | None
    try:
        if layout_name is not None:
            entry = layout(layout_name)
        else:
            candidates = [
                *(layout_for_repo(repo_id, path.name) if repo_id else []),
                *layout_for_file(path.name),
            ]
            matching = [e for e in candidates if e.recognise(obj, config)]
            entry = matching[0] if matching else recognise_layout(obj, config)
    except SourceError as exc:
        raise SourceError(f"{source}: {path.name}: {exc}") from None
    if entry is None:
        if refusal is not None:
            raise refusal
        return None, obj
    try:
        conversion = convert_checkpoint(entry, obj, config)
    except SourceError as exc:
        raise SourceError(f"{source}: {path.name} does not match layout '{entry.name}': {exc}") from None
    del obj
    arch = conversion.arch
    model_chans = conversion.in_chans
    if in_chans is not None and in_chans != model_chans:
        raise SourceError(
            f"{source}: in_chans={in_chans}, but {entry.title} expects {expected_bands(entry)}",
        )
    inputs = _inputs(entry, model_chans, config)
    notes = [*conversion.notes]
    if layout_name is None:
        how = (
            f"the Hub repo {repo_id}"
            if repo_id and entry in layout_for_repo(repo_id)
            else "its key signature"
        )
        notes.insert(0, f"layout '{entry.name}' recognised by {how} (name another with geofm:LAYOUT:PATH)")
    info: dict[str, Any] = {
        "pretrained": True,
        "in_chans": model_chans,
        "num_classes": 0,
        "bands": inputs["bands"],
        "license": license_ or entry.license,
        "task": "backbone",
        "name": path.stem,
        "layout": entry.name,
        "remapped": notes,
        "dropped": conversion.dropped,
        "metadata": {
            "input": inputs,
            "layout": {"name": entry.name, "title": entry.title, "reference": entry.reference},
            "remapped": notes,
            "dropped": conversion.dropped,
        },
    }
    frames = arch.kwargs.get("num_frames")
    if arch.library == "geosane" and isinstance(frames, int):
        info["temporal_frames"] = frames
        inputs["temporal_frames"] = frames
        inputs["layout"] = "[B, T, C, H, W]"
    return LoadedModel(source=source, state_dict=conversion.state_dict, arch=arch, info=info), None


def resolve_geofm(
    spec: str, *, random_init: bool = False, in_chans: int | None = None, num_classes: int | None = None
) -> LoadedModel:
    """``geofm:LAYOUT:PATH``: the checkpoint at PATH read by the named layout."""
    name, sep, path = spec.partition(":")
    if not sep or not name or not path:
        raise SourceError(
            f"geofm sources look like geofm:LAYOUT:PATH (layouts: {', '.join(LAYOUTS)}), got 'geofm:{spec}'"
        )
    layout(name)  # an unknown or refused layout fails before the file is read
    location = Path(path).expanduser()
    if not location.exists():
        raise SourceError(f"geofm:{spec}: model file not found: {location}")
    model, _ = published_model(
        f"geofm:{spec}", location, _folder_config(location), layout_name=name, in_chans=in_chans
    )
    assert model is not None  # a named layout either loads or raises
    return model


def _folder_config(location: Path) -> dict[str, Any]:
    if not location.is_dir():
        return {}
    from geosane.zoo.schemes.cards import read_local_card

    return read_card_config(location, read_local_card(location)[0])


def read_card_config(directory: Path, config: Mapping[str, Any]) -> dict[str, Any]:
    """``config.json`` plus ``preprocessor_config.json`` (as ``preprocessor``) of a model folder."""
    import json

    out = dict(config)
    pre = directory / "preprocessor_config.json"
    if pre.is_file():
        try:
            loaded = json.loads(pre.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            loaded = None
        if isinstance(loaded, dict):
            out["preprocessor"] = loaded
    return out


def state_from_object(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensors a non-layout checkpoint object holds, found as :func:`read_weights` finds them."""
    from geosane.zoo.formats import tensors_from_object

    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj)
    return tensors_from_object(obj, path)
