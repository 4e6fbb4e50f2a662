"""Table 1 of Ye et al. (2025) for a diffusers DiT from a local directory: the original model, Algorithm-1 head
pruning and random pruning at the same η, each pruned model fine-tuned M steps alike, over several runs.

Data: an ``.npz`` with ``images`` [N, C, H, W] or [N, H, W, C] **in [0, 1]** (float; uint8 in 0..255 is also read)
at the model's pixel size, and ``labels`` [N] (class ids; optional only for a one-class model). The training
images are encoded once by the pipeline's VAE (posterior mean), so x0 is in the model's latent state space.

Loss (scoring and fine-tuning): the ε-prediction loss ‖ε − ε_θ(√ᾱ_t x0 + √(1−ᾱ_t) ε, t, c)‖² (mean), with learned-σ
channels split off and v-prediction converted to ε by the adapter; labels are replaced by the null class with
probability ``p_uncond`` (CFG dropout, seeded: the model stays in eval mode, where diffusers' own label dropout,
drawn from torch's global RNG, is off). Scoring draws t from Beta(0.8, 2) (or uniform); fine-tuning draws t
uniformly (the ordinary training loss), AdamW without EMA.

Evaluation: N samples through :func:`diffmem.sample` (DiTAdapter, the pipeline's scheduler, guidance 1, i.e. no
CFG; sample i of run s has seed s·N + i and class k[(s·N + i) mod K] over the K classes of the data), decoded to
pixels; memorization ratio by the 1/3 rule on flattened decoded pixels against the training images; FID and
precision/recall (k = 3) in :func:`pixel_features` (or a given feature extractor) against the training images.

Run s uses seed s for the scoring batches (or the random pick), the fine-tuning draws and the sampling noise. Rows
``OUT/runs/{method}-{s}.json`` are written when done and skipped when present (resumable); ``OUT/summary.json``
holds ``mem_ratio_mean`` … ``recall_std`` per method plus ``settings``; the run-0 Algorithm-1 model is saved to
``OUT/pruned/`` (:func:`~diffmem.mitigations.diffusers_heads.load_pruned` reads it back).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from diffmem.io import read_json, write_json
from diffmem.mitigations.diffusers_heads import (
    head_counts,
    head_scores,
    random_model_heads,
    remove_heads,
    save_pruned,
)
from diffmem.mitigations.head_pruning import lowest_heads, normalise_per_layer, prune_count
from diffmem.mitigations.prune_eval import run_metrics, summarise
from diffmem.mitigations.pruning import PruneResult
from diffmem.mitigations.time_law import TIME_LAWS, draw_timesteps

__all__ = ["MODEL_METHODS", "ModelData", "read_npz", "prepare_data", "draw_batch", "eps_loss", "prune_model",
           "finetune_model", "generate_images", "pixel_features", "run_model_table"]

MODEL_METHODS = ("original", "importance", "random")
FEATURE_SIDE = 32  # FID needs an F×F covariance: pixels are average-pooled to at most 32×32 per channel
_SCORING, _FINETUNE = 0, 1  # random streams of one seed


@dataclass(frozen=True)
class ModelData:
    """A training set prepared for one model.

    Attributes:
        images: [N, C, H, W] pixels in [−1, 1] (the copy test's and FID's reference set).
        x0: [N, c, h, w] VAE latents of ``images`` (the model's state space).
        labels: [N] class ids; classes: the distinct ids, sorted (samples cycle over them).
    """

    images: Tensor
    x0: Tensor
    labels: Tensor
    classes: list


def read_npz(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(``images``, ``labels`` or None) of an ``.npz`` file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"data file not found: {str(path)!r}")
    with np.load(path, allow_pickle=False) as f:
        if "images" not in f:
            raise ValueError(f"{path} has no 'images' array (found {sorted(f.files)})")
        return f["images"], (f["labels"] if "labels" in f else None)


def _pixels(images: np.ndarray, chw: tuple[int, int, int]) -> Tensor:
    """[N, C, H, W] in [−1, 1] from [N, C, H, W] or [N, H, W, C] in [0, 1] (or uint8)."""
    a = np.asarray(images)
    C, H, W = chw
    if a.ndim == 4 and tuple(a.shape[1:]) == chw:
        pass
    elif a.ndim == 4 and tuple(a.shape[1:]) == (H, W, C):
        a = a.transpose(0, 3, 1, 2)
    else:
        raise ValueError(f"images have shape {tuple(a.shape)}; the model expects [N, {C}, {H}, {W}] or "
                         f"[N, {H}, {W}, {C}]")
    if a.dtype == np.uint8:
        x = torch.from_numpy(a.astype(np.float32) / 255)
    elif np.issubdtype(a.dtype, np.floating):
        x = torch.from_numpy(a.astype(np.float32))
        lo, hi = float(x.min()), float(x.max())
        if not (np.isfinite(lo) and np.isfinite(hi) and lo >= 0 and hi <= 1):
            raise ValueError(f"images range over [{lo}, {hi}]; expected floats in [0, 1] (or uint8)")
    else:
        raise ValueError(f"images have dtype {a.dtype}; expected floats in [0, 1] or uint8")
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


def prepare_data(adapter, images: np.ndarray, labels: np.ndarray | None = None, *, batch: int = 64) -> ModelData:
    """Validate ``images``/``labels`` against ``adapter`` (a DiTAdapter) and encode the images to latents."""
    c, h, w = adapter.latent_shape()
    down = adapter.codec.downsample
    x = _pixels(images, (int(adapter.codec.vae.config.in_channels), h * down, w * down))
    if len(x) < 2:
        raise ValueError(f"need at least 2 training images, got {len(x)}")
    y = _labels(labels, len(x), adapter.num_classes)
    x0 = torch.cat([adapter.codec.encode(chunk).cpu() for chunk in x.split(batch)])
    return ModelData(x, x0, y, sorted(set(y.tolist())))


def _generator(*keys: int) -> torch.Generator:
    state = np.random.SeedSequence(list(keys)).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def draw_batch(data: ModelData, b: int, *, seed: int, stream: int, batch_size: int, num_train_timesteps: int,
               law: str, p_uncond: float, null_class: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x0 [B, c, h, w], t [B], ε [B, c, h, w], labels [B]) of batch ``b``; depends only on (seed, stream, b)."""
    g = _generator(seed, stream, b)
    rows = torch.randint(len(data.x0), (batch_size,), generator=g)
    eps = torch.randn((batch_size, *data.x0.shape[1:]), generator=g, dtype=data.x0.dtype)
    drop = torch.rand(batch_size, generator=g) < p_uncond
    labels = torch.where(drop, null_class, data.labels[rows])
    t = draw_timesteps(batch_size, num_train_timesteps, seed=[seed, stream, b], law=law)
    return data.x0[rows], t, eps, labels


def eps_loss(adapter, x0: Tensor, t: Tensor, eps: Tensor, labels: Tensor) -> Tensor:
    """The ε-prediction training loss of ``adapter.model`` (mean over all elements)."""
    x0, eps = x0.to(adapter.device), eps.to(adapter.device)
    ab = adapter.schedule.alpha_bar(t).to(device=x0.device, dtype=x0.dtype).view(-1, *[1] * (x0.ndim - 1))
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    return F.mse_loss(adapter.to_eps(adapter.model_output(x_t, t, labels), x_t, ab), eps)


def _batches(adapter, data: ModelData, *, seed: int, stream: int, batch_size: int, law: str, p_uncond: float):
    if not 0 <= p_uncond <= 1:
        raise ValueError(f"p_uncond must be in [0, 1], got {p_uncond!r}")
    table = next((m.embedding_table for m in adapter.model.modules() if hasattr(m, "embedding_table")), None)
    if p_uncond > 0 and table is not None and table.num_embeddings <= adapter.null_class:
        raise ValueError(f"p_uncond={p_uncond} needs a null-class row, but the label table has "
                         f"{table.num_embeddings} rows; use p_uncond=0")
    T = adapter.schedule.num_train_timesteps
    return lambda b: eps_loss(adapter, *draw_batch(data, b, seed=seed, stream=stream, batch_size=batch_size,
                                                   num_train_timesteps=T, law=law, p_uncond=p_uncond,
                                                   null_class=adapter.null_class))


def prune_model(adapter, data: ModelData, *, method: str = "importance", ratio: float = 0.2, law: str = "beta",
                num_batches: int = 100, batch_size: int = 128, seed: int = 0, p_uncond: float = 0.1) -> PruneResult:
    """Algorithm 1 steps 1-3 on ``adapter.model`` in place: score (Algorithm 2, batches seeded by ``seed``, t from
    ``law``) or draw at random, select ⌊η·H⌋ heads, remove them physically."""
    if method not in ("importance", "random"):
        raise ValueError(f"unknown pruning method {method!r}; expected 'importance' or 'random'")
    counts = head_counts(adapter.model)
    scores, importance = {}, {}
    if method == "importance":
        loss = _batches(adapter, data, seed=seed, stream=_SCORING, batch_size=batch_size, law=law, p_uncond=p_uncond)
        scores = head_scores(adapter.model, loss, num_batches)
        importance = normalise_per_layer(scores)
        heads = lowest_heads(importance, ratio)
    else:
        heads = random_model_heads(adapter.model, ratio, seed=seed)
    per_layer = {name: sum(h.layer == name for h in heads) for name in counts}
    result = PruneResult(method, float(ratio), law, seed, num_batches, sum(counts.values()),
                         [[h.layer, h.index] for h in heads], per_layer, scores, importance)
    remove_heads(adapter.model, heads)
    return result


def finetune_model(adapter, data: ModelData, steps: int, *, seed: int = 0, batch_size: int = 128, lr: float = 1e-4,
                   weight_decay: float = 0.0, p_uncond: float = 0.1) -> list[float]:
    """Algorithm 1 step 4: ``steps`` AdamW steps of the training loss (t uniform); returns the losses."""
    if steps < 0:
        raise ValueError(f"fine-tuning steps must be >= 0, got {steps}")
    model = adapter.model
    loss_of = _batches(adapter, data, seed=seed, stream=_FINETUNE, batch_size=batch_size, law="uniform",
                       p_uncond=p_uncond)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    losses = []
    model.eval()  # label dropout is ours (seeded); DiT has no other train-mode behaviour
    for step in range(steps):
        loss = loss_of(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.zero_grad(set_to_none=True)
    return losses


def generate_images(adapter, n: int, classes: list, *, seed: int = 0, steps: int = 50, batch: int = 64) -> Tensor:
    """``n`` decoded samples [n, C, H, W] in [−1, 1] (CPU, float32) through :func:`diffmem.sample` with the
    pipeline's scheduler and guidance 1; sample i has seed ``seed + i`` and class ``classes[(seed + i) mod K]``."""
    from diffmem import Recorder

    if n < 1 or not classes:
        raise ValueError(f"need n >= 1 samples and some classes, got n={n}, classes={classes}")
    out = []
    for i in range(0, n, batch):
        seeds = list(range(seed + i, seed + min(n, i + batch)))
        cond = adapter.labels([classes[s % len(classes)] for s in seeds])
        traj = adapter.generate(cond, seeds, steps, guidance=1.0, recorder=Recorder(keep=()))
        out.append(adapter.codec.decode(traj.x_0).clamp(-1, 1).float().cpu())
    return torch.cat(out)


def pixel_features(images: Tensor) -> Tensor:
    """FID / precision-recall features: pixels average-pooled to at most 32×32, flattened (float64)."""
    H, W = images.shape[-2:]
    if H > FEATURE_SIDE or W > FEATURE_SIDE:
        images = F.adaptive_avg_pool2d(images.float(), (min(H, FEATURE_SIDE), min(W, FEATURE_SIDE)))
    return images.flatten(1).double()


def _one_run(adapter, data: ModelData, method: str, seed: int, out: Path, o: dict, features) -> dict:
    row: dict = {"method": method, "seed": seed}
    if method != "original":
        before = head_counts(adapter.model)
        result = prune_model(adapter, data, method=method, ratio=o["ratio"], law=o["law"],
                             num_batches=o["num_batches"], batch_size=o["batch_size"], seed=seed,
                             p_uncond=o["p_uncond"])
        losses = finetune_model(adapter, data, o["finetune_steps"], seed=seed, batch_size=o["batch_size"],
                                lr=o["lr"], p_uncond=o["p_uncond"])
        k = max(1, min(10, len(losses) // 2))  # loss at the start and end of fine-tuning, mean of ≤ 10 steps
        row.update(removed=result.removed, removed_per_layer=result.removed_per_layer,
                   finetune_loss=[float(np.mean(losses[:k])), float(np.mean(losses[-k:]))] if losses else [])
        if seed == 0 and method == "importance":
            save_pruned(adapter.model, result.heads, out / "pruned", source=o["model"],
                        pipeline=type(adapter.pipeline).__name__, heads_before=before,
                        extra={"finetune_steps": o["finetune_steps"], "ratio": o["ratio"], "law": o["law"]})
            result.save(out / "pruned")
    x = generate_images(adapter, o["n_samples"], data.classes, seed=seed * o["n_samples"], steps=o["sample_steps"])
    row.update(run_metrics(x, data.images, data.images, features))
    return row


def run_model_table(model_dir: str | Path, data_path: str | Path, out: str | Path, *, ratio: float = 0.2,
                    runs: int = 5, law: str = "beta", num_batches: int = 100, batch_size: int = 128,
                    finetune_steps: int = 1000, n_samples: int = 1000, sample_steps: int = 50, lr: float = 1e-4,
                    p_uncond: float = 0.1, methods: tuple[str, ...] = MODEL_METHODS, device: str = "cpu",
                    features=None) -> dict:
    """Fill Table 1 for the DiTPipeline saved in ``model_dir`` on the ``.npz`` at ``data_path``, running the model
    on ``device``; returns the summary written to ``out/summary.json`` (see the module docstring).

    ``features``: a :class:`~diffmem.similarity.features.FeatureExtractor` (e.g. a local Inception TorchScript via
    ``TorchScriptExtractor``) for FID and precision/recall; default :func:`pixel_features`.
    """
    from diffmem.adapters.dit import DiTAdapter
    from diffmem.mitigations.experiment import check_table_settings
    from diffmem.similarity.features import file_sha256

    unknown = [m for m in methods if m not in MODEL_METHODS]
    if unknown or not methods:
        raise ValueError(f"unknown method(s) {unknown or list(methods)}; --model supports {list(MODEL_METHODS)}")
    if runs < 1 or num_batches < 1 or batch_size < 1 or n_samples < 4:
        raise ValueError(f"need runs, num_batches, batch_size >= 1 and n_samples >= 4, got runs={runs}, "
                         f"num_batches={num_batches}, batch_size={batch_size}, n_samples={n_samples}")
    if law not in TIME_LAWS:
        raise ValueError(f"unknown time law {law!r}; expected one of {TIME_LAWS}")
    prune_count(1, ratio)  # rejects a bad η before any loading
    adapter = DiTAdapter.from_pretrained(model_dir)
    adapter.pipeline.to(device)
    data = prepare_data(adapter, *read_npz(data_path))
    out = Path(out)
    o = {"model": str(Path(model_dir).resolve()), "data_sha256": file_sha256(data_path),
         "ratio": ratio, "law": law, "num_batches": num_batches, "batch_size": batch_size,
         "finetune_steps": finetune_steps, "lr": lr, "p_uncond": p_uncond, "n_samples": n_samples,
         "sample_steps": sample_steps,  # features as JSON reads them back, so a resumed run compares equal
         "features": "pixels" if features is None else json.loads(json.dumps(features.describe()))}
    check_table_settings(out, o)
    original, rows = adapter.pipeline.transformer, {m: [] for m in methods}
    for seed in range(runs):
        for method in methods:
            path = out / "runs" / f"{method}-{seed}.json"
            if not path.exists():
                adapter.pipeline.transformer = copy.deepcopy(original) if method != "original" else original
                try:
                    write_json(path, _one_run(adapter, data, method, seed, out, o,
                                              pixel_features if features is None else features.features))
                finally:
                    adapter.pipeline.transformer = original
            rows[method].append(read_json(path))
    summary = {**summarise(rows), "settings": {**o, "data": str(data_path), "runs": runs, "methods": list(methods),
                                               "device": str(device), **_described(adapter, data, features)}}
    write_json(out / "summary.json", summary)
    return summary


def _described(adapter, data: ModelData, features) -> dict:
    space = (f"decoded pixels in [-1, 1], average-pooled to at most {FEATURE_SIDE}x{FEATURE_SIDE}, flattened "
             f"({pixel_features(data.images[:1]).shape[1]} dims)" if features is None else
             f"{features.describe()} of decoded pixels in [-1, 1]")
    return {
        "adapter": adapter.describe(), "n_train": len(data.images), "classes": data.classes,
        "feature_space": f"{space}; FID and precision/recall (k = 3) against the training images",
        "copy_space": "flattened decoded pixels against the training images, 1/3 nearest-neighbour ratio rule",
        "sampling": "diffmem.sample with the pipeline's scheduler, guidance 1 (no CFG), sample i of run s: seed "
                    "s*n_samples+i, class classes[seed mod K]",
        "finetune": "AdamW, weight decay 0, t uniform, CFG dropout p_uncond, no EMA, eval mode",
        "scoring": "Algorithm 2: sum over batches of |dL/dxi_h|, per-layer L2 normalisation, global ranking"}
