"""The staged procurement loop (DESIGN.md "Staged procurement"; seeds/000 section 6.3, Remark 4.1).

For every arm (valuation method x seed) and round t, at model state A_{t-1}:

1. candidates arrive (one dataset per active seller; the same draws for every arm of a seed);
2. each candidate is valued at A_{t-1}: ADS / LOO from coalition fine-tunes, with
   v(S) = task utility on the validation split of A_{t-1} fine-tuned on the union of S (v(∅) = A_{t-1});
   or per-sample BM25 / Infl_IP / DataInf / constant / random values summed per seller;
3. values -> buyer utilities -> ``procure.market.round.clear_round`` (fairshare or royalty) -> purchase;
4. A_t = the state already trained for the purchased coalition (trained now if valuation did not need it);
5. A_t is evaluated on the held-out test split;
6. sellers are paid (royalties from the measured test gain) and those paid less than fair may leave.

States are content-addressed nodes: node(parent, round, coalition, data digest). A coalition is trained
at most once per state (and shared between arms that reach the same state), its adapter is written
atomically, and every step is one ledger transaction, so ``--resume`` after SIGKILL / Ctrl-C redoes only
the unfinished step. All randomness derives from the recipe's seeds (``numpy.random.SeedSequence``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import yaml
from tqdm.auto import tqdm

from procure.cache import build_once
from procure.errors import UserError
from procure.pipeline import trading
from procure.pipeline.ledger import Ledger
from procure.pipeline.recipe import GRADIENT_METHODS, RETRAIN_METHODS, Recipe
from procure.tasks.base import Task

Example = dict[str, str]


@dataclass(frozen=True)
class Candidate:
    """One seller's dataset in one round. ``noise`` is the known corrupted share in simulations (else None)."""

    seller: int
    examples: list[Example]
    noise: float | None = None

    def digest(self) -> str:
        return _digest(self.examples)


class Scenario(Protocol):
    """Where data and evaluation come from, for one seed."""

    n_sellers: int

    def warmup_examples(self) -> list[Example]: ...

    def candidates(self, round: int, rng: np.random.Generator) -> list[Candidate]:
        """All sellers' datasets of a round (index = seller id); the loop drops sellers that left."""
        ...

    def reference_examples(self) -> list[Example]:
        """The buyer's representative set (BM25 queries, validation gradient of the influence methods)."""
        ...

    def task(self, split: str) -> Task: ...


class Learner(Protocol):
    """A model that can be fine-tuned in stages; states are adapter folders (None = the base model)."""

    def train(
        self, state: Path | None, examples: list[Example], out_dir: Path, seed: int, epochs: float | None = None
    ) -> dict[str, Any]:
        """Fine-tune ``state`` on ``examples``, write the new adapter into ``out_dir``; return
        ``{"n_tokens": int, "final_loss": float}``."""
        ...

    def evaluate(self, state: Path | None, task: Task, seed: int) -> float:
        """The task metric of ``state`` (``task.score`` of its generations)."""
        ...

    def grads(
        self, state: Path | None, examples: list[Example], reference: list[Example], seed: int
    ) -> tuple[dict, dict]:
        """Per-sample LoRA gradients of ``examples`` and the mean gradient of ``reference`` at ``state``."""
        ...

    def close(self) -> None: ...


@dataclass
class World:
    """Process group for sharding coalition trainings (accelerate); a single process by default."""

    index: int = 0
    size: int = 1
    barrier: Callable[[], None] = field(default=lambda: None)

    @property
    def is_main(self) -> bool:
        return self.index == 0

    @classmethod
    def detect(cls) -> World:
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        import torch
        from accelerate import PartialState

        st = PartialState(cpu=not torch.cuda.is_available())  # gloo on a CPU-only machine
        return cls(st.process_index, st.num_processes, st.wait_for_everyone)


@dataclass
class _Clock:
    train: float = 0.0
    eval: float = 0.0
    value: float = 0.0


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _seed(*parts: int | str) -> int:
    """A 32-bit seed derived from the parts (strings hashed), stable across runs and platforms."""
    ints = [p if isinstance(p, int) else int(hashlib.sha256(p.encode()).hexdigest()[:8], 16) for p in parts]
    return int(np.random.SeedSequence([abs(i) for i in ints]).generate_state(1)[0])


def coalition_key(sellers: Sequence[int]) -> str:
    return "+".join(str(s) for s in sorted(sellers)) or "-"


