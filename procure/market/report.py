"""Files written by `procure market simulate` and `procure market allocate`: CSV, PNG (Agg), markdown."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from procure.market.collaborative import Allocation  # noqa: E402
from procure.market.dynamics import SimulationResult  # noqa: E402
from procure.plotstyle import line_style  # noqa: E402


def _line(ax, x, y, k: int, label: str) -> None:
    """Strategies often coincide (e.g. fairshare and reduced early on): distinct styles, staggered markers."""
    every = max(1, len(x) // 12)
    ax.plot(x, y, markevery=(k % every, every), label=label, **line_style(k))


def periods_frame(res: SimulationResult) -> pd.DataFrame:
    """One row per (strategy, period): run means of every reported quantity."""
    rows = []
    cums = {d: {m: res.discounted_cumulative(d, m).mean(axis=1) for m in ("utility", "net")} for d in res.recipe.deltas}
    for si, s in enumerate(res.strategies):
        for t in range(res.recipe.periods):
            row = {
                "strategy": s,
                "t": t,
                "active_sellers": res.active[si, :, t].mean(),
                "seller_cum_profit": res.seller_profit[si, :, t].mean(),
                "paid_over_fair": np.nanmean(res.paid_ratio[si, :, t])
                if np.isfinite(res.paid_ratio[si, :, t]).any()
                else np.nan,
            }
            for k, b in enumerate(res.buyers):
                row[f"{b}_utility"] = res.utility[si, :, t, k].mean()
                row[f"{b}_net"] = res.net[si, :, t, k].mean()
                row[f"{b}_bought"] = res.bought[si, :, t, k].mean()
                for d in res.recipe.deltas:
                    row[f"{b}_cum_utility_d{d:g}"] = cums[d]["utility"][si, t, k]
                    row[f"{b}_cum_net_d{d:g}"] = cums[d]["net"][si, t, k]
            rows.append(row)
    return pd.DataFrame(rows)


def thresholds_frame(res: SimulationResult) -> pd.DataFrame:
    fair = res._fair_name()
    rows = []
    for d in res.recipe.deltas:
        for k, b in enumerate(res.buyers):
            for si, s in enumerate(res.strategies):
                if s == fair:
                    continue
                rows.append({"delta": d, "buyer": b, "strategy": s, "t_star": res.threshold(d, si, k)})
    return pd.DataFrame(rows)


def write_simulation(res: SimulationResult, out: Path) -> dict[str, Path]:
    """periods.csv, thresholds.csv, figure4.png, figure6.png, summary.md under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    per = periods_frame(res)
    thr = thresholds_frame(res)
    per.to_csv(out / "periods.csv", index=False)
    thr.to_csv(out / "thresholds.csv", index=False)
    deltas = res.recipe.deltas
    d0 = deltas[len(deltas) // 2]
    t = np.arange(res.recipe.periods)
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    for si, s in enumerate(res.strategies):
        sub = per[per.strategy == s]
        for k, b in enumerate(res.buyers[:2]):
            _line(axes[k], t, sub[f"{b}_cum_utility_d{d0:g}"], si, s)
            axes[k].set_title(f"({'ab'[k]}) buyer '{b}': cumulative utility, delta={d0:g}")
        _line(axes[2], t, sub["seller_cum_profit"], si, s)
        _line(axes[3], t, sub["active_sellers"], si, s)
    axes[2].set_title("(c) sellers' average cumulative profit")
    axes[3].set_title("(d) sellers in the market (mean over runs)")
    axes[3].yaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes:
        ax.set_xlabel("period t")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "figure4.png", dpi=110)
    plt.close(fig)
    b0 = res.buyers[0]
    fig, axes = plt.subplots(1, len(deltas), figsize=(5 * len(deltas), 4), squeeze=False)
    for ax, d in zip(axes[0], deltas):
        for si, s in enumerate(res.strategies):
            _line(ax, t, per[per.strategy == s][f"{b0}_cum_utility_d{d:g}"], si, s)
        ts = thr[(thr.delta == d) & (thr.buyer == b0)]
        ax.set_title(f"buyer '{b0}', delta={d:g}, t*={int(ts.t_star.max()) if len(ts) else '-'}")
        ax.set_xlabel("period t")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "figure6.png", dpi=110)
    plt.close(fig)
    (out / "summary.md").write_text(summary_markdown(res, per, thr))
    return {
        k: out / v
        for k, v in {
            "periods": "periods.csv",
            "thresholds": "thresholds.csv",
            "figure4": "figure4.png",
            "figure6": "figure6.png",
            "summary": "summary.md",
        }.items()
    }


