"""The token store: one safetensors file per model plus ``index.json``, read lazily.

Layout (``docs/tokens.md``)::

    STORE/index.json                 {"format": "geosane-token-store", "version": 1,
                                      "token_size": 230, "mode": "dense", ..., "models": [record, ...]}
    STORE/tokens/<id>.safetensors    tokens f32 [N, d_t], mask bool [N, d_t], positions i64 [N, 3],
                                     layer_type i64 [N], carried.<name> tensors; metadata: layout JSON

:func:`tokenize_zoo` builds (or resumes) a store from a zoo, model by model; :class:`TokenStore`
opens one and reads whole models or windows of tokens through memory-mapped slices, so a store
larger than RAM works.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from geosane.console import console, make_progress
from geosane.errors import GeosaneError, cli_flags
from geosane.io import (
    contained_path,
    locked,
    no_verify_env,
    read_json,
    save_safetensors,
    sha256_file,
    verify_file_sha256,
    write_json,
)
from geosane.tokens.settings import DEFAULT_BUFFER_PATTERNS, DEFAULT_TOKEN_SIZE, TokenizerSettings
from geosane.tokens.tokenizer import TensorLayout, TokenizedModel, TokenizerError, tokenize

__all__ = [
    "FILE_FORMAT",
    "STORE_FORMAT",
    "StoreRecord",
    "TokenStore",
    "load_tokenized",
    "save_tokenized",
    "tokenize_zoo",
    "verify_store",
    "write_store_index",
]

STORE_FORMAT = "geosane-token-store"
STORE_VERSION = 1
FILE_FORMAT = "geosane-tokens"
CARRIED_PREFIX = "carried."
TOKEN_KEYS = ("tokens", "mask", "positions", "layer_type")
_MAX_OPEN_FILES = 64


@dataclass
class StoreRecord:
    """One model of a store (a row of ``index.json``)."""

    id: str
    file: str
    num_tokens: int
    sha256: str
    zoo_sha256: str | None = None
    num_layers: int | None = None
    num_params: int | None = None
    family: str | None = None
    arch: dict[str, Any] | None = None
    task: str | None = None
    in_chans: int | None = None
    num_classes: int | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    nonfinite: bool = False  # tokenized with allow_nonfinite and holding NaN/Inf on purpose

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StoreRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# ---------------------------------------------------------------------------------------------
# one model <-> one safetensors file


def save_tokenized(tm: TokenizedModel, path: str | os.PathLike[str], model_id: str | None = None) -> Path:
    """Atomically write ``tm`` as one safetensors file (layout JSON in the metadata)."""
    tensors: dict[str, torch.Tensor] = {
        "tokens": tm.tokens,
        "mask": tm.mask,
        "positions": tm.positions,
        "layer_type": tm.layer_type,
    }
    seen: set[int] = set()
    for name, tensor in tm.carried.items():
        # safetensors refuses tensors sharing memory: copy carried views of one storage
        ptr = tensor.untyped_storage().data_ptr() if tensor.numel() else -1
        tensors[CARRIED_PREFIX + name] = tensor.clone() if ptr in seen else tensor
        seen.add(ptr)
    # a single metadata key: safetensors writes several in a random order, and the files should be
    # byte-for-byte reproducible (the index records their SHA-256)
    layout = tm.layout_json(format=FILE_FORMAT, version=STORE_VERSION, model_id=model_id)
    return save_safetensors(tensors, path, metadata={"layout": layout})


def _parse_layout(metadata: dict[str, str] | None, path: Path) -> tuple[dict[str, TensorLayout], int, str]:
    try:
        data = json.loads((metadata or {})["layout"])
        if data["format"] != FILE_FORMAT:
            raise ValueError(data["format"])
    except (KeyError, TypeError, ValueError):
        raise GeosaneError(f"{path} is not a geosane token file (no token layout in its metadata)") from None
    layout = {row["name"]: TensorLayout.from_dict(row) for row in data["tensors"]}
    return layout, int(data["token_size"]), str(data["mode"])


def load_tokenized(path: str | os.PathLike[str]) -> TokenizedModel:
    """Read a whole :class:`TokenizedModel` written by :func:`save_tokenized`."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            layout, token_size, mode = _parse_layout(f.metadata(), path)
            parts = {key: f.get_tensor(key) for key in TOKEN_KEYS}
            carried = {
                name: f.get_tensor(CARRIED_PREFIX + name) for name, e in layout.items() if e.kind == "carried"
            }
    except (SafetensorError, OSError) as exc:
        raise GeosaneError(f"cannot read token file {path}: {exc}") from None
    return TokenizedModel(
        parts["tokens"],
        parts["mask"],
        parts["positions"],
        parts["layer_type"],
        layout,
        carried,
        token_size,
        mode,
    )


