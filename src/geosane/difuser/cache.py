"""On-disk cache of diffusion features, one safetensors file per (image, timestep).

``CACHE_DIR/<key>/`` where ``key`` hashes everything that determines the features (model files,
layers, schedule, mode, seed, conditioning, image size and the images themselves)::

    meta.json                         layers (channels, sizes), timesteps, image count, fingerprint
    features/<index>_t<timestep>.safetensors    {layer: [C, h, w]} for that image and timestep

Files are written atomically, so an interrupted extraction resumes where it stopped and training
the fuser never reruns the UNet.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch.utils.data import Dataset

from geosane.console import make_progress
from geosane.difuser.backbone import DiffusionBackbone, LayerInfo
from geosane.difuser.fusers import feature_key
from geosane.io import read_json, save_safetensors, write_json

__all__ = ["CachedFeatureDataset", "FeatureCache"]

FORMAT = "geosane-difuser-features"


class FeatureCache:
    """Features of ``images`` (``[N, C, S, S]`` in [-1, 1]) under ``backbone``, cached in ``root``."""

    def __init__(
        self,
        root: str | Path,
        backbone: DiffusionBackbone,
        images: torch.Tensor,
        images_digest: str,
        metadata: torch.Tensor | None = None,
    ) -> None:
        """``metadata``: ``[N, num_metadata]`` per-image DiffusionSat values (else the config's, if any)."""
        self.backbone = backbone
        self.images = images
        if metadata is not None and tuple(metadata.shape) != (int(images.shape[0]), backbone.metadata_values):
            raise ValueError(
                f"metadata has shape {tuple(metadata.shape)}; expected [{images.shape[0]}, {backbone.metadata_values}]"
            )
        self.metadata = metadata
        fingerprint: dict[str, Any] = {
            "backbone": backbone.fingerprint(),
            "images": images_digest,
            "count": int(images.shape[0]),
        }
        if metadata is not None:
            fingerprint["metadata"] = hashlib.sha256(
                metadata.float().contiguous().numpy().tobytes()
            ).hexdigest()
        blob = json.dumps(fingerprint, sort_keys=True, default=str).encode()
        self.key = hashlib.sha256(blob).hexdigest()[:16]
        self.directory = Path(root).expanduser() / self.key
        self.fingerprint = fingerprint
        self.timesteps: list[int] = list(backbone.save_timesteps)
        self.layers: list[LayerInfo] = list(backbone.layers)
        self.dtype = getattr(torch, backbone.config.cache_dtype)

    def path(self, index: int, timestep: int) -> Path:
        return self.directory / "features" / f"{index:06d}_t{timestep:04d}.safetensors"

    def missing(self) -> list[int]:
        """Image indices with at least one timestep file not yet written."""
        return [
            i
            for i in range(int(self.images.shape[0]))
            if not all(self.path(i, t).is_file() for t in self.timesteps)
        ]

    def build(self, batch_size: int | None = None, progress: bool = True) -> FeatureCache:
        """Extract and write the features of every image not cached yet."""
        todo = self.missing()
        meta = self.directory / "meta.json"
        if not meta.is_file():
            write_json(meta, self._meta())
        if not todo:
            return self
        batch_size = batch_size or self.backbone.config.batch_size
        with make_progress() as bar:
            task = bar.add_task("UNet features", total=len(todo), status=self.key, visible=progress)
            for start in range(0, len(todo), batch_size):
                idx = todo[start : start + batch_size]
                seeds = [self.backbone.config.seed + i for i in idx]
                rows = self.metadata[idx] if self.metadata is not None else None
                feats = self.backbone.extract(self.images[idx], noise_seeds=seeds, metadata=rows)
                for j, i in enumerate(idx):
                    for t in self.timesteps:
                        tensors = {name: fmap[j].to(self.dtype).cpu() for name, fmap in feats[t].items()}
                        save_safetensors(tensors, self.path(i, t))
                bar.advance(task, len(idx))
        return self

    def _meta(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": 1,
            "key": self.key,
            "num_images": int(self.images.shape[0]),
            "timesteps": self.timesteps,
            "layers": [info.to_dict() for info in self.layers],
            "dtype": self.backbone.config.cache_dtype,
            "fingerprint": self.fingerprint,
        }

    def meta(self) -> dict[str, Any]:
        return read_json(self.directory / "meta.json")

    def load(self, index: int) -> dict[str, torch.Tensor]:
        """All cached maps of image ``index`` as float32, keyed ``t{timestep}/{layer}``."""
        out = {}
        for t in self.timesteps:
            for name, tensor in load_file(str(self.path(index, t))).items():
                out[feature_key(t, name)] = tensor.float()
        return out

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in (self.directory / "features").glob("*.safetensors"))


class CachedFeatureDataset(Dataset[tuple[dict[str, torch.Tensor], torch.Tensor]]):
    """``(features, target)`` for the images ``indices`` of a built :class:`FeatureCache`."""

    def __init__(self, cache: FeatureCache, indices: Any, targets: torch.Tensor) -> None:
        self.cache = cache
        self.indices = [int(i) for i in indices]
        self.targets = targets

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        i = self.indices[k]
        return self.cache.load(i), self.targets[i]
