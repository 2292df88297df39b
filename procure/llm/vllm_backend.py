"""vLLM backend: one engine for the whole run; adapters per request (LoRA) or pushed in as merged weights.

- ``adapter_mode="lora"``: ``enable_lora=True`` and a ``LoRARequest`` per call. ``max_lora_rank`` is the
  smallest vLLM rank bucket >= ``lora_rank`` (CPU LoRA kernels get slower as it grows).
- ``adapter_mode="merged"``: W' = W + s*B@A for the adapter's layers (:func:`procure.llm.merge.lora_deltas`,
  base W read once from the model's safetensors) is loaded into the running engine with the worker's
  ``reload_weights`` (vLLM's layer-wise in-place reload, which also re-packs the CPU GEMM weights), and the
  prefix cache is reset because its KV blocks were computed with the old weights. Only the changed layers are
  pushed, each one whole: vLLM fuses q/k/v (and gate/up) into one layer, and a layer that receives only some
  of its checkpoint tensors is rebuilt with the missing ones uninitialised (an adapter on q_proj and v_proj
  alone produced garbage before; ``tests/test_llm_generate.py``). Layers left out keep their tensors; vLLM
  logs one "Failed to load weights" warning per such layer and push, which is expected here and silenced.

By default the engine core runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``): no worker processes to
spawn (so it works under pytest and in scripts without ``__main__`` guards) and weight pushes are plain calls.
Prompts are tokenised by our tokenizer (:func:`procure.llm.formatting.prompt_ids`) and completions decoded by
it, so vLLM and HF see and return exactly the same tokens.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from procure.errors import UserError
from procure.llm.formatting import prompt_ids
from procure.llm.generator import Generator, GenParams, adapter_key, check_adapter_mode, choice_pairs

_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def lora_rank_bucket(r: int) -> int:
    """Smallest rank vLLM accepts as ``max_lora_rank`` that holds an adapter of rank ``r``."""
    for b in _RANKS:
        if b >= r:
            return b
    raise UserError(f"lora_rank {r}: vLLM serves LoRA ranks up to 512; use adapter_mode=merged")


#: checkpoint modules that vLLM serves as one fused layer (pushed together; see the module docstring)
PACKED_MODULES = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
#: vLLM loggers whose warnings about layers left out of a partial reload are expected for a merged push
_RELOAD_LOGGERS = (
    "vllm.model_executor.model_loader.reload.layerwise",
    "vllm.model_executor.model_loader.reload.inplace",
)


def _model_dir(model: str) -> Path:
    """The local folder of ``model`` (a folder, or a hub id whose files vLLM has already cached)."""
    d = Path(model)
    if d.is_dir():
        return d
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model, allow_patterns=["*.json", "*.safetensors"]))


def _weight_files(model_dir: str) -> dict[str, Path]:
    """Every tensor name in the model folder's safetensors -> the file that holds it (the index when sharded)."""
    from safetensors import safe_open

    d = _model_dir(model_dir)
    index = d / "model.safetensors.index.json"
    if index.is_file():
        return {n: d / f for n, f in json.loads(index.read_text())["weight_map"].items()}
    with safe_open(str(d / "model.safetensors"), framework="pt") as h:
        return dict.fromkeys(h.keys(), d / "model.safetensors")


def whole_layers(names: set[str], checkpoint: set[str], packed: dict[str, tuple[str, ...]] | None = None) -> set[str]:
    """``names`` completed to whole vLLM layers: every checkpoint tensor (weight, bias) of each named module and
    of the modules fused with it (``packed``: fused name -> members, default :data:`PACKED_MODULES`)."""
    families = list((packed or PACKED_MODULES).values())
    prefixes: set[str] = set()
    for name in names:
        parent, _, leaf = name.rsplit(".", 1)[0].rpartition(".")
        family = next((f for f in families if leaf in f), (leaf,))
        prefixes |= {f"{parent}.{m}." if parent else f"{m}." for m in family}
    pre = tuple(prefixes)
    return {n for n in checkpoint if n.startswith(pre)} | set(names)


