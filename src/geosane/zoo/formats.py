"""Read named tensors from weight files without ever executing code from them.

Formats:

- ``.safetensors`` (and sharded ``*.safetensors.index.json``); the key order geosane stored in the
  file's metadata is restored (safetensors itself does not keep insertion order);
- ``.pt`` / ``.pth`` / ``.bin`` pickles, through ``torch.load(weights_only=True)`` only;
- Lightning ``.ckpt`` (weights-only pickle): its ``state_dict``, with a prefix shared by every key
  (``model.``, ``net.``, ``backbone.``, ``module.``) stripped;
- ``.onnx``: the graph initializers, read with the ``onnx`` package (``numpy_helper``); the
  architecture and metadata are added by :mod:`geosane.zoo.onnx` when the source is resolved.

A pickle that needs anything beyond tensors and plain containers is refused with
:class:`UnsafeCheckpointError` naming the file and the globals it would import; nothing is run.
"""

from __future__ import annotations

import json
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from geosane.errors import GeosaneError, SourceError, UnsafeCheckpointError
from geosane.io import contained_path

__all__ = [
    "KEY_ORDER_METADATA",
    "PICKLE_SUFFIXES",
    "WEIGHT_SUFFIXES",
    "find_weights_in_dir",
    "first_nonfinite",
    "load_weights_file",
    "pickle_globals",
    "read_pickle",
    "read_weights",
    "strip_common_prefix",
    "tensors_from_object",
]

PICKLE_SUFFIXES = (".pt", ".pth", ".bin")
WEIGHT_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES, ".ckpt", ".onnx")
SHARD_INDEX_SUFFIX = ".safetensors.index.json"
KEY_ORDER_METADATA = "geosane_key_order"
CKPT_PREFIXES = ("model.", "net.", "backbone.", "module.")


