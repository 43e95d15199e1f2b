"""What each zoo member was trained on, so a benchmark can refuse members that saw its images.

A transfer benchmark that fine-tunes or merges zoo members on a target dataset is only honest if
no member has seen the target's images. ``geosane zoo build`` therefore records, per member,
``metadata["trained_on"]`` (:class:`TrainedOn`) pointing to a content-addressed image list::

    ZOO/trained_on/<images_sha256[:16]>.json
        {"format": "geosane-image-list", "version": 1, "images_sha256": str, "images": [digest, ...]}

Images are identified by :func:`image_digest` (a hash of the file's bytes), not by path, so a
copied, renamed or symlinked image is still recognised. :func:`check_disjoint` refuses a zoo whose
members saw any of the given images and returns the members whose provenance is unknown.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geosane.errors import GeosaneError
from geosane.io import contained_path, read_json, sha256_file, write_json

if TYPE_CHECKING:
    from geosane.zoo.manifest import Zoo

__all__ = [
    "IMAGE_LIST_FORMAT",
    "ZOO_BUILD_SPLITS",
    "TrainedOn",
    "check_disjoint",
    "image_digest",
    "members_seeing",
    "read_image_list",
    "record_trained_on",
]

IMAGE_LIST_FORMAT = "geosane-image-list"
IMAGE_LIST_VERSION = 1
IMAGE_LIST_DIR = "trained_on"
DIGEST_CHARS = 16

# what `zoo build` does with each split (geosane.tasks.fit keeps the last epoch's weights)
ZOO_BUILD_SPLITS = (
    "train (fitted for the configured epochs, last epoch kept); select evaluated after every epoch "
    "(history, select_accuracy) and test once at the end (accuracy); all three splits' images are listed"
)


def image_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 of the file's bytes, first 16 hex chars: content identity, independent of the path."""
    try:
        return sha256_file(path)[:DIGEST_CHARS]
    except OSError as exc:
        raise GeosaneError(f"cannot read image {path}: {exc.strerror or exc}") from None


def _digests(paths: Iterable[str | os.PathLike[str]], cache: MutableMapping[str, str] | None) -> list[str]:
    """Digests of ``paths``; ``cache`` (path -> digest) spares re-hashing across many members."""
    out = []
    for path in paths:
        key = str(path)
        if cache is None:
            out.append(image_digest(path))
            continue
        if key not in cache:
            cache[key] = image_digest(path)
        out.append(cache[key])
    return out


def _list_sha256(sorted_digests: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(sorted_digests).encode()).hexdigest()


@dataclass
class TrainedOn:
    """A member's training data: dataset root, classes and a pointer to its image list."""

    root: str
    classes: list[str]
    num_images: int
    images_sha256: str
    image_list: str
    splits: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainedOn:
        """Parse a ``metadata["trained_on"]`` record; a malformed one raises :class:`GeosaneError`."""
        if not isinstance(data, Mapping):
            raise GeosaneError(f"trained_on record is not a mapping (got {type(data).__name__})")
        missing = [
            k for k in ("root", "classes", "num_images", "images_sha256", "image_list") if k not in data
        ]
        if missing:
            raise GeosaneError(f"trained_on record lacks {', '.join(missing)}")
        return cls(
            root=str(data["root"]),
            classes=[str(c) for c in data["classes"]],
            num_images=int(data["num_images"]),
            images_sha256=str(data["images_sha256"]),
            image_list=str(data["image_list"]),
            splits=str(data.get("splits", "")),
        )


