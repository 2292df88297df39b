"""The buyer's problem (seeds/004 Eq. 2) and its maximum willingness to pay (Lemma 2, Algorithm 1).

Flat rate: maximise g(x) = u(x) - x.p  subject to  x.p <= b  and  g(x) >= 0 for a non-empty x (buying nothing is
always allowed). Utilities are money; prices are money and >= 0.

Solvers (the name of the one that ran is reported):
- ``enumeration``: all 2**n bundles, vectorised (any utility; n <= ENUM_MAX). Also the test reference.
- ``branch_and_bound``: additive values under an affine mapping u = gamma * V(x) + beta (gamma >= 0). Then
  g(x) = beta + sum_{i in x} (gamma v_i - p_i), a 0/1 knapsack with real weights, solved exactly by depth-first
  branch and bound with the Dantzig (fractional) bound; hand-written because scipy's MILP would be slower on
  the hundreds of tiny instances per period and has no exact tie control.

Ties: a buyer who is indifferent buys (the convention under which the seller's supremum price, Lemma 2, is
attained), and among bundles of equal net utility it takes the one of larger utility. The branch-and-bound
solver does this in two phases: exact maximum net over items with positive gain, then the remaining budget is
filled with zero-gain items by utility (that second, subset-sum-like phase is node-limited; the net is exact
either way and the solver name says when the fill was truncated).
"""

from __future__ import annotations

import bisect
import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from procure.errors import UserError
from procure.market.mapping import Linear, check_utility

ENUM_MAX = 20  # largest n solved by enumeration of all bundles
ENUM_AUTO = 12  # below this, enumeration is faster than branch and bound in Python
TIE_FILL_NODES = 20_000
BundleUtility = Callable[[frozenset[int]], float]


@dataclass(frozen=True)
class BuyerChoice:
    bundle: tuple[int, ...]
    utility: float  # u(x)
    cost: float  # x.p
    net: float  # u(x) - x.p
    solver: str


@functools.lru_cache(maxsize=32)
def subset_matrix(n: int) -> np.ndarray:
    """(2**n, n) boolean matrix; row s holds the bits of s (bit k = item k)."""
    s = np.arange(2**n, dtype=np.int64)[:, None]
    return ((s >> np.arange(n, dtype=np.int64)) & 1).astype(bool)


def _tol(scale: float) -> float:
    return 1e-9 * max(1.0, abs(scale))


# ----------------------------------------------------------------------------------------------- knapsack
def knapsack_bb(
    gain: np.ndarray, weight: np.ndarray, capacity: float, node_limit: int | None = None
) -> tuple[float, list[int], bool]:
    """max sum gain_i x_i  s.t.  sum weight_i x_i <= capacity, x binary; gain > 0 and weight > 0 required.

    Returns (optimum, chosen indices, complete). complete is False only when node_limit stopped the search
    (the incumbent is then the best found)."""
    n = len(gain)
    if n == 0 or capacity < 0:
        return 0.0, [], True
    order = np.argsort(-gain / weight, kind="stable")
    w = [float(x) for x in gain[order]]
    c = [float(x) for x in weight[order]]
    pc = [0.0]
    pw = [0.0]
    for wi, ci in zip(w, c):
        pc.append(pc[-1] + ci)
        pw.append(pw[-1] + wi)
    eps = 1e-12 * max(1.0, pw[-1])
    best_val = -1.0
    best_set: list[int] = []
    take: list[int] = []
    nodes = 0
    complete = True
    limit = node_limit if node_limit is not None else sys.maxsize

    def bound(i: int, cap: float) -> float:
        # greedy prefix of items i.. that fits, plus the fractional next item (Dantzig)
        k = bisect.bisect_right(pc, pc[i] + cap, lo=i) - 1
        val = pw[k] - pw[i]
        if k < n:
            val += (cap - (pc[k] - pc[i])) * w[k] / c[k]
        return val

    def rec(i: int, cap: float, val: float) -> None:
        nonlocal best_val, best_set, nodes, complete
        nodes += 1
        if nodes > limit:
            complete = False
            return
        if val > best_val:
            best_val, best_set = val, list(take)
        if i == n or val + bound(i, cap) <= best_val + eps:
            return
        if c[i] <= cap:
            take.append(i)
            rec(i + 1, cap - c[i], val + w[i])
            take.pop()
        rec(i + 1, cap, val)

    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, 4 * n + 100))
    try:
        rec(0, float(capacity), 0.0)
    finally:
        sys.setrecursionlimit(old)
    return max(best_val, 0.0), sorted(int(order[i]) for i in best_set), complete


