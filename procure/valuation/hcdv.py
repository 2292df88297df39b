"""HCDV: hierarchical contrastive data valuation (seeds/001, Xiao et al. AAAI-26; notes/001_hcdv.md).

Three stages (Algorithm 1):

I.   Encoder ``f: X -> R^d`` (unit-normalised embeddings ``z_i``). ``encoder="contrastive"`` trains a small torch
     MLP on a practical surrogate of Eq. 10 (notes 1.1): cross-entropy of a linear head on ``z`` minus
     ``lam_enc`` times the mean cross-label cosine distance in the batch, plus ``alpha`` times the
     finite-difference smoothness proxy ``Omega_hat`` (Eq. 33 [RECON]: one Gaussian direction per anchor, step
     ``h``, one random cross-label partner). ``"identity"`` = standardised features, ``"pca"`` = PCA, or pass
     a callable ``x -> z``. The encoder only shapes the hierarchy and the dispersion term; the learner of the
     utility always sees the raw ``x``.
II.  Balanced hierarchy (Eq. 11, Eqs. 34-35 [RECON]): k-means (sklearn) centroids per parent, then a greedy
     capacity-constrained assignment in decreasing order of confidence (2nd-closest minus closest centroid
     distance) with capacity ``ceil((1 + eps_cap) n*)``, then a repair pass that fills children below
     ``floor((1 - eps_cap) n*)`` with the outside points closest to their centroid (from children above
     the floor). ``n_clusters = (K_1, ..., K_L)`` are the TOTAL coalition counts per depth (paper's
     convention); a parent of size ``s`` gets ``round(K_{l+1} s / n)`` children (at least 1). Default: ``L =
     ceil(log_b(n / leaf_size))`` levels with ``K_l = round((n / leaf_size)^(l/L))`` (``b = branching``).
III. Multi-resolution Shapley (Eqs. 12-15) with budgets passed down: the root credit is the exact surplus
     ``B_0 = v(D) - v(∅)``; the children of every node play a Monte Carlo Shapley game (Eq. 13, ``T``
     permutations, memoised coalitions) with ``v_l(S) = metric(∪S) + lam * Dbar_c(∪S)`` (Eq. 20) and their
     estimates are rescaled to the parent's credit (line 9); the points of a leaf play the leaf game
     (``leaf_method``) and are rescaled to the leaf's credit. ``sum_i phi_i = B_0`` exactly (Theorem 1 with
     an exact root surplus and mass-conserving propagation).

Metric: ``metric="knn"`` is Jia et al.'s KNN utility of shared/DESIGN.md (``v(∅) = 0``, neighbours by
(euclidean distance, id)), evaluated from per-node top-K neighbour ranks, so merging coalitions costs
``O(n_test K)``; ``metric="logreg"`` is sklearn logistic-regression accuracy (the paper's model class;
``v(∅) = 0``; a single-class coalition predicts its class); or pass ``metric=callable(indices) -> float``.

Ambiguities (notes/001 section 1.3), decided:
- A1 renormalisation: ``propagation="shapley_renorm"`` (default) splits a parent's credit by its children's
  Shapley estimates: ratio ``credit * psi_H / sum psi`` when ``sum psi`` has the credit's sign and is not ~0,
  otherwise an additive shift ``psi_H + (credit - sum psi) / m`` (A2: the ratio would flip signs or divide
  by ~0); ``renorm="shift"`` always shifts. ``propagation="omega"`` is the literal Eq. 14-15:
  ``credit * max(v({H}),0) / sum max(v({H'}),0)``
  (size-proportional when that sum is 0) and skips the children's games.
- A3 ``level_game="pooled"`` (default; the text's "players are the K_l coalitions"): one MC game per depth
  over all ``K_l`` nodes, prefix summaries updated incrementally (``K_l + 1`` evaluations per permutation);
  each parent's credit is then split among its children by their pooled estimates. ``"siblings"``: a local
  game per parent among its children, valued on their union alone (cheaper with memoisation).
- A4 leaf game: ``leaf_context="data"`` (default) values a leaf's points with the rest of the data present
  (the ADS game with groups ``(rest, leaf)``), then rescales them to the leaf's credit; ``"alone"`` values
  them on the leaf alone. Measured on digits with 10% flipped labels (1,200 points, K = 5): "alone" ranks
  flipped points poorly (AUC 0.65) and "data" well (0.90), so "data" is the default. ``leaf_method``:
  ``"knn"`` closed form (exact; ``metric="knn"``, ``lam=0``; in context via KNN-ADS), ``"exact"``
  (enumeration, leaves of <= 14 points), ``"mc"`` (``T`` permutations), ``"uniform"`` (``credit/|G|``),
  ``"auto"`` = knn when possible, else exact for leaves of <= 10 points, else mc.
- A5 ``v(∅) = 0`` (no model, no correct prediction; ``Dbar_c(∅) = 0``).
- A6 the ratio renormalisation and ``max(.,0)`` are nonlinear: only the per-game MC estimator is additive.
Units: values are in utility units (accuracy plus ``lam`` times a cosine distance in [0, 2]); higher = more
valuable.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from scipy.spatial.distance import cdist

from procure.errors import UserError, format_validation_error
from procure.valuation.exact import exact_shapley
from procure.valuation.games import CachedUtility
from procure.valuation.montecarlo import MaxPermutations, mc_ads, permutation_means

# ---------------------------------------------------------------------------------------------------------------
# Configuration


class HCDVConfig(BaseModel):
    """Options of :func:`hcdv` (every one has a default; unknown names are an error)."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    metric: Any = "knn"  # "knn" | "logreg" | callable(indices: np.ndarray) -> float
    lam: float = Field(0.0, ge=0.0)  # weight of the contrastive dispersion in v_l (Eq. 20)
    encoder: Any = "contrastive"  # "contrastive" | "identity" | "pca" | callable(x) -> z
    embed_dim: int = Field(16, ge=1)
    encoder_epochs: int = Field(40, ge=0)
    lam_enc: float = Field(0.5, ge=0.0)  # dispersion weight in the encoder objective (Eq. 10)
    alpha: float = Field(0.01, ge=0.0)  # smoothness weight Omega (Eq. 10 / Eq. 33)
    n_clusters: list[int] | None = None  # total coalitions per depth K_1 < K_2 < ...
    branching: int = Field(8, ge=2)
    leaf_size: int = Field(16, ge=1)
    eps_cap: float = Field(0.1, ge=0.0, lt=1.0)
    n_permutations: int = Field(256, ge=1)  # T
    leaf_method: str = Field("auto", pattern="^(auto|knn|exact|mc|uniform)$")
    propagation: str = Field("shapley_renorm", pattern="^(shapley_renorm|omega)$")
    level_game: str = Field("pooled", pattern="^(pooled|siblings)$")  # A3
    leaf_context: str = Field("data", pattern="^(data|alone)$")  # A4
    renorm: str = Field("ratio", pattern="^(ratio|shift)$")  # A1/A2: how estimates are rescaled to a credit


