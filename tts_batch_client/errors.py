"""The exceptions that cross module boundaries in the client."""
from __future__ import annotations

__all__ = ["Interrupted", "UsageError"]


class UsageError(Exception):
    """Bad command-line input or an unusable API: reported in one line, exit status 2."""


class Interrupted(Exception):
    """The run is being stopped (Ctrl-C); raised inside workers to abandon their file."""
