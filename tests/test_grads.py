"""Per-sample LoRA gradients (batched hooks) against batch-1 backward passes on the tiny random Llama."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from procure.errors import UserError
from procure.llm.grads import (
    _projector,
    encode_examples,
    example_losses,
    mean_grad,
    one_step_oracle,
    per_sample_lora_grads,
    reference_grads,
)
from procure.llm.tiny import tiny_model_dir
from procure.valuation.influence import grad_ip, lora_blocks

EXAMPLES = [
    {"prompt": "Product: red, small, wool.", "answer": "Rating: 42."},
    {"prompt": "Product: blue, large, cotton. " * 3, "answer": "Rating: 7.", "system": "You rate products."},
    {"prompt": "Q: 2+2?", "answer": "Answer: D"},
    {"prompt": "x", "answer": "Rating: 100.", "system": "S"},
    {"prompt": "Product: black, extra-large, leather.", "answer": "Rating: 63."},
]


@pytest.fixture(scope="module")
def tiny():
    d = tiny_model_dir()
    tok = AutoTokenizer.from_pretrained(d)
    base = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    torch.manual_seed(0)  # init_lora_weights=False: B random too, so lora_A gradients are non-zero
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    return get_peft_model(base, cfg), tok


def test_per_sample_grads_equal_batch1_backward(tiny):
    model, tok = tiny
    model.train()  # must be switched to eval (dropout off) inside and restored after
    got = per_sample_lora_grads(model, tok, EXAMPLES, batch_size=3, progress=False)
    assert model.training
    ref = reference_grads(model, tok, EXAMPLES)
    assert set(got) == set(ref) and all("lora_" in k for k in got)
    for k in ref:
        assert got[k].shape == (len(EXAMPLES), *ref[k].shape[1:])
        torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-6)
        assert ref[k].abs().max() > 0
    loop = per_sample_lora_grads(model, tok, EXAMPLES, method="loop", progress=False)
    for k in ref:
        torch.testing.assert_close(loop[k], ref[k], rtol=1e-4, atol=1e-6)


SYSTEM = "You rate products from 0 to 100. Reply with 'Rating: X.' and nothing else."
SHARED = [
    {"system": SYSTEM, "prompt": f"Rate this product. Color: {c}. Size: {s}.", "answer": f"Rating: {r}."}
    for c, s, r in [("red", "small", 42), ("blue", "large", 7), ("red", "large", 90), ("green", "small", 13)]
]


def test_shared_prefix_grads_equal_batch1_backward(tiny, monkeypatch):
    """Rows sharing a system line and instructions: the prefix runs once per batch, gradients stay per row."""
    import procure.llm.prefix as prefix

    model, tok = tiny
    used = []

    def spy(model_, input_ids, attention_mask, labels, *args, **kw):
        out = real(model_, input_ids, attention_mask, labels, *args, **kw)
        used.append((prefix.shared_prefix_length(input_ids, attention_mask, labels), out is not None))
        return out

    real = prefix.shared_prefix_grads
    monkeypatch.setattr(prefix, "shared_prefix_grads", spy)
    rows = [SHARED[0], EXAMPLES[0], SHARED[1], EXAMPLES[2], SHARED[2], SHARED[3]]  # mixed: sorting groups them
    got = per_sample_lora_grads(model, tok, rows, batch_size=4, progress=False)
    assert any(ok and p >= prefix.MIN_PREFIX for p, ok in used), used
    ref = reference_grads(model, tok, rows)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-6)
    plain = per_sample_lora_grads(model, tok, rows, batch_size=4, share_prefix=False, progress=False)
    for k in ref:
        torch.testing.assert_close(plain[k], ref[k], rtol=1e-4, atol=1e-6)
    # all rows share the system line: batched by length (a long row gets its own batch), still the input order
    long = {**SHARED[1], "prompt": SHARED[1]["prompt"] + " Material: wool, cotton and silk, hand-made." * 3}
    rows = [SHARED[0], long, *SHARED[1:]]
    used.clear()
    got = per_sample_lora_grads(model, tok, rows, batch_size=8, progress=False)
    assert [ok for _, ok in used] == [True, False]  # 4 short rows shared; the long row alone, run as usual
    ref = reference_grads(model, tok, rows)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-6)


def test_shared_prefix_length_stops_before_labels_and_short_rows():
    from procure.llm.prefix import shared_prefix_length

    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 0], [1, 2, 3, 4, 9, 9, 9, 9]])
    mask = (torch.arange(8) < torch.tensor([[7], [8]])).long()
    lab = torch.full_like(ids, -100)
    lab[:, 6] = 7
    assert shared_prefix_length(ids, mask, lab) == 4  # rows differ at position 4
    ids[1, 4:] = ids[0, 4:]
    assert shared_prefix_length(ids, mask, lab) == 5  # position 5 predicts the label at 6
    lab[:, 6], lab[:, 3] = -100, 4
    assert shared_prefix_length(ids, mask, lab) == 2
    lab[:, 3] = -100
    assert shared_prefix_length(ids, mask, lab) == 0  # no label at all: label_window is (0, 0)
    lab[:, 7] = 1
    assert shared_prefix_length(ids, mask, lab) == 6  # the shorter row (7 tokens) keeps one own position


def test_loss_only_on_answer_tokens(tiny):
    model, tok = tiny
    enc = encode_examples(tok, EXAMPLES[:2], max_length=256)
    answer = tok("Rating: 42.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    row = enc.labels[0][enc.labels[0] != -100].tolist()
    assert row == answer
    assert enc.attention_mask[0].sum() < enc.attention_mask[1].sum()  # right padding, masked
    with pytest.raises(UserError, match="max_length"):
        encode_examples(tok, EXAMPLES[:1], max_length=3)
    with pytest.raises(UserError, match="prompt"):
        encode_examples(tok, [{"answer": "a"}], max_length=10)


def test_projection_is_the_seeded_sketch_of_each_layer_block(tiny):
    model, tok = tiny
    exact = per_sample_lora_grads(model, tok, EXAMPLES, batch_size=2, progress=False)
    proj = per_sample_lora_grads(model, tok, EXAMPLES, batch_size=4, projection_dim=16, seed=5, progress=False)
    again = per_sample_lora_grads(model, tok, EXAMPLES, batch_size=5, projection_dim=16, seed=5, progress=False)
    blocks = lora_blocks(exact, per_sample=True, blocks="layer")
    assert list(proj) == list(blocks)
    for i, (name, g) in enumerate(blocks.items()):
        sketch = _projector(5, i, g.shape[1], 16).to(g.dtype)
        torch.testing.assert_close(proj[name], g @ sketch, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(proj[name], again[name])
    other = per_sample_lora_grads(model, tok, EXAMPLES[:2], projection_dim=16, seed=6, progress=False)
    assert not torch.allclose(other[name], proj[name][:2])


def test_one_step_oracle_matches_its_definition_and_infl_ip(tiny):
    model, tok = tiny
    model = model.double().eval()  # the hand-made step below calls the model directly: dropout off, as in the oracle
    try:
        train, val = EXAMPLES[:4], EXAMPLES[3:]
        before = {k: p.detach().clone() for k, p in model.named_parameters()}
        grads = per_sample_lora_grads(model, tok, train, progress=False)
        lr = 1e-4
        oracle = one_step_oracle(model, tok, train, val, lr=lr, progress=False)
        for k, p in model.named_parameters():  # restored exactly
            assert torch.equal(p, before[k])
        # definition, done by hand for example 2: an SGD step on its loss, then the validation loss drop
        params = [p for p in model.parameters() if p.requires_grad]
        enc = encode_examples(tok, [train[2]], 256)
        g = torch.autograd.grad(model(input_ids=enc.input_ids, labels=enc.labels).loss, params)
        base = example_losses(model, tok, val).mean()
        with torch.no_grad():
            for p, gi in zip(params, g):
                p -= lr * gi
        stepped = example_losses(model, tok, val).mean()
        with torch.no_grad():
            for k, p in model.named_parameters():
                p.copy_(before[k])
        assert oracle[2].item() == pytest.approx((base - stepped).item(), rel=1e-4, abs=1e-9)
        # Lemma 5 of seeds/004: oracle / lr -> Infl_IP as lr -> 0 (error O(lr); Llama's RMSNorm runs in float32,
        # which limits how small lr can go)
        ip = grad_ip(grads, mean_grad(per_sample_lora_grads(model, tok, val, progress=False)))
        err_small = (oracle / lr - ip).abs().max().item()
        big = one_step_oracle(model, tok, train, val, lr=10 * lr, train_grads=grads, progress=False)
        err_big = (big / (10 * lr) - ip).abs().max().item()
        assert err_small < 0.03 * ip.abs().max().item() and err_small < err_big / 3
    finally:
        model.float()


def test_user_errors(tiny):
    model, tok = tiny
    with pytest.raises(UserError, match="projection_dim"):
        per_sample_lora_grads(model, tok, EXAMPLES, projection_dim=0, progress=False)
    with pytest.raises(UserError, match="no examples"):
        per_sample_lora_grads(model, tok, [], progress=False)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir())
    with pytest.raises(UserError, match="LoRA"):
        per_sample_lora_grads(base, tok, EXAMPLES, progress=False)


def test_batch_order_by_length_under_a_common_prefix_else_lexicographic():
    from procure.llm.prefix import MIN_PREFIX, batch_order

    common = list(range(100, 100 + MIN_PREFIX))
    seqs = [common + [5, 1, 1], common + [3], common + [9, 9], common + [2]]
    assert batch_order(seqs) == ([3, 1, 2, 0], True)  # by length, ties by tokens
    mixed = [[1, 9, 9, 9], [2, 5], [1, 8], [2, 4, 4]]  # no common prefix: rows starting alike meet
    assert batch_order(mixed) == ([2, 0, 3, 1], False)
    assert batch_order([]) == ([], False)


def test_length_batches_cap_rows_and_padding():
    from procure.llm.prefix import length_batches

    assert length_batches([10] * 5, 2) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    # 10, 11, 12: padding 3 of 36 (8 %) is fine; adding 20 would pad 10+9+8 of 80 (34 %): new batch
    assert length_batches([10, 11, 12, 20, 21], 8) == [slice(0, 3), slice(3, 5)]
    assert length_batches([], 4) == []
