"""GEO-Bench tasks (Lacoste et al., NeurIPS 2023) read from their published folders, without geobench.

A task folder (``GEO_BENCH_DIR/classification_v1.0/m-eurosat`` ...) holds::

    default_partition.json   {"train": [sample names], "valid": [...], "test": [...]}
    <sample>.hdf5            one 2-D dataset per band (named like "04 - Red"), a "label" dataset
                             for segmentation tasks, and the attribute "pickle" (below)

geosane's ``train`` / ``select`` / ``test`` are the partition's ``train`` / ``valid`` / ``test``.
:class:`GeoBenchTask` yields TorchGeo-style samples (``{"image": [C, H, W] float32, "label" | "mask"}``)
so that the datasets take the same road as TorchGeo's through ``geosane.data.torchgeo.TorchGeoSamples``
(resizing, band selection, normalisation, augmentation), read lazily (m-bigearthnet does not fit in
memory). Bands are in the file's recorded order; class names are the label values (``"0"`` ...),
since the task files do not name them.

**The pickle.** Each sample's attribute ``pickle`` is ``str(pickle.dumps(...))``: the band order,
per-band metadata and, for classification tasks, the label. It is read with
:class:`SafeGeoBenchUnpickler`, which resolves only numpy's array and scalar reconstruction, dtypes
and ``datetime``; every class of the ``geobench`` package (and rasterio's CRS, affine's Affine)
becomes an inert :class:`PickledRecord` (its state kept as data, none of its code runs); any
other global is refused with a :class:`DataError` naming it. geosane never imports geobench and
never reads ``task_specs.pkl``.
"""

from __future__ import annotations

import ast
import importlib.util
import io
import json
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geosane.errors import DataError

__all__ = [
    "GEOBENCH_TASKS",
    "GeoBenchTask",
    "PickledRecord",
    "SafeGeoBenchUnpickler",
    "find_geobench_task",
    "open_geobench",
    "read_sample_attributes",
]

PARTITIONS = {"train": "train", "select": "valid", "test": "test"}


@dataclass(frozen=True)
class GeoBenchInfo:
    """A GEO-Bench task geosane knows: its benchmark folder, task and a line for users."""

    benchmark: str
    task: str
    description: str


GEOBENCH_TASKS: dict[str, GeoBenchInfo] = {
    "m-eurosat": GeoBenchInfo("classification_v1.0", "classification", "Sentinel-2, 13 bands, 10 classes, 64 px"),
    "m-bigearthnet": GeoBenchInfo("classification_v1.0", "multilabel", "Sentinel-2, 12 bands, 43 labels, 120 px"),
    "m-brick-kiln": GeoBenchInfo("classification_v1.0", "classification", "Sentinel-2, 13 bands, 2 classes, 64 px"),
    "m-forestnet": GeoBenchInfo("classification_v1.0", "classification", "Landsat-8, 6 bands, 12 classes, 332 px"),
    "m-pv4ger": GeoBenchInfo("classification_v1.0", "classification", "aerial RGB, 2 classes, 320 px"),
    "m-so2sat": GeoBenchInfo("classification_v1.0", "classification", "Sentinel-1/2, 18 bands, 17 classes, 32 px"),
    "m-pv4ger-seg": GeoBenchInfo("segmentation_v1.0", "segmentation", "aerial RGB solar panels, 320 px"),
    "m-chesapeake-landcover": GeoBenchInfo("segmentation_v1.0", "segmentation", "NAIP 4 bands, 7 classes, 256 px"),
    "m-cashew-plantation": GeoBenchInfo("segmentation_v1.0", "segmentation", "Sentinel-2, 13 bands, 7 classes, 256 px"),
    "m-sa-crop-type": GeoBenchInfo("segmentation_v1.0", "segmentation", "Sentinel-2, 13 bands, 10 classes, 256 px"),
    "m-nz-cattle": GeoBenchInfo("segmentation_v1.0", "segmentation", "aerial RGB cattle, 2 classes, 500 px"),
    "m-neontree": GeoBenchInfo("segmentation_v1.0", "segmentation", "NEON RGB + hyperspectral + height, 2 classes"),
}  # fmt: skip

