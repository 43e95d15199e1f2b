"""The model card of a ``geosane generate`` output, and the stand-alone loader written next to it.

:class:`ModelCard` is ``model_card.json``: :func:`geosane.generation.generate` builds one and
writes :meth:`ModelCard.to_dict`, :func:`geosane.downstream.read_generated_dir` reads it back
with :meth:`ModelCard.from_dict` (which also accepts older cards: missing fields are ``None`` or
empty, NaN scores are "no score", and keys it does not know are kept in ``extra``). The JSON keys
and their order are those ``load_generated.py`` and earlier geosane versions read.

``load_generated.py`` needs only the architecture's library (timm, or segmentation_models_pytorch
for smp U-Nets) and safetensors (not geosane), so generated weights can be shared as a plain
directory: ``from load_generated import load; model = load(rank=1)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from geosane.errors import GeosaneError
from geosane.io import write_text

__all__ = ["CARD_FORMAT", "LOADER_SCRIPT", "MODEL_CARD", "CardCandidate", "ModelCard", "write_loader_script"]

MODEL_CARD = "model_card.json"
CARD_FORMAT = "geosane-generated"


def _score(value: Any) -> float | None:
    """A proxy score as the card holds it: null (strict JSON) for no score; NaN (older cards) too."""
    if value is None:
        return None
    score = float(value)
    return None if math.isnan(score) else score


@dataclass(frozen=True)
class CardCandidate:
    """One kept candidate: its rank, weights file (relative to the card) and proxy score."""

    rank: int
    file: str
    candidate_index: int | None = None  # position in sampling order
    proxy_score: float | None = None  # None: not ranked (no selection data)
    proxy: str | None = None
    bn_recalibrated_on: int = 0  # selection images BatchNorm statistics were recalibrated on

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "file": self.file,
            "candidate_index": self.candidate_index,
            "proxy_score": self.proxy_score,
            "proxy": self.proxy,
            "bn_recalibrated_on": self.bn_recalibrated_on,
        }


@dataclass
class ModelCard:
    """``model_card.json`` of a generate output (``docs/generation.md`` lists the fields)."""

    prompt: str
    arch: dict[str, Any] | None  # ArchSpec dict: {"library", "name", "kwargs"}
    candidates: list[CardCandidate]
    prompt_info: dict[str, Any] = field(default_factory=dict)
    geosane_version: str | None = None
    ae_checkpoint: str | None = None
    ae_sha256: str | None = None
    token_size: int | None = None
    mode: str | None = None
    seed: int | None = None
    decode: str | None = None
    kde: dict[str, Any] = field(default_factory=dict)  # {"mode", "bandwidth", "anchors": [...]}
    num_candidates: int | None = None
    top_k: int | None = None
    proxy: str | None = None
    select_data: str | None = None
    select_split: str | None = None
    normalization: str | None = None
    split_seed: int | None = None
    image_size: int | None = None
    prompt_proxy_score: float | None = None
    all_proxy_scores: list[float | None] = field(default_factory=list)
    generate_only: list[str] = field(default_factory=list)
    generated_tensors: list[str] = field(default_factory=list)
    prompt_tensors: list[str] = field(default_factory=list)
    carried_tensors: list[str] = field(default_factory=list)
    carried_note: str | None = None
    note: str | None = None  # free text a user may add; compare quotes it in its report
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know, kept as read

    @property
    def prompt_is_random_init(self) -> bool:
        """The prompt was an architecture without pretrained weights (``--random-init``)."""
        return self.prompt_info.get("pretrained") is False

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, keys in the order generate has always written them."""
        data: dict[str, Any] = {"format": CARD_FORMAT}
        for f in fields(self):
            if f.name in ("extra", "note"):
                continue
            value = getattr(self, f.name)
            if f.name == "candidates":
                value = [c.to_dict() for c in value]
            elif isinstance(value, (list, dict)):
                value = type(value)(value)  # a copy: the card's own lists are not shared
            data[f.name] = value
        # the key order of earlier cards: candidates after the scores, before the tensor lists
        order = [*_KEY_ORDER, *(k for k in data if k not in _KEY_ORDER)]
        data = {k: data[k] for k in order if k in data}
        if self.note is not None:
            data["note"] = self.note
        return {**data, **{k: v for k, v in self.extra.items() if k not in data}}

    @classmethod
    def from_dict(cls, data: Any, where: str = "model card") -> ModelCard:
        """Parse a card (``where`` names it in errors: a path). Raises :class:`GeosaneError` for
        another format, a missing or malformed ``arch`` and missing candidates or candidate keys."""
        if not isinstance(data, Mapping):
            raise GeosaneError(f"{where} must hold a JSON object")
        if data.get("format", CARD_FORMAT) != CARD_FORMAT:
            raise GeosaneError(f"{where} is not a `geosane generate` model card (format {data['format']!r})")
        problems = []
        arch = data.get("arch")
        if not isinstance(arch, dict) or not arch.get("name") or not arch.get("library"):
            problems.append("'arch' must be {library, name, kwargs}")
        rows = data.get("candidates")
        if not isinstance(rows, list) or not rows:
            problems.append("'candidates' must be a non-empty list")
        if problems:
            raise GeosaneError(f"{where}: " + "; ".join(problems))
        assert isinstance(rows, list) and isinstance(arch, dict)
        candidates = []
        for i, row in enumerate(rows):
            if not isinstance(row, dict) or "file" not in row or "rank" not in row:
                raise GeosaneError(f"{where}: candidates[{i}] needs 'rank' and 'file'")
            index = row.get("candidate_index")
            candidates.append(
                CardCandidate(
                    int(row["rank"]),
                    str(row["file"]),
                    int(index) if index is not None else None,
                    _score(row.get("proxy_score")),
                    row.get("proxy") or data.get("proxy"),
                    int(row.get("bn_recalibrated_on") or 0),
                )
            )
        known = {f.name for f in fields(cls)} - {"extra", "candidates", "arch"}
        values: dict[str, Any] = {k: data[k] for k in known if data.get(k) is not None}
        for key in ("prompt_info", "kde"):
            values[key] = dict(values.get(key) or {})
        for key in ("generate_only", "generated_tensors", "prompt_tensors", "carried_tensors"):
            values[key] = list(values.get(key) or [])
        values["all_proxy_scores"] = [_score(v) for v in values.get("all_proxy_scores") or []]
        values["prompt_proxy_score"] = _score(values.get("prompt_proxy_score"))
        values["prompt"] = str(values.get("prompt") or "")
        extra = {k: v for k, v in data.items() if k not in known | {"format", "candidates", "arch"}}
        return cls(arch=dict(arch), candidates=candidates, extra=extra, **values)

    def ranked(self) -> list[CardCandidate]:
        """The candidates by rank (best first)."""
        return sorted(self.candidates, key=lambda c: c.rank)


_KEY_ORDER = (
    "format", "geosane_version", "prompt", "prompt_info", "arch", "ae_checkpoint", "ae_sha256", "token_size",
    "mode", "seed", "decode", "kde", "num_candidates", "top_k", "proxy", "select_data", "select_split",
    "normalization", "split_seed", "image_size", "prompt_proxy_score", "all_proxy_scores", "candidates",
    "generate_only", "generated_tensors", "prompt_tensors", "carried_tensors", "carried_note",
)  # fmt: skip

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
