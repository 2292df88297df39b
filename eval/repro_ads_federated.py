"""Reproduce seeds/000 section 6.2 at CPU scale: federated learning on sklearn digits with 30 clients, 5
rounds of 6, half of the clients noisy; state-conditioned ADS within each round vs within-round LOO vs random
for top-3/4 client selection and for noisy-client detection.

Protocol (our choices; notes/000_ads.md section 4.2 lists the paper's):
- digits (stand-in for MNIST): 30 clients x 40 images drawn without replacement; 297 images for valuation
  and 300 for test. The 30 clients are partitioned evenly over the 5 rounds (each takes part once; the
  appendix's reading). 15 clients are noisy: each of their labels flips with p = 0.7 to a uniformly random
  incorrect class.
- model: MLP 64-32-10 (ReLU, softmax cross-entropy) in numpy; local training = 50 epochs of full-batch
  gradient descent (lr 0.5, features scaled to [0, 1]) from the broadcast global model; FedAvg = plain
  parameter mean with equal weights; every method starts from the same initial model.
- valuation at the realised state A_{t-1} (Eq. 10): each client's local model is trained once; v(S; A_{t-1}) =
  validation accuracy of the mean of the local models in S, v(∅) = accuracy of A_{t-1}. ADS = exact
  enumeration over the 2^6 = 64 subsets (procure.valuation.exact_ads with one group; this is what MC-ADS with
  200 permutations estimates); LOO = within-round LOO; random = uniform scores.
- top-k (k = 3, 4): values are computed along the selected trajectory (the state the server actually has),
  the top k are averaged into the next global model; test accuracy after every round.
- noise detection: values along the full-participation trajectory (all 6 averaged each round); within a round
  sort ascending and report recall@j = share of the round's noisy clients among the j lowest, averaged over
  rounds with at least one noisy client (the paper's "cumulative share ... within the lowest ranked portion").
Run: ``.venv/bin/python eval/repro_ads_federated.py [--seeds 10]``; writes eval/results/repro_ads_federated.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from procure.valuation import exact_ads, within_group_loo  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
N_CLIENTS, PER_CLIENT, ROUNDS, PER_ROUND = 30, 40, 5, 6
EPOCHS, LR, HIDDEN = 50, 0.5, 32
METHODS = ("ADS", "LOO", "Random")


def init_params(rng: np.random.Generator) -> list[np.ndarray]:
    return [
        rng.normal(0, 1 / np.sqrt(64), (64, HIDDEN)),
        np.zeros(HIDDEN),
        rng.normal(0, 1 / np.sqrt(HIDDEN), (HIDDEN, 10)),
        np.zeros(10),
    ]


def forward(p, x):
    h = np.maximum(x @ p[0] + p[1], 0.0)
    return h, h @ p[2] + p[3]


def accuracy(p, x, y) -> float:
    return float(np.mean(forward(p, x)[1].argmax(1) == y))


def local_train(p, x, y) -> list[np.ndarray]:
    w1, b1, w2, b2 = (a.copy() for a in p)
    onehot = np.eye(10)[y]
    for _ in range(EPOCHS):
        h = np.maximum(x @ w1 + b1, 0.0)
        logits = h @ w2 + b2
        prob = np.exp(logits - logits.max(1, keepdims=True))
        prob /= prob.sum(1, keepdims=True)
        g = (prob - onehot) / len(x)
        gw2, gb2 = h.T @ g, g.sum(0)
        gh = (g @ w2.T) * (h > 0)
        gw1, gb1 = x.T @ gh, gh.sum(0)
        w1 -= LR * gw1
        b1 -= LR * gb1
        w2 -= LR * gw2
        b2 -= LR * gb2
    return [w1, b1, w2, b2]


def fedavg(models: list[list[np.ndarray]]) -> list[np.ndarray]:
    return [np.mean([m[i] for m in models], axis=0) for i in range(4)]


def setup(seed: int):
    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    rng = np.random.default_rng(seed)
    p = rng.permutation(len(x))
    n_tr = N_CLIENTS * PER_CLIENT
    tr, va, te = p[:n_tr], p[n_tr : n_tr + 297], p[n_tr + 297 :]
    noisy = np.zeros(N_CLIENTS, bool)
    noisy[rng.choice(N_CLIENTS, N_CLIENTS // 2, replace=False)] = True
    clients = []
    for c in range(N_CLIENTS):
        idx = tr[c * PER_CLIENT : (c + 1) * PER_CLIENT]
        yc = y[idx].copy()
        if noisy[c]:
            flip = rng.random(len(yc)) < 0.7
            yc[flip] = (yc[flip] + rng.integers(1, 10, flip.sum())) % 10  # a uniformly random incorrect class
        clients.append((x[idx], yc))
    rounds = rng.permutation(N_CLIENTS).reshape(ROUNDS, PER_ROUND)
    return clients, noisy, rounds, (x[va], y[va]), (x[te], y[te]), init_params(rng)


def round_values(state, members, clients, val, method: str, rng) -> tuple[np.ndarray, list]:
    local = [local_train(state, *clients[c]) for c in members]
    base = accuracy(state, *val)

    def v(s: frozenset[int]) -> float:
        return base if not s else accuracy(fedavg([local[i] for i in sorted(s)]), *val)

    group = [list(range(len(members)))]
    if method == "ADS":
        return exact_ads(v, group), local
    if method == "LOO":
        return within_group_loo(v, group), local
    return rng.random(len(members)), local


def run_seed(seed: int) -> tuple[dict, dict]:
    clients, noisy, rounds, val, test, init = setup(seed)
    curves: dict = {}
    for k in (3, 4):
        for m in METHODS:
            rng = np.random.default_rng(seed * 7 + k)
            state, accs = init, []
            for members in rounds:
                vals, local = round_values(state, members, clients, val, m, rng)
                top = np.argsort(-vals + 1e-12 * rng.random(len(vals)), kind="stable")[:k]
                state = fedavg([local[i] for i in top])
                accs.append(accuracy(state, *test))
            curves[(m, k)] = np.array(accs)
    recall: dict = {}
    for m in METHODS:
        rng = np.random.default_rng(seed * 11)
        state, rec = init, []
        for members in rounds:
            vals, local = round_values(state, members, clients, val, m, rng)
            state = fedavg(local)
            nz = noisy[members]
            if nz.any():
                order = np.argsort(vals + 1e-12 * rng.random(len(vals)), kind="stable")
                rec.append(np.cumsum(nz[order]) / nz.sum())
        recall[m] = np.mean(rec, axis=0)
    return curves, recall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10)
    args = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    runs = [run_seed(s) for s in range(args.seeds)]
    print(f"\n### Federated digits: 30 clients, 5 rounds x 6, 15 noisy (p_flip = 0.7), {args.seeds} seeds")
    print("Test accuracy after each round with top-k selection (mean ± 95% normal CI over seeds):\n")
    print("| k | method | " + " | ".join(f"round {t + 1}" for t in range(ROUNDS)) + " |")
    print("|---|---|" + "---|" * ROUNDS)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    for j, k in enumerate((3, 4)):
        for m in METHODS:
            arr = np.array([r[0][(m, k)] for r in runs])
            mean, ci = arr.mean(0), 1.96 * arr.std(0, ddof=1) / np.sqrt(len(arr)) if len(arr) > 1 else 0 * arr[0]
            print(f"| {k} | {m} | " + " | ".join(f"{a:.3f} ± {c:.3f}" for a, c in zip(mean, ci)) + " |")
            axes[j].errorbar(np.arange(1, ROUNDS + 1), mean, yerr=ci, marker="o", ms=3, capsize=2, label=m)
        axes[j].set_title(f"top-{k} selection")
        axes[j].set_xlabel("round")
        axes[j].set_ylabel("test accuracy")
    print("\nNoisy-client detection, recall@j (share of a round's noisy clients among its j lowest-valued):\n")
    print("| method | " + " | ".join(f"j={j}" for j in range(1, PER_ROUND + 1)) + " |")
    print("|---|" + "---|" * PER_ROUND)
    for m in METHODS:
        rec = np.mean([r[1][m] for r in runs], axis=0)
        print(f"| {m} | " + " | ".join(f"{a:.3f}" for a in rec) + " |")
        axes[2].plot(np.arange(1, PER_ROUND + 1), rec, marker="o", ms=3, label=m)
    axes[2].set_title("noisy-client detection")
    axes[2].set_xlabel("j lowest-valued clients")
    axes[2].set_ylabel("recall of noisy clients")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "repro_ads_federated.png", dpi=70)
    print(f"\nplot: {RESULTS / 'repro_ads_federated.png'}")


if __name__ == "__main__":
    main()
