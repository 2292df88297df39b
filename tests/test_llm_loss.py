"""The answer-window loss (logits only where a label is predicted) against transformers' full-logits loss."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from procure.llm.grads import encode_examples
from procure.llm.loss import answer_logits, batch_loss, label_window, per_example_loss
from procure.llm.tiny import tiny_model_dir

ROWS = [
    {"prompt": "Product: red, small, wool.", "answer": "Rating: 42."},
    {"prompt": "Product: blue, large, cotton. " * 4, "answer": "Rating: 7."},
    {"prompt": "x", "answer": "Rating: 100, clearly the best of all."},
]


@pytest.fixture(scope="module")
def tiny():
    d = tiny_model_dir()
    base = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    torch.manual_seed(0)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(base, cfg).eval()
    return model, AutoTokenizer.from_pretrained(d)


class NoKeep(nn.Module):
    """A causal LM whose forward has no ``logits_to_keep`` argument (exercises the full-logits fallback)."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        return self.lm(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache)


def test_window_covers_exactly_the_labelled_positions(tiny):
    _, tok = tiny
    enc = encode_examples(tok, ROWS, max_length=256)
    lo, hi = label_window(enc.labels)
    lab = enc.labels[:, 1:]
    assert (lab[:, :lo] == -100).all() and (lab[:, hi:] == -100).all()
    assert (lab[:, lo] != -100).any() and (lab[:, hi - 1] != -100).any()
    assert hi - lo < enc.labels.shape[1] - 1  # something was actually saved on this batch
    assert label_window(torch.full((2, 5), -100)) == (0, 0)


@pytest.mark.parametrize("wrap", [False, True])
def test_losses_equal_transformers_full_logits(tiny, wrap):
    model, tok = tiny
    enc = encode_examples(tok, ROWS, max_length=256)
    m = NoKeep(model) if wrap else model
    with torch.no_grad():
        full = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits
        logits, targets = answer_logits(m, enc.input_ids, enc.attention_mask, enc.labels)
        lo, hi = label_window(enc.labels)
        torch.testing.assert_close(logits, full[:, lo:hi], rtol=1e-5, atol=1e-5)
        ref = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, labels=enc.labels).loss
        torch.testing.assert_close(batch_loss(m, enc.input_ids, enc.attention_mask, enc.labels), ref)
        per = per_example_loss(m, enc.input_ids, enc.attention_mask, enc.labels)
        for i in range(len(ROWS)):
            one = encode_examples(tok, ROWS[i : i + 1], max_length=256)
            torch.testing.assert_close(per[i], model(input_ids=one.input_ids, labels=one.labels).loss)
    assert targets.shape == logits.shape[:2]


def test_label_logits_project_only_labelled_positions(tiny):
    """Rows of different lengths: the vocabulary projection sees the m labelled positions, not the window."""
    from procure.llm.loss import label_logits

    model, tok = tiny
    enc = encode_examples(tok, ROWS, max_length=256)
    seen = []
    head = model.get_base_model().get_output_embeddings()
    handle = head.register_forward_hook(lambda _m, args, _out: seen.append(tuple(args[0].shape)))
    try:
        with torch.no_grad():
            logits, targets, rows = label_logits(model, enc.input_ids, enc.attention_mask, enc.labels)
            window, wt = answer_logits(model, enc.input_ids, enc.attention_mask, enc.labels)
    finally:
        handle.remove()
    m = int((enc.labels[:, 1:] != -100).sum())
    assert seen[0][:2] == (1, m) and seen[1][:2] == wt.shape and wt.numel() > m
    torch.testing.assert_close(logits, window[wt != -100], rtol=1e-5, atol=1e-5)
    assert targets.tolist() == wt[wt != -100].tolist()
    assert rows.tolist() == [i for i in range(len(ROWS)) for _ in range(int((wt[i] != -100).sum()))]
    none = torch.full_like(enc.labels, -100)
    per = per_example_loss(model, enc.input_ids, enc.attention_mask, none)
    assert per.tolist() == [0.0] * len(ROWS)
    assert batch_loss(model, enc.input_ids, enc.attention_mask, none).item() == 0.0
