"""DiffusionSat's ``SatUNet`` (metadata-conditioned UNet) and weights-only loading of diffusers models.

DiffusionSat (Khanna et al., ICLR 2024) ships its UNet as ``SatUNet`` in its own fork of diffusers
0.17: a Stable Diffusion 2 UNet plus ``metadata_embedding``, one ``TimestepEmbedding`` MLP per
metadata value (longitude, latitude, GSD, cloud cover, year, month, day). Each value goes through
the UNet's own sinusoidal ``time_proj`` and its MLP; the results are summed into the time
embedding. Its ``unet/config.json`` has ``_class_name: SatUNet`` and the extra fields
``use_metadata`` / ``num_metadata``; its weights hold ``metadata_embedding.{i}.linear_{1,2}.*``.

diffusers has no ``SatUNet`` class, so :class:`SatUNet` here subclasses diffusers'
``UNet2DConditionModel`` and adds exactly those modules (same names and shapes, so the published
state dict loads key for key), and feeds the metadata through ``get_class_embed`` (the sum
``emb + class_emb + metadata_emb`` is what DiffusionSat computes). No DiffusionSat code is run.

:func:`load_diffusers_model` builds any supported diffusers model from its ``config.json`` and
loads its weights from ``*.safetensors`` or a weights-only pickle (``.bin`` / ``.ckpt`` /
``.pt``, read with ``torch.load(weights_only=True)``: a pickle that needs code is refused unrun).
Every key of the file must be used and every parameter of the model filled (one-line error naming
the first missing and the first unexpected key).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.embeddings import TimestepEmbedding
from torch import nn

from geosane.arch.keys import key_mismatch
from geosane.errors import ConfigError, SourceError

__all__ = [
    "DIFFUSIONSAT_METADATA",
    "SatUNet",
    "diffusionsat_metadata",
    "find_weights",
    "load_diffusers_model",
    "quiet_diffusers",
    "read_state_dict",
]

# DiffusionSat's metadata order (diffusionsat/data_util.py: metadata_normalize)
DIFFUSIONSAT_METADATA = ("longitude", "latitude", "gsd", "cloud_cover", "year", "month", "day")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")
_SAT_FIELDS = ("use_metadata", "num_metadata")  # SatUNet's config fields diffusers does not know


def diffusionsat_metadata(
    longitude: float,
    latitude: float,
    gsd: float,
    cloud_cover: float,
    year: int,
    month: int,
    day: int,
) -> list[float]:
    """The 7 numbers DiffusionSat's UNet takes: its ``metadata_normalize`` of the raw values.

    Degrees longitude / latitude, GSD in metres, cloud cover as a fraction (0.25 = 25 %), a calendar
    date. DiffusionSat's loaders shift longitude by +180, latitude by +90 and the year by -1980,
    then scale each value to [0, 1000]: ``lon/360, lat/180, gsd/1 m, cloud, year/120, month/12,
    day/31`` (x 1000).
    """
    checks = {
        "longitude": -180.0 <= longitude <= 180.0,
        "latitude": -90.0 <= latitude <= 90.0,
        "gsd": gsd > 0 and math.isfinite(gsd),
        "cloud_cover": 0.0 <= cloud_cover <= 1.0,
        "year": 1980 <= year <= 2100,
        "month": 1 <= month <= 12,
        "day": 1 <= day <= 31,
    }
    bad = [name for name, ok in checks.items() if not ok]
    if bad:
        ranges = {
            "longitude": "[-180, 180] degrees",
            "latitude": "[-90, 90] degrees",
            "gsd": "metres per pixel, > 0",
            "cloud_cover": "a fraction in [0, 1]",
            "year": "1980..2100",
            "month": "1..12",
            "day": "1..31",
        }
        values = {"longitude": longitude, "latitude": latitude, "gsd": gsd, "cloud_cover": cloud_cover,
                  "year": year, "month": month, "day": day}  # fmt: skip
        first = bad[0]
        raise ConfigError(f"metadata {first} = {values[first]!r} is out of range (expected {ranges[first]})")
    scale = 1000.0
    return [
        (longitude + 180.0) / 360.0 * scale,
        (latitude + 90.0) / 180.0 * scale,
        gsd / 1.0 * scale,
        cloud_cover * scale,
        (year - 1980) / (2100 - 1980) * scale,
        month / 12.0 * scale,
        day / 31.0 * scale,
    ]


# diffusers is typed loosely (its config and blocks are read by attribute): the base is taken as Any
_UNetBase: Any = UNet2DConditionModel


class SatUNet(_UNetBase):  # type: ignore[misc]
    """DiffusionSat's metadata-conditioned UNet on diffusers' ``UNet2DConditionModel``.

    diffusers has no SatUNet, and DiffusionSat's own class lives in a fork of an old diffusers, so
    geosane adds the ``metadata_embedding`` modules to the current class (see the module doc).
    Build it with :meth:`from_sat_config`; call it like the parent with ``metadata=[B, num_metadata]``
    (the normalised values of :func:`diffusionsat_metadata`).
    """

    metadata_embedding: nn.ModuleList | None
    num_metadata: int

    @classmethod
    def from_sat_config(cls, config: Mapping[str, Any]) -> SatUNet:
        """A SatUNet from DiffusionSat's ``unet/config.json`` (``use_metadata``, ``num_metadata``)."""
        base = {k: v for k, v in config.items() if k not in _SAT_FIELDS}
        unet = cls.from_config(base)
        assert isinstance(unet, SatUNet)
        use = bool(config.get("use_metadata", True))  # DiffusionSat's defaults: True, 7
        unet.add_metadata_embedding(int(config.get("num_metadata", 7)) if use else 0)
        return unet

    def add_metadata_embedding(self, num_metadata: int) -> None:
        """Add ``num_metadata`` ``TimestepEmbedding`` MLPs (``metadata_embedding.{i}``); 0 adds none."""
        if self.config.class_embeddings_concat or self.config.time_embedding_type != "positional":
            raise SourceError(
                "SatUNet metadata embedding needs time_embedding_type 'positional' and no class_embeddings_concat"
            )
        # DiffusionSat: TimestepEmbedding(timestep_input_dim, time_embed_dim), the time MLP's own sizes
        in_dim = int(self.time_embedding.linear_1.in_features)
        out_dim = int(self.time_embedding.linear_1.out_features)
        self.num_metadata = int(num_metadata)
        self.metadata_embedding = (
            nn.ModuleList(TimestepEmbedding(in_dim, out_dim) for _ in range(num_metadata))
            if num_metadata
            else None
        )
        if self.metadata_embedding is not None:
            # DiffusionSat registers it before down_blocks: move it there, so the key order is the published one
            modules: dict[str, nn.Module | None] = nn.Module.__getattribute__(self, "_modules")
            order = [k for k in modules if k != "metadata_embedding"]
            at = order.index("down_blocks") if "down_blocks" in order else len(order)
            order.insert(at, "metadata_embedding")
            self._modules = {k: modules[k] for k in order}
        self.register_to_config(use_metadata=num_metadata > 0, num_metadata=self.num_metadata)
        self._metadata: torch.Tensor | None = None

    def embed_metadata(self, metadata: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Sum over values of ``metadata_embedding[i](time_proj(metadata[:, i]))``: ``[B, time_embed_dim]``."""
        assert self.metadata_embedding is not None
        if metadata.ndim != 2 or metadata.shape[1] != self.num_metadata:
            raise ConfigError(
                f"metadata has shape {tuple(metadata.shape)}; this SatUNet expects [batch, {self.num_metadata}] "
                f"({', '.join(DIFFUSIONSAT_METADATA[: self.num_metadata])})"
            )
        batch = metadata.shape[0]
        proj = self.time_proj(metadata.reshape(-1)).reshape(batch, self.num_metadata, -1).to(dtype)
        total = torch.zeros((), dtype=dtype, device=metadata.device)
        for i, mlp in enumerate(self.metadata_embedding):
            total = total + mlp(proj[:, i, :])
        return total

    def get_class_embed(self, sample: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor | None:
        class_emb: torch.Tensor | None = super().get_class_embed(sample=sample, class_labels=class_labels)
        if self.metadata_embedding is None:
            return class_emb
        if self._metadata is None:
            raise ConfigError(
                f"this SatUNet embeds {self.num_metadata} metadata values "
                f"({', '.join(DIFFUSIONSAT_METADATA[: self.num_metadata])}) and none were given"
            )
        md = self.embed_metadata(self._metadata.to(sample.device), sample.dtype)
        if md.shape[0] != sample.shape[0]:
            md = md.expand(sample.shape[0], -1)
        return md if class_emb is None else class_emb + md

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        *args: Any,
        metadata: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """The parent's forward with DiffusionSat's ``metadata`` ``[B, num_metadata]`` added to the time embedding."""
        self._metadata = metadata
        try:
            return super().forward(sample, timestep, encoder_hidden_states, *args, **kwargs)
        finally:
            self._metadata = None


# ---------------------------------------------------------------------------------------------- loading
@contextmanager
def quiet_diffusers() -> Iterator[None]:
    """Silence diffusers' info/warning chatter (unused config keys, accelerate hints) while loading."""
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        diffusers_logging.set_verbosity(level)


@dataclass(frozen=True)
class WeightFiles:
    """The weight file(s) of one diffusers model directory (shards listed by an index JSON)."""

    paths: tuple[Path, ...]


def find_weights(directory: Path) -> WeightFiles:
    """The model's weights: ``diffusion_pytorch_model.safetensors`` first, then a weights-only ``.bin``.

    Preference: a safetensors file (or its shard index), then a pickled ``.bin`` / ``.ckpt`` /
    ``.pt`` (read weights-only). Several candidate files without an index are ambiguous (an error).
    """
    directory = Path(directory)
    for suffix in WEIGHT_SUFFIXES:
        indexes = sorted(directory.glob(f"*{suffix}.index.json"))
        if indexes:
            try:
                mapping = json.loads(indexes[0].read_text(encoding="utf-8"))["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise SourceError(f"{indexes[0]}: not a weight index ({exc})") from None
            shards = tuple(directory / name for name in sorted(set(mapping.values())))
            missing = [p.name for p in shards if not p.is_file()]
            if missing:
                raise SourceError(f"{indexes[0]} lists {missing[0]}, which is not in {directory}")
            return WeightFiles(shards)
        files = sorted(p for p in directory.glob(f"*{suffix}") if p.is_file())
        if not files:
            continue
        preferred = [p for p in files if p.stem == "diffusion_pytorch_model" or p.stem == "model"]
        if len(preferred) == 1:
            return WeightFiles((preferred[0],))
        if len(files) == 1:
            return WeightFiles((files[0],))
        raise SourceError(
            f"{directory} holds several {suffix} files ({', '.join(p.name for p in files)}) and no index; "
            "keep the model's one weight file"
        )
    raise SourceError(
        f"{directory} holds no weights (expected diffusion_pytorch_model.safetensors, or a weights-only "
        "diffusion_pytorch_model.bin / .ckpt)"
    )


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of one weight file: safetensors, or a pickle read with ``torch.load(weights_only=True)``.

    A Lightning / training ``.ckpt`` that wraps the weights in ``state_dict`` is unwrapped. A pickle
    that needs code to load is refused without running it (:class:`geosane.errors.UnsafeCheckpointError`).
    """
    from geosane.io import load_torch

    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path)))
        except (SafetensorError, OSError) as exc:
            raise SourceError(f"cannot read {path}: {exc}") from None
    obj = load_torch(path)
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SourceError(f"{path} is not a state dict of tensors")
    return {str(k): v for k, v in obj.items()}


def _check_keys(model: nn.Module, state: Mapping[str, torch.Tensor], where: Path) -> None:
    problem = key_mismatch(model.state_dict(), state, expected_name="the model's config")
    if problem:
        raise SourceError(f"{where}: weights do not match the {type(model).__name__} of its config.json: {problem}")


def read_config(directory: Path) -> dict[str, Any]:
    """A model's ``config.json``."""
    path = Path(directory) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SourceError(f"{directory} has no config.json") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise SourceError(f"{path}: invalid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise SourceError(f"{path}: expected a JSON object")
    return config


def load_diffusers_model(cls: Any, directory: Path, config: Mapping[str, Any] | None = None) -> nn.Module:
    """Build ``cls`` (a diffusers model class, or :class:`SatUNet`) from ``directory`` and load its weights.

    Local files only; the weights are safetensors or weights-only pickles; every key must match.
    Old diffusers attention-block key names (``query`` / ``key`` / ``value`` / ``proj_attn`` of
    pre-0.14 VAEs) are renamed by diffusers' own rule, as ``from_pretrained`` would.
    """
    directory = Path(directory)
    config = dict(config if config is not None else read_config(directory))
    files = find_weights(directory)
    with quiet_diffusers():
        try:
            model: nn.Module = cls.from_sat_config(config) if cls is SatUNet else cls.from_config(config)
        except (TypeError, ValueError, KeyError) as exc:
            raise SourceError(f"{directory}/config.json: cannot build {cls.__name__} ({exc})") from None
    state: dict[str, torch.Tensor] = {}
    for path in files.paths:
        state.update(read_state_dict(path))
    fix = getattr(model, "_fix_state_dict_keys_on_load", None)  # diffusers' renaming of old attention keys
    if callable(fix):
        state = dict(fix(dict(state)) or state)
    _check_keys(model, state, files.paths[0] if len(files.paths) == 1 else directory)
    model.load_state_dict(state, strict=True)
    loaded: nn.Module = model.eval()
    return loaded


def ignored_config_fields(cls: Any, config: Mapping[str, Any]) -> list[str]:
    """Config fields ``cls`` does not take (private ``_...`` fields and SatUNet's own excepted)."""
    import inspect

    accepted = set(inspect.signature(cls.__init__).parameters)
    if cls is SatUNet:
        accepted |= set(_SAT_FIELDS)
    return sorted(k for k in config if not k.startswith("_") and k not in accepted)


def metadata_tensor(values: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """``values`` as a float32 ``[B, n]`` tensor (one row for one list)."""
    t = torch.as_tensor(values, dtype=torch.float32)
    return t.reshape(1, -1) if t.ndim == 1 else t
