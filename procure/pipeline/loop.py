"""The staged procurement loop (DESIGN.md "Staged procurement"; seeds/000 section 6.3, Remark 4.1).

For every arm (valuation method x seed) and round t, at model state A_{t-1}, :meth:`Runner.round` makes six calls:

1. :meth:`~Runner.candidates`: one dataset per active seller (the same draws for every arm of a seed);
2. :meth:`~Runner.values`: each candidate valued at A_{t-1} (``procure.pipeline.valuing``);
3. :meth:`~Runner.market`: values -> buyer utilities -> prices and a purchase (``procure.pipeline.trading``);
4. :meth:`~Runner.purchase`: A_t = A_{t-1} fine-tuned on the purchase (the state trained during valuation);
5. :meth:`~Runner.evaluation`: A_{t-1} and A_t on the held-out test split;
6. :meth:`~Runner.settlement`: royalties from the measured gain; sellers paid below fair may leave.

Every step is one ledger transaction under an idempotent key (``procure.pipeline.steps``) and model states are
content-addressed (``procure.pipeline.states``), so ``--resume`` after SIGKILL / Ctrl-C redoes only the
unfinished step. All randomness derives from the recipe's seeds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from procure.pipeline import console, trading
from procure.pipeline.protocols import Candidate, Example, Learner, Scenario, World, coalition_key, digest
from procure.pipeline.recipe import Recipe
from procure.pipeline.report import write_report
from procure.pipeline.scenarios import components
from procure.pipeline.states import Clock, States
from procure.pipeline.steps import Steps, derive_seed
from procure.pipeline.valuing import RoundInputs, RoundValues, value_candidates
from procure.valuation.estimate import Budget


@dataclass
class Arm:
    """Where one arm (``method`` x ``seed``) stands: its state, the sellers still in the market, money spent."""

    method: str
    seed: int
    state: str
    active: list[int]
    spent: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.method}-s{self.seed}"


class Runner:
    """Runs a recipe into ``run_dir`` with the scenario of each seed (``scenario_factory(seed)``) and ``learner``.

    Opening refuses a directory that holds a run unless ``resume``, and a resume with another recipe."""

    def __init__(
        self,
        recipe: Recipe,
        run_dir: str | Path,
        *,
        scenario_factory: Callable[[int], Scenario],
        learner: Learner,
        resume: bool = False,
        world: World | None = None,
    ) -> None:
        self.recipe = recipe
        self.world = world or World.detect()
        self.steps = Steps(
            Path(run_dir),
            self.world,
            recipe_json=recipe.canonical_json(),
            recipe_yaml=recipe.model_dump(mode="json"),
            resume=resume,
        )
        self.run_dir = self.steps.run_dir
        self.learner = learner
        self._scenario_factory = scenario_factory
        self._scenarios: dict[int, Scenario] = {}
        self.states = States(self.steps, learner, lambda seed, split: self.scenario(seed).task(split))
        v = recipe.valuation
        self.budget = Budget(exact_max=v.exact_max_candidates, permutations=v.mc_permutations)

    def scenario(self, seed: int) -> Scenario:
        if seed not in self._scenarios:
            self._scenarios[seed] = self._scenario_factory(seed)
        return self._scenarios[seed]

    # -- the run ----------------------------------------------------------------------------------------------
    def run(self) -> Path:
        """Run (or continue) every arm; write report.md at the end. Returns the run directory.

        Order: seeds, then rounds, then methods, so all arms of a seed advance together (round 1 of every arm
        shares A_0 and the candidates, and an interrupted run has comparable rounds for every method)."""
        try:
            try:
                for seed in self.recipe.seeds:
                    self._run_seed(seed)
            finally:
                self.learner.close()
            if self.world.is_main:
                write_report(self.run_dir)
        finally:
            self.steps.close()  # also releases the run directory's lock
        return self.run_dir

    def _root(self, seed: int) -> str:
        """A_0 for this seed: the base model, or the base fine-tuned on the scenario's warm-up rows."""
        base = self.states.base(seed)
        warm = self.scenario(seed).warmup_examples()
        if not warm:
            return base
        node = "warm-" + digest([seed, digest(warm)])
        epochs = getattr(self.recipe.task, "warmup_epochs", None)
        if self.steps.get(f"train|{node}") is None:
            console.status(f"seed {seed}: warm-up stage on {len(warm)} rows (the initial state A_0)")
        self.states.train(node, base, 0, "warmup", warm, derive_seed(seed, "warmup"), epochs=epochs, clock=Clock())
        return node

    def _run_seed(self, seed: int) -> None:
        root = self._root(seed)
        n_sellers = self.scenario(seed).n_sellers
        arms = [Arm(m, seed, root, list(range(n_sellers))) for m in self.recipe.methods]
        test0 = self.states.evaluate(root, "test", seed, Clock())
        for arm in arms:
            self.steps.shared(
                f"metric|{arm.name}|0",
                lambda arm=arm: {"arm": arm.name},
                kind="metric",
                arm=arm.name,
                round=0,
                rows=lambda p, arm=arm: {"metrics": [self._metric_row(arm, 0, root, test0)]},
            )
        rounds = self.recipe.rounds
        bar = console.bar(total=rounds * len(arms), desc=f"seed {seed}", unit="arm-round", enabled=self.recipe.progress)
        for t in range(1, rounds + 1):
            post = {}
            for arm in arms:
                bar.set_description(f"seed {seed} round {t}/{rounds} {arm.method}")
                done = self.steps.sync_get(f"settle|{arm.name}|{t}") or self.round(arm, t)
                arm.state, arm.active, arm.spent = done["state"], done["active"], done["spent"]
                post[arm.method] = f"{done['metric']:.3g}"
                bar.set_postfix(post)
                bar.update(1)
        bar.set_description(f"seed {seed}")
        bar.close()

    # -- one round: six steps ---------------------------------------------------------------------------------
    def round(self, arm: Arm, t: int) -> dict[str, Any]:
        """Round ``t`` of ``arm`` at its state A_{t-1}; returns the settlement (new state, sellers, money)."""
        t0 = time.perf_counter()
        clock = Clock()
        cands = self.candidates(arm, t)
        valued = self.values(arm, t, cands, clock)
        clearing = self.market(arm, t, cands, valued)
        new_state = self.purchase(arm, t, [cands[j] for j in clearing.bought], clock)
        before, after = self.evaluation(arm, new_state, clock)
        return self.settlement(arm, t, cands, clearing, new_state, (before, after), clock, t0)

    def candidates(self, arm: Arm, t: int) -> list[Candidate]:
        """1. The round's datasets of the arm's active sellers (drawn once per seed and round)."""
        scen = self.scenario(arm.seed)
        drawn = self.steps.shared(
            f"cand|s{arm.seed}|{t}",
            lambda: [
                {"seller": c.seller, "examples": c.examples, "noise": c.noise}
                for c in scen.candidates(t, np.random.default_rng(derive_seed(arm.seed, t, "candidates")))
            ],
            kind="candidates",
            round=t,
        )
        cands = [Candidate(c["seller"], c["examples"], c["noise"]) for c in drawn if c["seller"] in arm.active]
        self.steps.shared(
            f"offer|{arm.name}|{t}",
            lambda: {"sellers": [c.seller for c in cands]},
            kind="arrivals",
            arm=arm.name,
            round=t,
            rows=lambda p: {"candidates": [_candidate_row(arm.name, t, c) for c in cands]},
        )
        return cands

    def values(self, arm: Arm, t: int, cands: list[Candidate], clock: Clock) -> dict[str, Any]:
        """2. One value per candidate at the arm's state (``"values"``), recorded with the coalition utilities
        behind it (``"coalitions"``: ``{key: {"node", "utility"}}``)."""
        key = f"value|{arm.name}|{t}"
        got = self.steps.sync_get(key)
        if got is None:
            res = value_candidates(arm.method, cands, self.budget, self._round_inputs(arm, t, cands, clock))
            payload = _value_payload(res)
            got = self.steps.shared(
                key,
                lambda: payload,
                kind="value",
                arm=arm.name,
                round=t,
                rows=lambda p: _value_rows(arm.name, t, cands, p),
            )
        return got

    def market(self, arm: Arm, t: int, cands: list[Candidate], valued: dict[str, Any]) -> trading.Clearing:
        """3. Prices and the purchase within the round's budget (fairshare or royalty); sellers arrive in a
        seeded random order, so ties favour no seller."""
        spec = self.recipe.market

        def clear() -> dict[str, Any]:
            return trading.clear(
                np.asarray(valued["values"], dtype=np.float64),
                spec,
                [bool(c.examples) for c in cands],
                rng=np.random.default_rng(derive_seed(arm.seed, t, arm.name, "arrival")),
                sellers=[c.seller for c in cands],
                measured={k: c["utility"] for k, c in valued["coalitions"].items()},
            ).to_dict()

        cleared = self.steps.shared(
            f"market|{arm.name}|{t}",
            clear,
            kind="market",
            arm=arm.name,
            round=t,
            rows=lambda p: _market_rows(arm.name, t, cands, p, spec.contract),
        )
        return trading.Clearing(**cleared)

    def purchase(self, arm: Arm, t: int, bought: list[Candidate], clock: Clock) -> str:
        """4. A_t: the arm's state fine-tuned on the bought datasets (reused when valuation trained it)."""
        return self.states.child(arm.state, t, bought, arm.seed, clock)

    def evaluation(self, arm: Arm, new_state: str, clock: Clock) -> tuple[dict[str, float], dict[str, float]]:
        """5. ``{"metric", "utility"}`` of A_{t-1} and A_t on the held-out test split."""
        return (
            self.states.evaluate(arm.state, "test", arm.seed, clock),
            self.states.evaluate(new_state, "test", arm.seed, clock),
        )

    def settlement(
        self,
        arm: Arm,
        t: int,
        cands: list[Candidate],
        clearing: trading.Clearing,
        new_state: str,
        evals: tuple[dict[str, float], dict[str, float]],
        clock: Clock,
        t0: float,
    ) -> dict[str, Any]:
        """6. Royalties from the measured test gain, sellers' stay-or-leave draws, the round's metric row."""
        before, after = evals
        gain = after["utility"] - before["utility"]
        spec = self.recipe.market

        def settle() -> dict[str, Any]:
            rng = np.random.default_rng(derive_seed(arm.seed, t, arm.name, "settle"))
            royalties, stays = trading.settle(clearing, gain, spec, rng)
            left = {cands[r["candidate"]].seller for r in stays if not r["stays"]}
            return {
                "state": new_state,
                "active": [s for s in arm.active if s not in left],
                "spent": arm.spent + float(sum(clearing.upfront)) + float(sum(royalties)),
                "metric": after["metric"],
                "utility": after["utility"],
                "gain": gain,
                "royalties": royalties,
                "stays": stays,
                "bought_sellers": [cands[j].seller for j in clearing.bought],
            }

        def rows(p: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
            phases = {"train": clock.train, "eval": clock.eval, "value": clock.value}
            phases["total"] = time.perf_counter() - t0
            return {
                **_settle_rows(arm.name, t, cands, clearing, p, spec.contract),
                "metrics": [self._metric_row(arm, t, new_state, after, p["spent"])],
                "timings": [{"arm": arm.name, "round": t, "phase": k, "seconds": s} for k, s in phases.items()],
            }

        return self.steps.shared(f"settle|{arm.name}|{t}", settle, kind="settle", arm=arm.name, round=t, rows=rows)

    # -- helpers ----------------------------------------------------------------------------------------------
    def _round_inputs(self, arm: Arm, t: int, cands: list[Candidate], clock: Clock) -> RoundInputs:
        """What step 2 needs from the run: coalition states and utilities, the reference rows, gradients."""
        scen = self.scenario(arm.seed)

        def utility(members: list[Candidate]) -> tuple[str, float]:
            node = self.states.child(arm.state, t, members, arm.seed, clock)
            return node, self.states.evaluate(node, "val", arm.seed, clock)["utility"]

        def grads(rows: list[Example]) -> tuple[dict, dict]:
            s0 = time.perf_counter()
            out = self.learner.grads(
                self.states.adapter_path(arm.state), rows, scen.reference_examples(), derive_seed(arm.seed, t, "grads")
            )
            clock.value += time.perf_counter() - s0
            return out

        def test_utility(members: list[Candidate]) -> float:
            node = self.states.child(arm.state, t, members, arm.seed, clock)
            return self.states.evaluate(node, "test", arm.seed, clock)["utility"]

        return RoundInputs(
            test_utility=test_utility,
            utility=utility,
            prepare=lambda coalitions: self._prepare(arm, t, coalitions, clock),
            reference=scen.reference_examples,
            grads=grads,
            seed=lambda tag: derive_seed(arm.seed, t, tag),
            bm25_idf=self.recipe.valuation.bm25_idf,
            datainf_blocks=self.recipe.valuation.datainf_blocks,
        )

    def _prepare(self, arm: Arm, t: int, coalitions: list[list[Candidate]], clock: Clock) -> None:
        """Train (sharded over processes) and evaluate every coalition the estimator will ask for."""
        bar = console.bar(
            coalitions, desc=f"  round {t} coalitions", unit="coal", enabled=self.recipe.progress, leave=False
        )
        for k, members in enumerate(bar):
            bar.set_postfix(S=coalition_key([c.seller for c in members]))
            if k % self.world.size == self.world.index:
                node = self.states.child(arm.state, t, members, arm.seed, clock, sync=False)
                self.states.evaluate(node, "val", arm.seed, clock, sync=False)
        bar.close()
        self.world.barrier()

    def _metric_row(
        self, arm: Arm, t: int, node: str, ev: dict[str, float], spent: float | None = None
    ) -> dict[str, Any]:
        task = self.scenario(arm.seed).task("test")
        return {
            "arm": arm.name,
            "round": t,
            "split": "test",
            "metric_name": task.metric_name,
            "metric": ev["metric"],
            "utility": ev["utility"],
            "node": node,
            "spent": arm.spent if spent is None else spent,
        }


# -- ledger rows of a round ---------------------------------------------------------------------------------------
def _candidate_row(arm: str, t: int, c: Candidate) -> dict[str, Any]:
    return {
        "arm": arm,
        "round": t,
        "seller": c.seller,
        "n_rows": len(c.examples),
        "noise": c.noise,
        "digest": c.digest(),
    }


def _value_payload(res: RoundValues) -> dict[str, Any]:
    val = res.valuation
    return {
        "values": [float(x) for x in val.values],
        "stderr": None if val.exact else [float(x) for x in val.stderr],
        "estimator": val.estimator,
        "coalitions": res.coalitions,
    }


def _value_rows(arm: str, t: int, cands: list[Candidate], p: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    stderr = p["stderr"]
    return {
        "valuations": [
            {
                "arm": arm,
                "round": t,
                "seller": c.seller,
                "method": p["estimator"],
                "value": p["values"][i],
                "stderr": None if stderr is None else stderr[i],
            }
            for i, c in enumerate(cands)
        ],
        "coalitions": [
            {"arm": arm, "round": t, "coalition": k, "node": c["node"], "utility": c["utility"]}
            for k, c in sorted(p["coalitions"].items())
        ],
    }


def _market_rows(arm: str, t: int, cands: list[Candidate], p: dict[str, Any], contract: str) -> dict[str, list]:
    def row(j: int, **kw: Any) -> dict[str, Any]:
        return {"arm": arm, "round": t, "seller": cands[j].seller, **kw}

    return {
        "offers": [row(j, utility=p["utilities"][j], price=p["prices"][j], rate=p["rates"][j]) for j in p["offered"]],
        "purchases": [row(j, price=p["prices"][j], rate=p["rates"][j]) for j in p["bought"]],
        "payments": [
            row(j, kind="upfront", amount=p["upfront"][j])
            for j in p["bought"]
            if contract == "fairshare" or p["upfront"][j]
        ],
    }


def _settle_rows(
    arm: str, t: int, cands: list[Candidate], clearing: trading.Clearing, p: dict[str, Any], contract: str
) -> dict[str, list[dict[str, Any]]]:
    def row(j: int, **kw: Any) -> dict[str, Any]:
        return {"arm": arm, "round": t, "seller": cands[j].seller, **kw}

    royalties = [row(j, kind="royalty", amount=p["royalties"][j]) for j in clearing.bought if contract == "royalty"]
    sellers = [
        row(r["candidate"], paid=r["paid"], fair=r["fair"], stay_prob=r["stay_prob"], stays=r["stays"])
        for r in p["stays"]
    ]
    return {"payments": royalties, "sellers": sellers}


def run_recipe(
    recipe: Recipe,
    run_dir: str | Path,
    *,
    resume: bool = False,
    scenario_factory: Callable[[int], Scenario] | None = None,
    learner: Learner | None = None,
    world: World | None = None,
) -> Path:
    """Run a recipe end to end into ``run_dir`` (see :class:`Runner`). The scenario factory and the learner
    default to the recipe's (``procure.pipeline.scenarios.components``), built before the run directory is
    touched, so a recipe whose model or task cannot be set up leaves nothing behind."""
    if scenario_factory is None or learner is None:
        default_factory, default_learner = components(recipe, need_learner=learner is None)
        scenario_factory = scenario_factory or default_factory
        learner = learner or default_learner
    return Runner(recipe, run_dir, resume=resume, scenario_factory=scenario_factory, learner=learner, world=world).run()
