"""Model sources and the zoo: resolve any model into named tensors, collect many into a zoo.

Names are imported lazily so that ``geosane --help`` does not load torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from geosane._lazy import lazy_exports

if TYPE_CHECKING:
    from geosane.zoo.build import BuildPlan, build_zoo, prepare_build
    from geosane.zoo.manifest import Zoo, ZooEntry, verify_zoo
    from geosane.zoo.provenance import (
        TrainedOn,
        check_disjoint,
        image_digest,
        members_seeing,
        read_image_list,
        record_trained_on,
    )
    from geosane.zoo.recipe import ZooRecipe, load_recipe
    from geosane.zoo.sources import (
        ArchSpec,
        LoadedModel,
        build_architecture,
        load_weights_file,
        load_zoo_source,
        resolve,
        split_zoo_source,
    )

_EXPORTS = {
    "build": ("BuildPlan", "build_zoo", "prepare_build"),
    "manifest": ("Zoo", "ZooEntry", "verify_zoo"),
    "provenance": (
        "TrainedOn",
        "check_disjoint",
        "image_digest",
        "members_seeing",
        "read_image_list",
        "record_trained_on",
    ),
    "recipe": ("ZooRecipe", "load_recipe"),
    "sources": (
        "ArchSpec",
        "LoadedModel",
        "build_architecture",
        "load_weights_file",
        "load_zoo_source",
        "resolve",
        "split_zoo_source",
    ),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "ArchSpec",
    "BuildPlan",
    "LoadedModel",
    "TrainedOn",
    "Zoo",
    "ZooEntry",
    "ZooRecipe",
    "build_architecture",
    "build_zoo",
    "check_disjoint",
    "image_digest",
    "load_recipe",
    "load_weights_file",
    "load_zoo_source",
    "members_seeing",
    "prepare_build",
    "read_image_list",
    "record_trained_on",
    "resolve",
    "split_zoo_source",
    "verify_zoo",
]
