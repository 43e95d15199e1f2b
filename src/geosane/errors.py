"""User-facing errors.

Anything a user can cause (bad input, missing file, wrong config) raises a :class:`GeosaneError`
subclass. The CLI prints its message on one line and exits with status 2; Python users catch it.
"""

from __future__ import annotations


class GeosaneError(Exception):
    """An error caused by the user's input, with a message that says what to fix."""


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
