"""User-facing errors: the CLI prints these as one line and exits with code 2 (no traceback)."""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any


class UserError(Exception):
    """A mistake in the user's input (file, column, option, recipe field). Message = one line naming the
    field and the fix."""


def format_validation_error(exc: Exception, source: str = "", model: Any = None) -> str:
    """One line from a pydantic ``ValidationError``: the first failing field's dotted path and its message.

    Unknown fields (typos) come first, since a misspelt required field also shows up as "Field required";
    with ``model`` (the validated pydantic class) an unknown field names the closest known one."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc).splitlines()[0]
    errs = errors()
    if not errs:
        return str(exc).splitlines()[0]
    extra = [e for e in errs if e.get("type") == "extra_forbidden"]
    first = extra[0] if extra else errs[0]
    loc_parts = tuple(first.get("loc", ()))
    loc = ".".join(str(p) for p in loc_parts) or "<root>"
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if first.get("type") == "extra_forbidden":
        msg = "unknown field" + _did_you_mean(loc_parts, errs, model)
    more = f" (+{len(errs) - 1} more)" if len(errs) > 1 else ""
    where = f"{source}: " if source else ""
    return f"{where}field '{loc}': {msg}{more}"


def _did_you_mean(loc: tuple, errs: list[dict], model: Any) -> str:
    """' (did you mean 'rounds'?)' for an unknown field: the closest missing sibling, else the closest field of
    ``model`` at that place; ' (check the spelling)' when nothing is close."""
    if not loc:
        return " (check the spelling)"
    name, parent = str(loc[-1]), tuple(loc[:-1])
    missing = [str(e["loc"][-1]) for e in errs if e.get("type") == "missing" and tuple(e["loc"][:-1]) == parent]
    known = missing + [f for f in _fields_at(model, parent) if f not in missing]
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else " (check the spelling)"


def _fields_at(model: Any, loc: tuple) -> list[str]:
    """Field names of the pydantic model reached from ``model`` along ``loc`` (union members are chosen by the
    discriminator tag that pydantic puts in the location); [] when the path leaves the models."""
    current = [model] if _is_model(model) else []
    for part in loc:
        if len(current) > 1:  # a tagged union: the tag names the member
            current = [m for m in current if part in _literal_values(m)]
            continue
        if not current or isinstance(part, int):
            if not current:
                return []
            continue
        field = current[0].model_fields.get(str(part))
        if field is None:
            return []
        current = _models_in(field.annotation)
    if len(current) == 1:
        return list(current[0].model_fields)
    return []


def _is_model(x: Any) -> bool:
    return isinstance(x, type) and hasattr(x, "model_fields")


def _models_in(annotation: Any) -> list[Any]:
    if _is_model(annotation):
        return [annotation]
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _models_in(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [m for a in typing.get_args(annotation) for m in _models_in(a)]
    if origin in (list, tuple, dict):
        args = typing.get_args(annotation)
        return _models_in(args[-1]) if args else []
    return []


def _literal_values(model: Any) -> set[str]:
    field = model.model_fields.get("kind")
    if field is None or typing.get_origin(field.annotation) is not typing.Literal:
        return set()
    return {str(v) for v in typing.get_args(field.annotation)}
