"""Per-sample LoRA gradients of training rows at a model state, computed once and cached on disk (used by
``procure value`` and by the pipeline's influence methods, so two methods, or a resumed run, share them).

A model state is the base model with a fresh LoRA (``LoraSpec``: rank, alpha, target modules, init seed; B = 0,
so only the lora_B gradients are non-zero) or a saved adapter folder. Gradients come from
:func:`procure.llm.grads.per_sample_lora_grads` (optionally randomly projected, ``projection_dim``, as in
TRAK/LESS) in chunks of ``chunk`` rows; each chunk is one cache entry under ``cache_dir("grads")``, keyed by

    (model identity: resolved path + its files' sizes and mtimes, state: LoRA spec or the adapter's bytes,
     the chunk's rows, max_length, projection dim and seed, per-sample or summed)

so a second method, a re-run, or a run interrupted half-way (finished chunks are kept) computes only what is
missing. The base model is loaded only when some chunk is missing. A reference set is stored as the sum of its
chunk's gradients (its mean gradient is all that the methods use). :class:`CacheStats` counts rows computed
(backward passes) and rows read from the cache.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from procure.cache import build_once, cache_dir
from procure.errors import UserError

#: bump when the gradient code changes what it computes, so old cache entries are not reused
VERSION = "procure-value-grads-1"
_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<kind>[AB])(?:\.[^.]+)?\.weight$")


@dataclass(frozen=True)
class LoraSpec:
    """The fresh LoRA a state without an adapter gets (and the LoRA of the retraining methods' stages)."""

    r: int = 8
    alpha: float = 16.0
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    seed: int = 0
    #: LoRA on the last ``layers`` transformer layers only (None: all). The backward pass of the per-sample
    #: gradients then stops at the lowest adapted layer: 2.8x less time for the last 4 of SmolLM2's 30 layers
    layers: int | None = None

    @classmethod
    def of(cls, cfg: Any, seed: int = 0) -> LoraSpec:
        """The LoRA of a training configuration (``procure.llm.train.TrainConfig``: rank, alpha, modules)."""
        return cls(r=cfg.lora_r, alpha=cfg.lora_alpha, target_modules=tuple(cfg.target_modules), seed=seed)


@dataclass
class CacheStats:
    """Rows whose gradients were computed (backward passes ran) vs read from the disk cache; model loads."""

    computed_rows: int = 0
    cached_rows: int = 0
    model_loads: int = 0
    entries: list[str] = field(default_factory=list)


def content_digest(*parts: Any) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()


def model_identity(model_path: str) -> str:
    """A cheap digest of a model: a local folder by its files' names, sizes and mtimes; a hub id by its name."""
    p = Path(model_path)
    if not p.is_dir():
        return content_digest("hub", model_path)
    files = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in p.iterdir() if f.is_file())
    return content_digest(str(p.resolve()), files)


def rows_digest(rows: Sequence[dict[str, Any]]) -> str:
    """Digest of training rows (prompt, answer, system), in order."""
    return content_digest([[r["prompt"], r["answer"], r.get("system")] for r in rows])


def adapter_identity(adapter: str | Path) -> str:
    """Digest of an adapter folder's config and weights (its content, not its path)."""
    d = Path(adapter)
    parts = [(d / "adapter_config.json").read_bytes()]
    for name in ("adapter_model.safetensors", "adapter_model.bin"):
        if (d / name).is_file():
            parts.append((d / name).read_bytes())
    return content_digest("adapter", *parts)


