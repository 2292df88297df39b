"""Values of annotation rows and their sources, by every method of ``procure value`` on prompt/response rows.

All methods go through :func:`procure.valuation.estimate` (one entry point):

- per-row methods (values are additive: a source's value is the sum of its rows'):
  ``bm25`` (mean BM25 score of the row's prompt + response against the reference rows as queries),
  ``infl_ip`` (<mean reference gradient, row gradient>), ``datainf`` (DataInf, DESIGN.md conventions),
  ``tracin`` (Infl_IP summed over the checkpoints given as adapters), ``constant``, ``random``;
  gradients are per-sample LoRA gradients at the model state (:mod:`procure.llm.grad_store`, cached);
- retraining methods over sources: ``loo`` (v(N) - v(N minus i)) and ``ads`` (exact Asymmetric Data Shapley over
  the delivery groups while every group has at most ``budget.exact_max`` sources, MC-ADS beyond;
  one group = Data Shapley), with v(S) from :class:`procure.annotations.retrain.CoalitionUtility`.
  Rows then carry an equal share of their source's value (so the per-row file still sums to the sources).

Higher = more valuable, in the method's units (BM25 score; validation loss per unit step for Infl_IP/TracIn;
per unit up-weighting for DataInf; reference score -- minus loss, or exact-match share -- for loo/ads).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from procure.annotations.data import Annotations, check_lengths
from procure.errors import UserError
from procure.llm.grad_store import CacheStats, GradientStore, LoraSpec, check_adapter
from procure.valuation.estimate import Budget, GradData, TextData, estimate, plan

ROW_METHODS = ("bm25", "infl_ip", "datainf", "tracin", "constant", "random")
SOURCE_METHODS = ("loo", "ads")
METHODS = ROW_METHODS + SOURCE_METHODS
GRADIENT_METHODS = ("infl_ip", "datainf", "tracin")
#: methods that need the reference rows / the model
NEEDS_REFERENCE = ("bm25", "infl_ip", "datainf", "tracin", "loo", "ads")
NEEDS_MODEL = GRADIENT_METHODS + SOURCE_METHODS


def canonical(method: str) -> str:
    """``infl-ip`` -> ``infl_ip`` (the CLI spelling -> the library's)."""
    return method.replace("-", "_")


@dataclass
class ValueOptions:
    """What the methods need besides the data. ``adapters``: the model state (one adapter, or the checkpoints of
    ``tracin``); ``lora``: the fresh LoRA of the gradient methods without an adapter and of the stages;
    ``train``: StageTrainer fields of the retraining stages (epochs, lr, batch_size, ...)."""

    model: str = "smollm2-135m"
    adapters: Sequence[str] = ()
    max_length: int = 256
    truncate: bool = False
    lora: LoraSpec = field(default_factory=LoraSpec)
    train: dict[str, Any] = field(default_factory=lambda: {"epochs": 1.0, "lr": 1e-3, "batch_size": 8})
    grad_batch_size: int = 16
    projection_dim: int | None = None
    bm25_idf: str = "okapi"
    datainf_blocks: str = "param"
    metric: str = "loss"
    budget: Budget = field(default_factory=Budget)
    seed: int = 0
    cache: bool = True
    progress: bool = True


@dataclass
class Values:
    """Results: ``rows`` (id, source, value, stderr), ``sources`` (source, value, stderr, sum, mean, n, rank,
    group), ``coalitions`` (loo/ads: every v(S) asked, sources joined by '+', '-' for the empty set), a
    one-line ``note`` and the gradient ``stats``."""

    method: str
    rows: pd.DataFrame
    sources: pd.DataFrame
    note: str
    coalitions: pd.DataFrame | None = None
    stats: CacheStats | None = None
    detail: dict[str, Any] = field(default_factory=dict)


def check_options(method: str, reference: Annotations | None, opts: ValueOptions) -> None:
    """The combinations that cannot run, as one line each (before any model is loaded)."""
    if method in NEEDS_REFERENCE and reference is None:
        raise UserError(
            f"--method {method.replace('_', '-')} needs the buyer's reference rows: --reference FILE or "
            "--reference-split SPLIT"
        )
    if method == "tracin" and not opts.adapters:
        raise UserError("--method tracin sums Infl_IP over checkpoints: give them as repeated --adapter DIR")
    if method != "tracin" and len(opts.adapters) > 1:
        raise UserError(
            f"--adapter given {len(opts.adapters)} times: only --method tracin takes several checkpoints; "
            f"{method.replace('_', '-')} values rows at one model state"
        )
    if opts.projection_dim is not None and opts.projection_dim < 1:
        raise UserError(f"--projection-dim must be >= 1 (got {opts.projection_dim})")
    if opts.max_length < 2:
        raise UserError(f"--max-length must be >= 2 (got {opts.max_length})")
    if opts.datainf_blocks != "param" and method != "datainf":
        raise UserError(f"--datainf-blocks sets DataInf's blocks; drop it with --method {method.replace('_', '-')}")
    if opts.bm25_idf != "okapi" and method != "bm25":
        raise UserError(f"--bm25-idf sets BM25's idf; drop it with --method {method.replace('_', '-')}")
    if opts.lora.layers is not None and (method in SOURCE_METHODS or opts.adapters):
        raise UserError("--lora-layers sets the fresh LoRA of the gradient methods; drop it with --adapter, loo or ads")


def value_annotations(
    method: str, data: Annotations, reference: Annotations | None, opts: ValueOptions | None = None
) -> Values:
    """Value ``data``'s rows and sources by ``method`` (module docstring) against ``reference``."""
    opts = opts or ValueOptions()
    method = canonical(method)
    if method not in METHODS:
        raise UserError(f"--method {method}: use one of {', '.join(m.replace('_', '-') for m in METHODS)}")
    check_options(method, reference, opts)
    names, src_rows = data.source_names(), data.source_rows()
    if method in SOURCE_METHODS and len(names) < 2:
        raise UserError(
            f"--method {method} values sources by LoRA stages on their unions: give --source COLUMN with at least 2 "
            f"sources (got {len(names)})"
        )
    if method in NEEDS_MODEL:
        model_path, tok = _prepare_model(data, reference, opts)
    if method in ROW_METHODS:
        stats = None
        if method == "bm25":
            val = estimate("bm25", TextData(data.texts, reference.texts, idf=opts.bm25_idf))
        elif method in ("constant", "random"):
            val = estimate(method, len(data), seed=opts.seed)
        else:
            store = GradientStore(
                model_path,
                tok,
                opts.lora,
                max_length=opts.max_length,
                batch_size=opts.grad_batch_size,
                projection_dim=opts.projection_dim,
                cache=opts.cache,
                progress=opts.progress,
            )
            val = _gradient_values(method, store, data, reference, opts)
            stats = store.stats
        rows = pd.DataFrame({"id": data.ids, "source": data.sources, "value": val.values, "stderr": val.stderr})
        note = val.note + _cache_note(stats)
        return Values(method, rows, _per_source(rows, names, src_rows, data), note, stats=stats)
    return _by_sources(method, data, reference, opts, model_path, names, src_rows)


def _prepare_model(data: Annotations, reference: Annotations | None, opts: ValueOptions) -> tuple[str, Any]:
    from procure.llm.models import load_tokenizer, resolve_model

    model_path = resolve_model(opts.model)
    for a in opts.adapters:
        check_adapter(a, model_path, opts.model)
    tok = load_tokenizer(model_path)
    data.cut = check_lengths(tok, data, opts.max_length, opts.truncate, "--data")
    if reference is not None:
        reference.cut = check_lengths(tok, reference, opts.max_length, opts.truncate, "--reference")
    return model_path, tok


def _gradient_values(method: str, store: GradientStore, data: Annotations, reference: Annotations, opts):
    states = list(opts.adapters) if method == "tracin" else [opts.adapters[0] if opts.adapters else None]
    total = None
    for k, state in enumerate(states):
        where = "" if len(states) == 1 else f" @ checkpoint {k + 1}/{len(states)}"
        g = store.per_sample(state, data.rows, desc=f"row gradients{where}")
        v = store.mean(state, reference.rows, desc=f"reference gradients{where}")
        val = estimate("infl_ip" if method == "tracin" else method, GradData(g, v, blocks=opts.datainf_blocks))
        del g
        total = val.values if total is None else total + val.values
    if method == "tracin":
        val.values, val.method, val.estimator = total, "tracin", "tracin"
        val.note = f"tracin: Infl_IP summed over {len(states)} checkpoints"
    where = "a fresh LoRA" if not opts.adapters else ("the adapter" if method != "tracin" else "the checkpoints")
    proj = f", projected to {opts.projection_dim} dims per layer" if opts.projection_dim else ""
    val.note += f" (LoRA gradients at {where}{proj})"
    return val


def _cache_note(stats: CacheStats | None) -> str:
    if stats is None:
        return ""
    return f"; gradients: {stats.computed_rows} rows computed, {stats.cached_rows} from the cache"


def _per_source(rows: pd.DataFrame, names: list[str], src_rows: list[list[int]], data: Annotations) -> pd.DataFrame:
    vals = rows["value"].to_numpy()
    err = rows["stderr"].to_numpy()
    sums = np.array([vals[r].sum() for r in src_rows])
    return _source_table(names, sums, np.array([np.sqrt((err[r] ** 2).sum()) for r in src_rows]), src_rows, data)


def _source_table(names, values, stderr, src_rows, data: Annotations) -> pd.DataFrame:
    n = np.array([len(r) for r in src_rows])
    order = np.argsort(-np.asarray(values), kind="stable")
    rank = np.empty(len(names), dtype=int)
    rank[order] = np.arange(1, len(names) + 1)
    group_of = dict(zip(data.sources, data.groups)) if data.groups is not None else {}
    return pd.DataFrame(
        {
            "source": names,
            "value": values,
            "stderr": stderr,
            "sum": values,
            "mean": np.asarray(values) / n,
            "n": n,
            "rank": rank,
            "group": [group_of.get(s, "") for s in names],
        }
    )


def _by_sources(method, data, reference, opts: ValueOptions, model_path, names, src_rows) -> Values:
    from procure.annotations.retrain import CoalitionUtility
    from procure.llm.train import TrainConfig

    groups = data.source_groups() if method == "ads" else [list(range(len(names)))]
    if any(not src_rows[i] for g in groups for i in g):  # unreachable with rows from data.py; kept for callers
        raise UserError("--source: a source has no rows")
    cfg = TrainConfig(
        max_length=opts.max_length,
        lora_r=opts.lora.r,
        lora_alpha=opts.lora.alpha,
        target_modules=list(opts.lora.target_modules),
        seed=opts.seed,
        **opts.train,
    )
    total = None if opts.budget.max_seconds else len(plan(method, groups, opts.budget, seed=opts.seed))
    adapter = opts.adapters[0] if opts.adapters else None
    v = CoalitionUtility(
        model_path,
        cfg,
        [[data.rows[k] for k in r] for r in src_rows],
        reference.rows,
        adapter=adapter,
        metric=opts.metric,
        cache=opts.cache,
        progress=opts.progress,
        total=total,
    )
    try:
        val = estimate(method, v, groups, opts.budget, seed=opts.seed)
    finally:
        v.close()
    src = _source_table(names, val.values, val.stderr, src_rows, data)
    share = np.empty(len(data))
    share_err = np.empty(len(data))
    for i, r in enumerate(src_rows):
        share[r] = val.values[i] / len(r)
        share_err[r] = val.stderr[i] / len(r)
    rows = pd.DataFrame({"id": data.ids, "source": data.sources, "value": share, "stderr": share_err})
    coal = pd.DataFrame(
        {
            "coalition": ["+".join(names[i] for i in sorted(S)) or "-" for S in v.records],
            "n_sources": [len(S) for S in v.records],
            "n_rows": [sum(len(src_rows[i]) for i in S) for S in v.records],
            "utility": list(v.records.values()),
        }
    )
    what = "minus reference loss" if opts.metric == "loss" else "reference exact-match share"
    start = "the adapter" if adapter else "a fresh LoRA"
    note = (
        f"{val.note} over {len(names)} sources, v(S) = {what} after a LoRA stage from {start} on S "
        f"({len(v.records)} coalitions: {v.trained} trained, {v.cached} from the cache)"
    )
    if not val.exact:
        note += f"; Hoeffding sup error <= {val.eps_bound(opts.budget.delta, opts.budget.r):.3g} w.p. " + (
            f"{1 - opts.budget.delta:g} (r={opts.budget.r:g})"
        )
    detail = {"n_calls": val.n_calls, "trained": v.trained, "cached": v.cached, "exact": val.exact}
    return Values(method, rows, src, note, coalitions=coal, detail=detail)


def write_outputs(res: Values, out: Path, plot: Path | None = None) -> list[Path]:
    """Write ``out`` (per-row CSV), ``<out>_sources.csv``, ``<out>_coalitions.csv`` (loo/ads) and the per-source
    plot (``plot`` or ``<out>_sources.png``) atomically (``procure.cache.publish_files``)."""
    from procure.cache import publish_files

    out = Path(out)
    plot = Path(plot) if plot else out.with_name(out.stem + "_sources.png")
    src_path = out.with_name(out.stem + "_sources.csv")
    coal_path = out.with_name(out.stem + "_coalitions.csv")

    def build(tmp: Path) -> None:
        res.rows.to_csv(tmp / out.name, index=False)
        res.sources.to_csv(tmp / src_path.name, index=False)
        if res.coalitions is not None:
            res.coalitions.to_csv(tmp / coal_path.name, index=False)

    written = publish_files(build, out.parent, what="value")
    written += publish_files(lambda tmp: plot_sources(res, tmp / plot.name), plot.parent, what="value")
    return written


def plot_sources(res: Values, path: Path) -> None:
    """Per-source values as horizontal bars (best at the top), error bars = stderr, coloured by delivery group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    src = res.sources.sort_values("value", kind="stable").reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.32 * len(src) + 1.2)))
    groups = list(dict.fromkeys(src["group"]))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colour = [colours[groups.index(g) % len(colours)] for g in src["group"]]
    err = src["stderr"] if (src["stderr"] > 0).any() else None
    ax.barh(src.index, src["value"], xerr=err, color=colour, ecolor="k")
    ax.set_yticks(src.index, [f"{s} (n={n})" for s, n in zip(src["source"], src["n"])], fontsize=8)
    ax.axvline(0, color="k", lw=0.5)
    ax.set_xlabel(f"value ({res.method}; higher = more valuable)")
    ax.set_title(f"procure value --method {res.method.replace('_', '-')}: per-source values", fontsize=10)
    fig.text(0.01, 0.005, res.note[:180], fontsize=6)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
