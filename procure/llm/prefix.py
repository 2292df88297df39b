"""Per-sample LoRA gradients of a batch whose rows begin with the same tokens, the shared prefix run once.

Rows of one batch often share their first P tokens (chat template, system line, instructions, k-shot
exemplars). In a causal model the activations at those positions do not depend on the rest of the row, so
the forward pass over them is run once (batch 1) and its keys/values are given to every row as a KV cache;
the rows then run only their own positions P.. . The *gradient* is not shared: row i's loss reaches the
prefix through the prefix keys/values with its own cotangent c_i, so

    g_i = (sum over positions >= P of dy_it x_it^T, from the hooks of :mod:`procure.llm.grads`)
        + (c_i^T d(prefix keys, values)/d theta, a vector-Jacobian product of the batch-1 prefix graph),

and the B vector-Jacobian products are taken in one batched backward (``torch.autograd.grad(...,
is_grads_batched=True)``, which vmaps the backward over the cotangents). Exact up to float rounding
(batch-1 and batch-B matrix products round differently: ~1e-5 relative in float32 on SmolLM2).

Work saved: the forward pass over the prefix for B - 1 rows; the backward over the prefix is still done per
row. Measured in eval/bench_influence.py. :func:`shared_prefix_grads` returns None (the caller then runs the
whole batch) when fewer than ``min_prefix`` tokens are shared or the model's cache is not a plain per-layer
key/value cache (e.g. sliding-window or recurrent layers).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from procure.llm.loss import _inner, _takes_logits_to_keep, label_window, per_example_loss

#: Fewer shared tokens than this: run the batch as usual (the batch-1 prefix pass is not worth its overhead).
MIN_PREFIX = 8


def shared_prefix_length(input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> int:
    """The largest P such that every row has the same tokens at positions < P, no position < P predicts a
    label (so every loss term is computed after the prefix) and every row has a token at position P."""
    same = (input_ids == input_ids[:1]).all(0).long()
    p = int(same.cumprod(0).sum())
    lo, _ = label_window(labels)
    shortest = int(attention_mask.sum(1).min())
    return max(0, min(p, lo, shortest - 1))


def batch_order(sequences: Sequence[Sequence[int]]) -> tuple[list[int], bool]:
    """(order, by_length): an order of the token sequences for batching. When all of them share at least
    ``MIN_PREFIX`` leading tokens (one task, one prompt template: every batch shares that prefix anyway) they
    are sorted by length, so a batch's rows need little padding (``by_length`` True); otherwise in
    lexicographic order, so rows with a common prefix meet in a batch."""
    if not sequences:
        return [], False
    first, p = sequences[0], min(len(s) for s in sequences)
    for s in sequences[1:]:
        p = next((k for k in range(p) if s[k] != first[k]), p)
    if p >= MIN_PREFIX:
        return sorted(range(len(sequences)), key=lambda i: (len(sequences[i]), list(sequences[i]))), True
    return sorted(range(len(sequences)), key=lambda i: list(sequences[i])), False


def length_batches(lengths: Sequence[int], batch_size: int, max_padding: float = 0.2) -> list[slice]:
    """Consecutive batches of at most ``batch_size`` rows of ascending ``lengths``, a batch closed early when
    the next row would make padding more than ``max_padding`` of the batch's padded tokens."""
    out, start, total = [], 0, 0
    for k, n_tok in enumerate(lengths):
        rows = k - start + 1
        if k > start and (rows > batch_size or rows * n_tok - (total + n_tok) > max_padding * rows * n_tok):
            out.append(slice(start, k))
            start, total = k, 0
        total += n_tok
    if lengths:
        out.append(slice(start, len(lengths)))
    return out


def _cache_layers(cache: Any) -> list[Any] | None:
    """The per-layer key/value holders of a transformers ``DynamicCache`` (None for any other cache)."""
    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer).__name__ != "DynamicLayer" for layer in layers):
        return None
    return list(layers)


def shared_prefix_grads(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    hooks: Any,
    params: Mapping[str, nn.Parameter],
    *,
    min_prefix: int = MIN_PREFIX,
) -> dict[str, torch.Tensor] | None:
    """Per-sample gradients {name: (b, *shape)} of the per-row answer-token mean loss for one right-padded
    batch, the shared prefix computed once (module docstring); None when sharing does not apply.

    ``hooks`` is the :class:`procure.llm.grads._HookGrads` of ``model`` (paused for the prefix pass)."""
    b = input_ids.shape[0]
    p = shared_prefix_length(input_ids, attention_mask, labels)
    if b < 2 or p < min_prefix:
        return None
    kw = {"logits_to_keep": 1} if _takes_logits_to_keep(type(_inner(model))) else {}
    # the math attention kernel is plain matmuls and softmax, which the batched backward below vmaps; the fused
    # CPU kernel's backward has no batching rule and would run once per row
    with hooks.paused(), sdpa_kernel(SDPBackend.MATH):
        out = model(input_ids=input_ids[:1, :p], attention_mask=attention_mask[:1, :p], use_cache=True, **kw)
    layers = _cache_layers(getattr(out, "past_key_values", None))
    if layers is None:
        return None
    prefix_out, leaves = [], []
    for layer in layers:
        for attr in ("keys", "values"):
            t = getattr(layer, attr)
            leaf = t.detach().expand(b, *t.shape[1:]).contiguous()
            if t.requires_grad:
                leaf.requires_grad_(True)
                prefix_out.append(t)
                leaves.append(leaf)
            setattr(layer, attr, leaf)
    hooks.grads.clear()
    loss = per_example_loss(
        model, input_ids[:, p:], attention_mask, labels, past_key_values=out.past_key_values, start=p
    ).sum()
    names, plist = list(params), list(params.values())
    got = torch.autograd.grad(loss, plist + leaves, allow_unused=True, materialize_grads=True)
    cot = got[len(plist) :]
    if not leaves:  # no trainable parameter before the cache: the prefix adds nothing
        return {k: hooks.grads[k] for k in names}
    with warnings.catch_warnings():  # an op without a batching rule is looped over rows: correct, slower
        warnings.filterwarnings("ignore", message=".*performance drop.*batching rule.*")
        pre = torch.autograd.grad(
            prefix_out,
            plist,
            grad_outputs=[c.unsqueeze(1) for c in cot],  # (b, 1, ...): one cotangent per row, batch-1 graph
            is_grads_batched=True,
            allow_unused=True,
            materialize_grads=True,
        )
    res = {}
    for k, g in zip(names, pre):
        suffix = hooks.grads[k]
        res[k] = suffix + g.to(suffix.dtype)
    return res
