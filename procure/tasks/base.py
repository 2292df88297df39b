"""The task interface the pipeline uses, and the prompt-template loader (templates live in ``prompts/``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol, runtime_checkable

from procure.errors import UserError


@runtime_checkable
class Task(Protocol):
    """What the staged-procurement pipeline needs from a task.

    ``eval_prompts()`` are the user texts to generate for (with ``system`` as the system message);
    ``score(generations)`` takes, for every prompt in that order, the list of sampled completions and returns
    the task metric; ``utility(metric)`` maps the metric to "higher = better" (e.g. -AvgErr), the scale data
    values are computed on.
    """

    name: str
    metric_name: str
    higher_is_better: bool
    system: str | None

    def eval_prompts(self) -> list[str]: ...

    def score(self, generations: list[list[str]]) -> float: ...

    def utility(self, metric: float) -> float: ...


def prompts_dir() -> Path:
    """The folder of prompt templates: ``$PROCURE_PROMPTS`` if set, else ``prompts/`` of the source checkout."""
    env = os.environ.get("PROCURE_PROMPTS")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "prompts"


def load_template(name: str) -> dict[str, str]:
    """Sections of ``prompts/<name>.txt``: '#' lines are comments, a line ``[section]`` starts a section.

    Section texts keep their inner newlines; leading and trailing blank lines are dropped.
    """
    path = prompts_dir() / f"{name}.txt"
    if not path.is_file():
        raise UserError(f"prompt template '{name}': {path} not found; set PROCURE_PROMPTS to the prompts/ folder")
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            continue
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]") and " " not in stripped:
            current = sections.setdefault(stripped[1:-1], [])
        elif current is not None:
            current.append(line)
    return {k: "\n".join(v).strip("\n") for k, v in sections.items()}
