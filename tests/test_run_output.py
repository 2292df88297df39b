"""What a person sees: `procure run` prints a few status lines (libraries' output goes to run.log), and the vLLM
merged-weight push sends whole fused layers (exact, and without vLLM's per-layer warnings)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from procure.llm import generate as gen_mod

ROOT = Path(__file__).parent.parent


def test_whole_layers_completes_fused_modules_with_their_biases():
    from procure.llm.vllm_backend import whole_layers

    ckpt = {
        f"model.layers.0.{m}.{k}"
        for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.up_proj")
        for k in ("weight", "bias")
    } | {"model.layers.0.mlp.gate_proj.weight", "model.layers.1.self_attn.k_proj.weight"}
    got = whole_layers({"model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.gate_proj.weight"}, ckpt)
    want = {f"model.layers.0.self_attn.{m}.{k}" for m in ("q_proj", "k_proj", "v_proj") for k in ("weight", "bias")} | {
        "model.layers.0.mlp.gate_proj.weight",
        "model.layers.0.mlp.up_proj.weight",
        "model.layers.0.mlp.up_proj.bias",
    }
    assert got == want  # o_proj and layer 1 are not touched
    assert whole_layers({"model.layers.0.self_attn.o_proj.weight"}, ckpt) == {
        "model.layers.0.self_attn.o_proj.weight",
        "model.layers.0.self_attn.o_proj.bias",
    }


@pytest.mark.skipif(not gen_mod.vllm_available(), reason="vllm is not installed")
def test_vllm_merged_push_of_a_q_v_adapter_equals_hf(tmp_path, caplog):
    """An adapter on q_proj and v_proj only: vLLM fuses q/k/v into one layer, so pushing q and v alone left k
    uninitialised (garbage output, even for the base model afterwards). Greedy fp32 output must equal HF."""
    from procure.llm.generate import GenParams, make_generator
    from procure.llm.train import StageTrainer, TrainConfig

    system, prompts = "Rate the product.", ["Product: red, small, cotton", "hi", "a longer product description " * 3]
    tr = StageTrainer(
        "tiny", TrainConfig(epochs=5, lr=5e-2, batch_size=6, lora_r=8, target_modules=["q_proj", "v_proj"])
    )
    rows = [{"prompt": p, "answer": "Rating: 7.", "system": system} for p in [*prompts, "x", "y", "z"]]
    a1 = tr.train(rows, tmp_path / "a1", progress=False).adapter_dir
    params = GenParams(max_new_tokens=6)
    hf = make_generator(tr.model_path, backend="hf", adapter_mode="merged")
    want = {name: hf.generate(prompts, a, params, system=system) for name, a in [("base", None), ("a1", a1)]}
    hf.close()
    g = make_generator(tr.model_path, backend="vllm", adapter_mode="merged", lora_rank=8, max_model_len=256)
    try:
        caplog.set_level("WARNING", logger="vllm")
        for name, a in [("a1", a1), ("base", None), ("a1", a1)]:
            assert g.generate(prompts, a, params, system=system) == want[name], name
    finally:
        g.close()
    assert not [r for r in caplog.records if "Failed to load weights" in r.getMessage()]


def test_cli_run_shows_status_lines_and_keeps_library_output_in_run_log(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    t0 = time.time()
    proc = subprocess.Popen(
        [sys.executable, "-m", "procure.cli", "run", "recipes/quickstart-tiny.yaml", "--out", str(out)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    first = proc.stdout.readline()
    first_s = time.time() - t0
    rest, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert first.startswith("procure: starting run 'quickstart-tiny'") and "run.log" in first
    assert first_s < 30  # a few seconds on a quiet machine (imports only)
    lines = [first, *rest.splitlines()]
    assert len(lines) <= 30
    assert any("preparing model tiny" in x for x in lines) and any("warm-up stage" in x for x in lines)
    assert any("engine ready" in x for x in lines) and lines[-1].startswith("procure: run complete")
    # stderr: progress bars only (carriage-return updates), no library warnings
    for noise in ("Loading weights", "WARNING", "Warning", "INFO"):
        assert noise not in err
    log = (out / "run.log").read_text()
    assert "INFO procure: engine ready" in log  # the status lines, with the libraries' output around them


def test_report_plots_use_integer_ticks_and_keep_coinciding_lines_apart(tmp_path, monkeypatch):
    import pandas as pd

    from procure.pipeline import report

    figs = []
    monkeypatch.setattr(report, "_save", lambda fig, path: figs.append(fig))
    by_round = pd.DataFrame(
        [(m, t, v, v, v) for m in ("ads", "loo") for t, v in ((0, 7.0), (1, 6.0))],  # both methods coincide
        columns=["method", "round", "mean", "min", "max"],
    )
    report.plot_metric_per_round(by_round, tmp_path / "x.png", ylabel="y", title="t")
    ax = figs[0].axes[0]
    assert list(ax.get_xticks()) == [0, 1]  # rounds are counts: no 0.25 ticks
    a, b = ax.get_lines()[:2]
    assert (a.get_marker(), a.get_linestyle()) != (b.get_marker(), b.get_linestyle())
