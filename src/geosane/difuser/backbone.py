"""A frozen diffusion UNet as a feature extractor (forward hooks, DDIM inversion or one-shot noising).

The model directory uses the diffusers layout, so a real DiffusionSat / Stable Diffusion checkpoint
and the DDPM trained by ``geosane difuse pretrain`` load the same way::

    MODEL_DIR/unet/{config.json, *.safetensors}     UNet2DConditionModel (latent) or UNet2DModel (pixel)
    MODEL_DIR/vae/...                               AutoencoderKL (latent models only)
    MODEL_DIR/scheduler/scheduler_config.json       noise schedule (any diffusers scheduler config)
    MODEL_DIR/text_encoder/, MODEL_DIR/tokenizer/   CLIP text encoder (only for ``conditioning.prompt``)

A bare UNet directory (``config.json`` + weights at the top) works too. Weights are safetensors or
weights-only pickles (``diffusion_pytorch_model.bin`` / ``.ckpt``, read with
``torch.load(weights_only=True)``); nothing is fetched from the network and no remote code is run.
DiffusionSat's ``SatUNet`` loads as :class:`geosane.difuser.satunet.SatUNet` with its metadata
embedding, which is then fed (``conditioning.satellite`` / ``metadata_file`` / ``metadata``).

Hooked layers are named ``up{L}_res{R}`` (the second conv of ResNet R in up-block L) and
``up{L}_attn{R}`` (the self-attention output: ``attn1`` of a transformer block, tokens reshaped to a
map, or a pixel UNet's ``Attention`` block). Timesteps follow diffusers' DDIM schedule of
``num_timesteps`` steps; features at a timestep come from the UNet call at that timestep along a
deterministic DDIM inversion (``DDIMInverseScheduler``) or after adding seeded noise once.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from geosane.console import console
from geosane.difuser.config import BackboneConfig, ConditioningConfig, SatelliteMetadata
from geosane.difuser.satunet import (
    DIFFUSIONSAT_METADATA,
    SatUNet,
    diffusionsat_metadata,
    find_weights,
    ignored_config_fields,
    load_diffusers_model,
    metadata_tensor,
    quiet_diffusers,
)
from geosane.errors import ConfigError, SourceError

__all__ = [
    "DiffusionBackbone",
    "LayerInfo",
    "find_unet_dir",
    "list_hook_layers",
    "load_unet",
    "select_layers",
]

_PIXEL_CLASSES = {"UNet2DModel"}
_CONDITION_CLASSES = {"UNet2DConditionModel", "SatUNet"}


@dataclass(frozen=True)
class LayerInfo:
    """A hooked layer: short name, module path, kind, up-block level, output channels and map size."""

    name: str
    module: str
    kind: str
    level: int
    channels: int = 0
    size: tuple[int, int] = (0, 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "module": self.module,
            "kind": self.kind,
            "level": self.level,
            "channels": self.channels,
            "size": list(self.size),
        }


def _hook_points(unet: nn.Module) -> list[tuple[LayerInfo, nn.Module, nn.Module | None]]:
    """``(info, module to hook, module whose input gives the map size or None)`` for every layer."""
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    points: list[tuple[LayerInfo, nn.Module, nn.Module | None]] = []
    for level, block in enumerate(cast(nn.ModuleList, unet.up_blocks)):
        for r, resnet in enumerate(getattr(block, "resnets", None) or []):
            info = LayerInfo(f"up{level}_res{r}", f"up_blocks.{level}.resnets.{r}.conv2", "res", level)
            points.append((info, resnet.conv2, None))
        for r, attn in enumerate(getattr(block, "attentions", None) or []):
            if isinstance(attn, Transformer2DModel):
                blocks = list(attn.transformer_blocks)
                for j, tb in enumerate(blocks):
                    suffix = f"_{j}" if len(blocks) > 1 else ""
                    module = f"up_blocks.{level}.attentions.{r}.transformer_blocks.{j}.attn1"
                    info = LayerInfo(f"up{level}_attn{r}{suffix}", module, "attn", level)
                    points.append((info, tb.attn1, attn))
            else:
                info = LayerInfo(f"up{level}_attn{r}", f"up_blocks.{level}.attentions.{r}", "attn", level)
                points.append((info, attn, None))
    return points


def list_hook_layers(unet: nn.Module) -> list[str]:
    """Names of every layer a feature hook can be put on (``up{L}_res{R}``, ``up{L}_attn{R}``)."""
    return [info.name for info, _, _ in _hook_points(unet)]


def select_layers(available: list[str], patterns: list[str]) -> list[str]:
    """Layers matching ``patterns`` (names or globs), in model order; unmatched patterns are an error."""
    unmatched = [p for p in patterns if not fnmatch.filter(available, p)]
    if unmatched:
        raise ConfigError(
            f"backbone.layer_idxs {unmatched} match(es) no layer of this UNet; valid layers: {', '.join(available)}"
        )
    return [name for name in available if any(fnmatch.fnmatchcase(name, p) for p in patterns)]


def find_unet_dir(model_dir: Path) -> tuple[Path, str]:
    """The UNet sub-directory of a diffusers model directory and its ``_class_name``."""
    model_dir = Path(model_dir).expanduser()
    if not model_dir.is_dir():
        raise SourceError(f"diffusion model directory not found: {model_dir}")
    for candidate in (model_dir / "unet", model_dir):
        config = candidate / "config.json"
        if config.is_file():
            try:
                class_name = str(json.loads(config.read_text(encoding="utf-8")).get("_class_name", ""))
            except json.JSONDecodeError as exc:
                raise SourceError(f"{config}: invalid JSON ({exc})") from None
            if class_name in _PIXEL_CLASSES | _CONDITION_CLASSES:
                find_weights(candidate)  # a clear error now when the directory holds no weights
                return candidate, class_name
            if candidate != model_dir:
                raise SourceError(f"{config}: unsupported UNet class '{class_name}'")
    # DiffusionSat's training output keeps the UNet in checkpoint-<step>/unet (accelerate save_state)
    nested = sorted(p.parent for p in model_dir.glob("checkpoint-*/unet*/config.json"))
    hint = (
        f"; it holds {nested[-1].relative_to(model_dir)}: set backbone.unet_dir={nested[-1]}"
        if nested
        else ""
    )
    raise SourceError(
        f"{model_dir} is not a diffusers UNet directory (expected unet/config.json or config.json "
        f"of a {', '.join(sorted(_PIXEL_CLASSES | _CONDITION_CLASSES))}){hint}"
    )


def load_unet(unet_dir: Path, class_name: str) -> nn.Module:
    """Load a UNet2DModel / UNet2DConditionModel / DiffusionSat SatUNet from ``unet_dir`` (local files only).

    Every weight in the file must be used: a key the model does not have (or one it lacks) is an
    error naming the first of each. Config fields the class does not take are listed in a note.
    """
    from diffusers import UNet2DConditionModel, UNet2DModel

    classes: dict[str, Any] = {"UNet2DModel": UNet2DModel, "UNet2DConditionModel": UNet2DConditionModel,
                               "SatUNet": SatUNet}  # fmt: skip
    cls = classes[class_name]
    config = json.loads((Path(unet_dir) / "config.json").read_text(encoding="utf-8"))
    ignored = ignored_config_fields(cls, config)
    if ignored:
        console.print(
            f"[yellow]note:[/] {unet_dir}/config.json fields that {cls.__name__} does not take (ignored): {ignored}"
        )
    return load_diffusers_model(cls, Path(unet_dir), config)


def _load_scheduler_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "scheduler" / "scheduler_config.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    console.print(f"[yellow]note:[/] {model_dir} has no scheduler/; using diffusers' default DDIM schedule")
    return {}


class DiffusionBackbone(nn.Module):
    """Frozen UNet (+ VAE) with forward hooks; :meth:`extract` returns features per timestep and layer."""

    def __init__(
        self,
        unet: nn.Module,
        config: BackboneConfig,
        scheduler_config: dict[str, Any] | None = None,
        vae: nn.Module | None = None,
        context: torch.Tensor | None = None,
        class_labels: torch.Tensor | None = None,
        metadata: torch.Tensor | None = None,
    ) -> None:
        from diffusers import DDIMInverseScheduler, DDIMScheduler, UNet2DConditionModel

        super().__init__()
        # diffusers models: their config and blocks are read by attribute (Any, not nn.Module's Tensor | Module)
        self.unet: Any = unet.eval().requires_grad_(False)
        self.vae: Any = vae.eval().requires_grad_(False) if vae is not None else None
        self.config = config
        self.conditional = isinstance(unet, UNet2DConditionModel)  # SatUNet included
        with quiet_diffusers():
            self.scheduler = DDIMScheduler.from_config(scheduler_config or {})
            self.scheduler.set_timesteps(config.num_timesteps)
            self.inverse_scheduler = DDIMInverseScheduler.from_config(self.scheduler.config)
            self.inverse_scheduler.set_timesteps(config.num_timesteps)
        self.schedule = sorted(int(t) for t in self.scheduler.timesteps)
        inverse = sorted(int(t) for t in self.inverse_scheduler.timesteps)
        if inverse != self.schedule:  # both are diffusers' spacing of the same config; guard anyway
            raise SourceError("DDIM and inverse DDIM schedules differ for this scheduler config")
        bad = [t for t in config.save_timesteps if t not in self.schedule]
        if bad:
            shown = ", ".join(str(t) for t in self.schedule)
            raise ConfigError(
                f"backbone.save_timesteps {bad} not in the {config.num_timesteps}-step DDIM schedule "
                f"(valid: {shown})"
            )
        self.save_timesteps = sorted(set(config.save_timesteps))
        self._points = _hook_points(self.unet)
        self.available_layers = [info.name for info, _, _ in self._points]
        self.layer_names = select_layers(self.available_layers, list(config.layer_idxs))
        self._context = self._check_context(context)
        self._class_labels = self._check_class_labels(class_labels)
        self._metadata = self._check_metadata(metadata)
        self.layers = self._probe_layers()

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_config(cls, config: BackboneConfig, device: str | torch.device = "cpu") -> DiffusionBackbone:
        """Load the UNet (+ VAE, scheduler, text encoder) from ``config.model_dir`` (the UNet from
        ``config.unet_dir`` when set); safetensors or weights-only pickles, local files only."""
        from diffusers import AutoencoderKL

        if config.model_dir is None:
            raise ConfigError("backbone.model_dir is not set (a diffusers model directory)")
        model_dir = Path(config.model_dir).expanduser()
        if not model_dir.is_dir():
            raise SourceError(f"diffusion model directory not found: {model_dir}")
        unet_dir, class_name = find_unet_dir(
            Path(config.unet_dir).expanduser() if config.unet_dir else model_dir
        )
        unet: Any = load_unet(unet_dir, class_name)  # config read by attribute
        vae = None
        if (model_dir / "vae" / "config.json").is_file() and unet_dir.resolve() != model_dir.resolve():
            vae = load_diffusers_model(AutoencoderKL, model_dir / "vae")
        elif int(unet.config.in_channels) != 3:
            raise SourceError(f"{model_dir}: a latent UNet ({unet.config.in_channels} channels) needs vae/")
        context = _conditioning_context(config.conditioning, model_dir, unet)
        labels = None if isinstance(unet, SatUNet) else _metadata_labels(config.conditioning, unet)
        metadata = sat_metadata(config.conditioning, unet)
        backbone = cls(unet, config, _load_scheduler_config(model_dir), vae, context, labels, metadata)
        return backbone.to(device)

    # ------------------------------------------------------------------ conditioning
    def _check_context(self, context: torch.Tensor | None) -> torch.Tensor | None:
        if not self.conditional:
            if context is not None:
                raise ConfigError(
                    "a prompt / prompt_embedding needs a UNet2DConditionModel; this UNet is unconditional"
                )
            return None
        dim = int(self.unet.config.cross_attention_dim)
        if context is None:
            return torch.zeros(1, 1, dim)
        context = context.float()
        if context.ndim == 2:
            context = context[None]
        if context.ndim != 3 or context.shape[0] != 1 or context.shape[-1] != dim:
            raise ConfigError(
                f"conditioning embedding has shape {tuple(context.shape)}; the UNet expects [tokens, {dim}]"
            )
        return context

    def _check_class_labels(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        if labels is None:
            return None
        if getattr(self.unet, "class_embedding", None) is None:
            raise ConfigError("conditioning.metadata given but this UNet has no class/metadata embedding")
        return labels.float().reshape(1, -1)

    @property
    def metadata_values(self) -> int:
        """How many metadata values each image needs (a DiffusionSat SatUNet's ``num_metadata``; else 0)."""
        if isinstance(self.unet, SatUNet) and self.unet.metadata_embedding is not None:
            return int(self.unet.num_metadata)
        return 0

    def _check_metadata(self, metadata: torch.Tensor | None) -> torch.Tensor | None:
        """The default metadata row ``[1, n]`` of a SatUNet; refused when the UNet needs it and it is None.

        ``None`` with ``conditioning.metadata_file`` set: every :meth:`extract` call brings its rows.
        """
        n = self.metadata_values
        if n == 0:
            if metadata is not None:
                raise ConfigError(
                    "conditioning.satellite / metadata_file need a DiffusionSat SatUNet with a metadata embedding; "
                    "this UNet has none"
                )
            return None
        if metadata is None:
            if self.config.conditioning.metadata_file is not None:
                return None  # per image: extract() is given each image's row
            raise ConfigError(
                f"this DiffusionSat SatUNet embeds {n} metadata values ({', '.join(DIFFUSIONSAT_METADATA[:n])}) "
                "and none were given: set backbone.conditioning.satellite (longitude, latitude, gsd, cloud_cover, "
                "year, month, day), conditioning.metadata_file (one CSV row per image), or conditioning.metadata "
                f"({n} normalised numbers; all zeros is DiffusionSat's null metadata)"
            )
        metadata = metadata_tensor(metadata)
        if metadata.shape != (1, n):
            raise ConfigError(
                f"conditioning.metadata has {metadata.shape[-1]} values; this SatUNet expects {n}"
            )
        return metadata

    # ------------------------------------------------------------------ features
    def _probe_layers(self) -> list[LayerInfo]:
        size = self.config.image_size
        x = torch.zeros(1, self._image_channels(), size, size)
        probe = torch.zeros(1, self.metadata_values) if self.metadata_values else None
        captured = self._run_hooked(self.encode(x), self.save_timesteps[0], probe)[0]
        infos = {info.name: info for info, _, _ in self._points}
        out = []
        for name in self.layer_names:
            fmap = captured[name]
            out.append(
                LayerInfo(
                    name,
                    infos[name].module,
                    infos[name].kind,
                    infos[name].level,
                    int(fmap.shape[1]),
                    (int(fmap.shape[2]), int(fmap.shape[3])),
                )
            )
        return out

    def _image_channels(self) -> int:
        if self.vae is not None:
            return int(self.vae.config.in_channels)
        return int(self.unet.config.in_channels)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> the UNet's input space (VAE latent mean x scaling factor, or pixels)."""
        images = images.to(self.device, torch.float32)
        if self.vae is None:
            return images
        latent = self.vae.encode(images).latent_dist.mean
        return latent * float(getattr(self.vae.config, "scaling_factor", 0.18215))

    def _unet_kwargs(self, batch: int, metadata: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        kwargs: dict[str, torch.Tensor] = {}
        if self.metadata_values:
            rows = metadata if metadata is not None else self._metadata
            if rows is None:
                raise ConfigError(
                    f"this SatUNet needs metadata for every image ({', '.join(DIFFUSIONSAT_METADATA[: self.metadata_values])}); "
                    "extract() was called without it"
                )
            rows = metadata_tensor(rows).to(self.device)
            if rows.shape[0] not in (1, batch) or rows.shape[1] != self.metadata_values:
                raise ConfigError(
                    f"metadata has shape {tuple(rows.shape)}; expected [{batch}, {self.metadata_values}] for this batch"
                )
            kwargs["metadata"] = rows.expand(batch, -1)
        if self._context is not None:
            kwargs["encoder_hidden_states"] = self._context.to(self.device).expand(batch, -1, -1)
        if self._class_labels is not None:
            kwargs["class_labels"] = self._class_labels.to(self.device).expand(batch, -1)
        return kwargs

    def _run_hooked(
        self, sample: torch.Tensor, timestep: int, metadata: torch.Tensor | None = None
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """One UNet call; returns the hooked maps of the selected layers and the noise prediction."""
        captured: dict[str, torch.Tensor] = {}
        sizes: dict[int, tuple[int, int]] = {}
        handles = []
        wanted = set(self.layer_names)

        def size_hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            sizes[id(module)] = (int(hidden.shape[-2]), int(hidden.shape[-1]))

        def make_hook(name: str, owner: nn.Module | None) -> Any:
            def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
                out = output[0] if isinstance(output, tuple) else output
                if out.ndim == 3:  # tokens [B, h*w, C] -> map [B, C, h, w]
                    assert owner is not None
                    h, w = sizes[id(owner)]
                    out = out.transpose(1, 2).reshape(out.shape[0], out.shape[2], h, w)
                captured[name] = out.detach()

            return hook

        try:
            for info, module, owner in self._points:
                if info.name not in wanted:
                    continue
                if owner is not None:
                    handles.append(owner.register_forward_pre_hook(size_hook, with_kwargs=True))
                handles.append(module.register_forward_hook(make_hook(info.name, owner)))
            t = torch.full((sample.shape[0],), timestep, device=sample.device, dtype=torch.long)
            with torch.no_grad():
                noise_pred = self.unet(sample, t, **self._unet_kwargs(sample.shape[0], metadata)).sample
        finally:
            for handle in handles:
                handle.remove()
        return captured, noise_pred

    @torch.no_grad()
    def extract(
        self, images: torch.Tensor, noise_seeds: list[int] | None = None, metadata: torch.Tensor | None = None
    ) -> dict[int, dict[str, torch.Tensor]]:
        """Features ``{timestep: {layer: [B, C, h, w]}}`` of images in [-1, 1] at ``save_timesteps``.

        ``metadata``: ``[B, num_metadata]`` DiffusionSat values per image (normalised, see
        :func:`geosane.difuser.satunet.diffusionsat_metadata`); default: the config's.

        ``inversion``: deterministic DDIM inversion from the clean input, features taken from the
        UNet call at each save timestep. ``generation``: noise (one draw per image, seeded by
        ``noise_seeds[i]``, default ``config.seed + i``) added once per save timestep.
        """
        x0 = self.encode(images)
        batch = x0.shape[0]
        out: dict[int, dict[str, torch.Tensor]] = {}
        if self.config.diffusion_mode == "generation":
            seeds = noise_seeds if noise_seeds is not None else [self.config.seed + i for i in range(batch)]
            noise = torch.stack(
                [torch.randn(x0.shape[1:], generator=torch.Generator().manual_seed(int(s))) for s in seeds]
            ).to(x0.device)
            for t in self.save_timesteps:
                noisy = self.scheduler.add_noise(x0, noise, torch.tensor([t] * batch, device=x0.device))
                out[t] = self._run_hooked(noisy, t, metadata)[0]
            return out
        sample = x0
        last = self.save_timesteps[-1]
        for t in (int(v) for v in self.inverse_scheduler.timesteps):
            captured, noise_pred = self._run_hooked(sample, t, metadata)
            if t in self.save_timesteps:
                out[t] = captured
            if t >= last:
                break
            sample = self.inverse_scheduler.step(noise_pred, t, sample).prev_sample
        return out

    def fingerprint(self) -> dict[str, Any]:
        """What determines the features (for cache keys): config, model files and schedule."""
        model_dir = Path(self.config.model_dir).expanduser().resolve() if self.config.model_dir else None
        files = []
        roots = [model_dir] if model_dir is not None else []
        if self.config.unet_dir is not None:
            unet_dir = Path(self.config.unet_dir).expanduser().resolve()
            if model_dir is None or not unet_dir.is_relative_to(model_dir):
                roots.append(unet_dir)
        for root in roots:
            for path in sorted(root.rglob("*")):
                if path.is_file() and not path.name.startswith("."):
                    stat = path.stat()
                    name = str(path.relative_to(root)) if root == model_dir else str(path)
                    files.append([name, stat.st_size, stat.st_mtime_ns])
        cond = self.config.conditioning
        return {
            "model_dir": str(model_dir),
            "files": files,
            "unet": json.loads(json.dumps(dict(self.unet.config), default=str)),
            "image_size": self.config.image_size,
            "num_timesteps": self.config.num_timesteps,
            "save_timesteps": self.save_timesteps,
            "diffusion_mode": self.config.diffusion_mode,
            "layers": self.layer_names,
            "seed": self.config.seed,
            "prompt": cond.prompt,
            "prompt_embedding": str(cond.prompt_embedding) if cond.prompt_embedding else None,
            "context_sum": float(self._context.double().sum()) if self._context is not None else None,
            "metadata": cond.metadata,
            "sat_metadata": self._metadata.tolist() if self._metadata is not None else None,
            "metadata_file": str(cond.metadata_file) if cond.metadata_file else None,
            "dtype": self.config.cache_dtype,
        }


def _from_pretrained(cls: Any, path: Path) -> nn.Module:
    """``cls.from_pretrained`` on local files; a pickled weight file is first checked to be weights-only."""
    safetensors = any(Path(path).glob("*.safetensors"))
    if not safetensors:
        from geosane.io import load_torch

        for pickled in sorted(Path(path).glob("*.bin")):
            load_torch(pickled)  # refuses a pickle that needs code, before transformers reads it
    kwargs: dict[str, Any] = {"use_safetensors": safetensors, "local_files_only": True}
    if cls.__module__.startswith("diffusers"):
        kwargs["low_cpu_mem_usage"] = False
    try:
        with quiet_diffusers():
            return cls.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError) as exc:
        raise SourceError(f"cannot load {cls.__name__} from {path}: {str(exc).splitlines()[0]}") from None


def _conditioning_context(cond: ConditioningConfig, model_dir: Path, unet: nn.Module) -> torch.Tensor | None:
    """The prompt's CLIP embedding ``[1, tokens, dim]``, a stored embedding, or None."""
    if cond.prompt_embedding is not None:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(cond.prompt_embedding).expanduser()
        if path.suffix != ".safetensors" or not path.is_file():
            raise ConfigError(f"conditioning.prompt_embedding must be an existing .safetensors file: {path}")
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from None
        if "embedding" in tensors:
            return tensors["embedding"]
        if len(tensors) == 1:
            return next(iter(tensors.values()))
        raise ConfigError(f"{path} holds {sorted(tensors)}; expected one tensor named 'embedding'")
    if cond.prompt is None:
        return None
    for sub in ("text_encoder", "tokenizer"):
        if not (model_dir / sub).is_dir():
            raise ConfigError(
                f"conditioning.prompt needs {model_dir / sub} (a CLIP text encoder + tokenizer); "
                "or give conditioning.prompt_embedding (a precomputed embedding file)"
            )
    try:
        from transformers import CLIPTextModel, CLIPTokenizer
    except ImportError:
        raise ConfigError(
            "conditioning.prompt needs the 'transformers' package for the CLIP text encoder, which is not "
            "installed: pip install 'geosane[difuser]' (or give conditioning.prompt_embedding)"
        ) from None
    tokenizer = CLIPTokenizer.from_pretrained(str(model_dir / "tokenizer"), local_files_only=True)
    encoder = _from_pretrained(CLIPTextModel, model_dir / "text_encoder").eval()
    ids = tokenizer(
        cond.prompt,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    with torch.no_grad():
        return encoder(ids)[0].float()


def _metadata_labels(cond: ConditioningConfig, unet: Any) -> torch.Tensor | None:
    """Metadata for the UNet's class embedding; all zeros (null metadata) when the UNet has one and none is given."""
    embed_type = getattr(unet.config, "class_embed_type", None)
    has_embedding = getattr(unet, "class_embedding", None) is not None
    if cond.metadata is None:
        if not has_embedding:
            return None
        if embed_type != "projection":
            raise ConfigError(
                f"this UNet needs class labels (class_embed_type {embed_type!r}); not supported"
            )
        return torch.zeros(int(unet.config.projection_class_embeddings_input_dim))
    if embed_type != "projection":
        raise ConfigError(
            "conditioning.metadata needs a UNet with class_embed_type 'projection' "
            f"(this one has {embed_type!r})"
        )
    expected = int(unet.config.projection_class_embeddings_input_dim)
    if len(cond.metadata) != expected:
        raise ConfigError(
            f"conditioning.metadata has {len(cond.metadata)} values; the UNet expects {expected}"
        )
    return torch.tensor(cond.metadata, dtype=torch.float32)


def satellite_values(meta: SatelliteMetadata, where: str = "backbone.conditioning.satellite") -> list[float]:
    """DiffusionSat's normalised values of one image's metadata; a missing field is an error naming it."""
    missing = meta.missing()
    if missing:
        raise ConfigError(
            f"{where} is missing {', '.join(missing)}; a DiffusionSat UNet needs all of "
            f"{', '.join(DIFFUSIONSAT_METADATA)}"
        )
    return diffusionsat_metadata(
        float(meta.longitude),  # type: ignore[arg-type]
        float(meta.latitude),  # type: ignore[arg-type]
        float(meta.gsd),  # type: ignore[arg-type]
        float(meta.cloud_cover),  # type: ignore[arg-type]
        int(meta.year),  # type: ignore[arg-type]
        int(meta.month),  # type: ignore[arg-type]
        int(meta.day),  # type: ignore[arg-type]
    )


def sat_metadata(cond: ConditioningConfig, unet: nn.Module) -> torch.Tensor | None:
    """The config's metadata row for a SatUNet (``satellite`` normalised, or ``metadata`` as given)."""
    if cond.satellite is not None:
        values = satellite_values(cond.satellite)
        if (
            isinstance(unet, SatUNet)
            and unet.metadata_embedding is not None
            and unet.num_metadata != len(values)
        ):
            raise ConfigError(
                f"conditioning.satellite gives DiffusionSat's {len(values)} values; this SatUNet embeds "
                f"{unet.num_metadata} (use conditioning.metadata with {unet.num_metadata} numbers)"
            )
        return torch.tensor([values], dtype=torch.float32)
    if isinstance(unet, SatUNet) and cond.metadata is not None:
        return torch.tensor([cond.metadata], dtype=torch.float32)
    if not isinstance(unet, SatUNet) and cond.metadata_file is not None:
        raise ConfigError("conditioning.metadata_file needs a DiffusionSat SatUNet with a metadata embedding")
    return None


def read_metadata_file(path: Path, images: list[str]) -> torch.Tensor:
    """Per-image DiffusionSat metadata ``[N, 7]`` (normalised) from a CSV, rows matched to ``images``.

    Columns: ``image`` (path relative to ``task.root``, as ``images`` spells it) and the
    :class:`SatelliteMetadata` fields. Every image must have a row.
    """
    import csv

    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"conditioning.metadata_file not found: {path}")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = set(reader.fieldnames or [])
        needed = {"image", *DIFFUSIONSAT_METADATA}
        if not needed <= columns:
            raise ConfigError(
                f"conditioning.metadata_file {path} lacks column(s) {', '.join(sorted(needed - columns))} "
                f"(needs image, {', '.join(DIFFUSIONSAT_METADATA)})"
            )
        rows = {row["image"]: row for row in reader}
    missing = [name for name in images if name not in rows]
    if missing:
        raise ConfigError(
            f"conditioning.metadata_file {path} has no row for {len(missing)} image(s) (first: {missing[0]})"
        )
    out = []
    for name in images:
        row = rows[name]
        try:
            meta = SatelliteMetadata(
                float(row["longitude"]), float(row["latitude"]), float(row["gsd"]), float(row["cloud_cover"]),
                int(row["year"]), int(row["month"]), int(row["day"]),
            )  # fmt: skip
        except ValueError as exc:
            raise ConfigError(f"conditioning.metadata_file {path}, image {name}: {exc}") from None
        out.append(satellite_values(meta, f"conditioning.metadata_file row {name}"))
    return torch.tensor(out, dtype=torch.float32)
