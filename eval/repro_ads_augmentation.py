"""Reproduce seeds/000 section 6.1 at CPU scale: valuing synthetic (augmented / duplicated) data with ADS
vs DS vs LOO vs random, and the broker/contributor value split under duplication.

Protocol (our choices; notes/000_ads.md section 4.1 lists the paper's):
- sklearn digits (stand-in for MNIST): 50 training images per class (500 originals) + 50 per class for the
  valuation set; the rest is the test set. Each original is augmented once: rotation U[-45, 45] degrees,
  shift U[-0.0625, 0.0625] x 8 px per axis, isotropic scale U[0.9, 1.1] (scipy.ndimage.affine_transform).
- sklearn breast cancer (stand-in for Adult; imbalanced): 200 benign + 50 malignant originals, 100 + 25 for
  valuation, the rest for test; features standardised on the originals; SMOTE-style interpolation (k = 3
  minority neighbours) adds 150 synthetic malignant rows (balanced).
- utility: the KNN utility (K = 5) of shared/DESIGN.md on the valuation set. Values: KNN-ADS with sigma =
  (originals, synthetic) and KNN-DS (exact, Jia et al.), LOO (v(N) - v(N \\ i) on the same utility), random.
  The paper's MC-ADS / MC-DS estimate the same games with noise, so the exact KNN values stand for both.
- interventions on the synthetic rows (0-30%): (a) remove the lowest-valued from orig + synthetic, (b)
  remove the highest-valued, (c) add the lowest-valued to the originals, (d) add the highest-valued; a 5-NN
  classifier is refitted and scored on the TEST set (not the valuation set); relative accuracy = accuracy /
  accuracy before the intervention. 5 seeds.
- market (Fig. 3, digits): contributors = the originals, broker = exact copies (1 or 2 per original) or
  the augmentations; group totals of KNN-DS and KNN-ADS values.
Run: ``.venv/bin/python eval/repro_ads_augmentation.py [--seeds 5]``; writes eval/results/repro_ads_augmentation.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402
from sklearn.datasets import load_breast_cancer, load_digits  # noqa: E402
from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors  # noqa: E402

from procure.valuation import knn_ads, knn_shapley, leave_one_out  # noqa: E402
from procure.valuation.knn import knn_utility  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
K = 5
FRACS = np.linspace(0, 0.3, 7)
METHODS = ("ADS", "DS", "LOO", "Random")
MODES = ("a: remove lowest", "b: remove highest", "c: add lowest", "d: add highest")


def augment_digit(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    ang = np.deg2rad(rng.uniform(-45, 45))
    scale = rng.uniform(0.9, 1.1)
    shift = rng.uniform(-0.0625, 0.0625, 2) * 8
    rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]]) / scale
    center = np.array([3.5, 3.5])
    offset = center - rot @ (center + shift)
    out = ndimage.affine_transform(img.reshape(8, 8), rot, offset=offset, order=1, mode="constant")
    return np.clip(out, 0, 16).ravel()


def digits_split(seed: int):
    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    tr, va, te = [], [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(y == c))
        tr += idx[:50].tolist()
        va += idx[50:100].tolist()
        te += idx[100:].tolist()
    xs = np.array([augment_digit(x[i], rng) for i in tr])
    return x[tr], y[tr], xs, y[tr].copy(), x[va], y[va], x[te], y[te]


def smote(x_min: np.ndarray, n_new: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """SMOTE (Chawla et al. 2002): a random minority row, one of its k nearest minority neighbours, a uniform
    point on the segment between them (hand-written: imbalanced-learn is not a dependency)."""
    nn = NearestNeighbors(n_neighbors=k + 1).fit(x_min).kneighbors(x_min, return_distance=False)[:, 1:]
    base = rng.integers(0, len(x_min), n_new)
    other = nn[base, rng.integers(0, k, n_new)]
    return x_min[base] + rng.random((n_new, 1)) * (x_min[other] - x_min[base])


def cancer_split(seed: int):
    x, y = load_breast_cancer(return_X_y=True)  # 0 = malignant (212), 1 = benign (357)
    rng = np.random.default_rng(seed)
    ben, mal = rng.permutation(np.flatnonzero(y == 1)), rng.permutation(np.flatnonzero(y == 0))
    tr = np.concatenate([ben[:200], mal[:50]])
    va = np.concatenate([ben[200:300], mal[50:75]])
    te = np.concatenate([ben[300:], mal[75:]])
    mu, sd = x[tr].mean(0), x[tr].std(0)
    x = (x - mu) / sd
    xs = smote(x[mal[:50]], 150, 3, rng)
    return x[tr], y[tr], xs, np.zeros(150, dtype=int), x[va], y[va], x[te], y[te]


def values(xo, yo, xs, ys, xv, yv, rng) -> dict[str, np.ndarray]:
    """Values of the synthetic rows (indices len(xo)..) under each method."""
    x = np.concatenate([xo, xs])
    y = np.concatenate([yo, ys])
    no, n = len(xo), len(xo) + len(xs)
    groups = [list(range(no)), list(range(no, n))]
    loo = leave_one_out(knn_utility(x, y, xv, yv, K), n)
    return {
        "ADS": knn_ads(x, y, groups, xv, yv, K)[no:],
        "DS": knn_shapley(x, y, xv, yv, K)[no:],
        "LOO": loo[no:],
        "Random": rng.random(n - no),
    }


def acc(x, y, xt, yt) -> float:
    return float(KNeighborsClassifier(K).fit(x, y).score(xt, yt))


def curves(split, seed: int) -> dict[str, dict[str, np.ndarray]]:
    xo, yo, xs, ys, xv, yv, xt, yt = split(seed)
    rng = np.random.default_rng(1000 + seed)
    vals = values(xo, yo, xs, ys, xv, yv, rng)
    base_all = acc(np.concatenate([xo, xs]), np.concatenate([yo, ys]), xt, yt)
    base_orig = acc(xo, yo, xt, yt)
    out: dict[str, dict[str, np.ndarray]] = {}
    for m, v in vals.items():
        order = np.argsort(v + 1e-12 * rng.random(len(v)), kind="stable")  # ascending, random tie-break
        res = {mode: [] for mode in MODES}
        for f in FRACS:
            c = int(round(f * len(v)))
            low, high = order[:c], order[len(v) - c :]
            for mode, sel in zip(MODES, (low, high, low, high)):
                if mode.startswith(("a", "b")):
                    keep = np.setdiff1d(np.arange(len(v)), sel)
                    res[mode].append(
                        acc(np.concatenate([xo, xs[keep]]), np.concatenate([yo, ys[keep]]), xt, yt) / base_all
                    )
                else:
                    res[mode].append(
                        acc(np.concatenate([xo, xs[sel]]), np.concatenate([yo, ys[sel]]), xt, yt) / base_orig
                    )
        out[m] = {k: np.array(r) for k, r in res.items()}
    return out


def market(seed: int) -> list[tuple[str, float, float, float, float]]:
    """Group totals (contributors, broker) of KNN-DS and KNN-ADS values: copies and augmentations (Fig. 3)."""
    xo, yo, xs, ys, xv, yv, _, _ = digits_split(seed)
    rows = []
    for name, xb, yb in (
        ("original only", xo[:0], yo[:0]),
        ("copied once", xo, yo),
        ("copied twice", np.concatenate([xo, xo]), np.concatenate([yo, yo])),
        ("augmented once", xs, ys),
    ):
        x, y = np.concatenate([xo, xb]), np.concatenate([yo, yb])
        no = len(xo)
        ds = knn_shapley(x, y, xv, yv, K)
        ads = knn_ads(x, y, [list(range(no)), list(range(no, len(x)))] if len(xb) else [list(range(no))], xv, yv, K)
        rows.append((name, ds[:no].sum(), ds[no:].sum(), ads[:no].sum(), ads[no:].sum()))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(2, 4, figsize=(14, 6), sharex=True)
    for row, (name, split) in enumerate(
        (("digits + affine augmentation", digits_split), ("breast cancer + SMOTE", cancer_split))
    ):
        runs = [curves(split, s) for s in range(args.seeds)]
        print(f"\n### {name}: mean relative test accuracy over 0-30% of the synthetic rows ({args.seeds} seeds)")
        print("(expected for good values: a high, b low, c low, d high)\n")
        print("| method | " + " | ".join(MODES) + " |")
        print("|---|---|---|---|---|")
        for m in METHODS:
            cells = []
            for j, mode in enumerate(MODES):
                arr = np.array([r[m][mode] for r in runs])  # (seeds, fracs)
                mean = arr.mean(0)
                cells.append(f"{arr[:, 1:].mean():.4f}")
                ax = axes[row, j]
                ax.plot(FRACS * 100, mean, marker="o", ms=3, label=m)
                ax.set_title(f"{name.split(' ')[0]}: {mode}", fontsize=9)
            print(f"| {m} | " + " | ".join(cells) + " |")
    for ax in axes[1]:
        ax.set_xlabel("% of synthetic rows")
    axes[0, 0].set_ylabel("relative accuracy")
    axes[1, 0].set_ylabel("relative accuracy")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "repro_ads_augmentation.png", dpi=70)

    print("\n### Market split on digits (KNN utility, K=5): group totals of the values (seed 0)")
    print("| data | DS contributors | DS broker | ADS contributors | ADS broker |")
    print("|---|---|---|---|---|")
    for name, dc, db, ac, ab in market(0):
        print(f"| {name} | {dc:.4f} | {db:.4f} | {ac:.4f} | {ab:.4f} |")
    print(f"\nplot: {RESULTS / 'repro_ads_augmentation.png'}")


if __name__ == "__main__":
    main()
