"""seeds/004 appendix A (Figure 5) on the CPU: the per-sample QA market, one buyer per valuation method.

Runs :func:`procure.pipeline.appendix_a.run_appendix_a` once per seed (resumable: each seed's folder under
``--out`` keeps its values, adapters and scores), then writes eval/results/qa_appendix_a.json (per seed and
method: purchases, average price per sample, accuracy and cost before purchase, at K and at 2K) and
eval/results/qa_appendix_a.png (performance versus cost; average price per sample), and prints the table.

    nohup .venv/bin/python eval/repro_market_qa.py --seeds 0 1 2 > appendix_a.log 2>&1 &
    .venv/bin/python eval/repro_market_qa.py --summary-only

Deviations from the paper are listed in the JSON's ``deviations`` and next to the README figure.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "eval" / "results"
DEFAULT_DATA = "bigbench:multiemo/hotels_sentence_en"


def deviations(args: argparse.Namespace) -> list[str]:
    """What this run does differently from seeds/004 section 6.1, for the JSON and the README figure."""
    return [
        "model: SmolLM2-135M-Instruct on 2 CPU cores (paper: Pythia-1b / Llama-class models on A6000 GPUs)",
        f"task: {args.data} (paper: MathQA); SmolLM2-135M cannot learn elementary_math_qa at this scale "
        "(clean rows do not beat wrong-letter rows; eval/results/qa_calibration.json), the sentiment task can; "
        "the representative set, test set and market pool are disjoint random parts of it (no official splits)",
        f"sizes: pool of {args.pool} rows (paper: the whole training split), test {args.test} questions, "
        f"representative set {args.reference}, K = {' / '.join(map(str, args.sizes))} (paper: 2K and 4K)",
        f"noise: {args.noise:.0%} of the pool rows carry a wrong answer letter (paper: none), so that each "
        "method's values can be scored against known-bad rows",
        f"training: LoRA r=8 on q/v, {args.epochs:g} epochs, lr 1e-3, batch 8 (paper: 3 epochs, lr 2e-5, batch 32)",
        "budget: the paper gives no per-sample buyer budget; b = budget_fraction x (existing rows' total price + 1) "
        f"with budget_fraction {args.budget_fraction:g}",
        f"evaluation: answer-letter likelihood, {args.shots}-shot (paper: 5-shot MathQA, generation)",
    ]


def _config(args: argparse.Namespace, seed: int):
    from procure.llm.train import TrainConfig
    from procure.pipeline.appendix_a import AppendixA

    return AppendixA(
        model=args.model,
        data=args.data,
        seed=seed,
        methods=args.methods,
        pool_size=args.pool,
        test_size=args.test,
        n_shot=args.shots,
        reference_size=args.reference,
        sizes=args.sizes,
        noise_share=args.noise,
        budget_fraction=args.budget_fraction,
        training=TrainConfig(
            epochs=args.epochs, lr=1e-3, batch_size=8, lora_r=8, lora_alpha=16, max_length=args.max_length
        ),
    )


SCORES = ("accuracy", "balanced_accuracy", "nll")  # per point; nll: lower is better


def summary(per_seed: dict[int, dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Per method: mean over seeds of each point (cost and the scores), of purchases and of the price per sample;
    ``stats[score]`` (mean, sd, bootstrap interval over seeds) per point and ``minus_random[score]`` (paired by
    seed: same pool, test set and existing rows)."""
    import numpy as np
    from summary_stats import stat

    table = {}
    ref = {seed: s["methods"]["random"]["points"] for seed, s in per_seed.items() if "random" in s["methods"]}
    for m in args.methods:
        by_seed = {seed: s["methods"][m] for seed, s in per_seed.items() if m in s["methods"]}
        if not by_seed:
            continue
        runs = list(by_seed.values())
        pts = [r["points"] for r in runs]
        scores = [k for k in SCORES if all(k in p for r in pts for p in r)]
        entry = table[m] = {
            "seeds": len(runs),
            "bought": float(np.mean([r["bought"] for r in runs])),
            "mean_price": float(np.nanmean([r["mean_price"] for r in runs])),
            "auc_clean_vs_noisy": float(np.nanmean([r["auc_clean_vs_noisy"] for r in runs])),
            "bought_wrong_share": float(np.nanmean([r.get("bought_noisy_share", np.nan) for r in runs])),
            "points": [
                {
                    "size": pts[0][k]["size"],
                    "cost": float(np.mean([p[k]["cost"] for p in pts])),
                    **{sc: float(np.mean([p[k][sc] for p in pts])) for sc in scores},
                }
                for k in range(len(pts[0]))
            ],
            "stats": {sc: [stat([p[k][sc] for p in pts]) for k in range(len(pts[0]))] for sc in scores},
        }
        common = sorted(set(by_seed) & set(ref))
        if m != "random" and common:
            entry["minus_random"] = {
                sc: [stat([by_seed[sd]["points"][k][sc] - ref[sd][k][sc] for sd in common]) for k in range(len(pts[0]))]
                for sc in scores
            }
    return {"deviations": deviations(args), "per_seed": {str(k): v for k, v in per_seed.items()}, "methods": table}


