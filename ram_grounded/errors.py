"""One family of errors, each saying what went wrong and what to do next.

Every error the toolkit raises on purpose derives from :class:`RamGroundedError`; the CLI
prints such errors as one line (no traceback) and exits with :attr:`exit_code`.
"""

from __future__ import annotations


class RamGroundedError(Exception):
    """Base class. ``hint`` says what the user can do about it."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message} ({hint})" if hint else message)


class ConfigError(RamGroundedError):
    """A pipeline, stage or option is misconfigured (unknown name, bad parameter, missing field)."""

    exit_code = 2


class ImageLoadError(RamGroundedError):
    """An image could not be read or decoded; the record carries this and the run goes on."""

    exit_code = 3


class WeightsError(RamGroundedError):
    """A checkpoint is missing, corrupt, unsafe, or belongs to another model."""

    exit_code = 4


class ChecksumError(WeightsError):
    """A downloaded or local file does not match its published sha256."""


class MissingWeightsError(WeightsError):
    """A checkpoint is not cached and cannot be downloaded (offline or no network)."""


class WrongCheckpointError(WeightsError):
    """A checkpoint's keys belong to a different model than the one asked for."""


class StageError(RamGroundedError):
    """A stage failed on a record (the record carries the message; the batch goes on)."""
