"""LoRA stage training: model state A_t = a LoRA adapter, trained from A_{t-1} on the data bought in round t.

:class:`StageTrainer` loads the base model once and trains any number of adapters on it (one per coalition in a
valuation round) by injecting a fresh or saved LoRA, training, saving atomically and unloading the LoRA again.
The loss is the mean next-token cross-entropy over answer (+EOS) tokens of a micro-batch; prompt and padding
positions carry label -100 (:mod:`procure.llm.formatting`). Every stage starts a new optimizer (AdamW by
default) from the previous stage's LoRA weights: a stage is a fine-tune of A_{t-1}, not a resumed run.

Runs unchanged on CPU, one GPU, or several GPUs with ``accelerate launch`` (data parallel: the data loader is
sharded by accelerate, gradients are all-reduced by DDP, the main process saves). ``local=True`` instead trains
on this process's device alone, with no collective call, and saves from this process: what the pipeline uses to
train different coalitions on different GPUs at once.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from procure.cache import write_dir_atomically
from procure.errors import UserError

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


class TrainConfig(BaseModel):
    """LoRA stage hyper-parameters (recipe field ``training``)."""

    model_config = ConfigDict(extra="forbid")

    epochs: float = Field(1.0, gt=0, description="passes over the stage's data; fractions stop early")
    lr: float = Field(2e-4, ge=0)
    batch_size: int = Field(8, ge=1, description="examples per micro-batch (per process)")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    max_length: int = Field(256, ge=2, description="tokens per example; longer rows are cut at the end")
    lora_r: int = Field(8, ge=1)
    lora_alpha: float = Field(16.0, gt=0)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: list(DEFAULT_TARGETS), min_length=1)
    seed: int = 0
    bf16: bool = Field(False, description="bfloat16 autocast for forward/backward (weights stay float32)")
    optimizer: Literal["adamw", "sgd"] = "adamw"
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0, description="gradient clipping; None = off")
    shuffle: bool = True
    quantize_4bit: bool = Field(
        False, description="QLoRA: nf4 base weights via bitsandbytes (GPU; not in the CPU install)"
    )


@dataclass
class StageResult:
    """What one stage produced: the adapter folder, wall seconds, tokens trained on, and the loss."""

    adapter_dir: Path
    seconds: float
    n_tokens: int  # non-padding tokens fed forward, all epochs, all processes
    final_loss: float  # mean micro-batch loss over the last epoch (nats per answer token)
    steps: int = 0  # optimizer steps
    losses: list[float] = field(default_factory=list)  # per micro-batch, in order


def add_lora(base, r: int, alpha: float, target_modules, *, dropout: float = 0.0, **options):
    """``base`` with a fresh LoRA (B = 0) of rank ``r`` and scale ``alpha / r`` on ``target_modules`` (peft);
    ``options`` go to ``LoraConfig`` (e.g. ``layers_to_transform``). A name that matches no module: UserError."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        bias="none",
        task_type="CAUSAL_LM",
        **options,
    )
    try:
        return get_peft_model(base, cfg)
    except ValueError as exc:
        raise UserError(f"target_modules {list(target_modules)}: {str(exc).splitlines()[0]}") from None


