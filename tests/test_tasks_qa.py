"""Multiple-choice QA: loaders on small local fixtures, k-shot prompts, candidates, accuracy (no downloads)."""

from __future__ import annotations

import io
import json
import math
import tarfile

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from procure.errors import UserError
from procure.tasks.base import Task
from procure.tasks.qa import (
    QAEval,
    QAMarket,
    bigbench_task_json,
    load_qa,
    make_candidates,
    parse_choice,
    qa_prompt,
    split_examples,
)

BB = {
    "name": "question_only",
    "examples": [
        {"input": "120 is what percent of 50 ?", "target_scores": {"5 %": 0, "240 %": 1, "50 %": 0, "2 %": 0}},
        {"input": "2 + 2 ?", "target_scores": {"3": 0, "4": 1}},
        {"input": "ratio of 10 to 20 ?", "target_scores": {"1 / 2": 1, "1 / 3": 0, "2": 0}},
    ],
}
EXPECTED = [
    {"question": "120 is what percent of 50 ?", "choices": ["5 %", "240 %", "50 %", "2 %"], "answer": 1},
    {"question": "2 + 2 ?", "choices": ["3", "4"], "answer": 1},
    {"question": "ratio of 10 to 20 ?", "choices": ["1 / 2", "1 / 3", "2"], "answer": 0},
]


