"""The LLM learner: LoRA stages with ``procure.llm.train.StageTrainer``, evaluation with one long-lived
``procure.llm.generate`` generator (vLLM or HF; the engine starts once per run), per-sample LoRA gradients
for the influence methods with ``procure.llm.grads``. States are adapter folders; None is the base model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from procure.pipeline.loop import Example, Task
from procure.pipeline.recipe import Recipe, train_config


def make_learner(recipe: Recipe) -> LLMLearner:
    return LLMLearner(recipe)


class LLMLearner:
    """Implements ``procure.pipeline.loop.Learner`` on the recipe's model."""

    def __init__(self, recipe: Recipe) -> None:
        from procure.llm.models import resolve_model

        self.recipe = recipe
        self.model_path = resolve_model(recipe.model)
        self.cfg = train_config(recipe)
        self._gen = None
        self._grad_model: Any = None

    # -- training ---------------------------------------------------------------------------------------------
    def train(
        self, state: Path | None, examples: list[Example], out_dir: Path, seed: int, epochs: float | None = None
    ) -> dict[str, Any]:
        from procure.llm.train import StageTrainer

        update: dict[str, Any] = {}
        if "seed" in type(self.cfg).model_fields:
            update["seed"] = seed
        if epochs is not None and "epochs" in type(self.cfg).model_fields:
            update["epochs"] = epochs
        cfg = self.cfg.model_copy(update=update)
        res = StageTrainer(self.model_path, cfg).train(
            examples, out_dir, init_adapter=None if state is None else str(state), progress=False
        )
        info: dict[str, Any] = {"n_tokens": int(res.n_tokens), "final_loss": float(res.final_loss)}
        sub = Path(res.adapter_dir).resolve().relative_to(Path(out_dir).resolve())
        if str(sub) != ".":
            info["adapter_subdir"] = str(sub)
        return info

    # -- evaluation -------------------------------------------------------------------------------------------
    def _generator(self):
        if self._gen is None:
            from procure.llm.generate import make_generator

            g = self.recipe.generation
            kw: dict[str, Any] = {"backend": g.backend, "adapter_mode": g.adapter_mode}
            rank = getattr(self.cfg, "lora_r", None) or getattr(self.cfg, "rank", None)
            if rank:
                kw["lora_rank"] = int(rank)
            self._gen = make_generator(self.model_path, **kw)
        return self._gen

    def evaluate(self, state: Path | None, task: Task, seed: int) -> float:
        from procure.llm.generate import GenParams

        g = self.recipe.generation
        params = GenParams(
            max_new_tokens=g.max_new_tokens or int(getattr(task, "max_new_tokens", 8)),
            temperature=g.temperature if g.temperature is not None else float(getattr(task, "temperature", 0.0)),
            top_p=g.top_p,
            n=g.samples or int(getattr(task, "samples_per_prompt", 1)),
            seed=seed,
        )
        gens = self._generator().generate(
            task.eval_prompts(), None if state is None else str(state), params, system=task.system
        )
        return float(task.score(gens))

    # -- gradients (Infl_IP, DataInf) -------------------------------------------------------------------------
    def grads(
        self, state: Path | None, examples: list[Example], reference: list[Example], seed: int
    ) -> tuple[dict, dict]:
        from procure.llm.grads import mean_grad, per_sample_lora_grads
        from procure.llm.models import load_lora_model

        model, tok = load_lora_model(self.model_path, self.cfg, adapter=None if state is None else str(state))
        v = self.recipe.valuation
        kw = {
            "batch_size": v.grad_batch_size,
            "max_length": int(getattr(self.cfg, "max_length", 256)),
            "projection_dim": v.projection_dim,
            "seed": seed,
        }
        train = per_sample_lora_grads(model, tok, examples, **kw)
        val = mean_grad(per_sample_lora_grads(model, tok, reference, **kw))
        return train, val

    def close(self) -> None:
        if self._gen is not None and hasattr(self._gen, "close"):
            self._gen.close()
        self._gen = None
