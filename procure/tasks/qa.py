"""Multiple-choice QA (seeds/004: MathQA, 5-shot): loaders, k-shot prompts, candidate datasets, accuracy.

Sources (``load_qa``):
- ``bigbench:elementary_math_qa`` (default subtask ``question_only``; ``bigbench:TASK/SUBTASK`` for others): the
  MathQA-derived BIG-bench task, read offline from the ``bigbench==1.0.0`` sdist (358 MB), downloaded once into
  the procure cache with ``pip download --no-deps``; only the one task JSON is extracted (tarfile).
- a local ``.json`` (BIG-bench ``{"examples": [...]}`` or a list of records), ``.jsonl``, ``.csv`` or ``.parquet``;
- anything else is a Hugging Face hub dataset name, loaded with ``datasets.load_dataset(name, split=split)``.
Records may be BIG-bench style (``input``, ``target_scores``) or (question, choices, answer) with the answer as
an index, a letter or the choice text; MathQA's option string ``"a ) 229 , b ) 270 , ..."`` is split too.
Every example becomes ``{"question": str, "choices": list[str], "answer": int}``.

Prompts follow seeds/004 Tables 1-2 (``prompts/qa.txt``): "Question: ... a) x , b) y ..." then "Answer: C".
Accuracy is measured by answer-letter likelihood (argmax over the continuations ``"Answer: A"``, ...; options a
question does not have are masked) or by generation (the first "Answer: X", else a leading lone letter).
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from procure.cache import cache_dir, write_file_atomically
from procure.errors import UserError
from procure.tasks.base import load_template

LETTERS = "ABCDEFGHIJ"
BIGBENCH_SDIST = "bigbench-1.0.0.tar.gz"
_QUESTION_KEYS = ("question", "input", "Problem", "problem", "goal")
_CHOICE_KEYS = ("choices", "options", "target_scores")
_ANSWER_KEYS = ("answer", "correct", "label", "target", "answerKey")
_MATHQA_OPTS = re.compile(r"(?:^|,)\s*([a-j])\s*\)\s*", re.IGNORECASE)
_ANSWER = re.compile(r"answer\s*(?:is\s*:?|:)\s*\**\s*\(?([A-J])\b", re.IGNORECASE)
_LEADING = re.compile(r"^\s*\(?([A-J])(?:\)|\.|:|\s*$)")

RngLike = np.random.Generator | int | None


# ------------------------------------------------------------------------------------------------ loading
def bigbench_task_json(task: str = "elementary_math_qa", subtask: str | None = "question_only") -> Path:
    """Path of one BIG-bench task JSON, extracted once from the cached ``bigbench==1.0.0`` sdist."""
    name = f"{task}__{subtask}.json" if subtask else f"{task}.json"
    target = cache_dir("data", "bigbench") / name
    if target.is_file():
        return target
    sdist = cache_dir("downloads") / BIGBENCH_SDIST
    if not sdist.is_file():
        _download_bigbench(sdist.parent)
    member = f"bigbench-1.0.0/bigbench/benchmark_tasks/{task}/" + (f"{subtask}/" if subtask else "") + "task.json"
    with tarfile.open(sdist, "r:gz") as tar:
        for info in tar:
            if info.name == member:
                data = tar.extractfile(info).read()  # type: ignore[union-attr]
                break
        else:
            raise UserError(
                f"bigbench: no task '{task}'" + (f" subtask '{subtask}'" if subtask else "") + " in the sdist"
            )
    return write_file_atomically(target, data)


def _download_bigbench(dest: Path) -> None:
    """``pip download --no-deps bigbench==1.0.0``. pip 26 rejects the sdist's direct-URL dependency (bleurt) while
    preparing metadata even with --no-deps; pip 23 accepts it, so a second ``python3 -m pip`` is tried."""
    cmds = [[sys.executable, "-m", "pip"], ["python3", "-m", "pip"]]
    for cmd in cmds:
        try:
            # pip's own warnings (the rejected bleurt URL of the first try) are not the user's concern
            args = [*cmd, "download", "--no-deps", "-q", "bigbench==1.0.0", "-d", str(dest)]
            subprocess.run(args, check=False, capture_output=True)
        except OSError:
            continue
        if (dest / BIGBENCH_SDIST).is_file():
            return
    raise UserError(
        f"bigbench: could not download {BIGBENCH_SDIST}; run `python3 -m pip download --no-deps bigbench==1.0.0 -d "
        f"{dest}` with pip < 24 (newer pip rejects its bleurt URL dependency), or pass a local JSON/CSV/parquet file"
    )


def _records(source: str, split: str | None) -> list[dict[str, Any]]:
    if source.startswith("bigbench:"):
        task, _, subtask = source.removeprefix("bigbench:").partition("/")
        sub = subtask or ("question_only" if task == "elementary_math_qa" else None)
        return json.loads(bigbench_task_json(task, sub).read_text())["examples"]
    path = Path(source).expanduser()
    suffix = path.suffix.lower()
    if suffix in (".json", ".jsonl", ".csv", ".parquet"):
        if not path.is_file():
            raise UserError(f"qa source '{source}': file not found")
        if suffix == ".json":
            data = json.loads(path.read_text())
            data = data.get("examples", data.get("data")) if isinstance(data, dict) else data
            if not isinstance(data, list):
                raise UserError(f"qa source '{source}': JSON must be a list of records or {{'examples': [...]}}")
            return data
        if suffix == ".jsonl":
            return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        import pandas as pd

        df = pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
        return df.to_dict(orient="records")
    try:
        import datasets

        return list(datasets.load_dataset(source, split=split or "train"))
    except Exception as exc:  # noqa: BLE001 - any hub/offline failure is the user's source name
        raise UserError(
            f"qa source '{source}': not a local .json/.jsonl/.csv/.parquet file and not loadable from the hub "
            f"({type(exc).__name__}); use bigbench:elementary_math_qa or a local file"
        ) from None


def _pick(rec: dict[str, Any], given: str | None, keys: Sequence[str], what: str, k: int) -> Any:
    for key in [given] if given else keys:
        if key in rec and rec[key] is not None:
            return rec[key]
    raise UserError(f"qa record {k}: no {what} field (tried {', '.join([given] if given else keys)}); set {what}_field")


def _choices(raw: Any, k: int) -> tuple[list[str], int | None]:
    """Choice texts and, for BIG-bench target_scores, the correct index."""
    if isinstance(raw, dict) and "text" in raw:  # hub style {"text": [...], "label": [...]}
        return [str(c) for c in raw["text"]], None
    if isinstance(raw, dict):  # BIG-bench target_scores {choice: score}
        texts = list(raw)
        return texts, int(np.argmax([float(raw[t]) for t in texts]))
    if isinstance(raw, str):
        try:
            val = json.loads(raw)
        except ValueError:
            try:
                val = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                val = None
        if isinstance(val, list | dict):
            return _choices(val, k)
        parts = _MATHQA_OPTS.split(raw)
        if len(parts) >= 5:  # ['', 'a', '229', 'b', '270', ...]
            return [p.strip().strip(",").strip() for p in parts[2::2]], None
        raise UserError(f"qa record {k}: cannot read the choices {raw[:40]!r}; give a list")
    return [str(c) for c in raw], None


def _answer_index(raw: Any, choices: list[str], k: int) -> int:
    if isinstance(raw, list) and raw:
        raw = raw[0]
    if isinstance(raw, bool):
        raise UserError(f"qa record {k}: answer {raw!r} is not an index, letter or choice text")
    if isinstance(raw, int | np.integer) or (isinstance(raw, float) and float(raw).is_integer()):
        idx = int(raw)
    elif isinstance(raw, str) and raw.strip() in choices:
        idx = choices.index(raw.strip())
    elif isinstance(raw, str) and len(raw.strip()) == 1 and raw.strip().upper() in LETTERS:
        idx = LETTERS.index(raw.strip().upper())
    elif isinstance(raw, str) and raw.strip().isdigit():
        idx = int(raw.strip())
    else:
        raise UserError(f"qa record {k}: answer {raw!r} is not an index, letter or choice text")
    if not 0 <= idx < len(choices):
        raise UserError(f"qa record {k}: answer index {idx} outside the {len(choices)} choices")
    return idx


def load_qa(
    source: str,
    *,
    split: str | None = None,
    question_field: str | None = None,
    choices_field: str | None = None,
    answer_field: str | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Load multiple-choice examples ``{"question", "choices", "answer"}`` from ``source`` (see module docstring)."""
    out = []
    for k, rec in enumerate(_records(source, split)):
        q = str(_pick(rec, question_field, _QUESTION_KEYS, "question", k)).strip()
        choices, from_scores = _choices(_pick(rec, choices_field, _CHOICE_KEYS, "choices", k), k)
        if not 2 <= len(choices) <= len(LETTERS):
            raise UserError(f"qa record {k}: {len(choices)} choices; need 2 to {len(LETTERS)}")
        if from_scores is not None and answer_field is None:
            answer = from_scores
        else:
            answer = _answer_index(_pick(rec, answer_field, _ANSWER_KEYS, "answer", k), choices, k)
        out.append({"question": q, "choices": choices, "answer": answer})
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise UserError(f"qa source '{source}': no examples")
    return out


