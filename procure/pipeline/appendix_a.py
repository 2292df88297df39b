"""seeds/004 appendix A on a CPU scale: the per-sample QA market, one buyer per valuation method.

As seeds/004 section 6.1 describes (deviations in :class:`AppendixA`'s field notes and the README):

1. One shuffled multiple-choice source is split into ``n_shot`` demonstrations, a representative set of
   ``reference_size`` rows (the buyer's validation data: BM25 queries, the mean gradient), a test set and a
   training pool. ``existing_share`` of the pool (at least one row) is the market's existing data, priced
   uniformly in (0, 1]; every other pool row is an offer. A share ``noise_share`` of the pool gets a wrong answer
   letter (0 in the paper; > 0 lets the values be scored against known-bad rows).
2. Each method values every pool row at the base model with a fresh LoRA (the buyer's state before buying);
   values are min-max scaled to [0, 1] over the pool (constant: all 1).
3. Each method's buyer meets every offer on its own: Eq. 2 at the price grid, Eq. 4 for the seller
   (:func:`procure.market.persample.clear_per_sample`).
4. Each buyer fine-tunes a fresh LoRA on the first K (then 2K, ...) of a seeded shuffle of its purchases and
   is scored k-shot on the test set by answer-letter likelihood (accuracy, balanced accuracy and the answer's
   negative log-likelihood); cost = the prices of the rows trained on.

Resumable: values, adapters and scores are kept in the output folder and reused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from procure.cache import write_file_atomically, write_json_atomically
from procure.llm.train import TrainConfig

PerSampleMethod = Literal["constant", "random", "bm25", "infl_ip", "datainf", "noise_oracle"]


class AppendixA(BaseModel):
    """One run of the per-sample market (module docstring). Sizes are rows."""

    model_config = ConfigDict(extra="forbid")

    model: str = "smollm2-135m"
    data: str = Field("bigbench:elementary_math_qa", description="multiple-choice source (procure.tasks.qa)")
    seed: int = 0
    methods: list[PerSampleMethod] = Field(default_factory=lambda: ["constant", "random", "bm25", "infl_ip", "datainf"])
    reference_size: int = Field(200, ge=1, description="representative set (seeds/004: 200 validation rows)")
    test_size: int = Field(200, ge=1, description="test questions (seeds/004: the whole MathQA test split)")
    n_shot: int = Field(5, ge=0, description="demonstrations in the test prompts (seeds/004: 5-shot MathQA)")
    pool_size: int = Field(1000, ge=2, description="training rows in the market (seeds/004: the training split)")
    existing_share: float = Field(0.01, gt=0, lt=1, description="pool share listed before the offers (1 %)")
    noise_share: float = Field(0.0, ge=0, le=1, description="pool share with a wrong answer letter (paper: 0)")
    budget_fraction: float = Field(
        1.0,
        gt=0,
        description="buyer's budget b in Eq. 2 as a share of (the existing rows' total price + the top grid "
        "price); the paper gives none. At 1 the budget never binds and the buyer pays up to a row's value; "
        "below 1 offers compete with the existing rows for the budget",
    )
    price_grid: list[float] = Field(default_factory=lambda: [0.5, 0.625, 0.75, 0.875, 1.0], min_length=1)
    sizes: list[int] = Field(default_factory=lambda: [100, 200], min_length=1, description="K, 2K rows trained on")
    training: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=3, lr=1e-3, batch_size=8))
    projection_dim: int | None = Field(None, ge=1)
    grad_batch_size: int = Field(16, ge=1)
    bm25_idf: Literal["okapi", "clamp"] = "okapi"
    progress: bool = True


def run_appendix_a(cfg: AppendixA, out: Path) -> dict[str, Any]:
    """Run (or resume) ``cfg`` in folder ``out``; returns the summary dict (also ``out/summary.json``)."""
    from procure.errors import UserError
    from procure.pipeline import console

    out.mkdir(parents=True, exist_ok=True)
    state = _load_state(out)
    made = cfg.model_dump(mode="json", exclude={"progress"})
    if state.setdefault("config", made) != made:
        raise UserError(f"appendix A: {out} holds a run with another configuration; give another output folder")
    market = _market_data(cfg)
    console.status(
        f"appendix A: {len(market['existing'])} existing rows, {len(market['offers'])} offers, "
        f"{len(cfg.methods)} buyers, test {cfg.test_size} x {cfg.n_shot}-shot"
    )
    values = _values(cfg, market, state, out)
    try:
        results = {m: _buyer(cfg, market, np.asarray(values[m]), m, state, out) for m in cfg.methods}
    finally:
        if market.get("generator") is not None:
            market["generator"].close()
    base = state["scores"]["base"]["accuracy"]
    summary = {"config": cfg.model_dump(mode="json"), "base_accuracy": base, "methods": results}
    write_json_atomically(out / "summary.json", summary)
    return summary


def _load_state(out: Path) -> dict[str, Any]:
    path = out / "state.json"
    return json.loads(path.read_text()) if path.is_file() else {"values": {}, "scores": {}}


def _save_state(out: Path, state: dict[str, Any]) -> None:
    write_file_atomically(out / "state.json", json.dumps(state).encode())


def _market_data(cfg: AppendixA) -> dict[str, Any]:
    """Splits, noisy letters, existing rows and their prices: all from ``cfg.seed``."""
    from procure.errors import UserError
    from procure.tasks.qa import QAEval, load_qa, make_candidates, qa_rows, split_examples

    examples = load_qa(cfg.data)
    need = cfg.n_shot + cfg.reference_size + cfg.test_size + cfg.pool_size
    if need > len(examples):
        raise UserError(
            f"appendix A: needs {need} rows (shots + reference + test + pool), '{cfg.data}' has {len(examples)}; "
            "lower pool_size or test_size"
        )
    shots, ref, test, pool = split_examples(
        examples, [cfg.n_shot, cfg.reference_size, cfg.test_size, cfg.pool_size], seed=cfg.seed
    )
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 11]))
    rows = make_candidates(pool, 1, cfg.pool_size, (cfg.noise_share,), rng)[0]
    n_exist = max(1, int(round(cfg.existing_share * cfg.pool_size)))
    prices = 1.0 - rng.uniform(0.0, 1.0, n_exist)  # uniform on (0, 1]
    return {
        "rows": rows,
        "noisy": np.array([r["noisy"] for r in rows]),
        "existing": np.arange(n_exist),
        "offers": np.arange(n_exist, cfg.pool_size),
        "existing_prices": prices,
        "reference": qa_rows(ref),
        "test": QAEval(test, shots, name="qa-test"),
    }


def _values(cfg: AppendixA, market: dict[str, Any], state: dict[str, Any], out: Path) -> dict[str, list[float]]:
    """Every method's raw values of every pool row (cached in the state)."""
    from procure.pipeline import console
    from procure.valuation.estimate import GradData, TextData, estimate

    rows, grads = market["rows"], None
    for m in cfg.methods:
        if m in state["values"]:
            continue
        console.status(f"appendix A: valuing {len(rows)} rows with {m}")
        if m in ("infl_ip", "datainf"):
            grads = grads or _gradients(cfg, rows, market["reference"])
            v = estimate(m, GradData(*grads)).values
        elif m == "bm25":
            texts = [f"{r['prompt']} {r['answer']}" for r in rows]
            ref = [f"{r['prompt']} {r['answer']}" for r in market["reference"]]
            v = estimate(m, TextData(texts, ref, idf=cfg.bm25_idf)).values
        elif m == "noise_oracle":  # the reference buyer: knows which rows are wrong
            v = 1.0 - market["noisy"].astype(float)
        else:
            v = estimate(m, len(rows), seed=cfg.seed).values
        state["values"][m] = [float(x) for x in v]
        _save_state(out, state)
    return state["values"]


