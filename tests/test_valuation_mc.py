"""MC-ADS (Algorithm 1), permutation-sampling DS, stopping rules and contributor aggregation (notes P13, P15)."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from procure.valuation import (
    CachedUtility,
    MaxPermutations,
    StandardErrorBelow,
    TimeLimit,
    exact_ads,
    exact_shapley,
    mc_ads,
    permutation_budget,
)
from procure.valuation.aggregate import aggregate, group_totals, sum_rounds
from procure.valuation.games import additive_game, table_game, unanimity_game
from procure.valuation.montecarlo import MCState, hoeffding_eps, ordered_permutation
from procure.valuation.sampling import l2_eps, num_permutations, permutation_sampling


def random_game(rng, n, n_groups):
    table = rng.uniform(0, 1, size=1 << n)  # utility in [0, 1]: marginals in [-1, 1], width r = 2
    perm = rng.permutation(n)
    cuts = sorted(rng.choice(np.arange(1, n), n_groups - 1, replace=False)) if n_groups > 1 else []
    groups = [[int(z) for z in perm[a:b]] for a, b in zip([0, *cuts], [*cuts, n])]
    return table, groups


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 6), st.integers(1, 40))
def test_exact_efficiency_and_group_efficiency_for_any_m(seed, n, m):
    rng = np.random.default_rng(seed)
    table, groups = random_game(rng, n, int(rng.integers(1, n + 1)))
    res = mc_ads(table_game(table), groups, m, seed=seed)
    assert res.n_permutations == m and res.values.shape == (n,) and res.stderr.shape == (n,)
    assert abs(res.values.sum() - (table[-1] - table[0])) < 1e-9
    prefix = 0
    for g in groups:
        nxt = prefix | sum(1 << z for z in g)
        assert abs(res.values[g].sum() - (table[nxt] - table[prefix])) < 1e-9
        prefix = nxt


def test_sampler_is_uniform_over_ordered_permutations():
    groups = [[3, 0], [1, 4, 2]]
    rng = np.random.default_rng(0)
    draws = Counter(tuple(ordered_permutation(groups, rng)) for _ in range(6000))
    support = {tuple(a + b) for a in itertools.permutations(groups[0]) for b in itertools.permutations(groups[1])}
    assert set(draws) == support  # never leaves Pi_sigma, reaches all 2! 3! = 12 orders
    assert stats.chisquare(list(draws.values())).pvalue > 1e-3


def test_unbiased_mean_over_seeds():
    rng = np.random.default_rng(1)
    table, groups = random_game(rng, 5, 2)
    v = CachedUtility(table_game(table))
    est = np.array([mc_ads(v, groups, 3, seed=s).values for s in range(600)])
    exact = exact_ads(v, groups)
    se = est.std(axis=0, ddof=1) / math.sqrt(len(est))
    assert np.all(np.abs(est.mean(axis=0) - exact) <= 5 * se + 1e-12)


def test_eps_delta_coverage_on_random_games():
    eps, delta, r, runs = 0.2, 0.2, 2.0, 60
    hits = 0
    for run in range(runs):
        rng = np.random.default_rng(100 + run)
        n = int(rng.integers(2, 6))
        table, groups = random_game(rng, n, int(rng.integers(1, n + 1)))
        v = CachedUtility(table_game(table))
        m = permutation_budget(eps, delta, n, r)
        err = np.max(np.abs(mc_ads(v, groups, m, seed=run).values - exact_ads(v, groups)))
        hits += err <= eps
    assert hits / runs >= 1 - delta


def test_budget_formulas_golden_values():
    # m* = ceil(r^2 / (2 eps^2) * ln(2n/delta)): 4 / 0.02 * ln(400) = 1198.29...
    assert permutation_budget(0.1, 0.05, 10, 2.0) == 1199
    assert hoeffding_eps(1199, 0.05, 10, 2.0) <= 0.1 < hoeffding_eps(1198, 0.05, 10, 2.0)
    # seeds/002 l2 bound, golden values from notes/002 section 2 item 4
    assert num_permutations(0.1, 0.1, 10, 1.0) == 10_597
    assert num_permutations(0.1, 0.1, 100, 1.0) == 152_019
    assert l2_eps(10_597, 0.1, 10, 1.0) <= 0.1
    with pytest.raises(ValueError):
        permutation_budget(0.0, 0.1, 3, 1.0)


def test_each_permutation_evaluates_each_prefix_once():
    calls = []
    base = table_game(np.random.default_rng(2).uniform(size=1 << 5))

    def v(s):
        calls.append(s)
        return base(s)

    res = mc_ads(v, [[0, 1], [2, 3, 4]], 7, seed=3, cache=False)
    assert len(calls) == 1 + 7 * 5 and res.n_calls == len(calls)
    calls.clear()
    res = mc_ads(v, [[0, 1], [2, 3, 4]], 200, seed=3)  # with the cache: at most the 2^2 + 2^3 - 1 coalitions
    assert len(calls) == len(set(calls)) == res.n_calls <= 11


def test_deterministic_given_seed_and_one_group_is_permutation_sampling():
    rng = np.random.default_rng(4)
    table, _ = random_game(rng, 5, 1)
    v = table_game(table)
    a = mc_ads(v, [list(range(5))], 50, seed=7)
    b = permutation_sampling(v, 5, n_permutations=50, seed=7)
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.stderr, b.stderr)
    c = mc_ads(v, [list(range(5))], 50, seed=np.random.default_rng(7))
    np.testing.assert_array_equal(a.values, c.values)
    # many permutations converge to exact DS
    res = permutation_sampling(v, 5, n_permutations=4000, seed=0)
    assert np.max(np.abs(res.values - exact_shapley(v, 5))) < 6 * res.stderr.max() + 1e-12


def test_linearity_with_common_random_permutations():
    rng = np.random.default_rng(5)
    t1, groups = random_game(rng, 5, 2)
    t2 = rng.uniform(size=t1.shape)
    lhs = mc_ads(table_game(2 * t1 - 3 * t2), groups, 30, seed=1).values
    rhs = 2 * mc_ads(table_game(t1), groups, 30, seed=1).values - 3 * mc_ads(table_game(t2), groups, 30, seed=1).values
    np.testing.assert_allclose(lhs, rhs, atol=1e-12)


def test_stderr_is_standard_error_of_the_marginals():
    # additive game: every marginal of player i is w_i, so the estimate is exact and the stderr 0
    w = [0.3, -0.2, 0.5]
    res = mc_ads(additive_game(w), [[0, 1], [2]], 5)
    np.testing.assert_allclose(res.values, w)
    np.testing.assert_allclose(res.stderr, 0.0, atol=1e-15)
    # unanimity of {0, 1} in one group: each marginal of 0 is 0 or 1 with probability 1/2
    res = mc_ads(unanimity_game([0, 1]), [[0, 1]], 400, seed=2)
    p = res.values[0]
    assert abs(res.stderr[0] - math.sqrt(p * (1 - p) / 399)) < 1e-12
    assert np.isnan(mc_ads(additive_game(w), [[0, 1, 2]], 1).stderr).all()


def test_stopping_rules_compose():
    v = unanimity_game([0, 1, 2])
    g = [[0, 1, 2]]
    assert mc_ads(v, g, stopping=MaxPermutations(12)).n_permutations == 12
    res = mc_ads(v, g, stopping=StandardErrorBelow(0.05, min_permutations=10), seed=1)
    assert res.stderr.max() <= 0.05 and res.n_permutations >= 10
    assert np.all(mc_ads(v, g, res.n_permutations - 1, seed=1).stderr.max() > 0.05)  # stopped at the first hit
    either = MaxPermutations(5) | StandardErrorBelow(1e-9)
    assert mc_ads(v, g, stopping=either).n_permutations == 5
    both = MaxPermutations(5) & TimeLimit(0.0)
    assert mc_ads(v, g, stopping=both).n_permutations == 5
    assert mc_ads(v, g, 3, stopping=TimeLimit(1e9)).n_permutations == 3  # n_permutations is OR-ed in
    state = MCState(n_permutations=10, stderr=np.array([0.1]), elapsed=2.0)
    assert TimeLimit(1.0)(state) and not TimeLimit(3.0)(state)
    assert (TimeLimit(1.0) & MaxPermutations(20))(state) is False
    assert MaxPermutations.from_bound(0.1, 0.05, 10, 2.0).n == 1199
    with pytest.raises(ValueError):
        mc_ads(v, g)


def test_truncation_is_off_by_default_and_skips_calls_when_on():
    # v saturates once player 0 is in: after that, TMC stops evaluating
    v = lambda s: 1.0 if 0 in s else 0.0  # noqa: E731
    plain = mc_ads(v, [[0, 1, 2, 3]], 50, seed=0, cache=False)
    tmc = mc_ads(v, [[0, 1, 2, 3]], 50, seed=0, cache=False, truncation=0.0)
    assert plain.truncated_steps == 0 and tmc.truncated_steps > 0
    assert tmc.n_calls < plain.n_calls
    np.testing.assert_allclose(tmc.values, plain.values)  # here the truncated marginals really are 0


def test_aggregation_remark_3_1():
    values = np.array([0.5, -0.1, 0.2, 0.3])
    owners = ["ann", "bob", "ann", "cy"]
    agg = aggregate(values, owners)
    assert list(agg) == ["ann", "bob", "cy"] and agg["ann"] == pytest.approx(0.7)
    assert sum(agg.values()) == pytest.approx(values.sum())
    rounds = [{"ann": 0.5, "bob": -0.1}, {"ann": 0.2, "cy": 0.3}]
    assert sum_rounds(rounds) == pytest.approx(agg)
    np.testing.assert_allclose(group_totals(values, [[0, 1], [2, 3]]), [0.4, 0.5])
    with pytest.raises(ValueError):
        aggregate(values, owners[:2])
