"""Loading diffusers pipelines from local directories only, with an error that names the missing file.

Real checkpoints (SD 1.x/2.x, DiT, PixArt) are never downloaded: a directory is checked file by file against its
``model_index.json`` before ``from_pretrained(..., local_files_only=True)`` is called, so an incomplete copy fails
with the path of the first absent file instead of a network call or a late, unrelated error.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from diffmem.io import check_safetensors

__all__ = ["ModelFilesMissing", "check_pipeline_dir", "load_local_pipeline"]

_WEIGHT_STEMS = {"diffusers": ("diffusion_pytorch_model",), "transformers": ("model", "pytorch_model")}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")
_TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"), ("spiece.model",))


class ModelFilesMissing(FileNotFoundError, ValueError):
    """A local model directory is missing or incomplete; the message names the absent path."""


def _missing(path: Path, what: str = "") -> ModelFilesMissing:
    return ModelFilesMissing(f"{path} is missing{what}; diffmem loads models from complete local directories only "
                             "(it never downloads)")


def _check_weights(folder: Path, library: str) -> None:
    """Safetensors weights present and whole; pickle (``.bin``) weights are refused, never loaded."""
    stems = _WEIGHT_STEMS.get(library, _WEIGHT_STEMS["diffusers"])
    # variants ("diffusion_pytorch_model.fp16.safetensors") and shards ("model-00001-of-00002.safetensors") count
    found = [f for f in sorted(folder.iterdir()) if f.name.startswith(stems) and f.name.endswith(_WEIGHT_SUFFIXES)]
    safe = [f for f in found if f.name.endswith(".safetensors")]
    if not safe and any(f.name.endswith((".safetensors.index.json",)) for f in found):
        raise _missing(folder / f"{stems[0]}.safetensors", f" (the shards its index names are absent in {folder})")
    if not safe and found:
        raise ValueError(f"{folder} holds only pickle weights ({found[0].name}); diffmem loads safetensors only: "
                         "convert them (e.g. save_pretrained(..., safe_serialization=True))")
    if not safe:
        raise _missing(folder / f"{stems[0]}.safetensors", f" (no {stems[0]}*.safetensors in {folder})")
    for f in safe:
        check_safetensors(f)  # a truncated copy fails here, naming the file


def _check_tokenizer(folder: Path) -> None:
    for group in _TOKENIZER_FILES:
        present = [(folder / name).is_file() for name in group]
        if all(present):
            return
        if any(present):  # half of a pair: name the half that is absent
            raise _missing(folder / group[present.index(False)])
    options = " or ".join(" + ".join(g) for g in _TOKENIZER_FILES)
    raise _missing(folder / "tokenizer.json", f" (a tokenizer needs {options} in {folder})")


def _check_component(root: Path, name: str, library: str, class_name: str) -> None:
    folder = root / name
    if not folder.is_dir():
        raise _missing(folder, f" (component {name!r}: {library}.{class_name} in model_index.json)")
    if class_name.endswith("Scheduler"):
        config = "scheduler_config.json"
    elif "Tokenizer" in class_name:
        return _check_tokenizer(folder)
    else:
        config = "config.json"
    if not (folder / config).is_file():
        raise _missing(folder / config)
    if config == "config.json":
        _check_weights(folder, library)


def check_pipeline_dir(path, components: Sequence[str]) -> dict:
    """Check a ``save_pretrained`` directory holds ``components`` with their configs and weights.

    Returns the parsed ``model_index.json``. Raises :class:`ModelFilesMissing` naming the first absent path.
    """
    root = Path(path)
    if not root.is_dir():
        raise _missing(root, " (not a local directory; pass the path of a diffusers save_pretrained folder)")
    index_path = root / "model_index.json"
    if not index_path.is_file():
        raise _missing(index_path)
    index = json.loads(index_path.read_text())
    for name in components:
        entry = index.get(name)
        if not isinstance(entry, list) or len(entry) != 2 or None in entry:
            raise ModelFilesMissing(f"{index_path} declares no component {name!r} (got {entry!r}); "
                                    f"this model needs {list(components)}")
        _check_component(root, name, *entry)
    return index


def load_local_pipeline(path, components: Sequence[str], classes: Sequence[str], **kwargs):
    """Load a diffusers pipeline of one of ``classes`` from a checked local directory, never from the network.

    ``kwargs`` go to ``from_pretrained`` (e.g. ``torch_dtype``, or ``safety_checker=None`` to skip a component).
    """
    import diffusers

    index = check_pipeline_dir(path, components)
    cls_name = index.get("_class_name")
    if cls_name not in classes:
        raise ValueError(f"{Path(path) / 'model_index.json'} describes a {cls_name!r}; expected one of {list(classes)}")
    kwargs.setdefault("use_safetensors", True)  # never fall back to pickle weights
    return getattr(diffusers, cls_name).from_pretrained(str(path), local_files_only=True, **kwargs)
