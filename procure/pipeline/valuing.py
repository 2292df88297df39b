"""Step 2 of a round: the value of each candidate at the current state A_{t-1}, through ``procure.valuation.estimate``.

Retraining methods (``ads``, ``loo``) value sellers by coalition fine-tunes: ``v(S) = u(A(S; A_{t-1}))``, the
task utility on the validation split of A_{t-1} fine-tuned on the union of S (``v(∅)`` = A_{t-1} itself;
seeds/000 Eq. 10, Remark 4.1). Which coalitions the estimator will ask for is planned first (a dry run), so the
caller can train them all up front (sharded over processes). Per-sample methods (``bm25``, ``infl_ip``,
``datainf``, ``constant``, ``random``) value every row and sum per seller. Knows nothing of the ledger: the
caller supplies the coalition utility, the gradients and the reference set.

Two reference arms bound what a valuation can achieve in simulations: ``noise_oracle`` values a seller by its
known clean share, ``1 - noise`` (a perfect valuation of data quality), and ``hindsight`` by the held-out TEST
gain of A_{t-1} fine-tuned on that seller alone, ``u_test(A({j}; A_{t-1})) - u_test(A_{t-1})`` (the best single
purchase in hindsight; those singletons are the states ADS trains anyway). Neither is available to a real buyer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from procure.pipeline.protocols import Candidate, Example, coalition_key
from procure.valuation.estimate import Budget, GradData, TextData, Valuation, estimate, plan
from procure.valuation.influence import per_dataset

#: methods whose value of a candidate needs coalition fine-tunes (v(S) = utility after training on S)
RETRAIN_METHODS = frozenset({"ads", "loo"})
#: methods that need per-sample LoRA gradients at the current state
GRADIENT_METHODS = frozenset({"infl_ip", "datainf"})


@dataclass
class RoundValues:
    """One value per candidate (``valuation.values``, utility units) and, for retraining methods, the states
    behind the coalition utilities: ``coalitions[key] = {"node": state, "utility": v(S)}``."""

    valuation: Valuation
    coalitions: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class RoundInputs:
    """What valuing needs from the rest of the run, as callables so that it knows nothing of the ledger.

    ``utility(members) -> (state, v(S))``; ``prepare(coalitions)`` trains/evaluates them up front;
    ``reference()`` the buyer's representative rows; ``grads(rows) -> (per-sample grads, mean reference grad)``;
    ``seed(tag)`` a seed for the tagged random draw (``"mc"``, ``"random"``); ``test_utility(members)`` the
    held-out test utility of A(S; A_{t-1}) (the ``hindsight`` reference arm only); ``bm25_idf`` the BM25 idf
    mode, ``datainf_blocks`` DataInf's blocks."""

    utility: Callable[[list[Candidate]], tuple[str, float]]
    prepare: Callable[[list[list[Candidate]]], None]
    reference: Callable[[], list[Example]]
    grads: Callable[[list[Example]], tuple[dict, dict]]
    seed: Callable[[str], int]
    test_utility: Callable[[list[Candidate]], float] | None = None
    bm25_idf: str = "okapi"
    datainf_blocks: str = "param"


def value_candidates(method: str, cands: list[Candidate], budget: Budget, io: RoundInputs) -> RoundValues:
    """Values of the round's candidates by ``method`` (module docstring); zeros for an empty round."""
    if not cands:
        return RoundValues(_constant_valuation(method, np.zeros(0)))
    if method in RETRAIN_METHODS:
        return _by_coalitions(method, cands, budget, io)
    if method == "noise_oracle":
        if any(c.noise is None for c in cands):
            raise ValueError("noise_oracle needs candidates with a known noise share (a simulation)")
        return RoundValues(_constant_valuation(method, np.array([1.0 - c.noise for c in cands])))
    if method == "hindsight":
        if io.test_utility is None:
            raise ValueError("hindsight needs the test utility of single-seller fine-tunes")
        base = io.test_utility([])
        gains = [io.test_utility([c]) - base if c.examples else 0.0 for c in cands]
        return RoundValues(_constant_valuation(method, np.array(gains)))
    return RoundValues(_by_rows(method, cands, io))


def _by_coalitions(method: str, cands: list[Candidate], budget: Budget, io: RoundInputs) -> RoundValues:
    groups = [list(range(len(cands)))]
    seed = io.seed("mc")
    coalitions: dict[str, dict[str, Any]] = {}

    def v(S: frozenset[int]) -> float:
        members = [cands[i] for i in sorted(S)]
        node, u = io.utility(members)
        coalitions[coalition_key([c.seller for c in members])] = {"node": node, "utility": u}
        return u

    io.prepare([[cands[i] for i in sorted(S)] for S in plan(method, groups, budget, seed=seed) if S])
    return RoundValues(estimate(method, v, groups, budget, seed=seed), coalitions)


def _by_rows(method: str, cands: list[Candidate], io: RoundInputs) -> Valuation:
    rows = [e for c in cands for e in c.examples]
    if not rows:
        return _constant_valuation(method, np.zeros(len(cands)))
    if method in GRADIENT_METHODS:
        g, vg = io.grads(rows)
        per = estimate(method, GradData(g, vg, blocks=io.datainf_blocks))
    elif method == "bm25":
        texts, reference = [_text(e) for e in rows], [_text(e) for e in io.reference()]
        per = estimate(method, TextData(texts, reference, idf=io.bm25_idf))
    else:
        per = estimate(method, len(rows), seed=io.seed("random"))
    groups, k = [], 0
    for c in cands:
        groups.append(list(range(k, k + len(c.examples))))
        k += len(c.examples)
    return _constant_valuation(method, per_dataset(per.values, groups), note=f"{per.note}, summed per seller")


def _constant_valuation(method: str, values: np.ndarray, note: str = "") -> Valuation:
    return Valuation(np.asarray(values, dtype=np.float64), np.zeros(len(values)), method, method, True, note=note)


def _text(e: Example) -> str:
    return " ".join(str(e.get(k, "")) for k in ("prompt", "answer"))
