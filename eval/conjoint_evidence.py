"""Does state-conditioned valuation buy better conjoint data? The paired, multi-seed measurement (issue 12).

Runs ``recipes/conjoint-evidence.yaml`` (arms ads, loo, random and the two references noise_oracle and
hindsight; every arm of a seed shares the candidates and A_0) into a run directory, resumably, and summarises
every seed whose arms have all finished:

- per seed and round: each arm's test metric, what it bought (seller, noise share), its values;
- paired differences per round (ads - random, ads - loo, ads - noise_oracle, noise_oracle - random,
  hindsight - random) with percentile-bootstrap 95 % intervals over seeds;
- the share of rounds in which each arm bought the lowest-noise seller;
- valuation quality apart from what one fine-tune does: the Spearman correlation between a method's values
  and the sellers' clean shares (1 - noise), per round, averaged with a bootstrap interval.

Writes ``eval/results/conjoint_evidence.json`` and ``.png`` (small, committed) and prints the README table.

    nohup .venv/bin/python eval/conjoint_evidence.py --seeds 0 1 2 3 4 5 6 7 8 9 > evidence.log 2>&1 &
    .venv/bin/python eval/conjoint_evidence.py --summary-only
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from summary_stats import stat  # eval/ is on sys.path when a script in it runs

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
PAIRS = (
    ("ads", "random"),
    ("ads", "loo"),
    ("ads", "noise_oracle"),
    ("noise_oracle", "random"),
    ("hindsight", "random"),
    ("loo", "random"),
)


def evidence(run_dirs: list[Path]) -> dict[str, Any]:
    """The summary dict (module docstring) over the finished seeds of one or more run directories."""
    import pandas as pd
    from scipy.stats import spearmanr

    from procure.pipeline.report import summarize

    parts = [summarize(d)["_frames"] for d in run_dirs]
    f = {k: pd.concat([p[k] for p in parts], ignore_index=True) for k in parts[0]}
    m, p, c, v = f["metrics"], f["purchases"], f["candidates"], f["valuations"]
    rounds = int(m["round"].max())
    arms = sorted(m["method"].unique())
    done = m[m["round"] == rounds].groupby("seed")["method"].nunique()
    seeds = sorted(int(s) for s in done[done == len(arms)].index)
    per_seed: dict[str, Any] = {}
    metric = {}  # (arm, seed, round) -> metric
    for r in m.itertuples():
        metric[(r.method, int(r.seed), int(r.round))] = float(r.metric)
    cleanest, quality = {a: [] for a in arms}, {a: [] for a in arms}
    for s in seeds:
        per_seed[str(s)] = {}
        for t in range(rounds + 1):
            row: dict[str, Any] = {}
            for a in arms:
                cell: dict[str, Any] = {"metric": metric[(a, s, t)]}
                if t > 0:
                    cs = c[(c["method"] == a) & (c["seed"] == s) & (c["round"] == t)]
                    noise = {int(x.seller): float(x.noise) for x in cs.itertuples()}
                    vs = v[(v["method"] == a) & (v["seed"] == s) & (v["round"] == t)]
                    vals = {int(x.seller): float(x.value) for x in vs.itertuples()}
                    bought = sorted(int(x) for x in p[(p["method"] == a) & (p["seed"] == s) & (p["round"] == t)].seller)
                    cell.update(noise=noise, values=vals, bought=bought, bought_noise=[noise[b] for b in bought])
                    if noise:
                        best = min(noise.values())
                        cleanest[a].append(float(any(noise[b] == best for b in bought)))
                    sellers = sorted(set(vals) & set(noise))
                    if (
                        len(sellers) > 1
                        and len({vals[j] for j in sellers}) > 1
                        and len({noise[j] for j in sellers}) > 1
                    ):
                        rho = spearmanr([vals[j] for j in sellers], [1 - noise[j] for j in sellers]).statistic
                        quality[a].append(float(rho))
                row[a] = cell
            per_seed[str(s)][str(t)] = row
    by_round = {a: {str(t): stat([metric[(a, s, t)] for s in seeds]) for t in range(rounds + 1)} for a in arms}
    paired = {}
    for x, y in PAIRS:
        if x in arms and y in arms:
            paired[f"{x} - {y}"] = {
                str(t): stat([metric[(x, s, t)] - metric[(y, s, t)] for s in seeds]) for t in range(1, rounds + 1)
            }
    name = str(m["metric_name"].iloc[0]) if "metric_name" in m else "metric"
    return {
        "metric": name,
        "lower_is_better": name == "avg_err",
        "seeds": seeds,
        "rounds": rounds,
        "arms": arms,
        "per_seed": per_seed,
        "metric_by_round": by_round,
        "paired_differences": paired,
        "bought_cleanest_share": {a: stat(cleanest[a]) for a in arms},
        "spearman_values_vs_clean_share": {a: stat(quality[a]) for a in arms if quality[a]},
        "note": "paired differences are per seed, same candidates and A_0; intervals: percentile bootstrap over "
        "seeds (10,000 resamples); Spearman over each round's sellers (3 values), averaged over seeds x rounds",
    }


def table(ev: dict[str, Any]) -> str:
    """The README tables (markdown) from :func:`evidence`'s dict."""

    def fmt(st: dict) -> str:
        lo, hi = st["ci95"]
        return f"{st['mean']:+.2f} [{lo:+.2f}, {hi:+.2f}]"

    out = [f"{len(ev['seeds'])} seeds x {ev['rounds']} rounds; test {ev['metric']} (lower is better).", ""]
    arms = ev["arms"]
    out += ["| round | " + " | ".join(arms) + " |", "|---" * (len(arms) + 1) + "|"]
    for t in range(ev["rounds"] + 1):
        cells = [
            f"{ev['metric_by_round'][a][str(t)]['mean']:.2f} ± {ev['metric_by_round'][a][str(t)]['sd']:.2f}"
            for a in arms
        ]
        out.append(f"| {t} | " + " | ".join(cells) + " |")
    out += ["", "Paired differences (mean [95 % bootstrap interval]; negative = the first arm has lower error):", ""]
    pairs = list(ev["paired_differences"])
    out += ["| round | " + " | ".join(pairs) + " |", "|---" * (len(pairs) + 1) + "|"]
    for t in range(1, ev["rounds"] + 1):
        out.append(f"| {t} | " + " | ".join(fmt(ev["paired_differences"][k][str(t)]) for k in pairs) + " |")
    out += ["", "| arm | bought the lowest-noise seller | Spearman(values, clean share) |", "|---|---|---|"]
    for a in arms:
        share = ev["bought_cleanest_share"][a]
        rho = ev["spearman_values_vs_clean_share"].get(a)
        rho_txt = "-" if rho is None else fmt(rho)
        out.append(f"| {a} | {share['mean']:.2f} ({share['n']} rounds) | {rho_txt} |")
    return "\n".join(out) + "\n"


