"""Exact KNN-Shapley (Jia et al., VLDB 2019) and exact KNN-ADS (seeds/000 Theorem 5.1 with the corrections of
notes/000_ads.md section 2.5), vectorised over test points.

The game (shared/DESIGN.md): for one test point ``(x, y)``,
``v(S) = (1/K) * sum_{k <= min(K, |S|)} 1[y_(k) = y]`` where ``y_(k)`` is the label of the ``k``-th nearest
member of ``S``; neighbours are ranked by ``(distance, player id)`` (one total order, used both by the utility
and by the recursions, so exact duplicates are handled exactly). The utility of several test points is their
mean, and so are the values. Note the ``1/K`` normalisation: the paper's ``1/min(K, |S|)`` (Eq. 12) does not
satisfy the recursion.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import numpy as np
from scipy.spatial.distance import cdist
from scipy.special import gammaln
from tqdm.auto import tqdm

from procure.valuation.games import Groups, Utility, validate_groups

_CHUNK_CELLS = 1_000_000  # test rows per chunk = this // n_train (bounds the (rows, n_train) work arrays)


def _check(x_train, y_train, x_test, y_test, k) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    xtr = np.asarray(x_train, dtype=float)
    xte = np.asarray(x_test, dtype=float)
    if xtr.ndim == 1:
        xtr = xtr[:, None]
    if xte.ndim == 1:
        xte = xte[:, None]
    ytr = np.asarray(y_train).ravel()
    yte = np.asarray(y_test).ravel()
    if len(xtr) != len(ytr) or len(xte) != len(yte):
        raise ValueError("knn: x and y must have the same number of rows")
    if xtr.shape[1] != xte.shape[1]:
        raise ValueError(f"knn: train has {xtr.shape[1]} features, test {xte.shape[1]}")
    if len(xtr) == 0 or len(xte) == 0:
        raise ValueError("knn: need at least one training and one test point")
    if int(k) < 1:
        raise ValueError(f"knn: k must be >= 1, got {k}")
    return xtr, ytr, xte, yte, int(k)


def _order(dist: np.ndarray) -> np.ndarray:
    """Per row, the player ids sorted by ``(distance, id)`` (distances >= 0).

    Hand-written: one SIMD ``np.sort`` of packed keys ``float32(distance) bits << 32 | id`` is ~1.5x faster
    than ``np.argsort`` + a tie check and ~2x faster than a stable argsort. Rounding to float32 is monotone,
    so the packed order can only be wrong inside runs of equal float32 distances; those runs (few, short) are
    re-sorted by the exact ``(float64 distance, id)``."""
    rows, n = dist.shape
    key = dist.astype(np.float32).view(np.uint32).astype(np.uint64) << np.uint64(32)
    key |= np.arange(n, dtype=np.uint64)
    key.sort(axis=1)
    order = (key & np.uint64(0xFFFFFFFF)).astype(np.int64)
    hi = key >> np.uint64(32)
    eq = hi[:, 1:] == hi[:, :-1]
    if eq.any():
        in_run = np.zeros(order.shape, dtype=bool)
        in_run[:, 1:] = eq
        in_run[:, :-1] |= eq
        r, p = np.nonzero(in_run)  # row-major: each run's positions are contiguous
        starts = np.ones(len(p), dtype=bool)
        starts[1:] = ~((r[1:] == r[:-1]) & (p[1:] == p[:-1] + 1) & eq[r[1:], np.maximum(p[1:] - 1, 0)])
        ids = order[r, p]
        order[r, p] = ids[np.lexsort((ids, dist[r, ids], np.cumsum(starts)))]
    return order


def _rank(order: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_order`: ``rank[r, j]`` = position of player ``j`` in row ``r``."""
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(order.shape[1]), order.shape), axis=1)
    return rank


def _row_searchsorted(sorted_rows: np.ndarray, queries: np.ndarray, n_max: int) -> np.ndarray:
    """``searchsorted`` of each row of ``queries`` in the same row of ``sorted_rows`` (both int, values in
    ``[0, n_max)``), vectorised by offsetting row ``r`` by ``r * n_max``."""
    rows, width = sorted_rows.shape
    if width == 0:
        return np.zeros(queries.shape, dtype=np.int64)
    off = (np.arange(rows, dtype=np.int64) * n_max)[:, None]
    pos = np.searchsorted((sorted_rows + off).ravel(), (queries + off).ravel())
    return pos.reshape(queries.shape) - off // n_max * width


