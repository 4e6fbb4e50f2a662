"""Exact k-NN and range retrieval against independent references (scipy cdist, sklearn NearestNeighbors)."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from diffmem.similarity.retrieval import ReferenceIndex, block_plan, count_within, knn, radius_pairs


def _brute(q, r, k):
    """float64 distances by scipy, ties broken by the lower index (stable argsort)."""
    d = cdist(q.double().reshape(len(q), -1).numpy(), r.double().reshape(len(r), -1).numpy())
    idx = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, idx, 1), idx


@pytest.mark.parametrize("opts", [{}, {"chunk_size": 7, "ref_block": 13}, {"chunk_size": 1, "ref_block": 1},
                                  {"max_memory": 4096}])
@pytest.mark.parametrize("k", [1, 2, 5])
def test_knn_matches_scipy_bruteforce(opts, k):
    g = torch.Generator().manual_seed(k)
    q, r = torch.randn(60, 3, 4, 4, generator=g), torch.randn(150, 3, 4, 4, generator=g)
    d, i = knn(q, r, k, **opts)
    d_ref, i_ref = _brute(q, r, k)
    assert np.array_equal(i.numpy(), i_ref)
    np.testing.assert_allclose(d.numpy(), d_ref, rtol=1e-5, atol=1e-5)
    assert bool((d[:, 1:] >= d[:, :-1]).all())


def test_knn_matches_sklearn_nearest_neighbors():
    from sklearn.neighbors import NearestNeighbors

    g = torch.Generator().manual_seed(0)
    q, r = torch.randn(40, 16, generator=g, dtype=torch.float64), torch.randn(300, 16, generator=g, dtype=torch.float64)
    d_ref, i_ref = NearestNeighbors(n_neighbors=3, algorithm="brute").fit(r.numpy()).kneighbors(q.numpy())
    d, i = knn(q, r, 3)
    assert np.array_equal(i.numpy(), i_ref)
    np.testing.assert_allclose(d.numpy(), d_ref, rtol=1e-12)


def test_exact_copies_have_distance_zero_and_ties_go_to_lower_index():
    g = torch.Generator().manual_seed(1)
    r = torch.randn(50, 8, generator=g) * 100  # large norms: the expansion alone would not give exact zeros
    r[30] = r[7]  # a duplicate
    d, i = knn(r[[7, 12]], r, 2)
    assert d[0].tolist() == [0.0, 0.0] and i[0].tolist() == [7, 30]
    assert d[1, 0].item() == 0.0 and i[1, 0].item() == 12


def test_faiss_backend_equals_torch_backend():
    pytest.importorskip("faiss")
    g = torch.Generator().manual_seed(2)
    q, r = torch.randn(80, 32, generator=g), torch.randn(500, 32, generator=g)
    r[100:110] = r[0]  # ties must be broken the same way
    q[:5] = r[0]
    dt, it = knn(q, r, 4)
    df, i_f = knn(q, r, 4, backend="faiss")
    assert torch.equal(it, i_f) and torch.equal(dt, df)


def test_reference_index_reuse_and_describe():
    g = torch.Generator().manual_seed(3)
    r = torch.randn(100, 5, generator=g)
    index = ReferenceIndex(r, ref_block=32)
    a = index.search(torch.randn(10, 5, generator=g), 3)
    b = index.search(torch.randn(10, 5, generator=g), 2)
    assert a[0].shape == (10, 3) and b[1].shape == (10, 2)
    info = index.describe()
    assert info["backend"] == "torch" and info["n_refs"] == 100 and info["dim"] == 5
    json.dumps(info)  # provenance must be JSON-able


def test_mixed_dtypes_promote_and_integer_refs_work():
    r = torch.arange(12, dtype=torch.uint8).view(6, 2)
    d, i = knn(torch.tensor([[4.2, 5.2]], dtype=torch.float64), r, 1)
    assert i.item() == 2 and d.dtype == torch.float64


@pytest.mark.parametrize("bad, match", [
    (lambda q, r: knn(q, r[:, :3]), "features per item"),
    (lambda q, r: knn(q, r[:0]), "non-empty"),
    (lambda q, r: knn(q, r, 0), "k must be"),
    (lambda q, r: knn(q, r, 11), "k must be"),
    (lambda q, r: knn(q.index_fill(0, torch.tensor([1]), float("nan")), r), "queries contains NaN"),
    (lambda q, r: knn(q, r.index_fill(0, torch.tensor([1]), float("inf")), r), "refs contains NaN"),
    (lambda q, r: knn(q, r, backend="annoy"), "backend"),
    (lambda q, r: knn(q, r, chunk_size=0), "chunk_size"),
    (lambda q, r: knn(q, r, max_memory=4), "max_memory"),
    (lambda q, r: count_within(q, r, -1.0), "radii"),
])
def test_bad_inputs_raise_clear_errors(bad, match):
    q, r = torch.randn(4, 6), torch.randn(10, 6)
    with pytest.raises(ValueError, match=match):
        bad(q, r)


def test_block_plan_respects_the_memory_bound():
    for m, budget in [(50_000, 256 * 2**20), (10, 2**20), (10**6, 2**16)]:
        chunk, block = block_plan(m, 4, max_memory=budget)
        assert 2 * chunk * block * 4 <= budget and block <= m


def test_count_within_and_radius_pairs_match_bruteforce():
    g = torch.Generator().manual_seed(4)
    q, r = torch.randn(70, 6, generator=g), torch.randn(90, 6, generator=g)
    radii = torch.rand(90, generator=g) * 3
    d = cdist(q.double().numpy(), r.double().numpy())
    for opts in ({}, {"chunk_size": 8, "ref_block": 11}):
        assert np.array_equal(count_within(q, r, radii, **opts).numpy(), (d <= radii.double().numpy()).sum(1))
        i, j = radius_pairs(q, r, 2.5, **opts)
        ii, jj = np.nonzero(d <= 2.5)
        assert np.array_equal(i.numpy(), ii) and np.array_equal(j.numpy(), jj)


def test_range_boundary_is_inclusive_and_exact():
    # points at exactly the radius, with large offsets that would make the fast expansion round either way
    base = torch.full((1, 3), 1000.0, dtype=torch.float32)
    centres = base + torch.tensor([[0.0, 0.0, 0.0], [3.0, 4.0, 0.0]])
    assert count_within(base, centres, torch.tensor([0.0, 5.0])).item() == 2
    assert count_within(base, centres, torch.tensor([0.0, 4.999])).item() == 1


def test_memory_stays_bounded_when_the_full_matrix_would_not():
    """12k x 12k queries/refs (the N x M float32 matrix would be 549 MiB) with max_memory = 32 MiB: the kernel's
    peak RSS during the search may grow by at most 128 MiB (block scratch + outputs + allocator slack)."""
    code = textwrap.dedent("""
        import json, torch
        from diffmem.similarity.retrieval import knn
        g = torch.Generator().manual_seed(0)
        q, r = torch.randn(12000, 16, generator=g), torch.randn(12000, 16, generator=g)
        knn(q[:8], r[:64], max_memory=32 * 2**20)
        status = lambda key: next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith(key))
        open('/proc/self/clear_refs', 'w').write('5')
        before = status('VmRSS:')
        d, i = knn(q, r, 2, max_memory=32 * 2**20)
        print(json.dumps({'increase_kib': status('VmHWM:') - before, 'rows': len(i)}))
    """)
    if sys.platform != "linux":
        pytest.skip("peak-RSS reset needs Linux procfs")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["rows"] == 12000
    assert res["increase_kib"] < 128 * 1024, f"peak RSS grew by {res['increase_kib'] / 1024:.0f} MiB"


@pytest.mark.gpu
def test_gpu_search_equals_cpu_search():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    g = torch.Generator().manual_seed(5)
    q, r = torch.randn(300, 64, generator=g), torch.randn(2000, 64, generator=g)
    d_cpu, i_cpu = knn(q, r, 3)
    d_gpu, i_gpu = knn(q.cuda(), r.cuda(), 3)
    assert d_gpu.is_cuda and torch.equal(i_gpu.cpu(), i_cpu)
    torch.testing.assert_close(d_gpu.cpu(), d_cpu)
