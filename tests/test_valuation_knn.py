"""Exact KNN-Shapley / KNN-ADS against brute-force enumeration of the KNN utility (notes/000_ads.md P14, P16;
notes/002 section 2 item 14), on random data with ties and duplicates."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from procure.valuation import exact_ads, exact_shapley, knn_ads, knn_shapley, knn_utility
from procure.valuation.knn import instance_to_source, knn_ads_loop, knn_shapley_loop

TOL = 1e-12


def brute_knn_value(s, dist, y_train, y_test, k):
    """v(S) written out from its definition, independent of the library: mean over test points of
    (1/K) * #matches among the min(K, |S|) nearest of S by (distance, id)."""
    if not s:
        return 0.0
    total = 0.0
    for r in range(len(y_test)):
        nearest = sorted(s, key=lambda j: (dist[r][j], j))[:k]
        total += sum(1 for j in nearest if y_train[j] == y_test[r]) / k
    return total / len(y_test)


@st.composite
def knn_cases(draw, max_n=8):
    n = draw(st.integers(1, max_n))
    n_test = draw(st.integers(1, 3))
    dim = draw(st.integers(1, 2))
    grid = st.integers(0, 2)  # a coarse grid: many exact distance ties and duplicate points
    x = np.array(draw(st.lists(st.lists(grid, min_size=dim, max_size=dim), min_size=n, max_size=n)), float)
    xt = np.array(draw(st.lists(st.lists(grid, min_size=dim, max_size=dim), min_size=n_test, max_size=n_test)), float)
    n_cls = draw(st.integers(1, 3))
    y = np.array(draw(st.lists(st.integers(0, n_cls - 1), min_size=n, max_size=n)))
    yt = np.array(draw(st.lists(st.integers(0, n_cls - 1), min_size=n_test, max_size=n_test)))
    k = draw(st.integers(1, 6))  # includes K > n and K > group sizes
    perm = draw(st.permutations(range(n)))
    n_groups = draw(st.integers(1, min(n, 4)))
    cuts = sorted(draw(st.sets(st.integers(1, n - 1), min_size=n_groups - 1, max_size=n_groups - 1))) if n > 1 else []
    groups = [list(perm[a:b]) for a, b in zip([0, *cuts], [*cuts, n])]
    return x, y, xt, yt, k, groups


@settings(max_examples=60, deadline=None)
@given(knn_cases())
def test_knn_ads_equals_brute_force_enumeration(case):
    x, y, xt, yt, k, groups = case
    dist = np.sqrt(((xt[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    v = lambda s: brute_knn_value(s, dist, y, yt, k)  # noqa: E731
    truth = exact_ads(v, groups)
    np.testing.assert_allclose(knn_ads(x, y, groups, xt, yt, k), truth, atol=TOL)
    np.testing.assert_allclose(knn_ads_loop(x, y, groups, xt, yt, k), truth, atol=TOL)
    # group efficiency of the KNN game: group totals = v(U_t) - v(U_{t-1})
    vals = knn_ads(x, y, groups, xt, yt, k)
    prefix = frozenset()
    for g in groups:
        assert abs(vals[g].sum() - (v(prefix | frozenset(g)) - v(prefix))) < 1e-12
        prefix = prefix | frozenset(g)


@settings(max_examples=40, deadline=None)
@given(knn_cases())
def test_knn_shapley_equals_brute_force_and_jia_recursion(case):
    x, y, xt, yt, k, _ = case
    n = len(y)
    dist = np.sqrt(((xt[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    truth = exact_shapley(lambda s: brute_knn_value(s, dist, y, yt, k), n)
    ours = knn_shapley(x, y, xt, yt, k)
    np.testing.assert_allclose(ours, truth, atol=TOL)
    np.testing.assert_allclose(knn_shapley_loop(x, y, xt, yt, k), truth, atol=TOL)
    assert abs(ours.sum() - brute_knn_value(frozenset(range(n)), dist, y, yt, k)) < TOL  # efficiency


@settings(max_examples=20, deadline=None)
@given(knn_cases())
def test_library_knn_utility_matches_definition(case):
    x, y, xt, yt, k, _ = case
    n = len(y)
    dist = np.sqrt(((xt[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    v = knn_utility(x, y, xt, yt, k)
    for r in range(n + 1):
        for s in itertools.combinations(range(n), r):
            assert abs(v(frozenset(s)) - brute_knn_value(frozenset(s), dist, y, yt, k)) < TOL


def test_larger_random_vectorised_matches_loop_across_chunks(monkeypatch):
    import procure.valuation.knn as knn

    monkeypatch.setattr(knn, "_CHUNK_CELLS", 200)  # several chunks, chunk = 200 // n rows
    rng = np.random.default_rng(3)
    n, n_test = 60, 25
    x = rng.integers(0, 4, size=(n, 2)).astype(float)
    x[40:] = x[:20]  # exact duplicates across groups
    y, xt, yt = rng.integers(0, 3, n), rng.integers(0, 4, size=(n_test, 2)).astype(float), rng.integers(0, 3, n_test)
    perm = rng.permutation(n)
    groups = [list(perm[:30]), list(perm[30:35]), list(perm[35:])]
    for k in (1, 3, 7):
        np.testing.assert_allclose(knn_ads(x, y, groups, xt, yt, k), knn_ads_loop(x, y, groups, xt, yt, k), atol=TOL)
        np.testing.assert_allclose(knn_shapley(x, y, xt, yt, k), knn_shapley_loop(x, y, xt, yt, k), atol=TOL)


def test_duplicates_later_group_gets_less_than_ds_share():
    # originals then their exact copies (P11 with KNN, a multiset utility): DS splits, ADS keeps originals at DS-on-D_1
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 2))
    y = (x[:, 0] > 0).astype(int)
    xt = rng.normal(size=(30, 2))
    yt = (xt[:, 0] > 0).astype(int)
    xx, yy = np.vstack([x, x]), np.concatenate([y, y])
    ads = knn_ads(xx, yy, [list(range(20)), list(range(20, 40))], xt, yt, 3)
    np.testing.assert_allclose(ads[:20], knn_shapley(x, y, xt, yt, 3), atol=TOL)
    ds = knn_shapley(xx, yy, xt, yt, 3)
    assert ads[:20].sum() > ds[:20].sum()


def test_instance_to_source_sums():
    vals = np.array([0.1, 0.2, -0.05, 0.4])
    np.testing.assert_allclose(instance_to_source(vals, [1, 0, 1, 1]), [0.2, 0.45])


def test_bad_inputs():
    x = np.zeros((3, 2))
    with pytest.raises(ValueError, match="k must be"):
        knn_shapley(x, [0, 1, 0], x, [0, 1, 0], 0)
    with pytest.raises(ValueError, match="features"):
        knn_shapley(x, [0, 1, 0], np.zeros((2, 3)), [0, 1], 1)
    with pytest.raises(ValueError, match="cover"):
        knn_ads(x, [0, 1, 0], [[0, 1]], x, [0, 1, 0], 1)


def test_fast_order_equals_stable_argsort_with_many_ties():
    from procure.valuation.knn import _order

    rng = np.random.default_rng(5)
    for _ in range(100):
        dist = rng.integers(0, 4, size=(4, int(rng.integers(1, 40)))).astype(float)
        dist[0] += rng.integers(0, 2, dist.shape[1]) * 1e-9  # equal in float32, different in float64
        np.testing.assert_array_equal(_order(dist), np.argsort(dist, axis=1, kind="stable"))
