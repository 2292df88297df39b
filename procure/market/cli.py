"""`procure market ...`: simulate (multi-period dynamics), allocate (seeds/003 payoff flows), clear (one round)."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

from procure.errors import UserError


def register(subparsers) -> None:
    p = subparsers.add_parser("market", help="data-market engine: simulate, allocate, clear")
    sub = p.add_subparsers(dest="market_command", metavar="MARKET_COMMAND")
    sub.required = True

    s = sub.add_parser("simulate", help="multi-period fairshare/exploitative pricing simulation (seeds/004)")
    s.add_argument("recipe", help="YAML recipe, e.g. recipes/market-fairshare.yaml")
    s.add_argument("--out", default=None, help="output folder (default runs/market-<recipe name>)")
    s.add_argument("--runs", type=int, default=None, help="override the recipe's n_runs")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_simulate)

    a = sub.add_parser("allocate", help="Shapley-fair payoff flows and model rewards under budgets (seeds/003)")
    a.add_argument("--values", required=True, help="JSON list (or {'values': [...], 'names': [...]}) or CSV/text")
    a.add_argument("--budgets", required=True, help="one number for all or comma-separated per party; 'inf' allowed")
    a.add_argument("--caps", default=None, help="desired model value per party (comma-separated; 'inf' = none)")
    a.add_argument("--names", default=None, help="comma-separated party names")
    a.add_argument("--monotone", default="warn", choices=["warn", "closure", "clip"])
    a.add_argument("--out", default="market-allocation", help="output folder (JSON, CSV, flows.png)")
    a.set_defaults(func=_allocate)

    c = sub.add_parser("clear", help="clear one round: candidates' values, a budget, a contract")
    c.add_argument(
        "--values",
        required=True,
        help="comma-separated data values, or a CSV with a 'value' column (procure value's <out>_sources.csv)",
    )
    c.add_argument(
        "--budget",
        required=True,
        type=float,
        help="the buyer's money for this round, in the values' units: the most it pays upfront under fairshare "
        "(>= 0, 'inf' = unlimited); a royalty buyer pays nothing now (its limit is --max-rate)",
    )
    c.add_argument("--contract", default="fairshare", choices=["fairshare", "royalty"], help="pricing contract")
    c.add_argument(
        "--max-rate",
        type=float,
        default=0.5,
        help="royalty contract: the largest total rate (share of the realised gain paid to all sellers together) "
        "the buyer accepts, in [0, 1) (default 0.5)",
    )
    c.set_defaults(func=_clear)


def _numbers(text: str, field: str) -> np.ndarray:
    try:
        return np.array([float(x) for x in text.replace(";", ",").split(",") if x.strip()], dtype=float)
    except ValueError:
        raise UserError(f"{field}: expected comma-separated numbers (got {text!r})") from None


def _read_values(path: str) -> tuple[np.ndarray, list[str] | None]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--values: file not found: {p}")
    text = p.read_text()
    names = None
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"--values: {p} is not valid JSON ({exc.msg})") from None
        if isinstance(data, dict):
            names = data.get("names")
            data = data.get("values")
        if not isinstance(data, list):
            raise UserError("--values: JSON must be a list of numbers or {'values': [...], 'names': [...]}")
        try:
            vals = np.array(data, dtype=float)
        except (TypeError, ValueError):
            raise UserError("--values: JSON values must all be numbers") from None
    else:
        vals = _numbers(text.replace("\n", ","), "--values")
    return vals.reshape(-1), names


def _simulate(args: argparse.Namespace) -> int:
    from procure.market.dynamics import simulate
    from procure.market.recipe import load_recipe
    from procure.market.report import write_simulation

    recipe = load_recipe(args.recipe)
    if args.runs is not None:
        if args.runs < 1:
            raise UserError("--runs: must be >= 1")
        recipe = recipe.model_copy(update={"n_runs": args.runs})
    out = Path(args.out or f"runs/market-{Path(args.recipe).stem}")
    res = simulate(recipe, progress=not args.quiet)
    names: dict[str, str] = {}

    def build(tmp: Path) -> None:
        names.update({k: p.name for k, p in write_simulation(res, tmp).items()})

    _publish(build, out, "--out")
    print((out / names["summary"]).read_text())
    print("wrote " + ", ".join(str(out / n) for n in names.values()))
    return 0


def _publish(build, folder: Path, flag: str) -> None:
    """Write the result files atomically; an unwritable folder is one line saying where the results are."""
    from procure.cache import OutputError, publish_files

    try:
        publish_files(build, folder, what="market")
    except OutputError as exc:
        raise UserError(f"{flag}: cannot write {exc.target} ({exc.reason}); the results are in {exc.kept}") from None


def _flag_errors(call, **flags: str):
    """Run ``call()``; a library ``UserError`` that starts with an argument name gets its flag's name."""
    try:
        return call()
    except UserError as exc:
        msg = str(exc)
        for name, flag in flags.items():
            if msg.startswith(f"{name}:"):
                raise UserError(flag + msg[len(name) :]) from None
        raise


