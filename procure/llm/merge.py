"""LoRA adapter -> dense weight deltas, for pushing merged weights into a running model (HF or vLLM).

For a LoRA on a linear layer y = W x, peft's merged weight is W' = W + s * B @ A with A (r, d_in), B (d_out, r)
and s = lora_alpha / r (or lora_alpha / sqrt(r) with rsLoRA). Hand-written rather than peft's
``merge_and_unload`` because it needs no model in memory: the deltas are read straight from the adapter's
safetensors and keyed by the base model's HF parameter names, which is what vLLM's ``load_weights`` takes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from procure.errors import UserError

_PREFIX = "base_model.model."


def adapter_config(adapter_dir: str | Path) -> dict:
    """The adapter's ``adapter_config.json`` (``UserError`` if the folder is not a saved LoRA)."""
    p = Path(adapter_dir) / "adapter_config.json"
    if not p.is_file():
        raise UserError(f"adapter {adapter_dir}: no adapter_config.json; give a LoRA folder saved by the trainer")
    return json.loads(p.read_text())


def adapter_weights_file(adapter_dir: str | Path) -> Path:
    """The adapter's ``adapter_model.safetensors`` (``UserError`` if the folder has none)."""
    p = Path(adapter_dir) / "adapter_model.safetensors"
    if not p.is_file():
        raise UserError(f"adapter {adapter_dir}: no adapter_model.safetensors; give a LoRA folder saved by the trainer")
    return p


def adapter_rank(adapter_dir: str | Path) -> int:
    """The LoRA rank r (largest of ``rank_pattern`` if set)."""
    cfg = adapter_config(adapter_dir)
    return max([int(cfg.get("r", 8)), *map(int, (cfg.get("rank_pattern") or {}).values())])


def lora_deltas(adapter_dir: str | Path) -> dict:
    """{base parameter name (e.g. ``model.layers.0.self_attn.q_proj.weight``): s * B @ A} in float32."""
    import torch
    from safetensors.torch import load_file

    cfg = adapter_config(adapter_dir)
    if cfg.get("use_dora"):
        raise UserError(f"adapter {adapter_dir}: DoRA adapters cannot be merged here; train plain LoRA")
    if cfg.get("modules_to_save") or cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise UserError(
            f"adapter {adapter_dir}: modules_to_save / rank_pattern are not supported; use adapter_mode=lora"
        )
    tensors = load_file(str(adapter_weights_file(adapter_dir)))
    r, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    out = {}
    for key, a in tensors.items():
        if ".lora_A." not in key:
            continue
        b = tensors[key.replace(".lora_A.", ".lora_B.")]
        name = key.removeprefix(_PREFIX).replace(".lora_A.weight", ".weight")
        delta = scale * (b.to(torch.float32) @ a.to(torch.float32))
        out[name] = delta.T.contiguous() if cfg.get("fan_in_fan_out") else delta
    if not out:
        raise UserError(f"adapter {adapter_dir}: holds no LoRA weights")
    return out
