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


def answer_logits(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, targets) for the label window: logits (b, w, V) at positions lo..hi-1 and the tokens they
    predict, targets (b, w) = labels[:, lo + 1 : hi + 1] (-100 where masked). Same numbers as slicing the
    full logits; computed for w positions instead of t when the model supports ``logits_to_keep``."""
    lo, hi = label_window(labels)
    hi = max(hi, lo + 1)  # no label at all: one position, fully masked
    kw = {}
    if _takes_logits_to_keep(type(_inner(model))):
        kw["logits_to_keep"] = torch.arange(lo, hi, device=input_ids.device)
    out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kw).logits
    logits = out if kw else out[:, lo:hi]
    return logits, labels[:, lo + 1 : hi + 1]


def token_losses(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy per position (b, w) in at least float32 (nats) and the 0/1 label mask (b, w)."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    b, w, v = logits.shape
    # rows of a contiguous (b*w, V) matrix: the (b, V, w) transposed layout gives a log-softmax about 4e-5
    # relative away from this one (and from transformers' loss) on SmolLM2
    flat = nn.functional.cross_entropy(logits.reshape(b * w, v), targets.reshape(b * w).clamp_min(0), reduction="none")
    tok = flat.view(b, w)
    keep = (targets != -100).to(tok.dtype)
    return tok * keep, keep


def per_example_loss(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """(b,) mean cross-entropy over each row's answer tokens (nats per token)."""
    tok, keep = token_losses(*answer_logits(model, input_ids, attention_mask, labels))
    return tok.sum(1) / keep.sum(1).clamp_min(1)


def batch_loss(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Mean cross-entropy over all answer tokens of the batch (the HF ``model(labels=...).loss`` convention)."""
    tok, keep = token_losses(*answer_logits(model, input_ids, attention_mask, labels))
    return tok.sum() / keep.sum().clamp_min(1)
