"""One round of the data market from numbers: the pipeline's single entry point (stable API).

clear_round(values, budget, contract, ...) -> RoundOutcome. Candidates are the sellers; they arrive in index
order and each prices against the buyer (Algorithm 2 with one buyer):
- ``fairshare`` (flat rate): seller j posts p_j = its optimal price, which for one buyer is the buyer's MWP
  (Lemma 2; Lemma 3: p* = min(u, b) for a single dataset), or max(cost_j, price_floor) when that is higher
  (then the buyer does not buy it). The buyer then solves Eq. 2 exactly at the posted prices and pays now.
- ``royalty``: seller j posts its optimal rate alpha_j (Lemma 6 breakpoints, expected revenue alpha_j u(x) must
  cover cost_j; a seller who cannot sell withdraws); the buyer solves Eqs. 22-23 with maximum total rate
  ``max_rate``; nothing is paid now, royalty_payouts() pays alpha_j * realised gain after evaluation.
Utility of a bundle S: mapping(sum of values over S) when bundle_utility is None (additive values), else
mapping(bundle_utility(S)) (e.g. a metric after fine-tuning on S; u(empty) is the status quo).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from procure.errors import UserError
from procure.market.buyer import ENUM_MAX, max_willingness_to_pay, solve_buyer, subset_matrix
from procure.market.mapping import Linear, check_utility
from procure.market.participation import stay_probability
from procure.market.royalty import ROYALTY_MAX, optimal_rate, solve_royalty_buyer

__all__ = ["RoundOutcome", "clear_round", "royalty_payouts", "stay_probability"]


@dataclass(frozen=True)
class RoundOutcome:
    """Result of one round. Money units are those of the mapping; arrays have one entry per candidate."""

    prices: np.ndarray  # fairshare prices posted (0 for royalty)
    rates: np.ndarray  # royalty rates posted (0 for flat)
    bought: tuple[int, ...]
    upfront: np.ndarray  # money paid now (price of bought candidates, 0 otherwise)
    buyer_utility: float  # u(bought)
    buyer_net: float  # u - paid (flat) or (1 - sum of rates) u (royalty)
    solver: str  # which exact solver ran

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("prices", "rates", "upfront"):
            d[k] = [float(x) for x in d[k]]
        d["bought"] = [int(i) for i in self.bought]
        return d


class _Memo:
    def __init__(self, fn: Callable[[frozenset[int]], float]):
        self.fn, self.cache = fn, {}

    def __call__(self, s: frozenset[int]) -> float:
        if s not in self.cache:
            self.cache[s] = check_utility(self.fn(s))
        return self.cache[s]


def clear_round(
    values: np.ndarray,
    budget: float,
    contract: Literal["fairshare", "royalty"],
    *,
    costs: np.ndarray | None = None,
    bundle_utility: Callable[[frozenset[int]], float] | None = None,
    mapping=None,
    max_rate: float = 0.5,
    price_floor: float = 0.0,
) -> RoundOutcome:
    """Run one round's market (see module doc). values: (n,) data values (higher = better, may be negative);
    budget: money, >= 0 or inf; costs: (n,) sellers' costs (default 0); max_rate: buyer's maximum total
    royalty rate in [0, 1); price_floor: lowest flat price a seller accepts. An empty purchase is a valid
    outcome (bought == ())."""
    values = np.asarray(values, dtype=float).reshape(-1)
    n = values.size
    mapping = mapping if mapping is not None else Linear()
    if budget is None or np.isnan(budget) or budget < 0:
        raise UserError(f"budget: must be >= 0 (got {budget}); pass a non-negative amount of money or inf")
    if not np.all(np.isfinite(values)):
        raise UserError("values: must be finite numbers (got NaN or inf); fix the valuation that produced them")
    costs = np.zeros(n) if costs is None else np.asarray(costs, dtype=float).reshape(-1)
    if costs.shape != (n,) or not np.all(np.isfinite(costs)) or np.any(costs < 0):
        raise UserError(f"costs: need {n} finite non-negative numbers, one per candidate")
    if not (0.0 <= max_rate < 1.0):
        raise UserError(f"max_rate: must be in [0, 1) (got {max_rate})")
    if np.isnan(price_floor) or price_floor < 0:
        raise UserError(f"price_floor: must be >= 0 (got {price_floor})")
    if contract not in ("fairshare", "royalty"):
        raise UserError(f"contract: unknown '{contract}'; choose 'fairshare' or 'royalty'")
    bu = _Memo(bundle_utility) if bundle_utility is not None else None
    if (bu is not None or mapping.affine() is None) and n > ENUM_MAX:
        field = "bundle_utility" if bu is not None else "mapping"
        raise UserError(
            f"{field}: a non-additive or non-affine utility is solved by enumeration, at most {ENUM_MAX} "
            f"candidates (got {n}); use additive values with a linear/zero-one mapping"
        )
    zeros = np.zeros(n)
    if n == 0:
        return RoundOutcome(zeros, zeros, (), zeros, 0.0, 0.0, "none")
    if contract == "fairshare":
        prices = np.zeros(n)
        for j in range(n):
            mwp, _ = max_willingness_to_pay(j, values, prices, budget, list(range(j)), mapping, bu)
            prices[j] = mwp if mwp >= max(costs[j], price_floor, 0.0) else max(costs[j], price_floor, 0.0)
        choice = solve_buyer(values, prices, budget, mapping, bu)
        upfront = np.zeros(n)
        upfront[list(choice.bundle)] = prices[list(choice.bundle)]
        return RoundOutcome(prices, zeros, choice.bundle, upfront, choice.utility, choice.net, choice.solver)
    # royalty
    if n > ROYALTY_MAX:
        raise UserError(
            f"contract: royalty clearing is exact by enumeration, at most {ROYALTY_MAX} candidates (got {n}); "
            "use contract 'fairshare' or split the round"
        )
    sub = subset_matrix(n)
    if bu is None:
        utils = np.array([check_utility(mapping(float(s)), "mapping") for s in sub @ values])
    else:
        utils = np.array(
            [check_utility(mapping(bu(frozenset(np.flatnonzero(r).tolist()))), "mapping") for r in sub], dtype=float
        )
    rates = np.zeros(n)
    eff = np.zeros(n)  # withdrawn sellers get an impossible rate so no bundle may hold them
    for j in range(n):
        alpha, profit = optimal_rate([utils], eff, j, list(range(j)), [max_rate], float(costs[j]))
        if alpha > 0 and profit >= 0:
            rates[j] = eff[j] = alpha
        else:
            eff[j] = 2.0
    choice = solve_royalty_buyer(utils, eff, max_rate)
    return RoundOutcome(
        zeros, rates, choice.bundle, zeros.copy(), choice.utility, choice.retained, "enumeration(royalty)"
    )


def royalty_payouts(rates: np.ndarray, bought, realised_gain: float) -> np.ndarray:
    """Royalties owed after evaluation: alpha_j * max(realised_gain, 0) for bought j, 0 otherwise (a realised
    loss pays nothing; sellers are never charged). Units: those of realised_gain."""
    rates = np.asarray(rates, dtype=float)
    if np.isnan(realised_gain):
        raise UserError("realised_gain: is NaN; evaluate the model before paying royalties")
    out = np.zeros_like(rates)
    idx = list(bought)
    out[idx] = rates[idx] * max(float(realised_gain), 0.0)
    return out
