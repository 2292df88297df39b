"""From a round's candidate values to prices, a purchase and payments, through ``procure.market.round``.

Step 3 of the staged procurement (DESIGN.md): values become buyer utilities by the recipe's map, the market
clears one round (fairshare flat price or royalty rate) within the round budget, and after the new state has
been evaluated the royalties are paid out of the measured gain and every seller that sold decides whether to
stay (seeds/004 dynamics: a seller paid less than its fair price stays with probability pi(paid, fair) < 1).

Money. The buyer's utility map ``u = gamma * s(v) + beta`` is in money. It is affine in the value v, with slope
``a`` = money per value unit (``gamma`` for ``scale: none``, ``gamma / (max - min)`` for ``scale: minmax``); a
measured gain Δ of the task utility (e.g. -AvgErr points, the units retraining values are in) is worth ``a Δ``.
A flat seller's fair price is ``min(u_j, budget)`` (Lemma 3); a royalty seller is paid ``alpha_j a max(Δ, 0)``
and its fair payment is ``alpha_j max(u(x), 0)``, the revenue it priced its rate on (Lemma 6), where ``u(x)`` is
the buyer's utility of the bought bundle. Both are money: a seller paid its fair rate on the gain the buyer
valued (``a Δ = u(x)``) stays with probability 1. With ``scale: minmax`` u(x) is a relative score rather than a
gain, so royalty stay decisions are meaningful with ``scale: none`` (``gamma`` = money per metric point).

Ties. Sellers arrive in a seeded random order (the market's sequential pricing follows it) and equal utilities
are broken by that order, so no seller is favoured by its index.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from procure.market.round import clear_round, royalty_payouts, stay_probability
from procure.pipeline.protocols import coalition_key
from procure.pipeline.recipe import MarketSpec, UtilityMap


def buyer_utilities(values: np.ndarray, spec: UtilityMap) -> tuple[np.ndarray, float]:
    """(u, a): u_j = gamma * s(v)_j + beta, with s = identity or the round's min-max scaling to [0, 1], and a =
    du/dv, the money per value unit.

    Min-max of a round whose values are all equal gives 1 for every candidate (all equally worth buying; a = 0).
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return v.copy(), float(spec.gamma)
    if spec.scale == "minmax":
        lo, hi = float(v.min()), float(v.max())
        if hi - lo <= 1e-12 * max(1.0, abs(hi)):
            return np.full_like(v, spec.gamma + spec.beta), 0.0
        return spec.gamma * (v - lo) / (hi - lo) + spec.beta, float(spec.gamma / (hi - lo))
    return spec.gamma * v + spec.beta, float(spec.gamma)


def shortlist(utilities: np.ndarray, k: int | None, candidates: list[int]) -> list[int]:
    """The candidates the buyer considers, in the given (arrival) order: the top ``k`` by utility, ties broken
    by that order; all of them when ``k`` is None."""
    if k is None or k >= len(candidates):
        return list(candidates)
    pos = {j: r for r, j in enumerate(candidates)}
    top = set(sorted(candidates, key=lambda j: (-utilities[j], pos[j]))[:k])
    return [j for j in candidates if j in top]


@dataclass
class Clearing:
    """One round's market result, indexed like the round's candidates (not shortlisted -> no offer).

    ``arrival``: the order sellers priced in; ``money_per_point``: the utility map's slope a;
    ``bought_utility``: the buyer's utility u(x) of the bought bundle (money)."""

    utilities: list[float]
    offered: list[int]
    prices: list[float]
    rates: list[float]
    upfront: list[float]
    bought: list[int]
    budget: float
    detail: dict[str, Any] = field(default_factory=dict)
    arrival: list[int] = field(default_factory=list)
    money_per_point: float = 1.0
    bought_utility: float = 0.0

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
            "arrival": self.arrival,
            "money_per_point": self.money_per_point,
            "bought_utility": self.bought_utility,
        }


