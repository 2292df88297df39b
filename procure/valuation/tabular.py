"""Tabular / embedding data for ``procure value``: load CSV, parquet or a Hugging Face dataset saved to disk,
pick feature, label, group and source columns, and build classifier-accuracy utilities over sources.

Every user mistake (bad file, missing column, empty group, ...) raises ``UserError`` with one line that starts
with the name of the argument at fault (``path``, ``split``, ``features``, ``embedding``, ``groups``, ``order``,
``source``, ``model``, or the ``what`` of :func:`require_columns`), so that a caller can name it in its own terms
(``procure value`` turns ``features: ...`` into ``--features: ...``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.spatial.distance import cdist

from procure.errors import UserError


def load_table(path: str | Path, split: str | None = None) -> pd.DataFrame:
    """Read ``.csv``, ``.parquet``/``.pq`` or a directory written by ``datasets.Dataset.save_to_disk`` (a
    ``DatasetDict`` needs ``split``, default ``train``)."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"path: file not found: {p}")
    try:
        if p.is_dir():
            import datasets

            ds = datasets.load_from_disk(str(p))
            if isinstance(ds, datasets.DatasetDict):
                name = split or "train"
                if name not in ds:
                    raise UserError(f"split: {p} has no split '{name}' (splits: {', '.join(ds)})")
                ds = ds[name]
            df = ds.to_pandas()
        elif p.suffix.lower() == ".csv":
            df = pd.read_csv(p)
        elif p.suffix.lower() in (".parquet", ".pq"):
            df = pd.read_parquet(p)
        else:
            raise UserError(f"path: {p}: unknown format '{p.suffix}'; use .csv, .parquet or a saved HF dataset folder")
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad file for the user
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"path: {p}: cannot read it ({first})") from None
    if len(df) == 0:
        raise UserError(f"path: {p}: the table has no rows")
    return df


def require_columns(df: pd.DataFrame, names: Sequence[str | None], what: str) -> None:
    for name in names:
        if name is not None and name not in df.columns:
            cols = ", ".join(map(str, df.columns[:12])) + (" ..." if len(df.columns) > 12 else "")
            raise UserError(f"{what}: no column '{name}' (columns: {cols})")


def feature_matrix(
    df: pd.DataFrame,
    features: Sequence[str] | None,
    embedding: str | None,
    exclude: Sequence[str | None],
    also_in: pd.DataFrame | None = None,
) -> tuple[np.ndarray, list[str]]:
    """``(rows, d)`` float features: the ``embedding`` column (lists/arrays, one vector per row), the named
    ``features``, or by default every numeric column not in ``exclude`` (and present in ``also_in``, the test
    table, if given)."""
    if embedding is not None:
        require_columns(df, [embedding], "embedding")
        try:
            x = np.stack([np.asarray(v, dtype=float).ravel() for v in df[embedding]])
        except (ValueError, TypeError):
            raise UserError(f"embedding '{embedding}': every row must hold a numeric vector of one length") from None
        return x, [embedding]
    if features:
        require_columns(df, features, "features")
        cols = list(features)
    else:
        skip = {c for c in exclude if c is not None}
        for c in df.columns:
            if c not in skip and not pd.api.types.is_numeric_dtype(df[c]):
                _check_mostly_numeric(df[c])
        cols = [c for c in df.columns if c not in skip and pd.api.types.is_numeric_dtype(df[c])]
        if also_in is not None:
            cols = [c for c in cols if c in also_in.columns]
        if not cols:
            raise UserError("features: no numeric feature columns found; name the feature columns or use an embedding")
    try:
        x = df[cols].to_numpy(dtype=float)
    except (ValueError, TypeError):
        raise UserError(f"features: columns {cols[:5]} must be numeric") from None
    if np.isnan(x).any():
        bad = [c for c in cols if df[c].isna().any()]
        raise UserError(f"features: column '{bad[0]}' has missing values; fill or drop them first")
    return x, cols


def _check_mostly_numeric(col: pd.Series) -> None:
    """A text column whose cells are mostly numbers is a numeric feature with a few bad cells: say which,
    rather than dropping the whole column from the default features."""
    if pd.api.types.is_bool_dtype(col):
        return
    present = col.notna()
    numbers = pd.to_numeric(col, errors="coerce").notna()
    bad = present & ~numbers
    if present.sum() == 0 or not bad.any() or numbers.sum() < 0.5 * present.sum():
        return
    pos = int(np.flatnonzero(bad.to_numpy())[0])
    raise UserError(
        f"features: column '{col.name}' is numeric except for {int(bad.sum())} cell(s) (first: data row {pos + 1}, "
        f"{col.iloc[pos]!r}); fix those cells, or name the feature columns to use"
    )


