"""clear_round semantics, royalty contracts (Lemma 6), participation pi (Lemma 7)."""

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from procure.errors import UserError
from procure.market.buyer import subset_matrix
from procure.market.round import RoundOutcome, clear_round, royalty_payouts, stay_probability
from procure.market.royalty import envelope_breakpoints, optimal_rate, rate_candidates, seller_revenue

SET = settings(max_examples=25, deadline=None)


def test_fairshare_round_prices_at_marginal_utility_and_respects_budget():
    values = np.array([0.8, 0.5, 0.3, -0.2])
    out = clear_round(values, 1.0, "fairshare")
    assert isinstance(out, RoundOutcome)
    # each seller's MWP: full marginal utility (earlier sellers leave no surplus), capped by the budget
    np.testing.assert_allclose(out.prices[:3], [0.8, 0.5, 0.3])
    assert 3 not in out.bought  # negative value is never bought
    assert out.upfront.sum() <= 1.0 + 1e-12
    assert out.buyer_net == pytest.approx(out.buyer_utility - out.upfront.sum())
    d = out.to_dict()
    assert d["bought"] == list(out.bought) and len(d["prices"]) == 4


def test_budget_zero_is_an_empty_round_not_an_error():
    out = clear_round(np.array([0.5, 0.4]), 0.0, "fairshare", price_floor=0.1)
    assert out.bought == () and out.upfront.sum() == 0.0


def test_costs_and_price_floor_block_unprofitable_sales():
    out = clear_round(np.array([0.5, 0.4]), 10.0, "fairshare", costs=np.array([0.6, 0.0]), price_floor=0.1)
    assert 0 not in out.bought and 1 in out.bought


def test_bundle_utility_is_used_with_status_quo():
    # u(S) = 1 + 0.5 * |S| capped at 2 (diminishing); u(empty) = 1 is the status quo
    def u(s):
        return min(1.0 + 0.5 * len(s), 2.0)

    out = clear_round(np.zeros(3), 5.0, "fairshare", bundle_utility=u)
    assert out.prices[0] == pytest.approx(0.5)  # marginal gain over the status quo
    assert out.buyer_net >= 1.0 - 1e-12  # never worse than buying nothing


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"budget": -1.0}, "budget"),
        ({"budget": float("nan")}, "budget"),
        ({"values": np.array([np.nan])}, "values"),
        ({"contract": "barter"}, "contract"),
        ({"max_rate": 1.5}, "max_rate"),
        ({"costs": np.array([-1.0])}, "costs"),
    ],
)
def test_bad_input_names_the_field(kwargs, field):
    args = {"values": np.array([0.5]), "budget": 1.0, "contract": "fairshare"} | kwargs
    with pytest.raises(UserError, match=field):
        clear_round(args.pop("values"), args.pop("budget"), args.pop("contract"), **args)


def test_nan_bundle_utility_raises():
    with pytest.raises(UserError, match="bundle_utility"):
        clear_round(np.zeros(2), 1.0, "fairshare", bundle_utility=lambda s: float("nan"))


# ------------------------------------------------------------------------------------------------ royalty
def _naive_revenue(utils, rates, j, items, alpha, max_rate):
    """Buyer over ``items`` with rate alpha for j; indifference resolved toward bundles with j."""
    best, best_has_j, best_u = -np.inf, False, 0.0
    r = rates.copy()
    r[j] = alpha
    for k in range(len(items) + 1):
        for x in itertools.combinations(items, k):
            mask = sum(1 << i for i in x)
            f = sum(r[i] for i in x)
            ret = (1 - f) * utils[mask]
            if f > max_rate + 1e-12 or (x and ret < -1e-12):
                continue
            has = j in x
            if ret > best + 1e-9 or (abs(ret - best) <= 1e-9 and (has and not best_has_j)):
                best, best_has_j, best_u = ret, has, utils[mask]
    return alpha * best_u if best_has_j else 0.0


