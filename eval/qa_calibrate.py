"""Calibrate the QA market before comparing valuation methods (issue 14): can SmolLM2-135M on this CPU tell
clean training rows from rows whose answer letters are all wrong?

For each task, N (rows trained on) and seed: test accuracy of the base model, of a fresh LoRA fine-tuned on N
clean rows, and of one fine-tuned on the same N rows with every answer letter wrong (uniform among the wrong
ones). Accuracy by answer-letter likelihood (one forward per question, the k-shot prompt) and, optionally, by
generation (greedy, the first "Answer: X"). The test set is fixed per task (split seed 0); seeds vary the
training rows and the LoRA seed, so the seed-to-seed sd is what a market comparison has to beat. Paired: the
clean and wrong arms of a seed train on the same questions.

Resumable (one JSON row per measurement in ``--out``/rows.jsonl); writes eval/results/qa_calibration.json and
prints the table for the README.

    .venv/bin/python eval/qa_calibrate.py --tasks elementary_math_qa/question_only --n 32 128 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]


def _load(task: str, test_size: int, n_shot: int, pool: int):
    from procure.tasks.qa import QAEval, load_qa, split_examples

    examples = load_qa(f"bigbench:{task}")
    pool = min(pool, len(examples) - test_size - n_shot)
    shots, test, rest = split_examples(examples, [n_shot, test_size, pool], seed=0)
    return QAEval(test, shots, name=task), rest


def _scores(gen, task, adapter, generate: bool) -> dict[str, float]:
    from procure.llm.generator import GenParams

    lp = gen.choice_logprobs(task.eval_prompts(), task.choices(), adapter, system=task.system)
    out = {"acc_likelihood": float(task.score_logprobs(lp))}
    if generate:
        params = GenParams(max_new_tokens=8, temperature=0.0, n=1, seed=0)
        out["acc_generate"] = float(task.score(gen.generate(task.eval_prompts(), adapter, params, system=task.system)))
    return out


def main() -> None:
    import numpy as np

    from procure.llm.hf_backend import HFGenerator
    from procure.llm.models import resolve_model
    from procure.llm.train import StageTrainer, TrainConfig
    from procure.tasks.qa import make_candidates

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=["elementary_math_qa/question_only"])
    ap.add_argument("--n", nargs="+", type=int, default=[32, 128])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--test-size", type=int, default=200)
    ap.add_argument("--n-shot", type=int, default=0)
    ap.add_argument("--generate", action="store_true", help="also score by greedy generation")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--out", type=Path, default=Path.home() / ".cache/procure/runs/qa-calibration")
    ap.add_argument("--results", type=Path, default=ROOT / "eval" / "results" / "qa_calibration.json")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows_path = args.out / "rows.jsonl"
    done = [json.loads(x) for x in rows_path.read_text().splitlines()] if rows_path.is_file() else []
    have = {(r["task"], r["n"], r["seed"], r["arm"], r["epochs"], r["lr"], r["n_shot"]) for r in done}
    path = resolve_model(args.model)
    gen = HFGenerator(path, adapter_mode="merged")
    cfg = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=8, lora_r=8, lora_alpha=16, max_length=256)
    for task_name in args.tasks:
        task, rest = _load(task_name, args.test_size, args.n_shot, 4096)
        jobs = [(0, 0, "base")] + [(n, s, arm) for n in args.n for s in args.seeds for arm in ("clean", "wrong")]
        for n, seed, arm in jobs:
            key = (task_name, n, seed, arm, args.epochs, args.lr, args.n_shot)
            if key in have:
                continue
            t0 = time.perf_counter()
            adapter = None
            if arm != "base":
                rng = np.random.default_rng(np.random.SeedSequence([seed, n]))
                picked = [rest[i] for i in rng.permutation(len(rest))[:n]]
                share = 1.0 if arm == "wrong" else 0.0
                train_rows = make_candidates(picked, 1, n, (share,), np.random.default_rng(seed))[0]
                name = f"{task_name.replace('/', '__')}-{n}-{seed}-{arm}-{args.epochs}-{args.lr}"
                adapter = args.out / "adapters" / name
                if not (adapter / "adapter_config.json").is_file():
                    StageTrainer(path, cfg.model_copy(update={"seed": seed})).train(train_rows, adapter, progress=True)
            row = dict(zip(("task", "n", "seed", "arm", "epochs", "lr", "n_shot"), key))
            row.update(_scores(gen, task, adapter, args.generate), seconds=time.perf_counter() - t0)
            print(json.dumps(row), flush=True)
            with rows_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            done.append(row)
    gen.close()
    summarise(done, args.results)


def summarise(rows: list[dict], dest: Path) -> dict:
    """Mean and sd per (task, n, arm, epochs, lr, n_shot); the clean - wrong gap per seed and its mean / sd."""
    import numpy as np

    out: dict = {"rows": rows, "table": []}
    keys = sorted({(r["task"], r["n"], r["epochs"], r["lr"], r["n_shot"]) for r in rows if r["arm"] != "base"})
    print("\n| task | N | epochs | lr | shots | base | clean | wrong | clean - wrong (sd) | gap / sd |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for task, n, ep, lr, shots in keys:
        base = [r["acc_likelihood"] for r in rows if r["task"] == task and r["arm"] == "base" and r["n_shot"] == shots]
        by = {
            arm: {
                r["seed"]: r["acc_likelihood"]
                for r in rows
                if (r["task"], r["n"], r["epochs"], r["lr"], r["n_shot"], r["arm"]) == (task, n, ep, lr, shots, arm)
            }
            for arm in ("clean", "wrong")
        }
        seeds = sorted(set(by["clean"]) & set(by["wrong"]))
        gaps = np.array([by["clean"][s] - by["wrong"][s] for s in seeds])
        sd = float(np.std(list(by["clean"].values()), ddof=1)) if len(by["clean"]) > 1 else float("nan")
        entry = {
            "task": task,
            "n": n,
            "epochs": ep,
            "lr": lr,
            "n_shot": shots,
            "seeds": seeds,
            "base": base[0] if base else None,
            "clean_mean": float(np.mean(list(by["clean"].values()))),
            "wrong_mean": float(np.mean(list(by["wrong"].values()))),
            "clean_sd": sd,
            "gap_mean": float(gaps.mean()) if len(gaps) else float("nan"),
            "gap_sd": float(gaps.std(ddof=1)) if len(gaps) > 1 else float("nan"),
        }
        entry["gap_over_sd"] = entry["gap_mean"] / sd if sd and sd == sd else float("nan")
        out["table"].append(entry)
        print(
            f"| {task} | {n} | {ep:g} | {lr:g} | {shots} | {entry['base'] or float('nan'):.3f} | "
            f"{entry['clean_mean']:.3f} | {entry['wrong_mean']:.3f} | "
            f"{entry['gap_mean']:+.3f} ({entry['gap_sd']:.3f}) | {entry['gap_over_sd']:.1f} |"
        )
    from procure.cache import write_json_atomically

    write_json_atomically(dest, out)
    return out


if __name__ == "__main__":
    main()
