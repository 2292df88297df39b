"""Generation and choice scoring for a base model plus per-call LoRA adapters: the backend factory.

``make_generator(model)`` returns a :class:`~procure.llm.generator.Generator` (interface and :class:`GenParams`
in :mod:`procure.llm.generator`, re-exported here) that is created once per run and asked for many adapters
(one per coalition of a valuation round): ``generate(prompts, adapter, params)`` and
``choice_logprobs(prompts, choices, adapter)``. Prompts are *user texts*; both backends wrap them with
:func:`procure.llm.formatting.chat_prompt`, exactly as in training.

Backends and adapter modes (measured in ``eval/bench_llm.py``, table in the README):
- ``"hf"``: transformers ``generate`` in batches with left padding; adapters switched in place ("merged": the
  base weights plus s*B@A are copied into the loaded model; "lora": peft adapters loaded by name and
  activated), never reloading the base.
- ``"vllm"``: one engine per generator; "lora" serves each adapter per request (``LoRARequest``,
  ``max_lora_rank`` = the adapter's r), "merged" pushes merged weights into the running engine's model
  (``load_weights``, as RL trainers sync policy weights into vLLM).
``backend="auto"``/``adapter_mode="auto"`` pick the fastest measured combination (:func:`auto_choice`).
"""

from __future__ import annotations

import importlib.util
from typing import Literal

from procure.errors import UserError
from procure.llm.generator import Generator, GenParams

__all__ = ["AdapterMode", "Backend", "GenParams", "Generator", "auto_choice", "make_generator", "vllm_available"]

Backend = Literal["auto", "vllm", "hf"]
AdapterMode = Literal["auto", "lora", "merged", "merge"]


def vllm_available() -> bool:
    """Whether the ``vllm`` package is installed (the ``cpu`` / ``cuda`` extras)."""
    return importlib.util.find_spec("vllm") is not None


def auto_choice() -> tuple[str, str]:
    """(backend, adapter_mode) used for ``"auto"``, on every device: the fastest measured by eval/bench_llm.py.

    CPU (2 shared cores, SmolLM2-135M, 8 adapters x 64 prompts x 8 tokens, README table): vLLM with merged-weight
    pushes was fastest including its engine start (308 s in all, against 786 s for HF merged, whose OpenMP
    threads suffer most when the cores are shared, and 843 s for vLLM LoRA). GPU: the same choice (continuous
    batching and CUDA graphs; not measured here). Without vLLM installed: HF, merged.
    """
    if vllm_available():
        return "vllm", "merged"
    return "hf", "merged"


def make_generator(
    model_path: str,
    *,
    backend: Backend = "auto",
    adapter_mode: AdapterMode = "auto",
    lora_rank: int = 16,
    dtype: str = "float32",
    max_model_len: int = 512,
    device: str | None = None,
    batch_size: int = 16,
    **engine_kwargs,
) -> Generator:
    """Build the generator for ``model_path`` (any name :func:`procure.llm.models.resolve_model` accepts).

    ``lora_rank``: the largest adapter rank served in vLLM LoRA mode (keep it equal to the adapters' r: the
    CPU kernels' cost grows with it). ``engine_kwargs`` go to ``vllm.LLM`` (vLLM backend only).
    """
    from procure.llm.models import resolve_model

    path = resolve_model(model_path)
    mode = "merged" if adapter_mode == "merge" else adapter_mode
    if backend not in ("auto", "vllm", "hf"):
        raise UserError(f"backend {backend!r}: use auto, vllm or hf")
    if mode not in ("auto", "lora", "merged"):
        raise UserError(f"adapter_mode {adapter_mode!r}: use auto, lora or merged")
    auto_backend, auto_mode = auto_choice()
    if backend == "auto":
        backend = auto_backend
        mode = auto_mode if mode == "auto" else mode
    elif mode == "auto":
        mode = "merged"
    if backend == "vllm":
        if not vllm_available():
            raise UserError(
                "backend 'vllm': vllm is not installed; `pip install '.[cpu]'` (CPU) or "
                "`pip install '.[cuda]'` (GPU), or use backend: hf"
            )
        from procure.llm.vllm_backend import VLLMGenerator

        return VLLMGenerator(
            path, adapter_mode=mode, lora_rank=lora_rank, dtype=dtype, max_model_len=max_model_len, **engine_kwargs
        )
    from procure.llm.hf_backend import HFGenerator

    return HFGenerator(path, adapter_mode=mode, dtype=dtype, device=device, batch_size=batch_size)
