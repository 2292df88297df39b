"""Calibrate the conjoint experiment before comparing valuation methods (issue: "an honest, powered answer").

Two questions, answered on SmolLM2-135M on this CPU:

1. Readout. How noisy is test AvgErr as a measurement? For one setting (A_0 = warm-up adapter, then one seller's
   rows at a given noise share), several replicates (data draw and training seed vary together, as between
   the experiment's seeds) are evaluated with three readouts on the test half of the design: ``greedy`` (one
   decoded answer per profile), ``sampled`` (T = 0.7, k answers per profile, the paper's readout) and
   ``expected`` (the probability-weighted rating from the next-token distributions after "Rating: ", one
   forward pass). For ``sampled`` the spread over sampling seeds of one fixed adapter is measured too.
2. Scale. Does a clean seller beat a noisy one by more than that noise? The gap between noise shares, divided
   by the replicate sd, says how many seeds the comparison needs.

Everything is cached under ``--out`` (adapters and a results JSON), so an interrupted run resumes; only the
summary JSON (``eval/results/conjoint_calibration.json``) is meant to be committed.

    .venv/bin/python eval/conjoint_calibrate.py --out runs/calib --replicates 4
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
READOUTS = ("greedy", "sampled", "expected")


def _train_cfg(lr: float, epochs: float, seed: int):
    from procure.llm.train import TrainConfig

    return TrainConfig(
        epochs=epochs,
        lr=lr,
        batch_size=4,
        lora_r=16,
        lora_alpha=32,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        max_length=160,
        bf16=True,
        seed=seed,
    )


def _rows(rows: list[dict]) -> list[dict]:
    return [{"prompt": r["prompt"], "answer": r["answer"], "system": r["system"]} for r in rows]


def evaluate(gen, adapter: Path | None, ev, readout: str, seed: int, k: int) -> float:
    """Test AvgErr of ``adapter`` with one readout (HF generator; see module docstring)."""
    from procure.llm.generate import GenParams

    if readout == "expected":
        first, second = gen.lookahead(ev.eval_prompts(), ev.lookahead_prefix, ev.lookahead_symbols, adapter, ev.system)
        return float(ev.score_lookahead(first, second))
    params = GenParams(max_new_tokens=8, temperature=0.0) if readout == "greedy" else None
    if params is None:
        params = GenParams(max_new_tokens=8, temperature=0.7, n=k, seed=seed)
    return float(ev.score(gen.generate(ev.eval_prompts(), adapter, params, system=ev.system)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/conjoint-calibration")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--world-seed", type=int, default=0)
    ap.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.3, 0.6, 0.9])
    ap.add_argument("--rows", type=int, nargs="+", default=[24], help="rows per seller (settings)")
    ap.add_argument("--lr", type=float, nargs="+", default=[2e-3])
    ap.add_argument("--epochs", type=float, nargs="+", default=[2.0])
    ap.add_argument("--replicates", type=int, default=4)
    ap.add_argument("--warmup-rows", type=int, default=300)
    ap.add_argument("--samples", type=int, default=5, help="answers per profile of the sampled readout")
    ap.add_argument("--sampling-seeds", type=int, default=3, help="sampling seeds for one fixed adapter")
    ap.add_argument("--readouts", nargs="+", default=list(READOUTS), choices=READOUTS)
    ap.add_argument("--summary", default=str(ROOT / "eval" / "results" / "conjoint_calibration.json"))
    args = ap.parse_args()

    import numpy as np
    from tqdm.auto import tqdm

    from procure.cache import build_once
    from procure.llm.generate import make_generator
    from procure.llm.models import resolve_model
    from procure.llm.train import StageTrainer
    from procure.tasks import conjoint

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res_file = out / "results.json"
    results: dict[str, dict] = json.loads(res_file.read_text()) if res_file.is_file() else {}

    def save() -> None:
        tmp = res_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=1, sort_keys=True))
        tmp.replace(res_file)

    model = resolve_model(args.model)
    world = conjoint.ConjointWorld(args.world_seed)
    ev = {
        r: conjoint.ConjointEval(world, seed=0, split="test", readout="expected" if r == "expected" else "generate")
        for r in READOUTS
    }
    trainer = StageTrainer(model, _train_cfg(2e-3, 2.0, 0))
    gen = make_generator(model, backend="hf", adapter_mode="merged", batch_size=32)

    warm = out / f"warm-w{args.world_seed}-n{args.warmup_rows}"
    if not warm.exists():
        rows = conjoint.warmup_rows(world, args.warmup_rows, np.random.default_rng([args.world_seed, 101]))
        build_once(warm, lambda tmp: trainer.train(_rows(rows), tmp, progress=True))

    jobs = [
        (rows, lr, ep, noise, rep)
        for rows in args.rows
        for lr in args.lr
        for ep in args.epochs
        for noise in args.noise
        for rep in range(args.replicates)
    ]
    bar = tqdm(jobs, desc="calibration adapters", unit="adapter")
    for rows, lr, ep, noise, rep in bar:
        key = f"rows{rows}-lr{lr:g}-ep{ep:g}-noise{noise:g}-rep{rep}"
        bar.set_postfix_str(key)
        rec = results.setdefault(key, {"rows": rows, "lr": lr, "epochs": ep, "noise": noise, "rep": rep})
        adapter = out / key
        if not adapter.exists():
            data = conjoint.make_candidates(world, 1, rows, [noise], np.random.default_rng([args.world_seed, rep, 7]))[
                0
            ]
            trainer.cfg = _train_cfg(lr, ep, rep)
            build_once(
                adapter, lambda tmp, data=data: trainer.train(_rows(data), tmp, init_adapter=warm, progress=False)
            )
        for r in args.readouts:
            if r not in rec:
                t0 = time.perf_counter()
                rec[r] = evaluate(gen, adapter, ev[r], r, seed=0, k=args.samples)
                rec[f"{r}_s"] = time.perf_counter() - t0
                save()
    # measurement noise of the sampled readout: sampling seeds of one fixed adapter (the first replicate)
    fixed = {}
    if "sampled" in args.readouts:
        for noise in args.noise:
            key = f"rows{args.rows[0]}-lr{args.lr[0]:g}-ep{args.epochs[0]:g}-noise{noise:g}-rep0"
            rec = results[key]
            vals = rec.setdefault("sampled_by_seed", [rec["sampled"]])
            while len(vals) < args.sampling_seeds:
                vals.append(evaluate(gen, out / key, ev["sampled"], "sampled", seed=len(vals), k=args.samples))
                save()
            fixed[f"{noise:g}"] = vals
    for r in args.readouts:
        if "warm" + r not in results:
            results["warm" + r] = evaluate(gen, warm, ev[r], r, seed=0, k=args.samples)
            save()
    write_summary(results, args, fixed, Path(args.summary))


def write_summary(results: dict, args, fixed: dict, path: Path) -> None:
    """Per setting and readout: mean and sd of test AvgErr over replicates per noise share, the gap between the
    cleanest and noisiest share, gap / pooled sd, and seconds per evaluation."""
    import numpy as np

    table = []
    for rows in args.rows:
        for lr in args.lr:
            for ep in args.epochs:
                for r in READOUTS:
                    by_noise = {}
                    secs = []
                    for noise in args.noise:
                        vals = [
                            results.get(f"rows{rows}-lr{lr:g}-ep{ep:g}-noise{noise:g}-rep{k}", {}).get(r)
                            for k in range(args.replicates)
                        ]
                        vals = [v for v in vals if v is not None]
                        secs += [
                            results.get(f"rows{rows}-lr{lr:g}-ep{ep:g}-noise{noise:g}-rep{k}", {}).get(f"{r}_s", np.nan)
                            for k in range(args.replicates)
                        ]
                        by_noise[f"{noise:g}"] = vals
                    if not any(by_noise.values()):
                        continue
                    lo, hi = f"{min(args.noise):g}", f"{max(args.noise):g}"
                    sd = float(
                        np.sqrt(np.mean([np.var(v, ddof=1) for v in by_noise.values() if len(v) > 1] or [np.nan]))
                    )
                    gap = float(np.mean(by_noise[hi]) - np.mean(by_noise[lo]))
                    table.append(
                        {
                            "rows": rows,
                            "lr": lr,
                            "epochs": ep,
                            "readout": r,
                            "mean": {k: float(np.mean(v)) for k, v in by_noise.items()},
                            "sd": {k: float(np.std(v, ddof=1)) for k, v in by_noise.items() if len(v) > 1},
                            "values": by_noise,
                            "pooled_sd": sd,
                            "gap_noisiest_minus_cleanest": gap,
                            "gap_over_sd": gap / sd if sd > 0 else float("inf"),
                            "seconds_per_eval": float(np.nanmean(secs)),
                            "warmup_avg_err": results.get("warm" + r),
                        }
                    )
    path.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        "model": args.model,
        "world_seed": args.world_seed,
        "warmup_rows": args.warmup_rows,
        "replicates": args.replicates,
        "sampled_k": args.samples,
        "sampled_fixed_adapter_by_seed": fixed,
        "settings": table,
    }
    path.write_text(json.dumps(summary, indent=1))
    for row in table:
        means = " ".join(f"{k}:{v:.2f}" for k, v in row["mean"].items())
        print(
            f"rows={row['rows']} lr={row['lr']:g} ep={row['epochs']:g} {row['readout']:>8}: {means} | pooled sd "
            f"{row['pooled_sd']:.2f} gap {row['gap_noisiest_minus_cleanest']:.2f} gap/sd {row['gap_over_sd']:.1f} "
            f"| {row['seconds_per_eval']:.1f} s/eval"
        )
    for noise, vals in fixed.items():
        sd = np.std(vals, ddof=1)
        print(f"sampled, one adapter (noise {noise}), over sampling seeds: {np.round(vals, 2)} sd {sd:.2f}")


if __name__ == "__main__":
    main()