# ---------------------------------------------------------------------------------------------------------------
# Budgets and bounds (Section 2 of the notes)


def game_bound(lam: float, d_max: float = 2.0) -> float:
    """``B = 1 + lam * d_max`` bounds ``|v_l(S)|`` for every level and coalition (Eq. 21), for a metric in
    [0, 1] and a dispersion in ``[0, d_max]`` (cosine distance: ``d_max = 2``)."""
    return 1.0 + lam * d_max


def hoeffding_tail(n_permutations: int, eta: float, lam: float = 0.0, d_max: float = 2.0) -> float:
    """Proposition 1 (Eq. 25): ``P(|psi_hat - psi| >= eta) <= 2 exp(-T eta^2 / (8 B^2))`` for one coalition
    (marginals in ``[-2B, 2B]``)."""
    b = game_bound(lam, d_max)
    return min(1.0, 2.0 * math.exp(-n_permutations * eta * eta / (8.0 * b * b)))


def shapley_budget(eta: float, delta: float, n_coalitions: int, lam: float = 0.0, d_max: float = 2.0) -> int:
    """Permutations ``T`` per game so that every one of ``n_coalitions = sum_l K_l`` coalition estimates is
    within ``eta`` with probability ``>= 1 - delta``: ``T = ceil(8 B^2 ln(2 K_tot / delta) / eta^2)`` (Eq. 25 plus
    a union bound; notes/001 section 2). ``eta`` in utility units."""
    if not (eta > 0 and 0 < delta < 1 and n_coalitions >= 1):
        raise ValueError("shapley_budget: need eta > 0, 0 < delta < 1, n_coalitions >= 1")
    b = game_bound(lam, d_max)
    return math.ceil(8.0 * b * b * math.log(2.0 * n_coalitions / delta) / (eta * eta))


