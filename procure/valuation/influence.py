"""Gradient-based data values for LoRA fine-tuning: Infl_IP (seeds/004 appendix Eq. 20) and DataInf (Kwon et al.
2023), plus the constant and random baselines of seeds/004 and the per-seller aggregation.

Inputs are per-sample gradients of the LoRA parameters only, as returned by
:func:`procure.llm.grads.per_sample_lora_grads`: ``train_grads[name]`` has shape (n, *param_shape) and
``val_grad[name]`` has shape param_shape (the mean validation-loss gradient). This module knows nothing of
models: any dict of tensors works; keys that are not ``...lora_A...``/``...lora_B...`` form their own block
(e.g. the per-layer random projections of ``per_sample_lora_grads(projection_dim=k)``).

Sign convention (DESIGN.md): positive = helpful, i.e. a step on the sample is predicted to *lower* the
validation loss. Units: validation loss per unit learning rate (Infl_IP) or per unit up-weighting (DataInf).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal

import numpy as np
import torch

from procure.errors import UserError
from procure.valuation.aggregate import per_dataset as per_dataset  # re-exported: per-seller sums

_LORA = re.compile(r"^(?P<layer>.*)\.lora_(?P<kind>[AB])(?:\..*)?$")


def lora_blocks(
    grads: Mapping[str, torch.Tensor], *, per_sample: bool, blocks: Literal["layer", "param"] = "param"
) -> dict[str, torch.Tensor]:
    """Flatten gradients into DataInf blocks: {block name: (n, p_l)} (per_sample) or {block name: (p_l,)}.

    ``blocks="param"`` (default, DESIGN.md): every parameter is its own block (the layout of Kwon et al.'s
    released code and dattri). ``blocks="layer"``: a layer's ``lora_A`` gradient and its ``lora_B`` gradient
    transposed to A's orientation (r x d_out) are concatenated into one block per LoRA layer (the random
    projection of :func:`procure.llm.grads.per_sample_lora_grads` sketches such layer blocks). The
    transposition only fixes the layout: inner products and norms do not depend on it.
    """
    lead = 1 if per_sample else 0
    parts: dict[str, list[torch.Tensor]] = {}
    for name, g in grads.items():
        m = _LORA.match(name)
        if m and blocks == "layer":
            key = m["layer"]
            if m["kind"] == "B" and g.dim() == lead + 2:
                g = g.transpose(-1, -2)
            order = 0 if m["kind"] == "A" else 1
        else:
            key, order = name, 0
        flat = g.reshape(g.shape[0], -1) if per_sample else g.reshape(-1)
        parts.setdefault(key, [None, None])[order] = flat  # type: ignore[list-item]
    return {k: torch.cat([p for p in v if p is not None], dim=-1) for k, v in parts.items()}


def _check(train_grads: Mapping[str, torch.Tensor], val_grad: Mapping[str, torch.Tensor]) -> int:
    if not train_grads:
        raise UserError("influence: train_grads is empty; pass per-sample gradients of at least one LoRA parameter")
    if set(train_grads) != set(val_grad):
        missing = sorted(set(train_grads) ^ set(val_grad))[:3]
        raise UserError(f"influence: train_grads and val_grad must have the same keys; differing: {missing}")
    ns = {g.shape[0] for g in train_grads.values()}
    if len(ns) != 1:
        raise UserError(f"influence: train_grads have different sample counts {sorted(ns)}; use one batch of samples")
    for k, g in train_grads.items():
        if tuple(g.shape[1:]) != tuple(val_grad[k].shape):
            raise UserError(
                f"influence: '{k}' has per-sample shape {tuple(g.shape[1:])} but val_grad {tuple(val_grad[k].shape)}"
            )
    return ns.pop()


def grad_ip(train_grads: Mapping[str, torch.Tensor], val_grad: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Infl_IP(d_i) = <grad L(d'; theta), grad L(d_i; theta)> summed over all LoRA parameters (seeds/004 Eq. 20).

    By Lemma 5 of seeds/004 this is, to first order, (L(d'; theta) - L(d'; theta - eta g_i)) / eta: the drop of
    the validation loss after one SGD step on d_i, per unit learning rate. Returns float64 (n,).
    """
    n = _check(train_grads, val_grad)
    out = torch.zeros(n, dtype=torch.float64)
    for k, g in train_grads.items():
        out += g.reshape(n, -1).to(torch.float64) @ val_grad[k].reshape(-1).to(torch.float64)
    return out


#: largest row chunk (bytes) of one gradient part that :func:`datainf` reduces in one pass
ROW_CHUNK_BYTES = 16 << 20