@SET
@given(st.integers(1, 4), st.integers(0, 100_000), st.floats(0.2, 0.9))
def test_lemma6_optimal_rate_is_a_breakpoint_and_beats_every_grid_rate(n, seed, max_rate):
    rng = np.random.default_rng(seed)
    v = rng.uniform(0, 1, n)
    utils = subset_matrix(n) @ v
    rates = np.zeros(n)
    rates[: n - 1] = rng.uniform(0, 0.3, n - 1)
    j, prior = n - 1, list(range(n - 1))
    alpha, profit = optimal_rate([utils], rates, j, prior, [max_rate])
    if profit > 0:
        cands = np.concatenate(
            [rate_candidates(utils, rates, j, prior, max_rate), envelope_breakpoints(utils, rates, j, prior, max_rate)]
        )
        assert np.min(np.abs(cands - alpha)) < 1e-12
    for a in np.linspace(0, 0.999, 300):
        assert _naive_revenue(utils, rates, j, list(range(n)), a, max_rate) <= profit + 1e-9


def test_lemma6_breakpoints_alone_can_miss_the_optimal_rate():
    """Erratum: two bundles holding D_3 compete; as alpha rises the buyer moves to the smaller one, and the
    revenue alpha * u(x) peaks where they cross, which is not one of Eq. 27's breakpoints."""
    rng = np.random.default_rng(186)
    v = rng.uniform(0, 1, 4)
    utils = subset_matrix(4) @ v
    rates = np.zeros(4)
    rates[:3] = rng.uniform(0, 0.3, 3)
    lemma6 = rate_candidates(utils, rates, 3, [0, 1, 2], 0.5)
    best6 = max(seller_revenue([utils], rates, 3, [0, 1, 2, 3], a, [0.5]) for a in lemma6)
    alpha, profit = optimal_rate([utils], rates, 3, [0, 1, 2], [0.5])
    grid = max(_naive_revenue(utils, rates, 3, [0, 1, 2, 3], a, 0.5) for a in np.linspace(0, 0.999, 1000))
    assert best6 < grid - 1e-3 and grid <= profit + 1e-9


def test_royalty_round_and_payouts():
    out = clear_round(np.array([0.8, 0.5, 0.3]), 1.0, "royalty", max_rate=0.5)
    assert np.all(out.prices == 0) and np.all(out.upfront == 0)
    f = out.rates[list(out.bought)].sum()
    assert f <= 0.5 + 1e-12
    assert out.buyer_net == pytest.approx((1 - f) * out.buyer_utility)
    pay = royalty_payouts(out.rates, out.bought, 2.0)
    np.testing.assert_allclose(pay[list(out.bought)], 2.0 * out.rates[list(out.bought)])
    assert np.all(royalty_payouts(out.rates, out.bought, -1.0) == 0)


def test_single_royalty_seller_takes_the_max_rate():
    out = clear_round(np.array([1.0]), 0.0, "royalty", max_rate=0.3)
    assert out.rates[0] == pytest.approx(0.3) and out.bought == (0,)


# ------------------------------------------------------------------------------------------------ pi
@pytest.mark.parametrize("family", ["power", "exp", "linear", "step"])
def test_participation_family_axioms(family):
    assert stay_probability(1.0, 1.0, family) == 1.0
    assert stay_probability(1.2, 1.0, family) == 1.0
    prev = 1.0
    for p in [0.99, 0.8, 0.5, 0.1]:
        pi = stay_probability(p, 1.0, family, k=0.5, q=0.9)
        assert 0 <= pi < 1 and pi <= prev + 1e-15
        prev = pi


@SET
@given(st.lists(st.floats(0.01, 0.999), min_size=1, max_size=40), st.sampled_from(["power", "exp", "linear"]))
def test_lemma7_participation_loss_lower_bound(ratios, family):
    """P_T = prod pi strictly decreasing under exploitative pricing and P_T <= exp(-S_T) (Eqs. 33-34)."""
    pis = [stay_probability(r, 1.0, family, k=0.3) for r in ratios]
    prods = np.cumprod(pis)
    alive = prods[prods > 0]
    assert np.all(np.diff(alive) < 0)
    s = sum(1 - p for p in pis)
    assert prods[-1] <= math.exp(-s) + 1e-15
    assert 1 - prods[-1] >= 1 - math.exp(-s) - 1e-15


def test_participation_bad_family():
    with pytest.raises(UserError, match="family"):
        stay_probability(0.5, 1.0, "sigmoid")