def split_examples(
    examples: Sequence[dict[str, Any]], sizes: Sequence[int], seed: int = 0
) -> list[list[dict[str, Any]]]:
    """Disjoint random subsets of the given sizes (e.g. shots, representative set, test, seller pool)."""
    if sum(sizes) > len(examples):
        raise UserError(f"qa: asked for {sum(sizes)} examples in total but the source has {len(examples)}")
    order = np.random.default_rng(seed).permutation(len(examples))
    out, start = [], 0
    for s in sizes:
        out.append([examples[i] for i in order[start : start + s]])
        start += s
    return out


# ------------------------------------------------------------------------------------------------ prompts
def _fields(ex: dict[str, Any]) -> dict[str, str]:
    opts = " , ".join(f"{LETTERS[i].lower()}) {c}" for i, c in enumerate(ex["choices"]))
    return {"question": ex["question"], "options": opts, "letter": LETTERS[ex["answer"]]}


def qa_prompt(ex: dict[str, Any], shots: Sequence[dict[str, Any]] = ()) -> str:
    """The user text: k demonstrations with their answers, then the question with lettered options."""
    tmpl = load_template("qa")
    demo = "\n\n".join(tmpl["shot"].format(**_fields(s)) for s in shots)
    return tmpl["user"].format(shots=demo + "\n\n" if demo else "", **_fields(ex))


