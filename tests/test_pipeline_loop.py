"""The procurement loop, ledger and resume on the cheap plugin stand-in (tests/test_pipeline_fakes.py)."""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from procure.errors import UserError
from procure.pipeline.ledger import Ledger
from procure.pipeline.loop import Runner, run_recipe
from procure.pipeline.recipe import parse_recipe

TESTS = Path(__file__).parent
ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))


def recipe_dict(**over) -> dict:
    d = {
        "name": "fake",
        "seeds": [0, 1],
        "rounds": 3,
        "methods": ["ads", "loo", "random"],
        "task": {"kind": "plugin", "target": "test_pipeline_fakes:factory", "n_sellers": 3, "options": {}},
        "market": {"contract": "fairshare", "max_purchases": 1},
        "progress": False,
    }
    for k, v in over.items():
        d[k] = v
    return d


def run(tmp_path: Path, name: str = "run", **over) -> Path:
    return run_recipe(parse_recipe(recipe_dict(**over)), tmp_path / name)


def dump(run_dir: Path) -> dict:
    with Ledger.open(run_dir / "ledger.sqlite", create=False) as led:
        return led.dump()


def shapley_bruteforce(v: dict[frozenset, float], n: int) -> np.ndarray:
    """Permutation form (seeds/000 Eq. 3) over all n! orders."""
    phi = np.zeros(n)
    perms = list(itertools.permutations(range(n)))
    for p in perms:
        pre: frozenset = frozenset()
        for i in p:
            phi[i] += v[pre | {i}] - v[pre]
            pre = pre | {i}
    return phi / len(perms)


def test_ads_values_are_shapley_of_the_recorded_coalition_utilities(tmp_path):
    d = run(tmp_path, rounds=2, methods=["ads"], seeds=[3])
    with Ledger.open(d / "ledger.sqlite", create=False) as led:
        for t in (1, 2):
            co = {r["coalition"]: r["utility"] for r in led.rows("coalitions", "arm='ads-s3' AND round=?", (t,))}
            assert len(co) == 8  # all subsets of 3 candidates, v(∅) included
            v = {frozenset() if k == "-" else frozenset(int(x) for x in k.split("+")): u for k, u in co.items()}
            vals = {r["seller"]: r["value"] for r in led.rows("valuations", "arm='ads-s3' AND round=?", (t,))}
            phi = shapley_bruteforce(v, 3)
            np.testing.assert_allclose([vals[j] for j in range(3)], phi, atol=1e-9)
            # efficiency (Prop. 4.2, state-conditioned): sum = v(D_t; A_{t-1}) - v(∅; A_{t-1})
            assert math.isclose(sum(vals.values()), v[frozenset({0, 1, 2})] - v[frozenset()], abs_tol=1e-9)
            # A_t is the adapter trained during valuation for the bought singleton
            (buy,) = led.rows("purchases", "arm='ads-s3' AND round=?", (t,))
            assert buy["seller"] == max(vals, key=vals.get)
            (m,) = led.rows("metrics", "arm='ads-s3' AND round=?", (t,))
            (node,) = [
                r["node"]
                for r in led.rows("coalitions", "arm='ads-s3' AND round=?", (t,))
                if r["coalition"] == str(buy["seller"])
            ]
            assert m["node"] == node


def test_loo_values_and_every_state_trained_once(tmp_path):
    from test_pipeline_fakes import FakeLearner, FakeScenario

    learners = []

    def factory(seed):
        return FakeScenario({}, seed, 3)

    learner = FakeLearner({})
    learners.append(learner)
    recipe = parse_recipe(recipe_dict(methods=["ads", "loo", "random"], seeds=[0]))
    d = Runner(recipe, tmp_path / "r", scenario_factory=factory, learner=learner).run()
    with Ledger.open(d / "ledger.sqlite", create=False) as led:
        nodes = led.rows("nodes")
        assert learner.trained == len([n for n in nodes if n["adapter"] is not None])
        evals = led.rows("utilities")
        assert learner.evaluated == len(evals)
        assert len({(e["node"], e["split"]) for e in evals}) == len(evals)
        for t in (1, 2, 3):
            co = {r["coalition"]: r["utility"] for r in led.rows("coalitions", "arm='loo-s0' AND round=?", (t,))}
            vals = {r["seller"]: r["value"] for r in led.rows("valuations", "arm='loo-s0' AND round=?", (t,))}
            full = co["0+1+2"]
            for j, rest in ((0, "1+2"), (1, "0+2"), (2, "0+1")):
                assert math.isclose(vals[j], full - co[rest], abs_tol=1e-12)
        # round 1 starts from the same state with the same candidates: ADS, LOO and random share coalitions
        r1 = {r["arm"]: r["node"] for r in led.rows("coalitions", "round=1 AND coalition='0+1+2'")}
        assert r1["ads-s0"] == r1["loo-s0"]


