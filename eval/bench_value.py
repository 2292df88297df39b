"""Benchmark ``procure value`` on prompt/response rows with SmolLM2-135M on this CPU.

1. Rows per second per method (bm25, constant, random, infl-ip, datainf, tracin over 2 checkpoints, loo, ads),
   wall and CPU seconds of ``procure.annotations.value.value_annotations`` (what the CLI runs; model loading
   included), on two planted-annotator data sets (:mod:`procure.annotations.planted`): ``conjoint`` (ratings from
   true vs noisy / biased part-worths, ~95 tokens per row) and ``choice`` (multiple-choice arithmetic with a share
   of wrong letters, ~75 tokens per row).
2. The gradient cache: the first gradient method cold (empty cache) against a re-run and a second method.
3. The planted-annotator AUC per method: finding the bad annotators (low per-source value = bad) and the bad
   rows (low per-row value = bad); 0.5 = chance.
4. 2,000 rows of ~100 tokens with DataInf: extrapolated from the measured per-row gradient time (the floor is
   the per-sample gradients) plus the DataInf pass measured on 2,000 random gradients of SmolLM2's LoRA shapes;
   the phase ``full`` runs the 2,000 rows for real. The ``--lora-layers 4`` lever is timed on the same rows.
5. (phase ``large``) the gradient and text methods' AUC on larger planted sets (12 annotators x 12 rows).

The caches (gradients, coalition utilities) live in a fresh folder so that "cold" is cold; converted models are
shared with ``~/.cache/procure``. Writes eval/results/value_bench.json and eval/results/value_bench_auc.png.
Run: ``HF_HUB_OFFLINE=1 .venv/bin/python eval/bench_value.py [--phases large,methods,rate,full] [--merge]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RESULTS = Path(__file__).resolve().parent / "results"
OUT = RESULTS / "value_bench.json"


def _load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def _private_cache(model: str) -> Path:
    """A fresh PROCURE_CACHE whose models/ and tokenizers/ point at the user's converted ones."""
    from procure.cache import cache_dir
    from procure.llm.models import resolve_model

    resolve_model(model)  # converted once in the user's cache
    real = cache_dir()
    tmp = Path(tempfile.mkdtemp(prefix="procure-bench-value-"))
    for sub in ("models", "tokenizers"):
        os.symlink(real / sub, tmp / sub)
    os.environ["PROCURE_CACHE"] = str(tmp)
    return tmp


def _timed(fn):
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t, time.process_time() - c


