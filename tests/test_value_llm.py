"""``procure value`` on prompt/response rows (procure.annotations) with the tiny random Llama: every method end to end
through the CLI, results equal to the library on the same data, the gradient and utility caches, bad input."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from procure.annotations.planted import CAPITALS, planted_choice, planted_conjoint, planted_facts
from procure.cli import main
from procure.llm.tiny import tiny_model_dir
from procure.valuation import exact_ads
from procure.valuation.bm25 import bm25_values
from procure.valuation.quality import auc

ROOT = Path(__file__).resolve().parents[1]
LORA = ["--lora-r", "4", "--lora-alpha", "8"]  # the fresh LoRA of every run here (tiny: q/v, r=4)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A private PROCURE_CACHE (gradients and utilities start empty) that shares the built tiny model."""
    real = tiny_model_dir()  # built in the user's cache once
    cache = tmp_path_factory.mktemp("cache")
    (cache / "models").mkdir()
    os.symlink(real, cache / "models" / real.name)
    old = os.environ.get("PROCURE_CACHE")
    os.environ["PROCURE_CACHE"] = str(cache)
    yield cache
    if old is None:
        del os.environ["PROCURE_CACHE"]
    else:
        os.environ["PROCURE_CACHE"] = old


@pytest.fixture(scope="module")
def conjoint(env, tmp_path_factory):
    d = tmp_path_factory.mktemp("conjoint")
    p = planted_conjoint(n_annotators=4, rows_per_annotator=5, n_noisy=1, n_biased=1, reference_size=6, seed=3)
    data, ref = p.write(d)
    return p, data, ref


def _value(tmp_path, data, ref, method, *extra, name=None):
    out = tmp_path / f"{name or method}.csv"
    argv = ["value", "--method", method, "--data", str(data), "--source", "annotator", "--id", "id"]
    argv += (["--reference", str(ref)] if ref else []) + ["--model", "tiny", *LORA, "--quiet", "--out", str(out)]
    assert main([*argv, *extra]) == 0
    rows = pd.read_csv(out)
    sources = pd.read_csv(out.with_name(out.stem + "_sources.csv"))
    return rows, sources, out


def _check_sources(rows: pd.DataFrame, sources: pd.DataFrame, names: list[str]):
    """Per-source value = sum of the per-row values (additive methods), mean = sum / n, rank 1 = largest."""
    assert list(sources["source"]) == names
    for _, s in sources.iterrows():
        part = rows[rows["source"] == s["source"]]
        assert s["n"] == len(part)
        assert s["value"] == pytest.approx(part["value"].sum(), rel=1e-9, abs=1e-12)
        assert s["sum"] == s["value"] and s["mean"] == pytest.approx(s["value"] / s["n"])
    assert list(sources.sort_values("value", ascending=False, kind="stable")["rank"]) == list(range(1, len(names) + 1))


def test_bm25_values_equal_bm25_values(conjoint, tmp_path, capsys):
    p, data, ref = conjoint
    rows, sources, out = _value(tmp_path, data, ref, "bm25")
    want = bm25_values(
        [f"{r['prompt']} {r['response']}" for r in p.rows], [f"{r['prompt']} {r['response']}" for r in p.reference]
    )
    np.testing.assert_allclose(rows["value"], want, rtol=1e-12)
    assert list(rows.columns) == ["id", "source", "value", "stderr"] and list(rows["id"]) == [r["id"] for r in p.rows]
    _check_sources(rows, sources, p.annotators)
    assert out.with_name("bm25_sources.png").read_bytes()[:4] == b"\x89PNG"
    text = capsys.readouterr().out
    assert "top and bottom 5 rows by value" in text and "sources (value = sum over rows" in text
    clamped, _, _ = _value(tmp_path, data, ref, "bm25", "--bm25-idf", "clamp", name="bm25_clamp")
    want = bm25_values(
        [f"{r['prompt']} {r['response']}" for r in p.rows],
        [f"{r['prompt']} {r['response']}" for r in p.reference],
        idf="clamp",
    )
    np.testing.assert_allclose(clamped["value"], want, rtol=1e-12)
    assert not np.allclose(clamped["value"], rows["value"])