# numpy's own reconstruction functions and types (numpy 1.x and 2.x module names)
_NUMPY_GLOBALS = {
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {("numpy", "ndarray"), ("numpy", "dtype")}
_SAFE_GLOBALS = _NUMPY_GLOBALS | {
    ("datetime", "date"), ("datetime", "datetime"), ("datetime", "timedelta"), ("datetime", "timezone"),
    ("collections", "OrderedDict"),
}  # fmt: skip
# whose classes become inert records: geobench's bands, band infos and labels, and their geodata
_RECORD_MODULES = ("geobench", "rasterio.crs", "affine")


class PickledRecord:
    """An inert stand-in for a class named in a GEO-Bench pickle: it keeps the arguments and state
    the pickle gives it, as plain data, and has no behaviour of the original class."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs
        self.state: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        self.state = dict(state) if isinstance(state, dict) else {"state": state}

    def get(self, key: str, default: Any = None) -> Any:
        return self.state.get(key, default)


class SafeGeoBenchUnpickler(pickle.Unpickler):
    """Resolves only the globals a GEO-Bench sample needs (see the module docstring)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        if any(module == m or module.startswith(m + ".") for m in _RECORD_MODULES):
            return type(name, (PickledRecord,), {"__module__": f"geosane-record:{module}"})
        raise DataError(
            f"a GEO-Bench sample's metadata pickle names {module}.{name}, which geosane does not load "
            "(only numpy arrays, dates and geobench's own band/label records are read, as inert data)"
        )


def read_sample_attributes(path: Path) -> dict[str, Any]:
    """The ``pickle`` attribute of a GEO-Bench ``.hdf5`` sample, read with :class:`SafeGeoBenchUnpickler`."""
    import h5py

    with h5py.File(path, "r") as fp:
        raw = fp.attrs.get("pickle")
    if raw is None:
        return {}
    try:
        payload = ast.literal_eval(raw if isinstance(raw, str) else raw.decode())
        value = SafeGeoBenchUnpickler(io.BytesIO(payload)).load()
    except DataError:
        raise
    except (ValueError, SyntaxError, pickle.UnpicklingError, EOFError, TypeError) as exc:
        raise DataError(f"{path}: unreadable GEO-Bench metadata ({type(exc).__name__}: {exc})") from None
    if not isinstance(value, dict):
        raise DataError(f"{path}: GEO-Bench metadata is a {type(value).__name__}, not a mapping")
    return value


def find_geobench_task(root: str | Path, name: str) -> Path:
    """The folder of task ``name`` under ``root`` (``root/<benchmark>/<task>``, or ``root`` itself)."""
    base = Path(root).expanduser()
    key = name.lower().replace("_", "-")
    if (base / "default_partition.json").is_file():
        return base
    info = GEOBENCH_TASKS.get(key)
    candidates = [base / key] + ([base / info.benchmark / key] if info else [])
    candidates += sorted(p for p in base.glob(f"*/{key}") if p.is_dir())
    candidates += sorted(p for p in base.glob("*/*") if p.is_dir() and p.name.lower() == key)
    for candidate in candidates:
        if (candidate / "default_partition.json").is_file():
            return candidate
    known = ", ".join(GEOBENCH_TASKS)
    raise DataError(
        f"GEO-Bench task '{name}' not found under {base} (expected {base}/<benchmark>/{key}/default_partition.json; "
        f"known tasks: {known}); download GEO-Bench (pip install geo-benchmark; geobench-download) "
        "and pass data.root=$GEO_BENCH_DIR"
    )


class GeoBenchTask:
    """One partition of a GEO-Bench task as TorchGeo-style samples (``image`` and ``label``/``mask``)."""

    def __init__(self, folder: Path, names: Sequence[str], task: str) -> None:
        self.folder = folder
        self.names = list(names)
        self.task = task
        self._classes: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.names)

    def _path(self, index: int) -> Path:
        name = self.names[index]
        path = self.folder / f"{name}.hdf5"
        if Path(name).is_absolute() or not path.resolve().is_relative_to(self.folder.resolve()):
            raise DataError(f"{self.folder}: partition entry '{name}' leaves the task folder; refusing it")
        if not path.is_file():
            raise DataError(
                f"{self.folder}: sample file {path.name} listed in default_partition.json is missing"
            )
        return path

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        import h5py

        path = self._path(index)
        attrs = read_sample_attributes(path)
        with h5py.File(path, "r") as fp:
            order = [str(b) for b in attrs.get("bands_order") or sorted(fp.keys())]
            bands = [b for b in order if not b.startswith("label")]
            if not bands:
                raise DataError(f"{path}: no image band (datasets {sorted(fp.keys())})")
            arrays = [np.asarray(fp[b], dtype=np.float32) for b in bands]
            shapes = {a.shape for a in arrays}
            if len(shapes) != 1 or arrays[0].ndim != 2:
                raise DataError(f"{path}: bands must be 2-D arrays of one size, got shapes {sorted(shapes)}")
            sample: dict[str, torch.Tensor] = {"image": torch.from_numpy(np.stack(arrays))}
            if "label" in fp:
                sample["mask"] = torch.from_numpy(np.asarray(fp["label"], dtype=np.int64))
        if "mask" not in sample:
            label = attrs.get("label")
            if label is None:
                raise DataError(f"{path}: no label (neither a 'label' band nor a recorded label)")
            value = np.asarray(label.args[0] if isinstance(label, PickledRecord) and label.args else label)
            sample["label"] = torch.as_tensor(value.astype(np.int64) if value.ndim else int(value))
        return sample

    @property
    def classes(self) -> tuple[str, ...]:
        """Label values seen in the first samples (classification: ``0..max``; multi-label: the
        vector's length; segmentation: ``0..max`` of the masks), named by their value."""
        if self._classes is None:
            highest, width = 0, 0
            for index in range(min(len(self), 64)):
                sample = self[index]
                if "mask" in sample:
                    highest = max(highest, int(sample["mask"].max()))
                elif sample["label"].ndim:
                    width = int(sample["label"].numel())
                else:
                    highest = max(highest, int(sample["label"]))
            self._classes = tuple(str(i) for i in range(width or highest + 1))
        return self._classes


def geobench_available() -> bool:
    """Whether h5py (the ``geobench`` extra) is installed."""
    return importlib.util.find_spec("h5py") is not None


def open_geobench(name: str, root: str | Path, split: str) -> GeoBenchTask:
    """Split ``split`` (``train`` / ``select`` / ``test``) of GEO-Bench task ``name`` under ``root``."""
    if not geobench_available():
        raise DataError("GEO-Bench tasks need h5py: pip install 'geosane[geobench]'")
    folder = find_geobench_task(root, name)
    try:
        partition = json.loads((folder / "default_partition.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{folder}/default_partition.json is unreadable: {exc}") from None
    key = PARTITIONS.get(split, split)
    if not isinstance(partition, dict) or not isinstance(partition.get(key), list):
        raise DataError(f"{folder}/default_partition.json has no '{key}' list of sample names")
    info = GEOBENCH_TASKS.get(name.lower().replace("_", "-"))
    task = info.task if info else "auto"
    return GeoBenchTask(folder, [str(n) for n in partition[key]], task)
