"""The per-sample data market of seeds/004 appendix A (section 6.1, "Market/Pricing Setup").

A market already lists some rows (``existing``: their values to this buyer and their prices in (0, 1]). Every
other row is offered on its own: for each price p on a grid (seeds/004: 0.5, 0.625, 0.75, 0.875, 1.0) the buyer
solves Eq. 2 over the existing rows plus the offer,

    max_x  g(x) = u(x) - x.p   s.t.  x.p <= b,  g(x) >= 0 for a non-empty x,   u(x) = sum_{i in x} v_i,

and buys the offer at p iff some optimal bundle holds it (ties buy, :func:`procure.market.buyer.will_buy`),
i.e. iff p <= MWP (Lemma 2). The seller of the offer prices by Eq. 4 with this one buyer on the grid: profit
p * 1[buyer buys at p] is largest at the highest grid price <= MWP; when no grid price sells, the row is not
sold. Each valuation method is its own buyer (values in [0, 1], money units = value units).

Knows nothing of models: values come from any valuation method.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from procure.errors import UserError
from procure.market.buyer import max_willingness_to_pay

#: seeds/004 section 6.1: the price points at which every buyer's decision is solved
PRICE_GRID = (0.5, 0.625, 0.75, 0.875, 1.0)


@dataclass(frozen=True)
class PerSampleOutcome:
    """Per offered row: the buyer's maximum willingness to pay (money), its decision at every grid price
    (``decisions[j, k]``: buys row j at ``grid[k]``), the seller's price (NaN when unsold) and ``sold``."""

    mwp: np.ndarray
    decisions: np.ndarray
    price: np.ndarray
    sold: np.ndarray
    grid: tuple[float, ...]

    @property
    def mean_price(self) -> float:
        """Average price per sold row (NaN when nothing sold): the right column of seeds/004 Figure 5."""
        return float(np.mean(self.price[self.sold])) if self.sold.any() else float("nan")


def clear_per_sample(
    offer_values: Sequence[float],
    existing_values: Sequence[float],
    existing_prices: Sequence[float],
    budget: float,
    grid: Sequence[float] = PRICE_GRID,
) -> PerSampleOutcome:
    """Price and sell every offered row on its own (module docstring). Values and prices in money units.

    ``offer_values[j]``: the buyer's value of offer j; ``existing_values`` / ``existing_prices``: the rows the
    market already lists; ``budget``: the buyer's b in Eq. 2. Tolerance: a price within 1e-9 of the MWP sells.
    """
    v = np.asarray(offer_values, dtype=np.float64)
    ev = np.asarray(existing_values, dtype=np.float64)
    ep = np.asarray(existing_prices, dtype=np.float64)
    g = np.asarray(sorted(float(p) for p in grid), dtype=np.float64)
    if ev.shape != ep.shape:
        raise UserError(f"per-sample market: {len(ev)} existing values but {len(ep)} existing prices")
    for name, x in (("offer values", v), ("existing values", ev), ("existing prices", ep), ("price grid", g)):
        if not np.all(np.isfinite(x)):
            raise UserError(f"per-sample market: {name} must be finite numbers")
    if g.size == 0 or np.any(g < 0) or np.any(ep < 0):
        raise UserError("per-sample market: prices (grid and existing) must be >= 0 and the grid non-empty")
    if not np.isfinite(budget) or budget < 0:
        raise UserError(f"per-sample market: budget must be a finite number >= 0 (got {budget})")
    values = np.concatenate([ev, [0.0]])
    prices = np.concatenate([ep, [0.0]])
    prior = list(range(len(ev)))
    j = len(ev)
    mwp = np.empty(len(v))
    for k, value in enumerate(v):
        values[j] = value
        mwp[k], _ = max_willingness_to_pay(j, values, prices, budget, prior)
    decisions = g[None, :] <= mwp[:, None] + 1e-9 * np.maximum(1.0, np.abs(mwp[:, None]))
    sold = decisions.any(axis=1)
    top = np.where(sold, decisions.shape[1] - 1 - np.argmax(decisions[:, ::-1], axis=1), 0)
    price = np.where(sold, g[top], np.nan)
    return PerSampleOutcome(mwp, decisions, price, sold, tuple(float(p) for p in g))


def minmax01(values: Sequence[float]) -> np.ndarray:
    """Values mapped to [0, 1] by min-max (seeds/004 appendix A: "normalized to [0, 1] for pricing
    compatibility"); all-equal values (the constant method) map to 1: every row is worth the full price."""
    x = np.asarray(values, dtype=np.float64)
    lo, hi = float(np.min(x)), float(np.max(x))
    return np.ones_like(x) if hi - lo <= 1e-12 * max(1.0, abs(hi)) else (x - lo) / (hi - lo)
