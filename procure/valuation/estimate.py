"""One entry point for every data-value estimator: :func:`estimate` (and :func:`plan` for the coalitions it will ask).

``procure value`` and the staged pipeline both call it, so "exact if small, else Monte Carlo" is decided in one
place and every method returns one result type, :class:`Valuation`.

Methods and what they take (``source``):

- games (``source`` = a utility ``Callable[[frozenset[int]], float]``, players ``0..n-1``):
  ``ads`` (exact Eq. 9 when every group has at most ``budget.exact_max`` players, else MC-ADS, Algorithm 1),
  ``ds`` (the same over one group of all players), ``loo`` (within-group leave-one-out; one group = classical LOO);
- tabular data (``source`` = :class:`TabularData`): ``knn-shapley``, ``knn-ads`` (exact closed forms) and ``hcdv``;
- rows of text (``source`` = :class:`TextData`): ``bm25``; gradients (:class:`GradData`): ``infl_ip``, ``datainf``;
- anything with a size (``source`` = ``n``, an int): ``constant``, ``random``.

Values are in the utility's units (higher = more valuable); per-sample methods give one value per row.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from procure.valuation.exact import MAX_EXACT_GROUP, exact_ads
from procure.valuation.games import Groups, Utility, cached, validate_groups
from procure.valuation.knn import knn_ads, knn_shapley
from procure.valuation.loo import within_group_loo
from procure.valuation.montecarlo import TimeLimit, hoeffding_eps, mc_ads, permutation_budget

GAME_METHODS = ("ads", "ds", "loo")
TABULAR_METHODS = ("knn-shapley", "knn-ads", "hcdv")
SAMPLE_METHODS = ("bm25", "infl_ip", "datainf", "constant", "random")
METHODS = GAME_METHODS + TABULAR_METHODS + SAMPLE_METHODS
#: permutations of MC-ADS when the budget names neither ``permutations`` nor ``eps``
DEFAULT_PERMUTATIONS = 200


class BudgetError(ValueError):
    """A :class:`Budget` field out of range: ``field`` names it, ``rule`` says what it must be and ``value`` is
    what it got (callers that take the budget from elsewhere name the field in their own terms)."""

    def __init__(self, field: str, rule: str, value: Any):
        super().__init__(f"Budget.{field} {rule} (got {value!r})")
        self.field, self.rule, self.value = field, rule, value


@dataclass(frozen=True)
class Budget:
    """How much an estimator may spend.

    ``exact_max``: enumerate exactly when every group has at most this many players (``2^m`` coalitions per
    group of ``m``), else Monte Carlo (0: always Monte Carlo). MC permutations: ``permutations``, or the
    Hoeffding budget ``permutation_budget(eps, delta, n, r)`` when ``eps`` is given (``r`` = width of a
    marginal's range: 2 for accuracy), else :data:`DEFAULT_PERMUTATIONS`; ``max_seconds`` also stops MC after
    that much wall time. A field out of range raises :class:`BudgetError` (a ``ValueError``) naming it.
    """

    exact_max: int = 10
    permutations: int | None = None
    eps: float | None = None
    delta: float = 0.05
    r: float = 2.0
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        checks = {
            "exact_max": (0 <= self.exact_max <= MAX_EXACT_GROUP, f"must be in [0, {MAX_EXACT_GROUP}]"),
            "permutations": (self.permutations is None or self.permutations >= 1, "must be >= 1"),
            "eps": (self.eps is None or 0 < self.eps < math.inf, "must be a finite number > 0"),
            "delta": (0 < self.delta < 1, "must be in (0, 1)"),
            "r": (0 < self.r < math.inf, "must be a finite number > 0"),
            "max_seconds": (self.max_seconds is None or self.max_seconds > 0, "must be > 0"),
        }
        for name, (ok, rule) in checks.items():
            if not ok:
                raise BudgetError(name, rule, getattr(self, name))

    def n_permutations(self, n: int) -> int:
        """The MC permutation count for ``n`` players under this budget (at least 1)."""
        if self.eps is not None:
            return max(1, permutation_budget(self.eps, self.delta, n, self.r))
        return self.permutations or DEFAULT_PERMUTATIONS


@dataclass
class Valuation:
    """Values of ``n`` players (or rows) from :func:`estimate`.

    ``values`` and ``stderr`` are ``(n,)`` float64 in the utility's units (``stderr`` is 0 for exact and
    closed-form methods, the MC standard error of the mean otherwise, NaN with fewer than 2 permutations).
    ``estimator`` names what ran (``ads_exact``, ``ads_mc``, ``ds_exact``, ``ds_mc``, ``loo``, or the method);
    ``n_calls`` = distinct utility evaluations (0 for methods without a utility)."""

    values: np.ndarray
    stderr: np.ndarray
    method: str
    estimator: str
    exact: bool
    n_calls: int = 0
    n_permutations: int | None = None
    note: str = ""
    detail: dict[str, Any] = field(default_factory=dict)

    def eps_bound(self, delta: float, r: float) -> float:
        """Hoeffding sup-norm error that holds with probability ``1 - delta`` (0 for exact methods)."""
        if self.exact or self.n_permutations is None:
            return 0.0
        return hoeffding_eps(self.n_permutations, delta, len(self.values), r)


@dataclass(frozen=True)
class TabularData:
    """Features and labels for the KNN / HCDV methods (players = training rows)."""

    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    k: int = 5


@dataclass(frozen=True)
class TextData:
    """Candidate texts (players) and the buyer's reference texts (BM25 queries); ``idf``: ``"okapi"``
    (rank-bm25, the default) or ``"clamp"`` (negative idf -> 0), see :mod:`procure.valuation.bm25`."""

    texts: Sequence[str]
    reference: Sequence[str]
    idf: str = "okapi"


@dataclass(frozen=True)
class GradData:
    """Per-sample gradients ``{block: (n, ...)}`` and the mean validation gradient ``{block: (...)}``;
    ``blocks``: DataInf's blocks, ``"param"`` (one per LoRA tensor, the default) or ``"layer"``."""

    grads: Mapping[str, Any]
    val_grad: Mapping[str, Any]
    blocks: str = "param"


