"""Cooperative games over data sources: the utility protocol, a memoising cache, ordered groups, and small games
with known values (used as ground truth in tests and examples).

Conventions (shared/DESIGN.md): players are the integers ``0..n-1``; a utility is
``Callable[[frozenset[int]], float]`` and ``v(frozenset())`` is allowed (in sequential use it is the score of the
current model state). Groups ``sigma = (D_1, ..., D_T)`` are an ordered list of disjoint, non-empty lists of
player ids that together cover ``0..n-1``; a single group means plain Data Shapley.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from procure.errors import UserError

Utility = Callable[[frozenset[int]], float]
Groups = Sequence[Sequence[int]]


class InvalidGroupsError(UserError, ValueError):
    """Ordered groups that are empty, overlap, or do not cover the players ``0..n-1``."""


def validate_groups(groups: Groups, n: int | None = None) -> list[list[int]]:
    """Check ``groups`` and return it as a list of lists of ``int``.

    Every group must be non-empty, groups must be disjoint, and their union must be exactly ``{0, ..., n-1}``
    (``n`` defaults to the number of ids given). Raises :class:`InvalidGroupsError` (a ``UserError`` and a
    ``ValueError``) naming the problem.
    """
    if isinstance(groups, str | bytes) or not isinstance(groups, Sequence | np.ndarray):
        raise InvalidGroupsError("groups: expected an ordered list of lists of player ids, e.g. [[0, 1], [2]]")
    out: list[list[int]] = []
    seen: set[int] = set()
    for t, g in enumerate(groups):
        ids = [int(z) for z in np.asarray(g).ravel()] if not isinstance(g, int | np.integer) else None
        if ids is None:
            raise InvalidGroupsError(f"groups[{t}]: expected a list of player ids, got the single id {g!r}")
        if not ids:
            raise InvalidGroupsError(f"groups[{t}] is empty: every group must hold at least one player")
        dup = seen.intersection(ids)
        if not dup and len(set(ids)) < len(ids):
            dup = {z for z, c in zip(*np.unique(ids, return_counts=True)) if c > 1}
        if dup:
            raise InvalidGroupsError(f"groups[{t}]: player {min(dup)} appears twice; groups must be disjoint")
        seen.update(ids)
        out.append(ids)
    if not out:
        raise InvalidGroupsError("groups: need at least one group")
    n = len(seen) if n is None else int(n)
    if seen != set(range(n)):
        missing = sorted(set(range(n)) - seen)
        extra = sorted(seen - set(range(n)))
        what = f"missing players {missing[:5]}" if missing else f"ids outside 0..{n - 1}: {extra[:5]}"
        raise InvalidGroupsError(f"groups must cover the players 0..{n - 1} exactly ({what})")
    return out


def group_index(groups: Groups, n: int | None = None) -> np.ndarray:
    """``kappa``: array ``(n,)`` with ``kappa[z] = t`` iff ``z`` is in ``groups[t]`` (0-based)."""
    gs = validate_groups(groups, n)
    kappa = np.empty(sum(len(g) for g in gs), dtype=np.int64)
    for t, g in enumerate(gs):
        kappa[g] = t
    return kappa


def mask_of(coalition: Iterable[int]) -> int:
    """Bitmask of a coalition: bit ``i`` set iff player ``i`` is in it."""
    m = 0
    for i in coalition:
        m |= 1 << int(i)
    return m


class CachedUtility:
    """Memoise a utility by coalition so that no coalition is evaluated twice.

    ``calls`` counts evaluations of the wrapped utility (= distinct coalitions seen), ``hits`` counts answers
    served from the cache. Coalitions are keyed by their bitmask (a Python int), which is much smaller than a
    frozenset for the many prefixes a Monte Carlo run visits. Wrapping a ``CachedUtility`` again shares its
    cache (see :func:`cached`). ``store=False`` counts calls without memoising (cheap utilities only).
    """

    def __init__(self, utility: Utility, *, store: bool = True):
        self.utility = utility
        self.store = store  # False: count calls but memoise nothing (cheap utilities, huge Monte Carlo runs)
        self.cache: dict[int, float] = {}
        self.calls = 0
        self.hits = 0

    def __call__(self, coalition: Iterable[int]) -> float:
        s = coalition if isinstance(coalition, frozenset) else frozenset(int(i) for i in coalition)
        return self.value(mask_of(s), s)

    def value(self, mask: int, coalition: frozenset[int] | set[int]) -> float:
        """Value of ``coalition`` whose bitmask is ``mask`` (callers that track the mask skip recomputing it).
        A mutable ``set`` is frozen only on a cache miss."""
        try:
            v = self.cache[mask]
        except KeyError:
            v = float(self.utility(coalition if isinstance(coalition, frozenset) else frozenset(coalition)))
            if self.store:
                self.cache[mask] = v
            self.calls += 1
            return v
        self.hits += 1
        return v

    def __len__(self) -> int:
        return len(self.cache)


def cached(utility: Utility) -> CachedUtility:
    """``utility`` itself if it already is a :class:`CachedUtility`, else a new cache around it."""
    return utility if isinstance(utility, CachedUtility) else CachedUtility(utility)


# ---------------------------------------------------------------------------------------------------------------
# Games with known values (ground truth for tests; Shapley values quoted in each docstring).


def table_game(values: Sequence[float] | np.ndarray) -> Utility:
    """Game given by a table of ``2**n`` values indexed by bitmask (bit ``i`` = player ``i``)."""
    arr = np.asarray(values, dtype=float)
    n = int(round(math.log2(len(arr))))
    if 1 << n != len(arr):
        raise ValueError(f"table_game: need 2**n values, got {len(arr)}")
    return lambda s: float(arr[mask_of(s)])


def additive_game(weights: Sequence[float], constant: float = 0.0) -> Utility:
    """``v(S) = constant + sum_{i in S} w_i``. Every player's DS and ADS value is ``w_i`` for any groups."""
    w = np.asarray(weights, dtype=float)
    return lambda s: float(constant + sum(w[i] for i in s))


