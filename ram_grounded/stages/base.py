"""Stage protocol and the two base classes every built-in stage derives from.

A stage is a dataclass: its fields are its parameters (what a pipeline YAML may set, with
their types and defaults), its class attributes ``name`` / ``reads`` / ``writes`` say what
it is and which Record fields it touches. ``__call__`` takes and returns a batch of records.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

from ..record import Record

logger = logging.getLogger(__name__)


@runtime_checkable
class StageProtocol(Protocol):
    """What the Pipeline needs of a stage (plugins may implement it without our base class)."""

    name: str
    reads: frozenset[str]
    writes: frozenset[str]

    def __call__(self, records: list[Record]) -> list[Record]: ...


@dataclass(eq=False)
class Stage:
    """Base for model-free stages: subclasses implement :meth:`process`."""

    name: ClassVar[str] = "stage"
    reads: ClassVar[frozenset[str]] = frozenset()
    writes: ClassVar[frozenset[str]] = frozenset()

    def process(self, records: list[Record]) -> list[Record]:
        """Fill ``writes`` on every record of the batch (records without an error)."""
        raise NotImplementedError

    def __call__(self, records: list[Record]) -> list[Record]:
        return self.process(records)

    def params(self) -> dict[str, Any]:
        """The stage's parameters as plain values (what ``to_yaml`` writes)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}

    def describe(self) -> str:
        """First line of the class docstring."""
        return (type(self).__doc__ or self.name).strip().splitlines()[0]


@dataclass(eq=False)
class ModelStage(Stage):
    """Base for stages backed by a model: lazy loading and device placement.

    Subclasses implement :meth:`load` (build the model on :attr:`torch_device`) and
    :meth:`process` (one forward per batch). ``device`` is "auto" (cuda, else mps, else
    cpu) or any torch device string.
    """

    device: str = "auto"

    def __post_init__(self) -> None:
        self._loaded = False

    @property
    def torch_device(self):  # -> torch.device; torch imported lazily to keep the CLI fast
        from ..devices import resolve_device

        return resolve_device(self.device)

    def load(self) -> None:
        """Build or fetch the model(s); called once before the first batch."""
        raise NotImplementedError

    def ensure_loaded(self) -> None:
        if not self._loaded:
            self.load()
            self._loaded = True

    def to(self, device: str) -> ModelStage:
        """Move to ``device``; an already loaded model is reloaded there on next use."""
        if device != self.device:
            self.device = device
            self._loaded = False
        return self

    def __call__(self, records: list[Record]) -> list[Record]:
        self.ensure_loaded()
        return self.process(records)
