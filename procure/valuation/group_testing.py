"""Group-testing Shapley estimation (seeds/002 Jia et al. AISTATS 2019, Section 4.2, Algorithm 1) and the
sample-count formulas of that paper (permutation sampling in l2, group testing, Theorem 3).

The estimator draws ``T`` "tests": a size ``k ~ q(k) = (1/Z)(1/k + 1/(N-k))`` (``k = 1..N-1``,
``Z = 2 H_{N-1}``) and then an *exact-size* uniform random ``k``-subset ``S_t`` (without replacement; the seed's
"length-k sequence" is an extraction artifact, notes/002 section 1.2). With ``beta_{t,i} = 1[i in S_t]``::

    Delta_ij = (Z / T) * sum_t (u_t - v(∅)) * (beta_{t,i} - beta_{t,j})          # estimates s_i - s_j (Lemma 1, Eq. 4)

is unbiased for the Shapley difference ``s_i - s_j``: ``q(k) / C(N, k) = 1 / (Z (N-1) C(N-2, k-1))`` turns
``Z E[u (beta_i - beta_j)]`` into the right-hand side of Eq. 4. Subtracting the constant ``v(∅)`` keeps it
unbiased (``E[beta_i - beta_j] = 0``) and lowers the variance when ``v(∅) != 0``; the paper assumes ``v(∅) = 0``.

Values then solve the feasibility problem of Lemma 2 (Eqs. 5-6)::

    sum_i s_i = v(N) - v(∅),     |(s_i - s_j) - Delta_ij| <= eps / (2 sqrt(N))   for all i < j

as a linear program (zero objective) with scipy's HiGHS. Note that the estimated ``Delta_ij = (Z/T)(a_i - a_j)``
with ``a = beta^T u`` is *exactly* a difference of per-player scores, so this LP is feasible for every tolerance
and the closed form below is always one of its solutions (the LP matters only for differences that come from
elsewhere; it is kept because the paper specifies it). If it is infeasible, the least-squares solution
``min sum_{i<j} (s_i - s_j - Delta_ij)^2`` subject to the same sum is used;
its closed form is ``s_i = (v(N) - v(∅))/N + (1/N) sum_j Delta_ij`` (notes/002, not in the paper).
``solver="lstsq"`` asks for it directly (one pass, no LP; it equals the true values when ``Delta`` is exact).

Ambiguities decided here (notes/002 section 1.2):
- utilities are *not* assumed to have ``v(∅) = 0``: values sum to ``v(N) - v(∅)`` (shared/DESIGN.md), and the
  tests use ``u_t - v(∅)`` (see above);
- the sample-count bound: :func:`gt_num_tests` implements Theorem 3 as printed (``variant="paper"``) and, for
  comparison, pyDVL's factor-2 variant and the authors' code (``"pydvl"``, ``"code"``);
- the paper's ``O(sqrt(N) (log N)^2)`` complexity claim is wrong (``1/h(u) ~ 2/u^2`` for small ``u``): the bound
  grows like ``N polylog N``; nothing here relies on the claim.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linprog
from tqdm.auto import tqdm

from procure.valuation.games import Utility, cached
from procure.valuation.sampling import num_permutations

# ---------------------------------------------------------------------------------------------------------------
# Sample-count formulas


#: the permutation-sampling budget for an (eps, delta)-approximation in l2 (seeds/002 Section 4.1, Maleki et al.),
#: ``ceil((2 r^2 N / eps^2) log(2 N / delta))``, kept next to :func:`gt_num_tests` for comparison; it is
#: :func:`procure.valuation.sampling.num_permutations` (golden, notes/002: ``N = 10``, ``eps = delta = 0.1``,
#: ``r = 1`` gives 10,597)
num_permutations_l2 = num_permutations


def gt_constants(n: int) -> tuple[float, np.ndarray]:
    """``(Z, q)`` of Algorithm 1: ``Z = 2 sum_{k=1}^{N-1} 1/k`` and ``q[k-1] = (1/Z)(1/k + 1/(N-k))`` for
    ``k = 1..N-1`` (a probability vector, symmetric: ``q(k) = q(N-k)``). Needs ``N >= 2``."""
    if n < 2:
        raise ValueError(f"group testing needs at least 2 players, got {n}")
    k = np.arange(1, n, dtype=float)
    z = 2.0 * float(np.sum(1.0 / k))
    return z, (1.0 / k + 1.0 / (n - k)) / z


def gt_q_tot(n: int) -> float:
    """``q_tot = ((N-2)/N) q(1) + sum_{k=2}^{N-1} q(k) [1 + 2k(k-N)/(N(N-1))]`` (Theorem 3); it is
    ``P(beta_i = beta_j)``-like and enters the variance of one test. Golden: ``N = 10`` gives 0.646514."""
    _, q = gt_constants(n)
    k = np.arange(2, n, dtype=float)
    return float((n - 2) / n * q[0] + np.sum(q[1:] * (1.0 + 2.0 * k * (k - n) / (n * (n - 1.0)))))


def _bennett_h(u: float) -> float:
    return (1.0 + u) * math.log1p(u) - u


def gt_num_tests(eps: float, delta: float, n: int, r: float, variant: str = "paper") -> int:
    """Number of tests ``T`` for which Algorithm 1 is an (eps, delta)-approximation in l2 (Theorem 3).

    ``variant="paper"`` (Theorem 3 as printed)::

        T >= 8 log(N(N-1)/(2 delta)) / [(1 - q_tot^2) h(eps / (Z r sqrt(N) (1 - q_tot^2)))],  h(u) = (1+u)log(1+u) - u

    ``"pydvl"``: pyDVL's ``num_samples_eps_delta`` (argument ``2 eps / (sqrt(N) Z r (1 - q_tot^2))``);
    ``"code"``: the authors' code, ``4 / (1 - q_tot^2) / h(2 eps / (Z r (1 - q_tot^2))) log(N(N-1)/(2 delta))``.
    Golden (paper variant, ``eps = delta = 0.1``, ``r = 1``): ``N = 10`` -> 1.8270e6, ``N = 100`` -> 6.4778e7.
    """
    _check_eps_delta(eps, delta, n, r)
    z, _ = gt_constants(n)
    qt = gt_q_tot(n)
    c = 1.0 - qt * qt
    log_term = math.log(n * (n - 1) / (2.0 * delta))
    if variant == "paper":
        return math.ceil(8.0 * log_term / (c * _bennett_h(eps / (z * r * math.sqrt(n) * c))))
    if variant == "pydvl":
        return math.ceil(8.0 * log_term / (c * _bennett_h(2.0 * eps / (math.sqrt(n) * z * r * c))))
    if variant == "code":
        return math.ceil(4.0 / c / _bennett_h(2.0 * eps / (z * r * c)) * log_term)
    raise ValueError(f"gt_num_tests: variant must be 'paper', 'pydvl' or 'code', got {variant!r}")


def _check_eps_delta(eps: float, delta: float, n: int, r: float) -> None:
    if not (eps > 0 and 0 < delta < 1 and n >= 1 and r > 0):
        raise ValueError("need eps > 0, 0 < delta < 1, n >= 1, r > 0")


# ---------------------------------------------------------------------------------------------------------------
# Estimator


@dataclass
class GTResult:
    """Output of :func:`group_testing_shapley`. ``values`` (n,) in utility units, summing to ``v(N) - v(∅)``;
    ``differences[i, j]`` = the estimate ``Delta_ij`` of ``s_i - s_j`` (antisymmetric); ``solver`` = what
    produced ``values`` (``"lp"`` or ``"lstsq"``; ``"lstsq"`` after an infeasible LP); ``tolerance`` = the
    pairwise tolerance ``eps / (2 sqrt N)`` of the LP (NaN for lstsq); ``n_calls`` distinct utility calls."""

    values: np.ndarray
    differences: np.ndarray
    n_tests: int
    n_calls: int
    solver: str
    tolerance: float
    elapsed: float


def sample_tests(n: int, n_tests: int, rng: np.random.Generator) -> np.ndarray:
    """``(T, N)`` boolean inclusion matrix ``beta``: row ``t`` is a uniform random subset of exact size
    ``k_t ~ q`` (Algorithm 1, lines 4-6)."""
    _, q = gt_constants(n)
    sizes = rng.choice(np.arange(1, n), size=n_tests, p=q)
    # a uniform k-subset = the k smallest of N iid uniform keys (one vectorised draw for all tests)
    ranks = np.argsort(np.argsort(rng.random((n_tests, n)), axis=1), axis=1)
    return ranks < sizes[:, None]


def pair_differences(beta: np.ndarray, u: np.ndarray, z: float) -> np.ndarray:
    """``Delta_ij = (Z/T) sum_t u_t (beta_ti - beta_tj)`` for all pairs at once: ``(Z/T)(a_i - a_j)`` with
    ``a = beta^T u`` (O(T N) instead of O(T N^2))."""
    a = beta.T.astype(float) @ np.asarray(u, dtype=float) * (z / len(u))
    return a[:, None] - a[None, :]


def solve_lstsq(differences: np.ndarray, total: float) -> np.ndarray:
    """Closed-form minimiser of ``sum_{i<j} (s_i - s_j - Delta_ij)^2`` s.t. ``sum s = total`` (antisymmetric
    ``Delta``): ``s_i = total/N + (1/N) sum_j Delta_ij``."""
    n = differences.shape[0]
    return total / n + differences.sum(axis=1) / n


def solve_feasibility(differences: np.ndarray, total: float, tol: float) -> np.ndarray | None:
    """Any ``s`` with ``sum s = total`` and ``|s_i - s_j - Delta_ij| <= tol`` for all ``i < j`` (Lemma 2 / Eq. 6),
    by a zero-objective LP (scipy HiGHS); ``None`` if infeasible."""
    n = differences.shape[0]
    ii, jj = np.triu_indices(n, 1)
    m = len(ii)
    rows = np.repeat(np.arange(m), 2)
    cols = np.stack([ii, jj], axis=1).ravel()
    data = np.tile([1.0, -1.0], m)
    from scipy.sparse import coo_matrix, vstack

    d = coo_matrix((data, (rows, cols)), shape=(m, n))
    a_ub = vstack([d, -d]).tocsr()
    dij = differences[ii, jj]
    b_ub = np.concatenate([dij + tol, -dij + tol])
    res = linprog(
        np.zeros(n),
        A_ub=a_ub,
        b_ub=b_ub,
        A_eq=np.ones((1, n)),
        b_eq=[total],
        bounds=[(None, None)] * n,
        method="highs",
    )
    return res.x if res.status == 0 else None


def group_testing_shapley(
    utility: Utility,
    n: int,
    n_tests: int,
    seed: int | np.random.Generator = 0,
    *,
    eps: float | None = None,
    solver: str = "lp",
    progress: bool = False,
) -> GTResult:
    """Group-testing Shapley values (seeds/002 Algorithm 1), shape ``(n,)``, summing to ``v(N) - v(∅)``.

    ``n_tests`` = ``T`` utility evaluations of random subsets (use :func:`gt_num_tests` for the (eps, delta)
    guarantee; it is large). ``eps`` = the l2 target of Lemma 2: the LP asks ``|s_i - s_j - Delta_ij| <=
    eps/(2 sqrt N)``; ``None`` means "as tight as the data allow": the tolerance is set to the smallest value
    for which the least-squares solution is feasible (``max |s_i - s_j - Delta_ij|`` at the lstsq point), so
    the LP always has a solution. ``solver="lstsq"`` skips the LP. Utility calls are memoised.
    """
    if solver not in ("lp", "lstsq"):
        raise ValueError(f"group_testing_shapley: solver must be 'lp' or 'lstsq', got {solver!r}")
    if n_tests < 1:
        raise ValueError("group_testing_shapley: n_tests must be >= 1")
    t0 = time.perf_counter()
    v = cached(utility)
    calls0 = v.calls
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    z, _ = gt_constants(n)
    empty = v(frozenset())
    total = v(frozenset(range(n))) - empty
    beta = sample_tests(n, n_tests, rng)
    u = np.empty(n_tests)
    for t in tqdm(range(n_tests), desc="group tests", disable=not progress, leave=False):
        u[t] = v(frozenset(np.flatnonzero(beta[t]).tolist())) - empty
    diffs = pair_differences(beta, u, z)
    ls = solve_lstsq(diffs, total)
    values, used, tol = ls, "lstsq", float("nan")
    if solver == "lp" and n >= 2:
        if eps is None:
            tol = float(np.max(np.abs(ls[:, None] - ls[None, :] - diffs))) * (1 + 1e-9) + 1e-12
        else:
            tol = eps / (2.0 * math.sqrt(n))
        sol = solve_feasibility(diffs, total, tol)
        if sol is not None:
            values, used = sol, "lp"
    return GTResult(
        values=np.asarray(values, dtype=float),
        differences=diffs,
        n_tests=n_tests,
        n_calls=v.calls - calls0,
        solver=used,
        tolerance=tol if used == "lp" else float("nan"),
        elapsed=time.perf_counter() - t0,
    )