def _gradients(cfg: AppendixA, rows: list[dict], reference: list[dict]) -> tuple[dict, dict]:
    from procure.llm.grad_store import GradientStore, LoraSpec
    from procure.llm.models import load_tokenizer, resolve_model

    path = resolve_model(cfg.model)
    t = cfg.training
    store = GradientStore(
        str(path),
        load_tokenizer(path),
        LoraSpec.of(t, seed=cfg.seed),
        max_length=t.max_length,
        batch_size=cfg.grad_batch_size,
        projection_dim=cfg.projection_dim,
        progress=cfg.progress,
    )
    return store.per_sample(None, rows, "pool gradients"), store.mean(None, reference, "reference gradients")


def _buyer(
    cfg: AppendixA, market: dict[str, Any], raw: np.ndarray, method: str, state: dict[str, Any], out: Path
) -> dict[str, Any]:
    """One method's purchases, prices and the accuracy after training on K, 2K, ... of them."""
    from procure.market.persample import clear_per_sample, minmax01
    from procure.valuation.quality import auc

    v = minmax01(raw)
    ex, off = market["existing"], market["offers"]
    budget = cfg.budget_fraction * (float(np.sum(market["existing_prices"])) + max(cfg.price_grid))
    res = clear_per_sample(v[off], v[ex], market["existing_prices"], budget, cfg.price_grid)
    bought = off[res.sold]
    price = dict(zip(off.tolist(), res.price.tolist()))
    order = np.random.default_rng(np.random.SeedSequence([cfg.seed, 13])).permutation(bought)
    points = [{"size": 0, "n": 0, "cost": 0.0, **_scores(cfg, market, None, state, out, "base")}]
    for k in cfg.sizes:
        pick = order[:k].tolist()
        scores = _scores(cfg, market, [market["rows"][i] for i in pick], state, out, f"{method}-{k}")
        points.append({"size": k, "n": len(pick), "cost": float(sum(price[i] for i in pick)), **scores})
    noisy = market["noisy"]
    return {
        "offers": int(len(off)),
        "bought": int(res.sold.sum()),
        "mean_price": res.mean_price,
        "spent_all": float(np.nansum(res.price)),
        "bought_noisy_share": float(noisy[bought].mean()) if len(bought) else float("nan"),
        "auc_clean_vs_noisy": auc(raw, ~noisy),
        "points": points,
    }


