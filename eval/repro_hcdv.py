"""Reproduce seeds/001 (HCDV) at CPU scale: values and time of HCDV vs MC Data Shapley vs exact KNN-Shapley
vs random on sklearn digits and on a synthetic clustered set, both with 10% of the training labels flipped.

Protocol (our choices; the paper's Table 1 protocol at small scale):
- split: train / validation (the utility's test set, used for valuation) / test (reported only);
- utility: the KNN utility of shared/DESIGN.md (K = 5) on the validation set; every method values the same game;
- HCDV: ``procure.valuation.hcdv`` defaults (contrastive torch encoder, balanced tree, T = 256);
- MC-DS: permutation sampling (Eq. 13 over single points, T permutations) with the same incremental KNN
  utility as HCDV's pooled games, so times compare estimators, not utility code;
- KNN-Shapley: the exact Data Shapley of this game (Jia et al.), the reference for the value correlation;
- metrics: Spearman correlation with KNN-Shapley, AUC of detecting flipped labels from low values, test
  accuracy of a 5-NN classifier retrained on the top 30% valued points (the paper's "retrain on the top
  30%"), wall time, and the stability CV of Eq. 54 (3 valuation seeds on the first split).
Run: ``.venv/bin/python eval/repro_hcdv.py [--seeds 3] [--mc-perms 100]``; writes eval/results/repro_hcdv.png.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402
from sklearn.datasets import load_digits, make_blobs  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402
from sklearn.neighbors import KNeighborsClassifier  # noqa: E402

from procure.valuation import knn_shapley  # noqa: E402
from procure.valuation.hcdv import _Game, hcdv, pooled_shapley  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
K = 5
TOP = 0.3


def digits(seed: int):
    x, y = load_digits(return_X_y=True)
    p = np.random.default_rng(seed).permutation(len(x))
    return x[p[:1000]], y[p[:1000]], x[p[1000:1300]], y[p[1000:1300]], x[p[1300:]], y[p[1300:]]


def clustered(seed: int):
    """2 classes x 3 slightly overlapping sub-clusters in 10-d (notes/001 section 4, 'Synthetic')."""
    x, sub = make_blobs(
        n_samples=2300, centers=6, n_features=10, cluster_std=4.0, center_box=(-6.0, 6.0), random_state=seed
    )
    y = sub % 2
    return x[:1000], y[:1000], x[1000:1300], y[1000:1300], x[1300:], y[1300:]


def flip(y: np.ndarray, frac: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    classes = np.unique(y)
    mask = rng.random(len(y)) < frac
    out = y.copy()
    for i in np.flatnonzero(mask):
        out[i] = rng.choice(classes[classes != y[i]])
    return out, mask


def mc_ds(x, y, xv, yv, perms: int, seed: int) -> np.ndarray:
    game = _Game(x, y, xv, yv, K, "knn", 0.0, np.ones((len(x), 1)))
    parts = [game.summary(np.array([i])) for i in range(len(x))]
    return pooled_shapley(game, parts, perms, seed)[0]


def top_acc(values, x, y, xt, yt, rng) -> float:
    keep = np.argsort(-values + 1e-12 * rng.random(len(values)))[: int(TOP * len(values))]
    return float(KNeighborsClassifier(K).fit(x[keep], y[keep]).score(xt, yt))


def run(name, loader, seeds, mc_perms):
    rows = {m: {"time": [], "rho": [], "auc": [], "acc": []} for m in ("HCDV", "MC-DS", "KNN-Shapley", "Random")}
    full_acc = []
    cv = {}
    for seed in range(seeds):
        x, y0, xv, yv, xt, yt = loader(seed)
        rng = np.random.default_rng(100 + seed)
        y, noisy = flip(y0, 0.1, rng)
        full_acc.append(KNeighborsClassifier(K).fit(x, y).score(xt, yt))
        vals = {}
        t = time.perf_counter()
        vals["KNN-Shapley"] = knn_shapley(x, y, xv, yv, K)
        rows["KNN-Shapley"]["time"].append(time.perf_counter() - t)
        t = time.perf_counter()
        vals["HCDV"] = hcdv(x, y, xv, yv, k=K, seed=seed).values
        rows["HCDV"]["time"].append(time.perf_counter() - t)
        t = time.perf_counter()
        vals["MC-DS"] = mc_ds(x, y, xv, yv, mc_perms, seed)
        rows["MC-DS"]["time"].append(time.perf_counter() - t)
        vals["Random"] = rng.random(len(x))
        rows["Random"]["time"].append(0.0)
        for m, v in vals.items():
            rows[m]["rho"].append(spearmanr(v, vals["KNN-Shapley"])[0])
            rows[m]["auc"].append(roc_auc_score(noisy, -v))
            rows[m]["acc"].append(top_acc(v, x, y, xt, yt, rng))
        if seed == 0:  # Eq. 54 stability: CV_i = std_r / (|mean_r| + 1e-8), mean over points, 3 valuation seeds
            reps = {
                "HCDV": np.array([hcdv(x, y, xv, yv, k=K, seed=s).values for s in (11, 12, 13)]),
                "MC-DS": np.array([mc_ds(x, y, xv, yv, mc_perms, s) for s in (11, 12, 13)]),
            }
            for m, r in reps.items():
                cv[m] = float(np.mean(r.std(axis=0) / (np.abs(r.mean(axis=0)) + 1e-8)))
            cv["KNN-Shapley"] = 0.0
    print(f"\n### {name}: n_train=1000, 10% labels flipped, K={K}, {seeds} seeds (mean ± std)")
    print(f"5-NN on all (noisy) training data: test accuracy {np.mean(full_acc):.3f}\n")
    print("| method | time (s) | Spearman vs KNN-Shapley | flipped-label AUC | test acc, top 30% | CV (Eq. 54) |")
    print("|---|---|---|---|---|---|")
    for m, r in rows.items():
        cells = [f"{np.mean(r[k]):.3f} ± {np.std(r[k]):.3f}" for k in ("time", "rho", "auc", "acc")]
        print(f"| {m} | " + " | ".join(cells) + f" | {cv.get(m, float('nan')):.3f} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--mc-perms", type=int, default=100)
    args = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    results = {
        "digits": run("sklearn digits", digits, args.seeds, args.mc_perms),
        "clustered": run("synthetic clustered (2 classes x 3 sub-clusters)", clustered, args.seeds, args.mc_perms),
    }
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, (name, rows) in zip(axes, results.items()):
        for m, r in rows.items():
            ax.errorbar(np.mean(r["time"]) + 1e-3, np.mean(r["acc"]), yerr=np.std(r["acc"]), fmt="o", label=m)
        ax.set_xscale("log")
        ax.set_xlabel("valuation time (s)")
        ax.set_ylabel("test accuracy, top 30%")
        ax.set_title(name)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "repro_hcdv.png", dpi=80)
    print(f"\nplot: {RESULTS / 'repro_hcdv.png'}")


if __name__ == "__main__":
    main()
