"""A diffusers text-to-image model plus a prompt manifest as a :class:`~diffmem.subject.Subject`.

Manifest: JSON Lines, one object per prompt: ``{"prompt": str, "image": path (relative to the manifest),
"kind": optional str, "id": optional str}``. Paired images are resized to the model's resolution (Lanczos, no
crop), scaled to [−1, 1] and encoded to the VAE posterior mean times the scaling factor: the latents the model
was trained on, as Kim, Kim & Lee (2025) encode their training images. The references of copy rules are the
latents of all paired images.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from diffmem.adapters.diffusers_common import DiffusersAdapter
from diffmem.adapters.diffusers_sd import StableDiffusionAdapter
from diffmem.adapters.pixart import PixArtAdapter
from diffmem.images import read_image
from diffmem.io import check_device
from diffmem.subject import Prompt, Subject

__all__ = ["ADAPTER_KINDS", "DTYPES", "read_manifest", "load_image", "model_device", "model_dtype", "load_adapter",
           "adapter_subject", "diffusers_subject"]

ADAPTER_KINDS = {"sd": StableDiffusionAdapter, "pixart": PixArtAdapter}  # text-to-image families by CLI key
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


def model_device(device: str | torch.device = "auto") -> torch.device:
    """Where a model runs: ``"auto"`` is the first CUDA device torch sees — in a Ray worker the one GPU it was
    given — else the CPU; any other name must exist on this machine (:func:`diffmem.io.check_device`)."""
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return check_device(device)


def model_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """A dtype by name (``float32``, ``float64``, ``float16``, ``bfloat16``) or as given."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_adapter(model_dir: str | Path, kind: str = "sd", *, device: str | torch.device = "cpu",
                 dtype: str | torch.dtype = torch.float32) -> DiffusersAdapter:
    """The local diffusers pipeline of family ``kind`` in ``model_dir`` (offline) on ``device`` (see
    :func:`model_device`) in ``dtype``; both are checked before the pipeline loads."""
    if kind not in ADAPTER_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {sorted(ADAPTER_KINDS)}")
    device, dtype = model_device(device), model_dtype(dtype)
    adapter = ADAPTER_KINDS[kind].from_pretrained(model_dir)
    adapter.pipeline.to(device=device, dtype=dtype)
    return adapter


