"""Generators on the tiny model: HF merged vs peft adapters, batching, naive scoring, and vLLM == HF (greedy, fp32)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from procure.errors import UserError
from procure.llm import generate as gen_mod
from procure.llm.formatting import prompt_ids
from procure.llm.generate import GenParams, make_generator
from procure.llm.train import StageTrainer, TrainConfig

SYSTEM = "Rate the product."
PROMPTS = ["Product: red, small, cotton", "Product: a very long and detailed description " * 3, "hi"]
CHOICES = ["Rating: 7.", "Rating: 42.", "no"]


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """Two stages: A1 from scratch, A2 continuing A1 on other answers (outputs become peaked, so greedy
    decoding has clear winners)."""
    d = tmp_path_factory.mktemp("adapters")
    tr = StageTrainer("tiny", TrainConfig(epochs=5, lr=5e-2, batch_size=6, lora_r=8, seed=0))
    rows = [{"prompt": p, "answer": "Rating: 7.", "system": SYSTEM} for p in PROMPTS + ["x", "y", "z"]]
    a1 = tr.train(rows, d / "a1", progress=False).adapter_dir
    rows2 = [{**r, "answer": "Rating: 42."} for r in rows]
    a2 = tr.train(rows2, d / "a2", init_adapter=a1, progress=False).adapter_dir
    return tr.model_path, a1, a2


@pytest.fixture(scope="module")
def hf_results(adapters):
    """Greedy generations and choice log-probs of the HF merged generator, per adapter (None, a1, a2)."""
    path, a1, a2 = adapters
    g = make_generator(path, backend="hf", adapter_mode="merged")
    out = {}
    for name, a in [("base", None), ("a1", a1), ("a2", a2)]:
        out[name] = (
            g.generate(PROMPTS, a, GenParams(max_new_tokens=6), system=SYSTEM),
            g.choice_logprobs(PROMPTS, CHOICES, a, system=SYSTEM),
        )
    g.close()
    return out


def test_hf_merged_equals_peft_adapters_and_switching_back_restores(adapters, hf_results):
    path, a1, a2 = adapters
    assert hf_results["a1"][0] != hf_results["base"][0]  # the adapter changed the answers
    assert hf_results["a1"][0] != hf_results["a2"][0]
    lo = make_generator(path, backend="hf", adapter_mode="lora")
    me = make_generator(path, backend="hf", adapter_mode="merged")
    w0 = {n: p.detach().clone() for n, p in me.model.named_parameters()}
    for name, a in [("a2", a2), ("base", None), ("a1", a1)]:
        for g in (lo, me):
            gens = g.generate(PROMPTS, a, GenParams(max_new_tokens=6), system=SYSTEM)
            lps = g.choice_logprobs(PROMPTS, CHOICES, a, system=SYSTEM)
            assert gens == hf_results[name][0], (g.adapter_mode, name)
            np.testing.assert_allclose(lps, hf_results[name][1], atol=2e-4)
    me.generate(PROMPTS[:1], None, GenParams(max_new_tokens=1))
    for n, p in me.model.named_parameters():  # back on the base model: weights restored bit for bit
        assert torch.equal(p, w0[n]), n


def test_choice_logprobs_equal_naive_unbatched_forward(adapters, hf_results):
    from peft import PeftModel

    from procure.llm.models import load_model, load_tokenizer

    path, a1, _ = adapters
    tok = load_tokenizer(path)
    model = PeftModel.from_pretrained(load_model(path), str(a1))
    expect = np.zeros((len(PROMPTS), len(CHOICES)))
    for i, p in enumerate(PROMPTS):
        for j, c in enumerate(CHOICES):
            pi = prompt_ids(tok, p, SYSTEM)
            ci = tok(c, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([pi + ci])).logits[0]
            logp = torch.log_softmax(logits, -1)
            expect[i, j] = sum(float(logp[len(pi) - 1 + k, t]) for k, t in enumerate(ci))
    np.testing.assert_allclose(hf_results["a1"][1], expect, atol=2e-4)
    # probabilities of single next tokens are at most 1
    assert (hf_results["a1"][1] < 0).all()


def test_letter_choices_one_pass_per_prompt_equal_one_pass_per_choice(adapters):
    """Choices that differ only in the last token ("Answer: A" ...) take the one-pass path; it gives what one
    forward per (prompt, choice) gives, and the pairwise path is taken as soon as one choice differs earlier."""
    from procure.llm import hf_backend

    path, a1, _ = adapters
    letters = [f"Answer: {x}" for x in "ABCDE"]
    g = make_generator(path, backend="hf", adapter_mode="merged", batch_size=2)
    tok = g.tokenizer
    assert hf_backend._last_token_choices([tok(c, add_special_tokens=False)["input_ids"] for c in letters])
    fast = g.choice_logprobs(PROMPTS, letters, a1, system=SYSTEM)
    pairwise = np.zeros_like(fast)
    for i, p in enumerate(PROMPTS):
        for j, c in enumerate(letters):  # one choice at a time never takes the one-pass path
            pairwise[i, j] = g.choice_logprobs([p], [c, "x y z"], a1, system=SYSTEM)[0, 0]
    np.testing.assert_allclose(fast, pairwise, atol=2e-4)
    assert not hf_backend._last_token_choices([[1, 2], [1, 3, 4]]) and not hf_backend._last_token_choices([[1], [1]])


def test_batched_left_padding_equals_one_prompt_at_a_time(adapters, hf_results):
    path, a1, _ = adapters
    g = make_generator(path, backend="hf", adapter_mode="merged", batch_size=1)
    assert g.generate(PROMPTS, a1, GenParams(max_new_tokens=6), system=SYSTEM) == hf_results["a1"][0]
    greedy_n = g.generate(PROMPTS, a1, GenParams(max_new_tokens=6, n=2), system=SYSTEM)
    assert greedy_n == [x * 2 for x in hf_results["a1"][0]]
    sampled = GenParams(max_new_tokens=4, temperature=1.0, n=3, seed=5)
    s1 = g.generate(PROMPTS[:2], a1, sampled, system=SYSTEM)
    assert [len(x) for x in s1] == [3, 3]
    assert g.generate(PROMPTS[:2], a1, sampled, system=SYSTEM) == s1  # seeded


def test_make_generator_errors_and_auto(monkeypatch, adapters):
    path = adapters[0]
    with pytest.raises(UserError, match="backend"):
        make_generator(path, backend="tpu")
    with pytest.raises(UserError, match="adapter_mode"):
        make_generator(path, backend="hf", adapter_mode="fused")
    monkeypatch.setattr(gen_mod, "vllm_available", lambda: False)
    with pytest.raises(UserError, match="vllm is not installed"):
        make_generator(path, backend="vllm")
    g = make_generator(path)  # auto without vLLM (and on CPU) -> HF
    assert g.backend == "hf"
    with pytest.raises(UserError, match="adapter_model"):
        g.generate(["x"], adapters[1].parent, GenParams())


@pytest.mark.skipif(not gen_mod.vllm_available(), reason="vllm is not installed")
@pytest.mark.parametrize("mode", ["merged", "lora"])
def test_vllm_equals_hf_greedy_float32(adapters, hf_results, mode):
    """One engine per mode, never restarted: base -> a1 -> a2 -> base, all equal to HF."""
    path, a1, a2 = adapters
    g = make_generator(path, backend="vllm", adapter_mode=mode, lora_rank=8, dtype="float32", max_model_len=256)
    try:
        assert (g.backend, g.adapter_mode) == ("vllm", mode)
        for name, a in [("base", None), ("a1", a1), ("a2", a2), ("base", None)]:
            assert g.generate(PROMPTS, a, GenParams(max_new_tokens=6), system=SYSTEM) == hf_results[name][0], name
            lps = g.choice_logprobs(PROMPTS, CHOICES, a, system=SYSTEM)
            np.testing.assert_allclose(lps, hf_results[name][1], atol=2e-3)
    finally:
        g.close()


@pytest.mark.parametrize("batch_size", [1, 2])
def test_lookahead_equals_one_forward_per_branch(adapters, batch_size):
    """The tree-masked single pass gives, for every prompt (left-padded in a batch or alone), the same next-token
    log-probs as separate forwards of prompt + prefix and prompt + prefix + symbol, with an adapter merged."""
    from peft import PeftModel

    from procure.llm.models import load_model, load_tokenizer

    path, a1, _ = adapters
    symbols = [str(d) for d in range(10)] + ["."]
    g = make_generator(path, backend="hf", adapter_mode="merged", batch_size=batch_size)
    first, second = g.lookahead(PROMPTS, "Rating: ", symbols, a1, system=SYSTEM)
    g.close()
    tok = load_tokenizer(path)
    model = PeftModel.from_pretrained(load_model(path), str(a1))
    sid = [tok(s, add_special_tokens=False)["input_ids"][0] for s in symbols]
    pre = tok("Rating: ", add_special_tokens=False)["input_ids"]

    def next_logp(ids: list[int]) -> np.ndarray:
        with torch.no_grad():
            return torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, -1], -1)[sid].numpy()

    for i, p in enumerate(PROMPTS):
        base = prompt_ids(tok, p, SYSTEM) + pre
        np.testing.assert_allclose(first[i], next_logp(base), atol=2e-4)
        for k in range(len(symbols)):
            np.testing.assert_allclose(second[i, k], next_logp(base + [sid[k]]), atol=2e-4)
    with pytest.raises(UserError, match="one token"):
        make_generator(path, backend="hf").lookahead(PROMPTS[:1], "Rating: ", ["42"], None)