def qa_answer(ex: dict[str, Any]) -> str:
    """The target completion, e.g. ``"Answer: C"``."""
    return load_template("qa")["answer"].format(**_fields(ex))


def qa_system() -> str:
    return load_template("qa")["system"]


def qa_rows(examples: Sequence[dict[str, Any]], shots: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """Training rows {"prompt", "answer", "system", "noisy", "example"} (noisy=False)."""
    return [
        {"prompt": qa_prompt(ex, shots), "answer": qa_answer(ex), "system": qa_system(), "noisy": False, "example": ex}
        for ex in examples
    ]


def make_candidates(
    examples: Sequence[dict[str, Any]],
    n_sellers: int,
    rows_per_seller: int,
    noise_shares: Sequence[float] = (0.0,),
    rng: RngLike = None,
) -> list[list[dict[str, Any]]]:
    """Disjoint seller datasets drawn from ``examples``; in seller j a share noise_shares[j % len] of the rows
    gets a wrong answer letter chosen uniformly (``noisy=True``), mirroring the conjoint noisy sellers."""
    g = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    if n_sellers * rows_per_seller > len(examples):
        raise UserError(f"qa: {n_sellers} sellers x {rows_per_seller} rows > {len(examples)} available examples")
    order = g.permutation(len(examples))
    out = []
    for j in range(n_sellers):
        picked = [examples[i] for i in order[j * rows_per_seller : (j + 1) * rows_per_seller]]
        n_noisy = int(round(noise_shares[j % len(noise_shares)] * rows_per_seller))
        noisy = set(g.choice(rows_per_seller, n_noisy, replace=False).tolist())
        rows = []
        for k, ex in enumerate(picked):
            if k in noisy:
                wrong = [i for i in range(len(ex["choices"])) if i != ex["answer"]]
                ex = {**ex, "answer": int(g.choice(wrong))}
            row = qa_rows([ex])[0]
            row["noisy"] = k in noisy
            rows.append(row)
        out.append(rows)
    return out


# ------------------------------------------------------------------------------------------------ scoring
def parse_choice(text: str) -> int | None:
    """Index of the chosen letter: the first "Answer: X" (also "answer is (X)"), else a leading capital letter
    standing alone or followed by ")", "." or ":" ("B", "(B)", "B) 12"; not "I think")."""
    m = _ANSWER.search(text or "") or _LEADING.match(text or "")
    return None if m is None else LETTERS.index(m.group(1).upper())


class QAEval:
    """k-shot multiple-choice evaluation on ``examples`` with demonstrations ``shots`` (seeds/004: 5-shot MathQA).

    ``score(generations)``: accuracy by generation, the mean correctness over all sampled answers (an
    unparseable answer counts as wrong). ``score_logprobs(lp)``: accuracy by answer-letter likelihood, lp of shape
    (n_prompts, len(choices())) from ``Generator.choice_logprobs(eval_prompts(), choices(), ...)``. ``readout``
    tells the pipeline's learner which of the two to use (default ``"likelihood"``).
    """

    metric_name = "accuracy"
    higher_is_better = True
    temperature = 0.0
    max_new_tokens = 8
    samples_per_prompt = 1

    def __init__(
        self,
        examples: Sequence[dict[str, Any]],
        shots: Sequence[dict[str, Any]] = (),
        name: str = "qa",
        readout: str = "likelihood",
    ):
        if not examples:
            raise UserError("qa: no evaluation examples")
        if readout not in ("likelihood", "generate"):
            raise UserError(f"qa: readout must be 'likelihood' or 'generate', not '{readout}'")
        #: how the learner reads the model's answer: letter likelihood (:meth:`score_logprobs`) or generation
        self.readout = readout
        self.examples = list(examples)
        self.shots = list(shots)
        self.name = name
        self.system = qa_system()
        self.n_choices = max(len(ex["choices"]) for ex in self.examples)

    def eval_prompts(self) -> list[str]:
        return [qa_prompt(ex, self.shots) for ex in self.examples]

    def choices(self) -> list[str]:
        """The continuations scored for answer-letter likelihood: "Answer: A", "Answer: B", ..."""
        return [
            qa_answer({"question": "", "choices": [""] * self.n_choices, "answer": i}) for i in range(self.n_choices)
        ]

    def answers(self) -> np.ndarray:
        return np.array([ex["answer"] for ex in self.examples])

    def score(self, generations: list[list[str]]) -> float:
        if len(generations) != len(self.examples):
            raise UserError(f"qa: got answers for {len(generations)} prompts, expected {len(self.examples)}")
        hits = [
            parse_choice(a) == ex["answer"]
            for ex, answers in zip(self.examples, generations)
            for a in ([answers] if isinstance(answers, str) else answers)
        ]
        return float(np.mean(hits)) if hits else 0.0

    def _masked(self, logprobs: np.ndarray) -> np.ndarray:
        """``logprobs`` checked for shape, with the letters a question does not have set to -inf."""
        lp = np.asarray(logprobs, dtype=np.float64)
        if lp.shape != (len(self.examples), self.n_choices):
            raise UserError(f"qa: logprobs shape {lp.shape}, expected {(len(self.examples), self.n_choices)}")
        lp = lp.copy()
        for i, ex in enumerate(self.examples):
            lp[i, len(ex["choices"]) :] = -np.inf
        return lp

    def score_logprobs(self, logprobs: np.ndarray) -> float:
        return float(np.mean(self._masked(logprobs).argmax(axis=1) == self.answers()))

    def letter_scores(self, logprobs: np.ndarray) -> dict[str, float]:
        """Three readouts of the answer-letter log-likelihoods ``logprobs`` (shape as in :meth:`score_logprobs`):

        - ``accuracy``: share of questions whose most likely letter is the answer (= :meth:`score_logprobs`);
        - ``balanced_accuracy``: the mean over answer letters present of that letter's recall, so a model that
          always picks one letter scores 1 / (letters present) whatever the label shares;
        - ``nll``: mean over questions of -log p(answer), p the softmax of the log-likelihoods over the question's
          letters (nats; 0 is perfect, log(n_choices) is uniform; lower is better).
        """
        from scipy.special import logsumexp

        lp = self._masked(logprobs)
        y = self.answers()
        hit = lp.argmax(axis=1) == y
        return {
            "accuracy": float(hit.mean()),
            "balanced_accuracy": float(np.mean([hit[y == a].mean() for a in np.unique(y)])),
            "nll": float(np.mean(logsumexp(lp, axis=1) - lp[np.arange(len(y)), y])),
        }

    def utility(self, metric: float) -> float:
        return float(metric)


DEFAULT_SOURCE = "bigbench:elementary_math_qa"


class QAMarket:
    """A QA data market for the pipeline (seeds/004 appendix A): one shuffled pool split into disjoint parts:
    ``n_shot`` demonstrations, the buyer's representative set (``reference_size``, seeds/004 uses 200), a
    validation and a test set, and the sellers' pool. Round t's offers are ``n_sellers`` disjoint slices of
    ``rows_per_seller`` rows of the pool, drawn with a generator seeded by (seed, t); in seller j a share
    ``noise_shares[j % len]`` of the rows carries a wrong answer letter (default: none).
    """

    def __init__(
        self,
        data_file: str | None = None,
        n_sellers: int = 5,
        rows_per_seller: int = 20,
        reference_size: int = 200,
        val_size: int = 64,
        test_size: int = 64,
        n_shot: int = 0,
        seed: int = 0,
        noise_shares: Sequence[float] = (0.0,),
        readout: str = "likelihood",
    ):
        examples = load_qa(data_file or DEFAULT_SOURCE)
        fixed = [n_shot, reference_size, val_size, test_size]
        shots, ref, val, test = split_examples(examples, fixed, seed=seed)
        used = {id(e) for part in (shots, ref, val, test) for e in part}
        self.pool = [e for e in examples if id(e) not in used]
        if n_sellers * rows_per_seller > len(self.pool):
            raise UserError(
                f"qa: {n_sellers} sellers x {rows_per_seller} rows need {n_sellers * rows_per_seller} pool examples, "
                f"only {len(self.pool)} remain after shots/reference/val/test; lower sizes or use a bigger source"
            )
        self.shots, self.ref, self.seed = shots, ref, seed
        self.n_sellers, self.rows_per_seller, self.noise_shares = n_sellers, rows_per_seller, tuple(noise_shares)
        self._tasks = {s: QAEval(part, shots, name="qa", readout=readout) for s, part in (("val", val), ("test", test))}

    def offers(self, round: int) -> list[list[dict[str, Any]]]:
        """Round ``round``'s candidate datasets (training rows, zero-shot prompts), one list per seller."""
        if self.rows_per_seller == 0:
            return [[] for _ in range(self.n_sellers)]
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 7, round]))
        return make_candidates(self.pool, self.n_sellers, self.rows_per_seller, self.noise_shares, rng)

    def reference(self) -> list[dict[str, Any]]:
        """The representative set as training rows (BM25 queries, validation gradient)."""
        return qa_rows(self.ref)

    def task(self, split: str) -> QAEval:
        """``"val"``/``"validation"`` or ``"test"``: k-shot accuracy on that part."""
        key = "val" if split in ("val", "validation") else split
        if key not in self._tasks:
            raise UserError(f"qa: unknown split '{split}'; use val or test")
        return self._tasks[key]
