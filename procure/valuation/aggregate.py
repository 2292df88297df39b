"""From source values to contributor values (seeds/000 Remark 3.1, Alg. 1 line 15, Alg. 2 line 14)."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence

import numpy as np

from procure.valuation.games import Groups, validate_groups


def aggregate(values: Sequence[float] | np.ndarray, owners: Sequence[Hashable]) -> dict[Hashable, float]:
    """Contributor value = sum of the values of the sources it owns: ``Phi_i = sum_{z: owner(z) = i} phi(z)``
    (Remark 3.1). Every submission in every round is a distinct source, so summing a contributor's per-round
    values is this sum. Keys keep the order of first appearance; the totals sum to ``sum(values)``."""
    vals = np.asarray(values, dtype=float)
    if len(vals) != len(owners):
        raise ValueError(f"aggregate: {len(vals)} values but {len(owners)} owners")
    out: dict[Hashable, float] = {}
    for v, o in zip(vals.tolist(), owners):
        out[o] = out.get(o, 0.0) + v
    return out


def sum_rounds(per_round: Iterable[Mapping[Hashable, float]]) -> dict[Hashable, float]:
    """Contributor totals over rounds, ``Phi_i = sum_{t in T_i} phi_t(z_{t,i})``, from one mapping
    contributor -> value per round (a contributor absent from a round contributes nothing there)."""
    out: dict[Hashable, float] = {}
    for rnd in per_round:
        for who, v in rnd.items():
            out[who] = out.get(who, 0.0) + float(v)
    return out


def group_totals(values: Sequence[float] | np.ndarray, groups: Groups) -> np.ndarray:
    """``sum_{z in D_t} phi(z)`` per group, shape ``(T,)``; for ADS these equal ``v(U_t) - v(U_{t-1})``
    (Prop. 4.2), which makes them an efficiency check."""
    vals = np.asarray(values, dtype=float)
    return np.array([vals[g].sum() for g in validate_groups(groups, len(vals))])
