"""A cheap stand-in scenario + learner for the pipeline tests (plugin target ``test_pipeline_fakes:factory``).

The "model" is a vector w estimating true part-worths u (d = 6); a state is a folder holding w as JSON.
Training on rows {"prompt": "k", "answer": y} moves w_k toward the mean answer for k; noisy sellers answer
from other part-worths. Metric = mean |w - u| (lower is better, like AvgErr); utility = -metric.
Deterministic given the seeds, so two runs with one recipe give the same ledger.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

D = 6


class FakeTask:
    def __init__(self, u: np.ndarray, split: str) -> None:
        self.u, self.split = u, split
        self.name, self.metric_name, self.higher_is_better, self.system = "fake", "avg_err", False, None

    def utility(self, metric: float) -> float:
        return -metric


class FakeScenario:
    def __init__(self, opts: dict, seed: int, n_sellers: int) -> None:
        rng = np.random.default_rng(seed)
        self.u = rng.uniform(0, 30, D)
        self.bad = rng.uniform(0, 30, D)
        self.opts, self.seed, self.n_sellers = opts, seed, n_sellers
        self.noise = opts.get("noise", [0.1, 0.5, 0.9][:n_sellers] + [0.5] * max(0, n_sellers - 3))
        self.rows = opts.get("rows", [8] * n_sellers)

    def _rows(self, n: int, noise: float, rng: np.random.Generator) -> list[dict]:
        out = []
        for _ in range(n):
            k = int(rng.integers(D))
            src = self.bad if rng.random() < noise else self.u
            out.append({"prompt": f"attr {k}", "answer": f"{src[k] + rng.normal(0, 1):.3f}"})
        return out

    def warmup_examples(self) -> list[dict]:
        n = self.opts.get("warmup", 0)
        return self._rows(n, 1.0, np.random.default_rng(self.seed + 7)) if n else []

    def candidates(self, round: int, rng: np.random.Generator):
        from procure.pipeline.protocols import Candidate

        return [
            Candidate(j, self._rows(self.rows[j], self.noise[j], rng), float(self.noise[j]))
            for j in range(self.n_sellers)
        ]

    def reference_examples(self) -> list[dict]:
        return self._rows(12, 0.0, np.random.default_rng(self.seed + 9))

    def task(self, split: str) -> FakeTask:
        return FakeTask(self.u, split)


class FakeLearner:
    def __init__(self, opts: dict) -> None:
        self.sleep = float(opts.get("sleep", 0.0))
        self.lr = float(opts.get("lr", 0.7))
        self.trained = 0
        self.evaluated = 0

    @staticmethod
    def load(state: Path | None) -> np.ndarray:
        return np.zeros(D) if state is None else np.array(json.loads((state / "w.json").read_text()))

    def train(self, state, examples, out_dir: Path, seed: int, epochs=None) -> dict:
        time.sleep(self.sleep)
        self.trained += 1
        w = self.load(state)
        rng = np.random.default_rng(seed)
        for k in range(D):
            ys = [float(e["answer"]) for e in examples if e["prompt"] == f"attr {k}"]
            if ys:
                w[k] += self.lr * (np.mean(ys) - w[k])
        w += rng.normal(0, 1e-3, D)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "w.json").write_text(json.dumps(w.tolist()))
        return {"n_tokens": 3 * len(examples), "final_loss": float(np.abs(w).mean())}

    def evaluate(self, state, task: FakeTask, seed: int) -> float:
        time.sleep(self.sleep / 2)
        self.evaluated += 1
        w = self.load(state)
        jitter = np.random.default_rng(seed).normal(0, 0.01)
        return float(np.abs(w - task.u).mean() + jitter)

    def grads(self, state, examples, reference, seed):
        w = self.load(state)

        def g(e: dict) -> np.ndarray:
            k = int(e["prompt"].split()[1])
            v = np.zeros(D)
            v[k] = w[k] - float(e["answer"])  # gradient of 0.5 (w_k - y)^2
            return v

        tg = torch.tensor(np.stack([g(e) for e in examples]))
        vg = torch.tensor(np.mean([g(e) for e in reference], axis=0))
        # the weights' gradient split as one LoRA layer (A: 1 x h, B: (D - h) x 1), so that DataInf's per-tensor
        # and per-layer blocks differ
        h, n = D // 2, len(examples)
        train = {
            "layer.lora_A.weight": tg[:, :h].reshape(n, 1, h),
            "layer.lora_B.weight": tg[:, h:].reshape(n, D - h, 1),
        }
        val = {"layer.lora_A.weight": vg[:h].reshape(1, h), "layer.lora_B.weight": vg[h:].reshape(D - h, 1)}
        return train, val

    def close(self) -> None:
        pass


def factory(spec, seed: int):
    return FakeScenario(spec.options, seed, spec.n_sellers), FakeLearner(spec.options)