def _scores(
    cfg: AppendixA, market: dict[str, Any], rows: list[dict] | None, state: dict[str, Any], out: Path, key: str
) -> dict[str, float]:
    """Test scores (answer-letter likelihood, k-shot; :meth:`procure.tasks.qa.QAEval.letter_scores`: accuracy,
    balanced accuracy, nll) of a fresh LoRA trained on ``rows`` (None: the base). Folders from before
    ``state["scores"]`` (their ``evals`` held the accuracy alone) are rescored from their kept adapters."""
    scores = state.setdefault("scores", {})
    if key in scores:
        return scores[key]
    from procure.pipeline import console

    adapter = None if not rows else _train(cfg, rows, out / "adapters" / key)
    console.status(f"appendix A: scoring {key} on {len(market['test'].examples)} test questions")
    task = market["test"]
    if market.get("generator") is None:  # one HF model for all scores of the run
        from procure.llm.hf_backend import HFGenerator
        from procure.llm.models import resolve_model

        market["generator"] = HFGenerator(resolve_model(cfg.model), adapter_mode="merged")
    lp = market["generator"].choice_logprobs(task.eval_prompts(), task.choices(), adapter, system=task.system)
    scores[key] = task.letter_scores(lp)
    _save_state(out, state)
    return scores[key]


def _train(cfg: AppendixA, rows: list[dict], dest: Path) -> Path:
    if (dest / "adapter_config.json").is_file():
        return dest
    from procure.llm.models import resolve_model
    from procure.llm.train import StageTrainer
    from procure.pipeline import console

    console.status(f"appendix A: training {dest.name} on {len(rows)} rows")
    trainer = StageTrainer(resolve_model(cfg.model), cfg.training.model_copy(update={"seed": cfg.seed}))
    trainer.train(rows, dest, progress=cfg.progress)
    return dest
