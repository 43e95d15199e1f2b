"""A zoo directory: safetensors weights plus one JSON manifest describing every model.

Layout::

    ZOO/manifest.json            {"format": "geosane-zoo", "version": 1, "models": [row, ...]}
    ZOO/models/<id>.safetensors

Rows are :class:`ZooEntry`. Models are deduplicated by the SHA-256 of their tensors, so adding the
same weights twice (from any file format) is a no-op. The manifest is rewritten atomically after
each addition, and the weights file is written before the row that points to it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from geosane.errors import GeosaneError, SourceError
from geosane.io import read_json, save_safetensors, sha256_tensors, write_json
from geosane.zoo.sources import ArchSpec, LoadedModel, load_weights_file

__all__ = ["MANIFEST_FORMAT", "Zoo", "ZooEntry"]

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
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ZooEntry:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def arch_spec(self) -> ArchSpec | None:
        return ArchSpec.from_dict(self.arch) if self.arch else None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.").lower() or "model"


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
            write_json(
                path / "manifest.json", {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "models": []}
            )
        return cls(path)

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
        return next((e for e in self.entries if e.sha256 == sha256), None)

    def weights_path(self, entry: ZooEntry) -> Path:
        return self.path / entry.file

    def load_state_dict(self, model_id: str) -> dict[str, torch.Tensor]:
        """The weights of ``model_id`` (the manifest row must point to an existing file)."""
        entry = self.get(model_id)
        path = self.weights_path(entry)
        if not path.is_file():
            raise SourceError(
                f"zoo {self.path}: manifest row '{model_id}' points to missing file {entry.file}"
            )
        return load_weights_file(path)

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
        **fields_: Any,
    ) -> tuple[ZooEntry, bool]:
        """Add ``model``; returns ``(entry, added)`` where ``added`` is False for a duplicate."""
        if not model.state_dict:
            raise SourceError(f"{model.source}: the state dict is empty; nothing to add")
        sha = sha256_tensors(model.state_dict)
        existing = self.find_sha(sha)
        if existing is not None:
            return existing, False
        name = model_id or (model.arch.name if model.arch else Path(model.source).stem)
        new_id = self._unique_id(name) if model_id is None else _slug(model_id)
        if new_id in self.ids:
            raise GeosaneError(f"zoo {self.path} already has a model with id '{new_id}'")
        info = model.info
        entry = ZooEntry(
            id=new_id,
            source=model.source,
            file=f"models/{new_id}.safetensors",
            sha256=sha,
            num_params=model.num_params,
            dtypes=sorted({str(t.dtype).removeprefix("torch.") for t in model.state_dict.values()}),
            arch=model.arch.to_dict() if model.arch else None,
            family=family,
            in_chans=fields_.pop("in_chans", info.get("in_chans")),
            modality=fields_.pop("modality", info.get("modality")),
            task=fields_.pop("task", info.get("task")),
            num_classes=fields_.pop("num_classes", info.get("num_classes")),
            license=fields_.pop("license", info.get("license")),
            metadata=dict(metadata or {}),
            **fields_,
        )
        save_safetensors(model.state_dict, self.weights_path(entry), metadata={"source": model.source})
        self.entries.append(entry)
        self.save()
        return entry, True

    def save(self) -> None:
        """Atomically rewrite the manifest."""
        rows = [asdict(e) for e in self.entries]
        write_json(
            self.path / "manifest.json",
            {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "models": rows},
        )