def check_adapter(adapter: str | Path, model_path: str, model_name: str, flag: str = "--adapter") -> None:
    """One-line :class:`UserError` unless ``adapter`` is a saved LoRA whose matrices fit ``model_path``'s layers
    (checked on the model built on the meta device: no weights are loaded)."""
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    d = Path(adapter)
    if not (d / "adapter_config.json").is_file():
        raise UserError(f"{flag} {d}: no adapter_config.json; give a LoRA folder saved by peft (e.g. runs/x/A3)")
    weights = d / "adapter_model.safetensors"
    if not weights.is_file():
        raise UserError(f"{flag} {d}: no adapter_model.safetensors; save the adapter with safe_serialization")
    try:
        base = json.loads((d / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except ValueError:
        raise UserError(f"{flag} {d}: adapter_config.json is not valid JSON") from None
    with safe_open(str(weights), framework="pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 - safe_open has no iter
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_path))
    modules = dict(model.named_modules())
    other = f"; the adapter says its base is {base!r}" if base else ""
    for key, shape in sorted(shapes.items()):
        m = _LORA_KEY.match(key)
        if m is None:
            continue
        mod = modules.get(m["module"])
        if mod is None or not hasattr(mod, "in_features"):
            raise UserError(
                f"{flag} {d}: made for another base model: it adapts '{m['module']}', which {model_name} does not "
                f"have{other}"
            )
        want, got = (mod.in_features, shape[1]) if m["kind"] == "A" else (mod.out_features, shape[0])
        if len(shape) != 2 or want != got:
            raise UserError(
                f"{flag} {d}: made for another base model: '{m['module']}' has {want} features in {model_name} but "
                f"{got} in the adapter{other}"
            )


class GradientStore:
    """Per-sample gradients and mean gradients of rows at model states (module docstring)."""

    def __init__(
        self,
        model_path: str,
        tokenizer: Any,
        lora: LoraSpec,
        *,
        max_length: int,
        batch_size: int = 16,
        projection_dim: int | None = None,
        cache: bool = True,
        progress: bool = True,
        chunk: int = 256,
    ):
        self.model_path, self.tokenizer, self.lora = model_path, tokenizer, lora
        self.max_length, self.batch_size, self.projection_dim = max_length, batch_size, projection_dim
        self.cache, self.progress, self.chunk = cache, progress, max(1, chunk)
        self.stats = CacheStats()
        self.model_id = model_identity(model_path)
        self._base: Any = None
        self._states: dict[str | None, str] = {}

    def reseed(self, seed: int) -> None:
        """Use ``seed`` for the fresh LoRA's lora_A init and the projection from now on (the base model stays)."""
        if seed != self.lora.seed:
            self.lora = replace(self.lora, seed=seed)
            self._states.clear()

    # -- states ---------------------------------------------------------------------------------------------
    def state_id(self, adapter: str | Path | None) -> str:
        key = None if adapter is None else str(adapter)
        if key not in self._states:
            fresh = adapter is None
            self._states[key] = content_digest("fresh", asdict(self.lora)) if fresh else adapter_identity(adapter)
        return self._states[key]

    def _model_at(self, adapter: str | Path | None):
        import torch
        from peft import PeftModel

        from procure.llm.models import load_model
        from procure.llm.train import add_lora

        if self._base is None:
            self._base = load_model(self.model_path, dtype="float32")
            self.stats.model_loads += 1
        for p in self._base.parameters():
            p.requires_grad_(False)
        if adapter is not None:
            return PeftModel.from_pretrained(self._base, str(adapter), is_trainable=True)
        torch.manual_seed(self.lora.seed)  # lora_A's init; B = 0
        extra: dict[str, Any] = {}
        if self.lora.layers is not None:
            n_layers = int(self._base.config.num_hidden_layers)
            if not 1 <= self.lora.layers <= n_layers:
                raise UserError(f"--lora-layers must be in [1, {n_layers}] for this model (got {self.lora.layers})")
            extra["layers_to_transform"] = list(range(n_layers - self.lora.layers, n_layers))
        try:
            return add_lora(self._base, self.lora.r, self.lora.alpha, self.lora.target_modules, **extra)
        except UserError as exc:
            raise UserError(
                f"--target-modules {','.join(self.lora.target_modules)}: {str(exc).split(': ', 1)[1]}"
            ) from None

    def _release(self, model) -> None:
        self._base = model.unload()

    def unload(self) -> None:
        """Free the base model (loaded again only when a later call misses the cache)."""
        self._base = None

    # -- gradients ------------------------------------------------------------------------------------------
    def per_sample(self, adapter: str | Path | None, rows: Sequence[dict[str, Any]], desc: str = "gradients"):
        """{name: (n, ...)} float32 per-sample gradients of ``rows`` at the state ``adapter`` (None: fresh LoRA)."""
        return self._run(adapter, rows, desc, summed=False)

    def mean(self, adapter: str | Path | None, rows: Sequence[dict[str, Any]], desc: str = "reference gradients"):
        """{name: (...)} the mean gradient of ``rows`` at the state ``adapter``."""
        sums = self._run(adapter, rows, desc, summed=True)
        return {k: v / len(rows) for k, v in sums.items()}

    def _key(self, state: str, rows: Sequence[dict[str, Any]], summed: bool) -> str:
        return content_digest(
            VERSION,
            self.model_id,
            state,
            rows_digest(rows),
            {"max_length": self.max_length, "projection": self.projection_dim, "seed": self.lora.seed},
            "sum" if summed else "per-sample",
        )

    def _run(self, adapter, rows, desc: str, summed: bool) -> dict[str, Any]:
        import torch
        from tqdm.auto import tqdm

        n = len(rows)
        if n == 0:
            raise UserError(f"{desc}: no rows")
        state = self.state_id(adapter)
        spans = [(s, min(s + self.chunk, n)) for s in range(0, n, self.chunk)]
        out: dict[str, torch.Tensor] = {}
        model = None
        bar = tqdm(total=n, desc=desc, unit="row", disable=not self.progress, dynamic_ncols=True)
        try:
            for lo, hi in spans:
                part = rows[lo:hi]
                key = self._key(state, part, summed)
                got = self._load(key)
                if got is None:
                    if model is None:
                        model = self._model_at(adapter)
                    got = self._compute(model, part, summed, bar)
                    self.stats.computed_rows += hi - lo
                    self._save(key, got)
                else:
                    self.stats.cached_rows += hi - lo
                    bar.update(hi - lo)
                self.stats.entries.append(key)
                if summed:
                    for k, v in got.items():
                        out[k] = out[k] + v if k in out else v.clone()
                else:
                    for k, v in got.items():
                        if k not in out:
                            out[k] = torch.empty((n, *v.shape[1:]), dtype=v.dtype)
                        out[k][lo:hi] = v
        finally:
            bar.close()
            if model is not None:
                self._release(model)
        return out

    def _compute(self, model, rows, summed: bool, bar) -> dict[str, Any]:
        from procure.llm import grads as llm_grads

        g = llm_grads.per_sample_lora_grads(
            model,
            self.tokenizer,
            list(rows),
            batch_size=self.batch_size,
            max_length=self.max_length,
            projection_dim=self.projection_dim,
            seed=self.lora.seed,
            progress=bar,
        )
        if summed:
            return {k: v.sum(dim=0) for k, v in g.items()}
        return g

    def _load(self, key: str) -> dict[str, Any] | None:
        if not self.cache:
            return None
        path = cache_dir("grads") / key / "grads.safetensors"
        if not path.is_file():
            return None
        from safetensors.torch import load_file

        return load_file(str(path))

    def _save(self, key: str, tensors: dict[str, Any]) -> None:
        if not self.cache:
            return
        from safetensors.torch import save_file

        def build(tmp: Path) -> None:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / "grads.safetensors"))
            (tmp / "meta.json").write_text(json.dumps({"version": VERSION, "model": self.model_path}))

        build_once(cache_dir("grads") / key, build)
