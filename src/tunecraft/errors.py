"""User-facing errors: the CLI prints their message (no stack trace) and exits non-zero."""

from __future__ import annotations


class TunecraftError(Exception):
    """A problem the user can fix; the message says what happened and what to do."""

    exit_code: int = 1


class ModelNotFoundError(TunecraftError):
    """A model name or path that resolves to nothing usable."""


class UnsafeModelError(TunecraftError):
    """A model that would need pickle or remote code to load."""


class ConfigError(TunecraftError):
    """One or more invalid configuration values (all reported at once)."""

    exit_code = 2


class DataError(TunecraftError):
    """A dataset with errors; `data check` lists them with PATH:LINE."""
