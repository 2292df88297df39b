"""The pipeline's data types and the protocols its parts implement (imports nothing else of the pipeline).

A run is composed where it starts (``procure.pipeline.loop.run_recipe`` or the CLI): a :class:`Scenario` per
seed (where candidates, warm-up rows and evaluation tasks come from) and one :class:`Learner` (the model that is
fine-tuned in stages), handed to the runner together with the :class:`World` (the process group).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from procure.tasks.base import Task

__all__ = ["Candidate", "Example", "Learner", "Scenario", "Task", "World", "coalition_key", "digest"]

#: one training row: ``{"prompt", "answer"[, "system"]}``
Example = dict[str, str]


def digest(obj: Any) -> str:
    """A short content hash of a JSON-able object (16 hex digits of SHA-256 over its sorted-key JSON)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def coalition_key(sellers: Sequence[int]) -> str:
    """The ledger's name of a coalition of sellers: ``"0+2"``; ``"-"`` for the empty one."""
    return "+".join(str(s) for s in sorted(sellers)) or "-"


@dataclass(frozen=True)
class Candidate:
    """One seller's dataset in one round. ``noise`` is the known corrupted share in simulations (else None)."""

    seller: int
    examples: list[Example]
    noise: float | None = None

    def digest(self) -> str:
        return digest(self.examples)


class Scenario(Protocol):
    """Where data and evaluation come from, for one seed."""

    n_sellers: int

    def warmup_examples(self) -> list[Example]: ...

    def candidates(self, round: int, rng: Any) -> list[Candidate]:
        """All sellers' datasets of a round (index = seller id; ``rng`` a ``numpy.random.Generator``); the loop
        drops sellers that left."""
        ...

    def reference_examples(self) -> list[Example]:
        """The buyer's representative set (BM25 queries, validation gradient of the influence methods)."""
        ...

    def task(self, split: str) -> Task: ...


class Learner(Protocol):
    """A model that can be fine-tuned in stages; states are adapter folders (None = the base model)."""

    def train(
        self, state: Path | None, examples: list[Example], out_dir: Path, seed: int, epochs: float | None = None
    ) -> dict[str, Any]:
        """Fine-tune ``state`` on ``examples``, write the new adapter into ``out_dir``; return
        ``{"n_tokens": int, "final_loss": float}``."""
        ...

    def evaluate(self, state: Path | None, task: Task, seed: int) -> float:
        """The task metric of ``state`` (``task.score`` of its generations)."""
        ...

    def grads(
        self, state: Path | None, examples: list[Example], reference: list[Example], seed: int
    ) -> tuple[dict, dict]:
        """Per-sample LoRA gradients of ``examples`` and the mean gradient of ``reference`` at ``state``."""
        ...

    def close(self) -> None: ...


@dataclass
class World:
    """Process group for sharding coalition trainings (accelerate); a single process by default."""

    index: int = 0
    size: int = 1
    barrier: Callable[[], None] = field(default=lambda: None)

    @property
    def is_main(self) -> bool:
        return self.index == 0

    @classmethod
    def detect(cls) -> World:
        """The process group of ``accelerate launch`` (``WORLD_SIZE`` > 1), else a single process."""
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        import torch
        from accelerate import PartialState

        st = PartialState(cpu=not torch.cuda.is_available())  # gloo on a CPU-only machine
        return cls(st.process_index, st.num_processes, st.wait_for_everyone)
