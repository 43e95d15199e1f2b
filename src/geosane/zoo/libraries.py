"""Architecture libraries now live in :mod:`geosane.arch.libraries`; re-exported for old imports."""

from geosane.arch.libraries import ARCH_LIBRARIES, ArchLibrary, arch_library

__all__ = ["ARCH_LIBRARIES", "ArchLibrary", "arch_library"]