# ----------------------------------------------------------------------------------------------- helpers
def _validate(values: np.ndarray, prices: np.ndarray, budget: float) -> None:
    if np.isnan(budget) or budget < 0:
        raise UserError(f"budget: must be >= 0 (got {budget}); pass a non-negative amount of money or inf")
    if values.shape != prices.shape:
        raise UserError(f"prices: length {prices.size} differs from values length {values.size}")
    if np.any(np.isnan(values)) or np.any(np.isinf(values)):
        raise UserError("values: must be finite numbers (got NaN or inf); fix the valuation that produced them")
    if np.any(np.isnan(prices)) or np.any(prices < 0):
        raise UserError("prices: must be non-negative numbers")


def _inputs(values, prices, budget: float, mapping, items: list[int] | None) -> tuple:
    """Checked float arrays of values and prices, the mapping (default linear) and the item list (default all)."""
    values = np.asarray(values, dtype=float)
    prices = np.asarray(prices, dtype=float)
    _validate(values, prices, float(budget))
    items = list(range(values.size)) if items is None else list(items)
    return values, prices, mapping or Linear(), items


class _TableUtility:
    """u(S) for every bundle S of ``items``, by enumeration (any mapping or a bundle_utility callable)."""

    def __init__(self, values, mapping, bundle_utility, items: list[int]):
        n = len(items)
        if n > ENUM_MAX:
            field = "bundle_utility" if bundle_utility is not None else "mapping"
            raise UserError(
                f"{field}: a non-additive or non-affine utility is solved by enumeration, at most {ENUM_MAX} "
                f"candidates (got {n}); use additive values with a linear/zero-one mapping"
            )
        self.items = items
        self.sub = subset_matrix(n)
        if bundle_utility is None:
            aff = mapping.affine()
            vsum = self.sub @ values[items] if n else np.zeros(1)
            if aff is not None:
                self.u = aff[0] * vsum + aff[1]
            else:
                self.u = np.array([check_utility(mapping(float(s)), "mapping") for s in vsum])
        else:
            rows = [frozenset(int(items[k]) for k in np.flatnonzero(r)) for r in self.sub]
            self.u = np.array(
                [check_utility(mapping(check_utility(bundle_utility(s))), "mapping") for s in rows], dtype=float
            )


def _lex_best(net: np.ndarray, util: np.ndarray, ok: np.ndarray) -> int:
    """Index of the best allowed bundle: max net, ties (1e-9 relative) to the larger utility."""
    if not ok.any():
        return -1
    m = np.max(net[ok])
    near = ok & (net >= m - _tol(m))
    cand = np.flatnonzero(near)
    return int(cand[np.argmax(util[cand])])


# ----------------------------------------------------------------------------------------------- buyer
def brute_force_buyer(
    values: np.ndarray,
    prices: np.ndarray,
    budget: float,
    mapping=None,
    bundle_utility: BundleUtility | None = None,
    items: list[int] | None = None,
) -> BuyerChoice:
    """The buyer's problem by enumerating every bundle of ``items`` (default: all); the reference solver."""
    values, prices, mapping, items = _inputs(values, prices, budget, mapping, items)
    tab = _TableUtility(values, mapping, bundle_utility, items)
    cost = tab.sub @ prices[items] if items else np.zeros(1)
    net = tab.u - cost
    ok = cost <= budget + _tol(budget if np.isfinite(budget) else 0.0)
    ok &= (net >= -_tol(tab.u.max())) | (~tab.sub.any(axis=1))
    s = _lex_best(net, tab.u, ok)
    bundle = tuple(int(items[k]) for k in np.flatnonzero(tab.sub[s]))
    return BuyerChoice(bundle, float(tab.u[s]), float(cost[s]), float(net[s]), "enumeration")


def solve_buyer(
    values: np.ndarray,
    prices: np.ndarray,
    budget: float,
    mapping=None,
    bundle_utility: BundleUtility | None = None,
    items: list[int] | None = None,
    solver: str = "auto",
) -> BuyerChoice:
    """Exact solution of the flat-rate buyer problem (Eq. 2) over ``items`` (default: all candidates).

    solver: "auto" (enumeration for small n or non-affine utilities, else branch and bound),
    "enumeration" or "branch_and_bound"."""
    values, prices, mapping, items = _inputs(values, prices, budget, mapping, items)
    aff = mapping.affine() if bundle_utility is None else None
    if solver == "enumeration" or aff is None or (solver == "auto" and len(items) <= ENUM_AUTO):
        return brute_force_buyer(values, prices, budget, mapping, bundle_utility, items)
    gamma, beta = aff
    idx = np.asarray(items, dtype=int)
    util = gamma * values[idx]
    gain = util - prices[idx]
    tol = np.array([_tol(x) for x in util])
    free = (prices[idx] <= 0) & (gain > tol)
    pos = (prices[idx] > 0) & (gain > tol)
    zero = (prices[idx] > 0) & (np.abs(gain) <= tol) & (util > 0)
    chosen = list(idx[free])
    cap = float(budget)
    if np.any(pos):
        if np.isinf(cap):
            chosen += list(idx[pos])
        else:
            _, pick, _ = knapsack_bb(gain[pos], prices[idx][pos], cap)
            chosen += list(idx[pos][pick])
    base_gain = float(np.sum(gamma * values[chosen] - prices[chosen])) if chosen else 0.0
    name = "branch_and_bound"
    if base_gain + beta < -_tol(beta) and chosen:
        chosen, base_gain = [], 0.0  # no non-empty bundle has g >= 0
    elif np.any(zero) and base_gain + beta >= -_tol(beta):
        left = cap - float(np.sum(prices[chosen])) if chosen else cap
        if np.isinf(left):
            chosen += list(idx[zero])
        else:
            _, pick, complete = knapsack_bb(util[zero], prices[idx][zero], left, node_limit=TIE_FILL_NODES)
            chosen += list(idx[zero][pick])
            if not complete:
                name = "branch_and_bound(tie-fill truncated)"
    chosen = sorted(int(i) for i in chosen)
    u = gamma * float(np.sum(values[chosen])) + beta
    cost = float(np.sum(prices[chosen]))
    return BuyerChoice(tuple(chosen), u, cost, u - cost, name)