# ---------------------------------------------------------------------------------------------
# the store


class TokenStore:
    """An existing token store directory; reads are lazy and memory-mapped.

    Models are addressed by index (``0 .. len-1``, the order of ``index.json``) or by id.
    """

    def __init__(self, path: str | os.PathLike[str], check_hashes: bool | None = None) -> None:
        self.path = Path(path).expanduser()
        # every file read is checked against the index's SHA-256 once per process; opt out for a
        # trusted huge store with check_hashes=False or GEOSANE_NO_VERIFY=1
        self.check_hashes = not no_verify_env() if check_hashes is None else check_hashes
        index = self.path / "index.json"
        if not index.is_file():
            raise GeosaneError(
                f"{self.path} is not a token store (no index.json); build one with `geosane tokenize`"
            )
        try:
            data = read_json(index)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise GeosaneError(f"{index} is not valid JSON ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != STORE_FORMAT:
            raise GeosaneError(f"{index} is not a geosane token store index (format != {STORE_FORMAT})")
        try:
            self.tokenizer = TokenizerSettings.from_dict(data)
        except TokenizerError as exc:
            raise GeosaneError(f"{index}: invalid tokenizer settings ({exc})") from None
        self.token_size = self.tokenizer.token_size
        self.mode = self.tokenizer.mode
        self.records = [StoreRecord.from_dict(row) for row in data.get("models", [])]
        self._by_id = {r.id: i for i, r in enumerate(self.records)}
        self._handles: OrderedDict[tuple[int, int], Any] = OrderedDict()

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[StoreRecord]:
        return iter(self.records)

    def __repr__(self) -> str:
        return f"TokenStore({str(self.path)!r}, models={len(self)}, tokens={self.total_tokens}, mode={self.mode})"

    def __getstate__(self) -> dict[str, Any]:  # open file handles do not travel to DataLoader workers
        return {**self.__dict__, "_handles": OrderedDict()}

    @property
    def settings(self) -> dict[str, Any]:
        """The tokenizer settings as their JSON record (:attr:`tokenizer` is the typed value)."""
        return self.tokenizer.to_dict()

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self.records]

    @property
    def num_tokens(self) -> list[int]:
        return [r.num_tokens for r in self.records]

    @property
    def total_tokens(self) -> int:
        return sum(r.num_tokens for r in self.records)

    def index_of(self, model: int | str) -> int:
        """The index of ``model`` (an index or an id)."""
        if isinstance(model, str):
            if model not in self._by_id:
                raise GeosaneError(f"no model '{model}' in token store {self.path} ({len(self)} models)")
            return self._by_id[model]
        if not -len(self) <= model < len(self):
            raise GeosaneError(f"model index {model} out of range for a store of {len(self)} models")
        return model % len(self)

    def record(self, model: int | str) -> StoreRecord:
        return self.records[self.index_of(model)]

    def file(self, model: int | str) -> Path:
        return contained_path(self.path, self.record(model).file, f"token store {self.path}")

    def _checked_file(self, index: int) -> Path:
        """The model's file, after checking it exists and matches the index's SHA-256 (once per process)."""
        record = self.records[index]
        path = self.file(index)
        if not path.is_file():
            raise GeosaneError(f"token store {self.path}: file {record.file} of '{record.id}' is missing")
        if self.check_hashes:
            verify_file_sha256(path, record.sha256, f"token store {self.path}: '{record.id}'")
        return path

    def load(self, model: int | str) -> TokenizedModel:
        """The whole tokenized model (``detokenize`` it to get its state dict back).

        Its tensors are memory-mapped copy-on-write: pages are read when touched, and edits stay
        in this copy (the file is never changed).
        """
        index = self.index_of(model)
        tm = load_tokenized(self._checked_file(index))
        if not self.records[index].nonfinite and not bool(torch.isfinite(tm.tokens).all()):
            raise GeosaneError(
                f"token store {self.path}: the tokens of '{self.records[index].id}' ({self.records[index].file}) "
                "hold NaN/Inf values; the file is corrupted"
            )
        if tm.tokens.shape[0] != self.records[index].num_tokens:
            raise GeosaneError(
                f"token store {self.path}: '{self.records[index].id}' has {tm.tokens.shape[0]} tokens, "
                f"the index says {self.records[index].num_tokens}"
            )
        return tm

    def verify(self, model: int | str) -> bool:
        """Whether the model's file exists and matches the SHA-256 recorded in the index."""
        path = self.file(model)
        return path.is_file() and sha256_file(path) == self.record(model).sha256

    def _handle(self, index: int) -> Any:
        from safetensors import safe_open

        key = (os.getpid(), index)
        handle = self._handles.get(key)
        if handle is None:
            path = self._checked_file(index)
            handle = safe_open(str(path), framework="pt")
            rows = handle.get_slice("tokens").get_shape()[0]
            if rows != self.records[index].num_tokens:
                raise GeosaneError(
                    f"token store {self.path}: '{self.records[index].id}' has {rows} tokens, "
                    f"the index says {self.records[index].num_tokens}"
                )
            self._handles[key] = handle
            while len(self._handles) > _MAX_OPEN_FILES:
                self._handles.popitem(last=False)
        else:
            self._handles.move_to_end(key)
        return handle

    def read_window(self, model: int | str, start: int, length: int) -> dict[str, torch.Tensor]:
        """Tokens ``[start, start + length)`` of one model as a window item (``docs/architecture.md``).

        Only those rows are read from disk. Positions outside the model (``start`` may be negative
        or run past the end) are padding: zeros, mask False, ``valid`` False.
        """
        index = self.index_of(model)
        num_tokens = self.records[index].num_tokens
        lo, hi = max(start, 0), min(start + length, num_tokens)
        handle = self._handle(index)
        parts: dict[str, Any] = {key: handle.get_slice(key)[lo:hi] if hi > lo else None for key in TOKEN_KEYS}
        valid = torch.zeros(length, dtype=torch.bool)
        if hi > lo:
            valid[lo - start : hi - start] = True
        if lo == start and hi == start + length:
            # slices are views of the shared memory map: copy so that in-place edits of an item
            # (e.g. noise augmentation) cannot leak into later reads
            item = {key: parts[key].clone() for key in TOKEN_KEYS}
        else:
            shapes = {
                "tokens": ((length, self.token_size), torch.float32),
                "mask": ((length, self.token_size), torch.bool),
                "positions": ((length, 3), torch.long),
                "layer_type": ((length,), torch.long),
            }
            item = {}
            for key, (shape, dtype) in shapes.items():
                padded = torch.zeros(shape, dtype=dtype)
                if parts[key] is not None:
                    padded[lo - start : hi - start] = parts[key]
                item[key] = padded
        if not self.records[index].nonfinite and not bool(torch.isfinite(item["tokens"]).all()):
            raise GeosaneError(
                f"token store {self.path}: tokens {lo}..{hi} of '{self.records[index].id}' "
                f"({self.records[index].file}) hold NaN/Inf values; the file is corrupted"
            )
        item["valid"] = valid
        item["model_index"] = torch.tensor(index, dtype=torch.long)
        item["start"] = torch.tensor(start, dtype=torch.long)
        return item


