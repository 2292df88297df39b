"""How well values find known-bad data, apart from what a fine-tune does with it (valuation quality)."""

from __future__ import annotations

from typing import Any

import numpy as np


def auc(scores: Any, positive: Any) -> float:
    """Area under the ROC curve of ``scores`` for finding the ``positive`` items (ties count one half):
    the probability that a random positive scores above a random negative. NaN without both classes."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(positive, dtype=bool)
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))
