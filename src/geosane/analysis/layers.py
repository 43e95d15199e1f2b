"""Pick layers of a backbone by module path and record their outputs with forward hooks.

Defaults per family (found from the module tree, so any timm-style model works):

- ViT-like (``patch_embed`` + ``blocks``): every ``blocks.{i}``; sub-layers ``attn``, ``mlp.fc1``,
  ``mlp.fc2`` of each block.
- Swin-like (``layers.{i}.blocks``): every ``layers.{i}.blocks.{j}``; sub-layers ``mlp.fc1`` and
  ``mlp.fc2`` (windowed attention outputs are not per image).
- CNNs: every stage (``layer1..4`` for ResNets, ``stages.{i}`` for ConvNeXt and others, timm's
  ``feature_info`` otherwise); sub-layers are the convolutions (and MLP linears) inside the stages.

Layer outputs come in three layouts that :func:`pool_output` and :func:`output_map` understand:
token sequences ``[B, L, C]`` (with ``num_prefix_tokens`` class/register tokens first), feature maps
``[B, C, H, W]`` (or channels-last ``[B, H, W, C]`` in Swin blocks and MLP linears) and vectors.
"""

from __future__ import annotations

import contextlib
import difflib
import math
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Literal

import torch
from torch import nn

from geosane.errors import GeosaneError

__all__ = [
    "LayerRecorder",
    "Pooling",
    "block_layers",
    "model_family",
    "num_prefix_tokens",
    "output_map",
    "pool_output",
    "resolve_layers",
    "sublayer_layers",
]

Pooling = Literal["cls", "mean", "gap", "flatten"]
Family = Literal["vit", "swin", "resnet", "convnext", "segmenter", "cnn"]

_SUBLAYER_TYPES = (nn.Conv2d, nn.Linear)


def model_family(model: nn.Module) -> Family:
    """Which default layer set applies: ``vit``, ``swin``, ``resnet``, ``convnext`` or generic ``cnn``."""
    children = dict(model.named_children())
    if "patch_embed" in children and isinstance(children.get("blocks"), nn.Sequential | nn.ModuleList):
        return "vit"
    layers = children.get("layers")
    if isinstance(layers, nn.Sequential | nn.ModuleList) and all(hasattr(s, "blocks") for s in layers):
        return "swin"
    if all(f"layer{i}" in children for i in range(1, 5)):
        return "resnet"
    if "stages" in children:
        return "convnext"
    if {"encoder", "decoder", "segmentation_head"} <= children.keys():
        return "segmenter"  # segmentation_models_pytorch
    return "cnn"


def _numbered(module: nn.Module, prefix: str) -> list[str]:
    return [f"{prefix}.{name}" for name, _ in module.named_children()]


def block_layers(model: nn.Module) -> list[str]:
    """The default probe layers: every transformer block, every CNN stage, or for an smp segmenter
    every encoder block (stage) and decoder block."""
    family = model_family(model)
    if family == "vit":
        return _numbered(model.get_submodule("blocks"), "blocks")
    if family == "swin":
        return [
            path
            for stage in _numbered(model.get_submodule("layers"), "layers")
            for path in _numbered(model.get_submodule(stage).get_submodule("blocks"), f"{stage}.blocks")
        ]
    if family == "resnet":
        return [f"layer{i}" for i in range(1, 5)]
    if family == "convnext":
        return _numbered(model.get_submodule("stages"), "stages")
    if family == "segmenter":  # the encoder's blocks (or stages), then every decoder block
        encoder = model.get_submodule("encoder")
        if hasattr(encoder, "_blocks"):  # EfficientNet encoders
            inner = _numbered(encoder.get_submodule("_blocks"), "encoder._blocks")
        else:
            inner = [f"encoder.{path}" for path in block_layers(encoder)]
        decoder = model.get_submodule("decoder")
        blocks = _numbered(decoder.get_submodule("blocks"), "decoder.blocks") if hasattr(decoder, "blocks") else []
        return inner + blocks
    info = getattr(model, "feature_info", None)
    modules = [entry["module"] for entry in info] if isinstance(info, list) else []
    if not modules:
        raise GeosaneError(
            f"no default layers known for {type(model).__name__}; name them with 'layers' (module paths)"
        )
    return modules


