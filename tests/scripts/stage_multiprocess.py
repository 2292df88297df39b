"""Run under ``accelerate launch --cpu --num_processes 2`` by tests/test_llm_train_multiprocess.py.

``ddp OUT``: one data-parallel stage (batch 2 per process) saved by the main process to OUT/ddp.
``local OUT``: process-local stages, process k trains on its own rows and saves OUT/local-k.
"""

from __future__ import annotations

import sys
from pathlib import Path

from procure.llm.tiny import tiny_model_dir
from procure.llm.train import StageTrainer, TrainConfig

ROWS = [{"prompt": f"Question {i}: " + "word " * (i % 5), "answer": f"Answer: {'ABCD'[i % 4]}"} for i in range(8)]


def cfg(batch_size: int) -> TrainConfig:
    return TrainConfig(
        epochs=2, lr=1e-2, batch_size=batch_size, lora_r=4, lora_alpha=8, max_length=64, shuffle=False, seed=3
    )


def main() -> None:
    mode, out = sys.argv[1], Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    tr = StageTrainer(tiny_model_dir(), cfg(2 if mode == "ddp" else 4), local=mode == "local")
    k, n = tr.accelerator.process_index, tr.accelerator.num_processes
    (out / f"{mode}-rank-{k}").write_text(str(n))
    if mode == "ddp":
        tr.train(ROWS, out / "ddp", progress=False)
    else:
        tr.train(ROWS[4 * k : 4 * k + 4], out / f"local-{k}", progress=False)


if __name__ == "__main__":
    main()