def test_load_local_formats(tmp_path):
    (tmp_path / "bb.json").write_text(json.dumps(BB))
    assert load_qa(str(tmp_path / "bb.json")) == EXPECTED
    records = [{"question": e["question"], "choices": e["choices"], "answer": e["answer"]} for e in EXPECTED]
    (tmp_path / "list.json").write_text(json.dumps(records))
    assert load_qa(str(tmp_path / "list.json")) == EXPECTED
    (tmp_path / "x.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    assert load_qa(str(tmp_path / "x.jsonl"), limit=2) == EXPECTED[:2]
    # MathQA's own layout: option string and answer letter
    pd.DataFrame(
        {
            "Problem": [e["question"] for e in EXPECTED],
            "options": ["a ) 5 % , b ) 240 % , c ) 50 % , d ) 2 %", "a ) 3 , b ) 4", "a ) 1 / 2 , b ) 1 / 3 , c ) 2"],
            "correct": ["b", "B", "a"],
        }
    ).to_csv(tmp_path / "m.csv", index=False)
    assert load_qa(str(tmp_path / "m.csv")) == EXPECTED
    # parquet with list choices and the answer given as the choice text, custom field names
    pd.DataFrame(
        {
            "q": [e["question"] for e in EXPECTED],
            "opts": [e["choices"] for e in EXPECTED],
            "gold": ["240 %", "4", "1 / 2"],
        }
    ).to_parquet(tmp_path / "p.parquet")
    got = load_qa(str(tmp_path / "p.parquet"), question_field="q", choices_field="opts", answer_field="gold")
    assert got == EXPECTED


def test_load_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_qa(str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text(json.dumps([{"question": "q", "choices": ["a", "b"], "answer": 5}]))
    with pytest.raises(UserError, match="outside"):
        load_qa(str(tmp_path / "bad.json"))
    (tmp_path / "nof.json").write_text(json.dumps([{"text": "q"}]))
    with pytest.raises(UserError, match="question_field"):
        load_qa(str(tmp_path / "nof.json"))


def test_bigbench_extraction_from_cached_sdist(tmp_path, monkeypatch):
    monkeypatch.setenv("PROCURE_CACHE", str(tmp_path))
    sdist = tmp_path / "downloads" / "bigbench-1.0.0.tar.gz"
    sdist.parent.mkdir(parents=True)
    payload = json.dumps(BB).encode()
    with tarfile.open(sdist, "w:gz") as tar:
        for name in ("other_task/task.json", "elementary_math_qa/question_only/task.json"):
            info = tarfile.TarInfo(f"bigbench-1.0.0/bigbench/benchmark_tasks/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    assert load_qa("bigbench:elementary_math_qa") == EXPECTED
    assert bigbench_task_json().is_file()
    with pytest.raises(UserError, match="no task"):
        bigbench_task_json("nope", None)
    sdist.unlink()  # extracted once: the sdist is not needed any more
    assert load_qa("bigbench:elementary_math_qa/question_only") == EXPECTED


def test_prompts_and_k_shot():
    p0 = qa_prompt(EXPECTED[0])
    assert p0 == "Question: 120 is what percent of 50 ? a) 5 % , b) 240 % , c) 50 % , d) 2 %"
    p2 = qa_prompt(EXPECTED[2], shots=EXPECTED[:2])
    assert p2.count("Question:") == 3 and p2.count("Answer:") == 2
    assert "Answer: B\n\nQuestion: 2 + 2 ? a) 3 , b) 4\nAnswer: B\n\nQuestion: ratio" in p2


@pytest.mark.parametrize(
    ("text", "idx"),
    [
        ("Answer: C", 2),
        ("answer:b", 1),
        ("The answer is (d).", 3),
        ("B) 12", 1),
        ("B", 1),
        ("I think so", None),
        ("", None),
    ],
)
def test_parse_choice(text, idx):
    assert parse_choice(text) == idx


def test_accuracy_by_generation_and_by_likelihood():
    ev = QAEval(EXPECTED, shots=EXPECTED[:1])
    assert isinstance(ev, Task) and ev.higher_is_better and ev.utility(0.5) == 0.5
    assert ev.choices() == ["Answer: A", "Answer: B", "Answer: C", "Answer: D"]
    assert ev.score([["Answer: B"], ["Answer: B", "Answer: A"], ["?"]]) == pytest.approx(2 / 4)
    lp = np.array([[-3.0, -1.0, -2.0, -9.0], [-1.0, -2.0, -0.5, -0.1], [-0.2, -1.0, -3.0, -0.1]])
    # row 0 -> B (right); row 1 has only a/b, so C/D are masked -> A (wrong); row 2 has a-c, D masked -> A (right)
    assert ev.score_logprobs(lp) == pytest.approx(2 / 3)
    with pytest.raises(UserError, match="shape"):
        ev.score_logprobs(lp[:, :2])


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 12))
def test_letter_scores_match_a_loop(seed, n):
    rng = np.random.default_rng(seed)
    k = rng.integers(2, 6, n)  # letters per question
    ex = [{"question": f"q{i}", "choices": ["x"] * int(k[i]), "answer": int(rng.integers(k[i]))} for i in range(n)]
    ev = QAEval(ex)
    lp = rng.normal(0, 3, (n, ev.n_choices)) - 5
    got = ev.letter_scores(lp)
    hits, nll, recall = [], [], {}
    for i, e in enumerate(ex):
        row = lp[i, : len(e["choices"])]
        best = max(range(len(row)), key=lambda j: row[j])
        hits.append(best == e["answer"])
        recall.setdefault(e["answer"], []).append(best == e["answer"])
        nll.append(-math.log(math.exp(row[e["answer"]]) / sum(math.exp(v) for v in row)))
    assert got["accuracy"] == pytest.approx(np.mean(hits)) and got["accuracy"] == ev.score_logprobs(lp)
    assert got["balanced_accuracy"] == pytest.approx(np.mean([np.mean(r) for r in recall.values()]))
    assert got["nll"] == pytest.approx(np.mean(nll))


def test_letter_scores_of_a_one_letter_model():
    ex = [{"question": f"q{i}", "choices": list("abcd"), "answer": a} for i, a in enumerate([0, 0, 0, 0, 0, 0, 1, 2])]
    ev = QAEval(ex)
    always_a = np.tile([0.0, -1.0, -1.0, -1.0], (len(ex), 1))
    s = ev.letter_scores(always_a)
    assert s["accuracy"] == pytest.approx(6 / 8) and s["balanced_accuracy"] == pytest.approx(1 / 3)
    assert ev.letter_scores(np.zeros((len(ex), 4)))["nll"] == pytest.approx(math.log(4))


def test_candidates_and_splits():
    pool = [{"question": f"q{i}", "choices": ["a", "b", "c"], "answer": i % 3} for i in range(40)]
    a, b = split_examples(pool, [10, 20], seed=1)
    assert len(a) == 10 and len(b) == 20 and not {e["question"] for e in a} & {e["question"] for e in b}
    cands = make_candidates(pool, 3, 10, noise_shares=(0.0, 0.5, 1.0), rng=0)
    qs = [r["example"]["question"] for c in cands for r in c]
    assert len(set(qs)) == 30
    for share, rows in zip((0.0, 0.5, 1.0), cands):
        assert sum(r["noisy"] for r in rows) == int(round(share * 10))
        for r in rows:
            truth = pool[int(r["example"]["question"][1:])]["answer"]
            assert (r["example"]["answer"] != truth) == r["noisy"]
            assert r["answer"] == f"Answer: {'ABC'[r['example']['answer']]}"
    with pytest.raises(UserError, match="available"):
        make_candidates(pool, 5, 10)


def test_qa_market_for_the_pipeline(tmp_path):
    records = [{"question": f"q{i}", "choices": ["a", "b", "c", "d"], "answer": i % 4} for i in range(60)]
    (tmp_path / "pool.json").write_text(json.dumps({"examples": records}))
    m = QAMarket(
        str(tmp_path / "pool.json"),
        n_sellers=3,
        rows_per_seller=5,
        reference_size=10,
        val_size=8,
        test_size=7,
        n_shot=2,
        seed=1,
    )
    held = [e["question"] for e in m.shots + m.ref + m.task("val").examples + m.task("test").examples]
    assert len(held) == len(set(held)) == 27 and len(m.pool) == 33
    offers = m.offers(0)
    assert [len(o) for o in offers] == [5, 5, 5]
    qs = [r["example"]["question"] for o in offers for r in o]
    assert len(set(qs)) == 15 and not set(qs) & set(held)
    assert offers == m.offers(0) and offers != m.offers(1)
    assert m.task("validation") is m.task("val") and m.task("test").eval_prompts()[0].count("Question:") == 3
    assert len(m.reference()) == 10 and m.reference()[0]["answer"].startswith("Answer: ")
    with pytest.raises(UserError, match="pool examples"):
        QAMarket(
            str(tmp_path / "pool.json"), n_sellers=10, rows_per_seller=10, reference_size=5, val_size=5, test_size=5
        )
