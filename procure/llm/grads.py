"""Per-sample gradients of the LoRA parameters, their random projection, and the one-step training oracle.

The loss of one example is the mean next-token cross-entropy over its *answer* tokens (prompt and padding
masked), the same loss the stage trainer minimises. Gradients are taken w.r.t. the trainable LoRA matrices
only, in eval mode (LoRA dropout off, so a gradient is a deterministic function of the example).

Batched method (default, ``method="hooks"``): one forward and one backward pass per batch on the *sum* of the
per-example losses. Examples in a batch do not interact (attention is causal within a row, padding is
masked), so for every LoRA ``nn.Linear`` with input x (b, t, d_in) and output gradient dy (b, t, d_out) the
gradient of example i's own loss is exactly ``dy_i^T x_i`` (an einsum over tokens), as in Opacus. This is
hand-written rather than ``torch.func.vmap(grad(functional_call))`` because it needs no per-sample replay of
the model and works with any attention kernel; ``method="loop"`` (one backward per example) is the reference.
A prompt prefix shared by a batch's rows is run forward once (``share_prefix``, :mod:`procure.llm.prefix`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from procure.errors import UserError


# ----------------------------------------------------------------------------------------------- encoding
@dataclass
class Encoded:
    input_ids: torch.Tensor  # (b, t) right-padded
    attention_mask: torch.Tensor  # (b, t)
    labels: torch.Tensor  # (b, t), -100 outside the answer tokens


def encode_examples(tokenizer: Any, examples: Sequence[Mapping[str, Any]], max_length: int) -> Encoded:
    """Tokenise {"prompt", "answer", optional "system"} rows exactly as the stage trainer does
    (:func:`procure.llm.formatting.encode_row`: chat prompt + answer + EOS, loss on answer + EOS, cut at
    ``max_length``), right-padded."""
    from procure.llm.formatting import encode_row

    rows = [encode_row(tokenizer, ex, max_length, index=k) for k, ex in enumerate(examples)]
    return _padded(tokenizer, rows)


def _padded(tokenizer: Any, rows: Sequence[tuple[list[int], list[int]]], device: Any = None) -> Encoded:
    """Encoded (input_ids, labels) rows, right-padded with the tokenizer's pad id (0 without one)."""
    from procure.llm.formatting import pad_batch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    b = pad_batch(rows, pad, side="right")
    return Encoded(b["input_ids"].to(device), b["attention_mask"].to(device), b["labels"].to(device))


def _per_example_loss(model: nn.Module, enc: Encoded) -> torch.Tensor:
    """(b,) mean cross-entropy over each row's answer tokens (next-token shift; logits only where labelled)."""
    from procure.llm.loss import per_example_loss

    return per_example_loss(model, enc.input_ids, enc.attention_mask, enc.labels)


def _batches(n: int, batch_size: int) -> Iterator[slice]:
    for s in range(0, n, batch_size):
        yield slice(s, min(s + batch_size, n))


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


def lora_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The trainable LoRA parameters {name: parameter} (``requires_grad`` and ``lora_`` in the name)."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad and "lora_" in n}
    if not params:
        raise UserError("model has no trainable LoRA parameters; wrap it with peft.get_peft_model(...) first")
    return params


def example_losses(
    model: nn.Module,
    tokenizer: Any,
    examples: Sequence[Mapping[str, Any]],
    *,
    batch_size: int = 8,
    max_length: int = 256,
) -> torch.Tensor:
    """Per-example answer-token mean loss L(d; theta), float64 (n,), eval mode, no gradient."""
    out = []
    with _eval_mode(model), torch.no_grad():
        for sl in _batches(len(examples), batch_size):
            out.append(_per_example_loss(model, encode_examples(tokenizer, examples[sl], max_length)).double())
    return torch.cat(out)


