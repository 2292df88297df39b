"""Exact Asymmetric Data Shapley (ADS) by subset enumeration, and exact Data Shapley as its one-group case."""

from __future__ import annotations

import numpy as np
from scipy.special import comb
from tqdm.auto import tqdm

from procure.errors import UserError
from procure.valuation.games import Groups, Utility, cached, validate_groups

MAX_EXACT_GROUP = 20


def shapley_weights(m: int) -> np.ndarray:
    """``w[s] = 1 / (m * C(m-1, s))`` for ``s = 0..m-1``: the weight of a subset of size ``s`` of the other
    ``m-1`` players in the Shapley subset form (seeds/000 Eq. 2 / Eq. 9). They satisfy
    ``sum_s C(m-1, s) w[s] = 1``."""
    s = np.arange(m)
    return 1.0 / (m * comb(m - 1, s))


def _popcount(masks: np.ndarray) -> np.ndarray:
    return np.array([int(x).bit_count() for x in masks], dtype=np.int64)


def exact_ads(
    utility: Utility,
    groups: Groups,
    *,
    max_group_size: int = MAX_EXACT_GROUP,
    progress: bool = False,
) -> np.ndarray:
    """Exact ADS values ``phi^sigma`` of all players, shape ``(n,)`` (seeds/000 Prop. 4.1, Eq. 9).

    For ``z`` in group ``D_t`` with earlier union ``U_{t-1} = D_1 ∪ ... ∪ D_{t-1}`` and ``m = |D_t|``::

        phi(z) = (1/m) * sum_{S ⊆ D_t \\ {z}} C(m-1, |S|)^{-1} * [v(U_{t-1} ∪ S ∪ {z}) - v(U_{t-1} ∪ S)]

    in the utility's units (e.g. accuracy, 1 = 100 points). Higher = more valuable. With one group this is
    Data Shapley (Eq. 2); in sequential use pass one group and a utility whose ``v(∅)`` is the current state,
    which gives the state-conditioned value of Eq. 10. Group efficiency holds to float precision:
    ``sum_{z in D_t} phi(z) = v(U_t) - v(U_{t-1})`` (Prop. 4.2).

    The utility is memoised: every coalition ``U_{t-1} ∪ S`` (``S ⊆ D_t``) is evaluated exactly once, so a
    valuation costs ``sum_t 2**|D_t| - (T - 1)`` calls (``U_t`` is shared by groups ``t`` and ``t+1``). Pass a
    :class:`~procure.valuation.games.CachedUtility` to share or inspect the cache (``.calls``). Groups larger
    than ``max_group_size`` raise ``UserError`` (use :func:`~procure.valuation.montecarlo.mc_ads`).
    """
    gs = validate_groups(groups)
    n = sum(len(g) for g in gs)
    big = max(len(g) for g in gs)
    if big > max_group_size:
        raise UserError(
            f"exact ADS: a group has {big} players (2^{big} coalitions, limit max_group_size={max_group_size}); "
            "use mc_ads or smaller groups"
        )
    v = cached(utility)
    phi = np.zeros(n)
    prefix: frozenset[int] = frozenset()
    prefix_mask = 0
    total = sum(1 << len(g) for g in gs)
    bar = tqdm(total=total, desc="exact ADS coalitions", disable=not progress, leave=False)
    for g in gs:
        m = len(g)
        n_sub = 1 << m
        vals = np.empty(n_sub)
        sets: list[frozenset[int]] = [prefix] * n_sub
        gmask = [0] * n_sub
        for local in range(n_sub):
            if local:
                low = local & -local
                j = low.bit_length() - 1
                rest = local ^ low
                sets[local] = sets[rest] | {g[j]}
                gmask[local] = gmask[rest] | (1 << g[j])
            vals[local] = v.value(prefix_mask | gmask[local], sets[local])
            bar.update()
        masks = np.arange(n_sub)
        size = _popcount(masks)
        w = shapley_weights(m)
        for j, z in enumerate(g):
            bit = 1 << j
            without = masks[(masks & bit) == 0]
            phi[z] = float(np.sum(w[size[without]] * (vals[without | bit] - vals[without])))
        prefix = sets[-1]
        prefix_mask |= gmask[-1]
    bar.close()
    return phi


def exact_shapley(utility: Utility, n: int, **kwargs) -> np.ndarray:
    """Exact Data Shapley values ``(n,)`` (seeds/000 Eq. 2): :func:`exact_ads` with the single group ``0..n-1``."""
    return exact_ads(utility, [list(range(n))], **kwargs)
