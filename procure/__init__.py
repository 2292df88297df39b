"""procure: buy fine-tuning data for LLMs.

Subpackages (dependencies point one way):
- ``procure.valuation``: games and data-value estimators (no LLMs).
- ``procure.market``: buyers, sellers, pricing contracts, market dynamics, payoff allocation (no LLMs).
- ``procure.llm``: model loading, LoRA stage training, per-sample gradients, generation (no markets).
- ``procure.tasks``: task definitions (conjoint ratings, multiple-choice QA).
- ``procure.pipeline``: the staged procurement loop composing all of the above.
"""

__version__ = "0.1.0"