def estimate(
    method: str,
    source: Utility | TabularData | TextData | GradData | int,
    groups: Groups | None = None,
    budget: Budget | None = None,
    *,
    seed: int = 0,
    progress: bool = False,
) -> Valuation:
    """Value the players of ``source`` with ``method`` (module docstring). ``groups`` is the ordered partition
    sigma for ``ads`` / ``knn-ads`` / ``loo`` (default: one group of all players); ``seed`` drives MC sampling,
    ``random`` values and HCDV's clustering."""
    budget = budget or Budget()
    if method in GAME_METHODS:
        return _game(method, _as_utility(method, source), groups, budget, seed, progress)
    if method in TABULAR_METHODS:
        return _tabular(method, _as(method, source, TabularData), groups, seed, progress)
    if method in SAMPLE_METHODS:
        return _samples(method, source, seed)
    raise ValueError(f"unknown valuation method {method!r}; use one of {', '.join(METHODS)}")


def plan(method: str, groups: Groups, budget: Budget | None = None, *, seed: int = 0) -> list[frozenset[int]]:
    """The coalitions :func:`estimate` will query for a game method, in first-query order (a dry run on a
    recording utility). Exact ADS/DS, LOO and MC-ADS without truncation or a time limit query coalitions
    independently of the utility's values, so this is exactly the set the real run evaluates."""
    seen: dict[frozenset[int], None] = {}

    def record(S: frozenset[int]) -> float:
        seen.setdefault(frozenset(S), None)
        return 0.0

    estimate(method, record, groups, budget, seed=seed)
    return list(seen)


