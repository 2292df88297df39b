"""Benchmark: multiple-choice scoring by answer-letter likelihood, one forward pass per prompt (ours: the choices
"Answer: A" ... "Answer: E" share all but the last token) against one forward pass per (prompt, choice) (the
general path, the reference), in one process on SmolLM2-135M, BIG-bench elementary_math_qa prompts.

    HF_HUB_OFFLINE=1 .venv/bin/python eval/bench_choices.py [--n 32] [--shots 0 5]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    import numpy as np

    from procure.llm import hf_backend
    from procure.llm.models import resolve_model
    from procure.tasks.qa import QAEval, load_qa, split_examples

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--shots", nargs="+", type=int, default=[0, 5])
    ap.add_argument("--model", default="smollm2-135m")
    args = ap.parse_args()
    gen = hf_backend.HFGenerator(resolve_model(args.model), adapter_mode="merged")
    fast_path = hf_backend._last_token_choices
    print("| prompts | ours: one pass per prompt (s) | reference: one per choice (s) | speed-up | max abs diff |")
    print("|---|---:|---:|---:|---:|")
    for k in args.shots:
        shots, test = split_examples(load_qa("bigbench:elementary_math_qa"), [k, args.n], seed=0)
        task = QAEval(test, shots)
        prompts, choices = task.eval_prompts(), task.choices()
        gen.choice_logprobs(prompts[:2], choices, None, system=task.system)  # warm-up
        t0 = time.perf_counter()
        ours = gen.choice_logprobs(prompts, choices, None, system=task.system)
        t_ours = time.perf_counter() - t0
        hf_backend._last_token_choices = lambda cids: False
        try:
            t0 = time.perf_counter()
            ref = gen.choice_logprobs(prompts, choices, None, system=task.system)
            t_ref = time.perf_counter() - t0
        finally:
            hf_backend._last_token_choices = fast_path
        print(
            f"| {args.n} MathQA, {k}-shot, {len(choices)} letters | {t_ours:.2f} | {t_ref:.2f} | {t_ref / t_ours:.1f}x "
            f"| {float(np.abs(ours - ref).max()):.1e} |",
            flush=True,
        )
    gen.close()


if __name__ == "__main__":
    main()
