"""User-facing errors.

Anything a user can cause (bad input, missing file, wrong config) raises a :class:`GeosaneError`
subclass. The CLI prints its message on one line and exits with status 2; Python users catch it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = [
    "ConfigError",
    "DataError",
    "GeosaneError",
    "Interrupted",
    "SourceError",
    "UnsafeCheckpointError",
    "cli_flags",
]


def cli_flags(*params: str) -> dict[str, str]:
    """``flags`` for parameters whose flag is their name in kebab case: ``cli_flags("top_k")`` maps
    ``top_k=True`` -> ``--top-k``, ``top_k=`` -> ``--top-k `` (a value follows) and ``top_k`` -> ``--top-k``."""
    flags: dict[str, str] = {}
    for param in params:
        flag = "--" + param.replace("_", "-")
        flags.update({f"{param}=True": flag, f"{param}=": f"{flag} ", param: flag})
    return flags


class GeosaneError(Exception):
    """An error caused by the user's input, with a message that says what to fix.

    The library speaks Python: a message names the parameter to change (``overwrite=True``), not a
    command-line flag the caller does not have. ``flags`` maps each such spelling in the message to
    the flag that sets it on the command line (``{"overwrite=True": "--overwrite"}``);
    :meth:`cli_message`, which the ``geosane`` CLI prints, shows the flags instead.
    """

    def __init__(self, *args: object, flags: Mapping[str, str] | None = None) -> None:
        super().__init__(*args)
        self.flags: dict[str, str] = dict(flags or {})

    def cli_message(self) -> str:
        """The message as the command line says it: parameters replaced by their flags.

        One pass, longest spelling first, and only where a spelling stands alone (``anchors`` is
        not replaced inside ``align_anchors`` or a path ``runs/anchors``).
        """
        if not self.flags:
            return str(self)
        alternatives = [
            re.escape(param) + (r"(?![\w./-])" if param[-1:].isalnum() or param.endswith("_") else "")
            for param in sorted(self.flags, key=len, reverse=True)
        ]
        pattern = r"(?<![\w./-])(?:" + "|".join(alternatives) + ")"
        return re.sub(pattern, lambda m: self.flags[m.group(0)], str(self))

    def __reduce__(self) -> tuple[Any, ...]:
        # keep ``flags`` across pickling (an error raised in a worker process reaches the CLI)
        return (type(self), self.args, {"flags": self.flags})


class ConfigError(GeosaneError):
    """A configuration file or override is invalid."""


class SourceError(GeosaneError):
    """A model source cannot be resolved or loaded."""


class UnsafeCheckpointError(SourceError):
    """A checkpoint would need arbitrary code execution (a non-weights-only pickle) to load."""


class DataError(GeosaneError):
    """A dataset is missing, malformed or unsuitable for the requested task."""


class Interrupted(GeosaneError):
    """The user stopped a run (Ctrl-C) after its state was saved; the message says how to resume.

    The CLI prints it as one line and exits with status 130, as a shell does for Ctrl-C.
    """