def _knn_ads_chunk(order: np.ndarray, y_test: np.ndarray, y_train: np.ndarray, groups, k: int) -> np.ndarray:
    """Sum over the chunk's test points of the exact KNN-ADS values, shape ``(n,)``."""
    rows, n = order.shape
    ridx = np.arange(rows)[:, None]
    yt = y_test[:, None]
    kappa = np.empty(n, dtype=np.int64)
    for t, g in enumerate(groups):
        kappa[g] = t
    by_group = None
    if len(groups) > 1:
        # positions in the sorted row, grouped by group and nearest first inside each group: one stable sort of
        # the rows' group labels (numpy radix-sorts 16-bit keys)
        kdtype = np.int16 if len(groups) <= np.iinfo(np.int16).max else np.int64
        by_group = np.argsort(kappa.astype(kdtype)[order], axis=1, kind="stable")
    total = np.zeros(n)
    top_rank = np.empty((rows, 0), dtype=np.int64)  # ranks of the <= K nearest earlier players, ascending
    start = 0
    for g in groups:
        m = len(g)
        if by_group is None:  # one group: its members in order are the whole row
            r_c = np.broadcast_to(np.arange(n), (rows, n))
            ids = order
        else:
            r_c = by_group[:, start : start + m]  # ranks of q_1..q_m
            ids = np.take_along_axis(order, r_c, axis=1)
        start += m
        a = (y_train[ids] == yt).astype(float)  # a_i = 1[y_{q_i} = y_test], q_1..q_m nearest first
        c = _row_searchsorted(top_rank, r_c, n)  # c_i = min(K, #earlier players ranked before q_i)
        b = np.zeros((rows, k))  # b_j = 1[y_{P_(j)} = y_test], 0 when P has fewer than j players
        b[:, : top_rank.shape[1]] = y_train[np.take_along_axis(order, top_rank, axis=1)] == yt
        bc = np.concatenate([np.zeros((rows, 1)), np.cumsum(b, axis=1)], axis=1)  # bc[:, j] = b_1 + ... + b_j

        # base case (farthest q_m): L = min(K - c_m, m) (corrected), phi = (L a_m - sum_{s<L} b_{K-s}) / (K m)
        big_l = np.clip(np.minimum(k - c[:, -1], m), 0, None)
        phi_m = (big_l * a[:, -1] - (bc[:, k] - bc[ridx[:, 0], k - big_l])) / (k * m)

        phi = np.empty((rows, m))
        phi[:, -1] = phi_m
        if m > 1:
            i = np.arange(1, m)  # 1-based position of q_i, compared with q_{i+1}
            ai, ai1 = a[:, :-1], a[:, 1:]
            if top_rank.shape[1] == 0:  # no earlier players: c = 0, Jia et al.'s recursion
                diff = (ai - ai1) * (np.minimum(k, i) / (k * i))
            else:
                ci, ci1 = c[:, :-1], c[:, 1:]
                # first term; it is 0 where K <= c_i (then c_{i+1} >= K too)
                diff = (ai - ai1) * np.clip(np.minimum(k - ci1, i), 0, None) / (k * i)
                # Theorem 5.1 cases 3/4, only where c steps up (c_i < c_{i+1} <= K: at most K places per row):
                # (1/(m-1)) sum_s sum_u C(s,u) C(m-2-s,i-1-u)/C(m-2,i-1) (a_i - b_{K-u}) / K. The s-sum is
                # Vandermonde's, sum_s C(s,u) C(m-2-s,i-1-u) = C(m-1,i), and C(m-1,i)/C(m-2,i-1) = (m-1)/i, so
                # the double sum is exactly (1/(K i)) sum_{u=lo}^{hi} (a_i - b_{K-u}) (hand-written: exact and
                # cheaper than lgamma binomials, which lose digits at large m).
                r, j = np.nonzero(ci1 > ci)
                lo = k - ci1[r, j]
                hi = np.minimum(k - ci[r, j] - 1, j)  # j = i - 1 (0-based column)
                cnt = np.clip(hi - lo + 1, 0, None)
                bsum = np.where(cnt > 0, bc[r, k - lo] - bc[r, np.clip(k - hi - 1, 0, k)], 0.0)
                diff[r, j] += (cnt * ai[r, j] - bsum) / (k * (j + 1))
            np.cumsum(diff[:, ::-1], axis=1, out=phi[:, -2::-1])  # phi_i - phi_m = sum_{j >= i} diff_j
            phi[:, :-1] += phi_m[:, None]
        total += np.bincount(ids.ravel(), weights=phi.ravel(), minlength=n)
        merged = np.sort(np.concatenate([top_rank, r_c[:, :k]], axis=1), axis=1)
        top_rank = merged[:, :k]
    return total


