"""User-facing errors: the CLI prints these as one line and exits with code 2 (no traceback)."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input (file, column, option, recipe field). Message = one line naming the
    field and the fix."""


def format_validation_error(exc: Exception, source: str = "") -> str:
    """One line from a pydantic ``ValidationError``: the first failing field's dotted path and its message."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc).splitlines()[0]
    errs = errors()
    if not errs:
        return str(exc).splitlines()[0]
    first = errs[0]
    loc = ".".join(str(p) for p in first.get("loc", ())) or "<root>"
    msg = first.get("msg", "invalid value")
    if first.get("type") == "extra_forbidden":
        msg = "unknown field (check the spelling)"
    more = f" (+{len(errs) - 1} more)" if len(errs) > 1 else ""
    where = f"{source}: " if source else ""
    return f"{where}field '{loc}': {msg}{more}"
