"""Royalty (rate) contracts, seeds/004 appendix section 3 (Eqs. 21-27, Lemma 6).

Seller j sets a rate alpha_j in [0, 1); a buyer taking bundle x pays f(alpha, x) = sum_j alpha_j x_j (the
default rate function, DESIGN.md) of its realised utility and keeps (1 - f) u(x) (Eq. 21). It accepts only
f <= alpha_bar (its maximum rate, Eq. 23) and (1 - f) u(x) >= 0. Seller j earns alpha_j u(x) from each buyer
whose bundle x contains j (Eq. 24, f_j = alpha_j x_j). Exact by enumeration of bundles (n <= ROYALTY_MAX).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from procure.errors import UserError
from procure.market.buyer import subset_matrix

ROYALTY_MAX = 14


@dataclass(frozen=True)
class RateChoice:
    bundle: tuple[int, ...]
    utility: float  # u(x)
    rate: float  # f(alpha, x)
    retained: float  # (1 - f) u(x)


def _check_n(n: int) -> None:
    if n > ROYALTY_MAX:
        raise UserError(
            f"contract: royalty clearing is exact by enumeration, at most {ROYALTY_MAX} candidates (got {n}); "
            "use contract 'fairshare' or split the round"
        )


def _best(retained: np.ndarray, util: np.ndarray, ok: np.ndarray, prefer: np.ndarray | None = None) -> int:
    """Max retained; ties (1e-9 relative) to ``prefer`` (bundles with the new seller), then larger utility."""
    if not ok.any():
        return -1
    m = retained[ok].max()
    near = ok & (retained >= m - 1e-9 * max(1.0, abs(m)))
    if prefer is not None and (near & prefer).any():
        near &= prefer
    cand = np.flatnonzero(near)
    return int(cand[np.argmax(util[cand])])


def solve_royalty_buyer(utils: np.ndarray, rates: np.ndarray, max_rate: float) -> RateChoice:
    """Buyer problem Eqs. 22-23 over bundles of n items. utils: (2**n,) u of every bundle (bit k = item k)."""
    n = rates.size
    _check_n(n)
    sub = subset_matrix(n)
    f = sub @ rates
    ret = (1.0 - f) * utils
    empty = ~sub.any(axis=1)
    ok = (f <= max_rate + 1e-12) & ((ret >= -1e-12) | empty)
    s = _best(ret, utils, ok)
    return RateChoice(tuple(int(k) for k in np.flatnonzero(sub[s])), float(utils[s]), float(f[s]), float(ret[s]))


def _without_j(utils: np.ndarray, rates: np.ndarray, j: int, prior: list[int], max_rate: float):
    """Bundles within ``prior`` (mask over all 2^n), their summed rates F(x) with alpha_j set to 0, and R* =
    max(0, the buyer's best retained utility (1 - F(x)) u(x) over acceptable bundles of prior)."""
    n = rates.size
    sub = subset_matrix(n)
    in_prior = np.zeros(n, dtype=bool)
    in_prior[prior] = True
    only_prior = ~(sub[:, ~in_prior]).any(axis=1)
    r0 = rates.copy()
    r0[j] = 0.0
    f = sub @ r0
    ret = (1.0 - f) * utils
    ok = only_prior & (f <= max_rate + 1e-12) & ((ret >= -1e-12) | ~sub.any(axis=1))
    r_star = max(float(ret[ok].max()), 0.0) if ok.any() else 0.0
    return only_prior, f, r_star


def rate_candidates(utils: np.ndarray, rates: np.ndarray, j: int, prior: list[int], max_rate: float) -> np.ndarray:
    """Lemma 6 (Eq. 27) breakpoints alpha_j^x, x over bundles of ``prior`` with u(x + e_j) > 0:
    min(1 - F(x) - R*/u(x + e_j), alpha_bar - F(x)), R* = max(0, the buyer's best retained utility over prior).
    (Eq. 27 writes f_j for the left term; with other rated items in x the buyer's condition involves F(x).)"""
    only_prior, f, r_star = _without_j(utils, rates, j, prior, max_rate)
    # bundles x + e_j with x within prior
    xs = np.flatnonzero(only_prior)
    xj = xs | (1 << j)
    u_new = utils[xj]
    good = u_new > 0
    cand = np.minimum(1.0 - f[xs][good] - r_star / u_new[good], max_rate - f[xs][good])
    cand = cand[(cand >= 0) & (cand < 1.0)]
    return np.unique(cand)


def envelope_breakpoints(utils: np.ndarray, rates: np.ndarray, j: int, prior: list[int], max_rate: float) -> np.ndarray:
    """Right ends of the segments of alpha -> seller j's revenue alpha u(x*(alpha)) for one buyer (exact).

    Each bundle x + e_j (x over ``prior``) retains the line (1 - F(x) - alpha) u(x + e_j) on alpha <= alpha_bar -
    F(x). The buyer takes the upper envelope's bundle while it is >= R* (its best without j). The revenue is
    increasing on each envelope segment, so its maximum is at a segment's right end: where the line meets R*
    or its rate cap (Lemma 6's two terms) or where a flatter line (a bundle of smaller utility) overtakes it.
    Lemma 6 omits that last kind; they matter when several bundles holding D_j compete."""
    only_prior, f, thr = _without_j(utils, rates, j, prior, max_rate)
    xs = np.flatnonzero(only_prior)
    slope = utils[xs | (1 << j)]
    inter = (1.0 - f[xs]) * slope
    dom = np.minimum(max_rate - f[xs], 1.0 - f[xs])
    keep = (slope > 0) & (dom >= 0)
    slope, inter, dom = slope[keep], inter[keep], dom[keep]
    out: list[float] = []
    alpha = 0.0
    eps = 1e-12
    for _ in range(slope.size + 1):
        live = dom >= alpha - eps
        if not live.any():
            break
        val = np.where(live, inter - alpha * slope, -np.inf)
        top = val.max()
        if top < thr - 1e-12 * max(1.0, thr):
            break
        near = np.flatnonzero(val >= top - 1e-12 * max(1.0, abs(top)))
        if out:  # just after a breakpoint the flattest of the tied lines leads
            cur = int(near[np.argmin(slope[near])])
        else:  # at alpha = 0 ties go to the larger utility
            cur = int(near[np.argmax(slope[near])])
        end = min(float(dom[cur]), float((inter[cur] - thr) / slope[cur]))
        flatter = live & (slope < slope[cur] - eps)
        if flatter.any():
            cross = (inter[cur] - inter[flatter]) / (slope[cur] - slope[flatter])
            cross = cross[cross > alpha + eps]
            if cross.size:
                end = min(end, float(cross.min()))
        if end < alpha - eps:
            break
        out.append(end)
        if end <= alpha + eps and out[:-1] and abs(out[-2] - end) <= eps:
            break  # no progress
        alpha = end + eps
    cand = np.array(out)
    return np.unique(cand[(cand >= 0) & (cand < 1.0)])


def seller_revenue(
    utils_per_buyer: list[np.ndarray], rates: np.ndarray, j: int, items: list[int], alpha: float, max_rates
) -> float:
    """Seller j's revenue sum_k alpha u_k(x_k) over buyers whose optimal bundle (over ``items``, rate alpha for j,
    indifference resolved in favour of buying j) contains j."""
    n = rates.size
    sub = subset_matrix(n)
    r = rates.copy()
    r[j] = alpha
    avail = np.zeros(n, dtype=bool)
    avail[items] = True
    only = ~(sub[:, ~avail]).any(axis=1)
    f = sub @ r
    total = 0.0
    for utils, mr in zip(utils_per_buyer, max_rates):
        ret = (1.0 - f) * utils
        ok = only & (f <= mr + 1e-12) & ((ret >= -1e-12) | ~sub.any(axis=1))
        s = _best(ret, utils, ok, prefer=sub[:, j])
        if s >= 0 and sub[s, j]:
            total += alpha * float(utils[s])
    return total


def optimal_rate(
    utils_per_buyer: list[np.ndarray], rates: np.ndarray, j: int, prior: list[int], max_rates, cost: float = 0.0
) -> tuple[float, float]:
    """Seller j's optimal rate (Eq. 25) over the union of all buyers' Lemma 6 breakpoints and envelope breakpoints
    (``envelope_breakpoints``: Lemma 6 alone can miss the optimum).
    Returns (alpha*, profit); alpha* = 0 with profit -cost when no rate sells."""
    cands = set()
    for utils, mr in zip(utils_per_buyer, max_rates):
        cands.update(float(a) for a in rate_candidates(utils, rates, j, prior, mr))
        cands.update(float(a) for a in envelope_breakpoints(utils, rates, j, prior, mr))
    best = (0.0, -cost)
    items = sorted(set(prior) | {j})
    for a in sorted(cands):
        prof = seller_revenue(utils_per_buyer, rates, j, items, a, max_rates) - cost
        if prof > best[1] + 1e-12:
            best = (a, prof)
    return best