# ---------------------------------------------------------------------------------------------
# building a store from a zoo


def verify_store(path: str | os.PathLike[str]) -> list[tuple[str, str | None]]:
    """``(model id, problem or None)`` for every record of a token store; changes nothing.

    A record's file must stay inside the store, exist, match its recorded SHA-256, load, hold
    ``num_tokens`` tokens and only finite token values. Nothing is repaired.
    """
    store = TokenStore(path, check_hashes=False)
    results: list[tuple[str, str | None]] = []
    for i, record in enumerate(store):
        try:
            file = store.file(i)
            if not file.is_file():
                raise GeosaneError(f"file {record.file} is missing")
            found = sha256_file(file)
            if found != record.sha256:
                raise GeosaneError(f"SHA-256 {found[:12]}… is not the recorded {record.sha256[:12]}…")
            store.load(i)  # token count and finite values
        except GeosaneError as exc:
            results.append((record.id, str(exc)))
        else:
            results.append((record.id, None))
    return results


def _meta_module(arch: dict[str, Any] | None) -> torch.nn.Module | None:
    """The architecture on the meta device (no memory, no init) for module-aware layer types."""
    if not arch:
        return None
    from geosane.arch.meta import empty_architecture
    from geosane.arch.spec import ArchSpec

    try:
        return empty_architecture(ArchSpec.from_dict(arch), cpu_fallback=False)
    except Exception:  # optional refinement only: names and shapes decide when the build fails
        return None