@contextlib.contextmanager
def _quiet_reload():
    """Silence vLLM's per-layer warnings about layers a partial reload leaves as they are (expected here)."""
    loggers = [logging.getLogger(n) for n in _RELOAD_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _base_weights(model_dir: str, files: dict[str, Path], names: set[str]) -> dict:
    """The named tensors (float32), read lazily file by file; ``files`` from :func:`_weight_files`."""
    import torch
    from safetensors import safe_open

    wanted = {n: files[n] for n in names if n in files}
    out = {}
    for f in sorted(set(wanted.values())):
        with safe_open(str(f), framework="pt") as h:
            for n, ff in wanted.items():
                if ff == f:
                    out[n] = h.get_tensor(n).to(torch.float32)
    missing = names - out.keys()
    if missing:
        raise UserError(f"adapter does not fit model {model_dir}: no weight {sorted(missing)[0]}")
    return out


class VLLMGenerator(Generator):
    """``vllm.LLM`` around ``model_path`` (a local folder or hub id)."""

    backend = "vllm"

    def __init__(
        self,
        model_path: str,
        *,
        adapter_mode: str = "merged",
        lora_rank: int = 16,
        dtype: str = "float32",
        max_model_len: int = 512,
        in_process: bool = True,
        seed: int = 0,
        **engine_kwargs,
    ):
        check_adapter_mode(adapter_mode)
        if in_process:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
        import torch
        from vllm import LLM

        from procure.llm.models import load_tokenizer

        self.adapter_mode = adapter_mode
        self.model_path = model_path
        self.tokenizer = load_tokenizer(model_path)
        self.lora_rank = lora_rank_bucket(lora_rank)
        kwargs = dict(
            model=model_path,
            tokenizer=model_path,
            dtype=dtype,
            max_model_len=max_model_len,
            seed=seed,
            enforce_eager=not torch.cuda.is_available(),
        )
        if adapter_mode == "lora":
            kwargs |= dict(enable_lora=True, max_loras=1, max_lora_rank=self.lora_rank, max_cpu_loras=8)
        kwargs |= engine_kwargs
        set_threads, n_threads = torch.set_num_threads, torch.get_num_threads()
        try:
            self.llm = LLM(**kwargs)
        except (ValueError, OSError) as exc:  # bad engine settings or model folder
            raise UserError(f"vllm engine for {model_path}: {str(exc).splitlines()[0]}") from None
        finally:
            # an in-process CPU worker replaces torch.set_num_threads by a no-op for the whole process and may
            # lower the thread count; undo both so training in the same process keeps its cores
            torch.set_num_threads = set_threads
            torch.set_num_threads(n_threads)
        self._current: tuple[str, int] | None = None
        self._base: dict = {}  # merged mode: original weights (float32) of every layer an adapter touched
        self._checkpoint: dict[str, Path] | None = None  # tensor name -> safetensors file of the model
        self._lora_ids: dict[tuple[str, int], int] = {}
        eos = self.tokenizer.eos_token_id
        gen_eos = getattr(self.llm.llm_engine.model_config.hf_config, "eos_token_id", None)
        self._stop = sorted(
            {e for e in ([eos] + (gen_eos if isinstance(gen_eos, list) else [gen_eos])) if e is not None}
        )

    # ------------------------------------------------------------------------------------------- adapters
    def _push(self, weights: dict) -> None:
        if not weights:
            return
        items = list(weights.items())
        with _quiet_reload():
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": items, "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()

    def _switch(self, adapter: Path | None):
        """Make ``adapter`` current; returns the ``LoRARequest`` to pass (LoRA mode) or None."""
        key = adapter_key(adapter)
        if self.adapter_mode == "lora":
            if key is None:
                return None
            from vllm.lora.request import LoRARequest

            from procure.llm.merge import adapter_rank

            r = adapter_rank(adapter)
            if r > self.lora_rank:
                raise UserError(f"adapter {adapter}: rank {r} > engine max_lora_rank {self.lora_rank}; raise lora_rank")
            if key not in self._lora_ids:
                self._lora_ids[key] = len(self._lora_ids) + 1
            return LoRARequest(f"a{self._lora_ids[key]}", self._lora_ids[key], key[0])
        if key == self._current:
            return None
        from procure.llm.merge import lora_deltas

        deltas = lora_deltas(adapter) if adapter is not None else {}
        new = set(deltas) - self._base.keys()
        if new:
            if self._checkpoint is None:
                self._checkpoint = _weight_files(self.model_path)
            whole = whole_layers(new, set(self._checkpoint), self._packed())
            self._base |= _base_weights(self.model_path, self._checkpoint, whole - self._base.keys())
        target = {n: w for n, w in self._base.items()}  # restore everything touched so far ...
        for n, d in deltas.items():  # ... then add this adapter's deltas
            target[n] = self._base[n] + d
        dtype = self.llm.llm_engine.model_config.dtype
        self._push({n: w.to(dtype) for n, w in target.items()})
        self._current = key
        return None

    def _packed(self) -> dict[str, tuple[str, ...]]:
        """The served model's fused modules (its ``packed_modules_mapping``), else :data:`PACKED_MODULES`."""

        def mapping(worker) -> dict:
            return dict(getattr(worker.model_runner.model, "packed_modules_mapping", None) or {})

        try:
            got = self.llm.collective_rpc(mapping)[0]
        except Exception:  # noqa: BLE001 - older workers: fall back to the Llama-style names
            return PACKED_MODULES
        return {k: tuple(v) for k, v in got.items()} or PACKED_MODULES

    # ----------------------------------------------------------------------------------------- generation
    def generate(
        self, prompts: list[str], adapter: Path | None, params: GenParams, system: str | None = None
    ) -> list[list[str]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        lora = self._switch(adapter)
        sp = SamplingParams(
            n=params.n,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_new_tokens,
            seed=params.seed,
            stop_token_ids=self._stop,
            detokenize=False,
        )
        reqs = [TokensPrompt(prompt_token_ids=prompt_ids(self.tokenizer, p, system)) for p in prompts]
        outs = self.llm.generate(reqs, sp, lora_request=lora, use_tqdm=False)
        dec = self.tokenizer.decode
        return [[dec(list(c.token_ids), skip_special_tokens=True) for c in o.outputs] for o in outs]

    def choice_logprobs(
        self, prompts: list[str], choices: list[str], adapter: Path | None, system: str | None = None
    ) -> np.ndarray:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        cids, pairs = choice_pairs(self.tokenizer, prompts, choices, system)
        lora = self._switch(adapter)
        out = np.zeros((len(prompts), len(choices)))
        if self.adapter_mode == "merged":
            reqs = [TokensPrompt(prompt_token_ids=p + cids[j]) for _, j, p in pairs]
            sp = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
            outs = self.llm.generate(reqs, sp, lora_request=lora, use_tqdm=False)
            for (i, j, p), o in zip(pairs, outs):
                seq = p + cids[j]
                out[i, j] = sum(o.prompt_logprobs[k][seq[k]].logprob for k in range(len(p), len(seq)))
            return out
        # LoRA engines fail on prompt_logprobs on CPU (vllm-cpu 0.32: the LoRA logits processor indexes prompt
        # tokens by request), so score each choice token as a forced one-token completion instead: with the
        # default raw logprobs, the reported logprob is log-softmax of the unprocessed logits.
        steps = sorted({(*p, *cids[j][:k], cids[j][k]) for _, j, p in pairs for k in range(len(cids[j]))})
        groups: dict[int, list[tuple[int, ...]]] = {}
        for st in steps:
            groups.setdefault(st[-1], []).append(st)
        lp: dict[tuple[int, ...], float] = {}
        for target, sts in groups.items():
            sp = SamplingParams(max_tokens=1, temperature=0.0, allowed_token_ids=[target], logprobs=0, detokenize=False)
            outs = self.llm.generate(
                [TokensPrompt(prompt_token_ids=list(st[:-1])) for st in sts], sp, lora_request=lora, use_tqdm=False
            )
            for st, o in zip(sts, outs):
                lp[st] = o.outputs[0].logprobs[0][target].logprob
        for i, j, p in pairs:
            out[i, j] = sum(lp[(*p, *cids[j][: k + 1])] for k in range(len(cids[j])))
        return out

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception:  # noqa: BLE001 - best effort: the engine may already be gone
            pass
        del llm
        import gc

        gc.collect()
