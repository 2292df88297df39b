"""Model states of a run: content-addressed nodes, each trained at most once and evaluated at most once per split.

A node is ``node(parent, round, coalition, data digest)``: the parent state fine-tuned on the union of a
coalition's datasets. Its adapter folder appears atomically under ``run_dir/adapters`` and its ledger row
(``nodes``) is written in the same step, so an interrupted training is simply redone on ``--resume``; arms
that reach the same state share it. ``local=True`` / ``sync=False`` are the sharded coalition trainings of
``accelerate launch`` (each process trains and evaluates its own share; see ``procure.pipeline.loop``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from procure.cache import build_once
from procure.pipeline.protocols import Candidate, Example, Learner, Task, coalition_key, digest
from procure.pipeline.steps import Steps, derive_seed


@dataclass
class Clock:
    """Seconds spent in one round's phases (``timings`` table)."""

    train: float = 0.0
    eval: float = 0.0
    value: float = 0.0


class States:
    """Trains and evaluates the states of one run. ``task_of(seed, split)`` is the evaluation task."""

    def __init__(self, steps: Steps, learner: Learner, task_of: Callable[[int, str], Task]) -> None:
        self.steps = steps
        self.learner = learner
        self.task_of = task_of

    def adapter_path(self, node: str) -> Path | None:
        """The adapter folder of a trained state (None = the base model)."""
        row = self.steps.get(f"train|{node}")
        if row is None:
            raise RuntimeError(f"state {node} has not been trained")
        return None if row["adapter"] is None else self.steps.run_dir / row["adapter"]

    def base(self, seed: int) -> str:
        """The base model's node for ``seed`` (no adapter)."""
        node = f"base-s{seed}"
        self._record(node, parent=None, round=0, coalition="-", n_rows=0, adapter=None, meta={})
        return node

    def child(self, parent: str, t: int, members: list[Candidate], seed: int, clock: Clock, sync: bool = True) -> str:
        """The state A(S; parent) for coalition S = ``members`` (``parent`` itself when S holds no rows)."""
        members = sorted((c for c in members if c.examples), key=lambda c: c.seller)  # empty datasets add nothing
        examples = [e for c in members for e in c.examples]
        if not examples:
            return parent
        coal = coalition_key([c.seller for c in members])
        node = "n-" + digest([parent, t, coal, [c.digest() for c in members]])
        self.train(node, parent, t, coal, examples, derive_seed(seed, t, coal, "train"), clock=clock, local=not sync)
        return node

    def train(
        self,
        node: str,
        parent: str,
        t: int,
        coal: str,
        examples: list[Example],
        seed: int,
        *,
        clock: Clock,
        epochs: float | None = None,
        local: bool = False,
    ) -> None:
        """Train ``node`` = ``parent`` fine-tuned on ``examples`` unless it is recorded (main process, or this
        process when ``local``)."""
        if self.steps.get(f"train|{node}") is None and (local or self.steps.world.is_main):
            self._train(node, parent, t, coal, examples, seed, epochs, clock)
        if not local:
            self.steps.barrier()

    def _train(self, node, parent, t, coal, examples, seed, epochs, clock: Clock) -> None:
        target = self.steps.run_dir / "adapters" / node
        info_file = target / "procure_train.json"
        s0 = time.perf_counter()
        if not info_file.is_file():
            parent_path = self.adapter_path(parent)

            def build(tmp: Path) -> None:
                info = self.learner.train(parent_path, examples, tmp, seed, epochs=epochs)
                (tmp / "procure_train.json").write_text(json.dumps(info))

            build_once(target, build)
        info = json.loads(info_file.read_text())
        secs = time.perf_counter() - s0
        clock.train += secs
        rel = str(target.relative_to(self.steps.run_dir))
        self._record(
            node, parent=parent, round=t, coalition=coal, n_rows=len(examples), adapter=rel, meta=info, secs=secs
        )

    def _record(
        self,
        node: str,
        *,
        parent: str | None,
        round: int,
        coalition: str,
        n_rows: int,
        adapter: str | None,
        meta: dict[str, Any],
        secs: float | None = None,
    ) -> None:
        payload = {"node": node, "parent": parent, "adapter": adapter, "n_rows": n_rows, **meta}
        row = {
            "node": node,
            "parent": parent,
            "round": round,
            "coalition": coalition,
            "n_rows": n_rows,
            "adapter": adapter,
            "n_tokens": meta.get("n_tokens"),
            "final_loss": meta.get("final_loss"),
            "train_s": secs,
        }
        self.steps.record(f"train|{node}", payload, kind="train", round=round, rows={"nodes": [row]}, seconds=secs)

    def evaluate(self, node: str, split: str, seed: int, clock: Clock, sync: bool = True) -> dict[str, float]:
        """``{"metric", "utility"}`` of ``node`` on ``split`` ("val" or "test"), evaluated once per run."""
        key = f"eval|{node}|{split}"
        got = self.steps.get(key)
        if got is None and (self.steps.world.is_main or not sync):
            task = self.task_of(seed, split)
            s0 = time.perf_counter()
            metric = float(self.learner.evaluate(self.adapter_path(node), task, derive_seed(seed, split, "eval")))
            secs = time.perf_counter() - s0
            clock.eval += secs
            payload = {"metric": metric, "utility": float(task.utility(metric))}
            row = {"node": node, "split": split, "metric": metric, "utility": payload["utility"], "eval_s": secs}
            got = self.steps.record(key, payload, kind="eval", rows={"utilities": [row]}, seconds=secs)
        if sync and self.steps.world.size > 1:
            self.steps.barrier()
            got = self.steps.get(key)
        return got