def _library_grads(p, adapter=None, layers=None):
    """Per-sample grads of the planted rows and the mean reference grad at a fresh LoRA (seed 0, r 4, q/v) or an
    adapter, computed directly with procure.llm (the reference for the CLI)."""
    from peft import LoraConfig, PeftModel, get_peft_model

    from procure.llm.grads import mean_grad, per_sample_lora_grads
    from procure.llm.models import load_model, load_tokenizer

    d = tiny_model_dir()
    tok, base = load_tokenizer(d), load_model(d)
    if adapter is None:
        torch.manual_seed(0)
        extra = {} if layers is None else {"layers_to_transform": layers}
        cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM", **extra)
        model = get_peft_model(base, cfg)
    else:
        model = PeftModel.from_pretrained(base, str(adapter), is_trainable=True)

    def rows(rs):
        return [{"prompt": r["prompt"], "answer": r["response"], "system": r["system"]} for r in rs]

    g = per_sample_lora_grads(model, tok, rows(p.rows), progress=False)
    v = mean_grad(per_sample_lora_grads(model, tok, rows(p.reference), progress=False))
    return g, v


@pytest.fixture(scope="module")
def grads_counter():
    """Counts the rows that procure.llm.grads.per_sample_lora_grads is asked for (backward passes)."""
    import procure.llm.grads as llm_grads

    real = llm_grads.per_sample_lora_grads
    calls: list[int] = []

    def counting(model, tok, examples, **kw):
        calls.append(len(examples))
        return real(model, tok, examples, **kw)

    llm_grads.per_sample_lora_grads = counting
    yield calls
    llm_grads.per_sample_lora_grads = real


def test_gradient_methods_equal_the_library_and_the_cache_serves_the_second(conjoint, tmp_path, grads_counter):
    from procure.valuation.influence import datainf, grad_ip

    p, data, ref = conjoint
    g, v = _library_grads(p)
    grads_counter.clear()
    rows, sources, _ = _value(tmp_path, data, ref, "infl-ip")
    assert sum(grads_counter) == len(p.rows) + len(p.reference)  # cold: every row's gradient computed once
    np.testing.assert_allclose(rows["value"], grad_ip(g, v).numpy(), rtol=1e-4, atol=1e-9)
    _check_sources(rows, sources, p.annotators)
    grads_counter.clear()
    rows, sources, _ = _value(tmp_path, data, ref, "datainf")
    assert grads_counter == []  # second method: no backward pass, all from the disk cache
    np.testing.assert_allclose(rows["value"], datainf(g, v).numpy(), rtol=1e-3)
    _check_sources(rows, sources, p.annotators)
    joined, _, _ = _value(tmp_path, data, ref, "datainf", "--datainf-blocks", "layer", name="joined")
    np.testing.assert_allclose(joined["value"], datainf(g, v, blocks="layer").numpy(), rtol=1e-3)
    assert not np.allclose(joined["value"], rows["value"], rtol=1e-2)  # a fresh LoRA's zero lora_A blocks count
    # a re-run of the first method is served too, and says so
    rows2, _, _ = _value(tmp_path, data, ref, "infl-ip", name="again")
    assert grads_counter == [] and np.array_equal(rows2["value"], _value(tmp_path, data, ref, "infl-ip")[0]["value"])
    # --no-cache computes again; --projection-dim is another cache entry, then served from it
    _value(tmp_path, data, ref, "infl-ip", "--no-cache", name="nocache")
    assert sum(grads_counter) == len(p.rows) + len(p.reference)
    grads_counter.clear()
    proj, _, _ = _value(tmp_path, data, ref, "infl-ip", "--projection-dim", "4096", name="proj")
    assert sum(grads_counter) == len(p.rows) + len(p.reference)
    grads_counter.clear()
    _value(tmp_path, data, ref, "datainf", "--projection-dim", "4096", name="proj2")
    assert grads_counter == []
    exact = grad_ip(g, v).numpy()
    rho = pd.Series(proj["value"]).corr(pd.Series(exact), method="spearman")
    assert rho > 0.9  # a 4,096-dim sketch of 1,024-1,536-dim blocks keeps the ranking


