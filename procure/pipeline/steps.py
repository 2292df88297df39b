"""Ledger mechanics of a run: steps recorded once under an idempotent key, shared between processes.

A step is computed by the main process and written with its table rows in ONE ledger transaction; every other
process reads it back. With several processes every process calls every step in the same order and meets one
barrier per call, so the barriers pair up whether or not the step was already recorded (``--resume``).
Knows nothing of models, valuation or markets.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from procure.cache import write_file_atomically
from procure.errors import UserError
from procure.pipeline import console
from procure.pipeline.ledger import Ledger
from procure.pipeline.protocols import World

Rows = dict[str, list[dict[str, Any]]]


def derive_seed(*parts: int | str) -> int:
    """A 32-bit seed derived from the parts (strings hashed), stable across runs and platforms."""
    ints = [p if isinstance(p, int) else int(hashlib.sha256(p.encode()).hexdigest()[:8], 16) for p in parts]
    return int(np.random.SeedSequence([abs(i) for i in ints]).generate_state(1)[0])


class Steps:
    """The ledger of ``run_dir`` as seen by one process of ``world``.

    Opening takes the run directory's lock (:class:`RunLock`, main process) and checks that ``run_dir`` is new
    (or ``resume``) and was started with the same recipe (``recipe_json``, canonical JSON; ``recipe_yaml`` is
    the copy written next to the ledger). A directory whose run stopped before finishing a round (a failed
    start) is continued, or started over with a corrected recipe, with or without ``resume``."""

    def __init__(
        self, run_dir: Path, world: World, *, recipe_json: str, recipe_yaml: dict[str, Any], resume: bool
    ) -> None:
        self.run_dir = Path(run_dir)
        self.world = world
        self.lock: RunLock | None = None
        path = self.run_dir / "ledger.sqlite"
        if world.is_main:
            self.lock = RunLock(self.run_dir)
            try:
                self.ledger = Ledger.open(path)
                try:
                    self._check_recipe(recipe_json, recipe_yaml, resume)
                except BaseException:
                    self.ledger.close()
                    raise
            except BaseException:
                self.lock.release()
                raise
        world.barrier()
        if not world.is_main:
            self.ledger = Ledger.open(path)
        console.attach(self.run_dir)  # the libraries' output continues in run_dir/run.log

    def _check_recipe(self, recipe_json: str, recipe_yaml: dict[str, Any], resume: bool) -> None:
        """A new directory, or one whose run stopped before its first round (a failed start: continued, or
        started over when the recipe was corrected), needs no ``resume``; a run with finished rounds does, and
        only with the same recipe."""
        stored = self.ledger.get_meta("recipe")
        ours = self.ledger.get_meta("recipe_file") or ("recipe.yaml" if stored else None)
        rounds = self.ledger.n_steps("settle")
        same = stored is not None and json.loads(stored) == json.loads(recipe_json)
        if stored is not None and rounds == 0 and not same:
            console.status(f"{self.run_dir} held a run that stopped before its first round; starting it over")
            self._start_over()
            stored = None
        if stored is None:
            self.ledger.set_meta("recipe", recipe_json)
            self.ledger.set_meta("recipe_file", _write_recipe_copy(self.run_dir, recipe_yaml, ours))
            return
        if rounds and not resume:
            raise UserError(
                f"--out {self.run_dir} already holds a run ({rounds} arm-rounds done); pass --resume to continue "
                "it or choose another --out"
            )
        if not same:
            where = _first_difference(json.loads(stored), json.loads(recipe_json))
            copy = self.run_dir / (ours or "recipe.yaml")
            raise UserError(
                f"recipe differs from the one {self.run_dir} was started with (field '{where}'); resume with that "
                f"recipe (copy in {copy}), or start over: delete {self.run_dir} ({rounds} arm-rounds done) or "
                "choose another --out"
            )

    def _start_over(self) -> None:
        """Forget a run that did no round: ledger rows, adapters (named by content, not by model), report."""
        self.ledger.clear()
        for sub in ("adapters", "plots"):
            shutil.rmtree(self.run_dir / sub, ignore_errors=True)
        (self.run_dir / "report.md").unlink(missing_ok=True)

    def close(self) -> None:
        self.ledger.close()
        if self.lock is not None:
            self.lock.release()
            self.lock = None

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


class RunLock:
    """An exclusive ``flock`` on ``run_dir/run.lock`` for as long as a run has the directory open; the file
    holds the holder's pid. The kernel drops the lock when its process ends (even by SIGKILL), so a dead run
    never blocks the next one."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / "run.lock"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise UserError(
                f"cannot write the run directory {self.path.parent} ({exc.strerror or exc}); choose a writable one"
            ) from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(self.fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(self.fd)
            self.fd = None
            raise UserError(
                f"run directory {self.path.parent} is in use by process {holder} (a running `procure run`); wait "
                "for it to end or stop it, then resume"
            ) from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def lock_holder(run_dir: Path) -> int | None:
    """The pid of the process running ``run_dir`` now (it holds :class:`RunLock`), or None."""
    path = Path(run_dir) / "run.lock"
    if not path.is_file():
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        text = os.pread(fd, 64, 0).decode(errors="replace").strip()
        return int(text) if text.isdigit() else -1
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _write_recipe_copy(run_dir: Path, recipe: dict[str, Any], ours: str | None) -> str:
    """Write the recipe as validated next to the ledger; returns the file name. ``recipe.yaml`` unless another
    file of that name is there that this run directory did not write (``ours``), e.g. the user's own recipe run
    with ``--out`` its folder: that file is never overwritten, the copy goes to ``recipe.run.yaml`` instead."""
    text = yaml.safe_dump(recipe, sort_keys=False)
    name = "recipe.yaml"
    target = run_dir / name
    if target.exists() and ours != name and target.read_text(errors="replace") != text:
        name = "recipe.run.yaml"
        console.status(f"{target} is not overwritten; the recipe as run is in {run_dir / name}")
    write_file_atomically(run_dir / name, text)
    return name


def _first_difference(a: Any, b: Any, path: str = "") -> str:
    """The dotted path of the first field where two JSON values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{path}.{k}" if path else str(k))
    return path or "<root>"