def test_same_seed_same_ledger_and_sigkill_resume(tmp_path):
    rec = recipe_dict(
        seeds=[0],
        rounds=3,
        methods=["ads", "random"],
        task={
            "kind": "plugin",
            "target": "test_pipeline_fakes:factory",
            "n_sellers": 3,
            "options": {"sleep": 0.15, "warmup": 6},
        },
    )
    import yaml

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(rec))
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "procure.cli", "run", str(path), "--out"]
    full = subprocess.run([*cmd, str(tmp_path / "full")], env=env, cwd=ROOT, capture_output=True, text=True)
    assert full.returncode == 0, full.stderr[-2000:]

    killed = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, str(killed)], env=env, cwd=ROOT, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    try:
        # wait until round 2 of the first arm is under way: some coalition states of round 2 exist
        while time.time() < deadline:
            time.sleep(0.05)
            if proc.poll() is not None:
                break
            try:
                con = sqlite3.connect(killed / "ledger.sqlite", timeout=5)
                n = con.execute("SELECT count(*) FROM nodes WHERE round = 2").fetchone()[0]
                con.close()
            except sqlite3.Error:
                continue
            if n >= 2:
                break
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    partial = dump(killed)
    assert not [r for r in partial["steps"] if dict(r)["key"] == "settle|ads-s0|2"]  # killed mid-round 2

    again = subprocess.run([*cmd, str(killed)], env=env, cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 2 and "--resume" in again.stderr  # refuses to overwrite without --resume
    res = subprocess.run([*cmd, str(killed), "--resume"], env=env, cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    a, b = dump(tmp_path / "full"), dump(killed)
    for table in a:
        assert a[table] == b[table], table
    assert (killed / "report.md").is_file()


def test_budget_that_buys_nothing_records_empty_rounds(tmp_path):
    d = run(
        tmp_path, methods=["ads"], seeds=[0], rounds=2, market={"contract": "fairshare", "budget": 0.0, "cost": 0.1}
    )
    with Ledger.open(d / "ledger.sqlite", create=False) as led:
        assert led.rows("purchases") == [] and led.rows("payments") == []
        ms = sorted(led.rows("metrics"), key=lambda r: r["round"])
        assert [m["round"] for m in ms] == [0, 1, 2]
        assert len({m["node"] for m in ms}) == 1 and len({m["metric"] for m in ms}) == 1
        assert len(led.rows("offers")) == 6  # offers were made and refused
    assert (d / "report.md").read_text().count("# procure run") == 1


def test_empty_seller_dataset_is_valued_zero_and_never_trained(tmp_path):
    task = {"kind": "plugin", "target": "test_pipeline_fakes:factory", "n_sellers": 3, "options": {"rows": [8, 0, 8]}}
    d = run(tmp_path, methods=["ads", "loo"], seeds=[0], rounds=2, task=task)
    with Ledger.open(d / "ledger.sqlite", create=False) as led:
        for r in led.rows("valuations", "seller = 1"):
            assert r["value"] == 0.0
        cands = led.rows("candidates", "seller = 1")
        assert cands and all(c["n_rows"] == 0 for c in cands)
        co = {(r["arm"], r["round"], r["coalition"]): r["node"] for r in led.rows("coalitions")}
        assert co[("ads-s0", 1, "1")] == co[("ads-s0", 1, "-")]
        assert co[("ads-s0", 1, "0+1")] == co[("ads-s0", 1, "0")]


def test_all_sellers_empty_gives_recorded_empty_round(tmp_path):
    task = {"kind": "plugin", "target": "test_pipeline_fakes:factory", "n_sellers": 2, "options": {"rows": [0, 0]}}
    d = run(
        tmp_path, methods=["ads", "bm25", "datainf"], seeds=[0], rounds=1, task=task, market={"contract": "fairshare"}
    )
    with Ledger.open(d / "ledger.sqlite", create=False) as led:
        assert led.rows("purchases") == []
        assert len(led.rows("metrics")) == 6


def _round_candidates(led: Ledger, seed: int, t: int) -> list[dict]:
    (step,) = [r for r in led.rows("steps") if r["key"] == f"cand|s{seed}|{t}"]
    return json.loads(step["payload"])


@pytest.mark.parametrize("method", ["bm25", "bm25-clamp", "infl_ip", "datainf", "datainf-layer", "constant", "random"])
def test_sample_level_methods_equal_the_functions_summed_per_seller(tmp_path, method):
    """The ledger's values are the valuation functions' values on the same inputs (texts, or the gradients at
    the arm's state A_{t-1}), summed per seller; round 2 runs at a trained state, not the base."""
    import torch
    from test_pipeline_fakes import FakeLearner, FakeScenario

    from procure.pipeline.steps import derive_seed
    from procure.valuation import influence
    from procure.valuation.bm25 import bm25_values

    idf = "clamp" if method == "bm25-clamp" else "okapi"
    blocks = "layer" if method == "datainf-layer" else "param"
    method = method.removesuffix("-clamp").removesuffix("-layer")
    market = {"contract": "fairshare", "max_purchases": 1}
    valuation = {"bm25_idf": idf, "datainf_blocks": blocks}
    d = run(tmp_path, methods=[method], seeds=[0], rounds=2, market=market, valuation=valuation)
    scen = FakeScenario({}, 0, 3)
    ref = scen.reference_examples()
    with Ledger.open(d / "ledger.sqlite", create=False) as led:
        nodes = {n["node"]: n for n in led.rows("nodes")}
        metrics = {m["round"]: m["node"] for m in led.rows("metrics")}
        for t in (1, 2):
            vals = {r["seller"]: r["value"] for r in led.rows("valuations", "round = ?", (t,))}
            cands = _round_candidates(led, 0, t)
            rows = [e for c in cands for e in c["examples"]]
            state = nodes[metrics[t - 1]]["adapter"]
            assert (state is None) == (t == 1)
            if method == "constant":
                per = influence.constant_values(len(rows))
            elif method == "random":
                per = influence.random_values(len(rows), seed=derive_seed(0, t, "random"))
            elif method == "bm25":
                texts = [f"{e['prompt']} {e['answer']}" for e in rows]
                per = bm25_values(texts, [f"{e['prompt']} {e['answer']}" for e in ref], idf=idf)
            else:
                g, vg = FakeLearner({}).grads(None if state is None else d / state, rows, ref, 0)
                if method == "infl_ip":
                    per = influence.grad_ip(g, vg)
                else:
                    per = influence.datainf(g, vg, blocks=blocks)
                per = per.numpy() if isinstance(per, torch.Tensor) else per
            sums = [float(np.sum(per[8 * j : 8 * j + 8])) for j in range(3)]
            np.testing.assert_allclose([vals[j] for j in range(3)], sums, rtol=1e-12, atol=1e-12)
            if method in ("infl_ip", "datainf"):
                assert len({round(v, 9) for v in vals.values()}) == 3  # informative, not all equal


def test_royalty_contract_pays_alpha_times_the_measured_gain(tmp_path):
    """Royalty = alpha_j x gamma x max(measured test gain, 0) with the value-linear utility (gamma = money per
    metric point; seeds/004 appendix 3), paid after evaluation; the money spent is the sum of what was paid."""
    gamma = 2.5
    market = {"contract": "royalty", "max_purchases": 1, "utility": {"scale": "none", "gamma": gamma}}
    d = run(tmp_path, methods=["ads", "loo"], seeds=[0, 1], rounds=3, market=market)
    with Ledger.open(d / "ledger.sqlite", create=False) as led:
        roy = led.rows("payments", "kind = 'royalty'")
        assert len(roy) == 2 * 2 * 3  # one purchase per arm and round
        ms = {(m["arm"], m["round"]): m for m in led.rows("metrics")}
        rates = {(p["arm"], p["round"], p["seller"]): p["rate"] for p in led.rows("purchases")}
        positive = 0
        for r in roy:
            gain = ms[(r["arm"], r["round"])]["utility"] - ms[(r["arm"], r["round"] - 1)]["utility"]
            alpha = rates[(r["arm"], r["round"], r["seller"])]
            assert 0 < alpha < 1
            assert r["amount"] == pytest.approx(alpha * gamma * max(gain, 0.0), rel=1e-12, abs=1e-15)
            positive += gain > 0
        assert positive > 0  # some rounds had a measured gain, so some royalty was actually paid
        for (arm, t), m in ms.items():
            if t > 0:
                paid = sum(p["amount"] for p in led.rows("payments", "arm = ? AND round <= ?", (arm, t)))
                assert m["spent"] == pytest.approx(paid, rel=1e-12)


def test_resume_with_a_different_recipe_is_refused(tmp_path):
    run(tmp_path, methods=["random"], seeds=[0], rounds=1)
    with pytest.raises(UserError, match="recipe differs"):
        run_recipe(parse_recipe(recipe_dict(methods=["random"], seeds=[0], rounds=2)), tmp_path / "run", resume=True)
    with pytest.raises(UserError, match="--resume"):
        run_recipe(parse_recipe(recipe_dict(methods=["random"], seeds=[0], rounds=1)), tmp_path / "run")


def _worker(index: int, size: int, barrier, run_dir: str, out: str) -> None:
    from test_pipeline_fakes import FakeLearner, FakeScenario

    from procure.pipeline.protocols import World

    learner = FakeLearner({})
    recipe = parse_recipe(recipe_dict(methods=["ads", "loo"], seeds=[0], rounds=2))
    world = World(index, size, (lambda: barrier.wait(timeout=60)) if barrier else (lambda: None))
    Runner(recipe, run_dir, scenario_factory=lambda s: FakeScenario({}, s, 3), learner=learner, world=world).run()
    Path(out).write_text(f"{learner.trained} {learner.evaluated}")


def test_two_processes_shard_coalitions_and_give_the_same_ledger(tmp_path):
    """The accelerate protocol with a stand-in process group: coalition trainings of a round are split between
    the processes; everything else is done once; the ledger equals a single-process run."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(2)
    procs = [
        ctx.Process(target=_worker, args=(i, 2, barrier, str(tmp_path / "two"), str(tmp_path / f"c{i}")))
        for i in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    _worker(0, 1, None, str(tmp_path / "one"), str(tmp_path / "c"))
    assert dump(tmp_path / "two") == dump(tmp_path / "one")
    (t0, _), (t1, _) = [map(int, (tmp_path / f"c{i}").read_text().split()) for i in range(2)]
    (t, _) = map(int, (tmp_path / "c").read_text().split())
    assert t0 + t1 == t and t1 > 0  # every state trained exactly once, some by the second process


def test_reference_arms_noise_oracle_and_hindsight(tmp_path):
    """noise_oracle buys the cleanest seller every round; hindsight values a seller by the test gain of the
    single-seller fine-tune from the arm's state, and buys the best of them."""
    d = run(tmp_path, methods=["noise_oracle", "hindsight"], seeds=[0], rounds=3)
    with Ledger.open(d / "ledger.sqlite", create=False) as led:
        cands = {(c["arm"], c["round"], c["seller"]): c["noise"] for c in led.rows("candidates")}
        for p in led.rows("purchases", "arm = 'noise_oracle-s0'"):
            noise = {s: n for (a, t, s), n in cands.items() if a == p["arm"] and t == p["round"]}
            assert p["seller"] == min(noise, key=noise.get)
        test = {u["node"]: u["utility"] for u in led.rows("utilities", "split = 'test'")}
        metrics = {m["round"]: m["node"] for m in led.rows("metrics", "arm = 'hindsight-s0'")}
        nodes = led.rows("nodes")
        for t in (1, 2, 3):
            state = metrics[t - 1]
            single = {int(n["coalition"]): n["node"] for n in nodes if n["parent"] == state and n["round"] == t}
            vals = {r["seller"]: r["value"] for r in led.rows("valuations", "arm = 'hindsight-s0' AND round = ?", (t,))}
            assert set(single) == set(vals) == {0, 1, 2}
            for j, node in single.items():
                assert vals[j] == pytest.approx(test[node] - test[state], abs=1e-12)
            (p,) = led.rows("purchases", "arm = 'hindsight-s0' AND round = ?", (t,))
            assert p["seller"] == max(vals, key=vals.get)
            assert metrics[t] == single[p["seller"]]
