"""quickstart-tiny end to end: the real loop (StageTrainer LoRA stages, HF generation, conjoint AvgErr, market)
on the tiny random Llama."""

from __future__ import annotations

import json
import math
from pathlib import Path

from procure.pipeline.ledger import Ledger
from procure.pipeline.loop import run_recipe
from procure.pipeline.recipe import load_recipe

ROOT = Path(__file__).parent.parent


def test_quickstart_tiny_end_to_end(tmp_path):
    recipe = load_recipe(ROOT / "recipes" / "quickstart-tiny.yaml")
    d = run_recipe(recipe.model_copy(update={"progress": False}), tmp_path / "run")
    with Ledger.open(d / "ledger.sqlite", create=False) as led:
        metrics = led.rows("metrics")
        assert sorted((m["arm"], m["round"]) for m in metrics) == sorted(
            (f"{meth}-s0", t) for meth in recipe.methods for t in range(recipe.rounds + 1)
        )
        assert all(m["metric_name"] == "avg_err" and math.isfinite(m["metric"]) for m in metrics)
        purchases = led.rows("purchases")
        assert len(purchases) == len(recipe.methods) * recipe.rounds  # one dataset per round
        # every bought state is a saved LoRA adapter, continued from the previous state
        nodes = {n["node"]: n for n in led.rows("nodes")}
        for m in metrics:
            if m["round"] > 0:
                node = nodes[m["node"]]
                cfg = json.loads((d / node["adapter"] / "adapter_config.json").read_text())
                assert cfg["r"] == recipe.training["lora_r"]
                assert node["n_tokens"] > 0
        # ADS efficiency within each round (Prop. 4.2, state-conditioned) against the recorded utilities
        for t in range(1, recipe.rounds + 1):
            co = {r["coalition"]: r["utility"] for r in led.rows("coalitions", "arm='ads-s0' AND round=?", (t,))}
            vals = [r["value"] for r in led.rows("valuations", "arm='ads-s0' AND round=?", (t,))]
            assert math.isclose(sum(vals), co["0+1"] - co["-"], abs_tol=1e-9)
    assert (d / "report.md").is_file() and (d / "plots" / "metric_per_round.png").is_file()


