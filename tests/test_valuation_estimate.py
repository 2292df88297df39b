"""``procure.valuation.estimate``: the one entry point against ground truth (games with known values, brute-force
enumeration of ordered permutations, the low-level estimators it dispatches to), its exact-vs-MC switch, the
coalition plan, budgets, and efficiency as a property."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from procure.valuation import (
    exact_ads,
    exact_shapley,
    games,
    knn_ads,
    knn_shapley,
    leave_one_out,
    mc_ads,
    permutation_budget,
    within_group_loo,
)
from procure.valuation.bm25 import bm25_values
from procure.valuation.estimate import (
    DEFAULT_PERMUTATIONS,
    Budget,
    BudgetError,
    GradData,
    TabularData,
    TextData,
    estimate,
    plan,
)
from procure.valuation.hcdv import hcdv_values
from procure.valuation.influence import constant_values, datainf, grad_ip, random_values


def brute_ads(v, groups) -> np.ndarray:
    """ADS from its definition: the mean marginal over all ``prod |D_t|!`` ordered permutations (Eq. 7)."""
    n = sum(len(g) for g in groups)
    phi = np.zeros(n)
    count = 0
    for parts in itertools.product(*[itertools.permutations(g) for g in groups]):
        seq = [z for p in parts for z in p]
        for j, z in enumerate(seq):
            phi[z] += v(frozenset(seq[: j + 1])) - v(frozenset(seq[:j]))
        count += 1
    return phi / count


def random_table_game(seed: int, n: int, n_groups: int):
    rng = np.random.default_rng(seed)
    table = rng.uniform(0, 1, 1 << n)
    perm = rng.permutation(n)
    cuts = sorted(rng.choice(np.arange(1, n), n_groups - 1, replace=False)) if n_groups > 1 else []
    groups = [[int(z) for z in perm[a:b]] for a, b in zip([0, *cuts], [*cuts, n])]
    return table, groups


class Recorder:
    """A utility that records the coalitions asked, in order."""

    def __init__(self, v):
        self.v, self.asked = v, []

    def __call__(self, s: frozenset[int]) -> float:
        self.asked.append(frozenset(s))
        return self.v(s)


# --- exact ADS / DS against known values -------------------------------------------------------------------------

KNOWN = [
    # (utility, groups, known ADS values)
    (games.additive_game([0.3, -0.2, 0.5, 0.1], constant=2.0), [[2], [0, 3], [1]], [0.3, -0.2, 0.5, 0.1]),
    # unanimity on T = {0, 2, 3}: the latest group meeting T is D_2 = {2, 3, 4}, T ∩ D_2 = {2, 3} get 1/2 each
    (games.unanimity_game([0, 2, 3]), [[0, 1], [2, 3, 4]], [0.0, 0.0, 0.5, 0.5, 0.0]),
    # ... and with the carrier all in the first group, it is DS of that group
    (games.unanimity_game([0, 1]), [[0, 1, 2], [3]], [0.5, 0.5, 0.0, 0.0]),
    # glove game, one group: DS (2/3, 1/6, 1/6)
    (games.glove_game([0], [1, 2]), [[0, 1, 2]], [2 / 3, 1 / 6, 1 / 6]),
    # left glove last: it completes every pair, gets v(N) - v(N \ {0}) = 1
    (games.glove_game([0], [1, 2]), [[1, 2], [0]], [1.0, 0.0, 0.0]),
    (games.airport_game([1.0, 3.0, 2.0, 6.0]), [[0, 1, 2, 3]], games.airport_shapley([1.0, 3.0, 2.0, 6.0]).tolist()),
]


@pytest.mark.parametrize(("v", "groups", "known"), KNOWN)
def test_exact_ads_is_the_known_value_exact_ads_and_brute_force(v, groups, known):
    res = estimate("ads", v, groups)
    np.testing.assert_allclose(res.values, known, atol=1e-12)
    np.testing.assert_allclose(res.values, exact_ads(v, groups), atol=1e-12)
    np.testing.assert_allclose(res.values, brute_ads(v, groups), atol=1e-12)
    assert (res.method, res.estimator, res.exact, res.n_permutations) == ("ads", "ads_exact", True, None)
    assert np.all(res.stderr == 0) and res.eps_bound(0.05, 2.0) == 0.0
    # every coalition U_{t-1} ∪ S (S ⊆ D_t) once: sum_t 2^|D_t| - (T - 1) calls
    assert res.n_calls == sum(1 << len(g) for g in groups) - (len(groups) - 1)


def test_ds_ignores_the_grouping():
    v = games.glove_game([0], [1, 2])
    for groups in ([[0, 1, 2]], [[1, 2], [0]], [[2], [0], [1]]):
        res = estimate("ds", v, groups)
        np.testing.assert_allclose(res.values, [2 / 3, 1 / 6, 1 / 6], atol=1e-12)
        assert res.estimator == "ds_exact"
    table, groups = random_table_game(3, 6, 3)
    v = games.table_game(table)
    np.testing.assert_allclose(estimate("ds", v, groups).values, exact_shapley(v, 6), atol=1e-12)
    mc = estimate("ds", v, groups, Budget(exact_max=5, permutations=40), seed=3)
    want = mc_ads(v, [list(range(6))], 40, seed=3)
    assert mc.estimator == "ds_mc"
    np.testing.assert_allclose(mc.values, want.values, atol=1e-12)


# --- exact vs Monte Carlo -----------------------------------------------------------------------------------------


@given(st.integers(0, 10_000), st.integers(2, 7), st.integers(0, 8))
@settings(max_examples=25, deadline=None)
def test_switches_to_mc_exactly_when_a_group_exceeds_exact_max(seed, n, exact_max):
    table, groups = random_table_game(seed, n, 1 + seed % n)
    v = games.table_game(table)
    res = estimate("ads", v, groups, Budget(exact_max=exact_max, permutations=7), seed=seed)
    biggest = max(len(g) for g in groups)
    if biggest <= exact_max:
        assert (res.estimator, res.exact) == ("ads_exact", True)
        np.testing.assert_allclose(res.values, exact_ads(v, groups), atol=1e-12)
    else:
        assert (res.estimator, res.exact, res.n_permutations) == ("ads_mc", False, 7)
        want = mc_ads(v, groups, 7, seed=seed)
        np.testing.assert_allclose(res.values, want.values, atol=1e-12)
        np.testing.assert_allclose(res.stderr, want.stderr, atol=1e-12)
        assert res.n_calls == want.n_calls


def test_mc_budget_eps_uses_permutation_budget_and_its_bound_holds():
    table, groups = random_table_game(4, 6, 2)
    v = games.table_game(table)
    budget = Budget(exact_max=0, eps=0.3, delta=0.1, r=1.0, permutations=5)  # eps wins over permutations
    res = estimate("ads", v, groups, budget, seed=1)
    m = permutation_budget(0.3, 0.1, 6, 1.0)
    assert res.n_permutations == budget.n_permutations(6) == m
    assert res.eps_bound(0.1, 1.0) <= 0.3
    np.testing.assert_allclose(res.values, mc_ads(v, groups, m, seed=1).values, atol=1e-12)
    assert Budget(exact_max=0).n_permutations(6) == DEFAULT_PERMUTATIONS
    assert estimate("ads", v, groups, Budget(exact_max=0)).n_permutations == DEFAULT_PERMUTATIONS
    assert Budget(eps=1e200).n_permutations(6) == 1  # a vanishing budget still draws one permutation


def test_time_limit_stops_monte_carlo():
    v = games.additive_game(np.arange(30.0))
    res = estimate("ads", v, [list(range(30))], Budget(permutations=10**7, max_seconds=0.2))
    assert 1 <= res.n_permutations < 10**7 and "TimeLimit" in res.note
    np.testing.assert_allclose(res.values, np.arange(30.0), atol=1e-9)  # additive: every marginal is w_i


# --- the plan is what the run asks --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "budget", "seed"),
    [
        ("ads", Budget(), 0),
        ("ds", Budget(), 0),
        ("loo", Budget(), 0),
        ("ads", Budget(exact_max=2, permutations=15), 4),
        ("ads", Budget(exact_max=2, permutations=15), 5),
        ("ds", Budget(exact_max=3, eps=0.9, r=1.0), 6),
    ],
)
def test_plan_is_exactly_the_coalitions_the_run_queries(method, budget, seed):
    table, _ = random_table_game(7, 6, 1)
    groups = [[4, 1], [0, 5, 2], [3]]
    rec = Recorder(games.table_game(table))
    res = estimate(method, rec, groups, budget, seed=seed)
    planned = plan(method, groups, budget, seed=seed)
    assert planned == rec.asked  # same coalitions, same first-query order, each once
    assert res.n_calls == len(planned)


def test_plan_of_exact_ads_is_the_prefix_unions():
    groups = [[2], [0, 3], [1]]
    want = {frozenset(s) for s in ([], [2])}
    want |= {frozenset([2, *s]) for r in range(3) for s in itertools.combinations([0, 3], r)}
    want |= {frozenset([0, 2, 3, 1])}
    assert set(plan("ads", groups)) == want


# --- LOO ----------------------------------------------------------------------------------------------------------


def test_loo_is_leave_one_out_and_within_group_loo():
    table, groups = random_table_game(8, 5, 2)
    v = games.table_game(table)
    one = estimate("loo", v, [list(range(5))])
    np.testing.assert_allclose(one.values, leave_one_out(v, 5), atol=1e-12)
    assert (one.estimator, one.exact, one.n_calls, one.note) == ("loo", True, 6, "leave-one-out")
    assert one.values[2] == pytest.approx(table[-1] - table[games.mask_of([0, 1, 3, 4])])
    within = estimate("loo", v, groups)
    np.testing.assert_allclose(within.values, within_group_loo(v, groups), atol=1e-12)
    assert within.note == "within-group leave-one-out"


# --- data and per-sample methods equal the functions behind them -------------------------------------------------


def _blobs(n, seed, n_test=25):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(size=(3, 2))[y] * 3 + rng.normal(size=(n, 2))
    yt = rng.integers(0, 3, n_test)
    xt = rng.normal(size=(3, 2))[yt] * 3 + rng.normal(size=(n_test, 2))
    return x, y, xt, yt


def test_tabular_methods_equal_the_closed_forms_and_hcdv():
    x, y, xt, yt = _blobs(40, 9)
    d = TabularData(x, y, xt, yt, k=3)
    res = estimate("knn-shapley", d)
    np.testing.assert_allclose(res.values, knn_shapley(x, y, xt, yt, 3), atol=1e-12)
    assert (res.estimator, res.exact) == ("knn-shapley", True)
    groups = [list(range(0, 40, 2)), list(range(1, 40, 2))]
    np.testing.assert_allclose(estimate("knn-ads", d, groups).values, knn_ads(x, y, groups, xt, yt, 3), atol=1e-12)
    res = estimate("hcdv", d, seed=4)
    np.testing.assert_allclose(res.values, hcdv_values(x, y, xt, yt, k=3, seed=4), atol=1e-12)
    assert not res.exact


def test_sample_methods_equal_the_functions_behind_them():
    np.testing.assert_array_equal(estimate("constant", 7).values, constant_values(7))
    np.testing.assert_array_equal(estimate("random", 7, seed=3).values, random_values(7, seed=3))
    assert not np.array_equal(estimate("random", 7, seed=3).values, estimate("random", 7, seed=4).values)
    texts = ["the cat sat on the mat", "stock prices fell", "a cat and a dog", "mats for cats"]
    ref = ["where did the cat sit", "cat on a mat"]
    np.testing.assert_allclose(estimate("bm25", TextData(texts, ref)).values, bm25_values(texts, ref), atol=1e-12)
    gen = torch.Generator().manual_seed(0)
    grads = {"m.lora_A.default.weight": torch.randn(6, 2, 4, generator=gen), "w": torch.randn(6, 3, generator=gen)}
    val = {"m.lora_A.default.weight": torch.randn(2, 4, generator=gen), "w": torch.randn(3, generator=gen)}
    for name, fn in (("infl_ip", grad_ip), ("datainf", datainf)):
        res = estimate(name, GradData(grads, val))
        assert res.values.dtype == np.float64 and res.values.shape == (6,)
        np.testing.assert_allclose(res.values, fn(grads, val).numpy(), atol=1e-12)


def test_wrong_sources_and_methods_are_errors():
    with pytest.raises(TypeError, match="TabularData"):
        estimate("knn-shapley", lambda s: 0.0)
    with pytest.raises(TypeError, match="utility callable"):
        estimate("ads", 5, [[0]])
    with pytest.raises(TypeError, match="number of rows"):
        estimate("constant", [1, 2])
    with pytest.raises(ValueError, match="needs groups"):
        estimate("ads", lambda s: 0.0)
    with pytest.raises(ValueError, match="unknown valuation method"):
        estimate("shapley", lambda s: 0.0, [[0]])


# --- budgets ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("exact_max", -1),
        ("permutations", 0),
        ("eps", 0.0),
        ("eps", -0.1),
        ("eps", float("inf")),
        ("eps", float("nan")),
        ("delta", 0.0),
        ("delta", 1.0),
        ("delta", float("nan")),
        ("r", 0.0),
        ("r", float("inf")),
        ("max_seconds", 0.0),
        ("max_seconds", float("nan")),
    ],
)
def test_budget_rejects_out_of_range_fields(field, value):
    with pytest.raises(BudgetError, match=f"Budget.{field}") as info:
        Budget(**{field: value})
    assert isinstance(info.value, ValueError) and info.value.field == field and "--" not in str(info.value)


def test_budget_accepts_its_edges():
    Budget(exact_max=0, permutations=1, eps=1e-3, delta=0.999, r=1e-6, max_seconds=1e-3)


# --- efficiency as a property -------------------------------------------------------------------------------------


@given(st.integers(0, 10_000), st.integers(1, 6), st.integers(1, 30), st.booleans())
@settings(max_examples=40, deadline=None)
def test_values_sum_to_the_grand_surplus_for_exact_and_mc_ads(seed, n, perms, exact):
    rng = np.random.default_rng(seed)
    table, groups = random_table_game(seed, n, int(rng.integers(1, n + 1)))
    table[0] = rng.uniform(-1, 1)  # v(∅) need not be 0
    budget = Budget(exact_max=6 if exact else 0, permutations=perms)
    res = estimate("ads", games.table_game(table), groups, budget, seed=seed)
    assert res.exact == exact
    assert res.values.sum() == pytest.approx(table[-1] - table[0], abs=1e-9)
    prefix = 0
    for g in groups:  # group efficiency (Prop. 4.2) holds for both, every permutation telescopes in each group
        nxt = prefix | games.mask_of(g)
        assert res.values[g].sum() == pytest.approx(table[nxt] - table[prefix], abs=1e-9)
        prefix = nxt
    if exact and n <= 5:
        np.testing.assert_allclose(res.values, brute_ads(games.table_game(table), groups), atol=1e-12)