def sublayer_layers(model: nn.Module) -> list[str]:
    """Default CKA sub-layers: ``attn``/``mlp.fc1``/``mlp.fc2`` per ViT block, MLP linears per Swin
    block, every convolution / linear inside the stages of a CNN."""
    family = model_family(model)
    blocks = block_layers(model)
    if family in ("vit", "swin"):
        names = ("attn", "mlp.fc1", "mlp.fc2") if family == "vit" else ("mlp.fc1", "mlp.fc2")
        valid = dict(model.named_modules())
        return [f"{b}.{n}" for b in blocks for n in names if f"{b}.{n}" in valid]
    return [
        f"{stage}.{name}"
        for stage in blocks
        for name, module in model.get_submodule(stage).named_modules()
        if name and isinstance(module, _SUBLAYER_TYPES)
    ]


def execution_order(model: nn.Module, paths: Sequence[str]) -> list[str]:
    """``paths`` ordered as they run: module-tree order, a container after its own sub-modules."""
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}

    def key(path: str) -> tuple[int, int]:
        descendants = [i for name, i in order.items() if name.startswith(f"{path}.")]
        return (max(descendants, default=order[path]), 0 if descendants == [] else 1)

    return sorted(dict.fromkeys(paths), key=key)


def resolve_layers(
    model: nn.Module, layers: Sequence[str] | str | None, default: str = "blocks", what: str = "model"
) -> list[str]:
    """Turn a layer selection into module paths (in execution order), checking that each exists.

    Entries of ``layers`` are ``blocks`` (per-family defaults), ``sublayers``, ``all`` (both) or
    module paths, which may use ``*`` wildcards (``blocks.*.mlp.fc1``); ``None`` means ``default``.
    A path that does not exist raises a :class:`GeosaneError` listing the valid ones.
    """
    if layers is None:
        layers = [default]
    elif isinstance(layers, str):
        layers = [layers]
    valid = [name for name, _ in model.named_modules() if name]
    out: list[str] = []
    for path in layers:
        if path in ("blocks", "all"):
            out.extend(block_layers(model))
        if path in ("sublayers", "all"):
            out.extend(sublayer_layers(model))
        if path in ("blocks", "sublayers", "all"):
            continue
        if "*" in path:
            pattern = re.compile("^" + re.escape(path).replace(r"\*", r"[^.]+") + "$")
            matches = [name for name in valid if pattern.match(name)]
            if not matches:
                raise GeosaneError(
                    f"layer pattern '{path}' matches no module of {what}; {_valid_hint(path, valid)}"
                )
            out.extend(matches)
        elif path in valid:
            out.append(path)
        else:
            raise GeosaneError(f"no module '{path}' in {what}; {_valid_hint(path, valid)}")
    if not out:
        raise GeosaneError(f"no layers selected in {what}")
    return execution_order(model, out)