def test_lora_layers_puts_the_fresh_lora_on_the_last_layers(conjoint, tmp_path):
    from procure.valuation.influence import grad_ip

    p, data, ref = conjoint
    rows, _, _ = _value(tmp_path, data, ref, "infl-ip", "--lora-layers", "1", name="last1")
    g, v = _library_grads(p, layers=[1])  # the tiny model has 2 layers
    assert all(".layers.1." in k for k in g)
    np.testing.assert_allclose(rows["value"], grad_ip(g, v).numpy(), rtol=1e-4, atol=1e-9)


def test_constant_and_random(conjoint, tmp_path):
    p, data, ref = conjoint
    rows, sources, _ = _value(tmp_path, data, None, "constant")
    assert (rows["value"] == 1).all() and list(sources["value"]) == [5.0] * 4
    rows, sources, _ = _value(tmp_path, data, None, "random", "--seed", "7")
    np.testing.assert_allclose(rows["value"], np.random.default_rng(7).uniform(0, 1, len(p.rows)))
    _check_sources(rows, sources, p.annotators)


@pytest.fixture(scope="module")
def checkpoints(env, conjoint, tmp_path_factory):
    """Two LoRA checkpoints of the tiny model (A1 from a fresh LoRA, A2 continuing A1)."""
    from procure.llm.train import StageTrainer, TrainConfig

    p = conjoint[0]
    d = tmp_path_factory.mktemp("ckpt")
    rows = [{"prompt": r["prompt"], "answer": r["response"], "system": r["system"]} for r in p.reference]
    tr = StageTrainer("tiny", TrainConfig(epochs=2, lr=1e-2, batch_size=3, lora_r=4, lora_alpha=8))
    a1 = tr.train(rows, d / "A1", progress=False).adapter_dir
    a2 = tr.train(rows, d / "A2", init_adapter=a1, progress=False).adapter_dir
    return a1, a2


def test_tracin_is_infl_ip_summed_over_checkpoints(conjoint, checkpoints, tmp_path):
    from procure.valuation.influence import grad_ip

    p, data, ref = conjoint
    a1, a2 = checkpoints
    one, _, _ = _value(tmp_path, data, ref, "infl-ip", "--adapter", str(a1), name="a1")
    g, v = _library_grads(p, a1)
    np.testing.assert_allclose(one["value"], grad_ip(g, v).numpy(), rtol=1e-4, atol=1e-9)
    two, _, _ = _value(tmp_path, data, ref, "infl-ip", "--adapter", str(a2), name="a2")
    rows, sources, _ = _value(tmp_path, data, ref, "tracin", "--adapter", str(a1), "--adapter", str(a2))
    np.testing.assert_allclose(rows["value"], one["value"] + two["value"], rtol=1e-12)
    _check_sources(rows, sources, p.annotators)


def _shapley_brute_force(utility: dict[frozenset, float], n: int) -> np.ndarray:
    from test_pipeline_loop import shapley_bruteforce  # the permutation form over all n! orders

    return shapley_bruteforce(utility, n)


def _recorded(coalitions: pd.DataFrame, names: list[str]) -> dict[frozenset, float]:
    index = {s: i for i, s in enumerate(names)}
    return {
        frozenset() if c == "-" else frozenset(index[s] for s in c.split("+")): u
        for c, u in zip(coalitions["coalition"], coalitions["utility"])
    }


@pytest.fixture(scope="module")
def three(env, tmp_path_factory):
    d = tmp_path_factory.mktemp("three")
    p = planted_conjoint(n_annotators=3, rows_per_annotator=4, n_noisy=1, n_biased=0, reference_size=4, seed=5)
    data, ref = p.write(d)
    df = pd.read_json(data, lines=True)
    df["delivery"] = [1 if a != "a02" else 2 for a in df["annotator"]]  # a00, a01 first, then a02
    df.to_json(d / "with_groups.jsonl", orient="records", lines=True)
    return p, data, ref, d / "with_groups.jsonl"


