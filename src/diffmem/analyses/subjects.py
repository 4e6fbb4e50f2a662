"""Build a :class:`~diffmem.analyses.kim.KimSubject` from a prompt manifest and a diffusers text-to-image model.

Manifest: JSON Lines, one object per prompt: ``{"prompt": str, "image": path (relative to the manifest),
"kind": optional str, "id": optional str}``. Paired images are resized to the model's resolution (Lanczos, no
crop), scaled to [−1, 1] and encoded to the VAE posterior mean times the scaling factor (Kim et al. spec §2.4).
The references of the copy rule are the latents of all paired images of the manifest.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from diffmem.analyses.kim import KimPrompt, KimSubject

__all__ = ["read_manifest", "load_image", "diffusers_subject"]


def read_manifest(path: str | Path) -> list[dict]:
    """Rows of a JSONL manifest, each checked for ``prompt`` and ``image`` (paths made absolute)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"manifest {str(path)!r} does not exist")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{n}: not JSON ({err.msg})") from None
        missing = [k for k in ("prompt", "image") if not isinstance(row.get(k), str)]
        if missing:
            raise ValueError(f"{path}:{n}: missing string field {missing[0]!r}")
        image = (path.parent / row["image"]).resolve()
        if not image.is_file():
            raise ValueError(f"{path}:{n}: image {str(image)!r} does not exist")
        rows.append({"id": str(row.get("id", n - 1)), "kind": row.get("kind", "unknown"), **row, "image": image})
    if not rows:
        raise ValueError(f"manifest {str(path)!r} has no rows")
    return rows


def load_image(path: str | Path, size: tuple[int, int]) -> Tensor:
    """[3, H, W] in [−1, 1]: RGB, Lanczos-resized to ``size`` = (H, W) without cropping."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB").resize((size[1], size[0]), Image.LANCZOS)
        arr = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def diffusers_subject(model_dir: str | Path, manifest: str | Path, *, steps: int = 50, kind: str = "sd",
                      dtype: torch.dtype = torch.float32) -> KimSubject:
    """A Kim subject for a local Stable Diffusion (``kind="sd"``) or PixArt (``"pixart"``) directory."""
    if kind == "sd":
        from diffmem.adapters.diffusers_sd import StableDiffusionAdapter as Adapter
    elif kind == "pixart":
        from diffmem.adapters.pixart import PixArtAdapter as Adapter
    else:
        raise ValueError(f"unknown model kind {kind!r}; expected 'sd' or 'pixart'")
    adapter = Adapter.from_pretrained(model_dir)
    return adapter_subject(adapter, read_manifest(manifest), steps=steps, dtype=dtype, name=str(model_dir))


def adapter_subject(adapter, rows: list[dict], *, steps: int = 50, dtype: torch.dtype = torch.float32,
                    name: str = "diffusers") -> KimSubject:
    """A Kim subject from a built text-to-image adapter and manifest rows (see :func:`read_manifest`)."""
    c, h, w = adapter.latent_shape()
    down = adapter.codec.downsample
    images = torch.stack([load_image(r["image"], (h * down, w * down)) for r in rows])
    latents = adapter.codec.encode(images).to(dtype)
    conds = adapter.prompts([r["prompt"] for r in rows])
    prompts = [KimPrompt(r["id"], conds.select(torch.tensor([i])), latents[i], r["kind"]) for i, r in enumerate(rows)]
    spec = adapter.sampler(steps, solver="ddim")
    return KimSubject(adapter, spec.grid, prompts, latents, decode=adapter.codec.decode, name=name,
                      solver=spec.solver, x_T_scale=spec.x_T_scale)


def world_subject(world, *, steps: int = 50, per_kind: int | None = None,
                  kinds: tuple[str, ...] = ("planted", "nonplanted")) -> KimSubject:
    """A Kim subject from an embedded world (:func:`diffmem.worlds.world.load_world`): its prompts of ``kinds``
    (at most ``per_kind`` of each, in manifest order), each paired with its first training image, the world's grid
    and solver, and its distinct training images as the references of the copy rule."""
    rows = [r for r in world.data.prompts if r["kind"] in kinds and r["paired_ids"]]
    if per_kind is not None:
        rows = [r for k in kinds for r in [q for q in rows if q["kind"] == k][:per_kind]]
    if len(rows) < 3:
        raise ValueError(f"world {world.name!r} has only {len(rows)} prompts of kinds {kinds}")
    cond = world.cond_for(rows)
    prompts = [KimPrompt(f"{r['kind']}:{i}", cond.select(torch.tensor([i])), world.data.images[r["paired_ids"][0]],
                         r["kind"]) for i, r in enumerate(rows)]
    return KimSubject(world.denoiser, world.grid(steps), prompts, world.train_images(), name=world.name,
                      solver=world.solver)
