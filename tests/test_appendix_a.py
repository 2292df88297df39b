"""seeds/004 appendix A's per-sample market end to end on the tiny model: values, Eq. 2 decisions checked by
brute force, Eq. 4 prices, purchases, LoRA training on K and 2K purchases, k-shot scoring, and resume."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from test_market_persample import _buys_brute_force

from procure.errors import UserError
from procure.market.persample import minmax01
from procure.valuation.influence import grad_ip
from procure.valuation.quality import auc


def test_per_sample_market_end_to_end_on_tiny(arith_qa, tmp_path, monkeypatch):
    from procure.llm.grad_store import GradientStore, LoraSpec
    from procure.llm.tiny import tiny_model_dir
    from procure.llm.train import StageTrainer, TrainConfig
    from procure.pipeline.appendix_a import AppendixA, _market_data, run_appendix_a

    cache = tmp_path / "cache"  # private gradient cache, shared tiny model
    (cache / "models").mkdir(parents=True)
    os.symlink(tiny_model_dir(), cache / "models" / tiny_model_dir().name)
    monkeypatch.setenv("PROCURE_CACHE", str(cache))
    cfg = AppendixA(
        model="tiny",
        data=str(arith_qa),
        methods=["constant", "random", "bm25", "infl_ip", "datainf", "noise_oracle"],
        reference_size=6,
        test_size=8,
        n_shot=1,
        pool_size=40,
        existing_share=0.1,
        noise_share=0.5,
        budget_fraction=0.5,
        sizes=[3, 6],
        training=TrainConfig(epochs=1, lr=1e-3, batch_size=3, lora_r=2, lora_alpha=4, max_length=128),
        progress=False,
    )
    trained: list[int] = []
    real_train = StageTrainer.train

    def counting(self, examples, out_dir, *a, **k):
        trained.append(len(examples))
        return real_train(self, examples, out_dir, *a, **k)

    monkeypatch.setattr(StageTrainer, "train", counting)
    out = tmp_path / "run"
    summary = run_appendix_a(cfg, out)
    state = json.loads((out / "state.json").read_text())
    market = _market_data(cfg)
    ex, off, prices = market["existing"], market["offers"], market["existing_prices"]
    assert len(ex) == 4 and len(off) == 36 and np.all((prices > 0) & (prices <= 1))
    assert 0.3 < market["noisy"].mean() < 0.7
    budget = 0.5 * (prices.sum() + 1.0)
    for m in cfg.methods:
        res, v = summary["methods"][m], minmax01(state["values"][m])
        # Eq. 2 by brute force at every grid price; the seller takes the highest price that sells (Eq. 4)
        sold = []
        for j in off:
            buys = [_buys_brute_force(v[j], p, v[ex], prices, budget) for p in cfg.price_grid]
            if any(buys):
                sold.append(max(p for p, b in zip(cfg.price_grid, buys) if b))
        assert res["bought"] == len(sold) and res["offers"] == 36
        assert res["spent_all"] == pytest.approx(sum(sold))
        if sold:
            assert res["mean_price"] == pytest.approx(np.mean(sold))
        pts = res["points"]
        assert [p["size"] for p in pts] == [0, 3, 6] and pts[0]["accuracy"] == summary["base_accuracy"]
        assert all(p["n"] == min(p["size"], len(sold)) and 0 <= p["accuracy"] <= 1 for p in pts)
        assert all(0 <= p["balanced_accuracy"] <= 1 and 0 < p["nll"] < 10 for p in pts)
        assert pts[2]["cost"] >= pts[1]["cost"] >= 0
        assert res["auc_clean_vs_noisy"] == pytest.approx(auc(state["values"][m], ~market["noisy"]))
    constant = summary["methods"]["constant"]
    assert constant["bought"] in (0, 36)  # every row is worth 1: the same decision for all
    oracle = summary["methods"]["noise_oracle"]
    assert oracle["auc_clean_vs_noisy"] == 1.0 and oracle["bought_noisy_share"] == 0.0
    # Infl_IP = <mean reference gradient, row gradient> at the fresh LoRA, from the shared gradient cache
    lora = LoraSpec.of(cfg.training, seed=cfg.seed)
    store = GradientStore(str(tiny_model_dir()), None, lora, max_length=128, batch_size=16, progress=False)
    g, vg = store.per_sample(None, market["rows"]), store.mean(None, market["reference"])
    np.testing.assert_allclose(state["values"]["infl_ip"], grad_ip(g, vg).numpy(), rtol=1e-9)
    assert store.stats.computed_rows == 0  # both gradient methods and this check read one cached computation
    assert len(trained) == 2 * len(cfg.methods) - 2 * (oracle["bought"] == 0)
    # resume: nothing is valued, trained or scored again; the summary is the same
    trained.clear()
    assert run_appendix_a(cfg, out) == summary and trained == []
    # a folder from before the balanced accuracy and nll: rescored from its kept adapters, not retrained
    del state["scores"]
    (out / "state.json").write_text(json.dumps(state))
    assert run_appendix_a(cfg, out) == summary and trained == []
    with pytest.raises(UserError, match="another configuration"):
        run_appendix_a(cfg.model_copy(update={"seed": 1}), out)
