"""DataInf on a shared machine: row-chunk size x OpenMP wait policy, alone and beside a CPU-bound process.

``procure.valuation.influence.datainf`` on n = 2,000 random gradients with SmolLM2-135M LoRA r = 8 q/v shapes
(460,800 float32 values per sample, 3.7 GB), in a fresh process per case (the OpenMP wait policy is read when
torch starts), best of ``--reps`` calls after one warm-up:

- chunks: ``1 MB`` (the previous code: ~8,600 small OpenMP regions), ``4 MB``, ``16 MB`` or ``whole`` (one
  pass per gradient part);
- ``OMP_WAIT_POLICY``: ``default`` (unset: libgomp spins for a while before it sleeps; the child imports torch
  before procure, so procure's setting does not apply), ``ACTIVE`` (always spinning) or ``PASSIVE`` (what
  ``import procure`` now sets unless the user set one);
- ``quiet`` (nothing else started by the benchmark) or ``busy`` (one pure-Python busy loop per core beside it).

Also checks that the two chunkings give the same values. Prints a markdown table (and the load average, since
other users' work on a shared machine inflates every row alike).

    python eval/bench_threads.py [--n 2000] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
CHUNKS = {"1 MB": 1 << 20, "4 MB": 4 << 20, "16 MB": 16 << 20, "whole": None}


def child(n: int, chunk: int | None, reps: int, out: str | None) -> None:
    import torch

    from procure.valuation import influence

    sys.path.insert(0, str(HERE.parent))
    from bench_influence import random_lora_grads

    if chunk is not None:
        influence.ROW_CHUNK_BYTES = chunk
    train, val = random_lora_grads(n)
    influence.datainf(train, val)  # warm-up
    best, values = float("inf"), None
    for _ in range(reps):
        t0 = time.perf_counter()
        values = influence.datainf(train, val)
        best = min(best, time.perf_counter() - t0)
    if out:
        torch.save(values, out)
    print(json.dumps({"seconds": best, "threads": torch.get_num_threads()}))


def run_case(n: int, chunk: str, policy: str, busy: bool, reps: int, out: str | None = None) -> dict:
    env = {**os.environ, "OMP_WAIT_POLICY": policy}
    if policy == "default":  # unset: libgomp spins a while before sleeping (torch is imported before procure)
        env.pop("OMP_WAIT_POLICY")
    hogs = []
    if busy:
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
        time.sleep(1.0)
    try:
        cmd = [sys.executable, str(HERE), "--child", "--n", str(n), "--chunk", chunk, "--reps", str(reps)]
        if out:
            cmd += ["--save", out]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--chunks", default="1 MB,16 MB", help="comma-separated, of: " + ", ".join(CHUNKS))
    ap.add_argument("--policies", default="default,PASSIVE", help="comma-separated: default, ACTIVE, PASSIVE")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--chunk", default="whole", help=argparse.SUPPRESS)
    ap.add_argument("--save", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.n, CHUNKS[args.chunk], args.reps, args.save)
        return
    import tempfile

    import torch

    tmp = Path(tempfile.mkdtemp(prefix="bench-threads-"))
    print(f"load average before: {os.getloadavg()[0]:.1f}; {os.cpu_count()} CPUs; n = {args.n}", flush=True)
    print("\n| chunks | OMP_WAIT_POLICY | quiet (s) | beside a busy loop per core (s) | busy / quiet |")
    print("|---|---|---:|---:|---:|", flush=True)
    for chunk in args.chunks.split(","):
        for policy in args.policies.split(","):
            save = str(tmp / f"{chunk.replace(' ', '')}-{policy}.pt")
            quiet = run_case(args.n, chunk, policy, False, args.reps, save)["seconds"]
            busy = run_case(args.n, chunk, policy, True, args.reps)["seconds"]
            print(f"| {chunk} | {policy} | {quiet:.3f} | {busy:.3f} | {busy / quiet:.1f}x |", flush=True)
    vals = {p.stem: torch.load(p) for p in sorted(tmp.glob("*.pt"))}
    ref = next(iter(vals.values()))
    diffs = {k: float((v - ref).abs().max() / ref.abs().max()) for k, v in vals.items()}
    print(
        f"\nmax rel. difference between the cases' values: {max(diffs.values()):.1e} (bitwise equal: "
        f"{all(torch.equal(v, ref) for v in vals.values())})"
    )
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
