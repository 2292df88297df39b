"""``procure run RECIPE --dry-run``: what a recipe will do and about how long it takes, without training.

Counts come from the recipe alone (the model is not resolved, nothing is downloaded, no run directory is
made): per arm and round, the coalition fine-tunes the valuation asks for (``procure.valuation.estimate.plan``
on the round's candidates: exact ADS over m candidates trains 2^m - 1 coalitions, within-round LOO m + 1),
the purchase's fine-tune when valuation did not train it, validation and test evaluations, per-sample
gradient rows. Every seller is assumed to stay in the market, so these are upper bounds; states that several
arms reach (round 1 of every arm starts from the same A_0) are trained once in a real run.

The wall time is this machine's measured throughput (README benchmark tables, SmolLM2-135M on 2 CPU cores)
scaled by the model's parameter count and the recipe's rows and tokens: see :data:`CPU_REFERENCE`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from procure.pipeline.recipe import ConjointSpec, QASpec, Recipe
from procure.valuation.estimate import Budget, plan

#: measured on the project's 2-core CPU (README: "Pipeline: LoRA stage throughput", ENVIRONMENT.md vLLM timings)
CPU_REFERENCE = {
    "model": "SmolLM2-135M",
    "params": 134.5e6,
    "train_tokens_per_s": 351.0,  # StageTrainer, bf16 autocast, LoRA r=16 q/k/v/o, batch 4 (eval/bench_pipeline.py)
    "fp32_slowdown": 1.6,  # bf16 autocast steps are ~1.6x faster on this CPU
    "gen_tokens_per_s": 41.0,  # 64 prompts of ~66 tokens, 8 new tokens each, in 12-13 s (vLLM merged or HF batched)
    "grad_tokens_per_s": 390.0,  # per-sample LoRA gradients, 32 conjoint rows of 56 tokens in 4.6 s
    "engine_start_s": 30.0,  # vLLM engine start on CPU (26-37 s)
}
#: training tokens per row (chat template included), measured: conjoint 56, MathQA-style QA 116
TOKENS_PER_ROW = {"conjoint": 56, "qa": 116}
_RETRAIN = ("ads", "loo")
_GRADIENT = ("infl_ip", "datainf")


@dataclass
class ArmRound:
    """The work of one arm in one round (upper bounds: every seller active)."""

    method: str
    valuation: str
    finetunes: int
    finetune_rows: int
    val_evals: int
    test_evals: int
    grad_rows: int


def arm_round(recipe: Recipe, method: str, m: int, rows: int) -> ArmRound:
    """What ``method`` does in one round with ``m`` candidates of ``rows`` rows each."""
    v = recipe.valuation
    budget = Budget(exact_max=v.exact_max_candidates, permutations=v.mc_permutations)
    one = recipe.market.max_purchases == 1
    if method in _RETRAIN:
        coalitions = [S for S in plan(method, [list(range(m))], budget, seed=0) if S]
        sizes = [len(S) for S in coalitions]
        exact = method == "loo" or m <= v.exact_max_candidates
        what = (
            f"exact ADS over {m} candidates: 2^{m} - 1 = {len(coalitions)} coalitions"
            if method == "ads" and exact
            else f"{method.upper()}: {len(coalitions)} coalitions"
            + ("" if exact else f" (MC, {v.mc_permutations} permutations)")
        )
        singles = all(frozenset({i}) in set(coalitions) for i in range(m))
        extra = 0 if (one and singles) else 1
        return ArmRound(method, what, len(coalitions) + extra, (sum(sizes) + extra) * rows, len(coalitions) + 1, 1, 0)
    if method == "hindsight":
        return ArmRound(method, f"test gain of each of {m} single-seller fine-tunes", m, m * rows, 0, m + 1, 0)
    grad = m * rows + _reference_rows(recipe) if method in _GRADIENT else 0
    what = {"bm25": "BM25 per row", "constant": "constant", "random": "random", "noise_oracle": "known noise"}
    bought = 1 if one else m
    return ArmRound(method, what.get(method, f"{method} per row (gradients)"), 1, bought * rows, 0, 1, grad)


def describe(recipe: Recipe, out: Path) -> str:
    """The dry-run text: arms, rounds, per arm-round work, totals and the estimated wall time."""
    spec = recipe.task
    m = int(getattr(spec, "n_sellers", 0))
    rows = int(getattr(spec, "rows_per_seller", 0))
    warm = int(getattr(spec, "warmup_rows", 0)) if isinstance(spec, ConjointSpec) else 0
    per = [arm_round(recipe, meth, m, rows) for meth in recipe.methods]
    n_seeds, t = len(recipe.seeds), recipe.rounds
    lines = [
        f"recipe '{recipe.name}' is valid; dry run: nothing is trained and {out} is not created",
        f"model: {recipe.model} (not resolved or downloaded by a dry run); task: {_task_line(recipe)}",
        f"arms: {len(recipe.arms())} = methods {', '.join(recipe.methods)} x seeds {recipe.seeds}; rounds: {t}",
        f"per seed: {'a warm-up fine-tune on ' + str(warm) + ' rows, ' if warm else ''}one test evaluation of A_0",
        f"per arm and round ({m} candidates of {rows} rows; every seller stays, so these are upper bounds):",
        "| method | valuation | fine-tunes | rows trained | val evaluations | test evaluations | gradient rows |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {a.method} | {a.valuation} | {a.finetunes} | {a.finetune_rows} | {a.val_evals} | {a.test_evals} | "
        f"{a.grad_rows} |"
        for a in per
    ]
    ft = n_seeds * (t * sum(a.finetunes for a in per) + (1 if warm else 0))
    ev = n_seeds * (t * sum(a.val_evals + a.test_evals for a in per) + 1)
    lines.append(
        f"in all: at most {ft} fine-tunes and {ev} evaluations over {n_seeds} seed(s) x {t} rounds "
        "(arms that reach the same state share it: round 1 starts from one A_0)"
    )
    if recipe.task.kind == "plugin":
        lines.append("wall time: not estimated for a plugin task (its learner is your code)")
    else:
        lines += _estimate(recipe, per, warm)
    return "\n".join(lines)


def _task_line(recipe: Recipe) -> str:
    spec = recipe.task
    if isinstance(spec, ConjointSpec):
        shares = ", ".join(f"{s:.0%}" for s in spec.noise_shares)
        return (
            f"conjoint, {spec.n_sellers} sellers x {spec.rows_per_seller} rows (noise {shares}), warm-up "
            f"{spec.warmup_rows} rows, {_eval_prompts(recipe, 'val')} validation / {_eval_prompts(recipe, 'test')} "
            "test ratings per evaluation"
        )
    if isinstance(spec, QASpec):
        return (
            f"qa, {spec.n_sellers} sellers x {spec.rows_per_seller} rows, reference {spec.reference_size}, "
            f"{spec.val_size} validation / {spec.test_size} test questions, {spec.n_shot}-shot"
        )
    return f"plugin {spec.target} (imports and runs that code), {spec.n_sellers} sellers"


def _reference_rows(recipe: Recipe) -> int:
    spec = recipe.task
    return spec.reference_size if isinstance(spec, QASpec) else 64


def _eval_prompts(recipe: Recipe, split: str) -> int:
    """Prompts x samples of one evaluation on ``split``."""
    spec = recipe.task
    if isinstance(spec, ConjointSpec):
        profiles = 64 if spec.eval_profiles == "all" else 32
        samples = spec.val_samples_per_profile if split == "val" else spec.test_samples_per_profile
        return profiles * (recipe.generation.samples or samples)
    if isinstance(spec, QASpec):
        return (spec.val_size if split == "val" else spec.test_size) * (recipe.generation.samples or 1)
    return 0


def model_params(name: str) -> tuple[float, str]:
    """(parameters, how known) from the model name: a size in it (``1.7B``, ``135M``, ``8b``) or a known alias."""
    low = name.lower()
    if low.startswith("smollm2"):
        return CPU_REFERENCE["params"], "SmolLM2-135M"
    if low == "tiny":
        return 6.5e6, "the tiny test model"
    found = re.findall(r"(\d+(?:\.\d+)?)\s*([mb])(?![a-z])", low.replace("_", "-"))
    if found:
        num, unit = found[-1]
        return float(num) * (1e9 if unit == "b" else 1e6), f"{num}{unit.upper()} from the name"
    return CPU_REFERENCE["params"], "unknown size: assumed 135M"


def _estimate(recipe: Recipe, per: list[ArmRound], warm: int) -> list[str]:
    ref = CPU_REFERENCE
    params, how = model_params(recipe.model)
    scale = max(params / ref["params"], 0.05)  # tiny models: fixed per-step overheads dominate
    kind = recipe.task.kind
    tok = TOKENS_PER_ROW.get(kind, 60)
    epochs = float(recipe.training.get("epochs", 1.0))
    train_rate = ref["train_tokens_per_s"] / (1.0 if recipe.training.get("bf16") else ref["fp32_slowdown"])
    new_tokens = recipe.generation.max_new_tokens or 8
    if getattr(recipe.task, "readout", "generate") in ("expected", "likelihood"):
        new_tokens = 1  # one forward pass per prompt
    n_seeds, t = len(recipe.seeds), recipe.rounds
    rows_trained = sum(a.finetune_rows for a in per) * t * n_seeds
    warm_epochs = getattr(recipe.task, "warmup_epochs", None) or epochs
    train_s = (rows_trained * epochs + n_seeds * warm * warm_epochs) * tok / train_rate * scale
    gen = sum(a.val_evals * _eval_prompts(recipe, "val") + a.test_evals * _eval_prompts(recipe, "test") for a in per)
    gen = (gen * t + _eval_prompts(recipe, "test")) * n_seeds * new_tokens
    eval_s = gen / ref["gen_tokens_per_s"] * scale + ref["engine_start_s"]
    grad_s = sum(a.grad_rows for a in per) * t * n_seeds * tok / ref["grad_tokens_per_s"] * scale
    total = train_s + eval_s + grad_s
    return [
        f"estimated wall time on this machine's CPU: {_hms(total)} (training {_hms(train_s)}, evaluation "
        f"{_hms(eval_s)}, gradients {_hms(grad_s)}); an upper bound, shared states make real runs shorter",
        f"assumptions: {ref['model']} on 2 CPU cores trains {ref['train_tokens_per_s']:.0f} tokens/s (bf16; fp32 "
        f"{ref['fp32_slowdown']}x slower) and generates {ref['gen_tokens_per_s']:.0f} tokens/s in batches, "
        f"engine start {ref['engine_start_s']:.0f} s; {tok} tokens per {kind} row, {new_tokens} new tokens per "
        f"answer; time scales with parameters ({how}: x{scale:.3g}); a GPU is far faster than this",
    ]


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"