def _valid_hint(path: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(path, valid, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    shown = ", ".join(valid[:60]) + (f", ... ({len(valid) - 60} more)" if len(valid) > 60 else "")
    return f"{hint}valid module paths: {shown}"


def num_prefix_tokens(model: nn.Module) -> int:
    """Class/register tokens in front of the patch tokens (timm's ``num_prefix_tokens``; 0 for CNNs)."""
    return int(getattr(model, "num_prefix_tokens", 0) or 0)


def _channels_last(module: nn.Module, model: nn.Module) -> bool:
    """Whether a 4-D output of ``module`` is ``[B, H, W, C]`` (Swin blocks, linears and LayerNorms)."""
    if isinstance(module, nn.Linear | nn.LayerNorm) and not type(module).__name__.endswith("2d"):
        return True
    if type(module).__name__ == "Permute":  # torchvision's own NHWC -> NCHW step
        return False
    return _nhwc_model(model) and not isinstance(module, nn.Conv2d | nn.modules.batchnorm._BatchNorm)


def _nhwc_model(model: nn.Module) -> bool:
    """Models whose stages pass ``[B, H, W, C]`` maps: timm's ``output_fmt == "NHWC"`` (Swin and
    kin) and torchvision's Swin Transformers (TorchGeo's Swin weights), which permute to NCHW only
    after their last stage."""
    if getattr(model, "output_fmt", "NCHW") == "NHWC":
        return True
    permute = getattr(model, "permute", None)
    return type(permute).__name__ == "Permute" and list(getattr(permute, "dims", [])) == [0, 3, 1, 2]


class LayerRecorder(contextlib.AbstractContextManager["LayerRecorder"]):
    """Forward hooks on ``paths`` of ``model``: after each forward, :attr:`outputs` holds every
    layer's output as ``[B, L, C]`` tokens, ``[B, C, H, W]`` maps or ``[B, C]`` vectors."""

    def __init__(self, model: nn.Module, paths: Sequence[str]) -> None:
        self.model = model
        self.paths = list(paths)
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> LayerRecorder:
        for path in self.paths:
            module = self.model.get_submodule(path)
            channels_last = _channels_last(module, self.model)
            self._handles.append(module.register_forward_hook(self._hook(path, channels_last)))
        return self

    def _hook(self, path: str, channels_last: bool) -> Callable[[nn.Module, object, object], None]:
        def hook(module: nn.Module, args: object, output: object) -> None:
            while isinstance(output, tuple | list):
                output = output[0]
            if not isinstance(output, torch.Tensor):
                raise GeosaneError(f"layer '{path}' returns {type(output).__name__}, not a tensor")
            out = output.detach()
            if out.ndim == 4 and channels_last:
                out = out.permute(0, 3, 1, 2)
            self.outputs[path] = out

        return hook

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def run(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Forward ``images`` (no gradient) and return the recorded outputs, checked to be per image."""
        self.outputs = {}
        with torch.no_grad():
            self.model(images)
        batch = images.shape[0]
        for path in self.paths:
            if path not in self.outputs:
                raise GeosaneError(f"layer '{path}' did not run in the forward pass")
            if self.outputs[path].shape[0] != batch:
                raise GeosaneError(
                    f"layer '{path}' output {tuple(self.outputs[path].shape)} is not one row per image "
                    f"(batch {batch}); windowed or reshaped outputs cannot be probed, pick another layer"
                )
        return self.outputs


def pool_output(
    output: torch.Tensor, pooling: Pooling, prefix_tokens: int, path: str = "layer"
) -> torch.Tensor:
    """Reduce one layer output to ``[B, D]``.

    ``cls``: the first (class) token; ``mean``: mean of the patch tokens (prefix tokens excluded) or
    spatial mean of a map; ``gap``: global average over every position (all tokens); ``flatten``:
    every value (for CKA).
    """
    if pooling == "flatten" or output.ndim == 2:
        return output.flatten(1)
    if output.ndim == 3:
        if pooling == "cls":
            if prefix_tokens < 1:
                raise GeosaneError(
                    f"pooling 'cls' needs a class token, but '{path}' has none; use 'mean' or 'gap'"
                )
            return output[:, 0]
        tokens = (
            output[:, prefix_tokens:] if pooling == "mean" and output.shape[1] > prefix_tokens else output
        )
        return tokens.mean(dim=1)
    if output.ndim == 4:
        if pooling == "cls":
            raise GeosaneError(
                f"pooling 'cls' needs tokens, but '{path}' outputs a feature map; use 'mean' or 'gap'"
            )
        return output.mean(dim=(2, 3))
    raise GeosaneError(f"layer '{path}' output has unsupported shape {tuple(output.shape)}")


def time_tokens(model: nn.Module) -> int:
    """Token groups along time of a natively temporal ViT (Prithvi's ``temporal_tokens``: frames
    per tubelet folded), laid out time-major before the spatial grid; 1 for every other model."""
    return int(getattr(model, "temporal_tokens", 1) or 1)


def output_map(output: torch.Tensor, prefix_tokens: int, path: str = "layer", times: int = 1) -> torch.Tensor:
    """A layer output as a ``[B, C, h, w]`` map (patch tokens laid back on their square grid).

    ``times`` > 1 (:func:`time_tokens`): the tokens are ``times`` square grids, one per time step,
    averaged into one map (per-pixel features of the whole stack)."""
    if output.ndim == 4:
        return output
    if output.ndim == 3:
        tokens = output[:, prefix_tokens:]
        per_time = tokens.shape[1] // times
        side = math.isqrt(per_time)
        if side * side != per_time or per_time * times != tokens.shape[1]:
            grids = f" in {times} time steps" if times > 1 else ""
            raise GeosaneError(
                f"layer '{path}' has {tokens.shape[1]} patch tokens{grids}, not a square grid; cannot map it to pixels"
            )
        grid = tokens.reshape(tokens.shape[0], times, side, side, tokens.shape[2]).mean(dim=1)
        return grid.permute(0, 3, 1, 2)
    raise GeosaneError(
        f"layer '{path}' outputs {tuple(output.shape)}, which has no spatial layout to segment"
    )


def iter_batches(images: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Consecutive slices of ``images`` along the first dimension."""
    for start in range(0, images.shape[0], batch_size):
        yield images[start : start + batch_size]