def summary_markdown(res: SimulationResult, per: pd.DataFrame, thr: pd.DataFrame) -> str:
    r = res.recipe
    T = r.periods
    lines = [
        f"# Market simulation: T={T}, {r.n_sellers} sellers, {len(res.buyers)} buyers, {r.n_runs} runs, "
        f"seed {r.seed}, participation {r.participation.family} (k={r.participation.k:g}), metric {r.metric}",
        "",
        "| strategy | paid/fair | active sellers t=0/10/T-1 | seller cum. profit (T-1) | "
        + " | ".join(f"{b} utility t=0 / T-1" for b in res.buyers)
        + " |",
        "|---|---|---|---|" + "---|" * len(res.buyers),
    ]
    for s in res.strategies:
        sub = per[per.strategy == s].set_index("t")
        ratio = np.nanmean(sub["paid_over_fair"].to_numpy())
        act = (
            f"{sub.active_sellers[0]:.1f} / {sub.active_sellers[min(10, T - 1)]:.1f} / {sub.active_sellers[T - 1]:.1f}"
        )
        cells = [f"{sub[f'{b}_utility'][0]:.3f} / {sub[f'{b}_utility'][T - 1]:.3f}" for b in res.buyers]
        lines.append(f"| {s} | {ratio:.3f} | {act} | {sub.seller_cum_profit[T - 1]:.2f} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Lemma 4 threshold t* (last period where fairshare's expected discounted cumulative "
        f"{r.metric} is <= the strategy's; -1 = never):",
        "",
        "| delta | buyer | " + " | ".join(s for s in res.strategies if s != res._fair_name()) + " |",
        "|---|---|" + "---|" * (len(res.strategies) - 1),
    ]
    for d in r.deltas:
        for b in res.buyers:
            ts = thr[(thr.delta == d) & (thr.buyer == b)]
            lines.append(f"| {d:g} | {b} | " + " | ".join(str(int(x)) for x in ts.t_star) + " |")
    return "\n".join(lines) + "\n"


def write_allocation(alloc: Allocation, out: Path, names: list[str] | None = None) -> dict[str, Path]:
    """allocation.json, allocation.csv (one row per party) and flows.png (heat-map, row = payer)."""
    out.mkdir(parents=True, exist_ok=True)
    names = names or [f"party{i}" for i in range(alloc.n)]
    (out / "allocation.json").write_text(json.dumps({"parties": names, **alloc.to_dict()}, indent=2))
    frame = pd.DataFrame(
        {
            "party": names,
            "budget": alloc.budgets,
            "v_single": alloc.v_single,
            "shapley": alloc.shapley,
            "unconstrained_payoff": alloc.unconstrained_payoffs,
            "lam": alloc.lam,
            "revenue": alloc.revenue,
            "cost": alloc.cost,
            "payoff": alloc.payoffs,
            "model_reward": alloc.model_rewards,
        }
    )
    frame.to_csv(out / "allocation.csv", index=False)
    fig, ax = plt.subplots(figsize=(1.2 * alloc.n + 3, 1.0 * alloc.n + 2))
    im = ax.imshow(alloc.flows, cmap="viridis")
    ax.set_xticks(range(alloc.n), names, rotation=45, ha="right")
    ax.set_yticks(range(alloc.n), names)
    ax.set_xlabel("receiver j")
    ax.set_ylabel("payer i")
    ax.set_title("payoff flows lam_i phi_{j|i}")
    for i in range(alloc.n):
        for j in range(alloc.n):
            ax.text(j, i, f"{alloc.flows[i, j]:.3g}", ha="center", va="center", color="w", fontsize=8)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(out / "flows.png", dpi=110)
    plt.close(fig)
    return {"json": out / "allocation.json", "csv": out / "allocation.csv", "heatmap": out / "flows.png"}
