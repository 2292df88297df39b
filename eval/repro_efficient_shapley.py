"""Reproduce seeds/002 (Jia et al. AISTATS 2019) Fig. 4 qualitatively at CPU scale: l2 error of permutation
sampling, group testing and compressive permutation sampling against the exact Shapley values, as a function
of the number of utility evaluations, and the sparsity of the values (Fig. 2).

Game (our choice): 100 random sklearn digits with the KNN utility of shared/DESIGN.md (K = 5) on 300 test
digits, whose exact Data Shapley values are known in closed form (procure.valuation.knn_shapley), so every
estimator is compared with the truth. Budgets are counted in utility evaluations (one per prefix for
permutations, one per test for group testing); compressive sampling uses M = 40 measurements. 3 seeds.
Run: ``.venv/bin/python eval/repro_efficient_shapley.py``; writes eval/results/repro_efficient_shapley.png.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from procure.valuation import knn_shapley, mc_ads  # noqa: E402
from procure.valuation.compressive import compressive_shapley, sparsity_ratio  # noqa: E402
from procure.valuation.group_testing import group_testing_shapley  # noqa: E402
from procure.valuation.knn import knn_utility  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
N, K, M = 100, 5, 40
BUDGETS = (1_000, 3_000, 10_000, 30_000)


def main() -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    x, y = load_digits(return_X_y=True)
    errs = {m: np.zeros((3, len(BUDGETS))) for m in ("permutation", "group testing", "compressive")}
    ratios = []
    for seed in range(3):
        p = np.random.default_rng(seed).permutation(len(x))
        xtr, ytr, xte, yte = x[p[:N]], y[p[:N]], x[p[N : N + 300]], y[p[N : N + 300]]
        exact = knn_shapley(xtr, ytr, xte, yte, K)
        ratios.append(sparsity_ratio(exact, int(0.367 * N)))
        util = knn_utility(xtr, ytr, xte, yte, K)
        for j, b in enumerate(BUDGETS):
            perms = max(1, b // (N + 1))
            est = {
                "permutation": mc_ads(util, [list(range(N))], perms, seed=seed, cache=False).values,
                "group testing": group_testing_shapley(util, N, b, seed=seed, solver="lstsq").values,
                "compressive": compressive_shapley(util, N, M, perms, seed=seed).values,
            }
            for m, v in est.items():
                errs[m][seed, j] = np.linalg.norm(v - exact)
    print(f"\n### Efficient Shapley estimators: N = {N} digits, KNN utility (K = {K}), 3 seeds")
    print(f"||exact||_2 = {np.linalg.norm(exact):.4f} (last seed)")
    print(f"sigma_36(s) / sum(s) = {np.mean(ratios):.3f} (paper, MNIST N = 1000: sigma_367 / sum = 0.5)\n")
    print("| evaluations | " + " | ".join(errs) + " |")
    print("|---|---|---|---|")
    for j, b in enumerate(BUDGETS):
        print(f"| {b} | " + " | ".join(f"{errs[m][:, j].mean():.4f} ± {errs[m][:, j].std():.4f}" for m in errs) + " |")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for m, e in errs.items():
        ax.errorbar(BUDGETS, e.mean(0), yerr=e.std(0), marker="o", ms=3, capsize=2, label=m)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("utility evaluations")
    ax.set_ylabel("l2 error vs exact Shapley")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "repro_efficient_shapley.png", dpi=70)
    print(f"\nplot: {RESULTS / 'repro_efficient_shapley.png'}")


if __name__ == "__main__":
    main()
