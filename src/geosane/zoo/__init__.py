"""Model sources and the zoo: resolve any model into named tensors, collect many into a zoo."""

from geosane.zoo.manifest import Zoo, ZooEntry
from geosane.zoo.sources import ArchSpec, LoadedModel, build_architecture, load_weights_file, resolve

__all__ = ["ArchSpec", "LoadedModel", "Zoo", "ZooEntry", "build_architecture", "load_weights_file", "resolve"]
