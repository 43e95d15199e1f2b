"""``hf:ORG/NAME[@REV]``: a Hugging Face Hub repo.

Safetensors are preferred over pickles; works from the local cache with ``HF_HUB_OFFLINE=1``; a
timm hub repo's ``config.json`` gives the architecture.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from geosane.arch.spec import LoadedModel
from geosane.errors import SourceError
from geosane.zoo.formats import read_weights
from geosane.zoo.schemes.cards import describe_arch, read_local_card

__all__ = ["choose_weight_files", "hf_offline", "network_errors", "resolve_hf"]

_HF_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


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


def resolve_hf(
    spec: str, *, random_init: bool = False, in_chans: int | None = None, num_classes: int | None = None
) -> LoadedModel:
    repo_id, _, revision = spec.partition("@")
    if not _HF_REPO.match(repo_id):
        raise SourceError(f"Hugging Face source must look like hf:ORG/NAME[@REVISION], got 'hf:{spec}'")
    rev = revision or None
    online = None if hf_offline() else _hf_online(repo_id, rev)
    if online is not None:
        weights_path, license_ = online
    else:
        reason = "the Hub is offline (HF_HUB_OFFLINE=1)" if hf_offline() else "the Hub cannot be reached"
        weights_path, license_ = _hf_cached(repo_id, rev, reason), None
    state_dict, info = read_weights(weights_path)
    config, card_license = read_local_card(weights_path.parent)
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
