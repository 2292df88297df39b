"""The ``procure`` command line.

Each subsystem registers its own subcommands (``register(subparsers)`` in ``procure/<pkg>/cli.py``), so this
module only dispatches. User mistakes raise :class:`procure.errors.UserError` and end as one line on stderr
with exit code 2; Ctrl-C exits with 130 and one line saying what was kept.

``import procure`` sets ``OMP_WAIT_POLICY=PASSIVE`` (unless set already) before torch is imported.
"""

from __future__ import annotations

import argparse
import os
import sys

from procure.annotations import cli as value_cli  # `procure value`: tables (valuation.cli) and LLM rows
from procure.market import cli as market_cli
from procure.pipeline import cli as pipeline_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="procure", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"procure {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for mod in (value_cli, market_cli, pipeline_cli):
        mod.register(sub)
    return parser


def _version() -> str:
    from procure import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    from pydantic import ValidationError

    from procure.errors import UserError, format_validation_error

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except UserError as exc:
        print(f"procure: error: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        print(f"procure: error: {format_validation_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # each command says what an interruption left behind (`run`: a consistent ledger to resume)
        message = getattr(args, "interrupted", None) or "interrupted; nothing was written"
        print(f"procure: {message}", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
