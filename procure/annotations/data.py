"""Annotation rows for valuation: loaded through Hugging Face ``datasets``, columns picked, every row checked.

A row becomes the training-row format of :mod:`procure.llm` (``{"prompt", "answer", "system"}``), so values are
computed on exactly what a LoRA stage would train on. Sources of rows:

- a ``.jsonl`` / ``.json`` / ``.csv`` / ``.parquet`` file (``datasets.load_dataset(<builder>, data_files=...)``);
- a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` (``datasets.load_from_disk``);
- a hub dataset name, loaded from the local Hugging Face cache (offline: only when it is cached).

Columns: ``prompt`` + ``response`` (names configurable), or a chat ``messages`` column (a list of
``{"role", "content"}``; the last message must be the assistant's answer, system messages become the system
prompt, earlier turns are written into the prompt as ``User: ... / Assistant: ...``); optional ``system``,
``source`` (annotator, vendor, delivery: a source is one player of the retraining methods), ``groups`` (the
delivery order sigma of ADS) and ``id`` columns. Every user mistake is one :class:`UserError` line that names
the flag at fault.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from procure.errors import UserError

_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
#: the source label of every row when no source column is given
ALL = "all"


@dataclass(frozen=True)
class Columns:
    """Column names. ``messages=None``: a column named ``messages`` is used when the data has no prompt and
    response columns; ``system=None``: a column named ``system`` is used when present."""

    prompt: str = "prompt"
    response: str = "response"
    messages: str | None = None
    system: str | None = None
    source: str | None = None
    id: str | None = None
    groups: str | None = None
    group_order: Sequence[str] | None = None


@dataclass
class Annotations:
    """Rows in procure's training format plus their ids, sources and delivery groups (one entry per row)."""

    rows: list[dict[str, Any]]
    ids: list[str]
    sources: list[str]
    groups: list[Any] | None = None
    group_order: list[Any] | None = None
    origin: str = ""
    cut: int = field(default=0)  # rows cut at --max-length (with truncate=True)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def texts(self) -> list[str]:
        """The BM25 text of each row: prompt and response (as the pipeline's BM25)."""
        return [f"{r['prompt']} {r['answer']}" for r in self.rows]

    def source_names(self) -> list[str]:
        """Sources in sigma order: by delivery group, then by first appearance."""
        names = list(dict.fromkeys(self.sources))
        if self.groups is None:
            return names
        rank = {g: t for t, g in enumerate(self.group_order or [])}
        group_of = dict(zip(self.sources, self.groups))
        return sorted(names, key=lambda s: rank[group_of[s]])  # stable: first appearance within a group

    def source_rows(self) -> list[list[int]]:
        """Row indices of each source, in :meth:`source_names` order."""
        index = {s: i for i, s in enumerate(self.source_names())}
        out: list[list[int]] = [[] for _ in index]
        for k, s in enumerate(self.sources):
            out[index[s]].append(k)
        return out

    def source_groups(self) -> list[list[int]]:
        """The ordered partition sigma of the sources (indices into :meth:`source_names`): one group without a
        groups column."""
        names = self.source_names()
        if self.groups is None:
            return [list(range(len(names)))]
        group_of = dict(zip(self.sources, self.groups))
        return [[i for i, s in enumerate(names) if group_of[s] == g] for g in self.group_order or []]


