"""Exact buyer solver == brute force; MWP (Lemma 2, Algorithm 1); seller pricing (Lemma 2, Lemma 3)."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from procure.errors import UserError
from procure.market.buyer import (
    brute_force_buyer,
    knapsack_bb,
    max_willingness_to_pay,
    solve_buyer,
    will_buy,
)
from procure.market.mapping import Discrete, Linear, MultiTask, ZeroOne
from procure.market.round import clear_round
from procure.market.seller import optimal_price, seller_profit

SET = settings(max_examples=40, deadline=None)


def _naive_best_net(values, prices, budget, u):
    """Loop over every bundle: max u(x) - x.p with x.p <= b and (x empty or net >= 0)."""
    n = len(values)
    best = u(())  # buying nothing
    for r in range(1, n + 1):
        for x in itertools.combinations(range(n), r):
            cost = sum(prices[i] for i in x)
            net = u(x) - cost
            if cost <= budget + 1e-12 and net >= -1e-12:
                best = max(best, net)
    return best


instances = st.builds(
    lambda n, seed: (
        np.random.default_rng(seed).normal(size=n),
        np.random.default_rng(seed + 1).uniform(0, 1, n) * (np.random.default_rng(seed + 2).random(n) > 0.1),
        float(np.random.default_rng(seed + 3).uniform(0, 2.5)),
    ),
    st.integers(1, 14),
    st.integers(0, 100_000),
)


@SET
@given(instances, st.floats(0.1, 3.0), st.floats(-0.5, 0.5))
def test_branch_and_bound_matches_brute_force(inst, gamma, beta):
    values, prices, budget = inst
    m = Linear(gamma=gamma, beta=beta)
    bb = solve_buyer(values, prices, budget, m, solver="branch_and_bound")
    ref = _naive_best_net(values, prices, budget, lambda x: m(float(sum(values[i] for i in x))))
    assert bb.net == pytest.approx(ref, abs=1e-9)
    # the reported bundle is feasible and its numbers are its own
    assert bb.cost == pytest.approx(sum(prices[i] for i in bb.bundle)) and bb.cost <= budget + 1e-9
    assert bb.net == pytest.approx(m(float(sum(values[i] for i in bb.bundle))) - bb.cost)
    assert brute_force_buyer(values, prices, budget, m).net == pytest.approx(ref, abs=1e-9)


def test_branch_and_bound_exact_on_larger_instances():
    rng = np.random.default_rng(0)
    for _ in range(5):
        n = 18
        v, p = rng.uniform(0, 1, n), rng.uniform(0.1, 1, n)
        b = 0.4 * p.sum()
        assert solve_buyer(v, p, b, solver="branch_and_bound").net == pytest.approx(
            brute_force_buyer(v, p, b).net, abs=1e-9
        )


def test_knapsack_small_known_optimum():
    # hand-checkable: capacity 5, items (gain, weight) (3,2), (4,3), (5,4), (6,5) -> best 7 with items 0, 1
    val, pick, complete = knapsack_bb(np.array([3.0, 4, 5, 6]), np.array([2.0, 3, 4, 5]), 5.0)
    assert val == 7 and pick == [0, 1] and complete


@pytest.mark.parametrize(
    "mapping",
    [
        Discrete(thresholds=[0.0, 1.0, 2.0], rewards=[0.5, 1.5, 3.0]),
        ZeroOne(u_lo=1.0, u_hi=-2.0),
        MultiTask(theta=[0.5, 2.0], tasks=[Linear(gamma=1.0), Discrete(thresholds=[1.0], rewards=[1.0])]),
    ],
)
def test_other_mappings_match_naive_loop(mapping):
    rng = np.random.default_rng(5)
    for _ in range(10):
        n = 6
        v, p, b = rng.uniform(0, 0.8, n), rng.uniform(0, 0.6, n), rng.uniform(0, 2)
        got = solve_buyer(v, p, b, mapping)
        ref = _naive_best_net(v, p, b, lambda x, m=mapping, v=v: m(float(sum(v[i] for i in x))))
        assert got.net == pytest.approx(ref, abs=1e-9)


def _buys(j, values, prices, budget, prior, p_j, u):
    """Algorithm 1, literally: some x over prior with g(x + e_j) >= g* and x.p + p_j <= b (ties buy)."""
    g_star = max(_naive_best_net_sub(values, prices, budget, prior, u), 0.0)
    for r in range(len(prior) + 1):
        for x in itertools.combinations(prior, r):
            cost = sum(prices[i] for i in x) + p_j
            if cost <= budget + 1e-12 and u(x + (j,)) - cost >= g_star - 1e-12:
                return True
    return False


def _naive_best_net_sub(values, prices, budget, items, u):
    best = u(())
    for r in range(1, len(items) + 1):
        for x in itertools.combinations(items, r):
            cost = sum(prices[i] for i in x)
            if cost <= budget + 1e-12 and u(x) - cost >= -1e-12:
                best = max(best, u(x) - cost)
    return best


@SET
@given(st.integers(2, 6), st.integers(0, 100_000), st.integers(1, 3))
def test_lemma2_optimal_price_is_an_mwp_and_beats_every_grid_price(n, seed, m):
    rng = np.random.default_rng(seed)
    values = rng.uniform(-0.2, 1, n)
    prices = rng.uniform(0, 0.8, n)
    j, prior = n - 1, list(range(n - 1))
    budgets = rng.uniform(0.2, 2.0, m)
    cost = float(rng.uniform(0, 0.2))
    mwps = [max_willingness_to_pay(j, values, prices, b, prior)[0] for b in budgets]

    def u(x):
        return float(sum(values[i] for i in x))

    for b, w in zip(budgets, mwps):  # MWP is the supremum price at which Algorithm 1 says "buy"
        if w >= 0:
            assert _buys(j, values, prices, b, prior, w, u)
        assert not _buys(j, values, prices, b, prior, max(w, 0) + 1e-6, u)
        for p in (0.0, 0.3, 0.9):
            assert will_buy(j, p, values, prices, b, prior) == _buys(j, values, prices, b, prior, p, u)
    p_star, r_star = optimal_price(mwps, cost)
    for p in np.linspace(0, 2.0, 201):  # brute-force profit over a fine grid never beats the MWP optimum
        sold = sum(_buys(j, values, prices, b, prior, p, u) for b in budgets)
        if p * sold - cost >= 0:  # the seller's feasible set: profit >= 0 (Eq. 26's flat-rate analogue)
            assert p * sold - cost <= r_star + 1e-9
    if r_star >= 0:
        assert any(abs(p_star - w) < 1e-12 for w in mwps)
        assert seller_profit(p_star, mwps, cost) == pytest.approx(r_star)


@settings(max_examples=30, deadline=None)
@given(st.floats(0.0, 10.0), st.floats(0.0, 10.0))
def test_lemma3_one_buyer_one_seller_price_is_min_u_b(u, b):
    out = clear_round(np.array([u]), b, "fairshare")
    assert out.prices[0] == pytest.approx(min(u, b))
    assert out.bought == ((0,) if u > 0 else ())


def test_mwp_bisection_matches_enumeration_beyond_enum_size():
    rng = np.random.default_rng(3)
    for _ in range(5):
        n = 16
        v, p = rng.uniform(0, 1, n), rng.uniform(0.05, 1, n)
        b = float(rng.uniform(0.5, 4))
        prior = list(range(n - 1))
        big, _ = max_willingness_to_pay(n - 1, v, p, b, prior)
        ref = _mwp_enum(v, p, b, prior, n - 1)
        assert big == pytest.approx(ref, abs=1e-9)


def _mwp_enum(v, p, b, prior, j):
    """MWP by definition, vectorised over the 2**15 bundles of prior (linear mapping)."""
    k = len(prior)
    masks = ((np.arange(2**k)[:, None] >> np.arange(k)) & 1).astype(float)
    gain = masks @ (v[prior] - p[prior])
    cost = masks @ p[prior]
    net = np.where(cost <= b, gain, -np.inf)
    g_star = max(net.max(), 0.0)
    f = np.minimum(v[j] + gain - g_star, b - cost)
    return float(f.max())


def test_bad_input_raises_user_error():
    with pytest.raises(UserError, match="budget"):
        solve_buyer(np.ones(2), np.ones(2), -1.0)
    with pytest.raises(UserError, match="values"):
        solve_buyer(np.array([np.nan, 1.0]), np.ones(2), 1.0)
    with pytest.raises(UserError, match="price_grid"):
        optimal_price([0.5], grid=[])
