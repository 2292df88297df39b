"""Value annotation batches for LLM fine-tuning: ``procure value`` on prompt/response rows.

Composes :mod:`procure.valuation` (the estimators, through ``estimate``), :mod:`procure.llm` (models, LoRA
stages, per-sample gradients) and :mod:`procure.tasks` (the planted-annotator data); nothing below valuation,
market or llm imports it.

- :mod:`~procure.annotations.data`: rows from JSONL / CSV / parquet / saved or cached HF datasets (prompt +
  response columns or a chat ``messages`` column, optional system, source and group columns), checked;
- (per-sample LoRA gradients at a model state, cached on disk, come from :mod:`procure.llm.grad_store`,
  which the pipeline's influence methods share);
- :mod:`~procure.annotations.retrain`: v(S) after a LoRA stage on the union of sources S, cached on disk;
- :mod:`~procure.annotations.value`: every method (bm25, infl-ip, datainf, tracin, constant, random, loo, ads);
- :mod:`~procure.annotations.planted`: planted-annotator data sets with known bad annotators and rows;
- :mod:`~procure.annotations.cli`: the ``procure value`` command (numeric tables go to ``procure.valuation.cli``).
"""
