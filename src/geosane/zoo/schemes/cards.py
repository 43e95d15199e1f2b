"""Model folder cards: a ``config.json`` naming a timm architecture and a README's license.

Both a local model directory and a Hugging Face repo (:mod:`.hf`) are described this way.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from geosane.arch.meta import check_fits
from geosane.arch.spec import ArchSpec

__all__ = ["describe_arch", "read_local_card", "timm_arch_from_config"]


def timm_arch_from_config(config: Mapping[str, Any]) -> ArchSpec | None:
    """The timm architecture named by a timm hub ``config.json`` (``architecture`` key), or None."""
    import timm

    name = config.get("architecture")
    if not isinstance(name, str) or not timm.is_model(name.split(".")[0]):
        return None
    kwargs = dict(config.get("model_args") or {})
    if isinstance(config.get("num_classes"), int):
        kwargs.setdefault("num_classes", config["num_classes"])
    input_size = (config.get("pretrained_cfg") or {}).get("input_size") or [3]
    in_chans = config.get("in_chans") or input_size[0]
    if isinstance(in_chans, int) and in_chans != 3:
        kwargs.setdefault("in_chans", in_chans)
    return ArchSpec("timm", name, kwargs)


def read_local_card(directory: Path) -> tuple[dict[str, Any], str | None]:
    """``config.json`` contents and the card's license (README.md front matter) of a model folder."""
    config: dict[str, Any] = {}
    config_path = directory / "config.json"
    if config_path.is_file():
        try:
            loaded = json.loads(config_path.read_text(encoding="utf-8"))
            config = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            config = {}
    license_ = None
    readme = directory / "README.md"
    if readme.is_file():
        from huggingface_hub.repocard import metadata_load

        with contextlib.suppress(OSError, ValueError, TypeError):  # unparsable card: license unknown
            license_ = (metadata_load(readme) or {}).get("license")
    return config, license_ if isinstance(license_, str) else None


def describe_arch(
    source: str, config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]
) -> ArchSpec | None:
    """The timm architecture from ``config`` when the weights fit it (a mismatch is reported, not fatal)."""
    arch = timm_arch_from_config(config)
    if arch is None:
        return None
    problems = check_fits(arch, state_dict)
    if problems:
        from geosane.console import console

        console.print(
            f"[yellow]warning:[/] {source}: config.json names timm:{arch.name} but the weights do not fit it "
            f"({problems[0]}); the architecture is not recorded"
        )
        return None
    return arch
