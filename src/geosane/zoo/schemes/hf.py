"""``hf:ORG/NAME[/FILE][@REV]``: a Hugging Face Hub repo (``FILE``: one weights file of a repo
that publishes several).

Safetensors are preferred over pickles; works from the local cache with ``HF_HUB_OFFLINE=1``; a
timm hub repo's ``config.json`` gives the architecture. Other repos are read through the
published checkpoint layouts (:mod:`geosane.zoo.schemes.geofm`: Prithvi, SSL4EO-S12, DINOv2 in
transformers' layout ...), chosen by repo id or key signature.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from geosane.arch.layouts import layout_for_repo
from geosane.arch.spec import LoadedModel
from geosane.errors import SourceError
from geosane.zoo.formats import read_weights
from geosane.zoo.schemes.cards import describe_arch, read_local_card, timm_arch_from_config
from geosane.zoo.schemes.geofm import published_model, read_card_config, state_from_object

__all__ = ["choose_weight_files", "hf_offline", "network_errors", "resolve_hf"]

_HF_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(/[\w./-]+)?$")
_CARD_FILES = ("config.json", "README.md", "preprocessor_config.json")


def hf_offline() -> bool:
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


def choose_weight_files(files: list[str], prefer: tuple[str, ...] = ()) -> list[str]:
    """The file(s) to download from a repo listing: safetensors first, then pickles, ckpt, onnx.

    ``prefer``: file names chosen first when the listing holds exactly one of them (the published
    checkpoint of a known layout; several are as ambiguous as several safetensors). Returns the chosen file (plus its shards for a sharded
    safetensors index). Raises when a repo has several equally good candidates or none.
    """
    preferred = [name for name in dict.fromkeys(prefer) if name in files]
    if len(preferred) > 1:
        raise SourceError(
            f"several candidate weight files ({', '.join(preferred[:5])}); name one as hf:ORG/NAME/FILE"
        )
    if preferred:
        return preferred
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


def _hf_online(
    repo_id: str, revision: str | None, filename: str | None = None, prefer: tuple[str, ...] = ()
) -> tuple[Path, str | None] | None:
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
    if filename is not None and filename not in files:
        raise SourceError(f"hf:{repo_id} has no file '{filename}' (files: {', '.join(files[:8])})")
    chosen = [filename] if filename is not None else choose_weight_files(files, prefer)
    extra = [f for f in _CARD_FILES if f in files]
    paths = []
    for name in [*chosen, *extra]:
        paths.append(Path(hf_hub_download(repo_id, name, revision=info.sha or revision)))
    if chosen[0].endswith(".safetensors.index.json"):
        weight_map = json.loads(paths[0].read_text(encoding="utf-8")).get("weight_map", {})
        for shard in dict.fromkeys(weight_map.values()):
            hf_hub_download(repo_id, shard, revision=info.sha or revision)
    card = getattr(info, "card_data", None)
    license_ = getattr(card, "license", None) if card is not None else None
    return paths[0], license_ if isinstance(license_, str) else None


def _hf_cached(
    repo_id: str, revision: str | None, reason: str, filename: str | None = None, prefer: tuple[str, ...] = ()
) -> Path:
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
    if filename is not None:
        if filename not in files:
            raise SourceError(
                f"hf:{repo_id} (cached at {snapshot}) has no file '{filename}' in the cache; {reason}"
            )
        return snapshot / filename
    try:
        chosen = choose_weight_files(files, prefer)
    except SourceError as exc:
        raise SourceError(f"hf:{repo_id} (cached at {snapshot}): {exc}") from None
    return snapshot / chosen[0]


def resolve_hf(
    spec: str, *, random_init: bool = False, in_chans: int | None = None, num_classes: int | None = None
) -> LoadedModel:
    target, _, revision = spec.partition("@")
    if not _HF_REPO.match(target):
        raise SourceError(
            f"Hugging Face source must look like hf:ORG/NAME[@REVISION] (or hf:ORG/NAME/FILE[@REVISION]), got 'hf:{spec}'"
        )
    org, name, *rest = target.split("/")
    repo_id, filename = f"{org}/{name}", "/".join(rest) or None
    rev = revision or None
    prefer = tuple(f for entry in layout_for_repo(repo_id) for f in entry.files)
    online = None if hf_offline() else _hf_online(repo_id, rev, filename, prefer)
    if online is not None:
        weights_path, license_ = online
    else:
        reason = "the Hub is offline (HF_HUB_OFFLINE=1)" if hf_offline() else "the Hub cannot be reached"
        weights_path, license_ = _hf_cached(repo_id, rev, reason, filename, prefer), None
    snapshot = weights_path.parents[len(Path(filename).parts) - 1] if filename else weights_path.parent
    config, card_license = read_local_card(snapshot)
    if timm_arch_from_config(config) is None:
        published, obj = published_model(
            f"hf:{spec}", weights_path, read_card_config(snapshot, config), repo_id=repo_id,
            in_chans=in_chans, license_=license_ or card_license,
        )  # fmt: skip
        if published is not None:
            published.info.update({"hf_repo": repo_id, "revision": rev})
            return published
        state_dict, info = (
            (state_from_object(obj, weights_path), {}) if obj is not None else read_weights(weights_path)
        )
    else:
        state_dict, info = read_weights(weights_path)
    arch = describe_arch(f"hf:{spec}", config, state_dict) if state_dict else None
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
