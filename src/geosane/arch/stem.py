"""Adapt a prompt model's stem (first conv or patch embedding) to a different band count.

Multispectral and SAR inputs need a stem with ``in_chans`` input channels before the prompt is
tokenized. timm records the stem's module path in the pretrained config (``first_conv``) and
provides ``adapt_input_conv`` (repeat/truncate the RGB filters, rescaled by ``old / new``
channels), which is what ``timm.create_model(..., pretrained=True, in_chans=C)`` does for
pretrained weights; we apply the same rule to weights that come from any source. It sits with the
architecture types because both generation (the prompt) and downstream (fine-tuning on other
bands) adapt stems.
"""

from __future__ import annotations

import dataclasses

import timm
from timm.models import adapt_input_conv
from torch import nn

from geosane.arch.libraries import arch_library
from geosane.arch.meta import empty_architecture
from geosane.arch.spec import ArchSpec, LoadedModel
from geosane.errors import GeosaneError, cli_flags

__all__ = ["adapt_stem", "stem_weight_names"]


def stem_weight_names(arch: ArchSpec) -> list[str]:
    """State-dict names of the stem convolution weight(s) of ``arch``: timm's ``first_conv``; for
    other libraries (smp) the first convolution of the built model, which reads the input."""
    if arch.library != "timm":
        module = empty_architecture(arch)
        convs = (nn.Conv2d, nn.Conv3d)  # Conv3d: a tubelet embedding (Prithvi), reported as such below
        first_conv = next((n for n, m in module.named_modules() if isinstance(m, convs)), None)
        if first_conv is None:
            raise GeosaneError(f"{arch.library}:{arch.name}: no convolution, cannot adapt the input bands")
        return [f"{first_conv}.weight"]
    cfg = timm.get_pretrained_cfg(arch.name)
    first = cfg.first_conv if cfg is not None else None
    if not first:
        raise GeosaneError(f"{arch.library}:{arch.name}: no first-conv record, cannot adapt the input bands")
    names = [first] if isinstance(first, str) else list(first)
    return [f"{n}.weight" for n in names]


def adapt_stem(prompt: LoadedModel, in_chans: int) -> LoadedModel:
    """A copy of ``prompt`` whose stem takes ``in_chans`` bands (the same object if it already does)."""
    if in_chans <= 0:
        raise GeosaneError(f"in_chans must be positive, got {in_chans}", flags=cli_flags("in_chans"))
    if prompt.arch is None:
        raise GeosaneError(
            f"{prompt.source}: unknown architecture, cannot adapt its stem to {in_chans} bands"
        )
    names = stem_weight_names(prompt.arch)
    missing = [n for n in names if n not in prompt.state_dict]
    if missing:
        raise GeosaneError(f"{prompt.source}: stem weight(s) {missing} not in the state dict")
    current = int(prompt.state_dict[names[0]].shape[1])
    if current == in_chans:
        return prompt
    state_dict = dict(prompt.state_dict)
    for name in names:
        weight = state_dict[name]
        if weight.ndim != 4:
            raise GeosaneError(
                f"cannot adapt {prompt.source} to {in_chans} bands: its stem '{name}' is not a 2D convolution "
                f"(shape {tuple(weight.shape)}); pass data with {current} bands instead"
            )
        state_dict[name] = adapt_input_conv(in_chans, weight.float(), base_chans=current).to(weight.dtype)
    key = arch_library(prompt.arch.library).in_chans_key
    arch = ArchSpec(prompt.arch.library, prompt.arch.name, {**prompt.arch.kwargs, key: in_chans})
    info = {**prompt.info, "in_chans": in_chans, "stem_adapted_from": current}
    return dataclasses.replace(prompt, state_dict=state_dict, arch=arch, info=info)
