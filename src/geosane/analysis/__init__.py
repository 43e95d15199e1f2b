"""Transfer analysis of (geospatial) backbones: layerwise probing, decoder comparison and CKA.

- CKA on ``[n, features]`` tensors: :func:`linear_cka`, :func:`debiased_cka`, :class:`MinibatchCKA`
  (unbiased HSIC accumulated over batches, float64), :class:`MinibatchCKAMatrix`, :func:`cka_matrix`.
- Layers by module path: :func:`resolve_layers`, :class:`LayerRecorder` (forward hooks),
  :func:`pool_output` (``cls`` / ``mean`` / ``gap`` / ``flatten``).
- Probes: :func:`fit_probe` (``linear`` MAE-style, ``ridge``, ``logistic``), :func:`score_readout`.
- Runs behind the CLI: :func:`run_probe` (``geosane probe``), :func:`run_decoders`
  (``geosane probe --mode decoders``), :func:`run_cka` (``geosane cka``), with configs
  :class:`ProbeConfig` / :class:`CkaConfig`.

Names are imported lazily so that ``geosane --help`` does not load torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from geosane._lazy import lazy_exports

_EXPORTS = {
    "cka": (
        "linear_cka",
        "debiased_cka",
        "cka_matrix",
        "gram_linear",
        "unbiased_hsic",
        "MinibatchCKA",
        "MinibatchCKAMatrix",
    ),
    "layers": (
        "LayerRecorder",
        "Pooling",
        "block_layers",
        "sublayer_layers",
        "resolve_layers",
        "pool_output",
        "output_map",
        "model_family",
    ),
    "models": ("ModelSpec", "Backbone", "load_backbone"),
    "data": ("DataSpec", "AnalysisData", "load_analysis_data", "label_subset"),
    "features": ("FeatureCache", "extract_features"),
    "probes": ("LinearProbeConfig", "ProbeFit", "Readout", "fit_probe", "score_readout"),
    "config": ("ProbeConfig", "ProbeSettings", "DecoderSettings", "CkaConfig"),
    "probing": ("ProbeResult", "run_probe"),
    "decoders": ("DecoderResult", "run_decoders"),
    "similarity": ("CkaResult", "run_cka"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "AnalysisData",
    "Backbone",
    "CkaConfig",
    "CkaResult",
    "DataSpec",
    "DecoderResult",
    "DecoderSettings",
    "FeatureCache",
    "LayerRecorder",
    "LinearProbeConfig",
    "MinibatchCKA",
    "MinibatchCKAMatrix",
    "ModelSpec",
    "Pooling",
    "ProbeConfig",
    "ProbeFit",
    "ProbeResult",
    "ProbeSettings",
    "Readout",
    "block_layers",
    "cka_matrix",
    "debiased_cka",
    "extract_features",
    "fit_probe",
    "gram_linear",
    "label_subset",
    "linear_cka",
    "load_analysis_data",
    "load_backbone",
    "model_family",
    "output_map",
    "pool_output",
    "resolve_layers",
    "run_cka",
    "run_decoders",
    "run_probe",
    "score_readout",
    "sublayer_layers",
    "unbiased_hsic",
]


if TYPE_CHECKING:
    from geosane.analysis.cka import (
        MinibatchCKA,
        MinibatchCKAMatrix,
        cka_matrix,
        debiased_cka,
        gram_linear,
        linear_cka,
        unbiased_hsic,
    )
    from geosane.analysis.config import CkaConfig, DecoderSettings, ProbeConfig, ProbeSettings
    from geosane.analysis.data import AnalysisData, DataSpec, label_subset, load_analysis_data
    from geosane.analysis.decoders import DecoderResult, run_decoders
    from geosane.analysis.features import FeatureCache, extract_features
    from geosane.analysis.layers import (
        LayerRecorder,
        Pooling,
        block_layers,
        model_family,
        output_map,
        pool_output,
        resolve_layers,
        sublayer_layers,
    )
    from geosane.analysis.models import Backbone, ModelSpec, load_backbone
    from geosane.analysis.probes import LinearProbeConfig, ProbeFit, Readout, fit_probe, score_readout
    from geosane.analysis.probing import ProbeResult, run_probe
    from geosane.analysis.similarity import CkaResult, run_cka
