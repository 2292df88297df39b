"""CLI: ``procure run RECIPE [--out DIR] [--resume]`` and ``procure report DIR``."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="run a staged procurement recipe (YAML) into a run directory")
    run.add_argument("recipe", help="recipe YAML (see recipes/)")
    run.add_argument("--out", default=None, help="run directory (default: runs/<recipe name>)")
    run.add_argument("--resume", action="store_true", help="continue the run in --out after a crash or Ctrl-C")
    run.set_defaults(func=_run)
    rep = sub.add_parser("report", help="write report.md and plots for a run directory")
    rep.add_argument("run_dir", help="a directory written by `procure run`")
    rep.set_defaults(func=_report)


def _run(args: argparse.Namespace) -> int:
    from procure.pipeline.loop import run_recipe
    from procure.pipeline.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    out = Path(args.out) if args.out else Path("runs") / recipe.name
    run_dir = run_recipe(recipe, out, resume=args.resume)
    print(f"procure: run complete; report at {run_dir / 'report.md'}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from procure.errors import UserError
    from procure.pipeline.report import write_report

    d = Path(args.run_dir)
    if not (d / "ledger.sqlite").is_file():
        raise UserError(f"no ledger.sqlite in {d}; give the --out directory of a `procure run`")
    print(write_report(d))
    return 0
