"""``procure value``: one command for numeric tables and for prompt/response rows of LLM fine-tuning data.

Numeric tables (KNN / logistic-regression utilities, KNN-Shapley, KNN-ADS, HCDV) run in
:func:`procure.valuation.cli.run`, unchanged; prompt/response rows run here (:mod:`procure.annotations.value`).
Which one: the methods ``bm25``, ``infl-ip``, ``datainf``, ``tracin``, ``constant``, ``random`` take rows; ``ds``,
``knn-shapley``, ``knn-ads``, ``hcdv`` take tables; ``ads`` and ``loo`` take rows when a flag of the rows group is
given (``--reference``, ``--model``, ``--adapter``, ...) or, without ``--test``, when the data has prompt and
response (or ``messages``) columns or is a JSON/JSONL file.

Example::

    procure value --method datainf --data annotations.jsonl --reference dev.jsonl --source annotator \\
        --model smollm2-135m --out values.csv
    procure market clear --values values_sources.csv --budget 10
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from procure.errors import UserError
from procure.valuation import cli as valuation_cli
from procure.valuation.estimate import Budget, BudgetError

TABLE_ONLY = ("ds", "knn-shapley", "knn-ads", "hcdv")
ROWS_ONLY = ("bm25", "infl-ip", "datainf", "tracin", "constant", "random")
METHODS = [*valuation_cli.METHODS, *ROWS_ONLY]
#: flags of the rows group and their defaults (None in the parser, so that "given" can be told from "default")
ROW_DEFAULTS = {
    "reference": None,
    "reference_split": None,
    "prompt_column": "prompt",
    "response_column": "response",
    "messages_column": None,
    "system_column": None,
    "model": "smollm2-135m",
    "adapter": [],
    "max_length": 256,
    "truncate": False,
    "projection_dim": None,
    "bm25_idf": "okapi",
    "datainf_blocks": "param",
    "lora_r": 8,
    "lora_alpha": 16.0,
    "lora_layers": None,
    "target_modules": "q_proj,v_proj",
    "epochs": 1.0,
    "lr": 1e-3,
    "batch_size": 8,
    "grad_batch_size": 16,
    "metric": "loss",
    "no_cache": False,
    "quiet": False,
}
#: table-only flags that a rows run rejects, with their parser defaults
TABLE_FLAGS = {"test": None, "features": None, "embedding": None, "owner": None, "utility": None, "test_split": None}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "value",
        help="value rows or sources: numeric tables (ADS, DS, LOO, KNN, HCDV) or prompt/response rows for LLM "
        "fine-tuning (BM25, Infl_IP, DataInf, TracIn, LOO/ADS with LoRA stages)",
        description="Data values of a table's rows or sources, or of prompt/response rows and their sources "
        "(annotators, vendors, deliveries), written as CSV.",
        epilog="examples:" + __doc__.split("Example::", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    valuation_cli.add_arguments(p, methods=METHODS)
    add_arguments(p)
    p.set_defaults(func=run, utility=None)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of prompt/response rows (defaults in :data:`ROW_DEFAULTS`)."""
    d = ROW_DEFAULTS
    g = p.add_argument_group(
        "prompt/response rows (LLM fine-tuning data)",
        "--data is a .jsonl/.json/.csv/.parquet file, a saved HF dataset folder or a cached hub dataset;\n"
        "--source COLUMN groups rows into sources (annotators); --groups COLUMN gives ADS's delivery order.\n"
        "Writes OUT (id, source, value, stderr), OUT_sources.csv (value, stderr, sum, mean, n, rank;\n"
        "`procure market clear --values OUT_sources.csv` takes it), OUT_sources.png and, for loo/ads,\n"
        "OUT_coalitions.csv (every v(S)).",
    )
    g.add_argument("--reference", default=None, help="the buyer's reference rows (file/folder/dataset; same columns)")
    g.add_argument("--reference-split", default=None, help="split of --reference, or of --data without --reference")
    g.add_argument("--prompt-column", default=None, help=f"prompt column (default {d['prompt_column']})")
    g.add_argument("--response-column", default=None, help=f"response column (default {d['response_column']})")
    g.add_argument("--messages-column", default=None, help="chat column instead (default: 'messages' if present)")
    g.add_argument("--system-column", default=None, help="system prompt column (default: 'system' if present)")
    g.add_argument("--model", default=None, help="smollm2-135m (default), tiny, a HF folder, a .gguf or a hub id")
    g.add_argument(
        "--adapter",
        action="append",
        default=None,
        help="value against this LoRA state (default: a fresh LoRA); tracin: repeat it once per checkpoint",
    )
    g.add_argument("--max-length", type=int, default=None, help="tokens per row (default 256); longer is an error")
    g.add_argument("--truncate", action="store_true", default=None, help="cut rows longer than --max-length")
    g.add_argument("--projection-dim", type=int, default=None, help="random projection of gradients per layer")
    g.add_argument(
        "--bm25-idf",
        choices=("okapi", "clamp"),
        default=None,
        help="bm25: rank-bm25's floored idf (default, as seeds/004) or clamp a negative idf at 0 (bm25s, Lucene)",
    )
    g.add_argument(
        "--datainf-blocks",
        choices=("param", "layer"),
        default=None,
        help="datainf: one block per LoRA tensor (default, Kwon et al.'s code) or lora_A + lora_B^T per layer",
    )
    g.add_argument("--lora-r", type=int, default=None, help="rank of a fresh LoRA (default 8)")
    g.add_argument("--lora-alpha", type=float, default=None, help="alpha of a fresh LoRA (default 16)")
    g.add_argument("--target-modules", default=None, help="LoRA modules (default q_proj,v_proj)")
    g.add_argument(
        "--lora-layers",
        type=int,
        default=None,
        help="gradient methods: a fresh LoRA on the last N layers only (faster: the backward pass stops there)",
    )
    g.add_argument("--epochs", type=float, default=None, help="loo/ads: epochs of each coalition stage (default 1)")
    g.add_argument("--lr", type=float, default=None, help="loo/ads: learning rate of the stages (default 1e-3)")
    g.add_argument("--batch-size", type=int, default=None, help="loo/ads: stage batch size (default 8)")
    g.add_argument("--grad-batch-size", type=int, default=None, help="rows per gradient batch (default 16)")
    g.add_argument(
        "--metric",
        default=None,
        choices=["loss", "exact-match"],
        help="loo/ads: v(S) = minus the reference loss (default) or the reference exact-match share",
    )
    g.add_argument("--no-cache", action="store_true", default=None, help="neither read nor write the caches")
    g.add_argument("--quiet", action="store_true", default=None, help="no progress bars")


