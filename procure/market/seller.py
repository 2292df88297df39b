"""The seller's pricing problem (seeds/004 Eqs. 3-4, Lemma 2).

Profit r(p_j) = p_j * #{buyers whose optimal bundle contains j at p_j} - c_j. A buyer buys D_j at p_j iff
p_j <= MWP_k (its maximum willingness to pay, procure.market.buyer), so r is piecewise linear in p_j with
breakpoints at the MWP_k and the optimum is one of them (Lemma 2). Ties in profit go to the lower price
(more buyers served).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from procure.errors import UserError


def seller_profit(price: float, mwps: Sequence[float], cost: float = 0.0) -> float:
    """r(p) = p * #{k : MWP_k >= p} - c (money)."""
    m = np.asarray(mwps, dtype=float)
    return float(price * np.count_nonzero(m >= price - 1e-12 * max(1.0, abs(price))) - cost)


def optimal_price(
    mwps: Sequence[float], cost: float = 0.0, grid: Sequence[float] | None = None, floor: float = 0.0
) -> tuple[float, float]:
    """Seller's optimal price and profit (Eq. 4) over the MWP breakpoints (Lemma 2, ``grid`` None) or over a
    price grid (Algorithm 2, lines 4-12). Prices below ``floor`` are not offered. When no offered price sells
    with profit >= 0 the seller posts max(cost, floor) and the returned profit is negative (-cost)."""
    if grid is not None:
        cands = np.asarray(list(grid), dtype=float)
        if cands.size == 0:
            raise UserError("price_grid: is empty; give at least one price or omit it to use the MWP breakpoints")
        if np.any(np.isnan(cands)) or np.any(cands < 0):
            raise UserError("price_grid: prices must be non-negative numbers")
    else:
        cands = np.asarray(mwps, dtype=float)
    cands = np.unique(cands[(cands >= floor) & (cands >= 0)])
    best_p, best_r = max(cost, floor, 0.0), -float(cost)
    for p in cands:
        r = seller_profit(float(p), mwps, cost)
        if r >= 0 and (r > best_r + 1e-12 or best_r < 0):
            best_p, best_r = float(p), r
    return best_p, best_r