def datainf(
    train_grads: Mapping[str, torch.Tensor],
    val_grad: Mapping[str, torch.Tensor],
    *,
    lambda_scale: float = 0.1,
    blocks: Literal["layer", "param"] = "param",
) -> torch.Tensor:
    """DataInf values (Kwon et al. 2023, Eq. 5 with their layer-wise damping), sign flipped so positive = helpful.

    Blocks (DESIGN.md): by default every LoRA tensor (each lora_A, each lora_B) is its own block l, as in Kwon
    et al.'s released code and dattri; ``blocks="layer"`` joins a layer's lora_A and lora_B^T into one block.
    A block whose gradients are all zero (lora_A of a fresh LoRA, where B = 0) is skipped: it would contribute
    0/0, and joined to lora_B it would only dilute lam_l. For every block l with per-sample gradients g_il
    (i = 1..n) and mean validation gradient v_l:

        lam_l       = lambda_scale * mean_i mean(g_il^2)                     (lambda_scale = 0.1 as DESIGN.md)
        H_l^-1 v_l ~= 1/(n lam_l) * sum_i [ v_l - (<v_l, g_il> / (lam_l + |g_il|^2)) g_il ]
        value_i     = sum_l < H_l^-1 v_l, g_il >

    i.e. the inverse of the damped empirical Fisher (1/n) sum_i g g^T + lam I, with the inverse and the average
    swapped (Sherman-Morrison per sample). Vectorised: per block three matrix-vector products,
    c = G v / (lam + |G|^2) and value += (G v - G (G^T c) / n) / lam; the products run in the gradients' dtype
    (float32 gradients: ~1e-6 relative error), the per-sample scalars in float64. Returns float64 (n,).
    """
    n = _check(train_grads, val_grad)
    out = torch.zeros(n, dtype=torch.float64)
    for parts in _block_parts(train_grads, val_grad, blocks).values():
        # a block's parts (lora_A, lora_B) are never concatenated: norms, dots and products add up over parts,
        # and the layout of B does not matter, which saves copying the whole gradient matrix
        sq = torch.zeros(n, dtype=torch.float64)  # |g_il|^2
        gv = torch.zeros(n, dtype=torch.float64)  # <g_il, v_l>
        for g, v in parts:
            # row chunks of up to ROW_CHUNK_BYTES (whole parts in practice): each chunk is one OpenMP region per
            # operation. 1 MB chunks (cache-sized: one read of G instead of two) issued ~8,600 small regions
            # at n = 2,000, which collapses when another process shares the cores (eval/bench_threads.py)
            step = max(1, ROW_CHUNK_BYTES // max(1, g.shape[1] * g.element_size()))
            for s in range(0, n, step):
                chunk = g[s : s + step]
                sq[s : s + step] += torch.linalg.vector_norm(chunk, dim=1).double() ** 2
                gv[s : s + step] += (chunk @ v).double()
        p = sum(g.shape[1] for g, _ in parts)
        lam = lambda_scale * sq.mean() / p  # = lambda_scale * mean_i mean(g_il^2)
        if lam <= 0:  # an all-zero block (e.g. lora_A while lora_B = 0) contributes exactly 0
            continue
        c = gv / (lam + sq)
        ggc = sum((g @ (g.T @ c.to(g.dtype))).double() for g, _ in parts)  # G (G^T c)
        out += (gv - ggc / n) / lam
    return out


def _block_parts(
    train_grads: Mapping[str, torch.Tensor], val_grad: Mapping[str, torch.Tensor], blocks: str
) -> dict[str, list[tuple[torch.Tensor, torch.Tensor]]]:
    """{block: [(train part (n, p_part) view, val part (p_part,))]} without copying (same grouping as lora_blocks)."""
    out: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for name, g in train_grads.items():
        m = _LORA.match(name)
        key = m["layer"] if m and blocks == "layer" else name
        v = val_grad[name].to(g.dtype)
        out.setdefault(key, []).append((g.reshape(g.shape[0], -1), v.reshape(-1)))
    return out


def constant_values(n: int) -> np.ndarray:
    """Constant baseline of seeds/004: every sample is worth 1."""
    return np.ones(n, dtype=np.float64)


def random_values(n: int, seed: int = 0) -> np.ndarray:
    """Random baseline of seeds/004: values drawn i.i.d. uniformly from [0, 1) with ``default_rng(seed)``."""
    return np.random.default_rng(seed).uniform(0.0, 1.0, n)


def datainf_loop(
    train: Mapping[str, torch.Tensor],
    val: Mapping[str, torch.Tensor],
    lambda_scale: float = 0.1,
    blocks: str = "param",
) -> torch.Tensor:
    """Reference for :func:`datainf`: the DESIGN.md formula literally, looping over blocks and samples one vector
    at a time (used by the tests and eval/bench_influence.py; far too slow for real use)."""
    n = next(iter(train.values())).shape[0]
    if blocks == "layer":  # lora_A and lora_B^T of one layer form one block
        layers = sorted({k.split(".lora_")[0] for k in train})
        pairs = [(f"{x}.lora_A.default.weight", f"{x}.lora_B.default.weight") for x in layers]
        per_block = [
            (
                [torch.cat([train[a][i].reshape(-1), train[b][i].T.reshape(-1)]) for i in range(n)],
                torch.cat([val[a].reshape(-1), val[b].T.reshape(-1)]),
            )
            for a, b in pairs
        ]
    else:
        per_block = [([train[k][i].reshape(-1) for i in range(n)], val[k].reshape(-1)) for k in train]
    scores = [0.0] * n
    for gs, v in per_block:
        lam = lambda_scale * sum(float((g**2).mean()) for g in gs) / n
        if lam == 0:  # an all-zero block is skipped (DESIGN.md)
            continue
        hinv_v = torch.zeros_like(v)
        for g in gs:
            hinv_v += (v - (float(v @ g) / (lam + float(g @ g))) * g) / (n * lam)
        for i, g in enumerate(gs):
            scores[i] += float(hinv_v @ g)
    return torch.tensor(scores, dtype=torch.float64)