def _given(args: argparse.Namespace) -> list[str]:
    return [k for k in ROW_DEFAULTS if getattr(args, k, None) not in (None, False)]


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _peek_columns(path: str, split: str | None) -> set[str] | None:
    """Column names of a table without reading it all (None: cannot tell; the loader will say why)."""
    p = Path(path).expanduser()
    try:
        if p.is_file() and p.suffix.lower() in (".jsonl", ".json"):
            return {"<json>"}
        if p.is_file() and p.suffix.lower() == ".csv":
            import pandas as pd

            return set(pd.read_csv(p, nrows=0).columns)
        if p.is_file() and p.suffix.lower() in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            return set(pq.read_schema(p).names)
        if p.is_dir():
            import datasets

            ds = datasets.load_from_disk(str(p))
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[split or "train"] if (split or "train") in ds else next(iter(ds.values()))
            return set(ds.column_names)
    except Exception:  # noqa: BLE001 - unreadable: let the table loader report it
        return None
    return None


def rows_mode(args: argparse.Namespace) -> bool:
    """True when ``args`` value prompt/response rows (module docstring), False for a numeric table."""
    if args.method in ROWS_ONLY:
        return True
    if args.method in TABLE_ONLY:
        return False
    if _given(args):
        return True
    if args.test:
        return False
    cols = _peek_columns(args.data, args.split)
    if cols is None:
        return False
    prompt = args.prompt_column or ROW_DEFAULTS["prompt_column"]
    response = args.response_column or ROW_DEFAULTS["response_column"]
    return "<json>" in cols or {prompt, response} <= cols or "messages" in cols


def run(args: argparse.Namespace) -> int:
    if rows_mode(args):
        return run_rows(args)
    given = _given(args)
    if given:
        raise UserError(f"{_flag(given[0])} is for prompt/response rows; --method {args.method} values a numeric table")
    args.utility = args.utility or "knn"
    return valuation_cli.run(args)


def _budget(args: argparse.Namespace) -> Budget:
    try:
        return Budget(**{f: getattr(args, f) for f in valuation_cli.BUDGET_FLAGS})
    except BudgetError as exc:
        raise UserError(f"{valuation_cli.BUDGET_FLAGS[exc.field]} {exc.rule} (got {exc.value})") from None


def _split_list(s: str | None) -> list[str] | None:
    return [x.strip() for x in s.split(",") if x.strip()] if s else None


