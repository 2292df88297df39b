"""Planted-annotator data sets: annotation batches whose bad annotators and bad rows are known, the ground truth
for ``procure value`` (shared by the tests and ``eval/bench_value.py``).

- ``conjoint``: product ratings (:mod:`procure.tasks.conjoint`, the prompt of the pipeline's conjoint task).
  Good annotators rate from the world's true part-worths; ``n_noisy`` bad ones from an unrelated draw (the
  world's ``noisy`` part-worths) and ``n_biased`` bad ones from the true part-worths plus ``bias`` points
  (a lenient rater). Every row of a bad annotator is a bad row. The reference (the buyer's dev set) is rated
  from the true part-worths.
- ``choice``: multiple-choice arithmetic in the QA task's format (:mod:`procure.tasks.qa`: "Question: ... a) x ,
  b) y ..." -> "Answer: C"). ``n_bad`` bad annotators give a wrong letter in a share ``bad_wrong`` of their rows,
  good ones in a share ``good_wrong``; a bad row is a row with a wrong letter. The reference is answered right.
- ``facts``: "What is the capital of X?" answered with the city's name, for facts a small model knows (SmolLM2-135M
  gives the right capital a lower loss than a wrong one in 15 of 16 checked; letter answers of multiple choice,
  and sums, it does not tell apart). ``n_bad`` bad annotators name a wrong capital in a share ``bad_wrong`` of
  their rows, good ones in ``good_wrong``; a bad row is a wrong answer. The reference is answered right.

Bad annotators are drawn at random among ``a00..a{n-1}`` (seeded), so their position says nothing.
Rows: ``{"id", "annotator", "prompt", "response", "system", "bad_row", "bad_annotator"}``; reference rows:
``{"prompt", "response", "system"}``. :meth:`Planted.write` saves both as JSONL for ``procure value``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from procure.errors import UserError

KINDS = ("conjoint", "choice", "facts")

#: (country, capital) pairs for the ``facts`` kind: well-known ones, single common spellings
CAPITALS = (
    ("France", "Paris"),
    ("Germany", "Berlin"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Japan", "Tokyo"),
    ("China", "Beijing"),
    ("Russia", "Moscow"),
    ("Egypt", "Cairo"),
    ("Greece", "Athens"),
    ("Portugal", "Lisbon"),
    ("the United Kingdom", "London"),
    ("Austria", "Vienna"),
    ("Ireland", "Dublin"),
    ("Norway", "Oslo"),
    ("Sweden", "Stockholm"),
    ("Poland", "Warsaw"),
    ("Canada", "Ottawa"),
    ("Australia", "Canberra"),
    ("India", "New Delhi"),
    ("Argentina", "Buenos Aires"),
    ("Peru", "Lima"),
    ("Chile", "Santiago"),
    ("Cuba", "Havana"),
    ("Turkey", "Ankara"),
    ("Iran", "Tehran"),
    ("Iraq", "Baghdad"),
    ("Saudi Arabia", "Riyadh"),
    ("Thailand", "Bangkok"),
    ("Vietnam", "Hanoi"),
    ("South Korea", "Seoul"),
    ("Indonesia", "Jakarta"),
    ("the Philippines", "Manila"),
    ("Kenya", "Nairobi"),
    ("Finland", "Helsinki"),
    ("Denmark", "Copenhagen"),
    ("the Netherlands", "Amsterdam"),
    ("Belgium", "Brussels"),
    ("the Czech Republic", "Prague"),
    ("Hungary", "Budapest"),
    ("Romania", "Bucharest"),
)


@dataclass
class Planted:
    """A planted data set: annotation rows, the reference rows and the names of the bad annotators."""

    kind: str
    rows: list[dict[str, Any]]
    reference: list[dict[str, Any]]
    bad_annotators: list[str]

    @property
    def annotators(self) -> list[str]:
        return list(dict.fromkeys(r["annotator"] for r in self.rows))

    def write(self, folder: str | Path) -> tuple[Path, Path]:
        """``folder/<kind>_data.jsonl`` and ``folder/<kind>_reference.jsonl``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = folder / f"{self.kind}_data.jsonl", folder / f"{self.kind}_reference.jsonl"
        for path, rows in zip(paths, (self.rows, self.reference)):
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return paths


