"""The weight-space autoencoder: model, losses, permutation views, Lightning training, embeddings."""

from geosane.autoencoder.config import (
    PRESETS,
    AutoencoderConfig,
    DataConfig,
    LossConfig,
    ModelConfig,
    TrainConfig,
    load_autoencoder_config,
)
from geosane.autoencoder.io import load_autoencoder, save_autoencoder
from geosane.autoencoder.losses import noisy_view, nt_xent, reconstruction_loss
from geosane.autoencoder.model import WeightAutoencoder
from geosane.autoencoder.permutation import (
    PermutationGroup,
    find_permutation_groups,
    permute_state_dict,
    random_permutations,
)
from geosane.autoencoder.windows import decode_sequence, encode_sequence, halo_windows

__all__ = [
    "PRESETS",
    "AutoencoderConfig",
    "AutoencoderModule",
    "DataConfig",
    "Embeddings",
    "LossConfig",
    "ModelConfig",
    "PermutationGroup",
    "TokenWindowDataModule",
    "TrainConfig",
    "TrainResult",
    "WeightAutoencoder",
    "benchmark_training",
    "decode_sequence",
    "embed_store",
    "encode_sequence",
    "find_permutation_groups",
    "halo_windows",
    "load_autoencoder",
    "load_autoencoder_config",
    "noisy_view",
    "nt_xent",
    "permute_state_dict",
    "probe_property",
    "random_permutations",
    "reconstruction_loss",
    "reconstruction_metrics",
    "save_autoencoder",
    "train",
]

_LAZY = {  # Lightning-dependent parts load on first use so that `import geosane.autoencoder` stays light
    "AutoencoderModule": "geosane.autoencoder.module",
    "TokenWindowDataModule": "geosane.autoencoder.data",
    "TrainResult": "geosane.autoencoder.train",
    "train": "geosane.autoencoder.train",
    "Embeddings": "geosane.autoencoder.embed",
    "embed_store": "geosane.autoencoder.embed",
    "probe_property": "geosane.autoencoder.embed",
    "benchmark_training": "geosane.autoencoder.bench",
    "reconstruction_metrics": "geosane.autoencoder.evaluate",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'geosane.autoencoder' has no attribute {name!r}")