class Runner:
    """Runs a recipe into ``run_dir``. ``scenario_factory(seed)`` and ``learner`` default to the recipe's."""

    def __init__(
        self,
        recipe: Recipe,
        run_dir: str | Path,
        *,
        resume: bool = False,
        scenario_factory: Callable[[int], Scenario] | None = None,
        learner: Learner | None = None,
        world: World | None = None,
    ) -> None:
        self.recipe = recipe
        self.run_dir = Path(run_dir)
        self.world = world or World.detect()
        ledger_path = self.run_dir / "ledger.sqlite"
        if self.world.is_main:
            if ledger_path.exists() and not resume:
                raise UserError(
                    f"--out {self.run_dir} already holds a run; pass --resume to continue it or choose another --out"
                )
            self.ledger = Ledger.open(ledger_path)
            stored = self.ledger.get_meta("recipe")
            if stored is None:
                self.ledger.set_meta("recipe", recipe.canonical_json())
                text = yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
                (self.run_dir / "recipe.yaml").write_text(text)
            elif json.loads(stored) != json.loads(recipe.canonical_json()):
                self.ledger.close()
                raise UserError(
                    f"recipe differs from the one {self.run_dir} was started with; resume with the same recipe "
                    f"(copy in {self.run_dir / 'recipe.yaml'}) or choose another --out"
                )
        self.world.barrier()
        if not self.world.is_main:
            self.ledger = Ledger.open(ledger_path)
        self._scenario_factory = scenario_factory
        self._learner = learner
        self._scenarios: dict[int, Scenario] = {}
        self.progress = recipe.progress

    # -- components -------------------------------------------------------------------------------------------
    @property
    def learner(self) -> Learner:
        if self._learner is None:
            from procure.pipeline.backends import make_learner

            self._learner = make_learner(self.recipe)
        return self._learner

    def scenario(self, seed: int) -> Scenario:
        if seed not in self._scenarios:
            if self._scenario_factory is not None:
                self._scenarios[seed] = self._scenario_factory(seed)
            else:
                from procure.pipeline.scenarios import make_scenario

                scen, learner = make_scenario(self.recipe, seed)
                if learner is not None and self._learner is None:
                    self._learner = learner
                self._scenarios[seed] = scen
        return self._scenarios[seed]

    def adapter_path(self, node: str) -> Path | None:
        row = self.ledger.get(f"train|{node}")
        if row is None:
            raise RuntimeError(f"state {node} has not been trained")
        return None if row["adapter"] is None else self.run_dir / row["adapter"]

    # -- the run ----------------------------------------------------------------------------------------------
    def run(self) -> Path:
        """Run (or continue) every arm; write report.md at the end. Returns the run directory.

        Order: seeds, then rounds, then methods, so all arms of a seed advance together (round 1 of every arm
        shares A_0 and the candidates, and an interrupted run has comparable rounds for every method)."""
        try:
            for seed in self.recipe.seeds:
                self._run_seed(seed)
        finally:
            if self._learner is not None:
                self._learner.close()
        if self.world.is_main:
            from procure.pipeline.report import write_report

            write_report(self.run_dir)
        self.ledger.close()
        return self.run_dir

    def _root(self, seed: int) -> str:
        """A_0 for this seed: the base model, or the base fine-tuned on the scenario's warm-up rows."""
        base = f"base-s{seed}"
        self._record_node(base, parent=None, round=0, coalition="-", n_rows=0, adapter=None, meta={})
        warm = self.scenario(seed).warmup_examples()
        if not warm:
            return base
        node = "warm-" + _digest([seed, _digest(warm)])
        spec = self.recipe.task
        epochs = getattr(spec, "warmup_epochs", None)
        self._train(node, base, 0, "warmup", warm, _seed(seed, "warmup"), epochs=epochs, clock=_Clock())
        return node

    def _run_seed(self, seed: int) -> None:
        root = self._root(seed)
        scen = self.scenario(seed)
        methods = self.recipe.methods
        # per arm: (state, active sellers, money spent so far)
        at: dict[str, tuple[str, list[int], float]] = {}
        test0 = self._evaluate(root, "test", seed, _Clock())
        for method in methods:
            arm = f"{method}-s{seed}"
            at[arm] = (root, list(range(scen.n_sellers)), 0.0)
            self._shared(
                f"metric|{arm}|0",
                lambda arm=arm: {"arm": arm},
                kind="metric",
                arm=arm,
                round=0,
                rows=lambda p, arm=arm: {"metrics": [self._metric_row(arm, 0, root, test0, 0.0, seed)]},
            )
        bar = tqdm(range(1, self.recipe.rounds + 1), desc=f"seed {seed}", unit="round", disable=not self.progress)
        for t in bar:
            post = {}
            for method in methods:
                arm = f"{method}-s{seed}"
                state, active, spent = at[arm]
                done = self._sync_get(f"settle|{arm}|{t}")
                if done is None:
                    done = self._round(method, seed, arm, t, state, active, spent)
                at[arm] = (done["state"], done["active"], done["spent"])
                post[method] = f"{done['metric']:.3g}"
            bar.set_postfix(post)
        bar.close()

    # -- one round --------------------------------------------------------------------------------------------
    def _round(
        self, method: str, seed: int, arm: str, t: int, state: str, active: list[int], spent: float
    ) -> dict[str, Any]:
        t0 = time.perf_counter()
        clock = _Clock()
        scen = self.scenario(seed)
        spec = self.recipe
        # 1. candidates (same draw for every arm of this seed)
        cands_all = self._shared(
            f"cand|s{seed}|{t}",
            lambda: [
                {"seller": c.seller, "examples": c.examples, "noise": c.noise}
                for c in scen.candidates(t, np.random.default_rng(_seed(seed, t, "candidates")))
            ],
            kind="candidates",
            round=t,
        )
        cands = [Candidate(c["seller"], c["examples"], c["noise"]) for c in cands_all if c["seller"] in active]
        self._shared(
            f"offer|{arm}|{t}",
            lambda: {"sellers": [c.seller for c in cands]},
            kind="arrivals",
            arm=arm,
            round=t,
            rows=lambda p: {
                "candidates": [
                    {
                        "arm": arm,
                        "round": t,
                        "seller": c.seller,
                        "n_rows": len(c.examples),
                        "noise": c.noise,
                        "digest": c.digest(),
                    }
                    for c in cands
                ]
            },
        )
        # 2. values at A_{t-1}
        valued = self._value(method, seed, arm, t, state, cands, clock)
        values = np.asarray(valued["values"], dtype=np.float64)
        # 3. market
        clearing_d = self._shared(
            f"market|{arm}|{t}",
            lambda: trading.clear(values, spec.market, [bool(c.examples) for c in cands]).to_dict(),
            kind="market",
            arm=arm,
            round=t,
            rows=lambda p: self._market_rows(arm, t, cands, p),
        )
        clearing = trading.Clearing(**clearing_d)
        bought = [cands[j].seller for j in clearing.bought]
        # 4. A_t = A_{t-1} fine-tuned on the purchase (reused from valuation when trained there)
        new_state = self._node_for(state, t, [cands[j] for j in clearing.bought], seed, clock)
        # 5. evaluate A_t on the held-out test split
        before = self._evaluate(state, "test", seed, clock)
        after = self._evaluate(new_state, "test", seed, clock)
        # 6. royalties from the measured gain, sellers stay or leave
        paid_now = float(sum(clearing.upfront))
        gain = after["utility"] - before["utility"]

        def settle() -> dict[str, Any]:
            royalties, stays = trading.settle(
                clearing, gain, spec.market, np.random.default_rng(_seed(seed, t, arm, "settle"))
            )
            left = {cands[r["candidate"]].seller for r in stays if not r["stays"]}
            total = spent + paid_now + float(sum(royalties))
            return {
                "state": new_state,
                "active": [s for s in active if s not in left],
                "spent": total,
                "metric": after["metric"],
                "utility": after["utility"],
                "gain": gain,
                "royalties": royalties,
                "stays": stays,
                "bought_sellers": bought,
            }

        def rows(p: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
            wall = time.perf_counter() - t0
            return {
                "payments": [
                    {"arm": arm, "round": t, "seller": cands[j].seller, "kind": "royalty", "amount": p["royalties"][j]}
                    for j in clearing.bought
                    if spec.market.contract == "royalty"
                ],
                "sellers": [
                    {
                        "arm": arm,
                        "round": t,
                        "seller": cands[r["candidate"]].seller,
                        "paid": r["paid"],
                        "fair": r["fair"],
                        "stay_prob": r["stay_prob"],
                        "stays": r["stays"],
                    }
                    for r in p["stays"]
                ],
                "metrics": [self._metric_row(arm, t, new_state, after, p["spent"], seed)],
                "timings": [
                    {"arm": arm, "round": t, "phase": ph, "seconds": s}
                    for ph, s in (
                        ("train", clock.train),
                        ("eval", clock.eval),
                        ("value", clock.value),
                        ("total", wall),
                    )
                ],
            }

        return self._shared(f"settle|{arm}|{t}", settle, kind="settle", arm=arm, round=t, rows=rows)

    # -- valuation --------------------------------------------------------------------------------------------
    def _value(
        self, method: str, seed: int, arm: str, t: int, state: str, cands: list[Candidate], clock: _Clock
    ) -> dict[str, Any]:
        key = f"value|{arm}|{t}"
        got = self._sync_get(key)
        if got is not None:
            return got
        n = len(cands)
        stderr: list[float] | None = None
        coalitions: dict[str, dict[str, Any]] = {}
        estimator = method
        if n == 0:
            values = np.zeros(0)
        elif method in RETRAIN_METHODS:

            def v(S: frozenset[int]) -> float:
                members = [cands[i] for i in sorted(S)]
                node = self._node_for(state, t, members, seed, clock)
                ev = self._evaluate(node, "val", seed, clock)
                coalitions[coalition_key([c.seller for c in members])] = {"node": node, "utility": ev["utility"]}
                return ev["utility"]

            run = self._estimator(method, n, seed, t)
            estimator = run.__name__
            plan = _plan(run)
            self._prepare(state, t, cands, plan, seed, clock, arm)
            result = run(v)
            if isinstance(result, tuple):
                values, stderr = result[0], [float(x) for x in result[1]]
            else:
                values = result
        else:
            values = self._sample_values(method, seed, t, state, cands, clock)
        values = np.asarray(values, dtype=np.float64)
        payload = {
            "values": [float(x) for x in values],
            "stderr": stderr,
            "estimator": estimator,
            "coalitions": coalitions,
        }
        rows = {
            "valuations": [
                {
                    "arm": arm,
                    "round": t,
                    "seller": c.seller,
                    "method": estimator,
                    "value": payload["values"][i],
                    "stderr": None if stderr is None else stderr[i],
                }
                for i, c in enumerate(cands)
            ],
            "coalitions": [
                {"arm": arm, "round": t, "coalition": k, "node": c["node"], "utility": c["utility"]}
                for k, c in sorted(coalitions.items())
            ],
        }
        return self._shared(key, lambda: payload, kind="value", arm=arm, round=t, rows=lambda p: rows)

    def _estimator(self, method: str, n: int, seed: int, t: int) -> Callable:
        from procure.valuation import exact_ads, leave_one_out, mc_ads

        groups = [list(range(n))]
        if method == "loo":

            def loo(v: Callable) -> np.ndarray:
                return leave_one_out(v, n)

            return loo
        if n <= self.recipe.valuation.exact_max_candidates:

            def ads_exact(v: Callable) -> np.ndarray:
                return exact_ads(v, groups)

            return ads_exact
        perms = self.recipe.valuation.mc_permutations

        def ads_mc(v: Callable) -> tuple[np.ndarray, np.ndarray]:
            res = mc_ads(v, groups, perms, seed=_seed(seed, t, "mc"))
            return np.asarray(res.values), np.asarray(res.stderr)

        return ads_mc

    def _sample_values(
        self, method: str, seed: int, t: int, state: str, cands: list[Candidate], clock: _Clock
    ) -> np.ndarray:
        from procure.valuation.influence import constant_values, datainf, grad_ip, per_dataset, random_values

        flat = [e for c in cands for e in c.examples]
        groups, k = [], 0
        for c in cands:
            groups.append(list(range(k, k + len(c.examples))))
            k += len(c.examples)
        if not flat:
            return np.zeros(len(cands))
        if method == "constant":
            per = constant_values(len(flat))
        elif method == "random":
            per = random_values(len(flat), seed=_seed(seed, t, "random"))
        elif method == "bm25":
            from procure.valuation.bm25 import bm25_values

            ref = [_text(e) for e in self.scenario(seed).reference_examples()]
            per = bm25_values([_text(e) for e in flat], ref)
        elif method in GRADIENT_METHODS:
            s0 = time.perf_counter()
            g, vg = self.learner.grads(
                self.adapter_path(state), flat, self.scenario(seed).reference_examples(), _seed(seed, t, "grads")
            )
            per = (grad_ip if method == "infl_ip" else datainf)(g, vg)
            clock.value += time.perf_counter() - s0
        else:  # pragma: no cover - the recipe validates methods
            raise UserError(f"methods: unknown valuation method {method!r}")
        return per_dataset(per, groups)

    def _prepare(
        self,
        state: str,
        t: int,
        cands: list[Candidate],
        plan: list[frozenset[int]],
        seed: int,
        clock: _Clock,
        arm: str,
    ) -> None:
        """Train (sharded over processes) and evaluate every coalition the estimator will ask for."""
        todo = [S for S in plan if S]
        bar = tqdm(todo, desc=f"  round {t} coalitions", unit="coal", disable=not self.progress, leave=False)
        mine = todo[self.world.index :: self.world.size]
        for S in bar:
            members = [cands[i] for i in sorted(S)]
            bar.set_postfix(S=coalition_key([c.seller for c in members]))
            if S in mine:
                node = self._node_for(state, t, members, seed, clock, sync=False)
                self._evaluate(node, "val", seed, clock, sync=False)
        bar.close()
        self.world.barrier()

    # -- states -----------------------------------------------------------------------------------------------
    def _node_for(
        self, parent: str, t: int, members: list[Candidate], seed: int, clock: _Clock, sync: bool = True
    ) -> str:
        """The state A(S; parent) for coalition S = members (parent itself when S holds no rows)."""
        members = sorted((c for c in members if c.examples), key=lambda c: c.seller)  # empty datasets add nothing
        examples = [e for c in members for e in c.examples]
        if not examples:
            return parent
        coal = coalition_key([c.seller for c in members])
        node = "n-" + _digest([parent, t, coal, [c.digest() for c in sorted(members, key=lambda c: c.seller)]])
        self._train(node, parent, t, coal, examples, _seed(seed, t, coal, "train"), clock=clock, local=not sync)
        return node

    def _train(
        self,
        node: str,
        parent: str,
        t: int,
        coal: str,
        examples: list[Example],
        seed: int,
        *,
        epochs: float | None = None,
        clock: _Clock,
        local: bool = False,
    ) -> None:
        """Train state ``node`` = ``parent`` fine-tuned on ``examples`` (main process, or this process when
        ``local``: the sharded coalition trainings); the adapter folder appears atomically."""
        if self.ledger.get(f"train|{node}") is None and (local or self.world.is_main):
            self._do_train(node, parent, t, coal, examples, seed, epochs, clock)
        if not local and self.world.size > 1:
            self.world.barrier()

    def _do_train(
        self, node: str, parent: str, t: int, coal: str, examples: list[Example], seed: int, epochs, clock: _Clock
    ) -> None:
        target = self.run_dir / "adapters" / node
        info_file = target / "procure_train.json"
        s0 = time.perf_counter()
        if not info_file.is_file():
            if target.exists():  # an incomplete folder from an older layout: redo it
                shutil.rmtree(target)
            parent_path = self.adapter_path(parent)

            def build(tmp: Path) -> None:
                info = self.learner.train(parent_path, examples, tmp, seed, epochs=epochs)
                (tmp / "procure_train.json").write_text(json.dumps(info))

            build_once(target, build)
        info = json.loads(info_file.read_text())
        secs = time.perf_counter() - s0
        clock.train += secs
        rel = str(target.relative_to(self.run_dir) / info.pop("adapter_subdir", "."))
        self._record_node(
            node, parent=parent, round=t, coalition=coal, n_rows=len(examples), adapter=rel, meta=info, secs=secs
        )

    def _record_node(
        self,
        node: str,
        *,
        parent: str | None,
        round: int,
        coalition: str,
        n_rows: int,
        adapter: str | None,
        meta: dict,
        secs: float | None = None,
    ) -> None:
        payload = {"node": node, "parent": parent, "adapter": adapter, "n_rows": n_rows, **meta}
        row = {
            "node": node,
            "parent": parent,
            "round": round,
            "coalition": coalition,
            "n_rows": n_rows,
            "adapter": adapter,
            "n_tokens": meta.get("n_tokens"),
            "final_loss": meta.get("final_loss"),
            "train_s": secs,
        }
        self.ledger.record(
            f"train|{node}", kind="train", payload=payload, round=round, rows={"nodes": [row]}, seconds=secs
        )

    def _evaluate(self, node: str, split: str, seed: int, clock: _Clock, sync: bool = True) -> dict[str, float]:
        key = f"eval|{node}|{split}"
        got = self.ledger.get(key)
        if got is None and (self.world.is_main or not sync):
            task = self.scenario(seed).task(split)
            s0 = time.perf_counter()
            metric = float(self.learner.evaluate(self.adapter_path(node), task, _seed(seed, split, "eval")))
            secs = time.perf_counter() - s0
            clock.eval += secs
            payload = {"metric": metric, "utility": float(task.utility(metric))}
            row = {"node": node, "split": split, "metric": metric, "utility": payload["utility"], "eval_s": secs}
            got = self.ledger.record(key, kind="eval", payload=payload, rows={"utilities": [row]}, seconds=secs)
        if sync and self.world.size > 1:
            self.world.barrier()
            got = self.ledger.get(key)
        return got

    # -- ledger helpers ---------------------------------------------------------------------------------------
    def _sync_get(self, key: str) -> Any | None:
        """``ledger.get`` that every process answers alike (read between two barriers), for control flow."""
        if self.world.size == 1:
            return self.ledger.get(key)
        self.world.barrier()
        got = self.ledger.get(key)
        self.world.barrier()
        return got

    def _shared(
        self,
        key: str,
        compute: Callable[[], Any],
        *,
        kind: str,
        arm: str | None = None,
        round: int | None = None,
        rows: Callable[[Any], dict[str, list[dict[str, Any]]]] | None = None,
    ) -> Any:
        """A step done once by the main process and recorded in one transaction; others read it back.

        With several processes every process calls every step in the same order and meets one barrier per
        call, so the barriers pair up whether or not the step was already recorded (resume)."""
        got = self.ledger.get(key)
        if got is None and self.world.is_main:
            s0 = time.perf_counter()
            payload = json.loads(json.dumps(compute()))
            got = self.ledger.record(
                key,
                kind=kind,
                payload=payload,
                arm=arm,
                round=round,
                rows=rows(payload) if rows else None,
                seconds=time.perf_counter() - s0,
            )
        if self.world.size > 1:
            self.world.barrier()
            got = self.ledger.get(key)
        return got

    def _market_rows(self, arm: str, t: int, cands: list[Candidate], p: dict[str, Any]) -> dict[str, list]:
        contract = self.recipe.market.contract
        return {
            "offers": [
                {
                    "arm": arm,
                    "round": t,
                    "seller": cands[j].seller,
                    "utility": p["utilities"][j],
                    "price": p["prices"][j],
                    "rate": p["rates"][j],
                }
                for j in p["offered"]
            ],
            "purchases": [
                {"arm": arm, "round": t, "seller": cands[j].seller, "price": p["prices"][j], "rate": p["rates"][j]}
                for j in p["bought"]
            ],
            "payments": [
                {"arm": arm, "round": t, "seller": cands[j].seller, "kind": "upfront", "amount": p["upfront"][j]}
                for j in p["bought"]
                if contract == "fairshare" or p["upfront"][j]
            ],
        }

    def _metric_row(self, arm: str, t: int, node: str, ev: dict[str, float], spent: float, seed: int) -> dict:
        task = self.scenario(seed).task("test")
        return {
            "arm": arm,
            "round": t,
            "split": "test",
            "metric_name": task.metric_name,
            "metric": ev["metric"],
            "utility": ev["utility"],
            "node": node,
            "spent": spent,
        }


def _plan(run: Callable) -> list[frozenset[int]]:
    """The coalitions an estimator will query, in first-query order (a dry run on a recording utility).

    Exact ADS, LOO and MC-ADS without truncation query coalitions independently of the utility's values."""
    seen: dict[frozenset[int], None] = {}

    def record(S: frozenset[int]) -> float:
        seen.setdefault(frozenset(S), None)
        return 0.0

    run(record)
    return list(seen)


def _text(e: Example) -> str:
    return " ".join(str(e.get(k, "")) for k in ("prompt", "answer"))


def run_recipe(recipe: Recipe, run_dir: str | Path, *, resume: bool = False, **kw: Any) -> Path:
    """Run a recipe end to end into ``run_dir`` (see :class:`Runner`)."""
    return Runner(recipe, run_dir, resume=resume, **kw).run()
