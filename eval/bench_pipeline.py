"""Benchmark: training throughput of the pipeline's LoRA stage (procure.llm.train.StageTrainer, as the
pipeline calls it: encode + wrap + accelerate loop + atomic save) against a bare torch forward/backward/AdamW
loop over the same batches of the same LoRA model, in one process. Prints a markdown table with the ratio
(target: >= 0.8).

    .venv/bin/python eval/bench_pipeline.py [--model smollm2-135m|tiny] [--rows 48] [--reps 2]

Training settings come from recipes/conjoint-ads.yaml (`training:`), the rows are conjoint rows. The machine is
shared, so each side reports its best (minimum) time over interleaved repetitions, in wall and CPU seconds.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]


def rows(n: int) -> list[dict]:
    import numpy as np

    from procure.tasks.conjoint import ConjointWorld, make_candidates

    (cands,) = make_candidates(ConjointWorld(0), 1, n, [0.3], np.random.default_rng(0))
    return [{"prompt": r["prompt"], "answer": r["answer"], "system": r["system"]} for r in cands]


def bare_loop(trainer, examples: list[dict], cfg, window: bool = True) -> tuple[int, float, float]:
    """Same model, same LoRA config, same batches (the DataLoader's seeded permutation), plain torch.

    ``window=True``: the same answer-window loss as StageTrainer (``procure.llm.loss.batch_loss``), so the ratio
    is the trainer's overhead; ``window=False``: transformers' full-logits ``model(**batch).loss``."""
    import torch
    from peft import LoraConfig, get_peft_model

    from procure.llm.formatting import encode_row, pad_batch
    from procure.llm.loss import batch_loss

    enc = [encode_row(trainer.tokenizer, ex, cfg.max_length, i) for i, ex in enumerate(examples)]
    order = torch.randperm(len(enc), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    batches = [
        pad_batch([enc[i] for i in order[k : k + cfg.batch_size]], trainer.tokenizer.pad_token_id, side="right")
        for k in range(0, len(order), cfg.batch_size)
    ]
    torch.manual_seed(cfg.seed)
    lcfg = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(trainer.base, lcfg)
    try:
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.lr)
        model.train()
        tokens = 0
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(max(1, round(cfg.epochs))):
            for b in batches:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
                    if window:
                        loss = batch_loss(model, b["input_ids"], b["attention_mask"], b["labels"])
                    else:
                        loss = model(**b).loss
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                tokens += int(b["attention_mask"].sum())
        secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        trainer.base = model.unload()
        for p in trainer.base.parameters():
            p.requires_grad_(False)
    return tokens, secs, cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--rows", type=int, default=48)
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()

    from procure.llm.models import resolve_model
    from procure.llm.train import StageTrainer
    from procure.pipeline.recipe import load_recipe, train_config

    recipe = load_recipe(ROOT / "recipes" / "conjoint-ads.yaml")
    cfg = train_config(recipe, epochs=1.0)
    model = "tiny" if args.model == "tiny" else args.model
    if model == "tiny":
        from procure.llm.tiny import tiny_model_dir

        model = str(tiny_model_dir())
    trainer = StageTrainer(resolve_model(model), cfg)
    examples = rows(args.rows)
    ours, ref, full = [], [], []
    bare_loop(trainer, examples[: cfg.batch_size], cfg)  # warm-up (allocator, kernels)
    for _ in range(args.reps):  # interleaved: the machine is shared, so noise hits both sides alike
        with tempfile.TemporaryDirectory() as d:
            t0, c0 = time.perf_counter(), time.process_time()
            res = trainer.train(examples, Path(d) / "a", progress=False)
            ours.append((res.n_tokens, time.perf_counter() - t0, time.process_time() - c0))
        ref.append(bare_loop(trainer, examples, cfg))
        full.append(bare_loop(trainer, examples, cfg, window=False))
    o_tok, o_s, o_c = ours[0][0], min(x[1] for x in ours), min(x[2] for x in ours)
    r_tok, r_s, r_c = ref[0][0], min(x[1] for x in ref), min(x[2] for x in ref)
    f_s, f_c = min(x[1] for x in full), min(x[2] for x in full)
    print(
        f"model {args.model}, {len(examples)} conjoint rows, batch {cfg.batch_size}, bf16={cfg.bf16}, "
        f"LoRA r={cfg.lora_r} on {','.join(cfg.target_modules)}, best of {args.reps} interleaved reps, "
        f"torch threads {__import__('torch').get_num_threads()}, load average {os.getloadavg()[0]:.1f}\n"
    )
    print("| training loop | tokens | wall s | tokens/s (wall) | CPU s | tokens/CPU-s |")
    print("|---|---|---|---|---|---|")
    print(
        f"| procure StageTrainer.train (whole stage incl. save) | {o_tok} | {o_s:.2f} | {o_tok / o_s:.1f} "
        f"| {o_c:.1f} | {o_tok / o_c:.1f} |"
    )
    print(
        f"| bare torch fwd/bwd/AdamW, same batches, same answer-window loss | {r_tok} | {r_s:.2f} | "
        f"{r_tok / r_s:.1f} | {r_c:.1f} | {r_tok / r_c:.1f} |"
    )
    print(
        f"| bare loop with transformers' full-logits loss | {r_tok} | {f_s:.2f} | {r_tok / f_s:.1f} "
        f"| {f_c:.1f} | {r_tok / f_c:.1f} |"
    )
    print(
        f"| **ratio ours / bare** | | | **{(o_tok / o_s) / (r_tok / r_s):.2f}** | | "
        f"**{(o_tok / o_c) / (r_tok / r_c):.2f}** |"
    )
    print(
        f"| ratio ours / full-logits loop | | | {(o_tok / o_s) / (r_tok / f_s):.2f} | | "
        f"{(o_tok / o_c) / (r_tok / f_c):.2f} |"
    )


if __name__ == "__main__":
    main()
