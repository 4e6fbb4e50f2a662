"""The mitigation protocol: three kinds of remedy, each acting only through the existing channels.

* **inference-time** (:class:`InferenceMitigation`): a guidance schedule, an :class:`~diffmem.sampling.hooks.
  Intervention` (x_T, conditioning, per-step state or weight), attention edits through :mod:`diffmem.attention`, or an
  optimization before sampling (prompt embedding, initial noise) whose cost it reports. It samples through
  :meth:`~diffmem.subject.Subject.sample` — the one loop — and never forks it;
* **permanent** (:class:`PermanentMitigation`): a model edit returning a subject around an edited *copy*
  (:meth:`~diffmem.subject.Subject.edited`); the caller's model is never touched;
* **training-time** (:class:`TrainingMitigation`): a change to the data or the training loop, returning a newly
  trained subject.

A mitigation is a frozen dataclass; its fields are its parameters, :attr:`Mitigation.knob` names the main one and
:attr:`Mitigation.grid` its published sweep, so the harness can draw a memorization-vs-quality curve. Gating (apply
only to prompts a calibrated detector flags) lives in the harness, so every inference-time method can be gated.
Register a new method with :func:`register` in its own file and import that file in :mod:`diffmem.mitigations`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import ClassVar

from diffmem.sampling.trajectory import Trajectory
from diffmem.subject import Prompt, Subject
from diffmem.types import Cond

__all__ = ["Mitigation", "InferenceMitigation", "PermanentMitigation", "TrainingMitigation", "MITIGATIONS",
           "register", "make_mitigation", "KINDS"]

KINDS = ("inference", "permanent", "training")
MITIGATIONS: dict[str, type[Mitigation]] = {}


@dataclass(frozen=True)
class Mitigation:
    """Base of every mitigation (a frozen dataclass whose fields are its parameters).

    Class attributes:
        name: registry key (stable: it appears in every result row).
        citation: the paper (the first docstring line says the same).
        kind: "inference", "permanent" or "training".
        knob: the field swept for the memorization-vs-quality curve (None: no knob).
        grid: the knob's published values (the default is one of them where the paper gives one).
        ours: True for methods of our design (labelled in every output).
    """

    name: ClassVar[str] = ""
    citation: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    knob: ClassVar[str | None] = None
    grid: ClassVar[tuple] = ()
    ours: ClassVar[bool] = False

    def describe(self) -> dict:
        """Provenance: name, kind, citation and every parameter."""
        return {"name": self.name, "kind": self.kind, "citation": self.citation, "ours": self.ours,
                "params": asdict(self)}

    @property
    def setting(self) -> str:
        """A short label of this setting, e.g. ``"tau=500"`` (the knob and its value), or ``"default"``."""
        return f"{self.knob}={getattr(self, self.knob)!r}" if self.knob else "default"


@dataclass(frozen=True)
class InferenceMitigation(Mitigation):
    """A remedy applied while sampling; the model is unchanged."""

    kind = "inference"

    def sample(self, subject: Subject, cond: Cond, seeds: Sequence[int], *, guidance: float = 7.5,
               steps: int | None = None, **kwargs) -> Trajectory:
        """Sample rows of ``cond`` (row i with seed i) with the remedy applied, through ``subject.sample``.

        ``guidance`` is the weight plain sampling would use; ``kwargs`` (``recorder``, ``hooks``) are passed on and
        combined with the remedy's own hooks and interventions."""
        raise NotImplementedError  # pragma: no cover - interface


@dataclass(frozen=True)
class PermanentMitigation(Mitigation):
    """A remedy that edits the model once; :meth:`apply` returns a subject around an edited copy."""

    kind = "permanent"

    def apply(self, subject: Subject, prompts: Sequence[Prompt] = ()) -> Subject:
        """The edited subject. ``prompts`` are the prompts the edit may be fitted on (e.g. memorized triggers to
        localize neurons from); the caller's subject and model are left as they were."""
        raise NotImplementedError  # pragma: no cover - interface


@dataclass(frozen=True)
class TrainingMitigation(Mitigation):
    """A remedy applied while training: :meth:`train` returns a subject trained with it."""

    kind = "training"

    def train(self, subject: Subject, **train_kwargs) -> Subject:
        """A subject trained from scratch (or fine-tuned, as the method says) on ``subject``'s training set with the
        remedy; the data and recipe come from ``subject`` (its :attr:`~diffmem.subject.Subject.training`)."""
        raise NotImplementedError  # pragma: no cover - interface


def register(cls: type[Mitigation]) -> type[Mitigation]:
    """Class decorator: add a mitigation to :data:`MITIGATIONS` under its ``name``."""
    if not cls.name or cls.name in MITIGATIONS:
        raise ValueError(f"mitigation name {cls.name!r} is empty or already registered")
    if cls.kind not in KINDS:
        raise ValueError(f"mitigation {cls.name!r} has kind {cls.kind!r}; expected one of {KINDS}")
    MITIGATIONS[cls.name] = cls
    return cls


def make_mitigation(name: str, **params) -> Mitigation:
    """A registered mitigation by name with parameters, or a ValueError listing the names."""
    if name not in MITIGATIONS:
        raise ValueError(f"unknown mitigation {name!r}; choose from {', '.join(sorted(MITIGATIONS))}")
    return MITIGATIONS[name](**params)