def clear(
    values: np.ndarray,
    spec: MarketSpec,
    sellable: list[bool] | None = None,
    *,
    rng: np.random.Generator | None = None,
    sellers: list[int] | None = None,
    measured: Mapping[str, float] | None = None,
) -> Clearing:
    """Prices and purchase for one round: ``clear_round`` on the shortlisted candidates' utilities.

    Candidates that are not ``sellable`` (an empty dataset) get utility 0 and no offer; the utility map
    (min-max scaling included) runs over the sellable ones only. ``rng`` draws the arrival order (None: index
    order). ``measured`` (with ``spec.utility.bundle == "measured"``): measured coalition utilities
    ``{coalition_key(sellers): v(S)}`` ("-" = v(∅)); the buyer's utility of a bundle S is then
    ``gamma * (v(S) - v(∅)) + beta`` when S was measured, else the additive sum (``sellers``: candidate ->
    seller id)."""
    n = len(values)
    ok = np.ones(n, dtype=bool) if sellable is None else np.asarray(sellable, dtype=bool)
    u = np.zeros(n)
    u[ok], slope = buyer_utilities(np.asarray(values, dtype=np.float64)[ok], spec.utility)
    budget = spec.round_budget(float(np.clip(u, 0.0, None).sum()))
    arrival = [int(j) for j in (rng.permutation(n) if rng is not None else range(n))]
    offered = shortlist(u, spec.max_purchases, [j for j in arrival if ok[j]])  # in arrival order
    prices, rates, upfront = [0.0] * n, [0.0] * n, [0.0] * n
    bought: list[int] = []
    detail: dict[str, Any] = {}
    bought_utility = 0.0
    if offered and spec.max_purchases != 0:
        bundle = _bundle_utility(offered, u, spec.utility, sellers, measured)
        out = clear_round(
            u[offered],
            budget,
            spec.contract,
            costs=np.full(len(offered), spec.cost),
            max_rate=spec.max_rate,
            bundle_utility=bundle,
        )
        for k, j in enumerate(offered):
            prices[j], rates[j], upfront[j] = float(out.prices[k]), float(out.rates[k]), float(out.upfront[k])
        bought = sorted(offered[k] for k in out.bought)
        bought_utility = float(out.buyer_utility)
        detail = _jsonable(out.to_dict())
    return Clearing(
        [float(x) for x in u],
        sorted(offered),
        prices,
        rates,
        upfront,
        bought,
        float(budget),
        detail,
        arrival,
        float(slope),
        bought_utility,
    )


def _bundle_utility(offered, u, spec: UtilityMap, sellers, measured):
    """The measured bundle utility over positions of ``offered`` (None: additive, the market's default)."""
    if spec.bundle != "measured" or not measured or sellers is None or "-" not in measured:
        return None
    base = measured["-"]

    def bundle(S: frozenset[int]) -> float:
        key = coalition_key([sellers[offered[k]] for k in S])
        if S and key in measured:
            return spec.gamma * (measured[key] - base) + spec.beta
        return float(sum(u[offered[k]] for k in S))

    return bundle


def settle(
    clearing: Clearing, realised_gain: float, spec: MarketSpec, rng: np.random.Generator
) -> tuple[list[float], list[dict[str, float]]]:
    """Royalties and the stay decisions of the sellers that sold (money units: module docstring).

    ``realised_gain``: the measured test gain in task-utility units. Returns (royalty per candidate, one record
    per seller that sold: paid, fair, stay probability, stays)."""
    n = len(clearing.utilities)
    royalties = [0.0] * n
    royalty = spec.contract == "royalty"
    if royalty and clearing.bought:
        out = royalty_payouts(
            np.asarray(clearing.rates, dtype=np.float64),
            tuple(clearing.bought),
            clearing.money_per_point * realised_gain,
        )
        royalties = [float(x) for x in np.asarray(out, dtype=np.float64)]
    records = []
    for j in clearing.bought:
        paid = clearing.upfront[j] + royalties[j]
        if royalty:
            fair = clearing.rates[j] * max(clearing.bought_utility, 0.0)
        else:
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