def test_ads_over_three_sources_is_the_shapley_value_of_its_recorded_utilities(three, tmp_path, capsys):
    p, data, ref, grouped = three
    names = p.annotators
    rows, sources, out = _value(tmp_path, data, ref, "ads", "--epochs", "2")
    coal = pd.read_csv(out.with_name("ads_coalitions.csv"))
    v = _recorded(coal, names)
    assert len(v) == 8  # every subset of 3 sources, v(empty) = the start state
    phi = _shapley_brute_force(v, 3)
    np.testing.assert_allclose(sources["value"], phi, atol=1e-12)
    assert sources["value"].sum() == pytest.approx(v[frozenset(range(3))] - v[frozenset()])
    assert (sources["stderr"] == 0).all()
    # rows carry an equal share of their source's value, so the per-row file sums to the sources
    _check_sources(rows, sources, names)
    assert "exact ADS" in capsys.readouterr().out
    # loo after ads trains nothing (v(S) cached on disk) and is v(N) - v(N - i) of the same utilities
    rows, sources, out = _value(tmp_path, data, ref, "loo", "--epochs", "2")
    full = frozenset(range(3))
    np.testing.assert_allclose(sources["value"], [v[full] - v[full - {i}] for i in range(3)], atol=1e-12)
    assert "0 trained, 4 from the cache" in " ".join(capsys.readouterr().out.split())
    # delivery groups (a00, a01) then (a02): ADS = exact_ads on the recorded utilities with that sigma
    rows, sources, out = _value(tmp_path, grouped, ref, "ads", "--epochs", "2", "--groups", "delivery", name="g")
    np.testing.assert_allclose(sources["value"], exact_ads(lambda S: v[frozenset(S)], [[0, 1], [2]]), atol=1e-12)
    assert list(sources["group"]) == [1, 1, 2]
    # MC-ADS with the tabular budget flags, on the same (cached) utilities: group efficiency holds exactly
    rows, sources, out = _value(
        tmp_path, data, ref, "ads", "--epochs", "2", "--exact-max", "0", "--permutations", "4", name="mc"
    )
    assert sources["value"].sum() == pytest.approx(v[full] - v[frozenset()], abs=1e-12)
    assert "MC-ADS, 4 permutations" in " ".join(capsys.readouterr().out.split())


def test_loo_with_the_exact_match_metric(three, tmp_path):
    p, data, ref, _ = three
    rows, sources, out = _value(tmp_path, data, ref, "loo", "--metric", "exact-match", name="em")
    coal = pd.read_csv(out.with_name("em_coalitions.csv"))
    assert coal["utility"].between(0, 1).all() and len(coal) == 4  # N and N - i for 3 sources
    assert sources["value"].abs().max() <= 1


def test_data_formats_give_the_same_rows(conjoint, tmp_path):
    """JSONL, CSV, parquet, a saved DatasetDict (reference = its split) and a chat messages column."""
    import datasets

    p, data, ref = conjoint
    want, _, _ = _value(tmp_path, data, ref, "bm25", name="jsonl")
    df, rf = pd.read_json(data, lines=True), pd.read_json(ref, lines=True)
    df.to_csv(tmp_path / "d.csv", index=False)
    df.to_parquet(tmp_path / "d.parquet")
    for path in (tmp_path / "d.csv", tmp_path / "d.parquet"):
        got, _, _ = _value(tmp_path, path, ref, "bm25", name=path.suffix[1:])
        np.testing.assert_allclose(got["value"], want["value"], rtol=1e-12)
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_pandas(df), "dev": datasets.Dataset.from_pandas(rf)})
    dd.save_to_disk(str(tmp_path / "saved"))
    got, _, _ = _value(tmp_path, tmp_path / "saved", None, "bm25", "--reference-split", "dev", name="saved")
    np.testing.assert_allclose(got["value"], want["value"], rtol=1e-12)
    chat = df.assign(
        messages=[
            [{"role": "system", "content": s}, {"role": "user", "content": q}, {"role": "assistant", "content": a}]
            for s, q, a in zip(df["system"], df["prompt"], df["response"])
        ]
    )[["id", "annotator", "messages"]]
    chat.to_json(tmp_path / "chat.jsonl", orient="records", lines=True)
    got, _, _ = _value(tmp_path, tmp_path / "chat.jsonl", ref, "bm25", name="chat")
    np.testing.assert_allclose(got["value"], want["value"], rtol=1e-12)