# -- games -----------------------------------------------------------------------------------------------------
def _game(method: str, v: Utility, groups: Groups | None, budget: Budget, seed: int, progress: bool) -> Valuation:
    if groups is None:
        raise ValueError(f"method {method!r} needs groups (one group of all players for plain DS / LOO)")
    gs = validate_groups(groups)
    n = sum(len(g) for g in gs)
    sigma = [list(range(n))] if method == "ds" else gs
    cu = cached(v)
    calls0 = cu.calls
    zeros = np.zeros(n)
    if method == "loo":
        values = within_group_loo(cu, sigma)
        note = "leave-one-out" if len(sigma) == 1 else "within-group leave-one-out"
        return Valuation(values, zeros, method, "loo", True, cu.calls - calls0, note=note)
    if max(len(g) for g in sigma) <= budget.exact_max:
        values = exact_ads(cu, sigma, max_group_size=budget.exact_max, progress=progress)
        name = f"{method}_exact"
        return Valuation(values, zeros, method, name, True, cu.calls - calls0, note=f"exact {method.upper()}")
    stop = TimeLimit(budget.max_seconds) if budget.max_seconds else None
    res = mc_ads(cu, sigma, budget.n_permutations(n), seed=seed, stopping=stop, progress=progress)
    note = f"MC-{method.upper()}, {res.n_permutations} permutations ({res.stop_reason})"
    return Valuation(
        np.asarray(res.values, dtype=np.float64),
        np.asarray(res.stderr, dtype=np.float64),
        method,
        f"{method}_mc",
        False,
        cu.calls - calls0,
        n_permutations=res.n_permutations,
        note=note,
    )


# -- data ------------------------------------------------------------------------------------------------------
def _tabular(method: str, d: TabularData, groups: Groups | None, seed: int, progress: bool) -> Valuation:
    n = len(d.x)
    if method == "knn-shapley":
        values = knn_shapley(d.x, d.y, d.x_test, d.y_test, d.k, progress=progress)
    elif method == "knn-ads":
        gs = [list(range(n))] if groups is None else groups
        values = knn_ads(d.x, d.y, gs, d.x_test, d.y_test, d.k, progress=progress)
    else:
        from procure.valuation.hcdv import hcdv_values

        values = hcdv_values(d.x, d.y, d.x_test, d.y_test, k=d.k, seed=seed)
    values = np.asarray(values, dtype=np.float64)
    return Valuation(values, np.zeros(n), method, method, method != "hcdv", note=f"{method}, K={d.k}")


def _samples(method: str, source: Any, seed: int) -> Valuation:
    # torch: imported only when a per-sample method runs
    from procure.valuation.influence import constant_values, datainf, grad_ip, random_values

    if method == "bm25":
        from procure.valuation.bm25 import bm25_values

        d = _as(method, source, TextData)
        values = bm25_values(list(d.texts), list(d.reference), idf=d.idf)  # type: ignore[arg-type]
    elif method in ("infl_ip", "datainf"):
        d = _as(method, source, GradData)
        if method == "infl_ip":
            values = grad_ip(d.grads, d.val_grad)
        else:
            values = datainf(d.grads, d.val_grad, blocks=d.blocks)  # type: ignore[arg-type]
    else:
        if not isinstance(source, int | np.integer):
            raise TypeError(f"method {method!r} takes the number of rows (an int), got {type(source).__name__}")
        n = int(source)
        values = constant_values(n) if method == "constant" else random_values(n, seed=seed)
    values = np.asarray(values.numpy() if hasattr(values, "numpy") else values, dtype=np.float64)
    return Valuation(values, np.zeros(len(values)), method, method, True, note=method)


def _as(method: str, source: Any, kind: type) -> Any:
    if not isinstance(source, kind):
        raise TypeError(f"method {method!r} takes a {kind.__name__}, got {type(source).__name__}")
    return source


def _as_utility(method: str, source: Any) -> Callable[[frozenset[int]], float]:
    if not callable(source):
        raise TypeError(f"method {method!r} takes a utility callable, got {type(source).__name__}")
    return source
