"""Exact nearest-neighbour and range retrieval over a reference (training) set, memory-bounded by blocking.

Distances are Euclidean on flattened images or features. Work proceeds in blocks of ``chunk_size`` queries ×
``ref_block`` references, so at most one block of scores exists at a time (never the full N × M matrix).
Candidates are ranked by q·r − ‖r‖²/2 (‖q‖² is constant per query), so the arithmetic is one fused ``addmm`` per
block. The final top-k are then recomputed exactly from differences, so cancellation cannot reorder near-ties;
exact ties go to the lower reference index (rows whose tie runs past the candidates, e.g. duplicated references,
are searched again with twice as many candidates until it does not). Scratch is reused buffers, not per-block
allocations: fresh blocks fragment glibc's heap and were seen to grow RSS by GBs. The optional FAISS backend
(``pip install faiss-cpu``) proposes the candidates with its exact flat index instead; the same exact re-ranking
makes both backends return the same answer.

Range queries (:func:`count_within`, :func:`radius_pairs`) decide by the fast expansion and recompute exactly only
the pairs whose expanded distance lies within its rounding-error bound of the radius.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["knn", "ReferenceIndex", "count_within", "radius_pairs", "flatten_checked", "as_pair", "block_plan",
           "BACKENDS", "DEFAULT_MAX_MEMORY"]

BACKENDS = ("torch", "faiss")
DEFAULT_MAX_MEMORY = 256 * 2**20  # bytes of scratch per block (scores, top-k copies, re-rank gathers)
_SPARE = 4  # extra candidates so float rounding in q·r − ‖r‖²/2 cannot push a true neighbour out


def flatten_checked(x: Tensor, name: str) -> Tensor:
    """[N, ...] → [N, D], rejecting empty or non-finite input with an error naming ``name``."""
    if not isinstance(x, Tensor) or x.ndim < 1 or x.shape[0] == 0 or x[0].numel() == 0:
        raise ValueError(f"{name} must be a non-empty tensor [N, ...], got {getattr(x, 'shape', type(x).__name__)}")
    flat = x.reshape(x.shape[0], -1)
    if flat.is_floating_point():
        lo, hi = torch.aminmax(flat)  # one pass, no temporary; NaN propagates into both
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"{name} contains NaN or inf")
    return flat


def as_pair(queries: Tensor, refs: Tensor, names=("queries", "refs"), *,
            check_refs: bool = True) -> tuple[Tensor, Tensor]:
    """Flatten and validate both sets, check they have the same item size, and give them one floating dtype."""
    q = flatten_checked(queries, names[0])
    r = flatten_checked(refs, names[1]) if check_refs else refs.reshape(len(refs), -1)
    if q.shape[1] != r.shape[1]:
        raise ValueError(f"{names[0]} have {q.shape[1]} features per item but {names[1]} have {r.shape[1]} "
                         f"(shapes {tuple(queries.shape)} vs {tuple(refs.shape)})")
    dtype = torch.promote_types(q.dtype, r.dtype)
    dtype = dtype if dtype.is_floating_point else torch.get_default_dtype()
    return q.to(r.device, dtype), r.to(dtype)


def _positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def block_plan(n_refs: int, itemsize: int, *, chunk_size: int = 1024, ref_block: int = 16384,
               max_memory: int = DEFAULT_MAX_MEMORY) -> tuple[int, int]:
    """(queries per chunk, references per block) whose score block and its top-k scratch (2 values per score)
    fit in ``max_memory`` bytes; the exact re-ranking has its own smaller budget (1/8 of it)."""
    block = min(_positive("ref_block", ref_block), n_refs)
    budget = _positive("max_memory", max_memory) // itemsize
    if 2 * block > budget:  # not even one query fits: shrink the reference block instead
        block = budget // 2
        if block < 1:
            raise ValueError(f"max_memory={max_memory} bytes is too small (need at least {2 * itemsize})")
    return max(1, min(_positive("chunk_size", chunk_size), budget // (2 * block))), block


class ReferenceIndex:
    """Exact k-NN over a fixed reference set (e.g. a training set), with memory-bounded blocked search.

    It keeps the flattened references, their squared norms and (FAISS backend) the flat index, so repeated searches
    (the memorization ratio monitored during training, several sample batches) pay for them once.

    Args:
        refs: [M, ...] reference items (flattened to [M, D]).
        backend: ``"torch"`` (CPU or GPU, the references' or ``device``'s) or ``"faiss"`` (CPU, optional extra).
        device: where the torch backend computes; defaults to the references' device.
        chunk_size, ref_block: queries per chunk and references per block (upper bounds; ``max_memory`` may lower).
        max_memory: bytes of scratch one block may use.

    >>> refs = torch.eye(4)
    >>> d, i = ReferenceIndex(refs).search(torch.tensor([[0.9, 0.0, 0.0, 0.0]]), k=2)
    >>> i.tolist(), [round(v, 3) for v in d[0].tolist()]
    ([[0, 1]], [0.1, 1.345])
    """

    def __init__(self, refs: Tensor, *, backend: str = "torch", device=None, chunk_size: int = 1024,
                 ref_block: int = 16384, max_memory: int = DEFAULT_MAX_MEMORY):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        r = flatten_checked(refs, "refs")
        r = r if r.is_floating_point() else r.to(torch.get_default_dtype())
        self.refs = r if device is None else r.to(device)
        self.backend, self.item_shape = backend, tuple(refs.shape[1:])
        self.chunk_size, self.ref_block, self.max_memory = chunk_size, ref_block, max_memory
        block_plan(len(r), r.element_size(), chunk_size=chunk_size, ref_block=ref_block,
                   max_memory=max_memory)  # validate the options now, not at the first search
        self._sq_norms: dict[torch.dtype, Tensor] = {}
        self._faiss = None

    def __len__(self) -> int:
        return self.refs.shape[0]

    def describe(self) -> dict:
        """Provenance of the search (backend, sizes, blocking)."""
        return {"kind": "exact_knn", "backend": self.backend, "n_refs": len(self), "dim": self.refs.shape[1],
                "dtype": str(self.refs.dtype).removeprefix("torch."), "chunk_size": self.chunk_size,
                "ref_block": self.ref_block, "max_memory": self.max_memory}

    def search(self, queries: Tensor, k: int = 2) -> tuple[Tensor, Tensor]:
        """The ``k`` nearest references of each query: (distances [N, k] ascending, indices [N, k])."""
        q, r = as_pair(queries, self.refs, check_refs=False)  # the refs were checked once, at construction
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(r):
            raise ValueError(f"k must be an int in [1, {len(r)}] (number of refs), got {k!r}")
        chunk, block = block_plan(len(r), r.element_size(), chunk_size=self.chunk_size, ref_block=self.ref_block,
                                  max_memory=self.max_memory)
        kk = min(k + _SPARE, len(r))
        # re-rank in row groups whose gathered candidates take ≤ 1/8 of the budget
        rows = max(1, min(chunk, self.max_memory // (8 * kk * r.shape[1] * r.element_size())))
        d, i, tied = _rerank(q, r, self._candidates(q, r, kk, chunk, block), k, rows)
        while kk < len(r) and bool(tied.any()):
            # the k-th distance ties with the last candidate (duplicates): the tie may continue past the
            # candidates, so those rows are searched again with twice as many, until the tie is inside
            kk, sub = min(2 * kk, len(r)), tied.nonzero().flatten()
            rows = max(1, min(chunk, self.max_memory // (8 * kk * r.shape[1] * r.element_size())))
            d[sub], i[sub], tied_sub = _rerank(q[sub], r, self._candidates(q[sub], r, kk, chunk, block), k, rows)
            tied = torch.zeros_like(tied).index_fill_(0, sub[tied_sub], True)
        return d.to(queries.device), i.to(queries.device)

    def _candidates(self, q: Tensor, r: Tensor, kk: int, chunk: int, block: int) -> Tensor:
        if self.backend == "faiss":
            return self._faiss_candidates(q, kk)
        return self._torch_candidates(q, r, kk, chunk, block)

    def _half_sq_norms(self, r: Tensor) -> Tensor:
        if r.dtype not in self._sq_norms:  # vector_norm reduces without an [M, D] temporary
            self._sq_norms[r.dtype] = torch.linalg.vector_norm(r, dim=1).square_().mul_(-0.5)
        return self._sq_norms[r.dtype]

    def _torch_candidates(self, q: Tensor, r: Tensor, kk: int, chunk: int, block: int) -> Tensor:
        """Top-kk candidates [N, kk] by q·r − ‖r‖²/2: per block a top-kk, then one top-kk per query chunk.

        Every large temporary is a reused buffer (``out=``): allocating and freeing a score block per step
        fragments glibc's heap, and RSS was seen to grow by GBs over a 30k-query run.
        """
        neg_half_r2, n_blocks, kb = self._half_sq_norms(r), -(-len(r) // block), min(kk, block)
        # the per-block top lists (values + indices) share the budget too; they grow when ties double kk
        chunk = max(1, min(chunk, self.max_memory // (2 * n_blocks * kb * (q.element_size() + 8))))
        opts = {"dtype": q.dtype, "device": q.device}
        cand = torch.empty(len(q), kk, dtype=torch.long, device=q.device)
        scores = torch.empty(min(chunk, len(q)) * block, **opts)
        top_s = torch.empty(n_blocks, min(chunk, len(q)), kb, **opts)
        top_i = torch.zeros(n_blocks, min(chunk, len(q)), kb, dtype=torch.long, device=q.device)
        for i0 in range(0, len(q), chunk):
            q_c = q[i0:i0 + chunk]
            c = len(q_c)
            for bi, j0 in enumerate(range(0, len(r), block)):
                b = min(block, len(r) - j0)
                s = torch.addmm(neg_half_r2[j0:j0 + b], q_c, r[j0:j0 + b].T, out=scores[:c * b].view(c, b))
                if b >= kb:
                    torch.topk(s, kb, dim=1, out=(top_s[bi, :c], top_i[bi, :c]))
                else:  # a short last block: pad with −inf so it is never preferred
                    top_s[bi, :c].fill_(-torch.inf)
                    top_s[bi, :c, :b], top_i[bi, :c, :b] = s.topk(b, dim=1)
                top_i[bi, :c] += j0
            s_all = top_s[:, :c].permute(1, 0, 2).reshape(c, -1)  # [c, n_blocks·kb], small
            j = s_all.topk(kk, dim=1).indices
            cand[i0:i0 + c] = top_i[:, :c].permute(1, 0, 2).reshape(c, -1).gather(1, j)
        return cand

    def _faiss_candidates(self, q: Tensor, kk: int) -> Tensor:
        import numpy as np

        if self._faiss is None:
            try:
                import faiss
            except ImportError as err:  # pragma: no cover - depends on the environment
                raise ImportError("backend='faiss' needs the faiss extra: pip install faiss-cpu") from err
            self._faiss = faiss.IndexFlatL2(self.refs.shape[1])
            self._faiss.add(np.ascontiguousarray(self.refs.detach().float().cpu().numpy()))
        _, idx = self._faiss.search(np.ascontiguousarray(q.detach().float().cpu().numpy()), kk)
        return torch.from_numpy(idx).to(q.device)


def _rerank(q: Tensor, r: Tensor, cand: Tensor, k: int, rows: int) -> tuple[Tensor, Tensor, Tensor]:
    """Exact distances of the candidates from differences: (best k ascending, their indices, bool [N] "the k-th
    distance equals the worst candidate's", i.e. a tie that may extend beyond the candidates)."""
    kk, dim = cand.shape[1], q.shape[1]
    dist_out = torch.empty(len(q), k, dtype=q.dtype, device=q.device)
    idx_out = torch.empty(len(q), k, dtype=torch.long, device=q.device)
    tied = torch.empty(len(q), dtype=torch.bool, device=q.device)
    gathered = torch.empty(min(rows, len(q)) * kk * dim, dtype=q.dtype, device=q.device)  # reused buffer
    for i0 in range(0, len(q), rows):
        c = cand[i0:i0 + rows].sort(dim=1).values  # index order first, so the stable sort breaks ties by index
        n = len(c)
        diff = torch.index_select(r, 0, c.flatten(), out=gathered[:n * kk * dim].view(n * kk, dim))
        diff = diff.view(n, kk, dim).sub_(q[i0:i0 + n, None, :])
        d, j = torch.linalg.vector_norm(diff, dim=2).sort(dim=1, stable=True)
        dist_out[i0:i0 + n], idx_out[i0:i0 + n] = d[:, :k], c.gather(1, j[:, :k])
        tied[i0:i0 + n] = d[:, k - 1] == d[:, -1]
    return dist_out, idx_out, tied


def knn(queries: Tensor, refs: Tensor, k: int = 2, *, chunk_size: int = 1024, ref_block: int = 16384,
        max_memory: int = DEFAULT_MAX_MEMORY, backend: str = "torch", device=None) -> tuple[Tensor, Tensor]:
    """The ``k`` nearest references of each query: (distances [N, k] ascending, indices [N, k]).

    Exact Euclidean k-NN on flattened items (see :class:`ReferenceIndex` for the options); for several query
    batches against one reference set, build the index once.

    >>> d, i = knn(torch.tensor([[0.0], [2.9]]), torch.tensor([[0.0], [1.0], [3.0]]), k=1)
    >>> i.flatten().tolist()
    [0, 2]
    """
    index = ReferenceIndex(refs, backend=backend, device=device, chunk_size=chunk_size, ref_block=ref_block,
                           max_memory=max_memory)
    return index.search(queries, k)


def _view(buf: Tensor, shape: tuple[int, int]) -> Tensor:
    """A contiguous [c, b] view at the start of a flat reusable buffer."""
    return buf[:shape[0] * shape[1]].view(shape)


def _blocks_within(q: Tensor, r: Tensor, radii: Tensor, chunk: int, block: int):
    """Yield (query offset, ref offset, bool [c, b]: ‖q_i − r_j‖ ≤ radii_j), exact up to the float ``norm``.

    The yielded mask is a reused buffer: consume it before asking for the next block.
    """
    q2 = torch.linalg.vector_norm(q, dim=1).square_()
    r2 = torch.linalg.vector_norm(r, dim=1).square_()
    rad2 = radii.square()
    # |fl(‖q‖² + ‖r‖² − 2 q·r) − d²| ≲ c·√D·eps·(‖q‖² + ‖r‖²): entries this close to the boundary are recomputed
    slack = 4 * math.sqrt(q.shape[1]) * torch.finfo(q.dtype).eps
    size = min(chunk, len(q)) * min(block, len(r))
    d2_buf, tol_buf = (torch.empty(size, dtype=q.dtype, device=q.device) for _ in range(2))
    inside_buf, unsure_buf = (torch.empty(size, dtype=torch.bool, device=q.device) for _ in range(2))
    for i0 in range(0, len(q), chunk):
        q_c, q2_c = q[i0:i0 + chunk], q2[i0:i0 + chunk, None]
        for j0 in range(0, len(r), block):
            r_b, r2_b, rad2_b = r[j0:j0 + block], r2[j0:j0 + block], rad2[j0:j0 + block]
            shape = (len(q_c), len(r_b))
            d2 = torch.addmm(r2_b, q_c, r_b.T, alpha=-2, out=_view(d2_buf, shape)).add_(q2_c)
            tol = torch.add(q2_c, r2_b, out=_view(tol_buf, shape)).mul_(slack)
            inside = torch.le(d2, rad2_b, out=_view(inside_buf, shape))
            unsure = torch.le(d2.sub_(rad2_b).abs_(), tol, out=_view(unsure_buf, shape))
            if bool(unsure.any()):
                ii, jj = unsure.nonzero(as_tuple=True)
                inside[ii, jj] = (q_c[ii] - r_b[jj]).norm(dim=1) <= radii[j0 + jj]
            yield i0, j0, inside


def _range_setup(queries, refs, radii, names, chunk_size, ref_block, max_memory):
    q, r = as_pair(queries, refs, names)
    radii = torch.as_tensor(radii, dtype=q.dtype, device=q.device).expand(len(r))
    if not bool(torch.isfinite(radii).all()) or bool((radii < 0).any()):
        raise ValueError(f"radii must be finite and >= 0, got min {float(radii.min())!r}")
    chunk, block = block_plan(len(r), r.element_size(), chunk_size=chunk_size, ref_block=ref_block,
                              max_memory=max_memory // 2)  # d2, tol and two bool masks live at once
    return q, r, radii, chunk, block


def count_within(queries: Tensor, centres: Tensor, radii, *, chunk_size: int = 1024, ref_block: int = 16384,
                 max_memory: int = DEFAULT_MAX_MEMORY) -> Tensor:
    """For each query, the number of centres j with ‖q − c_j‖ ≤ radii_j (inclusive): LongTensor [N].

    The k-NN-ball membership behind precision/recall (Kynkäänniemi et al., NeurIPS 2019) and density/coverage
    (Naeem et al., ICML 2020). ``radii`` is a scalar or one radius per centre [M].

    >>> count_within(torch.tensor([[0.0], [5.0]]), torch.tensor([[0.0], [1.0]]), torch.tensor([0.5, 1.0])).tolist()
    [2, 0]
    """
    q, r, radii, chunk, block = _range_setup(queries, centres, radii, ("queries", "centres"), chunk_size, ref_block,
                                             max_memory)
    counts = torch.zeros(len(q), dtype=torch.long, device=q.device)
    for i0, _, inside in _blocks_within(q, r, radii, chunk, block):
        counts[i0:i0 + len(inside)] += inside.sum(1)
    return counts.to(queries.device)


def radius_pairs(x: Tensor, y: Tensor, radius: float, *, chunk_size: int = 1024, ref_block: int = 16384,
                 max_memory: int = DEFAULT_MAX_MEMORY) -> tuple[Tensor, Tensor]:
    """All index pairs (i, j) with ‖x_i − y_j‖ ≤ ``radius``, sorted by i then j: two LongTensors [P].

    >>> radius_pairs(torch.tensor([[0.0], [1.0]]), torch.tensor([[0.1], [3.0]]), 1.0)
    (tensor([0, 1]), tensor([0, 0]))
    """
    q, r, radii, chunk, block = _range_setup(x, y, float(radius), ("x", "y"), chunk_size, ref_block, max_memory)
    pairs = [(i + i0, j + j0) for i0, j0, inside in _blocks_within(q, r, radii, chunk, block)
             for i, j in [inside.nonzero(as_tuple=True)]]
    i = torch.cat([p[0] for p in pairs])
    j = torch.cat([p[1] for p in pairs])
    order = torch.argsort(i * len(r) + j)
    return i[order].to(x.device), j[order].to(x.device)
