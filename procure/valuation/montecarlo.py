"""MC-ADS (seeds/000 Algorithm 1): Monte Carlo ADS over group-ordered permutations, with running means and
standard errors, the (eps, delta) permutation budget, optional TMC truncation and composable stopping rules."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from procure.valuation.games import CachedUtility, Groups, Utility, validate_groups


def permutation_budget(eps: float, delta: float, n: int, r: float) -> int:
    """MC-ADS budget ``m* = ceil(r^2 / (2 eps^2) * log(2 n / delta))`` (seeds/000 Alg. 1 line 1).

    Hoeffding plus a union bound over the ``n`` players: with ``m*`` ordered permutations the estimate is an
    (eps, delta)-approximation in the sup norm, ``P(max_z |phi_hat(z) - phi(z)| <= eps) >= 1 - delta``.
    ``r`` is the WIDTH of the range of one marginal contribution ``v(P ∪ {z}) - v(P)``, in utility units: for an
    accuracy utility in [0, 1] the marginals lie in [-1, 1], so ``r = 2`` (the paper's "r = 1" is the half-width).
    """
    if not (eps > 0 and 0 < delta < 1 and n >= 1 and r > 0):
        raise ValueError("permutation_budget: need eps > 0, 0 < delta < 1, n >= 1, r > 0")
    return math.ceil(r * r / (2.0 * eps * eps) * math.log(2.0 * n / delta))


def hoeffding_eps(m: int, delta: float, n: int, r: float) -> float:
    """Sup-norm error ``eps`` that ``m`` permutations guarantee with probability ``1 - delta`` (inverse of
    :func:`permutation_budget`): ``eps = r * sqrt(log(2 n / delta) / (2 m))``."""
    return r * math.sqrt(math.log(2.0 * n / delta) / (2.0 * m))


# ---------------------------------------------------------------------------------------------------------------
# Stopping rules


@dataclass
class MCState:
    """What a stopping rule sees after each permutation."""

    n_permutations: int
    stderr: np.ndarray
    elapsed: float


class StoppingRule:
    """A predicate on :class:`MCState`: ``True`` = stop now. Combine with ``|`` (stop when either says stop)
    and ``&`` (stop when both say stop)."""

    def __call__(self, state: MCState) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def __or__(self, other: StoppingRule) -> StoppingRule:
        return AnyOf(self, other)

    def __and__(self, other: StoppingRule) -> StoppingRule:
        return AllOf(self, other)

    def max_permutations(self) -> int | None:
        """An upper bound on the number of permutations this rule allows (for progress bars), if it has one."""
        return None


@dataclass
class MaxPermutations(StoppingRule):
    """Stop after ``n`` permutations."""

    n: int

    def __post_init__(self) -> None:
        if int(self.n) < 1:
            raise ValueError(f"MaxPermutations: n must be >= 1, got {self.n}")

    @classmethod
    def from_bound(cls, eps: float, delta: float, n_players: int, r: float) -> MaxPermutations:
        """The (eps, delta) budget ``m*`` of :func:`permutation_budget`."""
        return cls(permutation_budget(eps, delta, n_players, r))

    def __call__(self, state: MCState) -> bool:
        return state.n_permutations >= self.n

    def max_permutations(self) -> int | None:
        return int(self.n)


@dataclass
class StandardErrorBelow(StoppingRule):
    """Stop when every player's standard error of the mean is ``<= tol`` (utility units), after at least
    ``min_permutations`` permutations (the sample variance of very few permutations is unreliable)."""

    tol: float
    min_permutations: int = 30

    def __call__(self, state: MCState) -> bool:
        if state.n_permutations < max(2, self.min_permutations):
            return False
        return bool(np.all(state.stderr <= self.tol))


@dataclass
class TimeLimit(StoppingRule):
    """Stop once ``seconds`` of wall time have elapsed (checked after each complete permutation)."""

    seconds: float

    def __call__(self, state: MCState) -> bool:
        return state.elapsed >= self.seconds


@dataclass
class AnyOf(StoppingRule):
    a: StoppingRule
    b: StoppingRule

    def __call__(self, state: MCState) -> bool:
        return self.a(state) or self.b(state)

    def max_permutations(self) -> int | None:
        bounds = [m for m in (self.a.max_permutations(), self.b.max_permutations()) if m is not None]
        return min(bounds) if bounds else None


@dataclass
class AllOf(StoppingRule):
    a: StoppingRule
    b: StoppingRule

    def __call__(self, state: MCState) -> bool:
        return self.a(state) and self.b(state)

    def max_permutations(self) -> int | None:
        bounds = [self.a.max_permutations(), self.b.max_permutations()]
        return None if None in bounds else max(bounds)


# ---------------------------------------------------------------------------------------------------------------
# Estimator


@dataclass
class MCResult:
    """Output of :func:`mc_ads`. ``values`` and ``stderr`` have shape ``(n,)`` in utility units; ``stderr`` is
    the standard error of the mean over permutations (NaN with fewer than 2 permutations)."""

    values: np.ndarray
    stderr: np.ndarray
    n_permutations: int
    n_calls: int
    elapsed: float
    stop_reason: str
    truncated_steps: int = 0
    groups: list[list[int]] = field(default_factory=list)

    def eps_bound(self, delta: float, r: float) -> float:
        """Hoeffding sup-norm error guaranteed with probability ``1 - delta`` by the permutations drawn."""
        return hoeffding_eps(self.n_permutations, delta, len(self.values), r)


def ordered_permutation(groups: list[list[int]], rng: np.random.Generator) -> list[int]:
    """A uniform draw from ``Pi_sigma(D)``: each group shuffled independently, groups kept in order (Def. 4.2)."""
    out: list[int] = []
    for g in groups:
        out.extend(g[i] for i in rng.permutation(len(g)))
    return out


def prefix_marginals(
    v: CachedUtility,
    perm: Sequence[int],
    x: np.ndarray,
    empty_value: float,
    *,
    truncation: float | None = None,
    full_value: float = 0.0,
) -> int:
    """Write ``x[z] = v(pi^{<z} ∪ {z}) - v(pi^{<z})`` for every player of the permutation ``perm`` (each prefix
    evaluated once, by bitmask, through ``v``); ``empty_value = v(∅)``. With ``truncation=tau`` (TMC), once
    ``|full_value - v(prefix)| <= tau * |full_value|`` the remaining players get 0 unevaluated. Returns the number
    of players so truncated."""
    members: set[int] = set()
    mask = 0
    prev = empty_value
    for k, z in enumerate(perm):
        if truncation is not None and abs(full_value - prev) <= truncation * abs(full_value):
            x[list(perm[k:])] = 0.0
            return len(perm) - k
        members.add(z)
        mask |= 1 << z
        cur = v.value(mask, members)
        x[z] = cur - prev
        prev = cur
    return 0


@dataclass
class PermutationMeans:
    """Output of :func:`permutation_means`: per-player ``mean`` and ``stderr`` (NaN below 2 permutations) of the
    marginals, ``n_permutations`` drawn, wall time ``elapsed`` and the ``stop_reason``."""

    mean: np.ndarray
    stderr: np.ndarray
    n_permutations: int
    elapsed: float
    stop_reason: str


def permutation_means(
    groups: list[list[int]],
    marginals: Callable[[list[int], np.ndarray], object],
    rule: StoppingRule,
    rng: np.random.Generator,
    *,
    progress: bool = False,
    desc: str = "MC-ADS permutations",
) -> PermutationMeans:
    """The permutation-sampling loop shared by every Monte Carlo Shapley estimator here: draw ordered
    permutations of ``groups`` (:func:`ordered_permutation`, one draw from ``rng`` per permutation), let
    ``marginals(perm, x)`` write each player's marginal contribution in that permutation into ``x`` (the caller
    decides how prefixes are evaluated: memoised coalitions in :func:`mc_ads`, merged summaries in HCDV), and
    keep Welford running means and standard errors until ``rule`` says stop."""
    n = sum(len(g) for g in groups)
    mean = np.zeros(n)
    m2 = np.zeros(n)
    x = np.empty(n)
    m = 0
    t0 = time.perf_counter()
    stderr = np.full(n, np.nan)
    bar = tqdm(total=rule.max_permutations(), desc=desc, disable=not progress, leave=False)
    while True:
        marginals(ordered_permutation(groups, rng), x)
        m += 1
        delta = x - mean  # Welford running mean / variance
        mean += delta / m
        m2 += delta * (x - mean)
        if m >= 2:
            stderr = np.sqrt(m2 / (m - 1) / m)
        bar.update()
        state = MCState(n_permutations=m, stderr=stderr, elapsed=time.perf_counter() - t0)
        if rule(state):
            break
    bar.close()
    return PermutationMeans(mean, stderr.copy(), m, time.perf_counter() - t0, _reason(rule, state))


def mc_ads(
    utility: Utility,
    groups: Groups,
    n_permutations: int | None = None,
    seed: int | np.random.Generator = 0,
    *,
    stopping: StoppingRule | None = None,
    truncation: float | None = None,
    cache: bool = True,
    progress: bool = False,
) -> MCResult:
    """MC-ADS (seeds/000 Algorithm 1): ``phi_hat(z)`` = mean over sampled ordered permutations ``pi`` of
    ``v(pi^{<z} ∪ {z}) - v(pi^{<z})``, an unbiased estimate of ADS (Eq. 8). One group gives permutation-sampling
    Data Shapley. Each permutation evaluates each of its ``n + 1`` prefixes once; the marginals of every
    permutation telescope inside each group, so efficiency and group efficiency hold exactly for any number of
    permutations (without truncation).

    Stops when ``MaxPermutations(n_permutations) | stopping`` says so (at least one must be given); for the
    (eps, delta) guarantee use ``n_permutations=permutation_budget(eps, delta, n, r)`` (a data-dependent rule
    such as ``StandardErrorBelow`` is convenient but voids that guarantee and adds a small stopping bias).
    ``truncation=tau`` enables TMC (Ghorbani & Zou 2019; off by default): once
    ``|v(D) - v(prefix)| <= tau * |v(D)|`` the rest of the permutation gets marginal 0 without evaluation
    (biased; breaks exact efficiency). ``cache=False`` stops
    memoising coalitions (for cheap utilities with very many permutations; memory is one entry per distinct
    prefix otherwise). ``seed`` is an int or a ``numpy.random.Generator``.
    """
    gs = validate_groups(groups)
    n = sum(len(g) for g in gs)
    rules = []
    if n_permutations is not None:
        rules.append(MaxPermutations(int(n_permutations)))
    if stopping is not None:
        rules.append(stopping)
    if not rules:
        raise ValueError("mc_ads: give n_permutations or a stopping rule")
    rule = rules[0] if len(rules) == 1 else rules[0] | rules[1]
    if isinstance(utility, CachedUtility):
        v = utility
    else:
        v = CachedUtility(utility, store=cache)
    calls0 = v.calls
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)

    empty_value = v.value(0, frozenset())
    full_value = v.value((1 << n) - 1, frozenset(range(n))) if truncation is not None else 0.0
    truncated = 0

    def marginals(perm: list[int], x: np.ndarray) -> None:
        nonlocal truncated
        truncated += prefix_marginals(v, perm, x, empty_value, truncation=truncation, full_value=full_value)

    run = permutation_means(gs, marginals, rule, rng, progress=progress)
    return MCResult(
        values=run.mean,
        stderr=run.stderr,
        n_permutations=run.n_permutations,
        n_calls=v.calls - calls0,
        elapsed=run.elapsed,
        stop_reason=run.stop_reason,
        truncated_steps=truncated,
        groups=gs,
    )


def _reason(rule: StoppingRule, state: MCState) -> str:
    if isinstance(rule, AnyOf | AllOf):
        parts = [_reason(r, state) for r in (rule.a, rule.b) if r(state)]
        return " and ".join(parts)
    return repr(rule)
