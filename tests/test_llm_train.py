"""StageTrainer on the tiny model: learning, determinism, resume semantics, atomic saves, a clean base."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file

from procure.cache import build_once, write_dir_atomically
from procure.errors import UserError
from procure.llm.formatting import encode_row, pad_batch
from procure.llm.train import StageTrainer, TrainConfig

ROWS = [
    {"prompt": f"Product {i}: colour {i % 3}", "answer": f"Rating: {10 * (i % 4)}.", "system": "Rate."}
    for i in range(8)
]


@pytest.fixture(scope="module")
def trainer():
    return StageTrainer("tiny", TrainConfig(epochs=3, lr=3e-2, batch_size=4, lora_r=4, seed=1))


def _tensors(adapter: Path) -> dict[str, torch.Tensor]:
    return load_file(str(adapter / "adapter_model.safetensors"))


def _mean_loss(trainer: StageTrainer, rows, adapter: Path | None) -> float:
    """Mean answer-token loss of base (+ adapter) on rows, from a fresh model (independent of the trainer)."""
    from peft import PeftModel

    from procure.llm.models import load_model

    model = load_model(trainer.model_path)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    batch = pad_batch([encode_row(trainer.tokenizer, r, 256) for r in rows], trainer.tokenizer.pad_token_id)
    with torch.no_grad():
        return float(model(**batch).loss)


def test_config_is_strict():
    with pytest.raises(ValidationError):
        TrainConfig(epoch=2)
    with pytest.raises(ValidationError):
        TrainConfig(lr=-1)
    assert TrainConfig().target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]


def test_training_lowers_loss_and_changes_adapter(trainer, tmp_path):
    base_params = {n: p.detach().clone() for n, p in trainer.base.named_parameters()}
    res = trainer.train(ROWS, tmp_path / "a", progress=False)
    assert res.adapter_dir == tmp_path / "a" and (res.adapter_dir / "adapter_config.json").is_file()
    assert res.steps == 6 and len(res.losses) == 6
    tensors = _tensors(res.adapter_dir)
    assert any("lora_B" in k for k in tensors)
    assert all(t.abs().sum() > 0 for k, t in tensors.items() if "lora_B" in k)  # B starts at zero
    assert _mean_loss(trainer, ROWS, res.adapter_dir) < _mean_loss(trainer, ROWS, None) - 0.3
    assert res.final_loss < res.losses[0]
    # the non-padding tokens fed forward: 3 epochs of the 8 rows
    n_tok = sum(len(encode_row(trainer.tokenizer, r, 256)[0]) for r in ROWS)
    assert res.n_tokens == 3 * n_tok
    # the trainer's base model is clean again: no LoRA layers, weights untouched
    assert not any("lora" in n for n, _ in trainer.base.named_modules())
    for n, p in trainer.base.named_parameters():
        assert torch.equal(p, base_params[n]), n
        assert not p.requires_grad


def test_deterministic_given_seed(trainer, tmp_path):
    a = trainer.train(ROWS, tmp_path / "a", progress=False)
    b = trainer.train(ROWS, tmp_path / "b", progress=False)
    ta, tb = _tensors(a.adapter_dir), _tensors(b.adapter_dir)
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    assert a.losses == b.losses


def test_resume_from_adapter_equals_continued_training(tmp_path):
    """With a stateless optimizer (SGD) and full batches, 1 epoch + 1 resumed epoch == 2 epochs in one go."""
    cfg = dict(lr=0.05, batch_size=len(ROWS), lora_r=4, optimizer="sgd", seed=3, max_grad_norm=None)
    tr = StageTrainer("tiny", TrainConfig(epochs=2, **cfg))
    both = tr.train(ROWS, tmp_path / "two", progress=False)
    tr.cfg = TrainConfig(epochs=1, **cfg)
    first = tr.train(ROWS, tmp_path / "one", progress=False)
    second = tr.train(ROWS, tmp_path / "one+one", init_adapter=first.adapter_dir, progress=False)
    t2, t11 = _tensors(both.adapter_dir), _tensors(second.adapter_dir)
    assert t2.keys() == t11.keys()
    for k in t2:
        torch.testing.assert_close(t11[k], t2[k], rtol=1e-5, atol=1e-7)
    assert second.losses[0] == pytest.approx(both.losses[1], rel=1e-5)
    # lr = 0 from an adapter saves the same adapter
    tr.cfg = TrainConfig(epochs=1, **{**cfg, "lr": 0.0})
    same = tr.train(ROWS, tmp_path / "same", init_adapter=first.adapter_dir, progress=False)
    t1, ts = _tensors(first.adapter_dir), _tensors(same.adapter_dir)
    assert all(torch.equal(t1[k], ts[k]) for k in t1)


def test_fractional_epochs_and_grad_accum(tmp_path):
    tr = StageTrainer("tiny", TrainConfig(epochs=0.5, batch_size=2, grad_accum=3, lora_r=4))
    res = tr.train(ROWS, tmp_path / "half", progress=False)
    assert len(res.losses) == 2 and res.steps == 1  # 4 micro-batches per epoch; half of them; one final step
    with pytest.raises(UserError, match="no examples"):
        tr.train([], tmp_path / "empty", progress=False)
    with pytest.raises(UserError, match="adapter_config"):
        tr.train(ROWS, tmp_path / "x", init_adapter=tmp_path, progress=False)
    assert not (tmp_path / "empty").exists()


def test_stage_save_failure_keeps_old_folder_and_leaves_no_temp(trainer, tmp_path, monkeypatch):
    out = tmp_path / "stage"
    trainer.train(ROWS[:4], out, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    from peft import PeftModel

    def broken_save(self, save_directory, **kw):
        (Path(save_directory) / "adapter_model.safetensors").write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(PeftModel, "save_pretrained", broken_save)
    with pytest.raises(OSError, match="disk full"):
        trainer.train(ROWS, out, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage"]
    assert not any("lora" in n for n, _ in trainer.base.named_modules())  # base cleaned after the failure too


def _writer(content: str):
    return lambda d: (d / "f.txt").write_text(content)


def test_write_dir_atomically_replaces_and_creates(tmp_path):
    write_dir_atomically(tmp_path / "x", _writer("one"), replace=True)
    write_dir_atomically(tmp_path / "x", _writer("two"), replace=True)
    assert (tmp_path / "x" / "f.txt").read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["x"]


def test_write_dir_atomically_failure_keeps_old_folder_and_leaves_no_temp(tmp_path, monkeypatch):
    write_dir_atomically(tmp_path / "x", _writer("one"), replace=True)

    def broken(d: Path) -> None:
        (d / "f.txt").write_text("partial")
        raise OSError("disk full")

    for replace in (True, False):
        with pytest.raises(OSError, match="disk full"):
            write_dir_atomically(tmp_path / "y", broken, replace=replace)  # nothing there before: nothing after
    with pytest.raises(OSError, match="disk full"):
        write_dir_atomically(tmp_path / "x", broken, replace=True)
    assert (tmp_path / "x" / "f.txt").read_text() == "one"
    assert [p.name for p in tmp_path.iterdir()] == ["x"]

    rename = os.rename

    def failing_rename(src, dst):  # the new folder cannot be moved in after the old one was moved aside
        if ".tmp-" in Path(src).name:
            raise OSError("rename failed")
        rename(src, dst)

    monkeypatch.setattr(os, "rename", failing_rename)
    with pytest.raises(OSError, match="rename failed"):
        write_dir_atomically(tmp_path / "x", _writer("two"), replace=True)
    assert (tmp_path / "x" / "f.txt").read_text() == "one"
    assert [p.name for p in tmp_path.iterdir()] == ["x"]


def test_build_once_keeps_an_existing_folder_and_loses_races_quietly(tmp_path):
    calls = []
    build_once(tmp_path / "x", lambda d: calls.append(_writer("one")(d)))
    build_once(tmp_path / "x", lambda d: calls.append(_writer("two")(d)))
    assert (tmp_path / "x" / "f.txt").read_text() == "one" and len(calls) == 1

    def racing(d: Path) -> None:  # a concurrent builder finishes first
        _writer("mine")(d)
        write_dir_atomically(tmp_path / "z", _writer("winner"), replace=False)

    assert build_once(tmp_path / "z", racing) == tmp_path / "z"
    assert (tmp_path / "z" / "f.txt").read_text() == "winner"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x", "z"]


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed")
def test_qlora_without_bitsandbytes_is_user_error():
    with pytest.raises(UserError, match="bitsandbytes"):
        StageTrainer("tiny", TrainConfig(quantize_4bit=True))
