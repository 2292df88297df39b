import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


import json  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def arith_qa(tmp_path_factory):
    """A local multiple-choice file in BIG-bench's layout: 60 sums "a + b = ? (k)" with 4 options, a + b right."""
    rng = np.random.default_rng(0)
    items = []
    for k in range(60):
        a, b = int(rng.integers(1, 50)), int(rng.integers(1, 50))
        opts = [a + b, a + b + 1, a * b, a + b - 1]
        scores = {str(o): int(i == 0) for i, o in enumerate(opts)}
        items.append({"input": f"{a} + {b} = ? ({k})", "target_scores": scores})
    path = tmp_path_factory.mktemp("qa") / "qa.json"
    path.write_text(json.dumps({"examples": items}))
    return path
