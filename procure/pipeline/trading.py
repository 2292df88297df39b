"""From a round's candidate values to prices, a purchase and payments, through ``procure.market.round``.

Step 3 of the staged procurement (DESIGN.md): values become buyer utilities by the recipe's linear map,
the market clears one round (fairshare flat price or royalty rate) within the round budget, and after the
new state has been evaluated the royalties are paid out of the measured gain and every seller that sold
decides whether to stay (seeds/004 dynamics: a seller paid less than its fair price stays with
probability pi(paid, fair) < 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from procure.market.round import clear_round, royalty_payouts, stay_probability
from procure.pipeline.recipe import MarketSpec, UtilityMap


def buyer_utilities(values: np.ndarray, spec: UtilityMap) -> np.ndarray:
    """u_j = gamma * s(v)_j + beta, with s = identity or the round's min-max scaling to [0, 1].

    Min-max of a round whose values are all equal gives 1 for every candidate (all equally worth buying).
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return v.copy()
    if spec.scale == "minmax":
        lo, hi = float(v.min()), float(v.max())
        s = np.ones_like(v) if hi - lo <= 1e-12 * max(1.0, abs(hi)) else (v - lo) / (hi - lo)
    else:
        s = v
    return spec.gamma * s + spec.beta


def shortlist(utilities: np.ndarray, k: int | None) -> list[int]:
    """Indices the buyer considers: the top ``k`` by utility (ties -> lower index), or all."""
    n = len(utilities)
    if k is None or k >= n:
        return list(range(n))
    order = sorted(range(n), key=lambda i: (-utilities[i], i))
    return sorted(order[:k])


@dataclass
class Clearing:
    """One round's market result, indexed like the round's candidates (not shortlisted -> no offer)."""

    utilities: list[float]
    offered: list[int]
    prices: list[float]
    rates: list[float]
    upfront: list[float]
    bought: list[int]
    budget: float
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "utilities": self.utilities,
            "offered": self.offered,
            "prices": self.prices,
            "rates": self.rates,
            "upfront": self.upfront,
            "bought": self.bought,
            "budget": self.budget,
            "detail": self.detail,
        }


def clear(values: np.ndarray, spec: MarketSpec, sellable: list[bool] | None = None) -> Clearing:
    """Prices and purchase for one round: ``clear_round`` on the shortlisted candidates' utilities.

    Candidates that are not ``sellable`` (an empty dataset) get utility 0 and no offer; the utility map
    (min-max scaling included) runs over the sellable ones only."""
    n = len(values)
    ok = np.ones(n, dtype=bool) if sellable is None else np.asarray(sellable, dtype=bool)
    u = np.zeros(n)
    u[ok] = buyer_utilities(np.asarray(values, dtype=np.float64)[ok], spec.utility)
    budget = spec.round_budget(float(np.clip(u, 0.0, None).sum()))
    idx = np.flatnonzero(ok)
    offered = sorted(int(idx[k]) for k in shortlist(u[ok], spec.max_purchases))
    prices = [0.0] * n
    rates = [0.0] * n
    upfront = [0.0] * n
    bought: list[int] = []
    detail: dict[str, Any] = {}
    if offered and spec.max_purchases != 0:
        sub = u[offered]
        out = clear_round(
            sub,
            budget,
            spec.contract,
            costs=np.full(len(offered), spec.cost),
            max_rate=spec.max_rate,
        )
        for k, j in enumerate(offered):
            prices[j] = float(out.prices[k])
            rates[j] = float(out.rates[k])
            upfront[j] = float(out.upfront[k])
        bought = sorted(offered[k] for k in out.bought)
        detail = _jsonable(out.to_dict())
    return Clearing([float(x) for x in u], offered, prices, rates, upfront, bought, float(budget), detail)


def settle(
    clearing: Clearing, realised_gain: float, spec: MarketSpec, rng: np.random.Generator
) -> tuple[list[float], list[dict[str, float]]]:
    """Royalties from the measured gain (utility units, gamma-scaled) and the stay decisions of the sellers
    that sold. Returns (royalty per candidate, one record per seller that sold)."""
    n = len(clearing.utilities)
    royalties = [0.0] * n
    if spec.contract == "royalty" and clearing.bought:
        out = royalty_payouts(
            np.asarray(clearing.rates, dtype=np.float64),
            tuple(clearing.bought),
            spec.utility.gamma * realised_gain,
        )
        royalties = [float(x) for x in np.asarray(out, dtype=np.float64)]
    records = []
    for j in clearing.bought:
        paid = clearing.upfront[j] + royalties[j]
        fair = min(max(clearing.utilities[j], 0.0), clearing.budget)
        ex = spec.seller_exit
        p = float(stay_probability(paid, fair, ex.family, k=ex.k, q=ex.q)) if ex.enabled else 1.0
        p = min(max(p, 0.0), 1.0)
        stays = bool(rng.random() < p) if p < 1.0 else True
        records.append({"candidate": j, "paid": paid, "fair": fair, "stay_prob": p, "stays": int(stays)})
    return royalties, records


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float | int | str | bool) or obj is None:
        return obj
    return str(obj)
