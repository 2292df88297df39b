"""The run ledger: ``run_dir/ledger.sqlite`` (sqlite3, WAL), one transaction per pipeline step.

Every step of the loop has a key (e.g. ``util|ads-s0|3|0b101|val``). A step's result (a JSON payload) and its
rows in the typed tables (utilities, valuations, offers, purchases, payments, metrics, sellers, timings) are
written in ONE transaction together with the key, so after a crash a step is either fully recorded or not at
all. On ``--resume`` a recorded step is read back instead of recomputed: nothing is lost or counted twice.

Determinism: everything except the ``seconds``/``created`` columns and the ``timings`` table is a function of
the recipe and its seeds, so two runs with the same recipe give equal :meth:`Ledger.dump` (``timings=False``).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from procure.errors import UserError

SCHEMA_VERSION = 1

_TABLES: dict[str, str] = {
    "meta": "key TEXT PRIMARY KEY, value TEXT NOT NULL",
    "steps": "key TEXT PRIMARY KEY, arm TEXT, round INTEGER, kind TEXT NOT NULL, payload TEXT NOT NULL, "
    "seconds REAL, created REAL",
    # model states: the warm-up/base state and every coalition fine-tune A(S; parent); node = content hash
    "nodes": "node TEXT PRIMARY KEY, parent TEXT, round INTEGER, coalition TEXT, n_rows INTEGER, adapter TEXT, "
    "n_tokens INTEGER, final_loss REAL, train_s REAL",
    # every utility evaluation: the task metric of a state on a split and its utility (task units)
    "utilities": "node TEXT, split TEXT, metric REAL, utility REAL, eval_s REAL, PRIMARY KEY (node, split)",
    # which state each arm used as v(S; A_{t-1}) for a coalition S of its round's candidates
    "coalitions": "arm TEXT, round INTEGER, coalition TEXT, node TEXT, utility REAL, "
    "PRIMARY KEY (arm, round, coalition)",
    "candidates": "arm TEXT, round INTEGER, seller INTEGER, n_rows INTEGER, noise REAL, digest TEXT, "
    "PRIMARY KEY (arm, round, seller)",
    "valuations": "arm TEXT, round INTEGER, seller INTEGER, method TEXT, value REAL, stderr REAL, "
    "PRIMARY KEY (arm, round, seller)",
    "offers": "arm TEXT, round INTEGER, seller INTEGER, utility REAL, price REAL, rate REAL, "
    "PRIMARY KEY (arm, round, seller)",
    "purchases": "arm TEXT, round INTEGER, seller INTEGER, price REAL, rate REAL, PRIMARY KEY (arm, round, seller)",
    "payments": "arm TEXT, round INTEGER, seller INTEGER, kind TEXT, amount REAL, "
    "PRIMARY KEY (arm, round, seller, kind)",
    "metrics": "arm TEXT, round INTEGER, split TEXT, metric_name TEXT, metric REAL, utility REAL, node TEXT, "
    "spent REAL, PRIMARY KEY (arm, round, split)",
    "sellers": "arm TEXT, round INTEGER, seller INTEGER, paid REAL, fair REAL, stay_prob REAL, stays INTEGER, "
    "PRIMARY KEY (arm, round, seller)",
    "timings": "arm TEXT, round INTEGER, phase TEXT, seconds REAL, PRIMARY KEY (arm, round, phase)",
}
#: columns that hold wall-clock measurements (excluded from determinism comparisons)
TIMING_COLUMNS = {"steps": ("seconds", "created"), "nodes": ("train_s",), "utilities": ("eval_s",)}


class Ledger:
    """One run's ledger. Open with :meth:`open`; use as a context manager or call :meth:`close`."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path

    @classmethod
    def open(cls, path: str | Path, *, create: bool = True) -> Ledger:
        p = Path(path)
        if not create and not p.is_file():
            raise UserError(f"no ledger at {p}; give the run directory of a `procure run` (it holds ledger.sqlite)")
        existed = p.is_file() and p.stat().st_size > 0
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(p, timeout=60.0, isolation_level=None)  # autocommit; explicit BEGIN per step
        except (OSError, sqlite3.Error) as exc:
            raise UserError(
                f"cannot write the run directory {p.parent} ({_reason(exc)}); choose a writable one"
            ) from None
        conn.row_factory = sqlite3.Row
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            if existed:
                check = conn.execute("PRAGMA quick_check").fetchone()[0]
                if check != "ok":
                    raise sqlite3.DatabaseError(str(check).splitlines()[-1].strip())
            conn.execute("BEGIN IMMEDIATE")
            for name, cols in _TABLES.items():
                conn.execute(f"CREATE TABLE IF NOT EXISTS {name} ({cols})")
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:  # read-only file or folder, disk full, locked
            conn.close()
            raise UserError(f"cannot write {p} ({exc}); check the permissions and free space of {p.parent}") from None
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise UserError(
                f"{p} is damaged or not a procure ledger ({exc}); move {p.parent} aside (or delete it) and run the "
                "recipe again into a fresh run directory"
            ) from None
        return cls(conn, p)

    def close(self) -> None:
        self.conn.close()

    def n_steps(self, kind: str | None = None) -> int:
        """How many steps are recorded (of ``kind``, e.g. ``"settle"``: completed arm-rounds)."""
        if kind is None:
            return int(self.conn.execute("SELECT COUNT(*) FROM steps").fetchone()[0])
        return int(self.conn.execute("SELECT COUNT(*) FROM steps WHERE kind = ?", (kind,)).fetchone()[0])

    def clear(self) -> None:
        """Delete every recorded step and row (the schema stays): the directory starts over."""
        with self._tx():
            for table in _TABLES:
                if table != "meta":
                    self.conn.execute(f"DELETE FROM {table}")
            self.conn.execute("DELETE FROM meta WHERE key != 'schema_version'")

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- meta -------------------------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, key: str, value: str) -> None:
        with self._tx():
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # -- steps ------------------------------------------------------------------------------------------------
    def get(self, key: str) -> Any | None:
        """The payload of a recorded step, or None if the step has not completed."""
        row = self.conn.execute("SELECT payload FROM steps WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def record(
        self,
        key: str,
        *,
        kind: str,
        payload: Any,
        arm: str | None = None,
        round: int | None = None,
        rows: Mapping[str, Iterable[Mapping[str, Any]]] | None = None,
        seconds: float | None = None,
    ) -> Any:
        """Record a completed step and its table rows in one transaction. Idempotent: if ``key`` is already
        recorded nothing is written and the stored payload is returned."""
        text = json.dumps(payload, sort_keys=True, allow_nan=True)
        with self._tx():
            row = self.conn.execute("SELECT payload FROM steps WHERE key = ?", (key,)).fetchone()
            if row is not None:
                return json.loads(row[0])
            for table, items in (rows or {}).items():
                if table not in _TABLES or table in ("meta", "steps"):
                    raise ValueError(f"unknown ledger table {table!r}")
                for item in items:
                    cols = ", ".join(item)
                    marks = ", ".join("?" for _ in item)
                    self.conn.execute(f"INSERT OR REPLACE INTO {table} ({cols}) VALUES ({marks})", tuple(item.values()))
            self.conn.execute(
                "INSERT INTO steps VALUES (?, ?, ?, ?, ?, ?, ?)", (key, arm, round, kind, text, seconds, time.time())
            )
        return json.loads(text)

    # -- reading ----------------------------------------------------------------------------------------------
    def rows(self, table: str, where: str = "", params: tuple = ()) -> list[dict[str, Any]]:
        if table not in _TABLES:
            raise ValueError(f"unknown ledger table {table!r}")
        sql = f"SELECT * FROM {table}" + (f" WHERE {where}" if where else "")
        return [dict(r) for r in self.conn.execute(sql, params)]

    def dump(self, *, timings: bool = False) -> dict[str, list[tuple]]:
        """All tables as sorted row tuples (for comparisons); ``timings=False`` drops wall-clock columns."""
        out: dict[str, list[tuple]] = {}
        for table in _TABLES:
            if table == "timings" and not timings:
                continue
            rows = self.rows(table)
            drop = () if timings else TIMING_COLUMNS.get(table, ())
            out[table] = sorted(
                (tuple((k, v) for k, v in r.items() if k not in drop) for r in rows), key=lambda t: repr(t)
            )
        return out

    def _tx(self) -> _Transaction:
        return _Transaction(self.conn)


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


class _Transaction:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.conn.execute("ROLLBACK" if exc_type is not None else "COMMIT")
