"""Atomic file output, checksums and safe checkpoint I/O shared by every stage.

Every file geosane writes goes through :func:`atomic_path`: the content is written to a temporary
file in the destination directory and renamed over the target only when complete, so an
interrupted job never leaves a half-written output behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch loads inside the functions so that `geosane --help` stays fast
    import torch

__all__ = [
    "OUT_MARKER",
    "atomic_directory",
    "atomic_path",
    "check_out_dir",
    "claim_out_dir",
    "contained_path",
    "json_safe",
    "load_torch",
    "locked",
    "mark_out_dir",
    "no_verify_env",
    "read_json",
    "save_safetensors",
    "save_torch",
    "sha256_file",
    "sha256_tensors",
    "verify_file_sha256",
    "write_json",
    "write_text",
]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` if the block succeeds.

    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates 0600 files; give the result the permissions a plain open() would (umask applied)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temporary directory next to ``path``; swap it in as ``path`` if the block succeeds.

    An existing directory cannot be replaced in one rename, so the old ``path`` (directory or file)
    is first renamed aside and removed only once the new one is in place. On any exception the
    temporary directory is removed and ``path`` is left untouched. Checks that must hold right
    before the swap go at the end of the block.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    umask = os.umask(0)  # mkdtemp creates 0700; give the result a plain mkdir's permissions
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists() or target.is_symlink():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)  # left by an earlier crash of a process with this id
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


@contextlib.contextmanager
def locked(path: str | os.PathLike[str], timeout: float = 600.0) -> Iterator[None]:
    """Hold an exclusive inter-process lock for ``path`` (a lock file ``.NAME.lock`` beside it).

    Shared indexes (zoo manifests, token-store indexes) are read, changed and rewritten inside
    this block, so concurrent writers each see the other's rows and none is lost. ``filelock``
    (a torch dependency) does the locking: ``fcntl``/``msvcrt`` semantics, released if the
    process dies.
    """
    from filelock import FileLock, Timeout

    from geosane.errors import GeosaneError

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(target.parent / f".{target.name}.lock"), timeout=timeout)
    try:
        with lock:
            yield
    except Timeout:
        raise GeosaneError(
            f"{target} stayed locked by another geosane process for {timeout:.0f} s; try again when it is done"
        ) from None


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike[str], obj: Any, indent: int = 2) -> Path:
    """Atomically write ``obj`` as strict JSON to ``path``: NaN and infinities become ``null``.

    Python's ``json`` writes bare ``NaN``, which no strict parser (jq, JavaScript, Rust) reads.
    """
    text = json.dumps(json_safe(obj), indent=indent, sort_keys=False, default=_json_default, allow_nan=False)
    return write_text(path, text + "\n")


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float (also inside containers and tensors) replaced by ``None``."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if not isinstance(obj, str | int | bool | type(None) | Path) and hasattr(obj, "tolist"):
        return json_safe(obj.tolist())  # numpy / torch scalars and arrays
    return obj


def contained_path(root: str | os.PathLike[str], relative: str, what: str) -> Path:
    """``root / relative``, refused unless ``relative`` is a relative path that stays inside ``root``.

    Manifests and indexes name their files relative to their own directory; a row saying
    ``../../x`` or ``/abs`` (an edited or hostile index) must not make geosane read or overwrite
    files elsewhere.
    """
    from geosane.errors import GeosaneError

    base = Path(root)
    rel = Path(relative)
    resolved = (base / rel).resolve()
    if rel.is_absolute() or not resolved.is_relative_to(base.resolve()):
        raise GeosaneError(f"{what}: file path '{relative}' leaves its directory {base}; refusing to follow it")
    return base / rel


OUT_MARKER = ".geosane-out.json"


def check_out_dir(
    out: str | os.PathLike[str],
    command: str,
    inputs: Mapping[str, str | os.PathLike[str] | None] | None = None,
    flags: Mapping[str, str] | None = None,
) -> bool:
    """Apply the one rule for every command's output directory; True if geosane wrote it for ``command``.

    The rule: ``out`` may be missing, empty, or a directory geosane already wrote *for the same
    command* (it holds :data:`OUT_MARKER` naming the command; zoos and token stores are marked by
    their ``manifest.json`` / ``index.json`` instead). Anything else (a user's folder, another
    command's run) is refused, and so is an ``out`` that is, or holds, one of the run's ``inputs``
    (``{"ae": path}``), so that replacing or resuming an output can never destroy a user's files.
    An input may be a model source: ``zoo:DIR#ID`` names ``DIR``; one that names no existing local
    path (``timm:resnet18``) is not a file to protect. ``flags``: the errors'
    :attr:`~geosane.errors.GeosaneError.flags` (input names -> command-line flags). Nothing is
    written; :func:`claim_out_dir` also creates and marks the directory.
    """
    from geosane.errors import GeosaneError

    target = Path(out).expanduser()
    if target.exists() and not target.is_dir():
        raise GeosaneError(f"output path {target} exists and is not a directory")
    resolved = target.resolve()
    for name, value in (inputs or {}).items():
        local = _local_path(value)
        if local is None:
            continue
        source = local.resolve()
        if source == resolved or source.is_relative_to(resolved):
            raise GeosaneError(
                f"output directory {target} is or holds this run's input {name} ({value}); "
                "choose another output directory (nothing was written)",
                flags=flags,
            )
    marker = target / OUT_MARKER
    if marker.is_file():
        try:
            owner = read_json(marker).get("command")
        except (OSError, ValueError, AttributeError):
            owner = None
        if owner != command:
            raise GeosaneError(
                f"output directory {target} was written by `geosane {owner}`, not `geosane {command}`; "
                "choose another output directory (nothing was written)"
            )
        return True
    if target.is_dir():
        foreign = sorted(p.name for p in target.iterdir())
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise GeosaneError(
                f"output directory {target} is not empty and geosane did not write it (holds {shown}); "
                "choose a new or empty directory (nothing was written)"
            )
    return False


def _local_path(source: str | os.PathLike[str] | None) -> Path | None:
    """The existing local path ``source`` names (``zoo:DIR#ID`` names ``DIR``), else None."""
    if source is None:
        return None
    text = os.fspath(source)
    if text.startswith("zoo:"):
        location, sep, _ = text.removeprefix("zoo:").rpartition("#")
        text = location if sep else text.removeprefix("zoo:")
    path = Path(text).expanduser()
    return path if text and path.exists() else None


def mark_out_dir(out: str | os.PathLike[str], command: str) -> None:
    """Write the marker that makes ``out`` an output directory of ``command`` (see :func:`check_out_dir`)."""
    write_json(Path(out) / OUT_MARKER, {"command": command})


def claim_out_dir(
    out: str | os.PathLike[str],
    command: str,
    inputs: Mapping[str, str | os.PathLike[str] | None] | None = None,
    flags: Mapping[str, str] | None = None,
) -> bool:
    """:func:`check_out_dir`, then create and mark ``out``; True if it was already ours (a rerun)."""
    ours = check_out_dir(out, command, inputs, flags)
    if not ours:
        mark_out_dir(out, command)
    return ours


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if type(obj).__module__ == "torch" and type(obj).__name__ == "dtype":
        return str(obj).removeprefix("torch.")
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def save_safetensors(
    tensors: Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Atomically save ``tensors`` as a safetensors file (contiguous copies where needed)."""
    from safetensors.torch import save_file

    prepared = {k: v.detach().contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(prepared, str(tmp), metadata=dict(metadata) if metadata else None)
    return Path(path)


def save_torch(obj: Any, path: str | os.PathLike[str]) -> Path:
    """Atomically ``torch.save`` an object made only of tensors and plain Python containers.

    Such files load back with ``torch.load(weights_only=True)``; anything else should not be saved.
    """
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def load_torch(path: str | os.PathLike[str], map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with one-line errors; a pickle needing code is refused, unrun.

    torch's own refusal advises ``weights_only=False``, which would run whatever the pickle holds;
    geosane never gives that advice (checkpoints are a security boundary).
    """
    import pickle

    import torch

    from geosane.errors import GeosaneError, UnsafeCheckpointError

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise UnsafeCheckpointError(
            f"refusing to load {path}: it is not a weights-only checkpoint (it holds objects other than "
            "tensors and plain containers), and unpickling it could run arbitrary code"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, ImportError, IndexError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GeosaneError(f"cannot read checkpoint {path}: {first}") from None


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, streamed in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


_VERIFIED: dict[tuple[str, int, int], str] = {}


def no_verify_env() -> bool:
    """Whether ``GEOSANE_NO_VERIFY=1`` asks to skip checksum checks (trusted, huge stores)."""
    return os.environ.get("GEOSANE_NO_VERIFY", "").strip().lower() in ("1", "true", "yes")


def verify_file_sha256(path: str | os.PathLike[str], expected: str, what: str) -> None:
    """Refuse a file whose SHA-256 is not the recorded ``expected`` one.

    Hashed once per process and file version (path, size, mtime), so a training loop that opens
    the same file many times pays for one read.
    """
    from geosane.errors import GeosaneError

    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    found = _VERIFIED.get(key)
    if found is None:
        found = sha256_file(p)
        _VERIFIED[key] = found
    if found != expected:
        raise GeosaneError(
            f"{what}: {p} does not match its recorded SHA-256 (recorded {expected[:12]}…, found "
            f"{found[:12]}…): the file is corrupted or was changed; nothing was repaired"
        )


def sha256_tensors(tensors: Mapping[str, torch.Tensor]) -> str:
    """Hex SHA-256 over names, dtypes, shapes and raw bytes of tensors, in key order.

    Two state dicts with bitwise identical tensors under the same names get the same digest,
    whatever file format they came from.
    """
    import torch

    digest = hashlib.sha256()
    for name, tensor in tensors.items():
        t = tensor.detach().contiguous().cpu()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
