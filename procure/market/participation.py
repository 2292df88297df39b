"""Seller participation pi(p, p*): probability that a seller paid p (fair price p*) stays next period.

seeds/004 Assumption 1 / Lemma 7: pi(p*, p*) = 1 and pi(p, p*) < 1 for p < p*. Families (r = p / p* in [0, 1]):
- ``power``: pi = r ** k (k > 0, default 1)
- ``exp``: pi = exp(-k (1 - r))
- ``linear``: pi = max(0, 1 - k (1 - r))
- ``step``: pi = q for every p < p* (0 <= q < 1)
Prices at or above p* (or p* <= 0) give pi = 1.
"""

from __future__ import annotations

import math

from procure.errors import UserError

FAMILIES = ("power", "exp", "linear", "step")


def stay_probability(paid: float, fair: float, family: str = "power", **params: float) -> float:
    """pi(p, p*) in [0, 1] for the given family (see module doc); pi(p*, p*) = 1."""
    if math.isnan(paid) or math.isnan(fair):
        raise UserError("paid/fair: a price is NaN; fix the price that produced it")
    if family not in FAMILIES:
        raise UserError(f"participation.family: unknown '{family}'; choose one of {', '.join(FAMILIES)}")
    if fair <= 0 or paid >= fair:
        return 1.0
    r = max(paid, 0.0) / fair
    if family == "step":
        q = float(params.get("q", 0.9))
        if not 0 <= q < 1:
            raise UserError(f"participation.q: must be in [0, 1) (got {q})")
        return q
    k = float(params.get("k", 1.0))
    if k <= 0:
        raise UserError(f"participation.k: must be > 0 (got {k})")
    if family == "power":
        return r**k
    if family == "exp":
        return math.exp(-k * (1.0 - r))
    return max(0.0, 1.0 - k * (1.0 - r))
