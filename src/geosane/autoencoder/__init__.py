"""The weight-space autoencoder: model, losses, permutation views, Lightning training, embeddings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from geosane._lazy import lazy_exports

if TYPE_CHECKING:
    from geosane.autoencoder.bench import benchmark_training
    from geosane.autoencoder.config import (
        PRESETS,
        AutoencoderConfig,
        DataConfig,
        LossConfig,
        ModelConfig,
        TrainConfig,
        load_autoencoder_config,
    )
    from geosane.autoencoder.data import TokenWindowDataModule
    from geosane.autoencoder.embed import Embeddings, embed_store, probe_property
    from geosane.autoencoder.evaluate import reconstruction_metrics
    from geosane.autoencoder.io import load_autoencoder, save_autoencoder
    from geosane.autoencoder.losses import noisy_view, nt_xent, reconstruction_loss
    from geosane.autoencoder.model import WeightAutoencoder
    from geosane.autoencoder.module import AutoencoderModule
    from geosane.autoencoder.permutation import (
        PermutationGroup,
        find_permutation_groups,
        permute_state_dict,
        random_permutations,
    )
    from geosane.autoencoder.training import TrainResult, train
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

# Names load on first use (PEP 562) so that `geosane --help` does not import torch.
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "config": (
            "PRESETS",
            "AutoencoderConfig",
            "DataConfig",
            "LossConfig",
            "ModelConfig",
            "TrainConfig",
            "load_autoencoder_config",
        ),
        "io": ("load_autoencoder", "save_autoencoder"),
        "losses": ("noisy_view", "nt_xent", "reconstruction_loss"),
        "model": ("WeightAutoencoder",),
        "permutation": (
            "PermutationGroup",
            "find_permutation_groups",
            "permute_state_dict",
            "random_permutations",
        ),
        "windows": ("decode_sequence", "encode_sequence", "halo_windows"),
        "module": ("AutoencoderModule",),
        "data": ("TokenWindowDataModule",),
        "training": ("TrainResult", "train"),
        "embed": ("Embeddings", "embed_store", "probe_property"),
        "bench": ("benchmark_training",),
        "evaluate": ("reconstruction_metrics",),
    },
)
