"""Compressive permutation sampling (seeds/002 Algorithm 2): the measurement matrix, exact sparse recovery,
efficiency, agreement with brute-force Shapley, and Theorem 4's sample counts."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from procure.valuation import exact_shapley
from procure.valuation.compressive import (
    bernoulli_matrix,
    compressive_shapley,
    cs_num_measurements,
    cs_num_permutations,
    sparse_recovery,
    sparsity_ratio,
)
from procure.valuation.games import additive_game, table_game


def test_bernoulli_matrix_entries_and_balance():
    a = bernoulli_matrix(20, 500, np.random.default_rng(0))
    assert a.shape == (20, 500)
    assert set(np.unique(a * math.sqrt(20)).tolist()) == {-1.0, 1.0}
    assert abs((a > 0).mean() - 0.5) < 0.02
    # columns have unit norm: E||A s||^2 = ||s||^2
    np.testing.assert_allclose((a**2).sum(axis=0), 1.0)


@pytest.mark.parametrize("seed", range(4))
def test_basis_pursuit_recovers_exactly_sparse_deviations(seed):
    rng = np.random.default_rng(seed)
    n, k = 60, 3
    m = math.ceil(4 * k * math.log(n / k))
    center = np.full(n, 0.1)
    s = center.copy()
    s[rng.choice(n, k, replace=False)] += rng.normal(0, 1, k)
    a = bernoulli_matrix(m, n, rng)
    rec = sparse_recovery(a, a @ s, center, 0.0)
    np.testing.assert_allclose(rec, s, atol=1e-6)


def test_box_tolerance_keeps_the_residual_inside_and_efficiency_constraint_holds():
    rng = np.random.default_rng(1)
    n, m = 30, 12
    a = bernoulli_matrix(m, n, rng)
    y = rng.normal(size=m)
    center = np.zeros(n)
    rec = sparse_recovery(a, y, center, 0.05, efficient=True)
    assert rec is not None
    assert np.max(np.abs(a @ rec - y)) <= 0.05 + 1e-7
    assert abs(rec.sum()) <= 1e-7


def test_additive_game_with_sparse_deviation_is_recovered_from_few_permutations():
    n = 40
    w = np.full(n, 0.02)
    w[[3, 17]] += [0.5, -0.5]  # the deviation from the MEAN is what must be sparse
    res = compressive_shapley(additive_game(w, constant=0.1), n, n_measurements=16, n_permutations=2, seed=0)
    np.testing.assert_allclose(res.values, w, atol=1e-6)
    assert res.values.sum() == pytest.approx(w.sum(), abs=1e-7)


def test_efficient_and_converges_to_exact_shapley_on_a_random_game():
    n = 8
    rng = np.random.default_rng(5)
    table = rng.uniform(0, 1, 1 << n)
    game = table_game(table)
    exact = exact_shapley(game, n)
    errs = []
    for t in (5, 400):
        res = compressive_shapley(game, n, n_measurements=6, n_permutations=t, seed=2)
        assert res.values.sum() == pytest.approx(table[-1] - table[0], abs=1e-7)
        assert np.all(
            np.abs(res.measurements - bernoulli_matrix(6, n, np.random.default_rng(2)) @ res.mc_values) < 1e-9
        )
        errs.append(np.linalg.norm(res.values - exact))
    assert errs[1] < errs[0]
    assert res.n_calls <= 1 << n
    noneff = compressive_shapley(game, n, n_measurements=6, n_permutations=50, seed=2, efficient=False, eps=0.0)
    assert noneff.values.shape == (n,)


def test_sparsity_ratio_matches_brute_force_best_k_term():
    rng = np.random.default_rng(0)
    s = rng.uniform(0.1, 1, 6)
    for k in range(0, 7):
        best = min(
            np.abs(s[[i for i in range(6) if i not in sup]]).sum() for sup in itertools.combinations(range(6), k)
        )
        assert sparsity_ratio(s, k) == pytest.approx(best / s.sum())


def test_theorem4_sample_counts():
    assert cs_num_permutations(0.1, 0.1, 10, 1.0) == math.ceil(200 * math.log(400))
    assert cs_num_permutations(0.05, 0.1, 10, 1.0) > cs_num_permutations(0.1, 0.1, 10, 1.0)
    assert cs_num_measurements(10, 1000, 0.1) == math.ceil(10 * math.log(50) + math.log(20))
    assert cs_num_measurements(5, 1000, 0.1) < cs_num_measurements(50, 1000, 0.1)
    with pytest.raises(ValueError):
        cs_num_measurements(0, 10, 0.1)
