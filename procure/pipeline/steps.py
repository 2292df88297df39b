"""Ledger mechanics of a run: steps recorded once under an idempotent key, shared between processes.

A step is computed by the main process and written with its table rows in ONE ledger transaction; every other
process reads it back. With several processes every process calls every step in the same order and meets one
barrier per call, so the barriers pair up whether or not the step was already recorded (``--resume``).
Knows nothing of models, valuation or markets.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from procure.errors import UserError
from procure.pipeline.ledger import Ledger
from procure.pipeline.protocols import World

Rows = dict[str, list[dict[str, Any]]]


def derive_seed(*parts: int | str) -> int:
    """A 32-bit seed derived from the parts (strings hashed), stable across runs and platforms."""
    ints = [p if isinstance(p, int) else int(hashlib.sha256(p.encode()).hexdigest()[:8], 16) for p in parts]
    return int(np.random.SeedSequence([abs(i) for i in ints]).generate_state(1)[0])


class Steps:
    """The ledger of ``run_dir`` as seen by one process of ``world``.

    Opening checks that ``run_dir`` is new (or ``resume``) and was started with the same recipe
    (``recipe_json``, canonical JSON; ``recipe_yaml`` is the copy written next to the ledger)."""

    def __init__(
        self, run_dir: Path, world: World, *, recipe_json: str, recipe_yaml: dict[str, Any], resume: bool
    ) -> None:
        self.run_dir = Path(run_dir)
        self.world = world
        path = self.run_dir / "ledger.sqlite"
        if world.is_main:
            if path.exists() and not resume:
                raise UserError(
                    f"--out {self.run_dir} already holds a run; pass --resume to continue it or choose another --out"
                )
            self.ledger = Ledger.open(path)
            stored = self.ledger.get_meta("recipe")
            if stored is None:
                self.ledger.set_meta("recipe", recipe_json)
                (self.run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe_yaml, sort_keys=False))
            elif json.loads(stored) != json.loads(recipe_json):
                self.ledger.close()
                raise UserError(
                    f"recipe differs from the one {self.run_dir} was started with; resume with the same recipe "
                    f"(copy in {self.run_dir / 'recipe.yaml'}) or choose another --out"
                )
        world.barrier()
        if not world.is_main:
            self.ledger = Ledger.open(path)

    def close(self) -> None:
        self.ledger.close()

    def get(self, key: str) -> Any | None:
        """The payload of a recorded step as this process sees it now (None if not recorded)."""
        return self.ledger.get(key)

    def sync_get(self, key: str) -> Any | None:
        """:meth:`get` that every process answers alike (read between two barriers), for control flow."""
        if self.world.size == 1:
            return self.ledger.get(key)
        self.world.barrier()
        got = self.ledger.get(key)
        self.world.barrier()
        return got

    def barrier(self) -> None:
        """Meet the other processes (a no-op in a single process)."""
        if self.world.size > 1:
            self.world.barrier()

    def record(self, key: str, payload: Any, *, kind: str, rows: Rows | None = None, **kw: Any) -> Any:
        """Record a step computed by this process (no barrier): see :meth:`Ledger.record`."""
        return self.ledger.record(key, kind=kind, payload=payload, rows=rows, **kw)

    def shared(
        self,
        key: str,
        compute: Callable[[], Any],
        *,
        kind: str,
        arm: str | None = None,
        round: int | None = None,
        rows: Callable[[Any], Rows] | None = None,
    ) -> Any:
        """A step done once by the main process and recorded in one transaction; the others read it back.

        ``compute()`` gives the JSON-able payload, ``rows(payload)`` its rows in the typed tables."""
        got = self.ledger.get(key)
        if got is None and self.world.is_main:
            s0 = time.perf_counter()
            payload = json.loads(json.dumps(compute()))
            got = self.ledger.record(
                key,
                kind=kind,
                payload=payload,
                arm=arm,
                round=round,
                rows=rows(payload) if rows else None,
                seconds=time.perf_counter() - s0,
            )
        if self.world.size > 1:
            self.world.barrier()
            got = self.ledger.get(key)
        return got