class StageTrainer:
    """Trains LoRA stages on one base model kept in memory.

    ``StageTrainer(model_path, cfg).train(rows, out_dir, init_adapter=A_prev)`` -> :class:`StageResult`.
    Deterministic given ``cfg.seed`` (LoRA init, data order and dropout are seeded) on a fixed device/thread
    count.
    """

    def __init__(
        self,
        model_path: str,
        cfg: TrainConfig | None = None,
        *,
        device: str | None = None,
        quantize_4bit: bool = False,
        local: bool = False,
    ):
        import torch
        from accelerate import Accelerator

        from procure.llm.models import load_model, load_tokenizer, resolve_model

        self.cfg = cfg or TrainConfig()
        self.local = local  # process-local: no DDP wrapping, no data sharding, no all-reduce, this process saves
        # no GPU: cpu=True, which under `accelerate launch --multi_gpu` / torchrun means gloo process groups
        self.accelerator = Accelerator(cpu=device == "cpu" or not torch.cuda.is_available())
        self.model_path = resolve_model(model_path)
        self.tokenizer = load_tokenizer(self.model_path)
        self.quantize_4bit = quantize_4bit = quantize_4bit or self.cfg.quantize_4bit
        self.base = load_model(
            self.model_path, dtype="float32", device=str(self.accelerator.device), quantize_4bit=quantize_4bit
        )
        if quantize_4bit:
            from peft import prepare_model_for_kbit_training

            self.base = prepare_model_for_kbit_training(self.base, use_gradient_checkpointing=False)
        for p in self.base.parameters():
            p.requires_grad_(False)
        self._torch = torch

    # ------------------------------------------------------------------------------------------------ helpers
    def encode(self, examples: Sequence[Mapping[str, Any]]) -> list[tuple[list[int], list[int]]]:
        from procure.llm.formatting import encode_row

        return [encode_row(self.tokenizer, ex, self.cfg.max_length, i) for i, ex in enumerate(examples)]

    def _collate(self, rows):
        from procure.llm.formatting import pad_batch

        return pad_batch(rows, self.tokenizer.pad_token_id, side="right")

    def _wrap(self, init_adapter: Path | None):
        from peft import PeftModel

        cfg = self.cfg
        self._torch.manual_seed(cfg.seed)  # LoRA A init
        if init_adapter is not None:
            init_adapter = Path(init_adapter)
            if not (init_adapter / "adapter_config.json").is_file():
                raise UserError(f"init_adapter {init_adapter}: no adapter_config.json; give a saved LoRA folder")
            return PeftModel.from_pretrained(self.base, str(init_adapter), is_trainable=True)
        return add_lora(self.base, cfg.lora_r, cfg.lora_alpha, cfg.target_modules, dropout=cfg.lora_dropout)

    def _optimizer(self, params):
        cfg = self.cfg
        if cfg.optimizer == "sgd":
            return self._torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        return self._torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    # ------------------------------------------------------------------------------------------------- train
    def train(
        self,
        examples: Sequence[Mapping[str, Any]],
        out_dir: Path,
        init_adapter: Path | None = None,
        progress: bool | IO[str] = True,
    ) -> StageResult:
        """Fine-tune a LoRA (fresh, or continuing ``init_adapter``) on ``examples`` and save it to ``out_dir``.

        ``progress``: show a progress bar (on stderr, or on the given stream)."""
        torch = self._torch
        from torch.utils.data import DataLoader
        from tqdm.auto import tqdm

        from procure.llm.loss import batch_loss

        if len(examples) == 0:
            raise UserError("no examples to train on (the stage's dataset is empty)")
        cfg, acc = self.cfg, self.accelerator
        t0 = time.perf_counter()
        rows = self.encode(examples)
        model = self._wrap(init_adapter)
        try:
            gen = torch.Generator().manual_seed(cfg.seed)
            dl = DataLoader(
                rows, batch_size=cfg.batch_size, shuffle=cfg.shuffle, generator=gen, collate_fn=self._collate
            )
            params = [p for p in model.parameters() if p.requires_grad]
            opt = self._optimizer(params)
            if not self.local:
                model, opt, dl = acc.prepare(model, opt, dl)
            per_epoch = len(dl)
            total = max(1, math.ceil(cfg.epochs * per_epoch))
            losses: list[float] = []
            n_tokens = torch.zeros((), dtype=torch.long, device=acc.device)
            steps = 0
            model.train()
            torch.manual_seed(cfg.seed)  # dropout
            shown = progress is not False and (self.local or acc.is_main_process)
            file = None if isinstance(progress, bool) else progress
            bar = tqdm(total=total, desc="lora stage", disable=not shown, leave=False, file=file)
            done = 0
            while done < total:
                for batch in dl:
                    if done >= total:
                        break
                    if self.local:  # not a prepared loader: move the batch to this process's device
                        batch = {k: v.to(acc.device) for k, v in batch.items()}
                    boundary = (done + 1) % cfg.grad_accum == 0 or done + 1 == total
                    sync = contextlib.nullcontext() if boundary or self.local else acc.no_sync(model)
                    autocast = torch.autocast(acc.device.type, dtype=torch.bfloat16, enabled=cfg.bf16)
                    with sync, autocast:
                        loss = batch_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
                        if self.local:
                            (loss / cfg.grad_accum).backward()
                        else:
                            acc.backward(loss / cfg.grad_accum)
                    if boundary:
                        if cfg.max_grad_norm is not None:
                            clip = torch.nn.utils.clip_grad_norm_ if self.local else acc.clip_grad_norm_
                            clip(params, cfg.max_grad_norm)
                        opt.step()
                        opt.zero_grad(set_to_none=True)
                        steps += 1
                    n_tokens += batch["attention_mask"].sum().to(n_tokens.device)
                    losses.append(float(loss.detach()))
                    done += 1
                    bar.update(1)
                    bar.set_postfix(loss=f"{losses[-1]:.3f}")
            bar.close()
            model.eval()
            tail = losses[-min(per_epoch, len(losses)) :]
            final_t = torch.tensor(sum(tail) / len(tail), device=acc.device)
            if self.local:
                n_tok, final = int(n_tokens), float(final_t)
            else:
                n_tok = int(acc.reduce(n_tokens, reduction="sum"))
                final = float(acc.reduce(final_t, reduction="mean"))
            peft_model = acc.unwrap_model(model)
            seconds = time.perf_counter() - t0
            meta = {
                "base_model": self.model_path,
                "init_adapter": None if init_adapter is None else str(init_adapter),
                "n_examples": len(examples),
                "n_tokens": n_tok,
                "steps": steps,
                "final_loss": final,
                "seconds": seconds,
                "config": cfg.model_dump(),
            }

            def save(tmp: Path) -> None:
                peft_model.save_pretrained(str(tmp))
                (tmp / "procure_stage.json").write_text(json.dumps(meta, indent=1))

            out_dir = Path(out_dir)
            if self.local or acc.is_main_process:
                write_dir_atomically(out_dir, save, replace=True)
            if not self.local:
                acc.wait_for_everyone()
        finally:
            self._unwrap(model)
            acc.free_memory()
        return StageResult(out_dir, time.perf_counter() - t0, n_tok, final, steps, losses)

    def _unwrap(self, model) -> None:
        """Remove the injected LoRA layers so the next stage starts from the clean base model."""
        peft_model = self.accelerator.unwrap_model(model)
        if hasattr(peft_model, "unload"):
            self.base = peft_model.unload()
        for p in self.base.parameters():
            p.requires_grad_(False)
