"""Model sources and the zoo: resolve any model into named tensors, collect many into a zoo."""

from geosane.zoo.build import BuildPlan, build_zoo, prepare_build
from geosane.zoo.manifest import Zoo, ZooEntry
from geosane.zoo.recipe import ZooRecipe, load_recipe
from geosane.zoo.sources import ArchSpec, LoadedModel, build_architecture, load_weights_file, resolve

__all__ = [
    "ArchSpec",
    "BuildPlan",
    "LoadedModel",
    "Zoo",
    "ZooEntry",
    "ZooRecipe",
    "build_architecture",
    "build_zoo",
    "load_recipe",
    "load_weights_file",
    "prepare_build",
    "resolve",
]