def _allocate(args: argparse.Namespace) -> int:
    from procure.market.collaborative import allocate, n_parties
    from procure.market.report import write_allocation

    values, names = _read_values(args.values)
    n = n_parties(values)
    budgets = _numbers(args.budgets, "--budgets")
    if budgets.size == 1:
        budgets = np.full(n, budgets[0])
    caps = None if args.caps is None else _numbers(args.caps, "--caps")
    if args.names:
        names = [x.strip() for x in args.names.split(",")]
    if names is not None and len(names) != n:
        raise UserError(f"--names: need {n} names, got {len(names)}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        alloc = _flag_errors(
            lambda: allocate(values, budgets, caps=caps, monotone=args.monotone),
            values="--values",
            budgets="--budgets",
            caps="--caps",
        )
    for w in caught:
        print(f"procure: warning: {w.message}", file=sys.stderr)
    out = Path(args.out)
    written: dict[str, str] = {}

    def build(tmp: Path) -> None:
        written.update({k: p.name for k, p in write_allocation(alloc, tmp, names).items()})

    _publish(build, out, "--out")
    files = {k: out / v for k, v in written.items()}
    names = names or [f"party{i}" for i in range(n)]
    print(f"{'party':>12} {'budget':>8} {'v(i)':>8} {'shapley':>8} {'lam':>6} {'payoff':>8} {'model':>8}")
    for i in range(n):
        print(
            f"{names[i]:>12} {alloc.budgets[i]:>8.4g} {alloc.v_single[i]:>8.4f} {alloc.shapley[i]:>8.4f} "
            f"{alloc.lam[i]:>6.3f} {alloc.payoffs[i]:>8.4f} {alloc.model_rewards[i]:>8.4f}"
        )
    print("wrote " + ", ".join(str(f) for f in files.values()))
    return 0


def _clear(args: argparse.Namespace) -> int:
    from procure.market.round import clear_round

    values, names = _clear_values(args.values)
    out = clear_round(values, args.budget, args.contract, max_rate=args.max_rate)
    print(json.dumps(out.to_dict() | ({"names": names} if names else {}), indent=2))
    return 0


def _clear_values(text: str) -> tuple[np.ndarray, list[str] | None]:
    """Comma-separated numbers, or a CSV file with a ``value`` column (and optionally ``source`` names), e.g. the
    ``<out>_sources.csv`` that ``procure value`` writes: candidates in the file's row order."""
    p = Path(text)
    if p.suffix.lower() != ".csv":
        return _numbers(text, "--values"), None
    import csv

    if not p.is_file():
        raise UserError(f"--values: file not found: {p}")
    with p.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "value" not in rows[0]:
        raise UserError(f"--values {p}: needs a 'value' column (e.g. the _sources.csv of procure value)")
    try:
        values = np.array([float(r["value"]) for r in rows])
    except ValueError:
        raise UserError(f"--values {p}: the 'value' column must hold numbers") from None
    return values, [r["source"] for r in rows] if "source" in rows[0] else None