def _open_for_update(out: Path, settings: TokenizerSettings) -> list[StoreRecord]:
    """Existing records of ``out`` (or none), refusing incompatible directories."""
    if out.exists() and not out.is_dir():
        raise GeosaneError(f"token store path {out} exists and is not a directory")
    if (out / "index.json").is_file():
        store = TokenStore(out)
        if store.tokenizer != settings:
            raise GeosaneError(
                f"token store {out} was built with other tokenizer settings: "
                f"{', '.join(store.tokenizer.differences(settings))}; "
                "use a new out directory or the same settings",
                flags={"a new out directory": "a new --out directory"},
            )
        return store.records
    _refuse_foreign(out)
    write_store_index(out, settings, [])  # other tokenize runs into this directory now see a store
    return []


def _refuse_foreign(out: Path) -> None:
    """Refuse a directory that holds files but no token store (a user's folder)."""
    if out.exists() and not out.is_dir():
        raise GeosaneError(f"token store path {out} exists and is not a directory")
    if (out / "index.json").is_file() or not out.is_dir():
        return
    if any(p.name != ".index.json.lock" for p in out.iterdir()):
        raise GeosaneError(
            f"{out} is not empty and is not a token store (no index.json); choose a new out directory",
            flags={"a new out directory": "a new --out"},
        )


def write_store_index(
    out: str | os.PathLike[str], settings: TokenizerSettings, records: Sequence[StoreRecord]
) -> Path:
    """Atomically write ``out/index.json`` for token files already in ``out``: the one writer of the
    index layout (``{"format", "version", <settings>, "models": [record, ...]}``)."""
    return write_json(
        Path(out) / "index.json",
        {"format": STORE_FORMAT, "version": STORE_VERSION, **settings.to_dict(), "models": [asdict(r) for r in records]},
    )


