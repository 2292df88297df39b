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


def per_dataset(values: Sequence[float] | np.ndarray, groups: Sequence[Sequence[int]]) -> np.ndarray:
    """Dataset (seller, group) values = sums of their members' values, shape ``(len(groups),)`` float64:
    ``groups[j]`` lists the ids (sample or player) of dataset ``j``; an empty one sums to 0. ``values`` may be a
    torch tensor (per-sample influence scores); nothing is checked about how the groups cover the ids."""
    if hasattr(values, "detach"):  # a torch tensor, without importing torch here
        values = values.detach().cpu().numpy()
    v = np.asarray(values, dtype=np.float64)
    return np.array([float(v[list(g)].sum()) if len(g) else 0.0 for g in groups], dtype=np.float64)


def group_totals(values: Sequence[float] | np.ndarray, groups: Groups) -> np.ndarray:
    """``sum_{z in D_t} phi(z)`` per group of the ordered partition ``groups`` (checked), shape ``(T,)``; for ADS
    these equal ``v(U_t) - v(U_{t-1})`` (Prop. 4.2), which makes them an efficiency check."""
    vals = np.asarray(values, dtype=float)
    return per_dataset(vals, validate_groups(groups, len(vals)))
