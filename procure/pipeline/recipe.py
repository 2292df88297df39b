"""Recipes: the YAML files that describe a staged procurement run (pydantic models, ``extra="forbid"``).

A recipe names the model, the task (where candidates and evaluation come from), the arms to compare
(valuation ``methods`` x ``seeds``), the number of ``rounds``, the market and the LoRA training settings.
A typo or a wrong type ends as one line naming the dotted field (``procure.errors.UserError``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from procure.errors import UserError, format_validation_error

Method = Literal["ads", "loo", "bm25", "infl_ip", "datainf", "constant", "random", "noise_oracle", "hindsight"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GenerationSpec(_Strict):
    """How the evaluation generates (``procure.llm.generate.GenParams``); None = the task's own default
    (e.g. the conjoint task's temperature 0.7 of the paper)."""

    max_new_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    samples: int | None = Field(None, ge=1, description="answers per prompt; None = the task's samples_per_prompt")
    backend: Literal["auto", "vllm", "hf"] = "auto"
    adapter_mode: Literal["auto", "lora", "merge"] = "auto"


class ConjointSpec(_Strict):
    """seeds/000 section 6.3: conjoint ratings; sellers mix true and noisy ratings at the given noise shares."""

    kind: Literal["conjoint"]
    rows_per_seller: int = Field(50, ge=1)
    noise_shares: list[Annotated[float, Field(ge=0.0, le=1.0)]] = Field(default_factory=lambda: [0.3, 0.6, 0.9])
    warmup_rows: int = Field(300, ge=0, description="biased rows for the warm-up stage (A_0); 0 = base model")
    warmup_epochs: float | None = Field(None, gt=0, description="epochs of the warm-up stage; None = training.epochs")
    val_samples_per_profile: int = Field(1, ge=1)
    test_samples_per_profile: int = Field(1, ge=1)
    world_seed: int | None = Field(None, description="seed of the true/noisy part-worths; None = the arm's seed")
    readout: Literal["generate", "expected"] = Field(
        "generate",
        description="generate: parse 'Rating: X' answers (greedy or sampled, see generation); expected: the "
        "probability-weighted rating from the next-token distributions after 'Rating: ' (one forward pass, HF)",
    )
    eval_profiles: Literal["halves", "all"] = Field(
        "halves",
        description="validation and test rate disjoint halves of the 64 profiles (default), or both all 64 "
        "(then greedy validation = test: only for sampled readouts)",
    )

    @property
    def n_sellers(self) -> int:
        return len(self.noise_shares)


class QASpec(_Strict):
    """seeds/004 appendix A: multiple-choice QA (MathQA-style); sellers hold disjoint slices of the pool."""

    kind: Literal["qa"]
    data_file: str | None = Field(
        None,
        description="a BIG-bench task 'bigbench:TASK[/SUBTASK]' (read offline from the cached sdist) or a "
        "BIG-bench style JSON/JSONL/CSV/parquet file; None = bigbench:elementary_math_qa",
    )
    n_sellers: int = Field(5, ge=1)
    rows_per_seller: int = Field(20, ge=0)
    reference_size: int = Field(200, ge=1, description="representative set used by bm25 / influence methods")
    val_size: int = Field(64, ge=1)
    test_size: int = Field(64, ge=1)
    n_shot: int = Field(0, ge=0)
    noise_shares: list[Annotated[float, Field(ge=0.0, le=1.0)]] = Field(
        default_factory=lambda: [0.0], description="share of wrong answer letters in seller j (cycled)"
    )
    readout: Literal["likelihood", "generate"] = Field(
        "likelihood",
        description="likelihood: the most likely 'Answer: X' continuation (one forward pass per question, as "
        "k-shot harnesses score); generate: parse greedy answers (SmolLM2-135M answers parseably ~1 % of the time)",
    )

    @field_validator("data_file")
    @classmethod
    def _exists(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("bigbench:") and not Path(v).expanduser().is_file():
            raise ValueError(
                f"file not found: {v}; give an existing JSON/JSONL file, a 'bigbench:TASK/SUBTASK' or leave it out"
            )
        return v


class PluginSpec(_Strict):
    """A scenario and learner from your own code: ``target`` = ``"package.module:factory"``.

    ``factory(spec, seed)`` returns ``(scenario, learner)`` following ``procure.pipeline.protocols.Scenario``
    and ``Learner``. Useful for non-LLM stand-ins and for tests. This is code execution: running such a recipe
    imports ``package.module`` and calls ``factory`` with your permissions (as ``python -c`` would).
    """

    kind: Literal["plugin"]
    target: str = Field(
        pattern=r"^[\w.]+:\w+$",
        description="package.module:factory; the run imports and calls it: a recipe with a plugin task runs "
        "that code with your permissions, so only run recipes from sources you trust",
    )
    options: dict[str, Any] = Field(default_factory=dict)
    n_sellers: int = Field(3, ge=1)


TaskSpec = Annotated[ConjointSpec | QASpec | PluginSpec, Field(discriminator="kind")]


class ValuationSpec(_Strict):
    """How candidates are valued (ADS exact/MC switch, MC permutations, gradient projection)."""

    exact_max_candidates: int = Field(6, ge=1, le=20, description="ADS is exact up to this many candidates, else MC")
    mc_permutations: int = Field(20, ge=1)
    projection_dim: int | None = Field(None, ge=1, description="random projection of LoRA gradients (influence)")
    grad_batch_size: int = Field(16, ge=1)
    datainf_blocks: Literal["param", "layer"] = Field(
        "param", description="datainf: one block per LoRA tensor (Kwon et al.'s code) or lora_A + lora_B^T per layer"
    )
    bm25_idf: Literal["okapi", "clamp"] = Field(
        "okapi", description="bm25: rank-bm25's floored idf (seeds/004) or clamp a negative idf at 0"
    )


class UtilityMap(_Strict):
    """Buyer utility of candidate j from its value v_j: u_j = gamma * s(v)_j + beta (DESIGN.md, linear map).

    ``scale="minmax"`` maps the round's values to [0, 1] first (seeds/004: "normalized to [0, 1] for pricing
    compatibility"); ``"none"`` uses the raw values (utility units of the task, e.g. -AvgErr points), so
    ``gamma`` is money per metric point: the value-linear utility. ``bundle="measured"`` (ADS / LOO with
    ``scale: none``): the buyer values a bundle S by the coalition utility measured during valuation,
    ``gamma * (v(S) - v(∅)) + beta``, instead of the sum of values (bundles not measured: the sum).
    """

    scale: Literal["none", "minmax"] = "minmax"
    gamma: float = Field(1.0, gt=0.0)
    beta: float = 0.0
    bundle: Literal["additive", "measured"] = "additive"

    @model_validator(mode="after")
    def _measured_needs_raw_values(self) -> UtilityMap:
        if self.bundle == "measured" and self.scale != "none":
            raise ValueError("bundle: measured compares coalition utilities in metric units; set scale: none")
        return self


class SellerExitSpec(_Strict):
    """A seller that sold for less than its fair price stays with probability pi(paid, fair)
    (``procure.market.participation.stay_probability``; pi(p*, p*) = 1)."""

    enabled: bool = True
    family: Literal["power", "exp", "linear", "step"] = "power"
    k: float = Field(1.0, gt=0.0)
    q: float = Field(0.9, ge=0.0, lt=1.0)


class MarketSpec(_Strict):
    """One buyer per arm; money in utility units (see :class:`UtilityMap`)."""

    contract: Literal["fairshare", "royalty"] = "fairshare"
    budget: float | None = Field(None, ge=0.0, description="budget per round in utility units")
    budget_fraction: float | None = Field(
        None, ge=0.0, description="budget per round as a fraction of the round's total utility (seeds/004)"
    )
    max_purchases: int | None = Field(None, ge=0, description="buy at most this many (top by value); None = any")
    cost: float = Field(0.0, ge=0.0, description="every seller's cost c_j")
    max_rate: float = Field(0.5, gt=0.0, lt=1.0)
    utility: UtilityMap = UtilityMap()
    seller_exit: SellerExitSpec = SellerExitSpec()

    @model_validator(mode="after")
    def _one_budget(self) -> MarketSpec:
        if self.budget is not None and self.budget_fraction is not None:
            raise ValueError("give either budget or budget_fraction, not both")
        return self

    def round_budget(self, total_utility: float) -> float:
        if self.budget is not None:
            return float(self.budget)
        if self.budget_fraction is not None:
            return float(self.budget_fraction * max(total_utility, 0.0))
        return float("inf")


class Recipe(_Strict):
    """A staged procurement run: ``rounds`` rounds for every arm (method x seed) on ``task`` with ``model``."""

    name: str = Field(description="run name: the run directory is runs/<name> unless --out is given")
    model: str = "smollm2-135m"
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    rounds: int = Field(ge=1)
    methods: list[Method] = Field(min_length=1)
    task: TaskSpec
    valuation: ValuationSpec = ValuationSpec()
    market: MarketSpec = MarketSpec()
    training: dict[str, Any] = Field(default_factory=dict, description="procure.llm.train.TrainConfig fields")
    generation: GenerationSpec = GenerationSpec()
    progress: bool = True

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        if not re.fullmatch(r"\w[\w.-]*", v):
            raise ValueError(
                f"{v!r} is not a plain name (letters, digits, _ . -, not starting with a dot); it names runs/<name>"
            )
        return v

    @field_validator("seeds", "methods")
    @classmethod
    def _unique(cls, v: list) -> list:
        if len(set(v)) != len(v):
            raise ValueError("entries must be unique")
        return v

    def arms(self) -> list[tuple[str, int]]:
        """(method, seed) pairs in run order: seeds outer, methods inner."""
        return [(m, s) for s in self.seeds for m in self.methods]

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)


def parse_recipe(data: Any, source: str = "recipe") -> Recipe:
    """Validate a mapping into a :class:`Recipe`; any problem raises a one-line ``UserError``."""
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a YAML mapping of recipe fields, got {type(data).__name__}")
    kind = data.get("kind")
    if kind is not None:
        hint = "procure market simulate" if str(kind).startswith("market") else "the command made for it"
        raise UserError(f"{source}: field 'kind': a '{kind}' recipe is not a procurement run; use `{hint}`")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise UserError(format_validation_error(exc, source, Recipe)) from None
    _check_training(recipe, source)
    return recipe


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe YAML file (missing file / bad YAML / bad field -> ``UserError``)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"recipe file not found: {p}; pass the path of a YAML recipe (see recipes/)")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{p}:{where} is not valid YAML ({getattr(exc, 'problem', exc)})") from None
    return parse_recipe(data, str(p))


def train_config(recipe: Recipe, **overrides: Any):
    """``procure.llm.train.TrainConfig`` from ``recipe.training`` (+ overrides)."""
    from procure.llm.train import TrainConfig

    return TrainConfig(**{**recipe.training, **overrides})


def _check_training(recipe: Recipe, source: str) -> None:
    from procure.llm.train import TrainConfig

    if recipe.task.kind == "plugin":
        return
    try:
        TrainConfig(**recipe.training)
    except ValidationError as exc:
        raise UserError(format_validation_error(exc, source).replace("field '", "field 'training.", 1)) from None