def topk_regret(phi_ref: np.ndarray, phi_est: np.ndarray, k: int) -> float:
    """Theorem 2's regret ``U(S_ref) - U(S_est)`` of the surrogate ``U(S) = sum_{i in S} phi_ref_i`` when the
    top-``k`` set is chosen by ``phi_est`` instead of ``phi_ref``; it lies in ``[0, 2 k ||phi_est - phi_ref||_inf]``."""
    ref = np.asarray(phi_ref, dtype=float)
    best = np.sort(ref)[::-1][:k].sum()
    chosen = np.argsort(-np.asarray(phi_est, dtype=float), kind="stable")[:k]
    return float(best - ref[chosen].sum())


# ---------------------------------------------------------------------------------------------------------------
# Contrastive dispersion (Eq. 18)


def dispersion_bruteforce(z: np.ndarray, y: np.ndarray, members: Sequence[int]) -> float:
    """``Dbar_c(S)`` by its definition (Eq. 18): mean cosine distance ``1 - cos`` over the unordered pairs of
    ``S`` with different labels; 0 when there is no such pair."""
    idx = list(members)
    tot, cnt = 0.0, 0
    for a in range(len(idx)):
        for b in range(a + 1, len(idx)):
            i, j = idx[a], idx[b]
            if y[i] != y[j]:
                zi, zj = z[i], z[j]
                tot += 1.0 - float(zi @ zj) / (np.linalg.norm(zi) * np.linalg.norm(zj))
                cnt += 1
    return tot / max(1, cnt)


def dispersion_from_class_sums(sums: np.ndarray, counts: np.ndarray) -> float:
    """``Dbar_c`` from per-class sums ``s_c`` of unit-normalised embeddings and counts ``n_c`` (notes/001 1.1):
    ``|P| = sum_{c<c'} n_c n_c'``, ``Dbar = 1 - (sum_{c<c'} s_c . s_c') / |P|`` (0 when ``|P| = 0``)."""
    pairs = (counts.sum() ** 2 - np.sum(counts**2)) / 2.0
    if pairs <= 0:
        return 0.0
    tot = sums.sum(axis=0)
    cross = (tot @ tot - np.sum(sums * sums)) / 2.0
    return float(1.0 - cross / pairs)


# ---------------------------------------------------------------------------------------------------------------
# Stage I: encoders


def _standardise(x: np.ndarray) -> np.ndarray:
    sd = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


