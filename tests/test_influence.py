"""DataInf and Infl_IP against naive per-sample, per-layer loops of the formulas (DESIGN.md conventions)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from procure.errors import UserError
from procure.valuation.influence import (
    constant_values,
    datainf,
    datainf_loop,
    grad_ip,
    lora_blocks,
    per_dataset,
    random_values,
)


def _random_lora_grads(n: int, layers: list[tuple[int, int]], r: int, seed: int):
    """Per-sample gradients shaped like peft LoRA parameters: A (r, d_in), B (d_out, r)."""
    gen = torch.Generator().manual_seed(seed)
    train, val = {}, {}
    for i, (d_in, d_out) in enumerate(layers):
        for kind, shape in (("A", (r, d_in)), ("B", (d_out, r))):
            name = f"base_model.model.layers.{i}.proj.lora_{kind}.default.weight"
            scale = float(torch.rand(1, generator=gen)) * 3 + 0.1  # blocks on different scales
            train[name] = torch.randn(n, *shape, generator=gen, dtype=torch.float64) * scale
            val[name] = torch.randn(*shape, generator=gen, dtype=torch.float64) * scale
    return train, val


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(1, 12),
    r=st.integers(1, 4),
    layers=st.lists(st.tuples(st.integers(1, 7), st.integers(1, 7)), min_size=1, max_size=3),
    seed=st.integers(0, 10_000),
)
def test_datainf_equals_naive_loop(n, r, layers, seed):
    train, val = _random_lora_grads(n, layers, r, seed)
    ours = datainf(train, val)
    ref = datainf_loop(train, val)
    assert ours.shape == (n,) and ours.dtype == torch.float64
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-9)


def test_datainf_float32_input_and_param_blocks():
    train, val = _random_lora_grads(9, [(5, 3), (4, 6)], 2, 1)
    t32 = {k: v.float() for k, v in train.items()}
    v32 = {k: v.float() for k, v in val.items()}
    torch.testing.assert_close(datainf(t32, v32), datainf(train, val), rtol=1e-5, atol=1e-6)
    ref = datainf_loop(train, val, blocks="layer")  # lora_A and lora_B^T of a layer joined: the option
    torch.testing.assert_close(datainf(train, val, blocks="layer"), ref, rtol=1e-9, atol=1e-9)
    # the default is one block per tensor (Kwon et al.'s code), which differs from the joined layout
    torch.testing.assert_close(datainf(train, val), datainf(train, val, blocks="param"), rtol=0, atol=0)
    assert not torch.allclose(datainf(train, val, blocks="layer"), datainf(train, val))


def _released_code_datainf(train, val, lambda_const_param=10.0):
    """Kwon et al.'s released ``compute_IF`` restated: dicts per training sample, one block per weight name,
    lam = mean over samples of mean(g^2) / lambda_const_param; their IF is minus this (positive = helpful)."""
    n = next(iter(train.values())).shape[0]
    tr = {i: {k: train[k][i] for k in train} for i in range(n)}
    score = torch.zeros(n, dtype=torch.float64)
    for w, v in val.items():
        lam = torch.stack([torch.mean(tr[i][w] ** 2) for i in range(n)]).mean() / lambda_const_param
        if lam == 0:
            continue  # their code would divide 0 by 0 here; DESIGN.md skips the block
        hvp = torch.zeros_like(v)
        for i in range(n):
            c = torch.sum(v * tr[i][w]) / (lam + torch.sum(tr[i][w] ** 2))
            hvp += (v - c * tr[i][w]) / (n * lam)
        for i in range(n):
            score[i] += torch.sum(hvp * tr[i][w])
    return score


@settings(max_examples=10, deadline=None)
@given(n=st.integers(1, 8), seed=st.integers(0, 999), fresh=st.booleans())
def test_datainf_default_equals_released_code_and_skips_zero_blocks(n, seed, fresh):
    train, val = _random_lora_grads(n, [(4, 3), (2, 5)], 2, seed)
    if fresh:  # a fresh LoRA (B = 0): every lora_A gradient is exactly zero
        for k in train:
            if ".lora_A." in k:
                train[k] = torch.zeros_like(train[k])
                val[k] = torch.zeros_like(val[k])
    ours = datainf(train, val)
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, _released_code_datainf(train, val), rtol=1e-9, atol=1e-9)
    if fresh:  # the zero blocks add nothing: the same as valuing on the lora_B tensors alone
        only_b = [k for k in train if ".lora_B." in k]
        alone = datainf({k: train[k] for k in only_b}, {k: val[k] for k in only_b})
        torch.testing.assert_close(ours, alone, rtol=0, atol=0)


def test_datainf_single_sample_closed_form():
    # n = 1: H^-1 v = (v - <v,g> g / (lam + |g|^2)) / lam, so value = <v,g> / (lam + |g|^2) with lam = 0.1 |g|^2 / p
    g = torch.tensor([[3.0, -1.0, 2.0]], dtype=torch.float64)
    v = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    lam = 0.1 * float((g**2).mean())
    expected = float(g[0] @ v) / (lam + float(g[0] @ g[0]))
    got = datainf({"w": g}, {"w": v})
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_datainf_sign_positive_is_helpful():
    # a training gradient aligned with the validation gradient lowers the validation loss: positive value
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(50, generator=gen, dtype=torch.float64)
    noise = torch.randn(6, 50, generator=gen, dtype=torch.float64) * 0.01
    g = torch.stack([v, -v, v, -v, v, -v]) + noise
    vals = datainf({"w": g}, {"w": v})
    assert (vals[0::2] > 0).all() and (vals[1::2] < 0).all()
    ip = grad_ip({"w": g}, {"w": v})
    assert (ip[0::2] > 0).all() and (ip[1::2] < 0).all()


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(1, 10),
    layers=st.lists(st.tuples(st.integers(1, 6), st.integers(1, 6)), min_size=1, max_size=3),
    seed=st.integers(0, 999),
)
def test_grad_ip_equals_explicit_dot_products(n, layers, seed):
    train, val = _random_lora_grads(n, layers, 2, seed)
    expected = torch.tensor(
        [sum(float((train[k][i] * val[k]).sum()) for k in train) for i in range(n)], dtype=torch.float64
    )
    torch.testing.assert_close(grad_ip(train, val), expected, rtol=1e-10, atol=1e-10)


def test_lora_blocks_pairs_a_and_transposed_b():
    a = torch.arange(2 * 2 * 3, dtype=torch.float64).reshape(2, 2, 3)  # n=2, r=2, d_in=3
    b = torch.arange(2 * 4 * 2, dtype=torch.float64).reshape(2, 4, 2)  # n=2, d_out=4, r=2
    grads = {"m.q.lora_A.default.weight": a, "m.q.lora_B.default.weight": b, "proj": a}
    assert list(lora_blocks(grads, per_sample=True)) == list(grads)  # default: one block per tensor
    blocks = lora_blocks(grads, per_sample=True, blocks="layer")
    assert list(blocks) == ["m.q", "proj"]
    assert blocks["m.q"].shape == (2, 6 + 8)
    torch.testing.assert_close(blocks["m.q"][1], torch.cat([a[1].reshape(-1), b[1].T.reshape(-1)]))


def test_influence_user_errors():
    g = {"w": torch.ones(3, 2)}
    with pytest.raises(UserError, match="same keys"):
        grad_ip(g, {"v": torch.ones(2)})
    with pytest.raises(UserError, match="shape"):
        datainf(g, {"w": torch.ones(3)})
    with pytest.raises(UserError, match="empty"):
        datainf({}, {})


def test_baselines_and_per_dataset():
    assert constant_values(4).tolist() == [1.0] * 4
    r = random_values(1000, seed=3)
    assert r.shape == (1000,) and r.min() >= 0 and r.max() < 1 and np.array_equal(r, random_values(1000, seed=3))
    vals = torch.tensor([1.0, 2.0, 3.0, 4.0])
    np.testing.assert_allclose(per_dataset(vals, [[0, 3], [1], []]), [5.0, 2.0, 0.0])
