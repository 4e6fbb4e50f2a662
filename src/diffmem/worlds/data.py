"""What a world trains on, and the ground truth of what was planted in it.

A :class:`WorldData` holds the *distinct* images once (``images``) and the training set as rows pointing at them
(``train_ids`` repeats an id for each duplicate), so "the paired training image" of a prompt is an image id. The
prompt manifest is JSONL, one row per prompt:

``{"prompt": str, "kind": "planted" | "template" | "nonplanted" | "novel" | "class" | "null",
"paired_ids": [int, ...], "label": int | null}``

``paired_ids`` are the training images the prompt was trained with (planted: the one duplicated image; template:
the template's source image; nonplanted: every training image with that caption; novel: none); ``label`` is the
class the prompt names (for the alignment metric), or null.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from diffmem.io import atomic_write_text

__all__ = ["WorldData", "PROMPT_KINDS", "check_manifest_row", "write_manifest", "read_manifest", "fingerprint"]

PROMPT_KINDS = ("planted", "template", "nonplanted", "novel", "class", "null", "ladder", "nonduplicated", "heldout")
_FIELDS = {"prompt": str, "kind": str, "paired_ids": list, "label": (int, type(None))}


@dataclass(frozen=True)
class WorldData:
    """Images, training rows and prompt manifest of one world.

    Attributes:
        name: world name.
        images: [N, C, H, W] distinct images in [-1, 1] (sources and template composites).
        labels: [N] class id per image, −1 where unknown.
        train_ids: [R] image id of each training row (a planted image appears m times).
        train_captions: R captions ("" for every row of a class-conditional world).
        train_kinds: R tags: ``planted``, ``template`` or ``plain``.
        heldout_ids: images never trained on.
        prompts: the manifest rows (see module docstring).
        class_names: names of the classes (digits: "zero" … "nine"), or None.
        conditioning: ``"text"`` or ``"class"``.
        template_mask: [C, H, W] bool, the region template composites share (None without templates).
    """

    name: str
    images: Tensor
    labels: Tensor
    train_ids: Tensor
    train_captions: tuple[str, ...]
    train_kinds: tuple[str, ...]
    heldout_ids: Tensor
    prompts: tuple[dict, ...]
    class_names: tuple[str, ...] | None = None
    conditioning: str = "text"
    template_mask: Tensor | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        R = len(self.train_ids)
        if len(self.train_captions) != R or len(self.train_kinds) != R:
            raise ValueError(f"{R} training rows but {len(self.train_captions)} captions and "
                             f"{len(self.train_kinds)} kinds")
        if self.conditioning not in ("text", "class"):
            raise ValueError(f"conditioning must be 'text' or 'class', got {self.conditioning!r}")
        for row in self.prompts:
            check_manifest_row(row)

    @property
    def train_image_ids(self) -> Tensor:
        """Distinct image ids in the training set, ascending."""
        return torch.unique(self.train_ids)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])

    def fingerprint(self) -> str:
        return fingerprint(self.images, self.train_ids, self.train_captions)


def fingerprint(images: Tensor, train_ids: Tensor, captions: Sequence[str]) -> str:
    """sha256 of the training data (pixels as float32, row ids, captions): a changed dataset gets a new checkpoint."""
    h = hashlib.sha256()
    h.update(images.to(torch.float32).contiguous().numpy().tobytes())
    h.update(train_ids.to(torch.int64).contiguous().numpy().tobytes())
    h.update("\n".join(captions).encode())
    return h.hexdigest()


def check_manifest_row(row: dict) -> dict:
    """Validate one manifest row (field names, types, kind); returns it."""
    if not isinstance(row, dict):
        raise ValueError(f"manifest row must be an object, got {row!r}")
    missing = [k for k in _FIELDS if k not in row]
    if missing:
        raise ValueError(f"manifest row {row!r} lacks field(s) {missing}")
    for k, tp in _FIELDS.items():
        if isinstance(row[k], bool) or not isinstance(row[k], tp):
            raise ValueError(f"manifest field {k!r} has the wrong type in {row!r}")
    if row["kind"] not in PROMPT_KINDS:
        raise ValueError(f"manifest kind {row['kind']!r} not one of {PROMPT_KINDS}")
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in row["paired_ids"]):
        raise ValueError(f"manifest paired_ids must be non-negative ints, got {row['paired_ids']!r}")
    return row


def write_manifest(path: str | Path, rows: Sequence[dict]) -> Path:
    """Atomically write the manifest as JSONL (rows validated first)."""
    lines = [json.dumps(check_manifest_row(dict(r)), sort_keys=True) for r in rows]
    return atomic_write_text(path, "\n".join(lines) + "\n")


def read_manifest(path: str | Path) -> list[dict]:
    """Read and validate a JSONL manifest (blank lines skipped; a bad line names its number)."""
    rows = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(check_manifest_row(json.loads(line)))
        except (json.JSONDecodeError, ValueError) as err:
            raise ValueError(f"{path}:{n}: {err}") from err
    return rows
