"""Shapley-fair payoff flows and budget-constrained model rewards (seeds/003; notes/003_payoff_model_rewards.md).

Parties 0..n-1; ``values`` is the coalition value table v(C) (money, nu = 1) of length 2**n, index = bitmask
(bit k = party k). Values are taken relative to v(empty) (the paper assumes v(empty) = 0); model rewards are
reported back in the table's units.

- Shapley phi_i (App. A, Eq. 12); Mechanism A payoffs p_i = n phi_i - v(N) (Lemma 3.1, Eq. 1).
- Conditional Shapley phi_{j|i} (Lemma 3.7, Eq. 5): the flow paid by i to j (row = payer); fair cost
  sum_j phi_{j|i} = v(N) - v(i) (Eq. 4); decomposition n phi_i = v(i) + sum_j phi_{i|j} (Eq. 6).
- Budgets (section 4, LP (P) of Lemma 4.1, HiGHS): maximise sum_i lam_i c_i, c_i = sum_j phi_{j|i}, subject to
  lam_i c_i - sum_k lam_k phi_{i|k} <= b_i and 0 <= lam_i <= 1; cross-checked by the authors' fixed-point
  iteration. Flows lam_i phi_{j|i} (Eq. 11); model reward v(i) + lam_i (v(N) - v(i)) (Eq. 10).
- Optional desired performance r_i (App. I, LP (Q), Eq. 61): lam_i <= (max(v(i), r_i) - v(i)) / c_i.
- rho-Shapley baseline (Sim et al. 2020): r_i = (phi_i / max_k phi_k)^rho v(N).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linprog

from procure.errors import UserError

MAX_PARTIES = 20


def _popcount(n: int) -> np.ndarray:
    masks = np.arange(2**n, dtype=np.int64)
    return np.array([bin(int(m)).count("1") for m in masks], dtype=np.int64)


def n_parties(values: np.ndarray) -> int:
    """n for a table of length 2**n; UserError otherwise."""
    size = int(np.asarray(values).size)
    n = size.bit_length() - 1
    if size < 2 or 2**n != size:
        raise UserError(
            f"values: length {size} is not a power of two >= 2; give v(C) for all 2**n coalitions (bit k = party k)"
        )
    if n > MAX_PARTIES:
        raise UserError(f"values: {n} parties is too many for exact allocation (at most {MAX_PARTIES})")
    return n


def shapley(values: np.ndarray) -> np.ndarray:
    """phi_i = sum_{C not containing i} |C|! (n-1-|C|)! / n! (v(C + i) - v(C)) (Eq. 12)."""
    v = np.asarray(values, dtype=float)
    n = n_parties(v)
    size = _popcount(n)
    w = np.array([math.factorial(s) * math.factorial(n - 1 - s) / math.factorial(n) for s in range(n)])
    masks = np.arange(2**n)
    out = np.zeros(n)
    for i in range(n):
        c = masks[(masks >> i) & 1 == 0]
        out[i] = np.sum(w[size[c]] * (v[c | (1 << i)] - v[c]))
    return out


def conditional_shapley(values: np.ndarray) -> np.ndarray:
    """F[i, j] = phi_{j|i} = 1/(n-1) sum_{C subset N \\ {i,j}} C(n-2, |C|)^-1 (v(C+i+j) - v(C+i)) (Eq. 5);
    F[i,i] = 0."""
    v = np.asarray(values, dtype=float)
    n = n_parties(v)
    F = np.zeros((n, n))
    if n == 1:
        return F
    size = _popcount(n)
    w = np.array([math.factorial(s) * math.factorial(n - 2 - s) / math.factorial(n - 1) for s in range(n - 1)])
    masks = np.arange(2**n)
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            c = masks[((masks >> i) & 1 == 0) & ((masks >> j) & 1 == 0)]
            ci = c | (1 << i)
            F[i, j] = np.sum(w[size[c]] * (v[ci | (1 << j)] - v[ci]))
    return F


def monotone_violations(values: np.ndarray, tol: float = 1e-12) -> int:
    """Number of pairs (C, C + i) with v(C + i) < v(C) - tol."""
    v = np.asarray(values, dtype=float)
    n = n_parties(v)
    masks = np.arange(2**n)
    count = 0
    for i in range(n):
        c = masks[(masks >> i) & 1 == 0]
        count += int(np.count_nonzero(v[c | (1 << i)] < v[c] - tol))
    return count


def monotone_closure(values: np.ndarray) -> np.ndarray:
    """v_hat(C) = max_{C' subset C} v(C') (the smallest monotone table above v)."""
    v = np.array(values, dtype=float)
    n = n_parties(v)
    for i in range(n):  # a subset-max transform, one bit at a time
        m = np.arange(2**n)
        hi = m[(m >> i) & 1 == 1]
        v[hi] = np.maximum(v[hi], v[hi ^ (1 << i)])
    return v


def generalised_payoffs(phi: np.ndarray, v_n: float, alpha: float, beta: float) -> np.ndarray:
    """Remark 3.6: p_i = alpha phi_i + (beta - alpha v(N)) / n. (1, v(N)) = Shapley;
    (n, 0) = Eq. 1; alpha = 0: equal split."""
    phi = np.asarray(phi, dtype=float)
    return alpha * phi + (beta - alpha * v_n) / phi.size


def rho_shapley(phi: np.ndarray, v_n: float, rho: float) -> np.ndarray:
    """rho-Shapley model rewards (Sim et al. 2020): (phi_i / max_k phi_k)^rho v(N), rho in [0, 1]; no money moves."""
    if not 0 <= rho <= 1:
        raise UserError(f"rho: must be in [0, 1] (got {rho})")
    phi = np.clip(np.asarray(phi, dtype=float), 0.0, None)
    top = phi.max()
    if top <= 0:
        return np.zeros_like(phi)
    return (phi / top) ** rho * v_n


def _bounds(n: int, cost: np.ndarray, v_single: np.ndarray, caps: np.ndarray | None) -> np.ndarray:
    ub = np.ones(n)
    if caps is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            lim = (np.maximum(v_single, caps) - v_single) / cost
        ub = np.where(cost > 0, np.clip(np.minimum(ub, lim), 0.0, 1.0), 1.0)
    return ub


def solve_lp(F: np.ndarray, budgets: np.ndarray, ub: np.ndarray) -> np.ndarray:
    """LP (P)/(Q) with scipy HiGHS; parties with zero cost get lam = 1 (they do not enter the LP)."""
    n = F.shape[0]
    cost = F.sum(axis=1)
    # -p_i(lam) = lam_i c_i - sum_k lam_k F[k, i]  <= b_i
    A = np.diag(cost) - F.T
    finite = np.isfinite(budgets)
    res = linprog(
        -cost,
        A_ub=A[finite] if finite.any() else None,
        b_ub=budgets[finite] if finite.any() else None,
        bounds=list(zip(np.zeros(n), ub)),
        method="highs",
    )
    if res.status != 0:  # cannot happen for b >= 0 (lam = 0 is feasible); keep the message useful anyway
        raise RuntimeError(f"HiGHS failed on the budget LP: {res.message}")
    lam = np.clip(res.x, 0.0, ub)
    lam[cost <= 0] = ub[cost <= 0]
    return lam


def fixed_point(F: np.ndarray, budgets: np.ndarray, ub: np.ndarray, tol: float = 1e-12, order=None) -> np.ndarray:
    """The authors' iteration: start at the upper bound; while some i pays more than b_i, set
    lam_i = (revenue_i + b_i) / cost_i; lam decreases monotonically to the LP optimum (Lemma G.3).
    ``order``: the sequence in which violating parties are rescaled (result does not depend on it)."""
    n = F.shape[0]
    cost = F.sum(axis=1)
    lam = ub.copy()
    seq = list(range(n)) if order is None else list(order)
    for _ in range(100_000):
        changed = False
        for i in seq:
            if cost[i] <= 0 or not np.isfinite(budgets[i]):
                continue
            rev = float(lam @ F[:, i])
            if lam[i] * cost[i] - rev > budgets[i] + tol:
                lam[i] = max(0.0, (rev + budgets[i]) / cost[i])
                changed = True
        if not changed:
            return lam
    warnings.warn("fixed-point iteration did not converge in 100000 sweeps", RuntimeWarning, stacklevel=2)
    return lam


@dataclass(frozen=True)
class Allocation:
    """Payoff-flow allocation (seeds/003). Money units of the value table; arrays indexed by party."""

    shapley: np.ndarray  # phi (n,)
    conditional: np.ndarray  # F (n, n), F[i, j] = phi_{j|i}, row = payer
    flows: np.ndarray  # lam_i F[i, j] (Eq. 11), row = payer
    lam: np.ndarray  # lam* from the LP
    lam_iteration: np.ndarray  # lam from the fixed-point iteration (cross-check)
    payoffs: np.ndarray  # revenue - cost (negative = pays)
    revenue: np.ndarray
    cost: np.ndarray
    model_rewards: np.ndarray  # v'_i(N) = v(i) + lam_i (v(N) - v(i)) in table units
    unconstrained_payoffs: np.ndarray  # Mechanism A: n phi - v(N)
    v_single: np.ndarray  # v(i) in table units
    v_all: float  # v(N) in table units
    budgets: np.ndarray
    monotone_violations: int
    monotone: str
    notes: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return self.shapley.size

    def to_dict(self) -> dict:
        out = {}
        for k, val in self.__dict__.items():
            if isinstance(val, np.ndarray):
                out[k] = np.where(np.isinf(val), None, val).tolist() if k == "budgets" else val.tolist()
            else:
                out[k] = val
        return out


def allocate(
    values,
    budgets,
    *,
    caps=None,
    monotone: str = "warn",
) -> Allocation:
    """Budget-constrained Shapley-fair payoff flows and model rewards (see module doc).

    values: 2**n coalition values (bit k = party k); budgets: scalar or (n,), >= 0, inf = unconstrained;
    caps: desired model value r_i per party (inf/None = none; App. I); monotone: what to do with a non-monotone
    table: "warn" (allocate as is, warn), "closure" (use max over sub-coalitions), "clip" (clip negative flows)."""
    v = np.asarray(values, dtype=float).reshape(-1)
    n = n_parties(v)
    if not np.all(np.isfinite(v)):
        raise UserError("values: coalition values must be finite numbers (got NaN or inf)")
    b = np.broadcast_to(np.asarray(budgets, dtype=float), (n,)).copy() if np.ndim(budgets) == 0 else None
    if b is None:
        b = np.asarray(budgets, dtype=float).reshape(-1)
        if b.size != n:
            raise UserError(f"budgets: need {n} numbers (one per party) or one for all, got {b.size}")
    if np.any(np.isnan(b)) or np.any(b < 0):
        raise UserError("budgets: must be >= 0 (inf allowed for an unconstrained party)")
    if monotone not in ("warn", "closure", "clip"):
        raise UserError(f"monotone: unknown '{monotone}'; choose warn, closure or clip")
    r = None
    if caps is not None:
        r = np.asarray(caps, dtype=float).reshape(-1)
        if r.size not in (1, n):
            raise UserError(f"caps: need {n} numbers (one per party) or one for all, got {r.size}")
        r = np.broadcast_to(r, (n,)).astype(float)
        if np.any(np.isnan(r)):
            raise UserError("caps: must be numbers (inf = no cap)")
    v0 = v[0]
    rel = v - v0
    bad = monotone_violations(rel)
    notes: list[str] = []
    if bad:
        msg = f"value table is not monotone ({bad} violations); flows may be negative"
        if monotone == "closure":
            rel = monotone_closure(rel)
            msg += "; using the monotone closure"
        elif monotone == "clip":
            msg += "; negative flows clipped to 0"
        warnings.warn(msg, UserWarning, stacklevel=2)
        notes.append(msg)
    phi = shapley(rel)
    F = conditional_shapley(rel)
    if monotone == "clip":
        F = np.clip(F, 0.0, None)
    single = rel[1 << np.arange(n)]
    v_all = rel[-1]
    cost0 = F.sum(axis=1)
    ub = _bounds(n, cost0, single, None if r is None else r - v0)
    lam = solve_lp(F, b, ub)
    lam_it = fixed_point(F, b, ub)
    if np.max(np.abs(lam - lam_it)) > 1e-6:
        notes.append(f"LP and fixed-point iteration differ by {np.max(np.abs(lam - lam_it)):.2e}")
    flows = lam[:, None] * F
    cost = flows.sum(axis=1)
    revenue = flows.sum(axis=0)
    rewards = single + lam * (v_all - single) + v0
    return Allocation(
        shapley=phi,
        conditional=F,
        flows=flows,
        lam=lam,
        lam_iteration=lam_it,
        payoffs=revenue - cost,
        revenue=revenue,
        cost=cost,
        model_rewards=rewards,
        unconstrained_payoffs=n * phi - v_all,
        v_single=single + v0,
        v_all=float(v_all + v0),
        budgets=b,
        monotone_violations=bad,
        monotone=monotone,
        notes=notes,
    )
