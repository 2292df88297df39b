"""Compressive permutation sampling (seeds/002 Jia et al. AISTATS 2019, Section 4.3, Algorithm 2) and its
sample-count formulas (Theorem 4).

Data values concentrate around their mean, so the *deviation* ``s - s_bar 1`` (``s_bar = (v(N) - v(∅))/N``)
is approximately sparse. Algorithm 2 measures it through a random Bernoulli matrix ``A`` (``M x N``, entries
``+-1/sqrt(M)``): for ``T`` uniform permutations ``pi_t`` with marginal vectors ``phi^t``
(``phi^t_i = v(P_i ∪ {i}) - v(P_i)``)::

    y_bar_m = (1/T) sum_t sum_i A_mi phi^t_i                (M numbers instead of N)
    Delta_s* = argmin ||Delta_s||_1  s.t.  ||A (s_bar 1 + Delta_s) - y_bar||_2 <= eps        (Eq. 9, noisy)
    s_hat = s_bar 1 + Delta_s*

Decisions (notes/002 section 1.3), all documented deviations:
- The l2 ball is replaced by a per-measurement box ``|(A s)_m - y_bar_m| <= tol_m`` so that the problem stays a
  linear program for scipy's HiGHS (scipy has no SOCP solver and cvxpy is not a dependency). With
  ``tol_m = eps / sqrt(M)`` every feasible point of the box is feasible for the paper's l2 ball, so the
  recovery guarantee of Theorem 4 is not weakened by the box; ``eps=None`` (default) uses
  ``tol_m = z * stderr(y_bar_m)`` (``z = 2``, the standard error over the ``T`` permutations), i.e. the
  noise level actually observed. ``eps = 0`` is exact basis pursuit ``A s = y_bar``.
- ``efficient=True`` (default) adds ``sum_i Delta_s_i = 0`` so that ``sum s_hat = v(N) - v(∅)`` like every
  other Shapley estimator here; the paper's ``s_hat`` is not efficient (``efficient=False`` reproduces it).
- ``v(∅)`` need not be 0; values sum to ``v(N) - v(∅)``.
- Cost: ``T`` permutations of ``N + 1`` prefix evaluations each (memoised), as in Algorithm 2; the sample-count
  functions below are Theorem 4's (its constant ``C'`` is unknown; 1 by default).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linprog
from scipy.sparse import csr_matrix, hstack, vstack
from tqdm.auto import tqdm

from procure.valuation.games import Utility, cached
from procure.valuation.montecarlo import prefix_marginals


def cs_num_measurements(k: int, n: int, delta: float, c: float = 1.0) -> int:
    """Theorem 4: ``M >= C' (K log(N / (2K)) + log(2 / delta))`` measurements recover a ``K``-sparse deviation
    (``C'`` is an unspecified constant, ``c`` here). Returns ``max(1, ceil(...))``."""
    if not (1 <= k <= n and 0 < delta < 1 and c > 0):
        raise ValueError("cs_num_measurements: need 1 <= k <= n, 0 < delta < 1, c > 0")
    return max(1, math.ceil(c * (k * math.log(max(n / (2.0 * k), 1.0)) + math.log(2.0 / delta))))


def cs_num_permutations(eps: float, delta: float, m: int, r: float) -> int:
    """Theorem 4: ``T >= (2 r^2 / eps^2) log(4 M / delta)`` permutations (``r`` = range of the utility)."""
    if not (eps > 0 and 0 < delta < 1 and m >= 1 and r > 0):
        raise ValueError("cs_num_permutations: need eps > 0, 0 < delta < 1, m >= 1, r > 0")
    return math.ceil(2.0 * r * r / (eps * eps) * math.log(4.0 * m / delta))


def bernoulli_matrix(m: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``A`` of Algorithm 2: ``M x N`` iid entries ``+1/sqrt(M)`` or ``-1/sqrt(M)`` with probability 1/2."""
    return np.where(rng.random((m, n)) < 0.5, 1.0, -1.0) / math.sqrt(m)


def sparse_recovery(
    a: np.ndarray,
    y: np.ndarray,
    center: np.ndarray,
    tol: float | np.ndarray = 0.0,
    *,
    efficient: bool = False,
) -> np.ndarray | None:
    """``center + d`` with ``d = argmin ||d||_1`` s.t. ``|A (center + d) - y| <= tol`` elementwise (and
    ``sum d = 0`` if ``efficient``). LP in split variables ``d = d+ - d-`` solved by scipy HiGHS; ``None`` if
    infeasible. ``tol = 0`` is basis pursuit (Eq. 9)."""
    m, n = a.shape
    resid = np.asarray(y, dtype=float) - a @ center
    tol_v = np.broadcast_to(np.asarray(tol, dtype=float), (m,))
    big = csr_matrix(a)
    a_split = hstack([big, -big]).tocsr()
    cost = np.ones(2 * n)
    kwargs = {}
    if np.all(tol_v == 0):
        a_eq, b_eq = a_split, resid
        if efficient:
            a_eq = vstack([a_eq, csr_matrix(np.concatenate([np.ones(n), -np.ones(n)])[None, :])]).tocsr()
            b_eq = np.concatenate([resid, [0.0]])
        kwargs = {"A_eq": a_eq, "b_eq": b_eq}
    else:
        kwargs = {"A_ub": vstack([a_split, -a_split]).tocsr(), "b_ub": np.concatenate([resid + tol_v, tol_v - resid])}
        if efficient:
            kwargs |= {"A_eq": np.concatenate([np.ones(n), -np.ones(n)])[None, :], "b_eq": [0.0]}
    res = linprog(cost, bounds=[(0, None)] * (2 * n), method="highs", **kwargs)
    if res.status != 0:
        return None
    return center + res.x[:n] - res.x[n:]


@dataclass
class CSResult:
    """Output of :func:`compressive_shapley`: ``values`` (n,); ``mc_values`` = the plain permutation-sampling
    mean over the same permutations (for comparison); ``measurements`` = ``y_bar`` (M,), ``stderr`` its standard
    errors; ``tolerance`` = the per-measurement box used; ``n_calls`` distinct utility calls."""

    values: np.ndarray
    mc_values: np.ndarray
    measurements: np.ndarray
    stderr: np.ndarray
    tolerance: np.ndarray
    n_permutations: int
    n_measurements: int
    n_calls: int
    elapsed: float


def compressive_shapley(
    utility: Utility,
    n: int,
    n_measurements: int,
    n_permutations: int,
    seed: int | np.random.Generator = 0,
    *,
    eps: float | None = None,
    z: float = 2.0,
    efficient: bool = True,
    progress: bool = False,
) -> CSResult:
    """Compressive permutation sampling (seeds/002 Algorithm 2) with ``M = n_measurements`` Bernoulli
    measurements and ``T = n_permutations`` uniform permutations; see the module docstring for ``eps``/``z``
    (the data-fidelity box) and ``efficient``. Values in utility units. The LP is always feasible: the plain
    Monte Carlo mean satisfies ``A s = y_bar`` and ``sum s = v(N) - v(∅)`` exactly (every permutation
    telescopes); if HiGHS still fails, the Monte Carlo mean is returned."""
    if n_measurements < 1 or n_permutations < 1:
        raise ValueError("compressive_shapley: n_measurements and n_permutations must be >= 1")
    t0 = time.perf_counter()
    v = cached(utility)
    calls0 = v.calls
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    a = bernoulli_matrix(n_measurements, n, rng)
    empty = v(frozenset())
    total = v(frozenset(range(n))) - empty
    phis = np.empty((n_permutations, n))
    for t in tqdm(range(n_permutations), desc="permutations", disable=not progress, leave=False):
        prefix_marginals(v, rng.permutation(n).tolist(), phis[t], empty)
    proj = phis @ a.T  # (T, M): y_hat_{m,t}
    y_bar = proj.mean(axis=0)
    se = proj.std(axis=0, ddof=1) / math.sqrt(n_permutations) if n_permutations > 1 else np.zeros(n_measurements)
    tol = np.full(n_measurements, eps / math.sqrt(n_measurements)) if eps is not None else z * se
    center = np.full(n, total / n)
    sol = sparse_recovery(a, y_bar, center, tol, efficient=efficient)
    if sol is None:  # numerically only; the MC mean is feasible
        sol = phis.mean(axis=0)
    return CSResult(
        values=sol,
        mc_values=phis.mean(axis=0),
        measurements=y_bar,
        stderr=se,
        tolerance=tol,
        n_permutations=n_permutations,
        n_measurements=n_measurements,
        n_calls=v.calls - calls0,
        elapsed=time.perf_counter() - t0,
    )


def sparsity_ratio(values: np.ndarray, k: int) -> float:
    """``sigma_K(s) / sum_i s_i`` (Eq. 7): the l1 distance to the best ``K``-sparse vector (the ``N - K``
    smallest ``|s_i|`` summed) relative to the total (the paper's Fig. 2 reports 0.5 at ``K = 367`` of 1000)."""
    s = np.asarray(values, dtype=float)
    tail = np.sort(np.abs(s))[: max(0, len(s) - int(k))]
    return float(tail.sum() / s.sum())
