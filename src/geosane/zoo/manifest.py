"""A zoo directory: safetensors weights plus one JSON manifest describing every model.

Layout::

    ZOO/manifest.json            {"format": "geosane-zoo", "version": 1, "models": [row, ...]}
    ZOO/models/<id>.safetensors

Rows are :class:`ZooEntry`. ``sha256`` is :func:`geosane.io.sha256_tensors` of the state dict as
stored (key order included); ``content_sha256`` is the same digest over the tensors sorted by name,
so adding the same weights twice, from any file format and in any key order, is a no-op. The
weights file keeps the state dict's key order in its metadata (safetensors alone does not). The
manifest is rewritten atomically after each addition, after the weights file it points to.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from geosane.arch.spec import ArchSpec, LoadedModel, arch_family
from geosane.errors import GeosaneError, SourceError
from geosane.io import (
    contained_path,
    locked,
    no_verify_env,
    read_json,
    save_safetensors,
    sha256_tensors,
    write_json,
)
from geosane.zoo.formats import KEY_ORDER_METADATA, first_nonfinite, load_weights_file

__all__ = ["MANIFEST_FORMAT", "Zoo", "ZooEntry", "check_zoo_target", "content_sha256", "verify_zoo"]

MANIFEST_FORMAT = "geosane-zoo"
MANIFEST_VERSION = 1


@dataclass
class ZooEntry:
    """One manifest row."""

    id: str
    source: str
    file: str
    sha256: str
    num_params: int
    dtypes: list[str]
    arch: dict[str, Any] | None = None
    family: str | None = None
    in_chans: int | None = None
    bands: list[str] | None = None
    modality: str | None = None
    task: str | None = None
    num_classes: int | None = None
    classes: list[str] | None = None
    license: str | None = None
    content_sha256: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ZooEntry:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def arch_spec(self) -> ArchSpec | None:
        return ArchSpec.from_dict(self.arch) if self.arch else None


def content_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the tensors sorted by name: equal for equal weights in any key order."""
    return sha256_tensors(dict(sorted(state_dict.items())))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.").lower() or "model"