def test_qa_gradient_and_text_methods_on_tiny(tmp_path, monkeypatch, arith_qa):
    """Infl_IP / DataInf (per-sample LoRA gradients at the current state) and BM25 through the real learner,
    on a small local multiple-choice file; fairshare with a budget below the total buys a subset. The two
    gradient methods share one disk-cached computation of the gradients, and a second run computes none."""
    import os

    import numpy as np
    import pytest

    from procure.llm.grad_store import GradientStore
    from procure.llm.tiny import tiny_model_dir
    from procure.market.round import clear_round
    from procure.pipeline.recipe import parse_recipe

    cache = tmp_path / "cache"  # a private gradient cache that shares the built tiny model
    (cache / "models").mkdir(parents=True)
    os.symlink(tiny_model_dir(), cache / "models" / tiny_model_dir().name)
    monkeypatch.setenv("PROCURE_CACHE", str(cache))
    computed: list[int] = []
    real_compute = GradientStore._compute

    def counting(self, model, rows, summed, bar):
        computed.append(len(rows))
        return real_compute(self, model, rows, summed, bar)

    monkeypatch.setattr(GradientStore, "_compute", counting)

    data = arith_qa
    recipe = parse_recipe(
        {
            "name": "qa-tiny",
            "model": "tiny",
            "rounds": 1,
            "methods": ["infl_ip", "datainf", "bm25"],
            "task": {
                "kind": "qa",
                "data_file": str(data),
                "n_sellers": 3,
                "rows_per_seller": 3,
                "reference_size": 6,
                "val_size": 4,
                "test_size": 8,
                "noise_shares": [0.0, 1.0],
            },
            "valuation": {"projection_dim": 16},
            "market": {"contract": "fairshare", "budget_fraction": 0.5},
            "training": {"epochs": 1, "batch_size": 3, "lora_r": 2, "lora_alpha": 4, "max_length": 128},
            "generation": {"backend": "hf", "max_new_tokens": 2},
            "progress": False,
        }
    )
    d = run_recipe(recipe, tmp_path / "run")
    assert computed == [9, 6]  # the 9 offered rows and the 6 reference rows, once for infl_ip and datainf
    again = run_recipe(recipe, tmp_path / "run2")
    assert computed == [9, 6] and len(list((cache / "grads").iterdir())) == 2
    with Ledger.open(again / "ledger.sqlite", create=False) as led2:
        again_vals = {(v["arm"], v["seller"]): v["value"] for v in led2.rows("valuations")}
    # the default readout is answer-letter likelihood: the base model's test accuracy is the HF generator's
    from procure.llm.hf_backend import HFGenerator
    from procure.pipeline.scenarios import make_scenario

    task = make_scenario(recipe, 0).task("test")
    lp = HFGenerator(str(tiny_model_dir())).choice_logprobs(task.eval_prompts(), task.choices(), None, task.system)
    with Ledger.open(d / "ledger.sqlite", create=False) as led:
        base = {m["metric"] for m in led.rows("metrics", "round = 0 AND split = 'test'")}
        assert base == {task.score_logprobs(lp)}
        first_vals = {(v["arm"], v["seller"]): v["value"] for v in led.rows("valuations")}
        assert first_vals == pytest.approx(again_vals, rel=1e-12)  # the cached gradients give the same values
        vals = led.rows("valuations")
        assert len(vals) == 9 and all(math.isfinite(v["value"]) for v in vals)
        for m in ("infl_ip", "datainf"):
            assert len({round(v["value"], 12) for v in vals if v["arm"] == f"{m}-s0"}) == 3  # informative
        spent = {m["arm"]: m["spent"] for m in led.rows("metrics", "round = 1")}
        for arm, total in spent.items():
            # the recorded prices and purchase are the market engine's on the recorded utilities and budget
            offers = sorted(led.rows("offers", "arm = ?", (arm,)), key=lambda o: o["seller"])
            u = np.array([o["utility"] for o in offers])
            budget = 0.5 * float(np.clip(u, 0, None).sum())
            out = clear_round(u, budget, "fairshare", costs=np.zeros(len(u)))
            np.testing.assert_allclose([o["price"] for o in offers], out.prices, rtol=1e-12)
            bought = sorted(p["seller"] for p in led.rows("purchases", "arm = ?", (arm,)))
            assert bought == sorted(offers[k]["seller"] for k in out.bought)
            assert 0 < len(bought) < 3  # half the budget buys a strict subset
            assert total == pytest.approx(sum(offers[k]["price"] for k in out.bought), rel=1e-12)
            assert total <= budget + 1e-9


def test_expected_rating_readout_through_the_learner(tmp_path):
    """task.readout: expected evaluates by next-token distributions (no decoding): the ledger's test metric of
    A_0 equals the task's score of the HF lookahead on that adapter."""
    from procure.llm.generate import make_generator
    from procure.tasks.conjoint import ConjointEval, ConjointWorld

    recipe = load_recipe(ROOT / "recipes" / "quickstart-tiny.yaml")
    task = recipe.task.model_copy(update={"readout": "expected"})
    recipe = recipe.model_copy(update={"progress": False, "rounds": 1, "methods": ["random"], "task": task})
    d = run_recipe(recipe, tmp_path / "run")
    with Ledger.open(d / "ledger.sqlite", create=False) as led:
        (m0,) = led.rows("metrics", "round = 0")
        adapter = d / {n["node"]: n for n in led.rows("nodes")}[m0["node"]]["adapter"]
    ev = ConjointEval(ConjointWorld(0), seed=0, split="test", readout="expected")
    with make_generator("tiny", backend="hf") as g:
        first, second = g.lookahead(ev.eval_prompts(), ev.lookahead_prefix, ev.lookahead_symbols, adapter, ev.system)
    assert m0["metric"] == ev.score_lookahead(first, second)