def unanimity_game(carrier: Iterable[int]) -> Utility:
    """``u_T(S) = 1[T subset of S]``. DS: ``1/|T|`` to each member of ``T``. ADS with groups sigma: the last member
    of ``T`` to arrive lies in the latest group ``t*`` that meets ``T``, so ``1/|T ∩ D_t*|`` goes to each
    member of ``T ∩ D_t*`` and 0 to everyone else (Kalai-Samet weighted Shapley with equal weights)."""
    t = frozenset(int(i) for i in carrier)
    return lambda s: 1.0 if t <= s else 0.0


def glove_game(left: Iterable[int], right: Iterable[int]) -> Utility:
    """``v(S) = min(|S ∩ L|, |S ∩ R|)`` (matched pairs of gloves). With one left and two right gloves the DS
    values are (2/3, 1/6, 1/6)."""
    lset, rset = frozenset(left), frozenset(right)
    return lambda s: float(min(len(s & lset), len(s & rset)))


def airport_game(costs: Sequence[float]) -> Utility:
    """Cost-sharing airport game as a utility: ``v(S) = -max_{i in S} c_i`` (0 for the empty set).

    With costs sorted ascending ``c_(1) <= ... <= c_(n)``, DS gives player ``(k)`` minus the Littlechild-Owen
    share ``sum_{j<=k} (c_(j) - c_(j-1)) / (n - j + 1)``; see :func:`airport_shapley`."""
    c = np.asarray(costs, dtype=float)
    return lambda s: -float(max((c[i] for i in s), default=0.0))


def airport_shapley(costs: Sequence[float]) -> np.ndarray:
    """Closed-form DS values of :func:`airport_game` (Littlechild & Owen 1973), in the original player order."""
    c = np.asarray(costs, dtype=float)
    order = np.argsort(c, kind="stable")
    cs = c[order]
    n = len(c)
    inc = np.diff(np.concatenate([[0.0], cs])) / (n - np.arange(n))
    share = np.cumsum(inc)
    out = np.empty(n)
    out[order] = -share
    return out


def vote_game(labels: Sequence[int], state_labels: Sequence[int] = ()) -> Utility:
    """Lemma 3.2's state-dependent vote game (seeds/000 App. B.2), labels +-1.

    The state ``A`` holds the label multiset ``state_labels``; ``v(S; A) = 1[sum Y(A) + sum_{i in S} y_i > 0]``
    (ties and the empty total give 0, i.e. predict -1)."""
    y = np.asarray(labels, dtype=int)
    base = int(np.sum(state_labels))
    return lambda s: 1.0 if base + sum(int(y[i]) for i in s) > 0 else 0.0
