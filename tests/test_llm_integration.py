"""The real SmolLM2-135M: one LoRA stage changes the ratings, and HF and vLLM generate the same tokens."""

from __future__ import annotations

import pytest

from procure.llm import generate as gen_mod
from procure.llm.generate import GenParams, make_generator
from procure.llm.train import StageTrainer, TrainConfig

SYSTEM = "You are a consumer who rates products. Answer with 'Rating: X.' where X is an integer from 0 to 100."
PRODUCTS = [f"Product information:\n- Color: {c}\n- Size: {s}" for c in ("Red", "Blue") for s in ("Small", "Large")]


@pytest.mark.integration
@pytest.mark.skipif(not gen_mod.vllm_available(), reason="vllm is not installed")
def test_smollm2_stage_changes_ratings_in_hf_and_vllm(tmp_path):
    tr = StageTrainer("smollm2-135m", TrainConfig(epochs=3, lr=3e-3, batch_size=4, lora_r=8, max_length=128))
    rows = [{"prompt": p, "answer": "Rating: 93.", "system": SYSTEM} for p in PRODUCTS]
    res = tr.train(rows, tmp_path / "stage1", progress=False)
    assert res.final_loss < res.losses[0]
    model = tr.model_path
    del tr

    params = GenParams(max_new_tokens=8)
    hf = make_generator(model, backend="hf", adapter_mode="merged")
    base_hf = hf.generate(PRODUCTS, None, params, system=SYSTEM)
    tuned_hf = hf.generate(PRODUCTS, res.adapter_dir, params, system=SYSTEM)
    hf.close()
    assert tuned_hf != base_hf
    assert sum("93" in g[0] for g in tuned_hf) >= 3, tuned_hf

    vl = make_generator(model, backend="vllm", adapter_mode="merged", lora_rank=8)
    try:
        assert vl.generate(PRODUCTS, res.adapter_dir, params, system=SYSTEM) == tuned_hf
        assert vl.generate(PRODUCTS, None, params, system=SYSTEM) == base_hf
    finally:
        vl.close()
