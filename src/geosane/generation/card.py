"""The stand-alone loader written next to generated weights.

``load_generated.py`` needs only the architecture's library (timm, or segmentation_models_pytorch
for smp U-Nets) and safetensors (not geosane), so generated weights can be shared as a plain
directory: ``from load_generated import load; model = load(rank=1)``.
"""

from __future__ import annotations

from pathlib import Path

from geosane.io import write_text

__all__ = ["LOADER_SCRIPT", "write_loader_script"]

LOADER_SCRIPT = '''"""Build the model of the generated weights in this directory (written by geosane generate).

    from load_generated import load
    model = load(rank=1)                  # the best-ranked candidate
    model = load(rank=2, num_classes=10)  # another candidate, with a fresh head for 10 classes

Needs only safetensors and the architecture's library: timm, or segmentation_models_pytorch for
smp models. Run as a script to print a summary of every candidate.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent


def card() -> dict:
    """The model card (prompt, autoencoder, seed, proxy scores, generated/carried tensors)."""
    return json.loads((HERE / "model_card.json").read_text(encoding="utf-8"))


def load(rank: int = 1, num_classes: int | None = None) -> torch.nn.Module:
    """The model with candidate ``rank``'s weights (timm: optionally a new head for ``num_classes``)."""
    info = card()
    ranks = {c["rank"]: c for c in info["candidates"]}
    if rank not in ranks:
        raise ValueError(f"no candidate of rank {rank}; available: {sorted(ranks)}")
    arch = info["arch"]
    kwargs = dict(arch.get("kwargs", {}))
    if arch["library"] == "timm":
        import timm

        model = timm.create_model(arch["name"], pretrained=False, **kwargs)
    elif arch["library"] == "smp":
        import segmentation_models_pytorch as smp

        model = smp.create_model(arch["name"], encoder_weights=None, **kwargs)
    else:
        raise ValueError(f"architecture library {arch['library']!r} needs geosane to rebuild")
    model.load_state_dict(load_file(str(HERE / ranks[rank]["file"])))
    if num_classes is not None and num_classes != getattr(model, "num_classes", None):
        if not hasattr(model, "reset_classifier"):
            raise ValueError(f"{arch['library']}:{arch['name']} has no classifier head to reset")
        model.reset_classifier(num_classes)
    return model


if __name__ == "__main__":
    info = card()
    print(f"prompt {info['prompt']}  ({info['arch']['name']})")
    for c in info["candidates"]:
        model = load(c["rank"])
        params = sum(p.numel() for p in model.parameters())
        score = "unranked" if c["proxy_score"] is None else f"proxy {c['proxy']}={c['proxy_score']:.4f}"
        print(f"rank {c['rank']}: {c['file']}  {score}  {params:,} parameters")
'''


def write_loader_script(path: str | Path) -> Path:
    """Atomically write ``load_generated.py`` to ``path``."""
    return write_text(path, LOADER_SCRIPT)