def _bad_set(n_annotators: int, n_bad: int, rng: np.random.Generator) -> set[int]:
    if not 0 <= n_bad <= n_annotators or n_annotators < 1:
        raise UserError(f"planted: {n_bad} bad annotators among {n_annotators}")
    return set(rng.choice(n_annotators, n_bad, replace=False).tolist())


def planted_conjoint(
    n_annotators: int = 8,
    rows_per_annotator: int = 16,
    n_noisy: int = 2,
    n_biased: int = 2,
    bias: float = 25.0,
    reference_size: int = 32,
    seed: int = 0,
) -> Planted:
    """Conjoint ratings from true / noisy / biased part-worths (module docstring)."""
    from procure.tasks.base import load_template
    from procure.tasks.conjoint import ConjointWorld, instruction, render_profile, sample_profiles

    rng = np.random.default_rng(seed)
    world = ConjointWorld(seed)
    bad = sorted(_bad_set(n_annotators, n_noisy + n_biased, rng))
    kinds = {a: ("noisy" if k < n_noisy else "biased") for k, a in enumerate(rng.permutation(bad).tolist())}
    answer, system = load_template("conjoint")["answer"], instruction()

    def rated(profiles: np.ndarray, kind: str) -> list[tuple[str, str]]:
        source = "noisy" if kind == "noisy" else "true"
        ratings = world.rate(profiles, source, rng) + (bias if kind == "biased" else 0.0)
        ratings = np.rint(np.clip(ratings, 0.0, 100.0)).astype(int)
        return [(render_profile(p), answer.format(rating=int(r))) for p, r in zip(profiles, ratings)]

    rows = []
    for a in range(n_annotators):
        kind = kinds.get(a, "true")
        for prompt, response in rated(sample_profiles(rows_per_annotator, rng), kind):
            rows.append(
                {
                    "id": f"a{a:02d}-{len(rows):05d}",
                    "annotator": f"a{a:02d}",
                    "prompt": prompt,
                    "response": response,
                    "system": system,
                    "bad_row": kind != "true",
                    "bad_annotator": kind != "true",
                    "planted": kind,
                }
            )
    reference = [
        {"prompt": p, "response": r, "system": system} for p, r in rated(sample_profiles(reference_size, rng), "true")
    ]
    return Planted("conjoint", rows, reference, [f"a{a:02d}" for a in bad])


def _question(rng: np.random.Generator, n_choices: int) -> dict[str, Any]:
    a, b = (int(x) for x in rng.integers(2, 60, 2))
    op = "+" if rng.random() < 0.6 else "-"
    right = a + b if op == "+" else a - b
    wrong: set[int] = set()
    for d in rng.permutation([1, -1, 2, -2, 10, -10, 11, -11, 9, -9]).tolist():
        if len(wrong) == n_choices - 1:
            break
        wrong.add(right + int(d))
    choices = [right, *sorted(wrong)]
    order = rng.permutation(n_choices)
    return {
        "question": f"What is {a} {op} {b}?",
        "choices": [str(choices[i]) for i in order],
        "answer": int(np.flatnonzero(order == 0)[0]),
    }


def _wrong_share_rows(
    n_annotators: int,
    rows_per_annotator: int,
    bad: set[int],
    bad_wrong: float,
    good_wrong: float,
    rng: np.random.Generator,
    make_row: Callable[[bool], tuple[str, str, str | None]],
) -> list[dict[str, Any]]:
    """Annotator a's rows: a share ``bad_wrong`` (a bad annotator) or ``good_wrong`` of them answered wrong, drawn
    with ``rng``; ``make_row(wrong)`` gives (prompt, response, system)."""
    rows: list[dict[str, Any]] = []
    for a in range(n_annotators):
        n_wrong = int(round((bad_wrong if a in bad else good_wrong) * rows_per_annotator))
        wrong = set(rng.choice(rows_per_annotator, n_wrong, replace=False).tolist())
        for k in range(rows_per_annotator):
            prompt, response, system = make_row(k in wrong)
            rows.append(
                {
                    "id": f"a{a:02d}-{len(rows):05d}",
                    "annotator": f"a{a:02d}",
                    "prompt": prompt,
                    "response": response,
                    "system": system,
                    "bad_row": k in wrong,
                    "bad_annotator": a in bad,
                    "planted": "wrong" if k in wrong else "right",
                }
            )
    return rows


