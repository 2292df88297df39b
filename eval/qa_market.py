"""The staged QA market for real (issue 14): ``recipes/qa-market.yaml`` over several seeds, summarised.

Runs the recipe (resumable) with ``--seeds``, then writes eval/results/qa_market.json and .png:

- per seed, arm and round: test accuracy, money spent (cumulative), what was bought (seller, noise share);
- valuation quality that does not depend on a fine-tune, per method and round, at the state the arm had
  (A_{t-1}): the AUC of the method's per-row values for telling injected wrong-answer rows from clean ones
  (BM25 with both idf variants), and the Spearman correlation of the per-row values with the one-step oracle
  of seeds/004 (appendix Eqs. 18-19, Figure 7: the paper reports 0.54 / 0.42 for Infl_IP on MathQA / PIQA),
  computed on ``--oracle-reference`` rows of the representative set.

Per-row values are recomputed from the run's own inputs: the candidates and states in the ledger, the
gradients from the disk cache the run filled (:mod:`procure.llm.grad_store`), so nothing is computed twice.

    nohup .venv/bin/python eval/qa_market.py --seeds 0 1 2 > qa_market.log 2>&1 &
    .venv/bin/python eval/qa_market.py --summary-only
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


def row_values(
    method: str, rows: list[dict], reference: list[dict], grads, seed: int, seller_noise=None
) -> dict[str, Any]:
    """{variant: per-row values} of one method on one round's rows (the pipeline's own inputs); ``noise_oracle``
    gives each row its seller's known clean share (``1 - seller_noise``, one entry per row)."""
    import numpy as np

    from procure.valuation.bm25 import bm25_values
    from procure.valuation.estimate import GradData, estimate

    if method == "bm25":
        texts = [f"{r['prompt']} {r['answer']}" for r in rows]
        ref = [f"{r['prompt']} {r['answer']}" for r in reference]
        return {"bm25": bm25_values(texts, ref), "bm25-clamp": bm25_values(texts, ref, idf="clamp")}
    if method in ("infl_ip", "datainf"):
        return {method: estimate(method, GradData(*grads)).values}
    if method in ("constant", "random"):
        return {method: estimate(method, len(rows), seed=seed).values}
    if method == "noise_oracle" and seller_noise is not None:
        return {method: 1.0 - np.asarray(seller_noise, dtype=float)}
    return {method: np.full(len(rows), np.nan)}


def quality(
    run_dir: Path, recipe, oracle_reference: int, lr: float | None, oracle_methods: list[str]
) -> list[dict[str, Any]]:
    """AUC (wrong-letter rows) for every arm and round, and Spearman with the one-step oracle (module docstring)
    at round 1 (one shared state A_0 per seed, so every method) and at later rounds for ``oracle_methods`` only:
    the oracle costs (rows x oracle_reference) forward passes per state, ~3 min a state on this CPU."""
    import numpy as np
    from scipy.stats import spearmanr

    from procure.pipeline.backends import LLMLearner
    from procure.pipeline.ledger import Ledger
    from procure.pipeline.scenarios import make_scenario
    from procure.pipeline.steps import derive_seed
    from procure.valuation.quality import auc

    learner = LLMLearner(recipe)
    out, oracles, scenarios = [], {}, {}
    with Ledger.open(run_dir / "ledger.sqlite", create=False) as led:
        nodes = {n["node"]: n for n in led.rows("nodes")}
        states = {(m["arm"], m["round"]): m["node"] for m in led.rows("metrics")}
        steps = {s["key"]: s for s in led.rows("steps")}
        for (arm, t), _ in sorted(states.items()):
            if t == 0 or f"cand|s{arm.rsplit('-s', 1)[1]}|{t}" not in steps:
                continue
            method, seed = arm.rsplit("-s", 1)[0], int(arm.rsplit("-s", 1)[1])
            cands = json.loads(steps[f"cand|s{seed}|{t}"]["payload"])
            rows = [e for c in cands for e in c["examples"]]
            seller_noise = [c.get("noise") for c in cands for _ in c["examples"]]
            if seed not in scenarios:  # one scenario (and one read of the QA source) per seed
                scenarios[seed] = make_scenario(recipe, seed)
            scen = scenarios[seed]
            clean = _clean_flags(scen, t, rows)
            adapter = nodes[states[(arm, t - 1)]]["adapter"]
            state = None if adapter is None else run_dir / adapter
            reference = scen.reference_examples()
            grads = None
            if method in ("infl_ip", "datainf"):
                grads = learner.grads(state, rows, reference, derive_seed(seed, t, "grads"))
            key = (str(state), t, seed)
            if oracle_reference and key not in oracles and (t == 1 or method in oracle_methods):
                fresh_seed = derive_seed(seed, t, "grads")  # the fresh LoRA of the run's own gradients
                oracles[key] = _oracle(recipe, state, rows, reference[:oracle_reference], lr, fresh_seed)
            noise = None if None in seller_noise else seller_noise
            for variant, v in row_values(method, rows, reference, grads, derive_seed(seed, t, "random"), noise).items():
                o = oracles.get(key)
                rho = float(spearmanr(v, o).statistic) if o is not None and np.ptp(v) > 0 else float("nan")
                row = {"arm": arm, "seed": seed, "round": t, "method": variant, "auc": auc(v, clean)}
                out.append({**row, "spearman_oracle": rho})
                print(json.dumps(out[-1]), flush=True)
    learner.close()
    return out


