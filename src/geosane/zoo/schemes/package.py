"""``pkg:PACKAGE/PATH``: a weights file shipped inside an installed Python package.

Real pretrained weights that install offline come inside wheels (the csmask U-Nets of
``ukis-csmask``: ``pkg:ukis_csmask/model_6b_l2a.onnx``), at a path that depends on the environment;
this scheme names them portably in configs and zoo manifests. The file is then read as any local
file (:mod:`geosane.zoo.schemes.local`; an ONNX file with its sidecar and its package's license).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from geosane.arch.spec import LoadedModel
from geosane.errors import SourceError
from geosane.zoo.schemes.local import resolve_file

__all__ = ["package_file", "resolve_package"]


def package_file(spec: str) -> Path:
    """The file ``PATH`` inside installed package ``PACKAGE`` (refused if it leaves the package)."""
    package, sep, relative = spec.partition("/")
    if not sep or not package or not relative:
        raise SourceError(f"a package source must look like pkg:PACKAGE/PATH, got 'pkg:{spec}'")
    try:
        found = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        found = None
    locations = list(found.submodule_search_locations or []) if found is not None else []
    if not locations:
        raise SourceError(
            f"pkg:{spec}: Python package '{package}' is not installed (e.g. pip install 'geosane[csmask]' "
            "for ukis_csmask)"
        )
    root = Path(locations[0]).resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise SourceError(f"pkg:{spec}: the path leaves the package folder {root}; refusing it")
    if not path.is_file():
        shipped = sorted(
            p.name for p in root.iterdir() if p.suffix in {".onnx", ".safetensors", ".pt", ".pth"}
        )
        raise SourceError(
            f"pkg:{spec}: no file {relative} in {root} (weights there: {', '.join(shipped) or 'none'})"
        )
    return path


def resolve_package(
    spec: str, *, random_init: bool = False, in_chans: int | None = None, num_classes: int | None = None
) -> LoadedModel:
    path = package_file(spec)
    model = resolve_file(str(path), random_init=random_init, in_chans=in_chans, num_classes=num_classes)
    model.source = f"pkg:{spec}"  # the portable name, in zoo manifests too; the file stays in info
    model.info.setdefault("file", str(path))
    return model
