"""Model resolution, prompt formatting / label masking, and the LoRA merge maths against peft (tiny model)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from procure.errors import UserError
from procure.llm.formatting import IGNORE_INDEX, chat_prompt, encode_row, pad_batch, pad_ids, prompt_ids
from procure.llm.models import load_model, load_tokenizer, resolve_model


@pytest.fixture(scope="module")
def tiny_dir() -> str:
    return resolve_model("tiny")


@pytest.fixture(scope="module")
def tok(tiny_dir):
    return load_tokenizer(tiny_dir)


# ------------------------------------------------------------------------------------------------ resolve
def test_resolve_tiny_and_folders(tiny_dir, tmp_path):
    assert (Path(tiny_dir) / "config.json").is_file()
    assert resolve_model(tiny_dir) == tiny_dir  # a local HF folder is returned as is
    with pytest.raises(UserError, match="config.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(UserError, match="no such file"):
        resolve_model(str(tmp_path / "missing-model"))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(UserError, match="gguf"):
        resolve_model(str(tmp_path / "weights.bin"))
    with pytest.raises(UserError, match="empty"):
        resolve_model(" ")


def test_hub_id_offline_is_one_line_user_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as exc:
        resolve_model("procure-tests/no-such-model-xyz")
    assert "\n" not in str(exc.value)


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed")
def test_4bit_without_bitsandbytes_is_user_error(tiny_dir):
    with pytest.raises(UserError, match="bitsandbytes"):
        load_model(tiny_dir, quantize_4bit=True)


# --------------------------------------------------------------------------------------------- formatting
def test_chat_prompt_chatml_and_fallback(tok):
    text = chat_prompt(tok, "How good is it?", system="Rate products.")
    assert text.index("Rate products.") < text.index("How good is it?")
    assert text.rstrip().endswith("<|im_start|>assistant")

    class Plain:
        chat_template = None

    assert chat_prompt(Plain(), "hi") == "hi\n"
    assert chat_prompt(Plain(), "hi", system="sys") == "sys\n\nhi\n"


def test_labels_mask_exactly_the_prompt_and_padding(tok):
    rows = [
        {"prompt": "Product: red, small", "answer": "Rating: 42.", "system": "Rate it."},
        {"prompt": "A much longer product description with many more words in it", "answer": "Rating: 7."},
    ]
    enc = [encode_row(tok, r, 512, i) for i, r in enumerate(rows)]
    for r, (ids, labels) in zip(rows, enc):
        p = prompt_ids(tok, r["prompt"], r.get("system"))
        a = tok(r["answer"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert ids == p + a
        assert labels == [IGNORE_INDEX] * len(p) + a
        assert tok.decode(a[:-1]) == r["answer"]
    batch = pad_batch(enc, tok.pad_token_id)
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()
    assert int((batch["labels"] != IGNORE_INDEX).sum()) == sum(len(a) for a in [e[1] for e in enc]) - sum(
        lab.count(IGNORE_INDEX) for _, lab in enc
    )


@given(
    seqs=st.lists(st.lists(st.integers(1, 50), min_size=1, max_size=6), min_size=1, max_size=4),
    side=st.sampled_from(["left", "right"]),
)
def test_pad_ids_matches_a_python_loop(seqs, side):
    ids, mask = pad_ids(seqs, 0, side)
    t = max(map(len, seqs))
    for row, m, sq in zip(ids.tolist(), mask.tolist(), seqs):
        pad = [0] * (t - len(sq))
        assert row == (sq + pad if side == "right" else pad + sq)
        assert m == ([1] * len(sq) + pad if side == "right" else pad + [1] * len(sq))
    labels, _ = pad_ids(seqs, 0, side, fill=IGNORE_INDEX)
    assert int((labels == IGNORE_INDEX).sum()) == sum(t - len(sq) for sq in seqs)


def test_model_loss_is_mean_ce_over_answer_tokens_only(tiny_dir, tok):
    """The trainer's loss (HF loss on our labels) equals a hand-computed CE over answer tokens only."""
    model = load_model(tiny_dir)
    rows = [{"prompt": f"item {i} " * (i + 1), "answer": f"Rating: {10 * i}."} for i in range(3)]
    batch = pad_batch([encode_row(tok, r, 512) for r in rows], tok.pad_token_id)
    with torch.no_grad():
        out = model(**batch)
    logp = torch.log_softmax(out.logits.float(), -1)
    terms = []
    for b, r in enumerate(rows):
        n_p = len(prompt_ids(tok, r["prompt"]))
        ids = batch["input_ids"][b]
        n = int(batch["attention_mask"][b].sum())
        terms += [-float(logp[b, t - 1, ids[t]]) for t in range(n_p, n)]
    assert float(out.loss) == pytest.approx(sum(terms) / len(terms), rel=1e-5)


def test_answer_cut_off_is_user_error(tok):
    with pytest.raises(UserError, match="max_length"):
        encode_row(tok, {"prompt": "word " * 50, "answer": "Rating: 1."}, max_length=10)
    with pytest.raises(UserError, match="'prompt' and 'answer'"):
        encode_row(tok, {"question": "x"}, max_length=10)


# -------------------------------------------------------------------------------------------------- merge
def test_lora_deltas_equal_peft_merge(tiny_dir, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    from procure.llm.merge import adapter_rank, lora_deltas

    torch.manual_seed(0)
    model = get_peft_model(
        load_model(tiny_dir), LoraConfig(r=4, lora_alpha=12, target_modules=["q_proj", "v_proj", "o_proj"])
    )
    with torch.no_grad():  # non-zero B so the delta is not trivially zero
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    model.save_pretrained(tmp_path / "ad")
    base = dict(load_model(tiny_dir).named_parameters())
    merged = PeftModel.from_pretrained(load_model(tiny_dir), tmp_path / "ad").merge_and_unload()
    deltas = lora_deltas(tmp_path / "ad")
    assert adapter_rank(tmp_path / "ad") == 4
    assert len(deltas) == 3 * 2  # 3 modules x 2 layers
    for name, w in merged.named_parameters():
        expect = base[name] + deltas[name] if name in deltas else base[name]
        torch.testing.assert_close(w, expect, rtol=1e-5, atol=1e-6)
    with pytest.raises(UserError, match="adapter_config"):
        lora_deltas(tmp_path)