def test_scores(run_dir: Path, recipe) -> dict[str, dict[str, float]]:
    """{"arm|round": QAEval.letter_scores} of every arm's state after every round on the seed's test split
    (accuracy, balanced accuracy, answer nll), by answer-letter likelihood with the HF backend. The ledger keeps
    accuracy only; the other two say whether a model learned more than the majority label (balanced accuracy
    1 / letters for a model that always picks one) and how much probability it puts on the right letter.
    Cached in ``run_dir/test_scores.json`` (one entry per seed and state, written as it goes)."""
    from procure.cache import write_json_atomically
    from procure.llm.hf_backend import HFGenerator
    from procure.llm.models import resolve_model
    from procure.pipeline.ledger import Ledger
    from procure.pipeline.scenarios import make_scenario

    cache_file = run_dir / "test_scores.json"
    cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}  # "seed|node": scores
    with Ledger.open(run_dir / "ledger.sqlite", create=False) as led:
        nodes = {n["node"]: n for n in led.rows("nodes")}
        todo = [(m["arm"], m["round"], m["node"]) for m in led.rows("metrics") if m["split"] == "test"]
    gen, tasks, out = None, {}, {}
    for arm, t, node in sorted(todo):
        seed = int(arm.rsplit("-s", 1)[1])
        state = f"{seed}|{node}"  # the arms of a seed share round 0's state
        if state not in cache:
            if seed not in tasks:
                tasks[seed] = make_scenario(recipe, seed).task("test")
            task = tasks[seed]
            adapter = nodes[node]["adapter"]
            gen = gen or HFGenerator(resolve_model(recipe.model), adapter_mode="merged")
            path = None if adapter is None else str(run_dir / adapter)
            lp = gen.choice_logprobs(task.eval_prompts(), task.choices(), path, system=task.system)
            cache[state] = task.letter_scores(lp)
            write_json_atomically(cache_file, cache)
            print(json.dumps({"arm": arm, "round": t, **cache[state]}), flush=True)
        out[f"{arm}|{t}"] = cache[state]
    if gen is not None:
        gen.close()
    return out


def _clean_flags(scen, t: int, rows: list[dict]):
    """Which of round t's ledger rows carry their true answer (the scenario redraws the round's offers, with the
    per-row ``noisy`` flags the ledger does not keep; checked row by row against the ledger)."""
    import numpy as np

    offered = [r for seller in scen.market.offers(t) for r in seller]
    if [(r["prompt"], r["answer"]) for r in offered] != [(r["prompt"], r["answer"]) for r in rows]:
        raise RuntimeError(f"round {t}: the scenario's offers differ from the ledger's candidates")
    return ~np.array([bool(r["noisy"]) for r in offered])


def _oracle(recipe, state, rows, reference, lr, fresh_seed: int):
    """seeds/004's one-step oracle of every row at ``state`` (None: the recipe's fresh LoRA), float64 (n,)."""
    import torch
    from peft import PeftModel

    from procure.llm.grads import one_step_oracle
    from procure.llm.models import load_model, load_tokenizer, resolve_model
    from procure.llm.train import add_lora
    from procure.pipeline.recipe import train_config

    path = resolve_model(recipe.model)
    base = load_model(path, dtype="float32")
    t = train_config(recipe)  # the recipe's training section with TrainConfig's defaults filled in
    if state is None:
        torch.manual_seed(fresh_seed)
        model = add_lora(base, t.lora_r, t.lora_alpha, t.target_modules)
    else:
        model = PeftModel.from_pretrained(base, str(state), is_trainable=True)
    step = lr if lr is not None else t.lr
    tok = load_tokenizer(path)
    return one_step_oracle(model, tok, rows, reference, lr=step, max_length=t.max_length).numpy()