def tokenize_zoo(
    zoo: Any,
    out: str | os.PathLike[str],
    token_size: int = DEFAULT_TOKEN_SIZE,
    mode: str = "dense",
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    buffers: Sequence[str] = DEFAULT_BUFFER_PATTERNS,
    allow_nonfinite: bool = False,
    skip_missing: bool = False,
    verify: bool = True,
    use_architecture: bool = True,
    repair: bool = False,
) -> TokenStore:
    """Tokenize every model of ``zoo`` (a :class:`geosane.zoo.Zoo` or its path) into the store ``out``.

    Streams model by model, each file written atomically and the index rewritten after each, so
    an interrupted run resumes: models already in the index whose zoo SHA-256 is unchanged and
    whose file matches its recorded SHA-256 are skipped (``verify=False`` skips the re-hash), models
    whose zoo weights changed are redone, and a token file that no longer matches its record is
    refused (never silently redone) unless ``repair``. The index is updated under a file lock, so
    concurrent runs into one store lose no rows. Manifest rows pointing to missing files are refused before anything
    is written (``skip_missing`` skips them instead). With ``use_architecture`` a recorded
    architecture is built on the meta device to type layers and tell buffers from parameters.
    A bad model (empty, non-finite) stops the run with an error naming it; the models finished
    before it stay valid.
    """
    from geosane.zoo import Zoo

    settings = TokenizerSettings(
        token_size, mode, tuple(include) if include is not None else None, tuple(exclude), tuple(buffers)
    )
    zoo = zoo if isinstance(zoo, Zoo) else Zoo(zoo)
    out = Path(out).expanduser()
    if len(zoo) == 0:
        raise GeosaneError(f"zoo {zoo.path} has no models; nothing to tokenize")
    missing = [e for e in zoo if not zoo.weights_path(e).is_file()]
    if missing and not skip_missing:
        first = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise GeosaneError(
            f"zoo {zoo.path}: manifest row '{first.id}' points to missing file {first.file}{more}; "
            "nothing was written (pass skip_missing=True to tokenize the others)",
            flags=cli_flags("skip_missing"),
        )
    for entry in missing:
        console.print(f"[yellow]skipping '{entry.id}': missing file {entry.file}[/]")
    _refuse_foreign(out)  # before the lock file is created
    with locked(out / "index.json"):
        old_records = _open_for_update(out, settings)
    records = {r.id: r for r in old_records}
    todo = [e for e in zoo if e not in missing]
    finished: set[str] = set()  # already tokenized from the same zoo weights, token file intact
    for entry in todo:
        old = records.get(entry.id)
        if old is None or old.zoo_sha256 != entry.sha256:
            continue
        path = out / "tokens" / f"{entry.id}.safetensors"
        problem = "is missing" if not path.is_file() else (
            "does not match its recorded SHA-256" if verify and sha256_file(path) != old.sha256 else None
        )
        if problem is None:
            finished.add(entry.id)
        elif not repair:  # reported, never silently redone
            raise GeosaneError(
                f"token store {out}: the token file of '{entry.id}' ({path}) {problem}; nothing was "
                "changed. Inspect the store with verify_store, then tokenize with repair=True "
                "to rebuild it from the zoo",
                flags={"verify_store": "`geosane tokens verify`", **cli_flags("repair")},
            )

    def save_record(record: StoreRecord) -> None:
        """Add ``record`` to the index on disk (read-modify-write under the lock: no run's rows are lost)."""
        with locked(out / "index.json"):
            current = {r.id: r for r in TokenStore(out, check_hashes=False).records}
            current[record.id] = record
            write_store_index(out, settings, list(current.values()))

    done = skipped = 0
    with make_progress() as progress:
        task = progress.add_task("tokenizing", total=len(todo), status="")
        for entry in todo:
            progress.update(task, status=entry.id)
            path = out / "tokens" / f"{entry.id}.safetensors"
            old = records.get(entry.id)
            if entry.id in finished:
                skipped += 1
                progress.advance(task)
                continue
            if old is not None and old.zoo_sha256 != entry.sha256:
                console.print(f"[yellow]redoing '{entry.id}': its zoo weights changed since it was tokenized[/]")
            elif old is not None:
                console.print(f"[yellow]repairing '{entry.id}': its token file did not match the index[/]")
            state_dict = zoo.load_state_dict(entry.id)
            module = _meta_module(entry.arch) if use_architecture else None
            try:
                tm = tokenize(state_dict, **settings.tokenize_kwargs(), module=module, allow_nonfinite=allow_nonfinite)
            except TokenizerError as exc:
                raise TokenizerError(f"model '{entry.id}': {exc}", flags=exc.flags) from None
            save_tokenized(tm, path, model_id=entry.id)
            record = StoreRecord(
                id=entry.id,
                file=str(path.relative_to(out)),
                num_tokens=tm.num_tokens,
                sha256=sha256_file(path),
                zoo_sha256=entry.sha256,
                num_layers=tm.num_layers,
                num_params=entry.num_params,
                family=entry.family,
                arch=entry.arch,
                task=entry.task,
                in_chans=entry.in_chans,
                num_classes=entry.num_classes,
                properties=dict(entry.metadata),
                nonfinite=allow_nonfinite and not bool(torch.isfinite(tm.tokens).all()),
            )
            records[entry.id] = record
            save_record(record)
            done += 1
            del tm, state_dict
            progress.advance(task)
    store = TokenStore(out)
    console.print(
        f"token store {out}: {done} tokenized, {skipped} already done; {len(store)} models, "
        f"{store.total_tokens:,} tokens of {store.token_size} ({store.mode})"
    )
    return store