def planted_choice(
    n_annotators: int = 8,
    rows_per_annotator: int = 16,
    n_bad: int = 3,
    bad_wrong: float = 0.6,
    good_wrong: float = 0.05,
    reference_size: int = 32,
    n_choices: int = 4,
    seed: int = 0,
) -> Planted:
    """Multiple-choice rows with a share of wrong letters (module docstring)."""
    from procure.tasks.qa import qa_rows

    if not (0 <= good_wrong <= 1 and 0 <= bad_wrong <= 1) or not 2 <= n_choices <= 10:
        raise UserError("planted: wrong-letter shares must be in [0, 1] and n_choices in [2, 10]")
    rng = np.random.default_rng(seed)
    bad = _bad_set(n_annotators, n_bad, rng)

    def row(wrong: bool) -> tuple[str, str, str | None]:
        ex = _question(rng, n_choices)
        if wrong:
            ex = {**ex, "answer": int(rng.choice([i for i in range(n_choices) if i != ex["answer"]]))}
        r = qa_rows([ex])[0]
        return r["prompt"], r["answer"], r["system"]

    rows = _wrong_share_rows(n_annotators, rows_per_annotator, bad, bad_wrong, good_wrong, rng, row)
    reference = [
        {"prompt": r["prompt"], "response": r["answer"], "system": r["system"]}
        for r in qa_rows([_question(rng, n_choices) for _ in range(reference_size)])
    ]
    return Planted("choice", rows, reference, [f"a{a:02d}" for a in sorted(bad)])


def planted_facts(
    n_annotators: int = 8,
    rows_per_annotator: int = 16,
    n_bad: int = 3,
    bad_wrong: float = 0.6,
    good_wrong: float = 0.05,
    reference_size: int = 32,
    seed: int = 0,
) -> Planted:
    """Capital-city questions answered with the city's name, a share of them wrong (module docstring)."""
    if not (0 <= good_wrong <= 1 and 0 <= bad_wrong <= 1):
        raise UserError("planted: wrong-answer shares must be in [0, 1]")
    rng = np.random.default_rng(seed)
    bad = _bad_set(n_annotators, n_bad, rng)
    prompt = "What is the capital of {}? Answer with the city only."

    def row(wrong: bool) -> tuple[str, str, str | None]:
        i = int(rng.integers(len(CAPITALS)))
        city = CAPITALS[int(rng.choice([j for j in range(len(CAPITALS)) if j != i])) if wrong else i][1]
        return prompt.format(CAPITALS[i][0]), city, None

    rows = _wrong_share_rows(n_annotators, rows_per_annotator, bad, bad_wrong, good_wrong, rng, row)
    reference = [
        {"prompt": prompt.format(CAPITALS[i][0]), "response": CAPITALS[i][1], "system": None}
        for i in rng.integers(len(CAPITALS), size=reference_size).tolist()
    ]
    return Planted("facts", rows, reference, [f"a{a:02d}" for a in sorted(bad)])


def make_planted(kind: str, **options: Any) -> Planted:
    """``planted_conjoint``, ``planted_choice`` or ``planted_facts`` with ``options``."""
    if kind == "conjoint":
        return planted_conjoint(**options)
    if kind == "choice":
        return planted_choice(**options)
    if kind == "facts":
        return planted_facts(**options)
    raise UserError(f"planted: unknown kind '{kind}'; use {' or '.join(KINDS)}")
