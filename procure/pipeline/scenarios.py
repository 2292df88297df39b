"""Scenarios: where a recipe's candidates, warm-up rows and evaluation tasks come from (one per seed).

``conjoint`` wraps ``procure.tasks.conjoint`` (seeds/000 section 6.3), ``qa`` wraps ``procure.tasks.qa``
(seeds/004 appendix A), ``plugin`` imports ``package.module:factory`` from your own code.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import numpy as np

from procure.errors import UserError
from procure.pipeline.backends import LLMLearner
from procure.pipeline.protocols import Candidate, Example, Learner, Scenario, Task
from procure.pipeline.recipe import ConjointSpec, PluginSpec, QASpec, Recipe


def components(recipe: Recipe, *, need_learner: bool = True) -> tuple[Callable[[int], Scenario], Learner | None]:
    """The recipe's scenario factory (``seed -> Scenario``, one scenario per seed) and its learner: a plugin's own
    learner (from its factory's first seed) or the LLM learner on ``recipe.model`` (None if not ``need_learner``).
    """
    spec = recipe.task
    learner: Learner | None = None
    if isinstance(spec, PluginSpec):
        factory = load_plugin(spec)
        first = recipe.seeds[0]
        scenario0, learner = _plugin_parts(factory(spec, first))
        made = {first: scenario0}

        def scenario_factory(seed: int) -> Scenario:
            return made.pop(seed) if seed in made else _plugin_parts(factory(spec, seed))[0]

    else:

        def scenario_factory(seed: int) -> Scenario:
            return make_scenario(recipe, seed)

    if learner is None and need_learner:
        learner = LLMLearner(recipe)
    return scenario_factory, learner


def make_scenario(recipe: Recipe, seed: int) -> Scenario:
    """The scenario of a conjoint or QA recipe for ``seed`` (plugins: :func:`components`)."""
    spec = recipe.task
    if isinstance(spec, ConjointSpec):
        return ConjointScenario(spec, seed)
    if isinstance(spec, QASpec):
        return QAScenario(spec, seed)
    raise ValueError(f"no built-in scenario for task kind {spec.kind!r}")


def load_plugin(spec: PluginSpec) -> Callable[[PluginSpec, int], Any]:
    """The plugin's factory ``package.module:factory`` (importing it runs that module's code)."""
    mod_name, _, attr = spec.target.partition(":")
    try:
        mod = importlib.import_module(mod_name)
    except ModuleNotFoundError as exc:
        raise UserError(f"task.target: cannot import module {mod_name!r} ({exc}); check the spelling") from None
    factory = getattr(mod, attr, None)
    if not callable(factory):
        raise UserError(f"task.target: {mod_name!r} has no callable {attr!r}")
    return factory


def _plugin_parts(out: Any) -> tuple[Scenario, Learner | None]:
    return (out[0], out[1]) if isinstance(out, tuple) else (out, None)


class ConjointScenario:
    """seeds/000 section 6.3 with ``procure.tasks.conjoint``: 3 sellers whose rows are 30/60/90 % noisy,
    a warm-up stage on biased rows, AvgErr on held-out profiles (validation and test splits)."""

    def __init__(self, spec: ConjointSpec, seed: int) -> None:
        from procure.tasks import conjoint

        self._c = conjoint
        self.spec = spec
        self.seed = seed
        self.world = conjoint.ConjointWorld(spec.world_seed if spec.world_seed is not None else seed)
        self.n_sellers = spec.n_sellers
        self._tasks: dict[str, Task] = {}

    def warmup_examples(self) -> list[Example]:
        if self.spec.warmup_rows == 0:
            return []
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 101]))
        return [_example(r) for r in self._c.warmup_rows(self.world, self.spec.warmup_rows, rng)]

    def candidates(self, round: int, rng: np.random.Generator) -> list[Candidate]:
        sets = self._c.make_candidates(
            self.world, self.n_sellers, self.spec.rows_per_seller, list(self.spec.noise_shares), rng
        )
        return [
            Candidate(j, [_example(r) for r in _rows(rows)], float(self.spec.noise_shares[j]))
            for j, rows in enumerate(sets)
        ]

    def reference_examples(self) -> list[Example]:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 102]))
        sets = self._c.make_candidates(self.world, 1, 64, [0.0], rng)
        return [_example(r) for r in _rows(sets[0])]

    def task(self, split: str) -> Task:
        if split not in self._tasks:
            n = self.spec.val_samples_per_profile if split == "val" else self.spec.test_samples_per_profile
            self._tasks[split] = self._c.ConjointEval(
                self.world,
                samples_per_profile=n,
                seed=self.seed,
                split="validation" if split == "val" else "test",
                profiles=self.spec.eval_profiles,
                readout=self.spec.readout,
            )
        return self._tasks[split]


class QAScenario:
    """seeds/004 appendix A with ``procure.tasks.qa``: sellers hold disjoint slices of a multiple-choice pool;
    a representative set of ``reference_size`` items; accuracy on validation / test items."""

    def __init__(self, spec: QASpec, seed: int) -> None:
        from procure.tasks import qa

        self._qa = qa
        self.spec = spec
        self.seed = seed
        self.n_sellers = spec.n_sellers
        self.market = qa.QAMarket(
            data_file=spec.data_file,
            n_sellers=spec.n_sellers,
            rows_per_seller=spec.rows_per_seller,
            reference_size=spec.reference_size,
            val_size=spec.val_size,
            test_size=spec.test_size,
            n_shot=spec.n_shot,
            seed=seed,
            noise_shares=spec.noise_shares,
            readout=spec.readout,
        )

    def warmup_examples(self) -> list[Example]:
        return []

    def candidates(self, round: int, rng: np.random.Generator) -> list[Candidate]:
        shares = self.spec.noise_shares
        return [
            Candidate(j, [_example(r) for r in rows], float(shares[j % len(shares)]))
            for j, rows in enumerate(self.market.offers(round))
        ]

    def reference_examples(self) -> list[Example]:
        return [_example(r) for r in self.market.reference()]

    def task(self, split: str) -> Task:
        return self.market.task(split)


def _rows(rows: Any) -> list:
    if hasattr(rows, "to_dict"):  # a DataFrame
        return rows.to_dict("records")
    return list(rows)


def _example(row: Any) -> Example:
    """A training example ``{"prompt", "answer"[, "system"]}`` from a task row (dict or object)."""
    if hasattr(row, "to_example"):
        row = row.to_example()
    if not isinstance(row, dict):
        row = {k: getattr(row, k) for k in ("prompt", "answer", "system") if hasattr(row, k)}
    out = {"prompt": str(row["prompt"]), "answer": str(row["answer"])}
    if row.get("system"):
        out["system"] = str(row["system"])
    return out
