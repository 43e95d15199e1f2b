"""Resolve a model *source string* into named tensors plus, where possible, its architecture.

Source schemes::

    timm:NAME                 timm architecture; pretrained weights from the hub (or cache),
                              random init only when explicitly asked for (``random_init=True``)
    hf:ORG/NAME[@REV]         a Hugging Face Hub repo (safetensors preferred over pickles; works
                              from the local cache with HF_HUB_OFFLINE=1); a timm hub repo's
                              config.json gives the architecture
    torchgeo:WEIGHTS_ENUM     TorchGeo pretrained weights (optional extra), e.g.
                              torchgeo:ResNet18_Weights.SENTINEL2_ALL_MOCO
    zoo:ZOO_DIR#MODEL_ID      a model of a geosane zoo
    PATH                      a local .safetensors / .pt / .pth / .bin / .ckpt / .onnx file, or a
                              directory holding exactly one (see :mod:`geosane.zoo.formats`)

Every resolved state dict is validated: empty -> error, NaN/Inf -> error naming the tensor (unless
``allow_nonfinite``). Nothing from a checkpoint is ever executed: pickles load through
``torch.load(weights_only=True)`` and a pickle that needs more is refused.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from geosane.errors import SourceError
from geosane.zoo.formats import first_nonfinite, load_weights_file, read_weights
from geosane.zoo.libraries import ARCH_LIBRARIES, arch_library

__all__ = [
    "ArchSpec",
    "LoadedModel",
    "arch_family",
    "build_architecture",
    "check_fits",
    "empty_architecture",
    "first_nonfinite",
    "load_weights_file",
    "network_errors",
    "order_like_architecture",
    "parse_arch",
    "register_scheme",
    "resolve",
    "timm_arch_from_config",
    "torchgeo_arch",
]


@dataclass(frozen=True)
class ArchSpec:
    """How to instantiate an architecture: ``timm.create_model(name, **kwargs)`` for ``library='timm'``,
    ``segmentation_models_pytorch.create_model(name, **kwargs)`` for ``'smp'`` (:mod:`geosane.zoo.libraries`)."""

    library: str
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"library": self.library, "name": self.name, "kwargs": dict(self.kwargs)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArchSpec:
        return cls(library=data["library"], name=data["name"], kwargs=dict(data.get("kwargs") or {}))


@dataclass
class LoadedModel:
    """Named tensors of a model, where they came from, and (if known) how to rebuild it.

    ``info`` holds what is known about the model: ``pretrained`` (bool), ``in_chans``,
    ``num_classes``, ``license``, ``task``, ``modality`` ...
    """

    source: str
    state_dict: dict[str, torch.Tensor]
    arch: ArchSpec | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_params(self) -> int:
        return sum(t.numel() for t in self.state_dict.values())

    @property
    def unknown_architecture(self) -> str:
        """Why the architecture is unknown, as a sentence to append to an error (``""``: no reason known)."""
        reason = self.info.get("no_architecture")
        return f" ({reason})" if reason else ""

    def build(self, load_weights: bool = True) -> nn.Module:
        """Instantiate the architecture and (by default) load these weights strictly."""
        if self.arch is None:
            raise SourceError(
                f"{self.source}: the architecture is unknown, so a model cannot be built from these weights "
                f"(use a timm:/zoo source or a checkpoint with an architecture record){self.unknown_architecture}"
            )
        model = build_architecture(self.arch)
        if load_weights:
            missing, unexpected = model.load_state_dict(self.state_dict, strict=False)
            if missing or unexpected:
                raise SourceError(
                    f"{self.source}: weights do not fit {self.arch.library}:{self.arch.name} "
                    f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})"
                )
        return model


def build_architecture(arch: ArchSpec) -> nn.Module:
    """Instantiate an architecture with random weights (no download), through its library."""
    return arch_library(arch.library).build(arch.name, dict(arch.kwargs))


# ---------------------------------------------------------------------------------------------
# scheme registry

Resolver = Callable[..., LoadedModel]
_SCHEMES: dict[str, Resolver] = {}


def register_scheme(scheme: str) -> Callable[[Resolver], Resolver]:
    """Decorator registering a resolver for ``scheme:`` sources."""

    def deco(fn: Resolver) -> Resolver:
        _SCHEMES[scheme] = fn
        return fn

    return deco


def parse_arch(text: str | ArchSpec | None, kwargs: Mapping[str, Any] | None = None) -> ArchSpec | None:
    """``"timm:NAME"`` / ``"smp:NAME"`` (or a bare timm name) plus kwargs as an :class:`ArchSpec`."""
    if text is None or isinstance(text, ArchSpec):
        return text
    library, sep, name = text.partition(":")
    if not sep:
        library, name = "timm", text
    if library not in ARCH_LIBRARIES or not name:
        raise SourceError(
            f"architecture '{text}' must look like timm:NAME or smp:NAME (e.g. timm:resnet18, smp:Unet)"
        )
    arch_library(library).check_name(name)
    return ArchSpec(library, name, dict(kwargs or {}))


def resolve(
    source: str,
    *,
    random_init: bool = False,
    in_chans: int | None = None,
    num_classes: int | None = None,
    allow_nonfinite: bool = False,
    arch: ArchSpec | str | None = None,
    parity_data: str | Path | None = None,
    parity_tolerance: float | None = None,
) -> LoadedModel:
    """Resolve ``source`` into a validated :class:`LoadedModel`.

    ``random_init`` allows a timm architecture without pretrained weights; ``in_chans`` and
    ``num_classes`` are passed to timm architectures (for other sources they only fill ``info``
    where the source says nothing). ``arch`` records the architecture of weights whose source does
    not name one (it must fit them). The state dict must be non-empty and finite unless
    ``allow_nonfinite``; when the architecture is known, keys come in the architecture's order.

    An ONNX file gets an architecture from its sidecar (smp) or by conversion, and the rebuilt
    module is checked against onnxruntime (:mod:`geosane.zoo.onnx`) on real inputs read from
    ``parity_data`` (``.npz`` scenes or an image folder) or else seeded random input, within
    ``parity_tolerance``; the report lands in ``info["metadata"]["onnx_parity"]``.
    """
    scheme, sep, rest = source.partition(":")
    kwargs = {"random_init": random_init, "in_chans": in_chans, "num_classes": num_classes}
    if sep and scheme in _SCHEMES and scheme != "file":
        model = _SCHEMES[scheme](rest, **kwargs)
    elif Path(source).expanduser().exists():
        model = _SCHEMES["file"](str(Path(source).expanduser()), **kwargs)
    elif sep and len(scheme) > 1 and "/" not in scheme and "\\" not in scheme:
        known = ", ".join(f"{s}:" for s in sorted(_SCHEMES) if s != "file")
        raise SourceError(
            f"unknown source scheme '{scheme}:' in '{source}' (known: {known}, or a local path)"
        )
    else:
        raise SourceError(f"model file not found: {source}")
    if not model.state_dict:
        raise SourceError(f"{source}: the state dict is empty (no tensors)")
    if in_chans is not None:
        model.info.setdefault("in_chans", in_chans)
    if num_classes is not None:
        model.info.setdefault("num_classes", num_classes)
    spec = parse_arch(arch)
    onnx_file = model.info.get("onnx_file")
    in_arch_order = False
    if onnx_file and spec is None and model.arch is None:
        from geosane.zoo.onnx import describe_onnx

        model = describe_onnx(model)
        in_arch_order = True  # built from the architecture's own state dict, in its order
    if spec is not None:
        problems = check_fits(spec, model.state_dict)
        if problems:
            raise SourceError(
                f"{source}: weights do not fit {spec.library}:{spec.name}: {'; '.join(problems)}"
            )
        model.arch = spec
    if model.arch is not None:
        if not in_arch_order:
            model.state_dict = order_like_architecture(model.state_dict, model.arch)
        library = arch_library(model.arch.library)
        if model.info.get("in_chans") is None:
            model.info["in_chans"] = model.arch.kwargs.get(library.in_chans_key, 3)
        if model.info.get("num_classes") is None:
            model.info["num_classes"] = model.arch.kwargs.get(library.classes_key)
    if onnx_file and model.arch is not None:
        from geosane.zoo.onnx import DEFAULT_PARITY_TOLERANCE, check_parity, load_parity_images

        tolerance = DEFAULT_PARITY_TOLERANCE if parity_tolerance is None else parity_tolerance
        images = load_parity_images(parity_data, model) if parity_data is not None else None
        report = check_parity(model, images, tolerance)
        model.info["metadata"] = {**(model.info.get("metadata") or {}), "onnx_parity": report.to_dict()}
    if not allow_nonfinite:
        bad = first_nonfinite(model.state_dict)
        if bad is not None:
            tensor = model.state_dict[bad]
            count = int((~torch.isfinite(tensor)).sum())
            raise SourceError(
                f"{source}: tensor '{bad}' holds NaN/Inf values ({count} of {tensor.numel()}); "
                "pass --allow-nonfinite to load it anyway"
            )
    return model


# ---------------------------------------------------------------------------------------------
# architectures


def empty_architecture(arch: ArchSpec) -> nn.Module:
    """The architecture on the meta device (no memory, no init cost), or on CPU if that fails."""
    try:
        with torch.device("meta"):
            return build_architecture(arch)
    except SourceError:
        raise
    except Exception:  # some constructors call .item()/numpy during init, which meta tensors refuse
        return build_architecture(arch)


def check_fits(
    arch: ArchSpec,
    state_dict: Mapping[str, torch.Tensor],
    reference: Mapping[str, torch.Tensor] | None = None,
) -> list[str]:
    """Why ``state_dict`` does not load strictly into ``arch`` (empty list: it fits).

    ``reference``: a state dict of ``arch`` the caller already built (saves building it again).
    """
    own = empty_architecture(arch).state_dict() if reference is None else reference
    problems = []
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    if missing:
        problems.append(f"missing {len(missing)} tensors, e.g. {missing[:3]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors, e.g. {unexpected[:3]}")
    for key, value in state_dict.items():
        if key in own and tuple(own[key].shape) != tuple(value.shape):
            problems.append(
                f"'{key}' has shape {tuple(value.shape)}, the architecture expects {tuple(own[key].shape)}"
            )
            break
    return problems


def order_like_architecture(state_dict: dict[str, torch.Tensor], arch: ArchSpec) -> dict[str, torch.Tensor]:
    """``state_dict`` with keys in the architecture's own order (unknown keys last, as given)."""
    try:
        order = list(empty_architecture(arch).state_dict())
    except SourceError:
        return state_dict
    ordered = {k: state_dict[k] for k in order if k in state_dict}
    ordered.update((k, v) for k, v in state_dict.items() if k not in ordered)
    return ordered