def check_zoo_target(path: str | Path) -> None:
    """Raise unless ``path`` is an existing zoo or a place where one can be created."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise GeosaneError(f"zoo path {path} exists and is not a directory")
    if (path / "manifest.json").exists():
        Zoo(path)


class Zoo:
    """A zoo directory. ``Zoo(path)`` opens an existing one; ``Zoo.create(path)`` makes it if needed."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        manifest = self.path / "manifest.json"
        if not manifest.is_file():
            raise GeosaneError(
                f"{self.path} is not a zoo (no manifest.json); create one with `geosane zoo add`"
            )
        data = read_json(manifest)
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            raise GeosaneError(f"{manifest} is not a geosane zoo manifest")
        self.entries: list[ZooEntry] = [ZooEntry.from_dict(row) for row in data.get("models", [])]

    @classmethod
    def create(cls, path: str | Path) -> Zoo:
        """Open the zoo at ``path``, creating an empty one if the directory has no manifest."""
        path = Path(path).expanduser()
        if not (path / "manifest.json").exists():
            if path.exists() and not path.is_dir():
                raise GeosaneError(f"zoo path {path} exists and is not a directory")
            with locked(path / "manifest.json"):  # another process may be creating it right now
                if not (path / "manifest.json").exists():
                    write_json(
                        path / "manifest.json",
                        {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "models": []},
                    )
        return cls(path)

    def reload(self) -> None:
        """Re-read the manifest from disk (other processes may have added models)."""
        self.entries = Zoo(self.path).entries

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[ZooEntry]:
        return iter(self.entries)

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self.entries]

    def get(self, model_id: str) -> ZooEntry:
        for entry in self.entries:
            if entry.id == model_id:
                return entry
        raise GeosaneError(f"no model '{model_id}' in zoo {self.path} (has {len(self.entries)} models)")

    def find_sha(self, sha256: str) -> ZooEntry | None:
        """The entry whose ``sha256`` or ``content_sha256`` equals ``sha256``."""
        return next((e for e in self.entries if sha256 in (e.sha256, e.content_sha256)), None)

    def weights_path(self, entry: ZooEntry) -> Path:
        return contained_path(self.path, entry.file, f"zoo {self.path}: manifest row '{entry.id}'")

    def load_state_dict(self, model_id: str) -> dict[str, torch.Tensor]:
        """The weights of ``model_id`` (the manifest row must point to an existing file)."""
        entry = self.get(model_id)
        path = self.weights_path(entry)
        if not path.is_file():
            raise SourceError(
                f"zoo {self.path}: manifest row '{model_id}' points to missing file {entry.file}"
            )
        state_dict = load_weights_file(path)
        if not no_verify_env():  # GEOSANE_NO_VERIFY=1 skips the check for trusted, huge zoos
            found = sha256_tensors(state_dict)
            if found != entry.sha256:
                raise SourceError(
                    f"zoo {self.path}: weights of '{model_id}' ({entry.file}) do not match the manifest's "
                    f"SHA-256 (recorded {entry.sha256[:12]}…, found {found[:12]}…): the file is corrupted "
                    "or was changed"
                )
        return state_dict

    def load(self, model_id: str) -> LoadedModel:
        """``model_id`` as a :class:`LoadedModel` (with its architecture when recorded)."""
        entry = self.get(model_id)
        info = {
            "pretrained": True,
            "in_chans": entry.in_chans,
            "num_classes": entry.num_classes,
            "license": entry.license,
            "task": entry.task,
            "modality": entry.modality,
            "zoo_id": entry.id,
            "name": entry.id,
            "family": entry.family,
            "bands": entry.bands,
            "classes": entry.classes,
            "metadata": dict(entry.metadata),
            **entry.metadata,
        }
        return LoadedModel(
            source=f"zoo:{self.path}#{entry.id}",
            state_dict=self.load_state_dict(model_id),
            arch=entry.arch_spec,
            info=info,
        )

    def _unique_id(self, base: str) -> str:
        base = _slug(base)
        taken = set(self.ids)
        if base not in taken:
            return base
        i = 2
        while f"{base}-{i}" in taken:
            i += 1
        return f"{base}-{i}"

    def add(
        self,
        model: LoadedModel,
        model_id: str | None = None,
        family: str | None = None,
        metadata: dict[str, Any] | None = None,
        allow_nonfinite: bool = False,
        **fields_: Any,
    ) -> tuple[ZooEntry, bool]:
        """Add ``model``; returns ``(entry, added)`` where ``added`` is False for a duplicate.

        ``family`` defaults to the source's (zoo entries) or the timm module of the architecture;
        ``metadata`` is merged over the source's (zoo entries). Keyword ``fields_`` set manifest
        columns (``in_chans``, ``bands``, ``modality``, ``task``, ``num_classes``, ``classes``,
        ``license``); unset ones come from ``model.info``.
        """
        if not model.state_dict:
            raise SourceError(f"{model.source}: the state dict is empty; nothing to add")
        bad = first_nonfinite(model.state_dict)
        if bad is not None and not allow_nonfinite:
            raise SourceError(f"{model.source}: tensor '{bad}' holds NaN/Inf values; not added")
        columns = ("in_chans", "bands", "modality", "task", "num_classes", "classes", "license")
        unknown = set(fields_) - set(columns)
        if unknown:
            raise TypeError(f"unknown manifest fields {sorted(unknown)} (settable: {', '.join(columns)})")
        content = content_sha256(model.state_dict)
        self.reload()
        existing = self.find_sha(content)
        if existing is not None:
            return existing, False
        # the weights are written first, under a temporary name, so the lock is held only for the
        # manifest's read-modify-write (the id, dedupe and the rename are decided under it)
        incoming = self.path / "models" / f".incoming-{uuid.uuid4().hex}.safetensors"
        save_safetensors(
            model.state_dict,
            incoming,
            metadata={"source": model.source, KEY_ORDER_METADATA: json.dumps(list(model.state_dict))},
        )
        try:
            with locked(self.path / "manifest.json"):
                self.reload()
                existing = self.find_sha(content)
                if existing is not None:
                    return existing, False
                entry = self._entry(model, model_id, family, metadata, content, columns, fields_)
                os.replace(incoming, self.weights_path(entry))
                self.entries.append(entry)
                self.save()
        finally:
            incoming.unlink(missing_ok=True)
        return entry, True

    def _entry(
        self,
        model: LoadedModel,
        model_id: str | None,
        family: str | None,
        metadata: dict[str, Any] | None,
        content: str,
        columns: tuple[str, ...],
        fields_: dict[str, Any],
    ) -> ZooEntry:
        """The manifest row of a new model (its id unique among the current rows)."""
        name = model_id or model.info.get("name") or (model.arch.name if model.arch else None)
        name = name or Path(model.source.rstrip("/")).stem
        new_id = self._unique_id(name) if model_id is None else _slug(model_id)
        if new_id in self.ids:
            raise GeosaneError(f"zoo {self.path} already has a model with id '{new_id}'")
        values = {c: fields_[c] if fields_.get(c) is not None else model.info.get(c) for c in columns}
        return ZooEntry(
            id=new_id,
            source=model.source,
            file=f"models/{new_id}.safetensors",
            sha256=sha256_tensors(model.state_dict),
            content_sha256=content,
            num_params=model.num_params,
            dtypes=sorted({str(t.dtype).removeprefix("torch.") for t in model.state_dict.values()}),
            arch=model.arch.to_dict() if model.arch else None,
            family=family or model.info.get("family") or arch_family(model.arch),
            metadata={**(model.info.get("metadata") or {}), **(metadata or {})},
            **values,
        )

    def save(self) -> None:
        """Atomically rewrite the manifest."""
        rows = [asdict(e) for e in self.entries]
        write_json(
            self.path / "manifest.json",
            {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "models": rows},
        )


def verify_zoo(path: str | Path) -> list[tuple[str, str | None]]:
    """``(model id, problem or None)`` for every manifest row; reads every file, changes nothing.

    A row's file must stay inside the zoo, exist, load and match the recorded SHA-256 of its tensors. Nothing is repaired: a problem is for the user to look at.
    """
    zoo = Zoo(path)
    results: list[tuple[str, str | None]] = []
    for entry in zoo:
        try:
            weights = zoo.weights_path(entry)
            if not weights.is_file():
                raise GeosaneError(f"file {entry.file} is missing")
            state_dict = load_weights_file(weights)
            found = sha256_tensors(state_dict)
            if found != entry.sha256:
                raise GeosaneError(f"SHA-256 {found[:12]}… is not the recorded {entry.sha256[:12]}…")
        except GeosaneError as exc:
            results.append((entry.id, str(exc)))
        else:
            results.append((entry.id, None))
    return results
