"""Group-testing Shapley (seeds/002 Algorithm 1): constants and bounds against the notes' golden values,
exact unbiasedness by enumeration, the LP / least-squares step, and convergence to brute-force Shapley."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from procure.valuation import exact_shapley
from procure.valuation.games import glove_game, table_game
from procure.valuation.group_testing import (
    group_testing_shapley,
    gt_constants,
    gt_num_tests,
    gt_q_tot,
    num_permutations_l2,
    pair_differences,
    sample_tests,
    solve_feasibility,
    solve_lstsq,
)


def _random_table(n: int, seed: int, empty: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vals = rng.uniform(-1, 1, 1 << n)
    vals[0] = empty
    return vals


@given(st.integers(2, 60))
@settings(max_examples=25, deadline=None)
def test_q_is_a_symmetric_distribution_and_z_is_twice_harmonic(n):
    z, q = gt_constants(n)
    assert q.shape == (n - 1,)
    assert math.isclose(q.sum(), 1.0, rel_tol=1e-12)
    np.testing.assert_allclose(q, q[::-1], rtol=1e-12)
    assert math.isclose(z, 2 * sum(1 / k for k in range(1, n)), rel_tol=1e-12)


def test_golden_values_from_the_notes():
    # notes/002 section 1.2 and section 2 item 4 (computed there from Theorem 3 as printed)
    z, _ = gt_constants(10)
    assert z == pytest.approx(5.657937, abs=1e-6)
    assert gt_q_tot(10) == pytest.approx(0.646514, abs=1e-6)
    assert gt_q_tot(100) == pytest.approx(0.806852, abs=1e-6)
    assert gt_num_tests(0.1, 0.1, 10, 1.0) == pytest.approx(1.8270e6, rel=1e-4)
    assert gt_num_tests(0.1, 0.1, 100, 1.0) == pytest.approx(6.4778e7, rel=1e-4)
    assert gt_num_tests(0.1, 0.1, 1000, 1.0) == pytest.approx(1.38e9, rel=1e-2)
    assert num_permutations_l2(0.1, 0.1, 10, 1.0) == 10597
    assert num_permutations_l2(0.1, 0.1, 100, 1.0) == 152019


def test_bound_grows_faster_than_the_claimed_sqrt_n():
    # the paper's O(sqrt(N) log^2 N) claim is wrong (notes/002): T(N)/ (sqrt(N) log^2 N) keeps growing
    ratio = [gt_num_tests(0.1, 0.1, n, 1.0) / (math.sqrt(n) * math.log(n) ** 2) for n in (10, 100, 1000, 10000)]
    assert all(b > a for a, b in zip(ratio, ratio[1:]))
    for variant in ("pydvl", "code"):
        assert gt_num_tests(0.1, 0.1, 50, 1.0, variant=variant) > 0
    with pytest.raises(ValueError):
        gt_num_tests(0.1, 0.1, 50, 1.0, variant="nope")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pair_estimator_is_exactly_unbiased_by_enumeration(seed):
    # Z * E_k~q E_{S~Unif(size k)}[(U(S) - U(∅)) (1[i in S] - 1[j in S])] = s_i - s_j  (Lemma 1 + Alg. 1)
    n = 6
    table = _random_table(n, seed, empty=0.3)
    s = exact_shapley(table_game(table), n)
    z, q = gt_constants(n)
    expect = np.zeros((n, n))
    for k in range(1, n):
        subsets = list(itertools.combinations(range(n), k))
        for sub in subsets:
            mask = sum(1 << i for i in sub)
            beta = np.zeros(n)
            beta[list(sub)] = 1
            expect += z * q[k - 1] / len(subsets) * (table[mask] - table[0]) * (beta[:, None] - beta[None, :])
    np.testing.assert_allclose(expect, s[:, None] - s[None, :], atol=1e-12)


def test_sampled_tests_have_exact_sizes_with_law_q():
    n, t = 8, 40000
    beta = sample_tests(n, t, np.random.default_rng(0))
    sizes = beta.sum(axis=1)
    assert sizes.min() >= 1 and sizes.max() <= n - 1
    _, q = gt_constants(n)
    freq = np.bincount(sizes, minlength=n)[1:] / t
    assert np.all(np.abs(freq - q) <= 4 * np.sqrt(q * (1 - q) / t) + 1e-3)
    # inside a size, every player is equally likely (uniform subsets)
    per_player = beta[sizes == 3].mean(axis=0)
    np.testing.assert_allclose(per_player, 3 / n, atol=0.03)


def test_lstsq_and_lp_recover_exact_values_from_exact_differences():
    n = 7
    table = _random_table(n, 4)
    s = exact_shapley(table_game(table), n)
    diffs = s[:, None] - s[None, :]
    np.testing.assert_allclose(solve_lstsq(diffs, s.sum()), s, atol=1e-12)
    lp = solve_feasibility(diffs, s.sum(), 1e-9)
    assert lp is not None
    np.testing.assert_allclose(lp, s, atol=1e-6)


def test_lp_solution_satisfies_every_constraint_and_infeasible_is_none():
    rng = np.random.default_rng(3)
    n = 6
    a = rng.normal(size=n)
    diffs = a[:, None] - a[None, :] + 0.01 * rng.normal(size=(n, n))
    diffs = (diffs - diffs.T) / 2
    tol = 0.05
    sol = solve_feasibility(diffs, 2.0, tol)
    assert sol is not None
    assert sol.sum() == pytest.approx(2.0, abs=1e-7)
    assert np.max(np.abs(sol[:, None] - sol[None, :] - diffs)) <= tol + 1e-7
    inconsistent = np.zeros((3, 3))
    inconsistent[0, 1], inconsistent[1, 2], inconsistent[0, 2] = 1.0, 1.0, -1.0
    inconsistent -= inconsistent.T
    assert solve_feasibility(inconsistent, 0.0, 0.1) is None


def test_pair_differences_vectorised_matches_naive_loop():
    rng = np.random.default_rng(0)
    beta = rng.random((50, 5)) < 0.5
    u = rng.normal(size=50)
    naive = np.zeros((5, 5))
    for i in range(5):
        for j in range(5):
            naive[i, j] = 3.0 / 50 * sum(u[t] * (int(beta[t, i]) - int(beta[t, j])) for t in range(50))
    np.testing.assert_allclose(pair_differences(beta, u, 3.0), naive, atol=1e-12)


@pytest.mark.parametrize("solver", ["lp", "lstsq"])
def test_estimator_is_efficient_and_converges_to_exact_shapley(solver):
    n = 6
    table = _random_table(n, 7, empty=0.2)
    game = table_game(table)
    s = exact_shapley(game, n)
    errs = []
    for t in (500, 50000):
        res = group_testing_shapley(game, n, t, seed=1, solver=solver)
        assert res.values.sum() == pytest.approx(table[-1] - table[0], abs=1e-7)
        assert res.solver == solver
        errs.append(np.linalg.norm(res.values - s))
    assert errs[1] < errs[0]
    assert errs[1] < 0.05


def test_lp_is_always_feasible_because_the_differences_are_additive_and_calls_are_memoised():
    # Delta_ij = (Z/T)(a_i - a_j) exactly, so any tolerance is feasible and the LP point is the closed form
    n = 5
    game = glove_game([0], [1, 2, 3, 4])
    res = group_testing_shapley(game, n, 200, seed=0, eps=1e-9)
    assert res.solver == "lp"
    np.testing.assert_allclose(res.values, solve_lstsq(res.differences, 1.0), atol=1e-8)
    assert res.n_calls <= (1 << n)
    assert res.values.sum() == pytest.approx(1.0, abs=1e-7)
    with pytest.raises(ValueError):
        group_testing_shapley(game, n, 10, solver="cvx")