# --------------------------------------------------------------------------------------- per-sample grads
class _HookGrads:
    """Forward/backward hooks on LoRA ``nn.Linear`` modules that turn one batched backward into per-sample grads."""

    def __init__(self, model: nn.Module, params: Mapping[str, nn.Parameter]):
        by_id = {id(p): n for n, p in params.items()}
        self.modules: dict[str, nn.Linear] = {}
        for name, mod in model.named_modules():
            w = getattr(mod, "weight", None)
            if w is not None and id(w) in by_id:
                if not isinstance(mod, nn.Linear) or mod.bias is not None and mod.bias.requires_grad:
                    raise UserError(f"per-sample gradients: '{name}' is not a bias-free LoRA Linear; use method='loop'")
                self.modules[by_id[id(w)]] = mod
        if set(self.modules) != set(params):
            other = sorted(set(params) - set(self.modules))[:2]
            raise UserError(f"per-sample gradients: trainable {other} is not a LoRA Linear weight; use method='loop'")
        self.inputs: dict[str, torch.Tensor] = {}
        self.grads: dict[str, torch.Tensor] = {}
        self.active = True
        self.handles = []
        for pname, mod in self.modules.items():
            self.handles.append(mod.register_forward_hook(self._forward(pname)))

    @contextlib.contextmanager
    def paused(self):
        """Forward passes inside record nothing (the shared-prefix pass of :mod:`procure.llm.prefix`)."""
        self.active = False
        try:
            yield
        finally:
            self.active = True

    def _forward(self, pname: str):
        def hook(_mod, inputs, output):
            if not self.active:
                return
            self.inputs[pname] = inputs[0].detach()
            if output.requires_grad:
                output.register_hook(lambda g: self._store(pname, g))

        return hook

    def _store(self, pname: str, grad_out: torch.Tensor) -> None:
        x = self.inputs.pop(pname)
        dt = torch.promote_types(grad_out.dtype, torch.float32)  # bf16 models: accumulate in float32
        g = torch.einsum("bto,bti->boi", grad_out.to(dt), x.to(dt))  # dL_i/dW = sum_t dy_it x_it^T
        self.grads[pname] = g

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _projector(seed: int, index: int, dim_in: int, k: int) -> torch.Tensor:
    """Seeded Gaussian sketch (dim_in, k) with N(0, 1/k) entries, so E|x P|^2 = |x|^2 (Johnson-Lindenstrauss)."""
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + index)
    return torch.randn(dim_in, k, generator=gen, dtype=torch.float64) / k**0.5


def per_sample_lora_grads(
    model: nn.Module,
    tokenizer: Any,
    examples: Sequence[Mapping[str, Any]],
    *,
    batch_size: int = 16,
    max_length: int = 256,
    projection_dim: int | None = None,
    seed: int = 0,
    progress: bool | Any = True,
    method: Literal["hooks", "loop"] = "hooks",
    share_prefix: bool = True,
) -> dict[str, torch.Tensor]:
    """Gradients of each example's loss w.r.t. the LoRA parameters: {parameter name: (n, *shape)}.

    g_i = d L(d_i; theta) / d theta_LoRA with L the mean cross-entropy over d_i's answer tokens (units: nats per
    token per parameter unit). With ``projection_dim=k`` every LoRA layer block (lora_A and lora_B^T of one
    module, the DataInf block) is sketched with its own seeded Gaussian matrix P_l ~ N(0, 1/k), as in
    TRAK/LESS: returns {layer name: (n, k)} with g_il P_l; inner products are preserved in expectation. The
    sketches cost 4 * p_l * k bytes per block while the call runs. ``method="loop"``: one backward per example.
    ``share_prefix`` (hooks only): examples are batched in the order of :func:`procure.llm.prefix.batch_order`
    (by length when they all share a prompt prefix, batches then cut where padding would exceed 20 %; else so
    that rows with a common prefix meet) and a batch's shared prefix is run forward once
    (:mod:`procure.llm.prefix`); rows come back in the input order.
    Gradients are float32 (float64 for a float64 model; bf16/fp16 models are accumulated in float32).
    ``progress``: show a bar, or a caller's open tqdm bar to advance by the rows done (left open).
    """
    from procure.llm.formatting import encode_row
    from procure.llm.prefix import batch_order, length_batches, shared_prefix_grads

    params = lora_parameters(model)
    n = len(examples)
    if n == 0:
        raise UserError("per-sample gradients: no examples")
    if projection_dim is not None and projection_dim < 1:
        raise UserError("projection_dim must be a positive integer (or None for exact gradients)")
    rows = [encode_row(tokenizer, ex, max_length, index=k) for k, ex in enumerate(examples)]
    share = share_prefix and method == "hooks"
    order, by_length = batch_order([ids for ids, _ in rows]) if share else (list(range(n)), False)
    step = 1 if method == "loop" else batch_size
    if by_length:
        batches = length_batches([len(rows[i][0]) for i in order], step)
    else:
        batches = list(_batches(n, step))
    chunks: dict[str, list[torch.Tensor]] = {}
    sketches: dict[str, torch.Tensor] = {}
    own_bar = not hasattr(progress, "update")
    bar = tqdm(total=n, desc="per-sample grads", unit="ex", disable=not progress) if own_bar else progress
    hooks = _HookGrads(model, params) if method == "hooks" else None
    try:
        dev = next(iter(params.values())).device
        with _eval_mode(model):
            for sl in batches:
                enc = _padded(tokenizer, [rows[i] for i in order[sl]], dev)
                batch = None
                if share:
                    batch = shared_prefix_grads(model, enc.input_ids, enc.attention_mask, enc.labels, hooks, params)
                if batch is None:
                    batch = _batch_grads(model, enc, params, hooks)
                if projection_dim is not None:
                    batch = _project(batch, projection_dim, seed, sketches)
                for k, v in batch.items():
                    chunks.setdefault(k, []).append(v)
                bar.update(sl.stop - sl.start)
    finally:
        if own_bar:
            bar.close()
        if hooks is not None:
            hooks.close()
    out = {k: torch.cat(v) for k, v in chunks.items()}
    if share:  # back to the input order
        inv = torch.empty(n, dtype=torch.long)
        inv[torch.tensor(order)] = torch.arange(n)
        out = {k: v[inv.to(v.device)] for k, v in out.items()}
    return out