def test_market_clear_takes_the_sources_csv(conjoint, tmp_path):
    p, data, ref = conjoint
    _, sources, out = _value(tmp_path, data, ref, "bm25")
    path = out.with_name("bm25_sources.csv")
    proc = subprocess.run(
        [sys.executable, "-m", "procure.cli", "market", "clear", "--values", str(path), "--budget", "1e9"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["names"] == list(sources["source"]) and res["bought"] == [0, 1, 2, 3]  # ample budget: buy all
    assert res["buyer_utility"] == pytest.approx(sources["value"].sum())


# -------------------------------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def bad(env, conjoint, tmp_path_factory):
    """Files with one mistake each, and an adapter made for another base model."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    d = tmp_path_factory.mktemp("bad")
    df = pd.read_json(conjoint[1], lines=True)
    blank = df.copy()
    blank.loc[3, "annotator"] = "  "
    blank.to_json(d / "blank_source.jsonl", orient="records", lines=True)
    empty = df.copy()
    empty.loc[2, "response"] = ""
    empty.to_json(d / "empty_response.jsonl", orient="records", lines=True)
    other = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=100,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=16,
        )
    )
    get_peft_model(other, LoraConfig(r=2, target_modules=["q_proj", "v_proj"])).save_pretrained(str(d / "other"))
    return d


def _bad_cases(conjoint, bad):
    data, ref = str(conjoint[1]), str(conjoint[2])
    common = ["--data", data, "--reference", ref, "--source", "annotator", "--model", "tiny"]
    return [
        (["--method", "bm25", *common, "--response-column", "answer"], "--response-column 'answer': --data has no"),
        (["--method", "bm25", *common[:4], "--source", "worker"], "--source 'worker': --data has no such column"),
        (
            ["--method", "bm25", "--data", f"{bad}/blank_source.jsonl", "--reference", ref, "--source", "annotator"],
            "1 of 20 rows have an empty source (first: row 3)",
        ),
        (
            ["--method", "bm25", "--data", f"{bad}/empty_response.jsonl", "--reference", ref],
            "1 of 20 rows have an empty 'prompt' or 'response' (first: row 2)",
        ),
        (["--method", "infl-ip", *common, "--max-length", "60"], "--max-length 60: 20 of 20 --data rows are longer"),
        (["--method", "infl-ip", *common[:6], "--model", "no-such-org/no-such-model"], "model 'no-such-org/no-such"),
        (["--method", "datainf", *common, "--adapter", f"{bad}/other"], "made for another base model"),
        (["--method", "datainf", *common, "--adapter", f"{bad}"], "no adapter_config.json"),
        (["--method", "tracin", *common], "give them as repeated --adapter"),
        (["--method", "bm25", "--data", data], "needs the buyer's reference rows"),
        (["--method", "bm25", *common, "--test", ref], "--test is for numeric tables"),
        (["--method", "knn-ads", "--data", data, "--reference", ref], "--reference is for prompt/response rows"),
        (["--method", "bm25", "--data", f"{bad}/nope.jsonl", "--reference", ref], "file not found"),
        (["--method", "bm25", "--data", "no-org/no-dataset", "--reference", ref], "not a Hugging Face dataset in the"),
        (["--method", "ads", *common, "--lora-layers", "1"], "--lora-layers sets the fresh LoRA"),
        (["--method", "loo", *common[:4], "--model", "tiny"], "give --source COLUMN with at least 2 sources (got 1)"),
        (["--method", "ads", *common, "--group-order", "1,2", "--groups", "annotator"], "--group-order"),
    ]


def test_bad_input_is_one_line_and_exit_2(conjoint, bad, tmp_path, capsys):
    for argv, needle in _bad_cases(conjoint, bad):
        rc = main(["value", *argv, "--quiet", "--out", str(tmp_path / "v.csv")])
        err = capsys.readouterr().err.strip()
        assert rc == 2, (argv, err)
        assert len(err.splitlines()) == 1 and err.startswith("procure: error:") and needle in err, (needle, err)
        assert not (tmp_path / "v.csv").exists()


def test_bad_input_in_a_subprocess_has_no_traceback(conjoint, bad, tmp_path):
    argv, needle = _bad_cases(conjoint, bad)[4]  # rows longer than --max-length
    proc = subprocess.run(
        [sys.executable, "-m", "procure.cli", "value", *argv, "--out", str(tmp_path / "v.csv")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and needle in proc.stderr


def test_truncate_cuts_long_rows_and_says_how_many(conjoint, tmp_path, capsys):
    p, data, ref = conjoint
    rows, _, _ = _value(tmp_path, data, ref, "infl-ip", "--max-length", "92", "--truncate", name="cut")
    assert len(rows) == len(p.rows) and np.isfinite(rows["value"]).all()
    assert "20 rows longer than --max-length were cut" in " ".join(capsys.readouterr().out.split())


# -------------------------------------------------------------------------------------------- planted data
def test_planted_annotators_are_what_they_say():
    p = planted_conjoint(n_annotators=6, rows_per_annotator=10, n_noisy=1, n_biased=2, seed=1)
    assert len(p.rows) == 60 and len(p.bad_annotators) == 3 and len(p.reference) == 32
    kinds = {r["annotator"]: r["planted"] for r in p.rows}
    assert sorted(k for k in kinds.values() if k != "true") == ["biased", "biased", "noisy"]
    assert {a for a, k in kinds.items() if k != "true"} == set(p.bad_annotators)
    assert all(r["bad_row"] == r["bad_annotator"] for r in p.rows)
    assert planted_conjoint(n_annotators=6, rows_per_annotator=10, n_noisy=1, n_biased=2, seed=1).rows == p.rows
    q = planted_choice(n_annotators=5, rows_per_annotator=20, n_bad=2, bad_wrong=0.5, good_wrong=0.1, seed=2)
    wrong = pd.DataFrame(q.rows).groupby("annotator")["bad_row"].mean()
    assert sorted(wrong[q.bad_annotators]) == [0.5, 0.5] and (wrong.drop(q.bad_annotators) == 0.1).all()
    for r in q.rows:  # a wrong row's letter is not the sum's; a right row's is
        question = r["prompt"].split("Question: What is ")[1]
        a, op, b = question.split("?")[0].split()
        truth = int(a) + int(b) if op == "+" else int(a) - int(b)
        opts = dict(o.strip().split(") ") for o in question.split("?")[1].split(" , "))
        assert (int(opts[r["response"][-1].lower()]) != truth) == r["bad_row"]
    f = planted_facts(n_annotators=5, rows_per_annotator=20, n_bad=2, bad_wrong=0.5, good_wrong=0.1, seed=3)
    wrong = pd.DataFrame(f.rows).groupby("annotator")["bad_row"].mean()
    assert sorted(wrong[f.bad_annotators]) == [0.5, 0.5] and (wrong.drop(f.bad_annotators) == 0.1).all()
    capital = dict(CAPITALS)
    for r in f.rows + f.reference:  # a wrong row names another country's capital; a right row (and the reference)
        country = r["prompt"].split("capital of ")[1].split("?")[0]
        assert (r["response"] != capital[country]) == r.get("bad_row", False)


def test_auc_matches_its_definition():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.random(40) < 0.3
    s = np.round(rng.normal(size=40) + y, 1)  # ties included
    assert auc(s, y) == pytest.approx(roc_auc_score(y, s))
    assert math.isnan(auc(s, np.zeros(40, bool)))