def summary(run_dir: Path, q: list[dict[str, Any]], scores: dict | None = None) -> dict[str, Any]:
    """Accuracy against money, purchases, and the valuation-quality table (mean over seeds per method and round);
    ``scores`` (:func:`test_scores`) adds each state's balanced accuracy and answer nll."""
    import pandas as pd
    from summary_stats import stat

    from procure.pipeline.report import summarize

    f = summarize(run_dir)["_frames"]
    m = f["metrics"][f["metrics"]["split"] == "test"].sort_values(["arm", "round"]).copy()
    m["spent_cumulative"] = m.groupby("arm")["spent"].cumsum().fillna(0.0)
    per_arm = [
        {
            **_ids(r),
            "accuracy": float(r["metric"]),
            "spent_cumulative": float(r["spent_cumulative"]),
            **{
                k: v
                for k, v in (scores or {}).get(f"{r['arm']}|{int(r['round'])}", {}).items()
                if k in ("balanced_accuracy", "nll")
            },
        }
        for _, r in m.iterrows()
    ]
    p = f["purchases"].merge(f["candidates"][["arm", "round", "seller", "noise"]], on=["arm", "round", "seller"])
    bought = [{**_ids(r), "seller": int(r["seller"]), "noise": float(r["noise"])} for _, r in p.iterrows()]
    qf = pd.DataFrame(q)
    table = []
    if len(qf):
        for (method, t), g in qf.groupby(["method", "round"]):
            table.append(
                {
                    "method": method,
                    "round": int(t),
                    "auc": float(g["auc"].mean()),
                    "spearman_oracle": float(g["spearman_oracle"].mean()),
                    "n": int(len(g)),
                    "auc_stat": stat(g["auc"]),
                    "spearman_stat": stat(g["spearman_oracle"].dropna()),
                }
            )
    return {
        "metrics": per_arm,
        "purchases": bought,
        "quality": q,
        "quality_table": table,
        "paired": paired(per_arm, bought),
    }


def _ids(r) -> dict[str, Any]:
    """The arm, method, seed and round of a row of the run's metrics or purchases frame."""
    return {"arm": r["arm"], "method": r["method"], "seed": int(r["seed"]), "round": int(r["round"])}


def paired(per_arm: list[dict[str, Any]], bought: list[dict[str, Any]]) -> dict[str, Any]:
    """Per method and round over the seeds that finished every arm: test accuracy, cumulative money, the mean
    wrong-letter share of what was bought, and the paired difference in accuracy from ``random`` (same seed,
    same offers) with a bootstrap interval (eval/summary_stats.py); the same for balanced accuracy and answer nll
    where every arm has them."""
    import pandas as pd
    from summary_stats import stat

    m = pd.DataFrame(per_arm)
    if m.empty:
        return {}
    last = int(m["round"].max())
    full = m[m["round"] == last].groupby("seed")["method"].nunique()
    seeds = sorted(int(s) for s in full[full == m["method"].nunique()].index)
    m = m[m["seed"].isin(seeds)]
    b = pd.DataFrame(bought)
    scores = [k for k in ("accuracy", "balanced_accuracy", "nll") if k in m and m[k].notna().all()]
    val = {(r.method, r.seed, r.round): r for r in m.itertuples()}
    out: dict[str, Any] = {"seeds": seeds}
    for method in sorted(m["method"].unique()):
        g = m[m["method"] == method]
        rows = {}
        for t in range(last + 1):
            cell = {k: stat(g[g["round"] == t][k]) for k in [*scores, "spent_cumulative"]}
            if t > 0 and not b.empty:
                bb = b[(b["method"] == method) & (b["round"] <= t) & b["seed"].isin(seeds)]
                cell["bought_wrong_share"] = float(bb["noise"].mean()) if len(bb) else float("nan")
            if method != "random" and ("random", seeds[0], t) in val:
                for k in scores:
                    d = [getattr(val[(method, s, t)], k) - getattr(val[("random", s, t)], k) for s in seeds]
                    cell["minus_random" if k == "accuracy" else f"{k}_minus_random"] = stat(d)
            rows[str(t)] = cell
        out[method] = rows
    return out


