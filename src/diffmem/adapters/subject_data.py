"""A diffusers DiT or PixArt model plus its training data as a :class:`~diffmem.subject.Subject`.

Data: ``images`` [N, C, H, W] or [N, H, W, C] **in [0, 1]** (float; uint8 in 0..255 is also read) at the model's
pixel size, and for a DiT ``labels`` [N] (class ids; optional only for a one-class model), for PixArt ``captions``
[N] (strings). The images are encoded once by the pipeline's VAE (posterior mean), so the training set is in the
model's latent state space. The subject's prompts are the distinct classes or captions (sorted): what generation
cycles over. Training losses (fine-tuning, importance scores) differentiate :class:`TrainableTransformer`, which
keeps the diffusers model in eval mode: CFG dropout is the training batches' own, seeded (diffusers' DiT label
dropout in train mode draws from torch's global RNG).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from diffmem.adapters.dit import DiTAdapter
from diffmem.adapters.local import check_pipeline_dir
from diffmem.adapters.pixart import PixArtAdapter
from diffmem.adapters.subject import rebind_adapter
from diffmem.images import check_memory
from diffmem.similarity.features import file_sha256
from diffmem.subject import Prompt, Subject, TrainingSet
from diffmem.types import Cond

__all__ = ["ADAPTERS", "load_data_adapter", "read_npz", "to_pixels", "TrainableTransformer", "data_subject",
           "npz_subject"]


ADAPTERS = {"DiTPipeline": DiTAdapter, "PixArtAlphaPipeline": PixArtAdapter, "PixArtSigmaPipeline": PixArtAdapter}


def load_data_adapter(path: str | Path, **kwargs):
    """The :class:`DiTAdapter` or :class:`PixArtAdapter` of the local pipeline directory ``path`` (by the class its
    ``model_index.json`` names); ``kwargs`` go to ``from_pretrained``."""
    name = check_pipeline_dir(path, ()).get("_class_name")
    if name not in ADAPTERS:
        raise ValueError(f"{Path(path) / 'model_index.json'} describes a {name!r}; expected one of {sorted(ADAPTERS)}")
    return ADAPTERS[name].from_pretrained(path, **kwargs)


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """``images`` and, when present, ``labels`` and ``captions`` of an ``.npz`` file, checked before any model loads:
    a readable archive without pickles, ``images`` a non-empty 4-D batch of uint8, uint16 or finite floats in
    [0, 1], ``labels`` one integer per image, ``captions`` one string per image. Anything else is a one-line
    ValueError naming the file and the fix."""
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"data file {str(path)!r} {'is not a file' if path.exists() else 'does not exist'}; give an "
                         ".npz with 'images' (and 'labels' or 'captions')")
    try:
        f = np.load(path, allow_pickle=False)
        if not hasattr(f, "files"):
            raise ValueError(f"{path} is a single .npy array, not an .npz archive; save with numpy.savez(path, "
                             "images=..., labels=...)")
        with f:
            if "images" not in f.files:
                raise ValueError(f"{path} has no 'images' array (found {sorted(f.files)})")
            data = {k: f[k] for k in ("images", "labels", "captions") if k in f.files}
    except (zipfile.BadZipFile, EOFError, OSError) as err:
        raise ValueError(f"{path} is not a readable .npz ({type(err).__name__}: {err}); write it again with "
                         "numpy.savez") from None
    except ValueError as err:
        if "allow_pickle" not in str(err) and "pickle" not in str(err):
            raise
        raise ValueError(f"{path} is not an .npz of plain arrays (a pickle, object arrays or another format; "
                         "diffmem never unpickles): write it with numpy.savez") from None
    _check_images(data["images"], path)
    n = len(data["images"])
    if "labels" in data:
        a = data["labels"]
        if a.shape != (n,) or a.dtype.kind not in "iu":
            raise ValueError(f"{path}: 'labels' must be {n} integers (one class id per image), got dtype {a.dtype} "
                             f"shape {a.shape}; store them as int64")
    if "captions" in data:
        a = data["captions"]
        if a.shape != (n,) or a.dtype.kind not in "US":
            raise ValueError(f"{path}: 'captions' must be {n} strings (one per image), got dtype {a.dtype} shape "
                             f"{a.shape}")
    return data


def _check_images(a: np.ndarray, where) -> None:
    """A non-empty [N, C, H, W] / [N, H, W, C] batch of uint8, uint16 or finite floats in [0, 1]."""
    if a.ndim != 4 or a.size == 0:
        raise ValueError(f"{where}: 'images' must be a non-empty batch [N, C, H, W] or [N, H, W, C], got shape "
                         f"{a.shape}")
    if a.dtype.kind == "f":
        if not np.isfinite(a).all():
            raise ValueError(f"{where}: 'images' contain NaN or inf; remove or repair those images")
        lo, hi = float(a.min()), float(a.max())
        if lo < 0 or hi > 1:
            raise ValueError(f"{where}: 'images' range over [{lo}, {hi}]; expected floats in [0, 1] (or uint8, "
                             "uint16): map [-1, 1] data by (x + 1) / 2")
    elif a.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"{where}: 'images' have dtype {a.dtype}; expected floats in [0, 1], uint8 or uint16")


def to_pixels(images: np.ndarray, chw: tuple[int, int, int]) -> Tensor:
    """[N, C, H, W] in [−1, 1] from [N, C, H, W] or [N, H, W, C] in [0, 1] (or uint8 / 255, uint16 / 65535)."""
    a = np.asarray(images)
    _check_images(a, "data")
    C, H, W = chw
    if tuple(a.shape[1:]) == (H, W, C) and tuple(a.shape[1:]) != chw:
        a = a.transpose(0, 3, 1, 2)
    elif tuple(a.shape[1:]) != chw:
        raise ValueError(f"images have shape {tuple(a.shape)}; the model expects [N, {C}, {H}, {W}] or "
                         f"[N, {H}, {W}, {C}]")
    check_memory(a.size * 4, f"{len(a)} images of {C}x{H}x{W} as float32")
    scale = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(a.dtype, 1.0)
    x = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32) / np.float32(scale))
    return x * 2 - 1


def _labels(labels: np.ndarray | None, n: int, num_classes: int) -> Tensor:
    if labels is None:
        if num_classes > 1:
            raise ValueError(f"the model is class-conditional with num_classes={num_classes}; the data needs "
                             "'labels' [N]")
        return torch.zeros(n, dtype=torch.long)
    a = np.asarray(labels)
    if a.shape != (n,) or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"labels must be integers of shape ({n},), got {a.dtype} {tuple(a.shape)}")
    bad = a[(a < 0) | (a >= num_classes)]
    if len(bad):
        raise ValueError(f"labels must lie in [0, {num_classes}), got {sorted(set(bad.tolist()))[:5]}")
    return torch.from_numpy(a.astype(np.int64))


def _captions(captions: np.ndarray | Sequence[str] | None, n: int) -> list[str]:
    if captions is None:
        raise ValueError("a caption-conditioned model (PixArt) needs 'captions' [N] with the training images")
    if not all(isinstance(c, str) for c in np.asarray(captions).reshape(-1).tolist()):
        raise ValueError("captions must be strings, one per image")
    text = [str(c) for c in np.asarray(captions).reshape(-1)]
    if len(text) != n:
        raise ValueError(f"captions must have shape ({n},), got {len(text)} captions")
    return text


class TrainableTransformer(nn.Module):
    """A diffusers transformer as the ε-network training losses differentiate.

    ``condition(ids)`` maps training-row condition ids to the adapter's conditioning (class ids as they are;
    caption ids to rows of ``table`` = ``{"embeds": [K, L, D], "mask": [K, L]}``); ``forward(x_t, t, c)`` is ε
    (v- and x₀-prediction converted by the adapter), on the device of ``x_t``. The parameters are the transformer's.
    """

    def __init__(self, denoiser, table: dict[str, Tensor] | None = None):
        super().__init__()
        self.model = denoiser.model
        self.denoiser, self.table = denoiser, table

    def train(self, mode: bool = True):
        self.training = mode  # the diffusers model stays in eval mode (module docstring)
        return self

    def condition(self, ids: Tensor):
        if self.table is None:
            return ids
        ids = ids.to(self.table["embeds"].device)
        return {"embeds": self.table["embeds"][ids], "mask": self.table["mask"][ids]}

    def forward(self, x_t: Tensor, t: Tensor, c) -> Tensor:
        d = self.denoiser
        x = x_t.to(d.device)
        ab = d.schedule.alpha_bar(t.cpu()).to(x).view(-1, *[1] * (x.ndim - 1))
        return d.to_eps(d.model_output(x, t.to(x.device), c), x, ab).to(x_t.device)


def _prompts(adapter, classes_or_captions: list, table: dict[str, Tensor] | None) -> list[Prompt]:
    if table is None:
        return [Prompt(f"class:{k}", str(k), adapter.labels([k]), "class") for k in classes_or_captions]
    K = len(classes_or_captions)  # row K of the table is the empty caption (ε_u)
    null = {k: v[K:K + 1] for k, v in table.items()}
    return [Prompt(f"caption:{i}", text, Cond({k: v[i:i + 1] for k, v in table.items()}, null), "caption")
            for i, text in enumerate(classes_or_captions)]


def data_subject(adapter, images: np.ndarray, *, labels: np.ndarray | None = None,
                 captions: np.ndarray | Sequence[str] | None = None, info: dict | None = None,
                 batch_size: int = 64) -> tuple[Subject, Tensor]:
    """(the subject, the training images in pixels [N, C, H, W] in [−1, 1]) of a :class:`DiTAdapter` with class
    ``labels`` or a :class:`PixArtAdapter` with ``captions``."""
    if not isinstance(adapter, (DiTAdapter, PixArtAdapter)):
        raise ValueError(f"data subjects support DiTAdapter and PixArtAdapter, got {type(adapter).__name__}")
    c, h, w = adapter.latent_shape()
    down = adapter.codec.downsample
    x = to_pixels(images, (int(adapter.codec.vae.config.in_channels), h * down, w * down))
    if len(x) < 2:
        raise ValueError(f"need at least 2 training images, got {len(x)}")
    x0 = torch.cat([adapter.codec.encode(chunk).cpu() for chunk in x.split(batch_size)])
    table = None
    if isinstance(adapter, DiTAdapter):
        cond = _labels(labels, len(x), adapter.num_classes)
        keys, null = sorted(set(cond.tolist())), torch.tensor(adapter.null_class)
    else:
        text = _captions(captions, len(x))
        keys = sorted(set(text))
        cond, null = torch.tensor([keys.index(s) for s in text]), torch.tensor(len(keys))
        table = adapter.encode([*keys, ""])
    rebind = functools.partial(rebind_adapter, adapter)
    subject = Subject(adapter.name, adapter, adapter.model, adapter.latent_shape(), adapter.sampler,
                      _prompts(adapter, keys, table), references=x0,
                      training=TrainingSet(x0, torch.arange(len(x0)), cond, null),
                      decode=lambda z: adapter.codec.decode(z).float(),
                      condition=adapter.prompts if table is not None else None, rebind=rebind,
                      trainable=lambda net: TrainableTransformer(rebind(net), table),
                      info={"pipeline": type(adapter.pipeline).__name__, **(info or {})})
    return subject, x


def npz_subject(adapter, path: str | Path, **kwargs) -> tuple[Subject, Tensor]:
    """:func:`data_subject` of the ``.npz`` at ``path`` (its path and SHA-256 go into the subject's info)."""
    data = read_npz(path)
    info = {"data": str(path), "data_sha256": file_sha256(path), **kwargs.pop("info", {})}
    return data_subject(adapter, data["images"], labels=data.get("labels"), captions=data.get("captions"),
                        info=info, **kwargs)
