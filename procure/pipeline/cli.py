"""CLI: ``procure run RECIPE [--out DIR] [--resume] [--verbose] [--dry-run]`` and ``procure report DIR``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="run a staged procurement recipe (YAML) into a run directory")
    run.add_argument("recipe", help="recipe YAML (see recipes/)")
    run.add_argument("--out", default=None, help="run directory (default: runs/<recipe name>)")
    run.add_argument("--resume", action="store_true", help="continue the run in --out after a crash or Ctrl-C")
    run.add_argument(
        "--verbose", action="store_true", help="also show the libraries' logs (vLLM, transformers, ...) on the terminal"
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="validate the recipe and print the plan (arms, fine-tunes, evaluations, estimated time); train nothing",
    )
    run.set_defaults(func=_run)
    rep = sub.add_parser("report", help="write report.md and plots for a run directory")
    rep.add_argument("run_dir", help="a directory written by `procure run`")
    rep.set_defaults(func=_report)


def _run(args: argparse.Namespace) -> int:
    from procure.pipeline import console
    from procure.pipeline.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    out = Path(args.out) if args.out else Path("runs") / recipe.name
    if args.dry_run:
        from procure.pipeline.plan import describe

        print(describe(recipe, out))
        return 0
    _check_writable(out)
    args.interrupted = (
        f"interrupted; the ledger in {out} is consistent: continue with "
        f"`procure run {args.recipe} --out {out} --resume`"
    )
    with console.capture(verbose=args.verbose):
        arms = len(recipe.arms())
        where = "" if args.verbose else f"; library logs in {out / console.LOG_NAME}"
        verb = "resuming" if (out / "ledger.sqlite").exists() else "starting"  # make demo always passes --resume
        console.status(
            f"{verb} run '{recipe.name}' ({arms} arm{'s' * (arms > 1)} x {recipe.rounds} rounds) in {out}{where}"
        )
        from procure.pipeline.loop import run_recipe

        run_dir = run_recipe(recipe, out, resume=args.resume)
    print(f"procure: run complete; report at {run_dir / 'report.md'}")
    return 0


def _check_writable(out: Path) -> None:
    """``--out`` must be (or be creatable in) a writable folder: one line before any model is prepared."""
    from procure.errors import UserError

    probe = out.resolve()
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"--out {out}: {probe} is a file, not a folder; choose another --out")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: {probe} is not writable; choose another --out")


def _report(args: argparse.Namespace) -> int:
    import sys

    from procure.errors import UserError
    from procure.pipeline.report import run_progress, write_report

    d = Path(args.run_dir)
    if not (d / "ledger.sqlite").is_file():
        raise UserError(f"no ledger.sqlite in {d}; give the --out directory of a `procure run`")
    path = write_report(d)
    progress = run_progress(d)
    if progress.incomplete:
        hint = (
            f"it is still running (process {progress.running})"
            if progress.running
            else f"continue it with `procure run {d / progress.recipe_file} --out {d} --resume`"
        )
        print(f"procure: warning: the run in {d} is incomplete ({progress.summary}); {hint}", file=sys.stderr)
    print(path)
    return 0
