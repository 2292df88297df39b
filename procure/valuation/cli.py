"""``procure value``: data values for the rows (or sources) of a table, written as CSV and summarised.

Example (bundled data, see examples/README.md)::

    procure value --method knn-ads --data examples/digits_train.csv --test examples/digits_test.csv \\
        --groups group --label label --owner owner --k 5 --out values.csv
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from procure.errors import UserError
from procure.valuation.estimate import GAME_METHODS, TABULAR_METHODS, Budget, BudgetError, TabularData, estimate

METHODS = [*GAME_METHODS, *TABULAR_METHODS]
#: the flag of each Budget field
BUDGET_FLAGS = {
    "exact_max": "--exact-max",
    "permutations": "--permutations",
    "eps": "--eps",
    "delta": "--delta",
    "r": "--range",
    "max_seconds": "--max-seconds",
}
#: the flag of each argument that procure.valuation.tabular names at the start of its errors
TABLE_FLAGS = {
    "features": "--features",
    "embedding": "--embedding",
    "groups": "--groups",
    "order": "--group-order",
    "source": "--source",
    "model": "--utility",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "value",
        help="value the rows (or sources) of a table: ADS, DS, LOO, KNN-Shapley, KNN-ADS, HCDV",
        description="Data values of a table's rows or sources, written as CSV (id, group, value, stderr).",
    )
    add_arguments(p)
    p.set_defaults(func=run)


def add_arguments(p: argparse.ArgumentParser, methods: Sequence[str] = METHODS) -> None:
    """The flags of ``procure value`` on a table (:func:`run` reads them); ``methods`` = the ``--method`` choices,
    so that a composing layer can register one ``value`` command for tables and other data."""
    p.add_argument("--method", required=True, choices=list(methods), help="valuation method")
    p.add_argument("--data", required=True, help="training table: .csv, .parquet or a saved HF dataset folder")
    p.add_argument("--groups", default=None, help="column with the ordered group (round) of each row (ads, knn-ads)")
    p.add_argument("--group-order", default=None, help="comma-separated group labels in sigma order")
    p.add_argument("--label", default="label", help="label column (default: label)")
    p.add_argument("--features", default=None, help="comma-separated feature columns (default: all numeric)")
    p.add_argument("--embedding", default=None, help="column holding one embedding vector per row")
    p.add_argument("--id", dest="id_col", default=None, help="row id column for the output (default: row number)")
    p.add_argument("--source", default=None, help="column naming each row's source: a source is one player")
    p.add_argument("--owner", default=None, help="column naming each source's contributor: also write their sums")
    p.add_argument("--test", default=None, help="test table (same columns); default: split off --test-size")
    p.add_argument("--test-size", type=float, default=0.3, help="test fraction when no --test (default 0.3)")
    p.add_argument("--split", default=None, help="split of a saved HF DatasetDict for --data (default train)")
    p.add_argument("--test-split", default=None, help="split of a saved HF DatasetDict for --test (default test)")
    p.add_argument("--k", type=int, default=5, help="K of the KNN classifier / KNN utility (default 5)")
    p.add_argument("--utility", default="knn", choices=["knn", "logreg"], help="model for ads/ds/loo (default knn)")
    p.add_argument("--permutations", type=int, default=None, help="MC permutations (default 200)")
    p.add_argument("--eps", type=float, default=None, help="MC: sup-norm error target (with --delta, --range)")
    p.add_argument("--delta", type=float, default=0.05, help="MC: failure probability (default 0.05)")
    p.add_argument("--range", dest="r", type=float, default=2.0, help="MC: marginal range width r (accuracy: 2)")
    p.add_argument("--exact-max", type=int, default=10, help="exact when every group has <= this (0: always MC)")
    p.add_argument("--max-seconds", type=float, default=None, help="MC: stop after this wall time")
    p.add_argument("--seed", type=int, default=0, help="seed of the test split and of MC sampling")
    p.add_argument("--out", default="values.csv", help="output CSV (default values.csv)")
    p.add_argument("--top", type=int, default=5, help="rows to print from the top and the bottom (default 5)")
    p.add_argument("--plot", default=None, help="also write a PNG: sorted values coloured by group")


def _split_list(s: str | None) -> list[str] | None:
    return [x.strip() for x in s.split(",") if x.strip()] if s else None


@contextmanager
def _flags(**names: str) -> Iterator[None]:
    """Name the flag in a library ``UserError`` that starts with the argument at fault (``features: ...``)."""
    try:
        yield
    except UserError as exc:
        msg = str(exc)
        for name, flag in names.items():
            if msg.startswith((f"{name}:", f"{name} ")):
                raise UserError(flag + msg[len(name) :]) from None
        raise


def _budget(args: argparse.Namespace) -> Budget:
    try:
        return Budget(**{field: getattr(args, field) for field in BUDGET_FLAGS})  # argparse dests = fields
    except BudgetError as exc:
        raise UserError(f"{BUDGET_FLAGS[exc.field]} {exc.rule} (got {exc.value})") from None


def run(args: argparse.Namespace) -> int:
    from procure.valuation.tabular import Sources, feature_matrix, load_table, ordered_groups, require_columns

    if args.k < 1:
        raise UserError(f"--k must be >= 1 (got {args.k})")
    if args.method in ("ads", "knn-ads") and not args.groups:
        raise UserError(f"--method {args.method} needs --groups COLUMN (the ordered group of each row)")
    budget = _budget(args)
    with _flags(path="--data", split="--split"):
        df = load_table(args.data, args.split)
    cols = [args.label, args.groups, args.id_col, args.source, args.owner]
    require_columns(df, cols, "--data")
    if df[args.label].isna().any():
        raise UserError(f"--label '{args.label}': {int(df[args.label].isna().sum())} rows have no label")
    if args.test:
        with _flags(path="--test", split="--test-split"):
            test = load_table(args.test, args.test_split or "test")
        require_columns(test, [args.label], "--test")
        train = df.reset_index(drop=True)
    else:
        if not 0 < args.test_size < 1:
            raise UserError(f"--test-size must be in (0, 1) (got {args.test_size}), or give --test FILE")
        train, test = _split(df, args.label, args.test_size, args.seed)
    exclude = cols
    with _flags(**TABLE_FLAGS):
        x, feats = feature_matrix(train, _split_list(args.features), args.embedding, exclude, also_in=test)
        if args.embedding is None:
            require_columns(test, feats, "--test")
        x_test, _ = feature_matrix(test, feats if args.embedding is None else None, args.embedding, exclude)
        y, y_test = train[args.label].to_numpy(), test[args.label].to_numpy()
        order = ordered_groups(train[args.groups], _split_list(args.group_order)) if args.groups else [None]
        src = Sources.build(train, args.source, args.id_col, args.groups)
    rank = {g: t for t, g in enumerate(order)}
    groups = [[i for i, g in enumerate(src.groups_of) if rank[g] == t] for t in range(len(order))]
    if any(not g for g in groups):  # only reachable when the split emptied a group
        raise UserError(f"--groups: group '{order[[len(g) for g in groups].index(0)]}' has no training rows left")

    values, stderr, note = _values(args, budget, x, y, x_test, y_test, src, groups)
    table = pd.DataFrame({"id": src.ids, "group": src.groups_of, "value": values, "stderr": stderr})
    out = Path(args.out)
    owners = _owners(train, src, values, args) if args.owner else None
    owners_path = out.with_name(out.stem + "_owners" + out.suffix)

    def build(tmp: Path) -> None:
        table.to_csv(tmp / out.name, index=False)
        if owners is not None:
            owners.to_csv(tmp / owners_path.name, index=False)

    _publish(build, out.parent, "--out")
    _show(table, args, note, out)
    if owners is not None:
        top = owners.sort_values("value", ascending=False, kind="stable").head(10)
        print("owner totals: " + ", ".join(f"{o}: {v:.4f}" for o, v in zip(top["owner"], top["value"])))
        print(f"wrote {owners_path}")
    if args.plot:
        plot = Path(args.plot)
        _publish(lambda tmp: _plot(table, args, note, tmp / plot.name), plot.parent, "--plot")
        print(f"wrote {plot}")
    return 0


def _publish(build, folder: Path, flag: str) -> None:
    """Write atomically; an unwritable folder is one line that says where the finished results are."""
    from procure.cache import OutputError, publish_files

    try:
        publish_files(build, folder, what="value")
    except OutputError as exc:
        raise UserError(f"{flag}: cannot write {exc.target} ({exc.reason}); the results are in {exc.kept}") from None


def _split(df: pd.DataFrame, label: str, size: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    from sklearn.model_selection import train_test_split

    counts = df[label].value_counts()
    strat = df[label] if counts.min() >= 2 and len(counts) <= size * len(df) else None
    try:
        tr, te = train_test_split(df, test_size=size, random_state=seed, stratify=strat)
    except ValueError as exc:
        raise UserError(f"--test-size {size}: cannot split {len(df)} rows ({str(exc).splitlines()[0]})") from None
    return tr.reset_index(drop=True), te.reset_index(drop=True)


def _values(args, budget: Budget, x, y, x_test, y_test, src, groups) -> tuple[np.ndarray, np.ndarray, str]:
    """Values and standard errors of the sources (players) by ``procure.valuation.estimate``, and a note on how
    they were computed. Data methods value the rows and sum them per source; game methods value the sources
    through a classifier-accuracy utility (``loo`` is classical leave-one-out: one group of all sources)."""
    from procure.valuation.knn import instance_to_source
    from procure.valuation.tabular import ClassifierUtility

    n = len(src.ids)
    progress = sys.stderr.isatty()
    if args.method in TABULAR_METHODS:
        source_of = np.empty(len(x), dtype=np.int64)
        for i, rows in enumerate(src.rows):
            source_of[rows] = i
        row_groups = [np.flatnonzero(np.isin(source_of, g)).tolist() for g in groups]
        data = TabularData(x, y, x_test, y_test, k=args.k)
        val = estimate(args.method, data, row_groups, budget, seed=args.seed, progress=progress)
        return instance_to_source(val.values, source_of, n), np.zeros(n), f"{val.note}, instance values summed"

    with _flags(**TABLE_FLAGS):
        v = ClassifierUtility(x, y, x_test, y_test, src, model=args.utility, k=args.k, seed=args.seed)
    what = f"utility = {args.utility} accuracy" + (f" (K={args.k})" if args.utility == "knn" else "")
    sigma = [list(range(n))] if args.method == "loo" else groups
    val = estimate(args.method, v, sigma, budget, seed=args.seed, progress=progress)
    if val.exact:
        return val.values, val.stderr, f"{val.note}, {what}"
    bound = val.eps_bound(budget.delta, budget.r)
    note = (
        f"{val.note}, {val.n_calls} utility calls, {what}; "
        f"Hoeffding sup error <= {bound:.3g} w.p. {1 - budget.delta:g} (r={budget.r:g})"
    )
    return val.values, val.stderr, note


def _show(table: pd.DataFrame, args, note: str, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    ranked = table.sort_values("value", ascending=False, kind="stable")
    k = max(0, args.top)
    shown = ranked if len(ranked) <= 2 * k else pd.concat([ranked.head(k), ranked.tail(k)])
    console.print(f"procure value --method {args.method}: {len(table)} players; {note}")
    t = Table(title=f"top and bottom {k} by value" if len(ranked) > 2 * k else "values")
    for c in ("rank", "id", "group", "value", "stderr"):
        t.add_column(c, justify="right" if c in ("rank", "value", "stderr") else "left")
    positions = {idx: pos + 1 for pos, idx in enumerate(ranked.index)}
    prev = None
    for idx, row in shown.iterrows():
        if prev is not None and positions[idx] != positions[prev] + 1:
            t.add_row("...", "", "", "", "")
        t.add_row(str(positions[idx]), str(row["id"]), str(row["group"]), f"{row['value']:.5f}", f"{row['stderr']:.5f}")
        prev = idx
    console.print(t)
    if args.groups:
        tot = table.groupby("group", sort=False)["value"].sum()
        console.print("group totals: " + ", ".join(f"{g}: {v:.4f}" for g, v in tot.items()))
    console.print(f"wrote {out}")


def _owners(train: pd.DataFrame, src, values: np.ndarray, args) -> pd.DataFrame:
    """Value per contributor (``--owner``): the sum of its sources' values."""
    from procure.valuation.aggregate import aggregate

    owners = []
    for sid, rows in zip(src.ids, src.rows):
        who = train[args.owner].iloc[rows].unique()
        if len(who) > 1:
            raise UserError(f"--owner '{args.owner}': source '{sid}' has several owners {list(who)[:3]}")
        owners.append(who[0])
    agg = aggregate(values, owners)
    return pd.DataFrame({"owner": list(agg), "value": list(agg.values())})


def _plot(table: pd.DataFrame, args, note: str, path: Path) -> None:
    """Values sorted descending, one colour per group, with the per-group totals in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ranked = table.sort_values("value", ascending=False, kind="stable").reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(8, 4))
    for g, part in ranked.groupby("group", sort=False, dropna=False):
        label = f"group {g}: total {part['value'].sum():.4f}" if args.groups else f"total {part['value'].sum():.4f}"
        ax.bar(part.index, part["value"], width=1.0, label=label)
        if (part["stderr"] > 0).any():
            ax.errorbar(part.index, part["value"], yerr=part["stderr"], fmt="none", ecolor="k", lw=0.5)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("players, sorted by value")
    ax.set_ylabel("value (utility units)")
    ax.set_title(f"procure value --method {args.method}", fontsize=10)
    ax.legend(fontsize=8)
    fig.text(0.01, 0.01, note, fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