def arch_family(arch: ArchSpec | None) -> str | None:
    """The family of an architecture: the timm module defining it (``resnet``, ``convnext`` ...), or
    for smp the decoder and encoder family (``unet-efficientnet``)."""
    if arch is None or arch.library not in ARCH_LIBRARIES:
        return None
    return arch_library(arch.library).family(arch.name, dict(arch.kwargs))


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


def _read_local_card(directory: Path) -> tuple[dict[str, Any], str | None]:
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


def _describe_arch(
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


# ---------------------------------------------------------------------------------------------
# timm


@register_scheme("timm")
def _resolve_timm(
    name: str, *, random_init: bool = False, in_chans: int | None = None, num_classes: int | None = None
) -> LoadedModel:
    import timm

    if not name:
        raise SourceError("timm source needs a model name, e.g. timm:resnet18")
    base_name = name.split(".")[0]
    if not timm.is_model(base_name):
        close = timm.list_models(f"*{base_name.split('_')[0]}*")[:5]
        raise SourceError(
            f"unknown timm model '{name}'" + (f"; similar: {', '.join(close)}" if close else "")
        )
    kwargs: dict[str, Any] = {}
    if in_chans is not None:
        kwargs["in_chans"] = in_chans
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    pretrained = not random_init
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except (RuntimeError, ValueError, TypeError) as exc:
        if "pretrained" in str(exc).lower() and pretrained:
            raise SourceError(
                f"timm:{name} has no pretrained weights ({exc}); pass --random-init to use random weights"
            ) from None
        raise SourceError(f"cannot instantiate timm:{name} with {kwargs}: {exc}") from None
    except OSError as exc:  # hub unreachable and not cached (huggingface_hub errors derive from OSError)
        raise SourceError(
            f"pretrained weights for timm:{name} could not be fetched and are not cached ({type(exc).__name__}); "
            "connect to the internet, or pass --random-init to use randomly initialised weights"
        ) from None
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    info: dict[str, Any] = {
        "pretrained": pretrained,
        "in_chans": in_chans if in_chans is not None else cfg.get("num_channels", 3),
        "num_classes": getattr(model, "num_classes", num_classes),
        "license": cfg.get("license"),
        "task": "classification",
        "modality": "rgb" if (in_chans in (None, 3)) else f"{in_chans}-band",
    }
    arch = ArchSpec("timm", name, kwargs)
    return LoadedModel(source=f"timm:{name}", state_dict=dict(model.state_dict()), arch=arch, info=info)


# ---------------------------------------------------------------------------------------------
# local files and directories


@register_scheme("file")
def _resolve_file(
    path: str, *, random_init: bool = False, in_chans: int | None = None, num_classes: int | None = None
) -> LoadedModel:
    location = Path(path)
    state_dict, info = read_weights(location)
    arch = None
    license_ = None
    if location.is_dir():
        config, license_ = _read_local_card(location)
        arch = _describe_arch(path, config, state_dict) if state_dict else None
    return LoadedModel(
        source=str(path),
        state_dict=state_dict,
        arch=arch,
        info={"pretrained": True, "license": license_, **info},
    )


# ---------------------------------------------------------------------------------------------
# zoo


@register_scheme("zoo")
def _resolve_zoo(
    spec: str, *, random_init: bool = False, in_chans: int | None = None, num_classes: int | None = None
) -> LoadedModel:
    from geosane.zoo.manifest import Zoo

    zoo_dir, sep, model_id = spec.rpartition("#")
    if not sep or not zoo_dir or not model_id:
        raise SourceError(f"zoo source must look like zoo:ZOO_DIR#MODEL_ID, got 'zoo:{spec}'")
    return Zoo(zoo_dir).load(model_id)


# ---------------------------------------------------------------------------------------------
# Hugging Face Hub

_HF_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _hf_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def network_errors() -> tuple[type[BaseException], ...]:
    """Exception types a failed Hub request raises (the HTTP client differs across versions)."""
    errors: list[type[BaseException]] = [OSError]
    for module, attr in (("httpx2", "HTTPError"), ("httpx", "HTTPError"), ("requests", "RequestException")):
        try:
            errors.append(getattr(__import__(module), attr))
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


def choose_weight_files(files: list[str]) -> list[str]:
    """The file(s) to download from a repo listing: safetensors first, then pickles, ckpt, onnx.

    Returns the chosen file (plus its shards for a sharded safetensors index). Raises when a repo
    has several equally good candidates or none.
    """
    top = [f for f in files if "/" not in f] or files
    ranks: list[Callable[[str], bool]] = [
        lambda f: f == "model.safetensors",
        lambda f: f == "model.safetensors.index.json",
        lambda f: f.endswith(".safetensors.index.json"),
        lambda f: f.endswith(".safetensors"),
        lambda f: f == "pytorch_model.bin",
        lambda f: f.endswith((".pth", ".pt", ".bin")) and ".index." not in f,
        lambda f: f.endswith(".ckpt"),
        lambda f: f.endswith(".onnx"),
    ]
    for rank in ranks:
        hits = [f for f in top if rank(f)]
        if len(hits) == 1:
            return hits
        if len(hits) > 1:
            if hits[0].endswith(".safetensors") and any(f.endswith(".safetensors.index.json") for f in top):
                continue  # shards of an index already considered
            raise SourceError(
                f"several candidate weight files ({', '.join(hits[:5])}); download the one you want and add its path"
            )
    raise SourceError(f"no weights file found (files: {', '.join(files[:8])})")


def _hf_online(repo_id: str, revision: str | None) -> tuple[Path, str | None] | None:
    """Download the chosen weights (and card/config) of ``repo_id``; None if the Hub is unreachable."""
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        info = HfApi().model_info(repo_id, revision=revision)
    except GatedRepoError:
        raise SourceError(
            f"hf:{repo_id} is gated: accept its terms on the Hub and log in (`hf auth login`)"
        ) from None
    except RevisionNotFoundError:
        raise SourceError(f"hf:{repo_id} has no revision '{revision}'") from None
    except RepositoryNotFoundError:
        raise SourceError(f"hf:{repo_id}: no such model repository on the Hub (or it is private)") from None
    except network_errors():
        return None
    files = [s.rfilename for s in info.siblings or []]
    chosen = choose_weight_files(files)
    extra = [f for f in ("config.json", "README.md") if f in files]
    paths = []
    for filename in [*chosen, *extra]:
        paths.append(Path(hf_hub_download(repo_id, filename, revision=info.sha or revision)))
    if chosen[0].endswith(".safetensors.index.json"):
        weight_map = json.loads(paths[0].read_text(encoding="utf-8")).get("weight_map", {})
        for shard in dict.fromkeys(weight_map.values()):
            hf_hub_download(repo_id, shard, revision=info.sha or revision)
    card = getattr(info, "card_data", None)
    license_ = getattr(card, "license", None) if card is not None else None
    return paths[0], license_ if isinstance(license_, str) else None


def _hf_cached(repo_id: str, revision: str | None, reason: str) -> Path:
    """The weights file of ``repo_id`` in the local Hugging Face cache."""
    from huggingface_hub import snapshot_download

    try:
        snapshot = Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except (OSError, ValueError):
        raise SourceError(
            f"hf:{repo_id}{'@' + revision if revision else ''} is not in the local Hugging Face cache and {reason}; "
            f"download it once with internet (e.g. `hf download {repo_id}`)"
        ) from None
    files = sorted(str(p.relative_to(snapshot)) for p in snapshot.rglob("*") if p.is_file())
    try:
        chosen = choose_weight_files(files)
    except SourceError as exc:
        raise SourceError(f"hf:{repo_id} (cached at {snapshot}): {exc}") from None
    return snapshot / chosen[0]


@register_scheme("hf")
def _resolve_hf(
    spec: str, *, random_init: bool = False, in_chans: int | None = None, num_classes: int | None = None
) -> LoadedModel:
    repo_id, _, revision = spec.partition("@")
    if not _HF_REPO.match(repo_id):
        raise SourceError(f"Hugging Face source must look like hf:ORG/NAME[@REVISION], got 'hf:{spec}'")
    rev = revision or None
    online = None if _hf_offline() else _hf_online(repo_id, rev)
    if online is not None:
        weights_path, license_ = online
    else:
        reason = "the Hub is offline (HF_HUB_OFFLINE=1)" if _hf_offline() else "the Hub cannot be reached"
        weights_path, license_ = _hf_cached(repo_id, rev, reason), None
    state_dict, info = read_weights(weights_path)
    config, card_license = _read_local_card(weights_path.parent)
    arch = _describe_arch(f"hf:{spec}", config, state_dict) if state_dict else None
    info = {
        "pretrained": True,
        "license": license_ or card_license,
        "hf_repo": repo_id,
        "revision": rev,
        "name": repo_id.split("/")[-1],
        **info,
    }
    if arch is not None:
        info.update(
            {
                "num_classes": arch.kwargs.get("num_classes"),
                "in_chans": arch.kwargs.get("in_chans", 3),
                "task": "classification",
            }
        )
    return LoadedModel(source=f"hf:{spec}", state_dict=state_dict, arch=arch, info=info)


# ---------------------------------------------------------------------------------------------
# TorchGeo

# Keys that TorchGeo's own model builders leave at their initial values when loading its weights
# (heads and, for some ViT weights, the final norm); we fill them from the same initialisation.
_TORCHGEO_TOLERATED = {"fc.weight", "fc.bias", "head.weight", "head.bias", "norm.weight", "norm.bias"}


def _torchgeo_weights(name: str) -> Any:
    try:
        from torchgeo.models import get_weight
    except ImportError:
        raise SourceError(
            "torchgeo sources need the optional TorchGeo extra: pip install 'geosane[torchgeo]'"
        ) from None
    try:
        return get_weight(name)
    except (ValueError, KeyError):
        enum_name = name.split(".")[0]
        from torchgeo.models import get_model_weights, list_models

        enums: list[str] = []
        for model_name in list_models():
            try:
                enums.extend(str(w) for w in get_model_weights(model_name))
            except (KeyError, ValueError):
                continue
        close = [e for e in enums if e.startswith(enum_name)][:4] or enums[:4]
        raise SourceError(f"unknown TorchGeo weights '{name}'; e.g. {', '.join(close)}") from None


def torchgeo_arch(weights: Any) -> ArchSpec | None:
    """The architecture TorchGeo loads ``weights`` into (None for models neither timm nor smp build).

    The timm model name is the name of TorchGeo's builder for the weights' enum (``resnet18`` for
    ``ResNet18_Weights``); ``in_chans`` and, for DINOv2 ViTs, ``img_size`` come from the weights'
    ``meta``. Heads are absent from TorchGeo's backbone weights, so ``num_classes=0``. TorchGeo's
    ``unet`` builder is ``smp.create_model("Unet", encoder_name=meta["encoder"], ...)`` with the
    full model (head included) in its weights.
    """
    import timm
    from torchgeo.models import get_model_weights, list_models

    builder = None
    for model_name in list_models():
        try:
            if get_model_weights(model_name) is type(weights):
                builder = model_name
                break
        except (KeyError, ValueError):
            continue
    meta = weights.meta
    if builder == "unet" and meta.get("encoder"):
        kwargs_smp = {"encoder_name": str(meta["encoder"]), "in_channels": int(meta.get("in_chans") or 3),
                      "classes": int(meta.get("num_classes") or 1)}  # fmt: skip
        return ArchSpec("smp", "Unet", kwargs_smp)
    if builder is None or not timm.is_model(builder):
        return None
    kwargs: dict[str, Any] = {"num_classes": 0}
    if meta.get("in_chans"):
        kwargs["in_chans"] = int(meta["in_chans"])
    if meta.get("img_size"):
        kwargs["img_size"] = int(meta["img_size"])
    return ArchSpec("timm", builder, kwargs)


def _torchgeo_download(weights: Any, name: str) -> Path:
    """The weights file in torch hub's checkpoint cache (where TorchGeo itself caches it)."""
    url = weights.url
    filename = Path(urlparse(url).path).name
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if cached.is_file():
        return cached
    if _hf_offline():
        raise SourceError(
            f"torchgeo:{name}: weights are not cached and downloads are off (HF_HUB_OFFLINE=1); "
            f"download {url} to {cached}"
        )
    match = torch.hub.HASH_REGEX.search(filename)
    cached.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(cached), hash_prefix=match.group(1) if match else None)
    except (OSError, RuntimeError, ValueError) as exc:
        raise SourceError(
            f"torchgeo:{name}: cannot download {url} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            f"without internet, place the file at {cached}"
        ) from None
    return cached