def _batch_grads(
    model: nn.Module, enc: Encoded, params: Mapping[str, nn.Parameter], hooks: _HookGrads | None
) -> dict[str, torch.Tensor]:
    """Per-sample gradients of one batch: hooks (one backward) or, without hooks, a batch of one row."""
    loss = _per_example_loss(model, enc).sum()
    if hooks is not None:
        hooks.grads.clear()
        torch.autograd.grad(loss, list(params.values()))
        return {k: hooks.grads[k] for k in params}
    g = torch.autograd.grad(loss, list(params.values()))
    return {k: gi.detach().to(torch.promote_types(gi.dtype, torch.float32)).unsqueeze(0) for k, gi in zip(params, g)}


def reference_grads(
    model: nn.Module, tokenizer: Any, examples: Sequence[Mapping[str, Any]], *, max_length: int = 256
) -> dict[str, torch.Tensor]:
    """The plain reference for :func:`per_sample_lora_grads`: one backward per example on transformers' own
    shifted, -100-masked ``model(labels=...).loss`` (full logits), independent of our loss code. Eval mode;
    {trainable parameter name: (n, *shape)}. For tests and benchmarks."""
    params = {k: p for k, p in model.named_parameters() if p.requires_grad}
    out: dict[str, list[torch.Tensor]] = {k: [] for k in params}
    with _eval_mode(model):
        for ex in examples:
            enc = encode_examples(tokenizer, [ex], max_length)
            loss = model(input_ids=enc.input_ids, labels=enc.labels).loss
            for k, g in zip(params, torch.autograd.grad(loss, list(params.values()))):
                out[k].append(g)
    return {k: torch.stack(v) for k, v in out.items()}


def _project(
    batch: dict[str, torch.Tensor], k: int, seed: int, sketches: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    from procure.valuation.influence import lora_blocks

    blocks = lora_blocks(batch, per_sample=True, blocks="layer")  # one sketch per LoRA layer
    out = {}
    for index, (name, g) in enumerate(blocks.items()):
        if name not in sketches:
            sketches[name] = _projector(seed, index, g.shape[1], k).to(g.dtype)
        out[name] = g @ sketches[name]
    return out


def mean_grad(grads: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The mean gradient over samples (e.g. of a validation / representative set): {name: (*shape)}."""
    return {k: v.mean(dim=0) for k, v in grads.items()}


# ----------------------------------------------------------------------------------------------- oracle
def one_step_oracle(
    model: nn.Module,
    tokenizer: Any,
    train_examples: Sequence[Mapping[str, Any]],
    val_examples: Sequence[Mapping[str, Any]],
    *,
    lr: float,
    batch_size: int = 8,
    max_length: int = 256,
    train_grads: Mapping[str, torch.Tensor] | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """One-step training oracle of seeds/004 (appendix Eqs. 18-19, section 7.2): for every training example d_i,

        Oracle(d_i, D') = L(D'; theta) - L(D'; theta_hat_i),   theta_hat_i = theta - lr * grad L(d_i; theta),

    with L(D') the mean over ``val_examples`` of their per-example losses and the step on the LoRA parameters
    only. Positive = the step on d_i lowers the validation loss (helpful). By Lemma 5, Oracle / lr -> Infl_IP as
    lr -> 0. The model is restored exactly afterwards. Returns float64 (n,).
    """
    params = lora_parameters(model)
    if train_grads is None:
        train_grads = per_sample_lora_grads(
            model, tokenizer, train_examples, batch_size=batch_size, max_length=max_length, progress=False
        )
    base = example_losses(model, tokenizer, val_examples, batch_size=batch_size, max_length=max_length).mean()
    saved = {k: p.detach().clone() for k, p in params.items()}
    out = torch.empty(len(train_examples), dtype=torch.float64)
    try:
        for i in tqdm(range(len(train_examples)), desc="one-step oracle", disable=not progress):
            with torch.no_grad():
                for k, p in params.items():
                    p.copy_(saved[k] - lr * train_grads[k][i].to(p.dtype))
            loss = example_losses(model, tokenizer, val_examples, batch_size=batch_size, max_length=max_length)
            out[i] = base - loss.mean()
    finally:
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(saved[k])
    return out
