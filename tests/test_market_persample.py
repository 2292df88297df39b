"""The per-sample market (seeds/004 appendix A) against a brute-force solve of Eq. 2 on the price grid."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from procure.errors import UserError
from procure.market.persample import PRICE_GRID, clear_per_sample, minmax01
from procure.market.seller import optimal_price


def _buys_brute_force(v_j: float, p: float, ev, ep, budget: float) -> bool:
    """Eq. 2 by enumeration over every bundle of the existing rows plus the offer at price p: the buyer buys iff
    the best net utility of a feasible bundle holding the offer is at least that of every bundle without it
    (the empty bundle included: net 0). Ties buy."""
    n = len(ev)
    best_without, best_with = 0.0, -np.inf
    for mask in itertools.product([0, 1], repeat=n):
        cost = float(np.dot(mask, ep))
        u = float(np.dot(mask, ev))
        if cost <= budget + 1e-12:
            best_without = max(best_without, u - cost)
        if cost + p <= budget + 1e-12:
            best_with = max(best_with, u + v_j - cost - p)
    return best_with >= best_without - 1e-9


unit = st.floats(0.0, 1.0, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(
    offers=st.lists(unit, min_size=1, max_size=6),
    existing=st.lists(st.tuples(unit, st.floats(0.01, 1.0)), min_size=0, max_size=6),
    budget_share=st.floats(0.0, 1.5),
)
def test_decisions_and_prices_equal_brute_force_eq2_on_the_grid(offers, existing, budget_share):
    ev = np.array([e[0] for e in existing])
    ep = np.array([e[1] for e in existing])
    budget = budget_share * (float(ep.sum()) + 1.0)
    out = clear_per_sample(offers, ev, ep, budget)
    assert out.decisions.shape == (len(offers), len(PRICE_GRID))
    for j, v_j in enumerate(offers):
        want = [_buys_brute_force(v_j, p, ev, ep, budget) for p in PRICE_GRID]
        assert out.decisions[j].tolist() == want
        # Eq. 4 with this one buyer on the grid: the highest selling price (profit p x 1), else unsold
        if any(want):
            assert out.sold[j] and out.price[j] == max(p for p, b in zip(PRICE_GRID, want) if b)
            assert optimal_price([out.mwp[j]], grid=PRICE_GRID)[0] == out.price[j]
        else:
            assert not out.sold[j] and np.isnan(out.price[j])


def test_unlimited_budget_pays_up_to_the_value_and_a_tight_one_less():
    # with money to spare the offer's MWP is its value; with a budget spent on a better existing row, less
    out = clear_per_sample([0.9, 0.7, 0.4], existing_values=[1.0], existing_prices=[0.2], budget=10.0)
    np.testing.assert_allclose(out.mwp, [0.9, 0.7, 0.4])
    assert out.price[:2].tolist() == [0.875, 0.625] and not out.sold[2]
    assert out.mean_price == pytest.approx((0.875 + 0.625) / 2)
    tight = clear_per_sample([0.9], existing_values=[1.0], existing_prices=[0.2], budget=0.9)
    # buying the offer means dropping the existing row (net 0.8) unless the offer costs <= 0.7: MWP = 0.7
    assert tight.mwp[0] == pytest.approx(0.7) and tight.price[0] == 0.625


def test_minmax01_and_errors():
    np.testing.assert_allclose(minmax01([2.0, 4.0, 3.0]), [0.0, 1.0, 0.5])
    assert minmax01([5.0, 5.0]).tolist() == [1.0, 1.0]  # constant values: every row worth the full price
    with pytest.raises(UserError, match="existing prices"):
        clear_per_sample([0.5], [0.1, 0.2], [0.3], 1.0)
    with pytest.raises(UserError, match="budget"):
        clear_per_sample([0.5], [], [], -1.0)
    with pytest.raises(UserError, match="finite"):
        clear_per_sample([float("nan")], [], [], 1.0)
