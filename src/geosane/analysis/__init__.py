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

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "linear_cka": "cka",
    "debiased_cka": "cka",
    "cka_matrix": "cka",
    "gram_linear": "cka",
    "unbiased_hsic": "cka",
    "MinibatchCKA": "cka",
    "MinibatchCKAMatrix": "cka",
    "LayerRecorder": "layers",
    "Pooling": "layers",
    "block_layers": "layers",
    "sublayer_layers": "layers",
    "resolve_layers": "layers",
    "pool_output": "layers",
    "output_map": "layers",
    "model_family": "layers",
    "ModelSpec": "models",
    "Backbone": "models",
    "load_backbone": "models",
    "DataSpec": "data",
    "AnalysisData": "data",
    "load_analysis_data": "data",
    "label_subset": "data",
    "FeatureCache": "features",
    "extract_features": "features",
    "LinearProbeConfig": "probes",
    "ProbeFit": "probes",
    "Readout": "probes",
    "fit_probe": "probes",
    "score_readout": "probes",
    "ProbeConfig": "config",
    "ProbeSettings": "config",
    "DecoderSettings": "config",
    "CkaConfig": "config",
    "ProbeResult": "probing",
    "run_probe": "probing",
    "DecoderResult": "decoders",
    "run_decoders": "decoders",
    "CkaResult": "similarity",
    "run_cka": "similarity",
}

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


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'geosane.analysis' has no attribute '{name}'")
    value = getattr(importlib.import_module(f"geosane.analysis.{module}"), name)
    globals()[name] = value
    return value


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
