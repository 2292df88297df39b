"""HCDV (seeds/001): exact pieces against brute force (dispersion, leaf games, degenerate trees), the
approximate axioms of Proposition 2/4 and Theorem 1, the Shapley-budget formula of Proposition 1, the
balanced hierarchy, and the public ``hcdv_values`` entry point."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from procure.errors import UserError
from procure.valuation import exact_ads, exact_shapley, knn_shapley
from procure.valuation.games import CachedUtility, table_game
from procure.valuation.hcdv import (
    _Game,
    balanced_kmeans,
    build_hierarchy,
    coalition_shapley,
    default_n_clusters,
    dispersion_bruteforce,
    dispersion_from_class_sums,
    hcdv,
    hcdv_values,
    hoeffding_tail,
    knn_leaf_in_context,
    omega_weights,
    shapley_budget,
    split_credit,
    topk_regret,
)
from procure.valuation.knn import knn_utility


def _blobs(n: int, seed: int, n_test: int = 30, classes: int = 3):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, (classes, 2))
    y = rng.integers(0, classes, n)
    x = centers[y] + rng.normal(0, 1.2, (n, 2))
    yt = rng.integers(0, classes, n_test)
    xt = centers[yt] + rng.normal(0, 1.2, (n_test, 2))
    return x, y, xt, yt


@given(st.integers(0, 10_000), st.integers(1, 12), st.integers(1, 4))
@settings(max_examples=25, deadline=None)
def test_fast_dispersion_equals_pairwise_definition_and_is_bounded(seed, n, classes):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 3))
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    y = rng.integers(0, classes, n)
    sums = np.zeros((classes, 3))
    np.add.at(sums, y, z)
    counts = np.bincount(y, minlength=classes).astype(float)
    fast = dispersion_from_class_sums(sums, counts)
    assert fast == pytest.approx(dispersion_bruteforce(z, y, range(n)), abs=1e-9)
    assert -1e-12 <= fast <= 2 + 1e-12
    if len(set(y.tolist())) == 1:
        assert fast == 0.0


@given(st.integers(0, 10_000), st.integers(4, 60), st.integers(2, 6))
@settings(max_examples=15, deadline=None)
def test_balanced_split_respects_the_capacity_window_and_partitions(seed, n, k):
    k = min(k, n)
    z = np.random.default_rng(seed).normal(size=(n, 2))
    lab = balanced_kmeans(z, k, seed=seed, eps_cap=0.1)
    sizes = np.bincount(lab, minlength=k)
    assert sizes.sum() == n and len(sizes) == k
    assert sizes.min() >= np.floor(0.9 * n / k) and sizes.max() <= np.ceil(1.1 * n / k)


def test_hierarchy_children_partition_their_parents():
    z = np.random.default_rng(0).normal(size=(90, 3))
    nodes = build_hierarchy(z, [3, 9, 20], seed=0)
    for nd in nodes:
        if nd.children:
            union = np.concatenate([nodes[c].members for c in nd.children])
            assert sorted(union.tolist()) == sorted(nd.members.tolist())
    assert sum(1 for nd in nodes if nd.level == 2) == 9
    assert default_n_clusters(1200, 16, 8) == [4, 18, 75]
    assert default_n_clusters(10, 16, 8) == []


@given(st.floats(-3, 3), st.lists(st.floats(-1, 1), min_size=1, max_size=8), st.sampled_from(["ratio", "shift"]))
@settings(max_examples=40, deadline=None)
def test_credit_split_conserves_mass_and_omega_is_a_distribution(credit, est, mode):
    out = split_credit(credit, np.array(est), mode=mode)
    assert out.sum() == pytest.approx(credit, abs=1e-9)
    w = omega_weights(np.array(est), np.arange(1, len(est) + 1))
    assert np.all(w >= 0) and w.sum() == pytest.approx(1.0)


@pytest.mark.parametrize(
    "opts",
    [
        {},
        {"level_game": "siblings"},
        {"propagation": "omega"},
        {"leaf_method": "mc", "n_permutations": 20},
        {"leaf_method": "uniform", "renorm": "shift"},
        {"lam": 0.3, "leaf_method": "exact", "leaf_size": 6, "n_permutations": 30},
        {"leaf_context": "alone"},
    ],
)
def test_efficiency_values_sum_to_the_exact_root_surplus(opts):
    # Theorem 1 with an exact root surplus and mass-conserving propagation: the gap is 0
    x, y, xt, yt = _blobs(60, 1)
    res = hcdv(x, y, xt, yt, k=3, encoder="identity", **({"leaf_size": 8} | opts))
    surplus = knn_utility(x, y, xt, yt, 3)(frozenset(range(60)))
    if opts.get("lam"):
        z = (x - x.mean(0)) / x.std(0)
        z /= np.linalg.norm(z, axis=1, keepdims=True)
        surplus += opts["lam"] * dispersion_bruteforce(z, y, range(60))
    assert res.values.sum() == pytest.approx(surplus, abs=1e-9)


def test_single_leaf_tree_is_exact_knn_shapley_and_exact_enumeration():
    x, y, xt, yt = _blobs(9, 2)
    flat = hcdv_values(x, y, xt, yt, k=3, encoder="identity", n_clusters=[], leaf_size=100)
    np.testing.assert_allclose(flat, knn_shapley(x, y, xt, yt, 3), atol=1e-12)
    ex = hcdv_values(x, y, xt, yt, k=3, encoder="identity", n_clusters=[], leaf_size=100, leaf_method="exact")
    np.testing.assert_allclose(ex, exact_shapley(knn_utility(x, y, xt, yt, 3), 9), atol=1e-12)


def test_singleton_coalitions_reduce_to_flat_mc_shapley():
    x, y, xt, yt = _blobs(6, 3)
    res = hcdv(x, y, xt, yt, k=2, encoder="identity", n_clusters=[6], n_permutations=3000)
    assert all(len(nd.members) == 1 for nd in res.nodes if nd.level == 1)
    exact = exact_shapley(knn_utility(x, y, xt, yt, 2), 6)
    assert np.max(np.abs(res.values - exact)) < 0.02


def test_leaf_in_context_equals_brute_force_ads_with_the_rest_first():
    x, y, xt, yt = _blobs(12, 4, n_test=15)
    x[5] = x[7]  # an exact duplicate (ties broken by id)
    game = _Game(x, y, xt, yt, 3, "knn", 0.0, np.ones((12, 1)))
    leaf = np.array([2, 5, 7, 9])
    rest = np.setdiff1d(np.arange(12), leaf)
    got = knn_leaf_in_context(game, (x, y, xt, yt), rest, leaf)
    want = exact_ads(knn_utility(x, y, xt, yt, 3), [rest.tolist(), leaf.tolist()])[leaf]
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_approximate_symmetry_and_dummy():
    x, y, xt, yt = _blobs(40, 5)
    x[11], y[11] = x[3], y[3]  # symmetric players (identical point and label)
    base = knn_utility(x, y, xt, yt, 3)

    def metric(idx):  # player 0 is a dummy: the utility ignores it
        return base(frozenset(int(i) for i in idx) - {0})

    opts = {"k": 3, "encoder": "identity", "leaf_size": 8, "metric": metric, "leaf_method": "mc", "n_permutations": 300}
    res = hcdv(x, y, xt, yt, **opts)
    leaf_of = {int(i): j for j, nd in enumerate(res.nodes) if not nd.children for i in nd.members}
    assert leaf_of[3] == leaf_of[11]  # identical embeddings land in the same leaf
    assert abs(res.values[3] - res.values[11]) < 0.02  # Proposition 4: |phi_i - phi_j| <= Delta_i + Delta_j
    # a dummy's marginal is 0 in every permutation of the leaf game (alone), so its estimate is exactly 0 and the
    # ratio rescaling keeps it 0 (the additive-shift fallback would not: Proposition 4 is only approximate)
    alone = hcdv(x, y, xt, yt, leaf_context="alone", **opts)
    assert abs(alone.values[0]) < 1e-12


def test_mc_coalition_estimator_is_additive_with_common_permutations_and_unbiased():
    rng = np.random.default_rng(0)
    t1, t2 = rng.uniform(0, 1, 32), rng.uniform(0, 1, 32)
    a = coalition_shapley(CachedUtility(table_game(t1)), 5, 50, seed=7)
    b = coalition_shapley(CachedUtility(table_game(t2)), 5, 50, seed=7)
    ab = coalition_shapley(CachedUtility(table_game(t1 + t2)), 5, 50, seed=7)
    np.testing.assert_allclose(ab, a + b, atol=1e-12)
    assert a.sum() == pytest.approx(t1[-1] - t1[0])  # every permutation telescopes


def test_budget_formula_and_concentration():
    t = shapley_budget(0.1, 0.05, 20)
    assert t == int(np.ceil(8 * np.log(2 * 20 / 0.05) / 0.01))
    assert hoeffding_tail(t, 0.1) <= 0.05 / 20 + 1e-12
    assert shapley_budget(0.1, 0.05, 20, lam=0.5) == int(np.ceil(8 * 4 * np.log(800) / 0.01))
    # Proposition 1: the failure frequency over seeds stays below 2 exp(-T eta^2 / (8 B^2)) (values in [0,1])
    table = np.random.default_rng(1).uniform(0, 1, 16)
    exact = exact_shapley(table_game(table), 4)
    n_perm, eta = 40, 0.25
    fails = np.mean(
        [
            abs(coalition_shapley(CachedUtility(table_game(table)), 4, n_perm, seed=s)[0] - exact[0]) >= eta
            for s in range(150)
        ]
    )
    assert fails <= hoeffding_tail(n_perm, eta) + 0.05


@given(st.lists(st.floats(-1, 1), min_size=3, max_size=12), st.integers(0, 1000), st.floats(0, 0.3))
@settings(max_examples=40, deadline=None)
def test_topk_regret_bound_of_theorem_2(ref, seed, eps):
    ref = np.array(ref)
    est = ref + np.random.default_rng(seed).uniform(-eps, eps, len(ref))
    k = max(1, len(ref) // 3)
    reg = topk_regret(ref, est, k)
    assert -1e-12 <= reg <= 2 * k * np.max(np.abs(est - ref)) + 1e-12


def test_entry_point_is_deterministic_and_rejects_unknown_options():
    x, y, xt, yt = _blobs(50, 6)
    a = hcdv_values(x, y, xt, yt, k=3, seed=3, encoder="pca", leaf_size=10, leaf_method="mc", n_permutations=20)
    b = hcdv_values(x, y, xt, yt, k=3, seed=3, encoder="pca", leaf_size=10, leaf_method="mc", n_permutations=20)
    np.testing.assert_array_equal(a, b)
    c = hcdv_values(x, y, xt, yt, k=3, seed=3, encoder_epochs=1, leaf_size=10)  # the default torch encoder
    assert a.shape == c.shape == (50,)
    assert c.sum() == pytest.approx(a.sum())
    with pytest.raises(UserError, match="leaf_sise"):
        hcdv_values(x, y, xt, yt, leaf_sise=3)
    with pytest.raises(UserError):
        hcdv_values(x, y, xt, yt, leaf_method="knn", lam=0.2)
