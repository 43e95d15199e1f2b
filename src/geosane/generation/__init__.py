"""Generate new weights for a prompt architecture by sampling around its latent.

Pipeline: adapt the prompt's stem (``stem``) -> tokenize -> encode with halo windows -> sample
latents around the prompt and its nearest zoo neighbours (``kde``) -> decode -> detokenize ->
recalibrate BatchNorm on unlabeled selection images (``batchnorm``) -> rank candidates by a
label-efficient proxy on frozen features of the selection split (``proxy``) -> keep the top k.
"""

from geosane.generation.batchnorm import has_batchnorm, recalibrate_batchnorm
from geosane.generation.kde import KDEMode, latent_scale, sample_latents
from geosane.generation.proxy import (
    ProxyKind,
    frozen_features,
    knn_accuracy,
    linear_probe_accuracy,
    proxy_score,
)
from geosane.generation.stem import adapt_stem, stem_weight_names

__all__ = [
    "KDEMode",
    "ProxyKind",
    "adapt_stem",
    "frozen_features",
    "has_batchnorm",
    "knn_accuracy",
    "latent_scale",
    "linear_probe_accuracy",
    "proxy_score",
    "recalibrate_batchnorm",
    "sample_latents",
    "stem_weight_names",
]
