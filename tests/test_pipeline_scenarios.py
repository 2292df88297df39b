"""The task-backed scenarios (no model): conjoint and QA candidates, reference sets and evaluation tasks."""

from __future__ import annotations

import json

import numpy as np

from procure.pipeline.recipe import parse_recipe
from procure.pipeline.scenarios import make_scenario


def _recipe(task: dict):
    return parse_recipe({"name": "s", "rounds": 1, "methods": ["bm25"], "task": task, "training": {}})


def test_conjoint_scenario_matches_the_noise_shares():
    spec = {"kind": "conjoint", "rows_per_seller": 40, "noise_shares": [0.0, 0.5, 1.0], "warmup_rows": 5}
    scen = make_scenario(_recipe(spec), seed=4)
    assert scen.n_sellers == 3
    cands = scen.candidates(1, np.random.default_rng(0))
    assert [c.noise for c in cands] == [0.0, 0.5, 1.0]
    assert all(len(c.examples) == 40 and set(c.examples[0]) == {"prompt", "answer", "system"} for c in cands)
    # seller rows rate with the true part-worths except for the noisy share
    import re

    from procure.tasks.conjoint import PROFILES, render_profile

    world = scen.world
    truth = {render_profile(p): float(world.mean_rating(np.array([p]), "true")[0]) for p in PROFILES}
    err = [
        np.mean([abs(float(re.findall(r"\d+", e["answer"])[0]) - truth[e["prompt"]]) for e in c.examples])
        for c in cands
    ]
    assert err[0] < err[2]
    assert len(scen.warmup_examples()) == 5
    assert scen.task("val").split == "validation" and scen.task("test").split == "test"
    assert len(scen.task("test").eval_prompts()) == 32


def test_qa_scenario_from_a_local_file(tmp_path):
    rng = np.random.default_rng(0)
    items = []
    for k in range(120):
        a, b = int(rng.integers(1, 50)), int(rng.integers(1, 50))
        opts = [a + b, a + b + 1, a + b - 1, a * b]
        items.append(
            {"input": f"what is {a} + {b} ? (#{k})", "target_scores": {str(o): int(i == 0) for i, o in enumerate(opts)}}
        )
    path = tmp_path / "qa.json"
    path.write_text(json.dumps({"examples": items}))
    spec = {
        "kind": "qa",
        "data_file": str(path),
        "n_sellers": 3,
        "rows_per_seller": 5,
        "reference_size": 10,
        "val_size": 8,
        "test_size": 8,
        "noise_shares": [0.0, 1.0],
    }
    scen = make_scenario(_recipe(spec), seed=1)
    r1 = scen.candidates(1, np.random.default_rng(0))
    r2 = scen.candidates(2, np.random.default_rng(0))
    assert [c.noise for c in r1] == [0.0, 1.0, 0.0] and all(len(c.examples) == 5 for c in r1)
    prompts = [e["prompt"] for c in r1 for e in c.examples]
    assert len(set(prompts)) == 15  # disjoint sellers
    assert [e["prompt"] for e in r1[0].examples] != [e["prompt"] for e in r2[0].examples]
    assert len(scen.reference_examples()) == 10
    assert len(scen.task("test").eval_prompts()) == 8
