"""``procure report DIR``: report.md and PNG plots from a run's ledger (also written at the end of a run).

Plots (matplotlib, Agg): the test metric per round per method (mean over seeds, min-max band), what was
bought from whom at what price, payments per seller, value per contributor summed over rounds (seeds/000
Remark 3.1), and the metric against money spent. Tables: final metric per method with the seeds' spread,
how often each method bought each seller (with its noise share when known), wall time per round split into
training / evaluation / valuation / overhead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from procure.pipeline.ledger import Ledger
from procure.pipeline.steps import lock_holder
from procure.plotstyle import line_style


def _frame(ledger: Ledger, table: str) -> pd.DataFrame:
    return pd.DataFrame(ledger.rows(table))


def md_table(df: pd.DataFrame, floatfmt: str = ".3f") -> str:
    """A GitHub markdown table (pandas' to_markdown needs tabulate, which we do not depend on); NaN shows as -."""
    if df.empty:
        return "_(none)_\n"
    cols = [str(c) for c in df.columns]

    def fmt(x: object) -> str:
        if isinstance(x, float | np.floating):
            return "-" if np.isnan(x) else format(float(x), floatfmt)  # e.g. the sd of a single seed
        return str(x)

    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _split_arm(df: pd.DataFrame) -> pd.DataFrame:
    if df.empty:
        return df
    parts = df["arm"].str.rsplit("-s", n=1, expand=True)
    return df.assign(method=parts[0], seed=parts[1].astype(int))


def summarize(run_dir: str | Path) -> dict[str, pd.DataFrame]:
    """The report's tables as DataFrames (also used by eval scripts)."""
    with Ledger.open(Path(run_dir) / "ledger.sqlite", create=False) as led:
        frames = {
            name: _split_arm(_frame(led, name))
            for name in ("metrics", "purchases", "payments", "valuations", "candidates", "timings", "sellers")
        }
        recipe = json.loads(led.get_meta("recipe") or "{}")
    out: dict[str, pd.DataFrame] = {"recipe": pd.DataFrame([recipe])} if recipe else {}
    m = frames["metrics"]
    if not m.empty:
        out["metric_by_round"] = (
            m.groupby(["method", "round"])["metric"]
            .agg(["mean", "std", "min", "max", "count"])
            .reset_index()
            .rename(columns={"count": "seeds"})
        )
        last = m[m["round"] == m["round"].max()]
        out["final"] = (
            last.groupby("method")
            .agg(metric_mean=("metric", "mean"), metric_sd=("metric", "std"), spent=("spent", "mean"))
            .reset_index()
        )
    p, c = frames["purchases"], frames["candidates"]
    if not p.empty:
        pn = p.merge(c[["arm", "round", "seller", "noise"]], on=["arm", "round", "seller"], how="left")
        out["picks"] = (
            pn.groupby(["method", "seller"])
            .agg(noise=("noise", "first"), times=("round", "size"), total_price=("price", "sum"))
            .reset_index()
        )
    pay = frames["payments"]
    if not pay.empty:
        out["payments"] = pay.groupby(["method", "seller", "kind"])["amount"].sum().reset_index()
    val = frames["valuations"]
    if not val.empty:
        per_seed = val.groupby(["method", "seed", "seller"])["value"].sum().reset_index()
        out["contributor_value"] = per_seed.groupby(["method", "seller"])["value"].agg(["mean", "std"]).reset_index()
    tm = frames["timings"]
    if not tm.empty:
        wide = tm.pivot_table(index=["method", "seed", "round"], columns="phase", values="seconds").reset_index()
        for ph in ("train", "eval", "value", "total"):
            if ph not in wide:
                wide[ph] = 0.0
        wide["overhead"] = wide["total"] - wide["train"] - wide["eval"] - wide["value"]
        agg = wide.groupby("method")[["total", "train", "eval", "value", "overhead"]].mean().reset_index()
        agg["overhead_share"] = agg["overhead"] / agg["total"].where(agg["total"] > 0, np.nan)
        out["timing"] = agg
    out["_frames"] = frames  # type: ignore[assignment]
    return out


@dataclass
class RunProgress:
    """How far a run got: metric rows recorded (one per arm and round, round 0 included) against the recipe's."""

    done: int
    expected: int
    running: int | None  # pid of the process running it now
    recipe_file: str

    @property
    def incomplete(self) -> bool:
        return self.done < self.expected

    @property
    def summary(self) -> str:
        return f"{self.done} of {self.expected} arm-rounds recorded, round 0 included"


def run_progress(run_dir: str | Path) -> RunProgress:
    """:class:`RunProgress` of the run in ``run_dir``."""
    with Ledger.open(Path(run_dir) / "ledger.sqlite", create=False) as led:
        recipe = json.loads(led.get_meta("recipe") or "{}")
        done = len(led.rows("metrics"))
        recipe_file = led.get_meta("recipe_file") or "recipe.yaml"
    arms = len(recipe.get("methods", [])) * len(recipe.get("seeds", []))
    return RunProgress(done, arms * (int(recipe.get("rounds", 0)) + 1), lock_holder(Path(run_dir)), recipe_file)


def write_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.md`` and ``run_dir/plots/*.png``; returns the report path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    s = summarize(run_dir)
    frames: dict[str, pd.DataFrame] = s.pop("_frames")  # type: ignore[assignment]
    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    m = frames["metrics"]
    metric_name = str(m["metric_name"].iloc[0]) if not m.empty else "metric"
    lines = _header(run_dir, s)
    figs: list[tuple[str, str]] = []

    if "metric_by_round" in s:
        figs.append(("metric_per_round.png", "Test metric per round"))
        plot_metric_per_round(
            s["metric_by_round"],
            plots / figs[-1][0],
            ylabel=f"test {metric_name}",
            title=f"test {metric_name} per round (mean over seeds, min-max band)",
        )
        lines += ["## Test metric per round\n", md_table(s["metric_by_round"]), ""]
        lines += ["## Final round\n", md_table(s["final"]), ""]

        fig, ax = plt.subplots(figsize=(6, 4))
        for k, (method, g) in enumerate(m.groupby("method")):
            gg = g.groupby("round")[["spent", "metric"]].mean()
            ax.plot(gg["spent"], gg["metric"], label=method, **line_style(k))
        ax.set_xlabel("money spent (cumulative, utility units)")
        ax.set_ylabel(f"test {metric_name}")
        ax.legend()
        figs.append(("metric_vs_spent.png", "Test metric against money spent"))
        _save(fig, plots / figs[-1][0])

    p = frames["purchases"]
    if not p.empty:
        methods = sorted(p["method"].unique())
        fig, axes = plt.subplots(1, len(methods), figsize=(4 * len(methods), 3.5), squeeze=False, sharey=True)
        for ax, method in zip(axes[0], methods, strict=True):
            g = p[p["method"] == method]
            # the same purchase in several seeds lands on one point: its size counts them
            pts = g.groupby(["round", "seller"]).agg(price=("price", "mean"), times=("price", "size")).reset_index()
            sc = ax.scatter(pts["round"], pts["seller"], c=pts["price"], s=40 * pts["times"], cmap="viridis")
            ax.set_title(method)
            ax.set_xlabel("round")
            int_ticks(ax.xaxis, 1, int(p["round"].max()))  # rounds and sellers are counts
            int_ticks(ax.yaxis, 0, int(p["seller"].max()))
            fig.colorbar(sc, ax=ax, label="price")
        axes[0][0].set_ylabel("seller bought")
        figs.append(("purchases.png", "What was bought from whom at what price (all seeds)"))
        _save(fig, plots / figs[-1][0])
        lines += ["## Purchases per seller\n", md_table(s["picks"]), ""]
    if "payments" in s:
        _bars(plt, s["payments"].groupby(["method", "seller"])["amount"].sum().reset_index(), "amount", plots)
        figs.append(("payments.png", "Payments per seller (summed over rounds and seeds)"))
        lines += ["## Payments\n", md_table(s["payments"]), ""]
    if "contributor_value" in s:
        cv = s["contributor_value"].rename(columns={"mean": "value"})
        _bars(plt, cv, "value", plots, name="contributor_value.png")
        figs.append(("contributor_value.png", "Value per contributor summed over rounds (mean over seeds)"))
        lines += ["## Value per contributor (sum over rounds, mean/sd over seeds)\n", md_table(cv), ""]
    if "timing" in s:
        lines += [
            "## Wall time per round (seconds, mean over rounds and seeds)\n",
            "`overhead` = total - train - eval - value (gradient valuation); shared coalition states are paid "
            "by the first arm that needs them.\n",
            md_table(s["timing"], ".2f"),
            "",
        ]
    lines.append("## Plots\n")
    lines += [f"![{title}](plots/{name})\n" for name, title in figs]
    out = run_dir / "report.md"
    out.write_text("\n".join(lines))
    return out


def _header(run_dir: Path, s: dict) -> list[str]:
    """Title, a warning when the run is incomplete (interrupted or still running), the recipe line."""
    lines = [f"# procure run: {run_dir.name}\n"]
    progress = run_progress(run_dir)
    if progress.incomplete:
        state = f"still running (process {progress.running})" if progress.running else "stopped before the end"
        lines.append(
            f"> **Incomplete run** ({state}): {progress.summary}. Tables and plots show what was recorded; "
            "resume the run to finish it.\n"
        )
    if "recipe" in s:
        r = s["recipe"].iloc[0]
        lines.append(
            f"Recipe `{r.get('name')}`: model `{r.get('model')}`, {r.get('rounds')} rounds, methods "
            f"{', '.join(r.get('methods', []))}, seeds {r.get('seeds')}, contract `{r['market']['contract']}`.\n"
        )
    return lines


def _bars(plt, df: pd.DataFrame, col: str, plots: Path, name: str = "payments.png") -> None:
    wide = df.pivot_table(index="seller", columns="method", values=col, aggfunc="sum").fillna(0.0)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / max(1, wide.shape[1])
    for k, method in enumerate(wide.columns):
        ax.bar(np.arange(len(wide)) + k * width, wide[method].to_numpy(), width, label=str(method))
    ax.set_xticks(np.arange(len(wide)) + 0.4 - width / 2, [str(i) for i in wide.index])
    ax.set_xlabel("seller")
    ax.set_ylabel(col)
    ax.legend()
    _save(fig, plots / name)


def plot_metric_per_round(by_round: pd.DataFrame, path: Path, *, ylabel: str, title: str) -> None:
    """Mean line and min-max band per method over rounds; ``by_round`` has method, round, mean, min, max (the
    ``metric_by_round`` frame of :func:`summarize`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for k, (method, g) in enumerate(by_round.groupby("method")):
        ax.plot(g["round"], g["mean"], label=method, **line_style(k))
        ax.fill_between(g["round"], g["min"], g["max"], alpha=0.15)
    int_ticks(ax.xaxis, int(by_round["round"].min()), int(by_round["round"].max()))
    ax.set_xlabel("round (0 = initial state)")
    ax.set_ylabel(ylabel)
    ax.legend()
    ax.set_title(title, fontsize=10)
    _save(fig, path)


def int_ticks(axis, lo: int, hi: int) -> None:
    """Integer ticks on a count axis: every value from ``lo`` to ``hi`` when there are few, else integer steps."""
    from matplotlib.ticker import MaxNLocator

    if hi - lo <= 15:
        axis.set_ticks(range(lo, hi + 1))
    else:
        axis.set_major_locator(MaxNLocator(integer=True))


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
