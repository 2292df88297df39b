"""Benchmark: the exact buyer solver (branch and bound) vs brute-force enumeration, and its size limit.

Run: .venv/bin/python eval/bench_market.py   (prints markdown tables)
Instances: values ~ U(0, 1); prices = values * U(0.5, 1.5) (a market where some datasets are bargains);
budget = 30% of the total price. "near-fair" instances use prices = values + U(-0.01, 0.01) (clamped at 0.001),
the situation after fairshare pricing (every gain close to zero). Beyond brute force, the optimum is checked
against scipy's HiGHS MILP (mip_rel_gap = 0) on the same instance.
"""

from __future__ import annotations

import time

import numpy as np

from procure.market.buyer import brute_force_buyer, solve_buyer


def instance(n: int, seed: int, kind: str = "random"):
    rng = np.random.default_rng(seed)
    v = rng.uniform(0, 1, n)
    if kind == "random":
        p = v * rng.uniform(0.5, 1.5, n)
    else:
        p = np.maximum(v + rng.uniform(-0.01, 0.01, n), 0.001)
    return v, p, 0.3 * p.sum()


def timed(fn, *a, **k):
    t = time.perf_counter()
    out = fn(*a, **k)
    return out, time.perf_counter() - t


def milp_net(v, p, b):
    """Reference: max sum (v - p) x s.t. p.x <= b, x binary, by scipy.optimize.milp (HiGHS)."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    res = milp(
        -(v - p),
        constraints=LinearConstraint(p[None, :], -np.inf, b),
        integrality=np.ones(v.size),
        bounds=Bounds(0, 1),
        options={"mip_rel_gap": 0.0},
    )
    return max(-res.fun, 0.0)


def main() -> None:
    print("## Exact buyer solver vs brute force, N = 20 (same instances, one process)\n")
    print("| instance | brute force (s) | branch and bound (s) | speed-up | same optimum net |")
    print("|---|---|---|---|---|")
    for kind in ("random", "near-fair"):
        for seed in range(3):
            v, p, b = instance(20, seed, kind)
            ref, t_ref = timed(brute_force_buyer, v, p, b)
            got, t_bb = timed(solve_buyer, v, p, b, solver="branch_and_bound")
            same = abs(ref.net - got.net) <= 1e-9
            row = f"| {kind} seed {seed} | {t_ref:.3f} | {t_bb:.5f} | {t_ref / t_bb:.0f}x"
            print(f"{row} | {same} (net {got.net:.6f}) |")
    print("\n## Exact buyer solver vs scipy HiGHS MILP (reference library), larger N\n")
    print("| instance | N | HiGHS MILP (s) | branch and bound (s) | speed-up | same optimum (1e-7) |")
    print("|---|---|---|---|---|---|")
    for kind in ("random", "near-fair"):
        for n in (200, 2000):
            v, p, b = instance(n, 7, kind)
            ref, t_ref = timed(milp_net, v, p, b)
            got, t_bb = timed(solve_buyer, v, p, b, solver="branch_and_bound")
            same = abs(ref - got.net) <= 1e-7 * max(1.0, ref)
            print(f"| {kind} | {n} | {t_ref:.3f} | {t_bb:.4f} | {t_ref / t_bb:.0f}x | {same} ({got.net:.6f}) |")
    print("\n## Largest N solved within 1 s (median of 3 instances)\n")
    print("| instance | N | median time (s) |")
    print("|---|---|---|")
    for kind in ("random", "near-fair"):
        n, last_ok = 20, None
        while n <= 200_000:
            times = [timed(solve_buyer, *instance(n, s, kind), solver="branch_and_bound")[1] for s in range(3)]
            med = float(np.median(times))
            print(f"| {kind} | {n} | {med:.3f} |")
            if med > 1.0:
                break
            last_ok = n
            n *= 2
        print(f"| **{kind}: largest N within 1 s** | **{last_ok}** | |")


if __name__ == "__main__":
    main()
