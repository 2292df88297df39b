"""The LLM learner: LoRA stages with ``procure.llm.train.StageTrainer``, evaluation with one long-lived
``procure.llm.generate`` generator (vLLM or HF; the engine starts once per run), per-sample LoRA gradients
for the influence methods with ``procure.llm.grads``. States are adapter folders; None is the base model.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from procure.pipeline import console
from procure.pipeline.protocols import Example, Task
from procure.pipeline.recipe import Recipe, train_config


class LLMLearner:
    """Implements ``procure.pipeline.protocols.Learner`` on the recipe's model."""

    def __init__(self, recipe: Recipe) -> None:
        import os

        from procure.llm.models import resolve_model

        # Under `accelerate launch` the loop gives each process its own coalitions (and the main process the
        # warm-up and purchase stages), so every stage is process-local: no DDP, this process saves.
        self.local = int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.recipe = recipe
        console.status(f"preparing model {recipe.model}")
        self.model_path = resolve_model(recipe.model)
        self.cfg = train_config(recipe)
        self._gen: Any = None
        self._hf: Any = None
        self._stage: Any = None
        self._grads: Any = None

    # -- training ---------------------------------------------------------------------------------------------
    def _trainer(self):
        if self._stage is None:
            from procure.llm.train import StageTrainer

            # the base model stays loaded for all stages
            self._stage = StageTrainer(self.model_path, self.cfg, local=self.local)
        return self._stage

    def train(
        self, state: Path | None, examples: list[Example], out_dir: Path, seed: int, epochs: float | None = None
    ) -> dict[str, Any]:
        update: dict[str, Any] = {"seed": seed}
        if epochs is not None:
            update["epochs"] = epochs
        trainer = self._trainer()
        trainer.cfg = self.cfg.model_copy(update=update)
        # the stage's own bar (on the terminal) only outside a round's bars: the warm-up stage
        bar = console.stream() if self.recipe.progress and console.bars_open() == 0 else False
        res = trainer.train(examples, out_dir, init_adapter=state, progress=bar)
        return {"n_tokens": int(res.n_tokens), "final_loss": float(res.final_loss)}

    # -- evaluation -------------------------------------------------------------------------------------------
    def _generator(self):
        if self._gen is None:
            from procure.llm.generate import make_generator

            g = self.recipe.generation
            kw: dict[str, Any] = {"backend": g.backend, "adapter_mode": g.adapter_mode, "lora_rank": self.cfg.lora_r}
            if self.local:
                kw.update(_process_gpu())
            console.status(f"starting the generation engine (backend {g.backend}; once per run)")
            t0 = time.perf_counter()
            self._gen = make_generator(self.model_path, **kw)
            console.status(f"engine ready: {self._gen.backend} in {time.perf_counter() - t0:.0f} s")
        return self._gen

    def _scorer(self):
        """A generator with :meth:`lookahead` (the HF backend): the evaluation generator when it is one."""
        gen = self._generator()
        if gen.backend == "hf":
            return gen
        if self._hf is None:
            from procure.llm.hf_backend import HFGenerator

            self._hf = HFGenerator(self.model_path, adapter_mode="merged")
        return self._hf

    def evaluate(self, state: Path | None, task: Task, seed: int) -> float:
        from procure.llm.generate import GenParams

        adapter = None if state is None else str(state)
        if getattr(task, "readout", "generate") == "likelihood":
            lp = self._generator().choice_logprobs(task.eval_prompts(), task.choices(), adapter, system=task.system)
            return float(task.score_logprobs(lp))
        if getattr(task, "readout", "generate") == "expected":
            first, second = self._scorer().lookahead(
                task.eval_prompts(), task.lookahead_prefix, task.lookahead_symbols, adapter, system=task.system
            )
            return float(task.score_lookahead(first, second))

        g = self.recipe.generation
        params = GenParams(
            max_new_tokens=g.max_new_tokens or int(getattr(task, "max_new_tokens", 8)),
            temperature=g.temperature if g.temperature is not None else float(getattr(task, "temperature", 0.0)),
            top_p=g.top_p,
            n=g.samples or int(getattr(task, "samples_per_prompt", 1)),
            seed=seed,
        )
        gens = self._generator().generate(task.eval_prompts(), adapter, params, system=task.system)
        return float(task.score(gens))

    # -- gradients (Infl_IP, DataInf) -------------------------------------------------------------------------
    def grads(
        self, state: Path | None, examples: list[Example], reference: list[Example], seed: int
    ) -> tuple[dict, dict]:
        """Per-sample LoRA gradients of ``examples`` and the mean gradient of ``reference`` at ``state`` (None: a
        fresh LoRA with lora_A drawn from ``seed``, B = 0, so only lora_B gradients are non-zero); ``seed`` also
        seeds the projection. Cached on disk by (model, state content, rows, projection, seed)
        (:mod:`procure.llm.grad_store`): the two gradient methods and a resumed run compute them once."""
        store = self._grad_store()
        store.reseed(seed)
        try:
            return store.per_sample(state, examples), store.mean(state, reference)
        finally:
            store.unload()  # the trainer and the generator hold their own copies of the model for the whole run

    def _grad_store(self):
        if self._grads is None:
            from procure.llm.grad_store import GradientStore, LoraSpec
            from procure.llm.models import load_tokenizer

            cfg, v = self.cfg, self.recipe.valuation
            self._grads = GradientStore(
                str(self.model_path),
                load_tokenizer(self.model_path),
                LoraSpec.of(cfg),
                max_length=cfg.max_length,
                batch_size=v.grad_batch_size,
                projection_dim=v.projection_dim,
                progress=False,
            )
        return self._grads

    def close(self) -> None:
        for gen in (self._gen, self._hf):
            if gen is not None:
                gen.close()
        self._gen = self._hf = self._grads = None


def _process_gpu() -> dict[str, Any]:
    """Under ``accelerate launch`` on GPUs: evaluate on this process's GPU (LOCAL_RANK). The HF backend gets the
    device; a vLLM engine process inherits CUDA_VISIBLE_DEVICES, narrowed here to that one GPU. (Checked on CPU
    processes only: no multi-GPU machine was available to this project so far.)"""
    import os

    import torch

    if not torch.cuda.is_available():
        return {}
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
    os.environ["CUDA_VISIBLE_DEVICES"] = ids[rank % len(ids)]
    return {"device": f"cuda:{rank}"}