def ordered_groups(values: pd.Series, order: Sequence[str] | None) -> list:
    """Group labels in sigma order: ``order`` if given (as strings, matched to ``str(label)``), else ascending
    for numeric labels and first appearance otherwise. A label in ``order`` with no rows is an empty group."""
    if values.isna().any():
        raise UserError(f"groups '{values.name}': {int(values.isna().sum())} rows have no group; fill them")
    present = list(dict.fromkeys(values.tolist()))
    if order:
        by_str = {str(v): v for v in present}
        missing = [o for o in order if o not in by_str]
        if missing:
            raise UserError(f"order: group '{missing[0]}' is empty (no rows in column '{values.name}')")
        left = [v for v in present if str(v) not in set(order)]
        if left:
            raise UserError(f"order: group '{left[0]}' of column '{values.name}' is not listed")
        return [by_str[o] for o in order]
    if pd.api.types.is_numeric_dtype(values):
        return sorted(present)
    return present


@dataclass
class Sources:
    """Players = sources; ``rows[i]`` are the table rows of source ``i``."""

    ids: list
    rows: list[np.ndarray]
    groups_of: list

    @classmethod
    def build(cls, df: pd.DataFrame, source: str | None, id_col: str | None, group: str | None) -> Sources:
        if source is None:
            ids = df[id_col].tolist() if id_col else list(range(len(df)))
            rows = [np.array([i]) for i in range(len(df))]
            grp = df[group].tolist() if group else [None] * len(df)
            return cls(ids, rows, grp)
        codes, uniques = pd.factorize(df[source])
        rows = [np.flatnonzero(codes == i) for i in range(len(uniques))]
        grp = []
        for src, r in zip(uniques, rows):
            g = df[group].iloc[r].unique() if group else [None]
            if len(g) > 1:
                raise UserError(f"source '{src}': its rows lie in several groups {list(g)[:3]}; one group each")
            grp.append(g[0])
        return cls(list(uniques), rows, grp)


class ClassifierUtility:
    """``v(S)`` = test accuracy of a classifier trained on the rows of the sources in ``S`` (accuracy units,
    in [0, 1]; ``v(∅) = 0``: no training data, no correct prediction).

    ``model="knn"``: majority vote of the ``min(K, m)`` nearest training rows by ``(distance, row)``, vote ties
    to the smallest label (as scikit-learn). ``model="logreg"``: scikit-learn ``LogisticRegression``; a
    training set with one class predicts that class."""

    def __init__(self, x, y, x_test, y_test, sources: Sources, model: str = "knn", k: int = 5, seed: int = 0):
        self.x, self.x_test = np.asarray(x, float), np.asarray(x_test, float)
        self.classes, y_all = np.unique(np.concatenate([np.asarray(y), np.asarray(y_test)]), return_inverse=True)
        self.y, self.y_test = y_all[: len(y)], y_all[len(y) :]
        self.sources, self.model, self.k, self.seed = sources, model, int(k), seed
        if model == "knn":
            dist = cdist(self.x_test, self.x)
            order = np.argsort(dist, axis=1, kind="stable")
            self.rank = np.empty_like(order)
            np.put_along_axis(self.rank, order, np.broadcast_to(np.arange(len(self.x)), order.shape), axis=1)
        elif model != "logreg":
            raise UserError(f"model: unknown model '{model}' (knn or logreg)")

    def __call__(self, s: frozenset[int]) -> float:
        if not s:
            return 0.0
        rows = np.concatenate([self.sources.rows[i] for i in sorted(s)])
        return float(np.mean(self.predict(rows) == self.y_test))

    def predict(self, rows: np.ndarray) -> np.ndarray:
        y = self.y[rows]
        if self.model == "knn":
            r = self.rank[:, rows]
            kk = min(self.k, len(rows))
            nearest = np.argpartition(r, kk - 1, axis=1)[:, :kk] if kk < len(rows) else np.argsort(r, axis=1)
            votes = np.zeros((len(r), len(self.classes)))
            np.add.at(votes, (np.arange(len(r))[:, None], y[nearest]), 1.0)
            return votes.argmax(axis=1)
        if len(np.unique(y)) == 1:
            return np.full(len(self.y_test), y[0])
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(max_iter=1000, random_state=self.seed)
        clf.fit(self.x[rows], y)
        return clf.predict(self.x_test)