def first_nonfinite(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """Name of the first floating-point tensor holding NaN or Inf, or None.

    A float64 sum is finite whenever every entry is (it cannot overflow for fp32/fp16/bf16), so
    the element-wise check only runs on tensors whose sum is not: about 10x faster than
    ``isfinite(t).all()`` on every tensor.
    """
    for name, tensor in state_dict.items():
        if tensor.is_complex():
            if not bool(torch.isfinite(tensor).all()):
                return name
        elif tensor.is_floating_point() and tensor.numel():
            if bool(torch.isfinite(tensor.sum(dtype=torch.float64))):
                continue
            if not bool(torch.isfinite(tensor).all()):
                return name
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _is_weights_name(path: Path) -> bool:
    return path.name.endswith(SHARD_INDEX_SUFFIX) or path.suffix.lower() in WEIGHT_SUFFIXES


# ---------------------------------------------------------------------------------------------
# safetensors


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            order = (f.metadata() or {}).get(KEY_ORDER_METADATA)
            tensors = {k: f.get_tensor(k) for k in keys}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise SourceError(f"corrupt or truncated safetensors file {path}: {_first_line(exc)}") from None
    if order:
        try:
            names = json.loads(order)
        except json.JSONDecodeError:
            names = None
        if isinstance(names, list) and sorted(names) == sorted(tensors):
            return {k: tensors[k] for k in names}
    return tensors


def _read_sharded(index: Path) -> dict[str, torch.Tensor]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SourceError(f"invalid safetensors shard index {index}: {_first_line(exc)}") from None
    shards = list(dict.fromkeys(weight_map.values()))
    out: dict[str, torch.Tensor] = {}
    for shard in shards:
        shard_path = index.parent / shard
        if not shard_path.is_file():
            raise SourceError(f"shard {shard} listed in {index} is missing")
        out.update(_read_safetensors(shard_path))
    missing = [k for k in weight_map if k not in out]
    if missing:
        raise SourceError(f"{index}: tensors {missing[:3]} are listed but absent from the shards")
    return {k: out[k] for k in weight_map}


# ---------------------------------------------------------------------------------------------
# pickles


def read_pickle(path: Path, allow: tuple[type, ...] = ()) -> Any:
    """``torch.load(weights_only=True)``; a pickle that needs other globals is refused, unrun.

    ``allow``: plain-data classes the caller lets through as well (``argparse.Namespace`` for the
    training arguments MAE and DINO save beside the weights); still weights-only unpickling.
    """
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(list(allow)):
            warnings.simplefilter("ignore", UserWarning)  # e.g. "Detected pickle protocol 4": noise here
            return torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    except pickle.UnpicklingError:
        needed = pickle_globals(path)
        detail = f"needs {', '.join(needed[:4])}" if needed else "it holds objects other than tensors"
        raise UnsafeCheckpointError(
            f"refusing to load {path}: it is not a weights-only checkpoint and unpickling it could run "
            f"arbitrary code ({detail}); convert it to safetensors where it was made"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, ImportError, IndexError) as exc:
        raise SourceError(f"corrupt or truncated checkpoint {path}: {_first_line(exc)}") from None


def pickle_globals(path: str | Path) -> list[str]:
    """The globals (``module.name``) a checkpoint's pickle would import; nothing is unpickled.

    Zip checkpoints go through ``torch.serialization.get_unsafe_globals_in_checkpoint``. That
    helper does not read plain (non-zip) pickles, so for those the opcode stream is scanned with
    :mod:`pickletools` (``GLOBAL``, and ``STACK_GLOBAL`` with the two strings pushed before it).
    """
    import pickletools
    import zipfile

    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        found: list[str] = []
        strings: list[str] = []
        with open(path, "rb") as f:
            for opcode, arg, _ in pickletools.genops(f):
                if opcode.name == "GLOBAL" and isinstance(arg, str):
                    found.append(arg.replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str) and "UNICODE" in opcode.name:
                    strings.append(arg)
        return sorted(set(found))
    except Exception:  # unreadable or truncated: the refusal stands without a listing
        return []


def tensors_from_object(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """Find the state dict inside a loaded checkpoint object (``state_dict``/``model``/``module`` entry, or its tensors)."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "module"):
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return dict(inner)
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
        if not obj:
            return {}
    raise SourceError(f"{path} holds no tensors (found {type(obj).__name__})")


def strip_common_prefix(
    state_dict: dict[str, torch.Tensor], prefixes: tuple[str, ...] = CKPT_PREFIXES
) -> tuple[dict[str, torch.Tensor], str]:
    """Remove a wrapper prefix shared by every key (repeatedly, e.g. ``model.backbone.``)."""
    stripped = ""
    while state_dict:
        prefix = next((p for p in prefixes if all(k.startswith(p) for k in state_dict)), None)
        if prefix is None:
            break
        state_dict = {k[len(prefix) :]: v for k, v in state_dict.items()}
        stripped += prefix
    return state_dict, stripped


def _read_ckpt(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    obj = read_pickle(path)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        tensors = {k: v for k, v in obj["state_dict"].items() if isinstance(v, torch.Tensor)}
    else:
        tensors = tensors_from_object(obj, path)
    tensors, prefix = strip_common_prefix(tensors)
    info: dict[str, Any] = {"stripped_prefix": prefix} if prefix else {}
    if isinstance(obj, dict) and isinstance(obj.get("hyper_parameters"), dict):
        info["hyper_parameters"] = {
            k: v for k, v in obj["hyper_parameters"].items() if isinstance(v, (str, int, float, bool))
        }
    return tensors, info


# ---------------------------------------------------------------------------------------------
# onnx


def _read_onnx(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Initializers of an ONNX graph (via ``onnx.numpy_helper``) and the image input's channels."""
    import onnx
    from google.protobuf.message import DecodeError
    from onnx import numpy_helper

    try:  # external data is read below, per initializer, once its path has been checked
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, OSError, ValueError, RuntimeError) as exc:
        raise SourceError(f"corrupt or truncated ONNX file {path}: {_first_line(exc)}") from None
    graph = model.graph
    tensors: dict[str, torch.Tensor] = {}
    for init in graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            location = {e.key: e.value for e in init.external_data}.get("location", "")
            try:
                contained_path(
                    path.parent, location, f"ONNX file {path}, initializer '{init.name}' external data"
                )
            except GeosaneError as exc:
                raise SourceError(str(exc)) from None
        try:
            array = numpy_helper.to_array(init, base_dir=str(path.parent))
        except (OSError, ValueError, TypeError, onnx.checker.ValidationError) as exc:
            raise SourceError(f"{path}: cannot read initializer '{init.name}': {_first_line(exc)}") from None
        tensors[init.name] = torch.from_numpy(array.copy())
    info: dict[str, Any] = {
        "onnx_producer": graph.name or model.producer_name or None,
        "onnx_file": str(path.resolve()),
    }
    initializer_names = set(tensors)
    for graph_input in graph.input:
        if graph_input.name in initializer_names:
            continue
        dims = graph_input.type.tensor_type.shape.dim
        info["onnx_input_shape"] = [int(d.dim_value) for d in dims]  # 0: dynamic
        if len(dims) == 4 and dims[1].dim_value > 0:
            info["in_chans"] = int(dims[1].dim_value)
        if len(dims) == 4 and dims[2].dim_value > 0 and dims[3].dim_value > 0:
            info["onnx_input_size"] = [int(dims[2].dim_value), int(dims[3].dim_value)]
        break
    for graph_output in graph.output[:1]:
        dims = graph_output.type.tensor_type.shape.dim
        if len(dims) >= 2 and dims[1].dim_value > 0:
            info["onnx_output_channels"] = int(dims[1].dim_value)
    return tensors, info


# ---------------------------------------------------------------------------------------------
# entry points


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors of a weight file plus what the file says about the model (``info``)."""
    path = Path(path)
    if not path.exists():
        raise SourceError(f"model file not found: {path}")
    if path.is_dir():
        path = find_weights_in_dir(path)
    name = path.name.lower()
    if name.endswith(SHARD_INDEX_SUFFIX):
        return _read_sharded(path), {}
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return _read_safetensors(path), {}
    if suffix in PICKLE_SUFFIXES:
        return tensors_from_object(read_pickle(path), path), {}
    if suffix == ".ckpt":
        return _read_ckpt(path)
    if suffix == ".onnx":
        return _read_onnx(path)
    raise SourceError(
        f"unsupported model file type '{path.suffix}' for {path} "
        f"(expected {', '.join(WEIGHT_SUFFIXES)} or a directory holding one)"
    )


def load_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read tensors from any supported weight file (see the module docstring); never executes code."""
    return read_weights(path)[0]


def find_weights_in_dir(directory: str | Path) -> Path:
    """The one weights file in ``directory`` (a sharded safetensors index counts as one)."""
    directory = Path(directory)
    files = sorted(p for p in directory.iterdir() if p.is_file() and _is_weights_name(p))
    indexes = [p for p in files if p.name.endswith(SHARD_INDEX_SUFFIX)]
    shard_names: set[str] = set()
    for index in indexes:
        try:
            shard_names.update(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
    candidates = [p for p in files if p.name not in shard_names]
    if not candidates:
        raise SourceError(f"directory {directory} holds no weights file ({', '.join(WEIGHT_SUFFIXES)})")
    if len(candidates) > 1:
        names = ", ".join(p.name for p in candidates[:6])
        raise SourceError(
            f"directory {directory} holds several weights files ({names}); name the file to use"
        )
    return candidates[0]
