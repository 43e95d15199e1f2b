"""Generate new weights for a prompt architecture by sampling around its latent.

Pipeline (:func:`generate`, ``geosane generate``): adapt the prompt's stem (``stem``) -> tokenize
-> encode with halo windows -> sample latents around the prompt and its nearest zoo neighbours
(``kde``) -> decode -> detokenize -> recalibrate BatchNorm on unlabeled selection images
(``batchnorm``) -> rank candidates by a label-efficient proxy on frozen features of the selection
split (``proxy``) -> keep the top k and write them with a model card (``card``).

Names are imported lazily so that ``geosane --help`` does not load torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from geosane._lazy import lazy_exports

if TYPE_CHECKING:
    from geosane.generation.batchnorm import has_batchnorm, recalibrate_batchnorm
    from geosane.generation.card import write_loader_script
    from geosane.generation.config import GenerateConfig, KDEMode, ProxyKind, validate_config
    from geosane.generation.kde import latent_scale, sample_latents
    from geosane.generation.pipeline import GenerationResult, generate, prepare_prompt
    from geosane.generation.proxy import (
        frozen_features,
        knn_accuracy,
        linear_probe_accuracy,
        proxy_score,
    )
    from geosane.generation.stem import adapt_stem, stem_weight_names

_EXPORTS = {
    "batchnorm": ("has_batchnorm", "recalibrate_batchnorm"),
    "card": ("write_loader_script",),
    "config": ("GenerateConfig", "KDEMode", "ProxyKind", "validate_config"),
    "kde": ("latent_scale", "sample_latents"),
    "pipeline": ("GenerationResult", "generate", "prepare_prompt"),
    "proxy": ("frozen_features", "knn_accuracy", "linear_probe_accuracy", "proxy_score"),
    "stem": ("adapt_stem", "stem_weight_names"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "GenerateConfig",
    "GenerationResult",
    "KDEMode",
    "ProxyKind",
    "adapt_stem",
    "frozen_features",
    "generate",
    "has_batchnorm",
    "knn_accuracy",
    "latent_scale",
    "linear_probe_accuracy",
    "prepare_prompt",
    "proxy_score",
    "recalibrate_batchnorm",
    "sample_latents",
    "stem_weight_names",
    "validate_config",
    "write_loader_script",
]
