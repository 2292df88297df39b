"""Benchmark: evaluate one round's 8 coalition adapters on the same 64 conjoint prompts, per backend and mode.

SmolLM2-135M-Instruct, float32, greedy, 8 new tokens, LoRA r=8 on q/k/v/o. Each (backend, adapter mode) runs in
its own child process (an in-process vLLM engine changes process-wide torch settings, and a fresh process makes
every row pay its own start-up): wall seconds for the start (model / engine) and for the 8 adapters, each
including its adapter switch. "same as HF" counts completions identical to the HF merged row's. The table's
ratio column is total / best total; ``procure.llm.generate.auto_choice`` should name the fastest row.

    python eval/bench_llm.py                 # all four rows (about 10 minutes on 2 CPU cores)
    python eval/bench_llm.py --adapters 2    # quicker; --rows hf:merged,vllm:merged to pick rows
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

N_ADAPTERS = 8
MAX_NEW_TOKENS = 8
ROWS = ("hf:merged", "hf:lora", "vllm:merged", "vllm:lora")


def coalition_adapters(n: int = N_ADAPTERS) -> list[Path]:
    """n LoRA stages of SmolLM2 trained on different 8-row conjoint coalitions (cached after the first run)."""
    from procure.cache import build_once, cache_dir
    from procure.llm.train import StageTrainer, TrainConfig
    from procure.tasks.conjoint import ConjointWorld, sample_profiles

    root = cache_dir("bench", "llm-coalitions-v1")
    todo = [k for k in range(n) if not (root / f"c{k}").exists()]
    if todo:
        tr = StageTrainer("smollm2-135m", TrainConfig(epochs=2, lr=2e-3, batch_size=8, lora_r=8, lora_alpha=16))
        world = ConjointWorld(seed=0)
        for k in todo:
            rows = world.rows(sample_profiles(8, k), "true" if k % 2 == 0 else "noisy", k)

            def build(tmp: Path, rows=rows) -> None:
                tr.train(rows, tmp / "a", progress=False)

            build_once(root / f"c{k}", build)
    return [root / f"c{k}" / "a" for k in range(n)]


def prompts() -> tuple[list[str], str]:
    from procure.tasks.conjoint import PROFILES, instruction, render_profile

    return [render_profile(p) for p in PROFILES], instruction()


def run_one(backend: str, mode: str, n_adapters: int, out: Path) -> None:
    """Child process: start the generator, then evaluate every adapter; write timings + outputs as JSON."""
    from procure.llm.generate import GenParams, make_generator

    adapters = coalition_adapters(n_adapters)
    ps, system = prompts()
    t0 = time.perf_counter()
    g = make_generator("smollm2-135m", backend=backend, adapter_mode=mode, lora_rank=8, max_model_len=512)
    start = time.perf_counter() - t0
    per, outs = [], []
    for a in adapters:
        t = time.perf_counter()
        outs.append(g.generate(ps, a, GenParams(max_new_tokens=MAX_NEW_TOKENS), system=system))
        per.append(time.perf_counter() - t)
    g.close()
    out.write_text(json.dumps({"start": start, "per_adapter": per, "outputs": outs}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapters", type=int, default=N_ADAPTERS)
    ap.add_argument("--rows", default=",".join(ROWS), help="comma-separated backend:mode rows")
    ap.add_argument("--report", help="print the table of a finished run's folder of row JSON files")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.one:
        backend, mode = args.one.split(":")
        run_one(backend, mode, args.adapters, Path(args.json))
        return

    from procure.llm.generate import vllm_available

    if args.report:
        found = {r: Path(args.report) / f"{r.replace(':', '_')}.json" for r in ROWS}
        results = {r: json.loads(f.read_text()) for r, f in found.items() if f.is_file()}
        report(results, len(next(iter(results.values()))["per_adapter"]))
        return
    coalition_adapters(args.adapters)  # train once, outside the timed children
    rows = [r for r in args.rows.split(",") if r.startswith("hf") or vllm_available()]
    results = {}
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench_llm_{os.getpid()}"
    tmp.mkdir(exist_ok=True)
    for row in rows:
        f = tmp / f"{row.replace(':', '_')}.json"
        cmd = [sys.executable, __file__, "--one", row, "--json", str(f), "--adapters", str(args.adapters)]
        print(f"running {row} ...", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            print(f"{row} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
            continue
        results[row] = json.loads(f.read_text())
    if not results:
        sys.exit("no row finished")
    report(results, args.adapters)


def report(results: dict[str, dict], n_adapters: int) -> None:
    """Print the markdown table from the rows' JSON results (``--report DIR`` re-prints a finished run)."""
    import torch

    from procure.llm.generate import auto_choice

    ref = results.get("hf:merged")
    totals = {r: v["start"] + sum(v["per_adapter"]) for r, v in results.items()}
    best = min(totals.values())
    auto = ":".join(auto_choice())
    n_prompts = len(prompts()[0])
    print(
        f"\nEvaluation of {n_adapters} coalition adapters x {n_prompts} conjoint prompts x {MAX_NEW_TOKENS} new "
        f"tokens, SmolLM2-135M fp32 greedy, LoRA r=8 (wall seconds; torch threads "
        f"{torch.get_num_threads()}; load average {os.getloadavg()[0]:.1f} at the end)\n"
    )
    print("| backend:mode | start s | adapters s (mean per adapter) | total s | / best | same as HF merged |")
    print("|---|---|---|---|---|---|")
    for r, v in results.items():
        same = "-"
        if ref is not None:
            pairs = [(a, b) for oa, ob in zip(v["outputs"], ref["outputs"]) for a, b in zip(oa, ob)]
            same = f"{sum(a == b for a, b in pairs)}/{len(pairs)}"
        mark = " (auto)" if r == auto else ""
        ad = sum(v["per_adapter"])
        print(
            f"| {r}{mark} | {v['start']:.1f} | {ad:.1f} ({ad / len(v['per_adapter']):.1f})"
            f" | {totals[r]:.1f} | {totals[r] / best:.2f}x | {same} |"
        )
    fastest = min(totals, key=totals.get)
    print(f"\nfastest: {fastest}; auto on CPU: {auto}")


if __name__ == "__main__":
    main()