def read_manifest(path: str | Path, *, require_images: bool = True) -> list[dict]:
    """Rows of a JSONL manifest, each checked for ``prompt`` and ``image`` (paths made absolute); with
    ``require_images=False`` a row may omit ``image`` (its ``image`` is None: a prompt without training image)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"manifest {str(path)!r} does not exist or is not a file")
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise ValueError(f"manifest {str(path)!r} is not UTF-8 text (JSON Lines)") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as err:
            raise ValueError(f"{path}:{n}: not JSON ({getattr(err, 'msg', 'nested too deeply')})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{n}: each line must be a JSON object {{\"prompt\": ..., \"image\": ...}}, "
                             f"got a {type(row).__name__}")
        needed = ("prompt", "image") if require_images or "image" in row else ("prompt",)
        missing = [k for k in needed if not isinstance(row.get(k), str)]
        if missing:
            raise ValueError(f"{path}:{n}: missing string field {missing[0]!r}")
        if "kind" in row and not isinstance(row["kind"], str):
            raise ValueError(f"{path}:{n}: 'kind' must be a string, got {row['kind']!r}")
        if "image" in row and ("\0" in row["image"] or not row["image"].strip()):
            raise ValueError(f"{path}:{n}: 'image' must name a file, got {row['image']!r}")
        image = (path.parent / row["image"]).resolve() if "image" in row else None
        if image is not None and not image.is_file():
            raise ValueError(f"{path}:{n}: image {str(image)!r} does not exist")
        rows.append({"id": str(row.get("id", n - 1)), "kind": row.get("kind", "unknown"), **row, "image": image})
    if not rows:
        raise ValueError(f"manifest {str(path)!r} has no rows")
    return rows


def load_image(path: str | Path, size: tuple[int, int]) -> Tensor:
    """[3, H, W] in [−1, 1]: RGB at its bit depth (:mod:`diffmem.images`), Lanczos-resized to ``size`` = (H, W)
    without cropping; an image smaller than ``size`` is refused."""
    arr = read_image(path, size=tuple(size), channels=3, fit="stretch", resample="lanczos")
    return torch.from_numpy((arr * 2 - 1).astype(np.float32))


def diffusers_subject(model_dir: str | Path, manifest: str | Path, *, steps: int = 50, kind: str = "sd",
                      dtype: str | torch.dtype = torch.float32, device: str | torch.device = "cpu") -> Subject:
    """The subject of a local Stable Diffusion (``kind="sd"``) or PixArt (``"pixart"``) directory and a manifest,
    the model on ``device`` (``"auto"``: CUDA when torch sees it) in ``dtype``, the paired latents in ``dtype``."""
    rows = read_manifest(manifest)  # a bad manifest is refused before the model loads
    adapter = load_adapter(model_dir, kind, device=device, dtype=dtype)
    return adapter_subject(adapter, rows, steps=steps, dtype=model_dtype(dtype), name=str(model_dir))


def adapter_subject(adapter: DiffusersAdapter, rows: list[dict], *, steps: int = 50,
                    dtype: torch.dtype = torch.float32, name: str = "diffusers") -> Subject:
    """The subject of a built text-to-image adapter and manifest rows (see :func:`read_manifest`).

    Each prompt is paired with the latent of its image; the references are all paired latents; decoding is the
    VAE's; the sampler reproduces the pipeline's scheduler with its DDIM solver; new texts are encoded by the
    adapter; :meth:`~diffmem.subject.Subject.edited` wraps an edited copy of the UNet/transformer."""
    c, h, w = adapter.latent_shape()
    down = adapter.codec.downsample
    paired = [i for i, r in enumerate(rows) if r["image"] is not None]  # rows without image: prompts only
    latents = None
    if paired:
        images = torch.stack([load_image(rows[i]["image"], (h * down, w * down)) for i in paired])
        latents = adapter.codec.encode(images).to(dtype)
    x = dict(zip(paired, latents if latents is not None else (), strict=True))
    conds = adapter.prompts([r["prompt"] for r in rows])
    # every other manifest field (split, m, regime, template …) is ground truth the harnesses read from meta
    meta = [{**{k: v for k, v in r.items() if k not in ("id", "prompt", "kind", "image")},
             "image": None if r["image"] is None else str(r["image"])} for r in rows]
    prompts = [Prompt(r["id"], r["prompt"], conds.select(torch.tensor([i])), r["kind"], x.get(i), meta[i])
               for i, r in enumerate(rows)]

    def sampler(n: int):
        return adapter.sampler(n, solver="ddim")

    return Subject(name, adapter, adapter.model, (c, h, w), sampler, tuple(prompts), steps=steps,
                   references=latents, decode=adapter.codec.decode, condition=adapter.prompts,
                   rebind=lambda net: rebind_adapter(adapter, net),
                   info={"adapter": type(adapter).__name__, "source": adapter.source, "n_manifest_rows": len(rows)})


def rebind_adapter(adapter: DiffusersAdapter, net: nn.Module) -> DiffusersAdapter:
    """A copy of ``adapter`` whose pipeline holds ``net`` in place of its denoising module (UNet or transformer);
    the other components (VAE, text encoder, scheduler) are shared, ``adapter`` is left as it was."""
    component = next(c for c in adapter.components if getattr(adapter.pipeline, c, None) is adapter.model)
    pipeline = copy.copy(adapter.pipeline)
    setattr(pipeline, component, net)
    new = copy.copy(adapter)
    new.pipeline = pipeline
    return new