def record_trained_on(
    zoo_dir: str | os.PathLike[str],
    root: str | os.PathLike[str],
    classes: Sequence[str],
    paths: Iterable[str | os.PathLike[str]],
    *,
    splits: str = ZOO_BUILD_SPLITS,
    cache: MutableMapping[str, str] | None = None,
) -> TrainedOn:
    """Write the image list of ``paths`` into the zoo (once per content) and return the record.

    ``paths`` are every image the member touched (all splits: it was evaluated on them too).
    The list is content-addressed, so members trained on the same images share one file.
    """
    digests = sorted(_digests(paths, cache))
    images_sha256 = _list_sha256(digests)
    relative = f"{IMAGE_LIST_DIR}/{images_sha256[:DIGEST_CHARS]}.json"
    target = Path(zoo_dir) / relative
    if not target.is_file():
        write_json(
            target,
            {
                "format": IMAGE_LIST_FORMAT,
                "version": IMAGE_LIST_VERSION,
                "images_sha256": images_sha256,
                "images": digests,
            },
        )
    return TrainedOn(
        root=str(root),
        classes=list(classes),
        num_images=len(digests),
        images_sha256=images_sha256,
        image_list=relative,
        splits=splits,
    )


def read_image_list(zoo_dir: str | os.PathLike[str], trained_on: TrainedOn) -> set[str]:
    """The image digests of ``trained_on``'s list, refused unless its checksum matches the record."""
    path = contained_path(zoo_dir, trained_on.image_list, f"zoo {zoo_dir}: trained_on image list")
    try:
        data = read_json(path)
    except FileNotFoundError:
        raise GeosaneError(f"image list {path} is missing (named by a trained_on record)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GeosaneError(f"cannot read image list {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != IMAGE_LIST_FORMAT:
        raise GeosaneError(f"{path} is not a geosane image list (format {IMAGE_LIST_FORMAT!r})")
    images = data.get("images")
    if not isinstance(images, list) or not all(isinstance(d, str) for d in images):
        raise GeosaneError(f"image list {path}: 'images' must be a list of digests")
    found = _list_sha256(sorted(images))
    if found != trained_on.images_sha256 or data.get("images_sha256") != trained_on.images_sha256:
        raise GeosaneError(
            f"image list {path}: checksum mismatch (recorded {trained_on.images_sha256[:12]}…, found "
            f"{found[:12]}…): the file is corrupted or was changed; nothing was repaired"
        )
    return set(images)


def members_seeing(zoo: Zoo, image_digests: set[str]) -> tuple[dict[str, int], list[str]]:
    """``({member id: how many of image_digests it saw}, [ids without a trained_on record])``.

    Only members that saw at least one image are in the dict.
    """
    seen: dict[str, int] = {}
    unknown: list[str] = []
    lists: dict[str, set[str]] = {}  # members often share one list
    for entry in zoo:
        record = entry.metadata.get("trained_on")
        if record is None:
            unknown.append(entry.id)
            continue
        try:
            trained_on = TrainedOn.from_dict(record)
        except GeosaneError as exc:
            raise GeosaneError(f"zoo {zoo.path}: member '{entry.id}': {exc}") from None
        if trained_on.image_list not in lists:
            lists[trained_on.image_list] = read_image_list(zoo.path, trained_on)
        count = len(lists[trained_on.image_list] & image_digests)
        if count:
            seen[entry.id] = count
    return seen, unknown


def check_disjoint(zoo: Zoo, paths: Iterable[str | os.PathLike[str]], what: str = "the target") -> list[str]:
    """Refuse ``zoo`` if any member saw one of the images at ``paths``; returns unknown-provenance ids.

    Images are compared by content, so a copy under another name still counts. The caller
    decides what to say about the returned members (imported models have no record).
    """
    digests = set(_digests(paths, None))
    seen, unknown = members_seeing(zoo, digests)
    if seen:
        by_id = {entry.id: entry for entry in zoo}
        noun = f"{what}'s"
        parts = [
            f"zoo member '{member}' saw {count} of {noun} {len(digests)} images "
            f"(trained_on root {by_id[member].metadata['trained_on'].get('root')})"
            for member, count in seen.items()
        ]
        raise GeosaneError(
            "; ".join(parts) + f"; a transfer benchmark needs a zoo that never saw {noun} images: "
            f"rebuild it without them or exclude {'the member' if len(seen) == 1 else 'those members'}"
        )
    return unknown
