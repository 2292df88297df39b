"""seeds/000 section 6.3 at CPU scale: ADS vs LOO vs random procurement on the conjoint task (SmolLM2-135M).

Runs recipes/conjoint-ads.yaml (optionally with more seeds / rounds) into a run directory, resumably, then
prints the README tables: test AvgErr per round per method (mean, sd, min-max over seeds), how often each
method bought each seller (30/60/90 % noise), and the wall time per round split into training /
evaluation / overhead. Only seeds whose arms all finished are summarised (the run can be resumed later).

    nohup .venv/bin/python eval/conjoint_compare.py --seeds 0 1 2 --out runs/conjoint-compare > log 2>&1 &
    .venv/bin/python eval/conjoint_compare.py --out runs/conjoint-compare --summary-only [--also runs/demo]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]


def frames(run_dirs: list[Path]) -> dict:
    """The ledgers' metrics / timings / purchases / candidates frames of several run directories, concatenated."""
    import pandas as pd

    from procure.pipeline.report import summarize

    parts = [summarize(d)["_frames"] for d in run_dirs]
    return {k: pd.concat([p[k] for p in parts], ignore_index=True) for k in parts[0]}


def summary(f: dict) -> str:
    """The README tables over every finished seed of ``frames(...)`` (one or more run directories of the same
    recipe, other seeds; e.g. the `make demo` run of seed 0 plus a run of seeds 1 and 2)."""
    import pandas as pd

    from procure.pipeline.report import md_table

    m, tm = f["metrics"], f["timings"]
    rounds = int(m["round"].max())
    complete = m[m["round"] == rounds].groupby("seed")["method"].nunique()
    seeds = sorted(complete[complete == m["method"].nunique()].index)
    if not seeds:
        return "no seed has finished all arms yet\n"
    m = m[m["seed"].isin(seeds)]
    out = [f"Seeds {seeds}, {rounds} rounds, metric = test AvgErr (rating points, lower is better).\n"]
    g = m.groupby(["round", "method"])["metric"].agg(["mean", "std", "min", "max"])
    rows = []
    for r in sorted(m["round"].unique()):
        row = {"round": r}
        for meth in sorted(m["method"].unique()):
            mu, sd, lo, hi = g.loc[(r, meth)]
            sd_txt = "" if pd.isna(sd) else f" ± {sd:.2f}"
            row[meth] = f"{mu:.2f}{sd_txt} [{lo:.2f}, {hi:.2f}]"
        rows.append(row)
    out += ["AvgErr mean ± sd [min, max] over seeds:\n", md_table(pd.DataFrame(rows)), ""]
    per_seed = m.pivot_table(index=["seed", "round"], columns="method", values="metric").reset_index()
    out += ["Per seed (test AvgErr):\n", md_table(per_seed, ".3f"), ""]
    p, c = f["purchases"], f["candidates"]
    p = p[p["seed"].isin(seeds)].merge(c[["arm", "round", "seller", "noise"]], on=["arm", "round", "seller"])
    picks = p.pivot_table(index="method", columns="noise", values="round", aggfunc="size", fill_value=0)
    noise_levels = sorted(c["noise"].dropna().unique())
    picks = picks.reindex(columns=noise_levels, fill_value=0)  # a column for every seller, bought or not
    picks.columns = [f"bought {int(round(100 * x))}% noise" for x in picks.columns]
    out += ["Purchases by the seller's noise share (counts over rounds x seeds):\n"]
    out += [md_table(picks.reset_index()), ""]
    tm = tm[tm["seed"].isin(seeds)]
    wide = tm.pivot_table(index=["method", "seed", "round"], columns="phase", values="seconds").reset_index()
    for ph in ("train", "eval", "value"):
        if ph not in wide:
            wide[ph] = 0.0
    wide["overhead"] = wide["total"] - wide["train"] - wide["eval"] - wide["value"]
    t = wide.groupby("method")[["total", "train", "eval", "overhead"]].mean()
    allr = wide[["total", "train", "eval", "overhead"]].sum()
    t.loc["all rounds (sum)"] = allr
    t["overhead %"] = 100 * t["overhead"] / t["total"].where(t["total"] > 0)
    out += [
        "Wall time per round in seconds (mean over rounds and seeds; shared coalition states are paid by the "
        "first arm that needs them, so LOO and random look cheaper than alone):\n"
    ]
    out += [md_table(t.reset_index().rename(columns={"index": "method"}), ".1f"), ""]
    return "\n".join(out)


def plot(f: dict, path: Path) -> None:
    """Test AvgErr per round per method over all seeds: mean line, min-max band (the report's plot)."""
    from procure.pipeline.report import plot_metric_per_round

    m = f["metrics"]
    by_round = m.groupby(["method", "round"])["metric"].agg(["mean", "min", "max"]).reset_index()
    seeds = ", ".join(str(int(x)) for x in sorted(m["seed"].unique()))
    title = f"conjoint, seeds {seeds}: mean and min-max band"
    plot_metric_per_round(by_round, path, ylabel="test AvgErr (lower is better)", title=title)


def run_recipe_file(recipe: str, out: Path, seeds: list[int] | None = None, rounds: int | None = None) -> None:
    """Run (or resume, when ``out`` holds its ledger) a recipe file into ``out``, optionally with other seeds or
    rounds (a resume must keep the ones it started with)."""
    import yaml

    from procure.pipeline.loop import run_recipe
    from procure.pipeline.recipe import parse_recipe

    data = yaml.safe_load(Path(recipe).read_text())
    if seeds:
        data["seeds"] = seeds
    if rounds:
        data["rounds"] = rounds
    run_recipe(parse_recipe(data, recipe), out, resume=(out / "ledger.sqlite").exists())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default=str(ROOT / "recipes" / "conjoint-ads.yaml"))
    ap.add_argument("--seeds", type=int, nargs="*", default=None)
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--out", default=str(ROOT / "runs" / "conjoint-compare"))
    ap.add_argument("--summary-only", action="store_true")
    ap.add_argument("--also", nargs="*", default=[], help="more run directories of the same recipe (other seeds)")
    args = ap.parse_args()
    out = Path(args.out)
    if not args.summary_only:
        run_recipe_file(args.recipe, out, seeds=args.seeds, rounds=args.rounds)
    f = frames([out, *map(Path, args.also)])
    text = summary(f)
    plot(f, out / "metric_per_round.png")
    (out / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
