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