def plot(ev: dict[str, Any], path: Path) -> None:
    """Left: test metric per round per arm (mean, 95 % interval). Right: paired differences with intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    rounds = list(range(ev["rounds"] + 1))
    styles = ["-", "--", ":", "-.", (0, (5, 1))]
    for k, arm in enumerate(ev["arms"]):
        st = [ev["metric_by_round"][arm][str(t)] for t in rounds]
        x = [t + 0.04 * (k - 2) for t in rounds]  # small offsets keep coinciding arms visible
        a1.errorbar(
            x,
            [s["mean"] for s in st],
            yerr=[[s["mean"] - s["ci95"][0] for s in st], [s["ci95"][1] - s["mean"] for s in st]],
            label=arm,
            ls=styles[k % len(styles)],
            marker="o",
            capsize=3,
        )
    a1.set_xlabel("round")
    a1.set_ylabel(f"test {ev['metric']}")
    a1.set_title(f"{len(ev['seeds'])} seeds: mean and 95 % interval")
    a1.xaxis.set_major_locator(MaxNLocator(integer=True))
    a1.legend()
    pr = list(range(1, ev["rounds"] + 1))
    for k, (name, d) in enumerate(ev["paired_differences"].items()):
        st = [d[str(t)] for t in pr]
        x = [t + 0.06 * (k - len(ev["paired_differences"]) / 2) for t in pr]
        a2.errorbar(
            x,
            [s["mean"] for s in st],
            yerr=[[s["mean"] - s["ci95"][0] for s in st], [s["ci95"][1] - s["mean"] for s in st]],
            label=name,
            marker="o",
            ls="none",
            capsize=3,
        )
    a2.axhline(0, color="gray", lw=0.8)
    a2.set_xlabel("round")
    a2.set_ylabel(f"paired difference in test {ev['metric']}")
    a2.set_title("per-seed paired differences, 95 % bootstrap interval")
    a2.xaxis.set_major_locator(MaxNLocator(integer=True))
    a2.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default=str(ROOT / "recipes" / "conjoint-evidence.yaml"))
    ap.add_argument("--seeds", type=int, nargs="*", default=None)
    ap.add_argument("--out", default=str(ROOT / "runs" / "conjoint-evidence"))
    ap.add_argument("--summary-only", action="store_true")
    ap.add_argument("--results", default=str(ROOT / "eval" / "results" / "conjoint_evidence.json"))
    args = ap.parse_args()
    out = Path(args.out)
    if not args.summary_only:
        from conjoint_compare import run_recipe_file

        run_recipe_file(args.recipe, out, seeds=args.seeds)
    from procure.cache import write_json_atomically

    ev = evidence([out])
    res = Path(args.results)
    res.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomically(res, ev)
    plot(ev, res.with_suffix(".png"))
    print(table(ev))


if __name__ == "__main__":
    main()
