"""Architecture types shared by every stage: records, named tensors, builds, stems.

The ground floor below tasks and the zoo: :class:`ArchSpec` (how to rebuild a model),
:class:`LoadedModel` (its named tensors), :func:`build_architecture` through the architecture
libraries (timm, smp, converted ONNX graphs), one meta-device build (:func:`empty_architecture`)
and :func:`adapt_stem`. Resolving model sources into these types is :mod:`geosane.zoo`'s job.

Names are imported lazily so that ``geosane --help`` does not load torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from geosane._lazy import lazy_exports

if TYPE_CHECKING:
    from geosane.arch.keys import key_mismatch
    from geosane.arch.libraries import ARCH_LIBRARIES, ArchLibrary, arch_library
    from geosane.arch.meta import check_fits, empty_architecture, order_like_architecture
    from geosane.arch.spec import (
        TASK_KWARGS,
        ArchSpec,
        LoadedModel,
        arch_family,
        build_architecture,
        parse_arch,
        same_architecture,
    )
    from geosane.arch.stem import adapt_stem, stem_weight_names

_EXPORTS = {
    "keys": ("key_mismatch",),
    "libraries": ("ARCH_LIBRARIES", "ArchLibrary", "arch_library"),
    "meta": ("check_fits", "empty_architecture", "order_like_architecture"),
    "spec": (
        "TASK_KWARGS",
        "ArchSpec",
        "LoadedModel",
        "arch_family",
        "build_architecture",
        "parse_arch",
        "same_architecture",
    ),
    "stem": ("adapt_stem", "stem_weight_names"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "ARCH_LIBRARIES",
    "TASK_KWARGS",
    "ArchLibrary",
    "ArchSpec",
    "LoadedModel",
    "adapt_stem",
    "arch_family",
    "arch_library",
    "build_architecture",
    "check_fits",
    "empty_architecture",
    "key_mismatch",
    "order_like_architecture",
    "parse_arch",
    "same_architecture",
    "stem_weight_names",
]