def run_rows(args: argparse.Namespace) -> int:
    """``procure value`` on prompt/response rows: load, value, write, print."""
    from procure.annotations.data import Columns, load_annotations
    from procure.annotations.value import ValueOptions, value_annotations
    from procure.llm.grad_store import LoraSpec

    for dest, default in TABLE_FLAGS.items():
        if getattr(args, dest, None) not in (None, default):
            hint = "; the buyer's rows go in --reference" if dest in ("test", "test_split") else ""
            raise UserError(f"{_flag(dest)} is for numeric tables, not prompt/response rows{hint}")
    o = {k: (getattr(args, k) if getattr(args, k, None) is not None else v) for k, v in ROW_DEFAULTS.items()}
    args.interrupted = "interrupted; gradients and coalition utilities computed so far are cached, re-run to continue"
    budget = _budget(args)
    if o["lora_r"] < 1 or o["lora_alpha"] <= 0:
        raise UserError("--lora-r must be >= 1 and --lora-alpha > 0")
    if o["epochs"] <= 0 or o["lr"] < 0 or o["batch_size"] < 1 or o["grad_batch_size"] < 1:
        raise UserError("--epochs must be > 0, --lr >= 0, --batch-size and --grad-batch-size >= 1")
    cols = Columns(
        prompt=o["prompt_column"],
        response=o["response_column"],
        messages=o["messages_column"],
        system=o["system_column"],
        source=args.source,
        id=args.id_col,
        groups=args.groups,
        group_order=_split_list(args.group_order),
    )
    data = load_annotations(args.data, args.split, cols)
    reference = None
    if o["reference"]:
        reference = load_annotations(
            o["reference"],
            o["reference_split"],
            cols,
            flag="--reference",
            split_flag="--reference-split",
            players=False,
        )
    elif o["reference_split"]:
        reference = load_annotations(
            args.data, o["reference_split"], cols, flag="--data", split_flag="--reference-split", players=False
        )
    targets = tuple(_split_list(o["target_modules"]) or ())
    if not targets:
        raise UserError("--target-modules: name at least one module (e.g. q_proj,v_proj)")
    opts = ValueOptions(
        model=o["model"],
        adapters=tuple(o["adapter"]),
        max_length=o["max_length"],
        truncate=bool(o["truncate"]),
        lora=LoraSpec(
            r=o["lora_r"], alpha=o["lora_alpha"], target_modules=targets, seed=args.seed, layers=o["lora_layers"]
        ),
        train={"epochs": o["epochs"], "lr": o["lr"], "batch_size": o["batch_size"]},
        grad_batch_size=o["grad_batch_size"],
        projection_dim=o["projection_dim"],
        bm25_idf=o["bm25_idf"],
        datainf_blocks=o["datainf_blocks"],
        metric=o["metric"],
        budget=budget,
        seed=args.seed,
        cache=not o["no_cache"],
        progress=not o["quiet"],
    )
    if opts.progress is False:
        import transformers

        transformers.utils.logging.disable_progress_bar()
    res = value_annotations(args.method, data, reference, opts)
    out = Path(args.out)
    written = _write(res, out, Path(args.plot) if args.plot else None)
    show(res, data, args.top, sys.stdout)
    for w in written:
        print(f"wrote {w}")
    return 0


def _write(res, out: Path, plot: Path | None) -> list[Path]:
    from procure.annotations.value import write_outputs
    from procure.cache import OutputError

    try:
        return write_outputs(res, out, plot)
    except OutputError as exc:
        raise UserError(f"--out: cannot write {exc.target} ({exc.reason}); the results are in {exc.kept}") from None


def _snippet(row: dict, width: int = 60) -> str:
    """The end of the prompt (where rows of one template differ) and the start of the response."""
    prompt, answer = (" ".join(str(row[k]).split()) for k in ("prompt", "answer"))
    answer = answer if len(answer) <= width // 2 else answer[: width // 2 - 3] + "..."
    room = max(8, width - len(answer) - 4)
    prompt = prompt if len(prompt) <= room else "..." + prompt[-(room - 3) :]
    return f"{prompt} -> {answer}"


def show(res, data, top: int, file) -> None:
    """The note, the top and bottom rows (with a snippet of each), and the per-source table."""
    import pandas as pd
    from rich.console import Console
    from rich.table import Table

    console = Console(file=file)
    console.print(
        f"procure value --method {res.method.replace('_', '-')}: {len(data)} rows, "
        f"{len(res.sources)} sources; {res.note}"
    )
    if data.cut:
        console.print(f"note: {data.cut} rows longer than --max-length were cut at the end (--truncate)")
    rows = res.rows.reset_index(drop=True)
    ranked = rows.sort_values("value", ascending=False, kind="stable")
    k = max(0, top)
    shown = ranked if len(ranked) <= 2 * k else pd.concat([ranked.head(k), ranked.tail(k)])
    t = Table(title=f"top and bottom {k} rows by value" if len(ranked) > 2 * k else "rows by value")
    for c in ("rank", "id", "source", "value", "stderr", "row"):
        t.add_column(c, justify="right" if c in ("rank", "value", "stderr") else "left", overflow="fold")
    pos = {idx: p + 1 for p, idx in enumerate(ranked.index)}
    prev = None
    for idx, r in shown.iterrows():
        if prev is not None and pos[idx] != pos[prev] + 1:
            t.add_row("...", "", "", "", "", "")
        t.add_row(
            str(pos[idx]),
            str(r["id"]),
            str(r["source"]),
            f"{r['value']:.5g}",
            f"{r['stderr']:.3g}",
            _snippet(data.rows[idx]),
        )
        prev = idx
    console.print(t)
    s = Table(title="sources (value = sum over rows; rank 1 = most valuable)")
    for c in ("rank", "source", "value", "stderr", "mean", "n"):
        s.add_column(c, justify="left" if c == "source" else "right")
    for _, r in res.sources.sort_values("rank").head(max(2 * k, 20)).iterrows():
        s.add_row(
            str(r["rank"]), str(r["source"]), f"{r['value']:.5g}", f"{r['stderr']:.3g}", f"{r['mean']:.5g}", str(r["n"])
        )
    console.print(s)