def plot(result: dict[str, Any], dest: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(result["methods"])
    seeds = max((r["seeds"] for r in result["methods"].values()), default=0)
    over = f"{seeds} seed" + "s" * (seeds != 1)
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    labels = {
        "accuracy": "test accuracy",
        "balanced_accuracy": "balanced accuracy (mean recall per letter)",
        "nll": "answer nll (nats, lower is better)",
    }
    for ax, sc in zip(axes.flat, SCORES):
        for m in names:
            r = result["methods"][m]
            if sc not in r["stats"]:
                continue
            pts = r["points"]
            sd = np.nan_to_num([s["sd"] for s in r["stats"][sc]])  # seed-to-seed sd (NaN for one seed)
            ax.errorbar([p["cost"] for p in pts], [p[sc] for p in pts], yerr=sd, marker="o", capsize=3, label=m)
        ax.set_xlabel("cost of the rows trained on (money)")
        ax.set_ylabel(labels[sc])
        ax.set_title(f"before purchase, K, 2K rows (mean ± sd, {over})", fontsize=9)
    axes.flat[0].legend(fontsize=8)
    bx = axes.flat[3]
    bx.bar(names, [result["methods"][m]["mean_price"] for m in names])
    bx.set_ylabel("average price per purchased sample")
    bx.set_title("price per sample", fontsize=9)
    bx.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(dest, dpi=100)
    plt.close(fig)


def main() -> None:
    from procure.cache import write_json_atomically
    from procure.pipeline.appendix_a import run_appendix_a

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=["constant", "random", "bm25", "infl_ip", "datainf"])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data", default=DEFAULT_DATA, help="multiple-choice source (procure.tasks.qa.load_qa)")
    ap.add_argument("--pool", type=int, default=1000)
    ap.add_argument("--test", type=int, default=200)
    ap.add_argument("--shots", type=int, default=0, help="demonstrations in the test prompts (paper: 5)")
    ap.add_argument("--epochs", type=float, default=2.0, help="LoRA epochs per buyer (paper: 3)")
    ap.add_argument("--max-length", type=int, default=512, help="tokens per training row (multiemo's longest row: 287)")
    ap.add_argument("--reference", type=int, default=200)
    ap.add_argument("--sizes", nargs="+", type=int, default=[100, 200])
    ap.add_argument("--noise", type=float, default=0.3, help="share of pool rows with a wrong letter (paper: 0)")
    ap.add_argument("--budget-fraction", type=float, default=1.0)
    ap.add_argument(
        "--out",
        type=Path,
        default=Path.home() / ".cache/procure/runs/qa-appendix-a",
        help="one folder per seed below it; a folder refuses a run of another configuration",
    )
    ap.add_argument("--results", type=Path, default=RESULTS / "qa_appendix_a.json")
    ap.add_argument("--summary-only", action="store_true", help="summarise the finished seeds, run nothing")
    args = ap.parse_args()
    per_seed = {}
    for seed in args.seeds:
        folder = args.out / f"seed-{seed}"
        if args.summary_only:
            if (folder / "summary.json").is_file():
                per_seed[seed] = json.loads((folder / "summary.json").read_text())
            continue
        per_seed[seed] = run_appendix_a(_config(args, seed), folder)
    result = summary(per_seed, args)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomically(args.results, result)
    plot(result, args.results.with_suffix(".png"))
    print(
        "| method | seeds | bought | wrong share | avg price | AUC clean vs wrong | accuracy: BP / K / 2K "
        "| cost K / 2K | 2K minus random [95 %] |"
    )
    print("|---|---:|---:|---:|---:|---:|---|---|---|")
    for m, r in result["methods"].items():
        acc = " / ".join(f"{p['accuracy']:.3f}" for p in r["points"])
        cost = " / ".join(f"{p['cost']:.1f}" for p in r["points"][1:])
        print(
            f"| {m} | {r['seeds']} | {r['bought']:.0f} | {r['bought_wrong_share']:.2f} | {r['mean_price']:.3f} "
            f"| {r['auc_clean_vs_noisy']:.3f} | {acc} | {cost} | {_ci(r, 'accuracy')} |"
        )
    print("\n| method | balanced acc.: BP / K / 2K | 2K minus random [95 %] | nll: BP / K / 2K | 2K minus random |")
    print("|---|---|---|---|---|")
    for m, r in result["methods"].items():
        if "nll" not in r["stats"]:
            continue
        bal = " / ".join(f"{p['balanced_accuracy']:.3f}" for p in r["points"])
        nll = " / ".join(f"{p['nll']:.3f}" for p in r["points"])
        print(f"| {m} | {bal} | {_ci(r, 'balanced_accuracy')} | {nll} | {_ci(r, 'nll')} |")


def _ci(entry: dict, score: str) -> str:
    stats = entry.get("minus_random", {}).get(score)
    if not stats:
        return ""
    d = stats[-1]
    return f"{d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"


if __name__ == "__main__":
    main()
