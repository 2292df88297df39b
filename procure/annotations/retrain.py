"""Coalition utilities over sources for the retraining methods (``loo``, ``ads``): v(S) = the reference score of
the start state fine-tuned by one LoRA stage on the union of the rows of the sources in S.

The start state is ``--adapter`` (state-conditioned values: what a batch adds to the model you have now) or the
base model with a fresh LoRA; v(empty) is the start state itself (a fresh LoRA has B = 0, i.e. the base model).
Scores, higher = better:

- ``loss``: minus the mean answer-token cross-entropy over the reference rows (nats per token);
- ``exact-match``: the share of reference rows whose answer tokens are each the model's most likely next token
  given the prompt and the answer so far, i.e. exactly the rows that greedy decoding answers verbatim (one
  forward pass per batch, no generation).

Every v(S) is cached on disk (``cache_dir("utilities")``, keyed by model, start state, training config, the
coalition's rows, the reference rows and the metric), so ``loo`` after ``ads`` (or a re-run) trains nothing it
has already scored. The stages use :class:`procure.llm.train.StageTrainer` (base model loaded once).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from procure.cache import cache_dir, write_file_atomically
from procure.errors import UserError
from procure.llm.grad_store import adapter_identity, content_digest, model_identity, rows_digest

METRICS = ("loss", "exact-match")
VERSION = "procure-value-utility-1"


class CoalitionUtility:
    """``v(S)`` over sources ``0..m-1`` (module docstring); ``records`` holds every coalition it was asked."""

    def __init__(
        self,
        model_path: str,
        train_config: Any,
        source_rows: Sequence[Sequence[dict[str, Any]]],
        reference: Sequence[dict[str, Any]],
        *,
        adapter: str | Path | None = None,
        metric: str = "loss",
        eval_batch_size: int = 16,
        cache: bool = True,
        progress: bool = True,
        total: int | None = None,
    ):
        if metric not in METRICS:
            raise UserError(f"--metric {metric!r}: use one of {', '.join(METRICS)}")
        self.model_path, self.cfg = model_path, train_config
        self.source_rows = [list(r) for r in source_rows]
        self.reference = list(reference)
        self.adapter = None if adapter is None else Path(adapter)
        self.metric, self.eval_batch_size, self.cache, self.progress = metric, eval_batch_size, cache, progress
        self.records: dict[frozenset[int], float] = {}
        self.trained = 0  # LoRA stages trained in this process
        self.cached = 0  # utilities read from the disk cache
        self._trainer: Any = None
        self._tmp: Path | None = None
        self._base_key = content_digest(
            VERSION,
            model_identity(model_path),
            "fresh" if adapter is None else adapter_identity(adapter),
            train_config.model_dump(),
            rows_digest(self.reference),
            metric,
        )
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc="coalitions (LoRA stages)", unit="v(S)", disable=not progress)

    def __call__(self, S: frozenset[int]) -> float:
        S = frozenset(S)
        if S in self.records:
            return self.records[S]
        rows = [r for i in sorted(S) for r in self.source_rows[i]]
        key = content_digest(self._base_key, rows_digest(rows))
        path = cache_dir("utilities") / f"{key}.json"
        value = self._read(path)
        if value is None:
            value = self._evaluate(rows)
            if self.cache:
                write_file_atomically(path, json.dumps({"value": value, "n_rows": len(rows), "metric": self.metric}))
        else:
            self.cached += 1
        self.records[S] = value
        self.bar.update(1)
        return value

    def _read(self, path: Path) -> float | None:
        if not self.cache or not path.is_file():
            return None
        try:
            return float(json.loads(path.read_text())["value"])
        except (ValueError, KeyError):
            return None

    def _get_trainer(self):
        if self._trainer is None:
            from procure.llm.train import StageTrainer

            self._trainer = StageTrainer(self.model_path, self.cfg)
            self._tmp = Path(tempfile.mkdtemp(prefix="procure-value-"))
        return self._trainer

    def _evaluate(self, rows: list[dict[str, Any]]) -> float:
        from peft import PeftModel

        tr = self._get_trainer()
        state = self.adapter
        out = None
        if rows:
            out = self._tmp / f"stage-{self.trained}"
            tr.train(rows, out, init_adapter=self.adapter, progress=False)
            self.trained += 1
            state = out
        try:
            if state is None:
                return self._score(tr.base, tr.tokenizer)
            model = PeftModel.from_pretrained(tr.base, str(state))
            try:
                return self._score(model, tr.tokenizer)
            finally:
                tr.base = model.unload()
        finally:
            if out is not None:
                shutil.rmtree(out, ignore_errors=True)

    def _score(self, model, tokenizer) -> float:
        import torch

        from procure.llm.grads import encode_examples, example_losses
        from procure.llm.loss import label_logits

        ref, bs, ml = self.reference, self.eval_batch_size, self.cfg.max_length
        model.eval()
        if self.metric == "loss":
            return -float(example_losses(model, tokenizer, ref, batch_size=bs, max_length=ml).mean())
        right = 0
        with torch.no_grad():
            for s in range(0, len(ref), bs):
                enc = encode_examples(tokenizer, ref[s : s + bs], ml)
                logits, targets, rows = label_logits(model, enc.input_ids, enc.attention_mask, enc.labels)
                wrong = (logits.argmax(-1) != targets).long()
                per_row = torch.zeros(enc.input_ids.shape[0], dtype=torch.long).index_add(0, rows, wrong)
                right += int((per_row == 0).sum())
        return right / len(ref)

    def close(self) -> None:
        self.bar.close()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
        self._trainer = None
