"""The generator interface both backends implement, and the helpers they share.

:class:`Generator` (base model loaded once, any adapter per call) and :class:`GenParams` are defined here rather
than in :mod:`procure.llm.generate` (the factory, which imports the backends), so that the backends
(:mod:`procure.llm.hf_backend`, :mod:`procure.llm.vllm_backend`) depend on this module only, not on the factory
or on each other.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from procure.errors import UserError
from procure.llm.formatting import prompt_ids
from procure.llm.merge import adapter_weights_file

ADAPTER_MODES = ("merged", "lora")


class GenParams(BaseModel):
    """Sampling parameters; ``temperature=0`` is greedy (then the ``n`` completions are identical)."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(8, ge=1)
    temperature: float = Field(0.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    seed: int = 0


class Generator(ABC):
    """A loaded base model that generates / scores for any adapter without reloading."""

    backend: str = ""
    adapter_mode: str = ""

    @abstractmethod
    def generate(
        self, prompts: list[str], adapter: Path | None, params: GenParams, system: str | None = None
    ) -> list[list[str]]:
        """``params.n`` completions (text after the prompt, special tokens removed) per prompt."""

    @abstractmethod
    def choice_logprobs(
        self, prompts: list[str], choices: list[str], adapter: Path | None, system: str | None = None
    ) -> np.ndarray:
        """(n_prompts, n_choices): log p(choice tokens | chat prompt), summed over the choice's tokens (nats)."""

    def lookahead(
        self, prompts: list[str], prefix: str, symbols: list[str], adapter: Path | None, system: str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Two-step next-token log-probabilities (nats) over single-token ``symbols`` after the chat prompt plus
        the forced answer ``prefix``: ``first[i, k] = log p(symbols[k] | prompt_i + prefix)`` (n, S) and
        ``second[i, k, m] = log p(symbols[m] | prompt_i + prefix + symbols[k])`` (n, S, S). Not normalised over
        the symbols (the rest of the vocabulary keeps its mass). Optional: backends that cannot raise."""
        raise NotImplementedError(f"{type(self).__name__} has no lookahead; use the hf backend")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the model / engine."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_adapter_mode(adapter_mode: str) -> str:
    """``adapter_mode`` if a backend serves it (``"merged"`` or ``"lora"``), else :class:`UserError`."""
    if adapter_mode not in ADAPTER_MODES:
        raise UserError(f"adapter_mode {adapter_mode!r}: use merged or lora")
    return adapter_mode


def adapter_key(adapter: Path | None) -> tuple[str, int] | None:
    """Identity of an adapter version: its resolved folder and the weights file's mtime (a retrained folder
    is a new adapter); None for the base model."""
    if adapter is None:
        return None
    return str(Path(adapter).resolve()), adapter_weights_file(adapter).stat().st_mtime_ns


def choice_pairs(
    tokenizer: Any, prompts: list[str], choices: list[str], system: str | None = None
) -> tuple[list[list[int]], list[tuple[int, int, list[int]]]]:
    """What :meth:`Generator.choice_logprobs` scores: (choice token ids, [(prompt i, choice j, prompt ids)]).

    Every (prompt, choice) pair is listed, prompt-major; choices are tokenised without special tokens, as they
    follow the chat prompt. :class:`UserError` if there are no choices or one tokenises to nothing.
    """
    if not choices:
        raise UserError("choice_logprobs: no choices given")
    cids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in choices]
    if any(len(c) == 0 for c in cids):
        raise UserError("choice_logprobs: a choice is empty after tokenisation")
    pairs = [(i, j, prompt_ids(tokenizer, p, system)) for i, p in enumerate(prompts) for j in range(len(choices))]
    return cids, pairs
