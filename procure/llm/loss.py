"""The answer-token loss shared by the stage trainer and the per-sample gradients.

Only the positions that predict a label need logits. Conjoint and QA rows are long prompts with answers of a
few tokens, so computing the vocabulary projection (576 x 49,152 on SmolLM2, about a fifth of the model's
FLOPs per token) and the softmax for every position wastes most of that work. ``answer_logits`` asks the model
for the logits of the smallest window of positions that holds every label of the batch (HF ``logits_to_keep``)
and falls back to full logits for models that do not take that argument. The loss is unchanged: positions
outside the window carry no label. Measured in eval/bench_influence.py (per-sample gradients) and
eval/bench_pipeline.py (training tokens/s).
"""

from __future__ import annotations

import inspect
from functools import lru_cache

import torch
from torch import nn


@lru_cache(maxsize=64)
def _takes_logits_to_keep(cls: type) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(cls.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without signatures
        return False


def _inner(model: nn.Module) -> nn.Module:
    """The transformers model under DDP / peft wrappers (whose forward receives the keyword arguments)."""
    m = getattr(model, "module", model)  # DDP
    get = getattr(m, "get_base_model", None)  # peft
    return get() if callable(get) else m


def label_window(labels: torch.Tensor) -> tuple[int, int]:
    """[lo, hi): the positions p whose logits predict some row's label at p + 1 (labels -100 are masked)."""
    has = (labels[:, 1:] != -100).any(0).nonzero()
    if has.numel() == 0:
        return 0, 0
    return int(has[0]), int(has[-1]) + 1


def _run_window(labels: torch.Tensor) -> tuple[int, int]:
    """:func:`label_window`, widened to one (fully masked) position when no row has a label."""
    lo, hi = label_window(labels)
    return lo, max(hi, lo + 1)


def answer_logits(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    *,
    past_key_values: object | None = None,
    start: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, targets) for the label window: logits (b, w, V) at positions lo..hi-1 and the tokens they
    predict, targets (b, w) = labels[:, lo + 1 : hi + 1] (-100 where masked). Same numbers as slicing the
    full logits; computed for w positions instead of t when the model supports ``logits_to_keep``, and the
    positions after the window (each row's last token, padding) are not run at all.

    With ``past_key_values`` holding positions 0..start-1 (a prompt prefix computed once, see
    :mod:`procure.llm.prefix`), ``input_ids`` are positions start.. only while ``attention_mask`` and
    ``labels`` cover the whole row; the window must then begin at or after ``start``."""
    lo, hi = _run_window(labels)
    if lo < start:
        raise ValueError(f"label window starts at {lo}, inside the cached prefix of {start} positions")
    kw: dict = {"use_cache": past_key_values is not None}
    if past_key_values is not None:
        kw["past_key_values"] = past_key_values
    keep = _takes_logits_to_keep(type(_inner(model)))
    if keep:
        kw["logits_to_keep"] = torch.arange(lo - start, hi - start, device=input_ids.device)
    # positions >= hi predict nothing and, the model being causal, change no logit before them: not run
    out = model(input_ids=input_ids[:, : hi - start], attention_mask=attention_mask[:, :hi], **kw).logits
    logits = out if keep else out[:, lo - start : hi - start]
    return logits, labels[:, lo + 1 : hi + 1]


def label_logits(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    *,
    past_key_values: object | None = None,
    start: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits (m, V), targets (m,), rows (m,)) at the m labelled positions of the batch only.

    :func:`answer_logits` projects the whole window [lo, hi) for every row; with rows of different lengths
    (right padding puts their answers at different positions) that window spans most of the row. Here a
    forward pre-hook on the output embedding picks the m labelled (row, position) hidden states out of the
    window before the vocabulary projection, so the projection and softmax run on m rows; anything the model
    does to the logits afterwards (scaling, soft-capping) is elementwise and unchanged. Models that do not
    call their output embedding as a module get the window, flattened to the same result. Arguments as in
    :func:`answer_logits`.
    """
    lo, hi = _run_window(labels)
    targets = labels[:, lo + 1 : hi + 1]
    sel = targets != -100
    rows = sel.nonzero()[:, 0]
    inner = _inner(model)
    get = getattr(inner, "get_output_embeddings", None)
    head = get() if callable(get) and _takes_logits_to_keep(type(inner)) else None
    fired = []

    def pick(_mod, args):
        h = args[0]
        if fired or h.shape[:2] != sel.shape:
            return None
        fired.append(True)
        return (h[sel].unsqueeze(0), *args[1:])

    handle = head.register_forward_pre_hook(pick) if head is not None and rows.numel() else None
    try:
        logits, _ = answer_logits(
            model, input_ids, attention_mask, labels, past_key_values=past_key_values, start=start
        )
    finally:
        if handle is not None:
            handle.remove()
    flat = logits[0] if fired else logits[sel]
    return flat, targets[sel], rows


def per_example_loss(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    *,
    past_key_values: object | None = None,
    start: int = 0,
) -> torch.Tensor:
    """(b,) mean cross-entropy over each row's answer tokens (nats per token; 0 for a row without labels);
    ``past_key_values`` / ``start`` as in :func:`answer_logits`."""
    logits, targets, rows = label_logits(
        model, input_ids, attention_mask, labels, past_key_values=past_key_values, start=start
    )
    tok = _cross_entropy(logits, targets)
    b = input_ids.shape[0]
    total = torch.zeros(b, dtype=tok.dtype, device=tok.device).index_add(0, rows, tok)
    return total / torch.bincount(rows, minlength=b).clamp_min(1).to(tok.dtype)


def batch_loss(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Mean cross-entropy over all answer tokens of the batch (the HF ``model(labels=...).loss`` convention)."""
    logits, targets, _ = label_logits(model, input_ids, attention_mask, labels)
    return _cross_entropy(logits, targets).sum() / max(targets.numel(), 1)


def _cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (nats) of the rows of a contiguous (m, V) matrix, in at least float32 (the transposed
    (b, V, w) layout gives a log-softmax about 4e-5 relative away from transformers' loss on SmolLM2)."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return nn.functional.cross_entropy(logits, targets, reduction="none")