def knn_ads(
    x_train,
    y_train,
    groups: Groups,
    x_test,
    y_test,
    k: int,
    *,
    metric: str = "euclidean",
    progress: bool = False,
) -> np.ndarray:
    """Exact KNN-ADS values of the training points, shape ``(n_train,)`` (seeds/000 Thm. 5.1, Alg. 2).

    For group ``D_t`` with earlier players ``P`` and its members ``q_1..q_m`` sorted by ``(distance, id)``,
    ``a_i = 1[y_{q_i} = y]``, ``c_i = #{p in P ranked before q_i}`` and ``b_j`` the match indicator of the
    ``j``-th nearest earlier player (0 if there is none)::

        phi(q_m) = (L a_m - sum_{s=0}^{L-1} b_{K-s}) / (K m),  L = max(0, min(K - c_m, m))
        phi(q_i) - phi(q_{i+1}) = 0 if K <= c_i, else
            [(a_i - a_{i+1}) max(0, min(K - c_{i+1}, i)) + sum_{u=max(0,K-c_{i+1})}^{min(K-c_i-1, i-1)} (a_i - b_{K-u})]
            / (K i)

    (the paper's Cases 1-4 in unified form, its hypergeometric double sum summed in closed form). Values are
    in accuracy units (the mean over test points; sum of values = ``v(D) - v(∅)`` with ``v(∅) = 0``); one
    group gives :func:`knn_shapley`. Distances by ``scipy.spatial.distance.cdist(metric=...)``.
    Cost ``O(n_test * n log n)`` time, ``O(chunk * n)`` memory.
    """
    xtr, ytr, xte, yte, k = _check(x_train, y_train, x_test, y_test, k)
    n = len(xtr)
    gs = validate_groups(groups, n)
    chunk = max(1, _CHUNK_CELLS // n)
    total = np.zeros(n)
    for start in tqdm(range(0, len(xte), chunk), desc="KNN values", disable=not progress, leave=False):
        xt, yt = xte[start : start + chunk], yte[start : start + chunk]
        total += _knn_ads_chunk(_order(cdist(xt, xtr, metric=metric)), yt, ytr, gs, k)
    return total / len(xte)


def knn_shapley(x_train, y_train, x_test, y_test, k: int, *, metric: str = "euclidean", **kwargs) -> np.ndarray:
    """Exact KNN-Shapley values (Jia et al. 2019, notes/002 section 1.8), shape ``(n_train,)``: with the
    training points sorted by ``(distance, id)`` as ``alpha_1..alpha_N``,
    ``s_N = 1[y_N = y] * min(K, N) / (K N)`` and ``s_i = s_{i+1} + (1[y_i = y] - 1[y_{i+1} = y]) / K * min(K, i) / i``,
    averaged over test points. Accuracy units; ``sum = v(D)``. This is :func:`knn_ads` with one group."""
    n = len(np.asarray(y_train).ravel())
    return knn_ads(x_train, y_train, [list(range(n))], x_test, y_test, k, metric=metric, **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# References: the game itself (for brute force) and a per-test-point loop of the paper's recursion (for bench)


def knn_utility(x_train, y_train, x_test, y_test, k: int, *, metric: str = "euclidean") -> Utility:
    """The KNN utility ``v(S)`` of the module docstring, averaged over test points (accuracy units, v(∅) = 0)."""
    xtr, ytr, xte, yte, k = _check(x_train, y_train, x_test, y_test, k)
    rank = _rank(_order(cdist(xte, xtr, metric=metric)))
    match = (ytr[None, :] == yte[:, None]).astype(float)

    def v(s: frozenset[int]) -> float:
        if not s:
            return 0.0
        idx = np.fromiter(s, dtype=np.int64)
        r = rank[:, idx]
        kk = min(k, len(idx))
        nearest = np.argpartition(r, kk - 1, axis=1)[:, :kk] if kk < len(idx) else np.argsort(r, axis=1)
        return float(match[:, idx][np.arange(len(r))[:, None], nearest].sum(axis=1).mean() / k)

    return v


def _log_comb(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    """log C(a, b) by lgamma; -inf where C(a, b) = 0."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    valid = (b >= 0) & (b <= a)
    out = gammaln(a + 1) - gammaln(np.where(valid, b, 0) + 1) - gammaln(np.where(valid, a - b, 0) + 1)
    return np.where(valid, out, -np.inf)


def knn_ads_loop(x_train, y_train, groups: Groups, x_test, y_test, k: int, *, metric: str = "euclidean") -> np.ndarray:
    """Reference: the same values as :func:`knn_ads`, computed one test point and one index at a time with the
    notes' unified form of Theorem 5.1 and its literal double sum (log-binomial weights via lgamma). Slow;
    for tests and eval/bench_valuation.py only."""
    xtr, ytr, xte, yte, k = _check(x_train, y_train, x_test, y_test, k)
    n = len(xtr)
    gs = validate_groups(groups, n)
    dist = cdist(xte, xtr, metric=metric)
    phi = np.zeros(n)
    for row in range(len(xte)):
        key = {j: (dist[row, j], j) for j in range(n)}
        prefix: list[int] = []
        for g in gs:
            p_sorted = sorted(prefix, key=key.__getitem__)
            q = sorted(g, key=key.__getitem__)
            m = len(q)
            a = [1.0 if ytr[j] == yte[row] else 0.0 for j in q]
            p_keys = [key[p] for p in p_sorted]
            c = [bisect.bisect_left(p_keys, key[j]) for j in q]

            def b(j: int, p_sorted=p_sorted, row=row) -> float:
                return 1.0 if 1 <= j <= len(p_sorted) and ytr[p_sorted[j - 1]] == yte[row] else 0.0

            val = [0.0] * m
            if k > c[-1]:
                big_l = min(k - c[-1], m)
                val[-1] = (big_l * a[-1] - sum(b(k - s) for s in range(big_l))) / (k * m)
            for i in range(m - 1, 0, -1):
                ci, ci1 = c[i - 1], c[i]
                d = 0.0
                if k > ci:
                    d += (a[i - 1] - a[i]) / k * max(0, min(k - ci1, i)) / i
                    s = np.arange(0, m - 1)
                    for u in range(max(0, k - ci1), min(k - ci - 1, i - 1) + 1):
                        w = np.exp(_log_comb(s, u) + _log_comb(m - 2 - s, i - 1 - u) - _log_comb(m - 2, i - 1))
                        d += w.sum() * (a[i - 1] - b(k - u)) / k / (m - 1)
                val[i - 1] = val[i] + d
            for j, x in zip(q, val):
                phi[j] += x
            prefix += g
    return phi / len(xte)


def knn_shapley_loop(x_train, y_train, x_test, y_test, k: int, *, metric: str = "euclidean") -> np.ndarray:
    """Reference: Jia et al.'s recursion one test point and one index at a time (for eval/bench_valuation.py)."""
    xtr, ytr, xte, yte, k = _check(x_train, y_train, x_test, y_test, k)
    n = len(xtr)
    dist = cdist(xte, xtr, metric=metric)
    phi = np.zeros(n)
    for row in range(len(xte)):
        order = sorted(range(n), key=lambda j: (dist[row, j], j))
        a = [1.0 if ytr[j] == yte[row] else 0.0 for j in order]
        s = [0.0] * n
        s[-1] = a[-1] * min(k, n) / (k * n)
        for i in range(n - 1, 0, -1):
            s[i - 1] = s[i] + (a[i - 1] - a[i]) / k * min(k, i) / i
        for j, x in zip(order, s):
            phi[j] += x
    return phi / len(xte)


def instance_to_source(values: np.ndarray, source_of: Sequence[int] | np.ndarray, n_sources: int | None = None):
    """Source values = sums of their instances' values (seeds/000 Sec. 5.2): ``out[s] = sum_{i: source_of[i]=s}``."""
    src = np.asarray(source_of, dtype=np.int64)
    return np.bincount(src, weights=np.asarray(values, dtype=float), minlength=n_sources or 0)