@register_scheme("torchgeo")
def _resolve_torchgeo(
    name: str, *, random_init: bool = False, in_chans: int | None = None, num_classes: int | None = None
) -> LoadedModel:
    weights = _torchgeo_weights(name)
    arch = torchgeo_arch(weights)
    state_dict = load_weights_file(_torchgeo_download(weights, name))
    meta = dict(weights.meta)
    segmenter = arch is not None and arch.library == "smp"
    info: dict[str, Any] = {
        "pretrained": True,
        "in_chans": meta.get("in_chans"),
        "num_classes": meta.get("num_classes") if segmenter else (0 if arch else None),
        "bands": meta.get("bands"),
        "license": meta.get("license"),
        "task": "segmentation" if segmenter else "backbone",
        "name": f"torchgeo-{name}",
        "torchgeo": {k: v for k, v in meta.items() if isinstance(v, (str, int, float))},
    }
    if arch is not None and state_dict:
        fresh = empty_architecture(arch).state_dict()
        filled = [k for k in fresh if k not in state_dict and k in _TORCHGEO_TOLERATED]
        if filled:
            initial = build_architecture(arch).state_dict()
            state_dict = {**state_dict, **{k: initial[k].clone() for k in filled}}
            info["filled_from_init"] = filled
        problems = check_fits(arch, state_dict, reference=fresh)
        if problems:
            raise SourceError(
                f"torchgeo:{name}: weights do not fit {arch.library}:{arch.name} {arch.kwargs}: {problems[0]}"
            )
    return LoadedModel(source=f"torchgeo:{name}", state_dict=state_dict, arch=arch, info=info)