def _unit(z: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(z, axis=1, keepdims=True)
    return z / np.where(norm > 0, norm, 1.0)


def train_contrastive_encoder(
    x: np.ndarray,
    y: np.ndarray,
    *,
    dim: int = 16,
    epochs: int = 40,
    lam: float = 0.5,
    alpha: float = 0.01,
    h: float = 0.05,
    batch_size: int = 128,
    seed: int = 0,
) -> Callable[[np.ndarray], np.ndarray]:
    """Train the Stage-I encoder (surrogate of Eq. 10, see the module docstring) and return ``x -> z`` (unit
    norm). Features are standardised with the training statistics. A 2-layer torch MLP (hidden 64), Adam."""
    import torch

    # a 64-unit MLP gains nothing from intra-op threads, and on a busy 2-core machine they cost 30x
    # (measured: 81 s with 2 threads vs 2.7 s with 1 for 40 epochs on 1,000 digits); restored on exit
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_encoder(torch, x, y, dim, epochs, lam, alpha, h, batch_size, seed)
    finally:
        torch.set_num_threads(threads)


def _train_encoder(torch, x, y, dim, epochs, lam, alpha, h, batch_size, seed):
    gen = torch.Generator().manual_seed(seed)
    mu, sd = x.mean(axis=0), x.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    xt = torch.tensor((x - mu) / sd, dtype=torch.float32)
    classes, yi = np.unique(y, return_inverse=True)
    yt = torch.tensor(yi, dtype=torch.long)
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 64), torch.nn.ReLU(), torch.nn.Linear(64, dim))
    head = torch.nn.Linear(dim, len(classes))
    opt = torch.optim.Adam([*net.parameters(), *head.parameters()], lr=1e-2)

    def embed(a: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(net(a), dim=1)

    n = len(xt)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            b = perm[start : start + batch_size]
            xb, yb = xt[b], yt[b]
            zb = embed(xb)
            loss = torch.nn.functional.cross_entropy(head(zb) * 10.0, yb)
            diff = yb[:, None] != yb[None, :]
            if diff.any():
                dist = 1.0 - zb @ zb.T
                loss = loss - lam * dist[diff].mean()
                if alpha > 0:  # Omega_hat (Eq. 33): squared directional finite difference of d w.r.t. the anchor
                    partner = torch.argmax(diff.float() + torch.rand(diff.shape, generator=gen) * 0.5, dim=1)
                    ok = diff[torch.arange(len(b)), partner]
                    u = torch.randn(xb.shape, generator=gen)
                    zp = embed(xb + h * u)
                    d0 = 1.0 - (zb * zb[partner]).sum(1)
                    d1 = 1.0 - (zp * zb[partner]).sum(1)
                    loss = loss + alpha * (((d1 - d0) / h) ** 2)[ok].mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

    def encode(a: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return embed(torch.tensor((np.asarray(a, dtype=float) - mu) / sd, dtype=torch.float32)).numpy()

    return encode


def _embed(x: np.ndarray, y: np.ndarray, cfg: HCDVConfig, seed: int) -> np.ndarray:
    enc = cfg.encoder
    if callable(enc):
        return _unit(np.asarray(enc(x), dtype=float))
    if enc == "identity":
        return _unit(_standardise(x))
    if enc == "pca":
        from sklearn.decomposition import PCA

        d = min(cfg.embed_dim, x.shape[1], len(x))
        return _unit(PCA(n_components=d, random_state=seed).fit_transform(_standardise(x)))
    if enc == "contrastive":
        f = train_contrastive_encoder(
            x, y, dim=cfg.embed_dim, epochs=cfg.encoder_epochs, lam=cfg.lam_enc, alpha=cfg.alpha, seed=seed
        )
        return _unit(f(x))
    raise UserError(f"hcdv: encoder must be 'contrastive', 'identity', 'pca' or a callable, got {enc!r}")


# ---------------------------------------------------------------------------------------------------------------
# Stage II: balanced hierarchy


def balanced_kmeans(z: np.ndarray, k: int, seed: int = 0, eps_cap: float = 0.1) -> np.ndarray:
    """Split the rows of ``z`` into ``k`` children with sizes in ``[floor((1-eps_cap) n/k), ceil((1+eps_cap)
    n/k)]`` (Eqs. 34-35 [RECON]); returns child labels ``0..k-1``. See the module docstring for the method."""
    from sklearn.cluster import KMeans

    n = len(z)
    k = max(1, min(int(k), n))
    if k == 1:
        return np.zeros(n, dtype=np.int64)
    target = n / k
    hi = math.ceil((1 + eps_cap) * target)
    lo = math.floor((1 - eps_cap) * target)
    centers = KMeans(n_clusters=k, n_init=1, random_state=seed).fit(z).cluster_centers_
    d = cdist(z, centers)
    near = np.sort(d, axis=1)
    order = np.argsort(-(near[:, 1] - near[:, 0]), kind="stable")
    labels = np.full(n, -1, dtype=np.int64)
    size = np.zeros(k, dtype=np.int64)
    for i in order:
        for c in np.argsort(d[i], kind="stable"):
            if size[c] < hi:
                labels[i] = c
                size[c] += 1
                break
    while size.min() < lo:  # repair: pull the closest points from children that can spare one
        c = int(np.argmin(size))
        donors = np.flatnonzero((labels != c) & (size[labels] > lo))
        i = donors[np.argmin(d[donors, c] - d[donors, labels[donors]])]
        size[labels[i]] -= 1
        labels[i] = c
        size[c] += 1
    return labels


@dataclass
class Node:
    """A coalition of the hierarchy: ``members`` (point ids), ``children`` (node ids), ``level`` (root = 0),
    ``credit`` (its final value, the budget passed to its children), ``estimate`` (its raw Shapley estimate in
    its parent's game, before renormalisation) and ``singleton`` (``v_l({H})``, used by ``omega``)."""

    members: np.ndarray
    level: int
    parent: int = -1
    children: list[int] = field(default_factory=list)
    credit: float = 0.0
    estimate: float = float("nan")
    singleton: float = float("nan")


def default_n_clusters(n: int, leaf_size: int, branching: int) -> list[int]:
    """``K_l = round((n / M)^(l/L))``, ``l = 1..L``, ``L = ceil(log_b(n / M))`` (empty when ``n <= M``)."""
    ratio = n / leaf_size
    if ratio <= 1:
        return []
    depth = max(1, math.ceil(math.log(ratio) / math.log(branching)))
    ks = [max(2, round(ratio ** (lvl / depth))) for lvl in range(1, depth + 1)]
    return [min(n, k) for k in sorted(set(ks))]


def build_hierarchy(z: np.ndarray, n_clusters: Sequence[int], seed: int = 0, eps_cap: float = 0.1) -> list[Node]:
    """The balanced tree (Eq. 11): node 0 is the root (all points); depth ``l`` holds about ``n_clusters[l-1]``
    nodes in total. Children partition their parent."""
    n = len(z)
    nodes = [Node(members=np.arange(n), level=0)]
    frontier = [0]
    for depth, k_total in enumerate(n_clusters, start=1):
        nxt = []
        for p in frontier:
            mem = nodes[p].members
            c = max(1, min(len(mem), round(k_total * len(mem) / n)))
            lab = balanced_kmeans(z[mem], c, seed=seed + depth, eps_cap=eps_cap)
            for j in range(c):
                nodes.append(Node(members=mem[lab == j], level=depth, parent=p))
                nodes[p].children.append(len(nodes) - 1)
                nxt.append(len(nodes) - 1)
        frontier = nxt
    return nodes


# ---------------------------------------------------------------------------------------------------------------
# Games


class _Game:
    """``v(S) = metric(S) + lam * Dbar_c(S)`` over point sets, with per-set summaries that merge cheaply."""

    def __init__(self, x, y, x_test, y_test, k: int, metric: Any, lam: float, z: np.ndarray):
        self.k, self.lam, self.metric = k, lam, metric
        self.n = len(x)
        classes, yi = np.unique(y, return_inverse=True)
        self.z, self.yi, self.n_classes = z, yi, len(classes)
        self.calls = 0
        if isinstance(metric, str) and metric == "knn":
            dist = cdist(np.asarray(x_test, float), np.asarray(x, float))
            order = np.argsort(dist, axis=1, kind="stable")  # ties by player id, as in shared/DESIGN.md
            self.order = order
            self.rank = np.empty_like(order)
            np.put_along_axis(self.rank, order, np.broadcast_to(np.arange(self.n), order.shape), axis=1)
            match = np.asarray(y)[order] == np.asarray(y_test)[:, None]
            self.match = np.concatenate([match, np.zeros((len(match), 1), bool)], axis=1)  # sentinel rank n
            self.rows = np.arange(len(match))[:, None]
        elif isinstance(metric, str) and metric == "logreg":
            self.metric = _logreg_metric(x, y, x_test, y_test)
        elif not callable(metric):
            raise UserError(f"hcdv: metric must be 'knn', 'logreg' or a callable, got {metric!r}")

    def summary(self, members: np.ndarray) -> tuple:
        members = np.asarray(members, dtype=np.int64)
        sums = np.zeros((self.n_classes, self.z.shape[1]))
        np.add.at(sums, self.yi[members], self.z[members])
        counts = np.bincount(self.yi[members], minlength=self.n_classes).astype(float)
        if isinstance(self.metric, str):  # knn: the K nearest ranks per test row
            r = np.sort(self.rank[:, members], axis=1)[:, : self.k]
            if r.shape[1] < self.k:
                r = np.concatenate([r, np.full((len(r), self.k - r.shape[1]), self.n)], axis=1)
            return r, sums, counts, None
        return None, sums, counts, members

    def merge(self, parts: Sequence[tuple]) -> tuple:
        if not parts:
            return self.summary(np.empty(0, dtype=np.int64))
        sums = sum(p[1] for p in parts)
        counts = sum(p[2] for p in parts)
        if isinstance(self.metric, str):
            r = np.sort(np.concatenate([p[0] for p in parts], axis=1), axis=1)[:, : self.k]
            return r, sums, counts, None
        return None, sums, counts, np.concatenate([p[3] for p in parts])

    def value(self, s: tuple) -> float:
        self.calls += 1
        if isinstance(self.metric, str):
            base = float(self.match[self.rows, s[0]].sum(axis=1).mean() / self.k)
        else:
            base = float(self.metric(s[3])) if len(s[3]) else 0.0
        if self.lam:
            base += self.lam * dispersion_from_class_sums(s[1], s[2])
        return base

    def coalition_utility(self, parts: Sequence[tuple], context: tuple | None = None) -> CachedUtility:
        """Utility over player ids ``0..len(parts)-1`` (memoised): the value of the merged summaries of the
        players, plus the summary ``context`` (points always present) when given."""
        base = [] if context is None else [context]
        return CachedUtility(lambda s: self.value(self.merge([*base, *[parts[i] for i in sorted(s)]])))


def _logreg_metric(x, y, x_test, y_test) -> Callable[[np.ndarray], float]:
    from sklearn.linear_model import LogisticRegression

    x, y, x_test, y_test = (np.asarray(a) for a in (x, y, x_test, y_test))

    def acc(idx: np.ndarray) -> float:
        labels = np.unique(y[idx])
        if len(labels) == 1:
            return float(np.mean(y_test == labels[0]))
        model = LogisticRegression(max_iter=500).fit(x[idx], y[idx])
        return float(model.score(x_test, y_test))

    return acc


def knn_leaf_shapley(rank: np.ndarray, match: np.ndarray, members: np.ndarray, k: int) -> np.ndarray:
    """Exact KNN-Shapley (Jia et al. 2019 recursion, notes/002 section 1.8) of the game restricted to
    ``members``, from the global neighbour ranks (``rank[t, i]``) and label matches (``match[t, rank]``):
    ``s_m = a_m min(K, m)/(K m)``, ``s_i = s_{i+1} + (a_i - a_{i+1}) min(K, i)/(K i)``, averaged over test rows."""
    m = len(members)
    order = np.argsort(rank[:, members], axis=1)  # nearest member first
    ranks_sorted = np.take_along_axis(rank[:, members], order, axis=1)
    a = np.take_along_axis(match, ranks_sorted, axis=1).astype(float)
    i = np.arange(1, m)
    phi = np.empty_like(a)
    phi[:, -1] = a[:, -1] * min(k, m) / (k * m)
    if m > 1:
        diff = (a[:, :-1] - a[:, 1:]) * (np.minimum(k, i) / (k * i))
        phi[:, :-1] = phi[:, -1:] + np.cumsum(diff[:, ::-1], axis=1)[:, ::-1]
    out = np.zeros(m)
    np.add.at(out, order.ravel(), phi.ravel())
    return out / len(rank)


# ---------------------------------------------------------------------------------------------------------------
# Stage III


def split_credit(credit: float, estimates: np.ndarray, rel_tol: float = 1e-9, mode: str = "ratio") -> np.ndarray:
    """Algorithm 1 line 9 with the A2 fallback: ``credit * e / sum e`` when ``sum e`` has the sign of ``credit``
    and ``|sum e| > rel_tol * max|e|``; otherwise ``e + (credit - sum e)/m``. Always sums to ``credit``."""
    e = np.asarray(estimates, dtype=float)
    tot = e.sum()
    scale = max(float(np.max(np.abs(e))) if len(e) else 0.0, abs(credit), 1e-300)
    if mode == "ratio" and abs(tot) > rel_tol * scale and (tot > 0) == (credit > 0) and credit != 0:
        return credit * e / tot
    return e + (credit - tot) / len(e)


def omega_weights(singletons: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Eq. 14: ``max(v({H}),0) / sum max(v({H'}),0)``; size-proportional when every singleton value is <= 0."""
    w = np.maximum(np.asarray(singletons, dtype=float), 0.0)
    if w.sum() <= 0:
        w = np.asarray(sizes, dtype=float)
    return w / w.sum()


def coalition_shapley(utility: CachedUtility, m: int, n_permutations: int, seed: int) -> np.ndarray:
    """Eq. 13: the mean marginal over ``T`` uniform permutations of ``m`` players (MC-ADS with one group;
    memoised, so games with few players cost at most ``2^m`` evaluations)."""
    if m == 1:
        return np.array([utility(frozenset({0})) - utility(frozenset())])
    return mc_ads(utility, [list(range(m))], n_permutations, seed=seed).values


def _child_seed(ss: np.random.SeedSequence) -> int:
    return int(ss.spawn(1)[0].generate_state(1)[0])


def pooled_shapley(game: _Game, parts: Sequence[tuple], n_permutations: int, seed: int) -> tuple[np.ndarray, int]:
    """Eq. 13 over ALL ``K_l`` coalitions of a depth (A3, "players are the K_l coalitions"): mean marginal over
    ``T`` uniform permutations, drawn and averaged by MC-ADS's loop (``montecarlo.permutation_means``), with the
    prefix summary updated incrementally (``K_l + 1`` evaluations per permutation, no memo: the prefixes of long
    permutations rarely repeat). Returns the estimates and the number of evaluations."""
    m = len(parts)
    empty = game.merge([])
    v0 = game.value(empty)

    def marginals(perm: list[int], x: np.ndarray) -> None:
        state, prev = empty, v0
        for j in perm:
            state = game.merge([state, parts[j]])
            cur = game.value(state)
            x[j] = cur - prev
            prev = cur

    rule = MaxPermutations(n_permutations)
    run = permutation_means([list(range(m))], marginals, rule, np.random.default_rng(seed), desc="HCDV level game")
    return run.mean, n_permutations * m + 1


@dataclass
class HCDVResult:
    """``values`` (n,) point values (utility units, ``sum = v(D) - v(∅)``); ``nodes`` the tree with credits;
    ``n_evaluations`` distinct coalition evaluations; times in seconds."""

    values: np.ndarray
    nodes: list[Node]
    n_clusters: list[int]
    n_evaluations: int
    encoder_seconds: float
    valuation_seconds: float


def hcdv(x, y, x_test, y_test, *, k: int = 5, seed: int = 0, **options: Any) -> HCDVResult:
    """HCDV point values with the tree and timings (see the module docstring; options = :class:`HCDVConfig`)."""
    try:
        cfg = HCDVConfig(**options)
    except ValidationError as exc:
        raise UserError("hcdv: " + format_validation_error(exc)) from None
    x = np.asarray(x, dtype=float)
    y = np.asarray(y).ravel()
    x_test = np.asarray(x_test, dtype=float)
    y_test = np.asarray(y_test).ravel()
    if x.ndim != 2 or len(x) != len(y) or len(x) == 0:
        raise UserError("hcdv: x must be a non-empty 2-D array with one label per row in y")
    if x_test.ndim != 2 or x_test.shape[1] != x.shape[1] or len(x_test) != len(y_test) or len(x_test) == 0:
        raise UserError("hcdv: x_test must be 2-D with the training feature count and one label per row")
    if k < 1:
        raise UserError(f"hcdv: k must be >= 1, got {k}")
    n = len(x)
    t0 = time.perf_counter()
    z = _embed(x, y, cfg, seed)
    t_enc = time.perf_counter() - t0
    ks = list(cfg.n_clusters) if cfg.n_clusters is not None else default_n_clusters(n, cfg.leaf_size, cfg.branching)
    if any(b <= a for a, b in zip(ks, ks[1:])) or any(kk < 1 for kk in ks):
        raise UserError(f"hcdv: n_clusters must be increasing positive totals per depth, got {ks}")
    game = _Game(x, y, x_test, y_test, k, cfg.metric, cfg.lam, z)
    leaf_method = cfg.leaf_method
    knn_ok = isinstance(cfg.metric, str) and cfg.metric == "knn" and cfg.lam == 0
    if leaf_method == "knn" and not knn_ok:
        raise UserError("hcdv: leaf_method='knn' needs metric='knn' and lam=0; use 'mc' or 'exact'")

    nodes = build_hierarchy(z, ks, seed=seed, eps_cap=cfg.eps_cap)
    ss = np.random.SeedSequence(seed)
    summaries = {i: game.summary(nd.members) for i, nd in enumerate(nodes)}
    root = nodes[0]
    root.credit = game.value(summaries[0]) - game.value(game.merge([]))  # exact surplus B_0 (line 4)
    phi = np.zeros(n)
    evals = 0
    pooled: dict[int, float] = {}
    if cfg.level_game == "pooled" and cfg.propagation == "shapley_renorm":
        for depth in range(1, len(ks) + 1):
            ids = [i for i, nd in enumerate(nodes) if nd.level == depth]
            est, calls = pooled_shapley(game, [summaries[i] for i in ids], cfg.n_permutations, _child_seed(ss))
            pooled.update(zip(ids, est))
            evals += calls
    for node in nodes:  # parents come before children
        if node.children:
            ch = node.children
            parts = [summaries[c] for c in ch]
            util = game.coalition_utility(parts)
            empty = util(frozenset())
            for j, c in enumerate(ch):
                nodes[c].singleton = util(frozenset({j})) - empty
            if pooled:
                est = np.array([pooled[c] for c in ch])
                credits = split_credit(node.credit, est, mode=cfg.renorm)
            elif cfg.propagation == "omega":
                est = np.array([nodes[c].singleton for c in ch])
                credits = node.credit * omega_weights(est, np.array([len(nodes[c].members) for c in ch]))
            else:
                est = coalition_shapley(util, len(ch), cfg.n_permutations, _child_seed(ss))
                credits = split_credit(node.credit, est, mode=cfg.renorm)
            evals += util.calls
            for c, e, cr in zip(ch, est, credits):
                nodes[c].estimate, nodes[c].credit = float(e), float(cr)
            continue
        phi[node.members] = _leaf_values(game, node, leaf_method, knn_ok, cfg, ss, (x, y, x_test, y_test))
        evals += getattr(game, "_leaf_calls", 0)
    return HCDVResult(
        values=phi,
        nodes=nodes,
        n_clusters=ks,
        n_evaluations=evals,
        encoder_seconds=t_enc,
        valuation_seconds=time.perf_counter() - t0 - t_enc,
    )


def _leaf_values(game: _Game, node: Node, method: str, knn_ok: bool, cfg: HCDVConfig, ss, data) -> np.ndarray:
    mem = node.members
    m = len(mem)
    game._leaf_calls = 0
    if method == "auto":
        method = "knn" if knn_ok else ("exact" if m <= 10 else "mc")
    if method == "uniform" or m == 1:
        return np.full(m, node.credit / m)
    in_context = cfg.leaf_context == "data"
    rest = np.setdiff1d(np.arange(game.n), mem) if in_context else np.empty(0, dtype=np.int64)
    if method == "knn":
        if in_context and len(rest):
            est = knn_leaf_in_context(game, data, rest, mem)
        else:
            est = knn_leaf_shapley(game.rank, game.match, mem, game.k)
    else:
        if method == "exact" and m > 14:
            raise UserError(f"hcdv: leaf_method='exact' with a leaf of {m} points; lower leaf_size or use 'mc'")
        parts = [game.summary(mem[j : j + 1]) for j in range(m)]
        util = game.coalition_utility(parts, game.summary(rest) if in_context and len(rest) else None)
        if method == "exact":
            est = exact_shapley(util, m)
        else:
            est = coalition_shapley(util, m, cfg.n_permutations, _child_seed(ss))
        game._leaf_calls = util.calls
    return split_credit(node.credit, est, mode=cfg.renorm)


def knn_leaf_in_context(game: _Game, data: tuple, rest: np.ndarray, members: np.ndarray) -> np.ndarray:
    """Exact KNN values of the leaf points with the rest of the data present: KNN-ADS with the groups
    ``(rest, leaf)`` (seeds/000 Thm. 5.1, :func:`procure.valuation.knn_ads`), in accuracy units averaged over
    all test rows. Hand-reduced before the call (exact, much cheaper): a test row where no leaf point is nearer
    than the K-th nearest rest point contributes 0 to every leaf value, so only the other rows are passed; and
    only the ``K`` nearest rest points of those rows can matter, so the rest is reduced to their union (ids in
    increasing order, so the ``(distance, id)`` tie order is unchanged)."""
    from procure.valuation.knn import knn_ads

    x, y, x_test, y_test = data
    near = np.sort(game.rank[:, rest], axis=1)[:, : game.k]
    kth = near[:, -1] if near.shape[1] == game.k else np.full(len(near), game.n)
    rows = np.flatnonzero((game.rank[:, members] < kth[:, None]).any(axis=1))
    if len(rows) == 0:
        return np.zeros(len(members))
    keep = np.unique(np.take_along_axis(game.order[rows], near[rows], axis=1))
    ids = np.sort(np.concatenate([keep, members]))
    local = {int(g): i for i, g in enumerate(ids)}
    leaf_local = [local[int(g)] for g in members]
    rest_local = [local[int(g)] for g in keep]
    vals = knn_ads(x[ids], y[ids], [rest_local, leaf_local], x_test[rows], y_test[rows], game.k)
    return vals[leaf_local] * len(rows) / len(game.rank)


def hcdv_values(x, y, x_test, y_test, k: int = 5, seed: int = 0, **options: Any) -> np.ndarray:
    """HCDV point values, shape ``(n,)`` (higher = more valuable; they sum to ``v(D) - v(∅)``), for
    ``procure value --method hcdv``. ``x`` float features, ``y`` int labels; the utility is the KNN utility
    with ``k`` neighbours on ``(x_test, y_test)`` unless ``metric=`` says otherwise. Options: :class:`HCDVConfig`
    (e.g. ``leaf_size``, ``n_clusters``, ``n_permutations``, ``lam``, ``encoder``, ``leaf_method``,
    ``propagation``). Deterministic given ``seed``."""
    return hcdv(x, y, x_test, y_test, k=k, seed=seed, **options).values
