"""procure: buy fine-tuning data for LLMs.

Subpackages (dependencies point one way):
- ``procure.valuation``: games and data-value estimators (no LLMs).
- ``procure.market``: buyers, sellers, pricing contracts, market dynamics, payoff allocation (no LLMs).
- ``procure.llm``: model loading, LoRA stage training, per-sample gradients, generation (no markets).
- ``procure.tasks``: task definitions (conjoint ratings, multiple-choice QA).
- ``procure.pipeline``: the staged procurement loop composing all of the above.
"""

import os as _os

__version__ = "0.1.0"

# OpenMP threads that wait passively instead of spinning: with the default (spinning) policy and 2 threads, a
# torch process beside another CPU-bound one slowed 30x (DataInf) and 4-5x (HF generation) on a 2-core machine
# (README, "Threads on a shared machine"). Must be set before torch is imported; a user's own setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
