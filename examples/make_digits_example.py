"""Write the bundled example for ``procure value``: scikit-learn digits (8x8, offline) as a two-group market.

Group 1: 120 original images from 10 contributors (c00..c09, 12 each; c09's labels are 50% wrong).
Group 2: one augmented copy of every original (rotation in [-15, 15] degrees, shift in [-1, 1] px) sold by a
broker ("broker"), labels copied from the original (so c09's errors propagate). Test: 150 other images.
Run from the repository root: ``python examples/make_digits_example.py`` (deterministic, seed 0).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage
from sklearn.datasets import load_digits

HERE = Path(__file__).resolve().parent


def main(seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    digits = load_digits()
    x, y = digits.images, digits.target
    idx = rng.permutation(len(y))
    train_idx, test_idx = idx[:120], idx[120:270]
    labels = y[train_idx].copy()
    noisy = np.arange(108, 120)[rng.random(12) < 0.5]  # contributor c09 owns rows 108..119
    labels[noisy] = (labels[noisy] + rng.integers(1, 10, len(noisy))) % 10
    owners = [f"c{i // 12:02d}" for i in range(120)]

    aug = []
    for img in x[train_idx]:
        out = ndimage.rotate(img, rng.uniform(-15, 15), reshape=False, order=1, mode="constant")
        out = ndimage.shift(out, rng.uniform(-1, 1, size=2), order=1, mode="constant")
        aug.append(np.clip(np.rint(out), 0, 16))
    pix = [f"p{j}" for j in range(64)]

    def frame(images, lab, group, owner, ids):
        df = pd.DataFrame(np.asarray(images).reshape(len(lab), 64).astype(int), columns=pix)
        df.insert(0, "label", lab)
        df.insert(0, "owner", owner)
        df.insert(0, "group", group)
        df.insert(0, "id", ids)
        return df

    train = pd.concat(
        [
            frame(x[train_idx], labels, 1, owners, [f"o{i:03d}" for i in range(120)]),
            frame(aug, labels, 2, "broker", [f"a{i:03d}" for i in range(120)]),
        ],
        ignore_index=True,
    )
    test = frame(x[test_idx], y[test_idx], 0, "test", [f"t{i:03d}" for i in range(len(test_idx))])
    train.to_csv(HERE / "digits_train.csv", index=False)
    test.drop(columns=["group", "owner"]).to_csv(HERE / "digits_test.csv", index=False)
    print(f"wrote {HERE / 'digits_train.csv'} ({len(train)} rows) and digits_test.csv ({len(test)} rows)")


if __name__ == "__main__":
    main()