# ------------------------------------------------------------------------------------------------ loading
def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or Path(name).suffix.lower() in _BUILDERS or "\\" in name


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_records(path: str, split: str | None, flag: str, split_flag: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The records (one dict per row) and column names of a file, a saved dataset folder or a cached hub dataset.

    A ``DatasetDict`` (saved folder, hub dataset) needs ``split`` (default ``train``, or its only split)."""
    import datasets

    datasets.disable_progress_bars()  # our own bars say what runs; "Generating train split" says nothing
    p = Path(path).expanduser()
    try:
        if p.is_dir():
            ds = datasets.load_from_disk(str(p))
        elif p.is_file():
            builder = _BUILDERS.get(p.suffix.lower())
            if builder is None:
                raise UserError(
                    f"{flag} {p}: unknown format '{p.suffix}'; use .jsonl, .json, .csv, .parquet or a saved "
                    "Hugging Face dataset folder"
                )
            ds = datasets.load_dataset(builder, data_files=str(p))
        elif _looks_like_path(path):
            raise UserError(f"{flag}: file not found: {p}")
        else:
            try:
                ds = datasets.load_dataset(path)
            except Exception as exc:  # noqa: BLE001 - offline and not cached, or no such dataset
                raise UserError(
                    f"{flag} {path!r}: not a local file or folder, and not a Hugging Face dataset in the local cache "
                    f"({type(exc).__name__}); give a .jsonl/.csv/.parquet file or download the dataset first"
                ) from None
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad file for the user
        raise UserError(f"{flag} {p}: cannot read it ({_first_line(exc)})") from None
    if isinstance(ds, datasets.DatasetDict):
        names = list(ds)
        name = split or ("train" if "train" in ds or len(names) != 1 else names[0])
        if name not in ds:
            raise UserError(f"{split_flag}: {path} has no split '{name}' (splits: {', '.join(names)})")
        ds = ds[name]
    elif split is not None and split != "train":
        raise UserError(f"{split_flag}: {path} has no splits (it is one table); drop {split_flag}")
    if len(ds) == 0:
        raise UserError(f"{flag} {path}: no rows")
    return ds.to_list(), list(ds.column_names)


def _missing(value: Any) -> bool:
    return (
        value is None
        or (isinstance(value, float) and math.isnan(value))
        or (isinstance(value, str) and not value.strip())
    )


def _require(columns: list[str], name: str | None, flag: str, what: str) -> None:
    if name is not None and name not in columns:
        cols = ", ".join(columns[:12]) + (" ..." if len(columns) > 12 else "")
        raise UserError(f"{flag} '{name}': {what} has no such column (columns: {cols})")


def _from_messages(raw: Any, k: int, flag: str) -> tuple[str, str, str | None]:
    """(prompt, answer, system) of a chat: the last message is the answer; earlier turns go into the prompt."""
    msgs = raw
    if isinstance(raw, str):
        try:
            msgs = json.loads(raw)
        except ValueError:
            raise UserError(f"{flag}: row {k}: the messages are not a JSON list of {{role, content}}") from None
    if not isinstance(msgs, list) or not all(isinstance(m, dict) and "role" in m and "content" in m for m in msgs):
        raise UserError(f"{flag}: row {k}: messages must be a list of {{'role': ..., 'content': ...}}")
    system = "\n".join(str(m["content"]) for m in msgs if m["role"] == "system") or None
    turns = [m for m in msgs if m["role"] != "system"]
    if len(turns) < 2 or turns[-1]["role"] != "assistant" or turns[-2]["role"] != "user":
        raise UserError(f"{flag}: row {k}: the chat must end with a user message and the assistant's answer")
    earlier = "".join(f"{str(m['role']).capitalize()}: {m['content']}\n\n" for m in turns[:-2])
    prompt = (earlier + "User: " if earlier else "") + str(turns[-2]["content"])
    return prompt, str(turns[-1]["content"]), system


def to_annotations(
    records: list[dict[str, Any]], columns: list[str], cols: Columns, flag: str, *, players: bool = True
) -> Annotations:
    """Rows in procure's training format from ``records``; ``players=False`` (a reference set) ignores the
    source, id and groups columns."""
    use_messages = cols.messages is not None or (
        "messages" in columns and not (cols.prompt in columns and cols.response in columns)
    )
    if use_messages:
        msg_col = cols.messages or "messages"
        _require(columns, msg_col, "--messages-column", flag)
    else:
        _require(columns, cols.prompt, "--prompt-column", flag)
        _require(columns, cols.response, "--response-column", flag)
    system_col = cols.system if cols.system is not None else ("system" if "system" in columns else None)
    _require(columns, system_col, "--system-column", flag)
    if players:
        _require(columns, cols.source, "--source", flag)
        _require(columns, cols.id, "--id", flag)
        _require(columns, cols.groups, "--groups", flag)
    rows, empty = [], []
    for k, rec in enumerate(records):
        if use_messages:
            prompt, answer, system = _from_messages(rec[msg_col], k, f"{flag} --messages-column '{msg_col}'")
        else:
            prompt, answer, system = rec[cols.prompt], rec[cols.response], None
        if system_col is not None and not _missing(rec[system_col]):
            system = str(rec[system_col])
        if _missing(prompt) or _missing(answer):
            empty.append(k)
            continue
        row = {"prompt": str(prompt), "answer": str(answer)}
        if system:
            row["system"] = system
        rows.append(row)
    if empty:
        what = "messages" if use_messages else f"'{cols.prompt}' or '{cols.response}'"
        raise UserError(
            f"{flag}: {len(empty)} of {len(records)} rows have an empty {what} (first: row {empty[0]}); "
            "fill or drop them"
        )
    out = Annotations(rows, [str(k) for k in range(len(rows))], [ALL] * len(rows), origin=flag)
    if not players:
        return out
    if cols.id is not None:
        out.ids = [str(rec[cols.id]) for rec in records]
        dup = len(out.ids) - len(set(out.ids))
        if dup:
            first = next(i for i in out.ids if out.ids.count(i) > 1)
            raise UserError(f"--id '{cols.id}': {dup} duplicate ids (first: {first!r}); ids must be unique")
    if cols.source is not None:
        srcs = [rec[cols.source] for rec in records]
        blank = [k for k, s in enumerate(srcs) if _missing(s)]
        if blank:
            raise UserError(
                f"--source '{cols.source}': {len(blank)} of {len(srcs)} rows have an empty source (first: row "
                f"{blank[0]}); fill them or drop those rows"
            )
        out.sources = [str(s) for s in srcs]
    if cols.groups is not None:
        _set_groups(out, [rec[cols.groups] for rec in records], cols)
    return out


def _set_groups(out: Annotations, values: list[Any], cols: Columns) -> None:
    import pandas as pd

    from procure.valuation.tabular import ordered_groups

    series = pd.Series(values, name=cols.groups)
    try:
        order = ordered_groups(series, list(cols.group_order) if cols.group_order else None)
    except UserError as exc:
        msg = str(exc)
        flag = "--group-order" if msg.startswith("order:") else "--groups"
        raise UserError(f"{flag}:" + msg.split(":", 1)[1]) from None
    for src in dict.fromkeys(out.sources):
        gs = {values[k] for k, s in enumerate(out.sources) if s == src}
        if len(gs) > 1:
            raise UserError(
                f"--groups '{cols.groups}': source '{src}' has rows in several groups {sorted(map(str, gs))[:3]}; "
                "a source is delivered in one group"
            )
    out.groups, out.group_order = list(values), list(order)


def load_annotations(
    path: str, split: str | None, cols: Columns, *, flag: str = "--data", split_flag: str = "--split", players=True
) -> Annotations:
    """Load and check rows (module docstring): ``flag`` / ``split_flag`` name the arguments in messages."""
    records, columns = load_records(path, split, flag, split_flag)
    return to_annotations(records, columns, cols, flag, players=players)


# ------------------------------------------------------------------------------------------------ lengths
def token_lengths(tokenizer: Any, rows: Sequence[dict[str, Any]]) -> tuple[list[int], list[int]]:
    """(prompt tokens, total tokens) of each row as :func:`procure.llm.formatting.encode_row` encodes it (chat
    prompt + answer + EOS), tokenised in one batch."""
    from procure.llm.formatting import chat_prompt

    prompts = [chat_prompt(tokenizer, r["prompt"], r.get("system")) for r in rows]
    p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    a_ids = tokenizer([r["answer"] for r in rows], add_special_tokens=False)["input_ids"]
    eos = 1 if tokenizer.eos_token_id is not None else 0
    p_len = [len(p) for p in p_ids]
    return p_len, [p + len(a) + eos for p, a in zip(p_len, a_ids)]


def check_lengths(tokenizer: Any, data: Annotations, max_length: int, truncate: bool, flag: str) -> int:
    """Rows longer than ``max_length`` tokens are a :class:`UserError` saying how many, unless ``truncate``
    (then they are cut at the end, as the trainer cuts them, and the count is returned). A row whose whole
    response would be cut is an error either way."""
    p_len, total = token_lengths(tokenizer, data.rows)
    long = [k for k, t in enumerate(total) if t > max_length]
    if not long:
        return 0
    longest = max(total)
    if not truncate:
        raise UserError(
            f"--max-length {max_length}: {len(long)} of {len(total)} {flag} rows are longer (longest {longest} "
            f"tokens, first: row {long[0]}); raise --max-length or pass --truncate to cut them"
        )
    lost = [k for k in long if p_len[k] >= max_length - 1]
    if lost:
        raise UserError(
            f"--max-length {max_length}: {len(lost)} {flag} rows would lose their whole response (prompt of "
            f"{p_len[lost[0]]} tokens in row {lost[0]}); raise --max-length"
        )
    return len(long)