def _checkpoints(folder: Path, seed: int, model: str) -> list[str]:
    """Two LoRA checkpoints of SmolLM2 (the buyer's earlier stages): A1 on 16 true-rated conjoint rows, A2
    continuing A1 on 16 more (r 8, q/v, 1 epoch, lr 1e-3)."""
    from procure.annotations.planted import planted_conjoint
    from procure.llm.train import StageTrainer, TrainConfig

    rows = [
        {"prompt": r["prompt"], "answer": r["response"], "system": r["system"]}
        for r in planted_conjoint(1, 32, n_noisy=0, n_biased=0, seed=seed + 100).rows
    ]
    cfg = TrainConfig(epochs=1, lr=1e-3, batch_size=8, lora_r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    tr = StageTrainer(model, cfg)
    a1 = tr.train(rows[:16], folder / "A1", progress=False).adapter_dir
    a2 = tr.train(rows[16:], folder / "A2", init_adapter=a1, progress=False).adapter_dir
    return [str(a1), str(a2)]


def _data(kind: str, rows: int, seed: int):
    from procure.annotations.data import Annotations
    from procure.annotations.planted import planted_choice, planted_conjoint, planted_facts

    if kind == "conjoint":
        p = planted_conjoint(6, rows, n_noisy=1, n_biased=1, reference_size=16, seed=seed)
    elif kind == "facts":
        p = planted_facts(6, rows, n_bad=2, bad_wrong=0.6, good_wrong=0.05, reference_size=16, seed=seed)
    else:
        p = planted_choice(6, rows, n_bad=2, bad_wrong=0.6, good_wrong=0.05, reference_size=16, seed=seed)
    delivery = {a: 1 + i // 2 for i, a in enumerate(p.annotators)}  # 3 deliveries of 2 annotators (ADS sigma)

    def ann(rs, players=True):
        out = Annotations(
            [{"prompt": r["prompt"], "answer": r["response"], "system": r["system"]} for r in rs],
            [r.get("id", str(k)) for k, r in enumerate(rs)],
            [r.get("annotator", "all") for r in rs],
        )
        if players:
            out.groups, out.group_order = [delivery[r["annotator"]] for r in rs], [1, 2, 3]
        return out

    return p, ann(p.rows), ann(p.reference, players=False)


def _auc(res, p) -> dict:
    from procure.valuation.quality import auc

    bad_src = [s in set(p.bad_annotators) for s in res.sources["source"]]
    bad_rows = [r["bad_row"] for r in p.rows]
    return {
        "auc_annotators": auc(-res.sources["value"].to_numpy(), bad_src),
        "auc_rows": auc(-res.rows["value"].to_numpy(), bad_rows),
    }


def _method_runs(kind: str, args, ckpts: list[str], log) -> list[dict]:
    from procure.annotations.value import ValueOptions, value_annotations
    from procure.valuation.estimate import Budget

    p, data, ref = _data(kind, args.rows, args.seed)
    runs = [
        ("bm25", "bm25", {}),
        ("constant", "constant", {}),
        ("random", "random", {}),
        ("infl-ip (cold)", "infl_ip", {}),
        ("infl-ip (re-run, cached)", "infl_ip", {}),
        ("datainf (cached grads)", "datainf", {}),
    ]
    if kind == "conjoint":
        runs += [
            ("tracin (A1, A2)", "tracin", {"adapters": ckpts}),
            ("infl-ip @A2 (cached)", "infl_ip", {"adapters": ckpts[1:]}),
            ("datainf @A2 (cached)", "datainf", {"adapters": ckpts[1:]}),
        ]
    runs += [("loo", "loo", {}), ("ads (3 deliveries x 2)", "ads", {})]
    out = []
    for label, method, extra in runs:
        opts = ValueOptions(
            model=args.model,
            budget=Budget(exact_max=10),
            train={"epochs": 1.0, "lr": 1e-3, "batch_size": 8},
            progress=False,
            seed=args.seed,
            **extra,
        )
        res, wall, cpu = _timed(lambda m=method, o=opts: value_annotations(m, data, ref, o))
        rec = {
            "kind": kind,
            "run": label,
            "method": method,
            "rows": len(data),
            "reference_rows": len(ref),
            "wall_s": round(wall, 2),
            "cpu_s": round(cpu, 2),
            "rows_per_s": round(len(data) / wall, 3),
            "note": res.note,
            **(
                {}
                if res.stats is None
                else {"grads_computed": res.stats.computed_rows, "grads_cached": res.stats.cached_rows}
            ),
            **({"coalitions": len(res.coalitions), **res.detail} if res.coalitions is not None else {}),
            **_auc(res, p),
        }
        out.append(rec)
        log(rec)
    return out


def _large_runs(kind: str, args, ckpts: list[str], log) -> None:
    """The gradient and text methods (cheap per row) on a larger planted set: ``args.large`` annotators x
    ``args.large`` rows (a third of them bad), 32 reference rows; at a fresh LoRA and, for conjoint, at A2."""
    from procure.annotations.data import Annotations
    from procure.annotations.planted import planted_choice, planted_conjoint, planted_facts
    from procure.annotations.value import ValueOptions, value_annotations

    n, bad = args.large, max(2, args.large // 3)
    if kind == "conjoint":
        p = planted_conjoint(n, n, n_noisy=bad // 2, n_biased=bad - bad // 2, reference_size=32, seed=args.seed + 1)
    elif kind == "facts":
        p = planted_facts(n, n, n_bad=bad, bad_wrong=0.6, good_wrong=0.05, reference_size=32, seed=args.seed + 1)
    else:
        p = planted_choice(n, n, n_bad=bad, bad_wrong=0.6, good_wrong=0.05, reference_size=32, seed=args.seed + 1)

    def rows(rs):
        return [{"prompt": r["prompt"], "answer": r["response"], "system": r["system"]} for r in rs]

    data = Annotations(rows(p.rows), [r["id"] for r in p.rows], [r["annotator"] for r in p.rows])
    ref = Annotations(rows(p.reference), [str(k) for k in range(len(p.reference))], ["all"] * len(p.reference))
    runs = [("bm25", "bm25", ()), ("random", "random", ()), ("infl-ip", "infl_ip", ()), ("datainf", "datainf", ())]
    if kind == "conjoint":
        runs += [("infl-ip @A2", "infl_ip", ckpts[1:]), ("datainf @A2", "datainf", ckpts[1:])]
    for label, method, adapters in runs:
        opts = ValueOptions(model=args.model, adapters=adapters, progress=False, seed=args.seed)
        res, wall, cpu = _timed(lambda m=method, o=opts: value_annotations(m, data, ref, o))
        log(
            {
                "kind": f"{kind}-large",
                "run": label,
                "method": method,
                "rows": len(data),
                "annotators": n,
                "bad_annotators": len(p.bad_annotators),
                "reference_rows": len(ref),
                "wall_s": round(wall, 2),
                "cpu_s": round(cpu, 2),
                "rows_per_s": round(len(data) / wall, 3),
                "note": res.note,
                **_auc(res, p),
            }
        )


def _skill(model: str, seed: int, n: int = 64) -> dict:
    """How well the model itself answers the planted multiple-choice questions: the share of n questions whose
    correct "Answer: X" is the most likely of the four (letter likelihood, HF backend). Near 0.25 means a wrong
    letter is no more surprising to it than a right one."""
    import numpy as np

    from procure.annotations.planted import planted_choice
    from procure.llm.generate import make_generator
    from procure.llm.models import resolve_model

    p = planted_choice(1, n, n_bad=0, good_wrong=0.0, reference_size=1, seed=seed + 3)
    letters = [r["response"] for r in p.rows]
    choices = sorted(set(letters) | {f"Answer: {c}" for c in "ABCD"})
    with make_generator(resolve_model(model), backend="hf") as g:
        lp = g.choice_logprobs([r["prompt"] for r in p.rows], choices, None, system=p.rows[0]["system"])
    acc = float(np.mean([choices[i] == a for i, a in zip(lp.argmax(axis=1), letters)]))
    return {"questions": n, "letter_accuracy": round(acc, 3), "chance": 0.25}


def _datainf_pass(n: int) -> float:
    """Seconds of the DataInf pass alone on n random gradients of SmolLM2's LoRA r=8 q/v shapes."""
    import torch

    from procure.valuation.influence import datainf

    gen = torch.Generator().manual_seed(0)
    train, val = {}, {}
    for layer in range(30):
        for mod, d_out in (("q_proj", 576), ("v_proj", 192)):
            name = f"base_model.model.model.layers.{layer}.self_attn.{mod}"
            for kind, shape in (("A", (8, 576)), ("B", (d_out, 8))):
                train[f"{name}.lora_{kind}.default.weight"] = torch.randn(n, *shape, generator=gen)
                val[f"{name}.lora_{kind}.default.weight"] = torch.randn(*shape, generator=gen)
    t = time.perf_counter()
    datainf(train, val)
    return time.perf_counter() - t


def _grad_rate(layers: int | None, n: int, seed: int, model: str) -> dict:
    """Per-row gradient seconds of n conjoint rows (~95 tokens) at a fresh LoRA (all layers or the last ``layers``)."""
    from procure.annotations.planted import planted_conjoint
    from procure.llm.grad_store import GradientStore, LoraSpec
    from procure.llm.models import load_tokenizer, resolve_model

    path = resolve_model(model)
    p = planted_conjoint(4, n // 4, seed=seed + 7)
    rows = [{"prompt": r["prompt"], "answer": r["response"], "system": r["system"]} for r in p.rows]
    store = GradientStore(
        path, load_tokenizer(path), LoraSpec(layers=layers), max_length=256, progress=False, cache=False
    )
    _, wall, cpu = _timed(lambda: store.per_sample(None, rows))
    return {
        "layers": layers or "all",
        "rows": len(rows),
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "s_per_row": round(wall / len(rows), 3),
        "cpu_s_per_row": round(cpu / len(rows), 3),
    }


def _full_2000(seed: int, model: str) -> dict:
    """2,000 conjoint rows from 20 annotators (3 noisy, 3 biased) against 200 reference rows, DataInf, cold."""
    from procure.annotations.data import Annotations
    from procure.annotations.planted import planted_conjoint
    from procure.annotations.value import ValueOptions, value_annotations

    p = planted_conjoint(20, 100, n_noisy=3, n_biased=3, reference_size=200, seed=seed + 1)

    def rows(rs):
        return [{"prompt": r["prompt"], "answer": r["response"], "system": r["system"]} for r in rs]

    data = Annotations(rows(p.rows), [r["id"] for r in p.rows], [r["annotator"] for r in p.rows])
    ref = Annotations(rows(p.reference), [str(k) for k in range(200)], ["all"] * 200)
    opts = ValueOptions(model=model, progress=True)
    res, wall, cpu = _timed(lambda: value_annotations("datainf", data, ref, opts))
    return {
        "rows": 2000,
        "reference_rows": 200,
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "note": res.note,
        **_auc(res, p),
    }
    return {"rows": 2000, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "note": res.note}


def _plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(dict.fromkeys(r["kind"] for r in records))
    cols = min(2, len(kinds))
    rows = (len(kinds) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4 * rows), sharey=True, squeeze=False)
    axes = axes.ravel()
    for ax in axes[len(kinds) :]:
        ax.axis("off")
    for ax, kind in zip(axes, kinds):
        recs = [r for r in records if r["kind"] == kind and "re-run" not in r["run"]]
        labels = [r["run"].replace(" (cold)", "").replace(" (cached)", "") for r in recs]
        x = range(len(recs))
        ax.bar([i - 0.2 for i in x], [r["auc_annotators"] for r in recs], 0.4, label="bad annotators")
        ax.bar([i + 0.2 for i in x], [r["auc_rows"] for r in recs], 0.4, label="bad rows")
        ax.axhline(0.5, color="k", lw=0.6, ls="--")
        ax.set_xticks(list(x), labels, rotation=45, ha="right", fontsize=8)
        size = f"{recs[0].get('annotators', 6)} annotators, {recs[0]['rows']} rows" if recs else ""
        ax.set_title(f"planted {kind} ({size}): AUC of low value = bad", fontsize=9)
    axes[0].set_ylabel("AUC")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


PHASES = ("large", "methods", "rate", "full", "skill")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=6, help="rows per annotator (6 annotators per data set)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sample", type=int, default=32, help="rows of the per-row gradient timing")
    ap.add_argument("--large", type=int, default=12, help="annotators (and rows each) of the larger AUC sets")
    ap.add_argument(
        "--phases",
        default="large,methods,rate,skill",
        help=f"comma-separated, from {','.join(PHASES)} (full: value 2,000 conjoint rows with DataInf for real)",
    )
    ap.add_argument("--merge", action="store_true", help="add to the results already in --out")
    ap.add_argument("--kinds", default="conjoint,choice")
    ap.add_argument("--model", default="smollm2-135m", help="tiny: a smoke test of this script")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    phases = [x for x in args.phases.split(",") if x]
    if set(phases) - set(PHASES):
        ap.error(f"--phases: unknown {sorted(set(phases) - set(PHASES))}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    cache = _private_cache(args.model)
    result: dict = {"runs": []}
    if args.merge and Path(args.out).is_file():
        result = json.loads(Path(args.out).read_text())
    result[f"load_start_{'_'.join(phases)}"] = _load()
    result.setdefault("args", {})["_".join(phases)] = vars(args)

    def save() -> None:
        Path(args.out).write_text(json.dumps(result, indent=1))

    def log(rec: dict) -> None:
        result["runs"].append(rec)
        save()
        print(
            json.dumps({k: rec[k] for k in ("kind", "run", "wall_s", "rows_per_s", "auc_annotators", "auc_rows")}),
            flush=True,
        )

    ckpts: list[str] = []
    kinds = args.kinds.split(",")
    if ("large" in phases or "methods" in phases) and "conjoint" in kinds:  # A1, A2: the conjoint runs only
        (ckpts, wall, cpu) = _timed(lambda: _checkpoints(cache / "ckpt", args.seed, args.model))
        result["checkpoints"] = {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1)}
    if "large" in phases:
        result["runs"] = [r for r in result["runs"] if r["kind"] not in {f"{k}-large" for k in kinds}]
        for kind in kinds:
            _large_runs(kind, args, ckpts, log)
        result["load_after_large"] = _load()
        save()
    if "methods" in phases:
        result["runs"] = [r for r in result["runs"] if r["kind"] not in kinds]
        for kind in kinds:
            _method_runs(kind, args, ckpts, log)
            result[f"load_after_{kind}"] = _load()
            save()
    if "rate" in phases:
        result["grad_rate"] = [
            _grad_rate(n, args.sample, args.seed, args.model) for n in (None, 4 if args.model != "tiny" else 1)
        ]
        save()
        result["datainf_pass_2000_s"] = round(_datainf_pass(2000), 2)
        result["extrapolated_2000"] = {
            f"layers_{g['layers']}": round((2000 + 200) * g["s_per_row"] + result["datainf_pass_2000_s"], 1)
            for g in result["grad_rate"]
        }
        save()
    if "full" in phases:
        result["full_2000"] = _full_2000(args.seed, args.model)
    if "skill" in phases:
        result["choice_skill"] = _skill(args.model, args.seed)
    result[f"load_end_{'_'.join(phases)}"] = _load()
    save()
    _plot(result["runs"], Path(args.out).with_name(Path(args.out).stem + "_auc.png"))
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))


if __name__ == "__main__":
    main()
