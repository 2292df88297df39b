"""Summaries over paired seeds shared by the experiment scripts (``eval/conjoint_evidence.py``, ``eval/qa_market.py``,
``eval/repro_market_qa.py``): mean, sd and a percentile-bootstrap 95 % interval of the mean."""

from __future__ import annotations

from typing import Any


def bootstrap_ci(x, n_boot: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap 95 % interval of the mean of ``x`` (NaN for fewer than 2 values)."""
    import numpy as np

    x = np.asarray(x, dtype=float)
    if len(x) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), (n_boot, len(x)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def stat(x) -> dict[str, Any]:
    """{"mean", "sd", "ci95": bootstrap interval of the mean, "n"} of the values ``x`` (e.g. paired differences)."""
    import numpy as np

    x = [float(v) for v in x]
    lo, hi = bootstrap_ci(x)
    sd = float(np.std(x, ddof=1)) if len(x) > 1 else float("nan")
    return {"mean": float(np.mean(x)) if x else float("nan"), "sd": sd, "ci95": [lo, hi], "n": len(x)}