# ----------------------------------------------------------------------------------------------- MWP
def max_willingness_to_pay(
    j: int,
    values: np.ndarray,
    prices: np.ndarray,
    budget: float,
    prior: list[int],
    mapping=None,
    bundle_utility: BundleUtility | None = None,
) -> tuple[float, tuple[int, ...]]:
    """MWP of the buyer for candidate j given the priced items ``prior`` (Lemma 2, Algorithm 1).

    MWP = max_{x subset of prior, x.p <= b} min(u(x + e_j) - x.p - max(g*, 0), b - x.p), g* the buyer's optimal
    net over ``prior``. The buyer buys D_j at p_j iff p_j <= MWP (ties buy). Returns (MWP, witness x + e_j);
    MWP < 0 means no price >= 0 sells. Money units; exact (enumeration for small n, else bisection on the price
    with the exact knapsack oracle, the breakpoint then read off the witnessing bundle)."""
    values = np.asarray(values, dtype=float)
    prices = np.asarray(prices, dtype=float)
    mapping = mapping or Linear()
    prior = [i for i in prior if i != j]
    best = solve_buyer(values, prices, budget, mapping, bundle_utility, prior)
    thr = max(best.net, 0.0)
    aff = mapping.affine() if bundle_utility is None else None
    if aff is None or len(prior) <= ENUM_AUTO:
        items = prior + [j]
        tab = _TableUtility(values, mapping, bundle_utility, items)
        with_j = tab.sub[:, -1]
        cost = tab.sub[:, :-1] @ prices[prior] if prior else np.zeros(len(tab.u))
        f = np.minimum(tab.u - cost - thr, budget - cost)
        f = np.where(with_j, f, -np.inf)
        s = int(np.argmax(f))
        return float(f[s]), tuple(sorted(int(items[k]) for k in np.flatnonzero(tab.sub[s])))
    gamma, beta = aff
    a = gamma * values[j] + beta - thr
    idx = np.asarray(prior, dtype=int)
    gain = gamma * values[idx] - prices[idx]
    pos = (gain > 0) & (prices[idx] > 0)
    free = (gain > 0) & (prices[idx] <= 0)
    a += float(np.sum(gain[free]))
    base = list(idx[free])
    if np.isinf(budget):
        tot = a + float(np.sum(gain[pos]))
        return tot, tuple(sorted(base + list(idx[pos]) + [j]))
    g_pos, w_pos, i_pos = gain[pos], prices[idx][pos], idx[pos]

    def f_of(pick: list[int]) -> float:
        return min(a + float(np.sum(g_pos[pick])), budget - float(np.sum(w_pos[pick])))

    lo_pick: list[int] = []
    lo = f_of(lo_pick)
    hi = min(a + float(np.sum(g_pos)), float(budget))
    for _ in range(200):
        if hi - lo <= 1e-13 * max(1.0, abs(hi)):
            break
        q = 0.5 * (lo + hi)
        k, pick, _ = knapsack_bb(g_pos, w_pos, budget - q)
        if budget - q >= 0 and a + k >= q:
            lo_pick, lo = pick, max(lo, f_of(pick))
        else:
            hi = q
    return lo, tuple(sorted(base + [int(i_pos[k]) for k in lo_pick] + [j]))


def will_buy(
    j: int,
    p_j: float,
    values: np.ndarray,
    prices: np.ndarray,
    budget: float,
    prior: list[int],
    mapping=None,
    bundle_utility: BundleUtility | None = None,
) -> bool:
    """Algorithm 1: does the buyer switch to a bundle holding D_j at price p_j? (some x over ``prior`` with
    g(x + e_j) >= g* and x.p + p_j <= b; ties buy), i.e. p_j <= MWP."""
    mwp, _ = max_willingness_to_pay(j, values, prices, budget, prior, mapping, bundle_utility)
    return bool(p_j <= mwp + _tol(mwp))