def plot(res: dict[str, Any], dest: Path) -> None:
    """Test accuracy against cumulative money spent (mean over seeds per round), and AUC per method and round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    m = pd.DataFrame(res["metrics"])
    q = pd.DataFrame(res["quality_table"])
    names = sorted(set(m["method"]) | (set(q["method"]) if len(q) else set()))
    color = {n: f"C{i % 10}" for i, n in enumerate(names)}  # one colour per method in both panels
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4))
    for method, g in m.groupby("method"):
        mean = g.groupby("round")[["spent_cumulative", "accuracy"]].mean()
        ax.plot(mean["spent_cumulative"], mean["accuracy"], marker="o", label=method, color=color[method])
    ax.set_xlabel("money spent (cumulative)")
    ax.set_ylabel("test accuracy (mean over seeds)")
    ax.legend()
    if len(q):
        for method, g in q.groupby("method"):
            bx.plot(g["round"], g["auc"], marker="o", label=method, color=color[method])
        bx.set_xticks(sorted(q["round"].unique()))
        bx.axhline(0.5, color="grey", lw=0.8)
        bx.set_xlabel("round")
        bx.set_ylabel("AUC: clean vs wrong-letter rows")
        bx.legend()
    fig.tight_layout()
    fig.savefig(dest, dpi=110)
    plt.close(fig)


def main() -> None:
    from procure.cache import write_json_atomically
    from procure.pipeline.loop import run_recipe
    from procure.pipeline.recipe import load_recipe

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "qa-market.yaml")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=Path.home() / ".cache/procure/runs/qa-market")
    ap.add_argument("--results", type=Path, default=ROOT / "eval" / "results" / "qa_market.json")
    ap.add_argument("--oracle-reference", type=int, default=16, help="reference rows of the oracle (0: no oracle)")
    ap.add_argument("--oracle-lr", type=float, default=None, help="oracle step size (default: the recipe's lr)")
    ap.add_argument(
        "--oracle-methods",
        nargs="*",
        default=[],
        help="arms whose later-round states also get the one-step oracle (round 1's shared state A_0 always does, "
        "for every arm); each state costs rows x --oracle-reference forward passes, ~3 min on 2 cores",
    )
    ap.add_argument("--summary-only", action="store_true")
    args = ap.parse_args()
    recipe = load_recipe(args.recipe).model_copy(update={"seeds": args.seeds})
    if not args.summary_only:
        run_recipe(recipe, args.out, resume=args.out.exists())
    q = _cached(
        args.out / "quality.json",
        [args.oracle_reference, args.oracle_lr, sorted(args.oracle_methods), sorted(recipe.seeds)],
        lambda: quality(args.out, recipe, args.oracle_reference, args.oracle_lr, args.oracle_methods),
    )
    res = summary(args.out, q, test_scores(args.out, recipe))
    args.results.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomically(args.results, res)
    plot(res, args.results.with_suffix(".png"))
    print("\n| method | round | AUC clean vs wrong | Spearman with one-step oracle | arms |")
    print("|---|---:|---:|---:|---:|")
    for r in res["quality_table"]:
        print(f"| {r['method']} | {r['round']} | {r['auc']:.3f} | {r['spearman_oracle']:.3f} | {r['n']} |")
    pr = res["paired"]
    n_seeds = len(pr.get("seeds", []))
    print(f"\n| method | round | accuracy ({n_seeds} seeds) | money spent | wrong share bought | minus random [95 %] |")
    print("|---|---:|---:|---:|---:|---|")
    for method, rows in pr.items():
        if method == "seeds":
            continue
        for t, c in rows.items():
            d = c.get("minus_random")
            diff = f"{d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]" if d else ""
            print(
                f"| {method} | {t} | {c['accuracy']['mean']:.3f} | {c['spent_cumulative']['mean']:.2f} | "
                f"{c.get('bought_wrong_share', float('nan')):.2f} | {diff} |"
            )
    print("\n| method | round | balanced accuracy | answer nll | nll minus random [95 %] |")
    print("|---|---:|---:|---:|---|")
    for method, rows in pr.items():
        if method == "seeds":
            continue
        for t, c in rows.items():
            if "nll" not in c:
                continue
            d = c.get("nll_minus_random")
            diff = f"{d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]" if d else ""
            print(f"| {method} | {t} | {c['balanced_accuracy']['mean']:.3f} | {c['nll']['mean']:.3f} | {diff} |")


def _cached(path: Path, key: list, compute) -> Any:
    """``compute()``, kept in ``path`` with ``key``: reused while the key (the arguments it depends on) matches."""
    from procure.cache import write_json_atomically

    if path.is_file():
        got = json.loads(path.read_text())
        if got.get("key") == key:
            return got["value"]
    value = compute()
    write_json_atomically(path, {"key": key, "value": value})
    return value


if __name__ == "__main__":
    main()
