"""One prompt format for training, gradients and generation, so a model is always asked the way it was taught.

A training row is ``{"prompt": user text, "answer": assistant text, "system": optional}``. The model sees
``chat_prompt(tokenizer, prompt, system)`` (the tokenizer's chat template with the assistant header, ChatML for
SmolLM2; ``"user\\n"`` when the tokenizer has no template) followed by the answer tokens and EOS. The loss is
on the answer and EOS tokens only (the same convention as :mod:`procure.llm.grads`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from procure.errors import UserError

IGNORE_INDEX = -100


def chat_prompt(tokenizer: Any, user: str, system: str | None = None) -> str:
    """The text the model is given before its answer: chat template + generation prompt (assistant header)."""
    if getattr(tokenizer, "chat_template", None):
        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        return tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    return (f"{system}\n\n" if system else "") + f"{user}\n"


def prompt_ids(tokenizer: Any, user: str, system: str | None = None) -> list[int]:
    """Token ids of :func:`chat_prompt` (no extra special tokens: the template already has them)."""
    return tokenizer(chat_prompt(tokenizer, user, system), add_special_tokens=False)["input_ids"]


def encode_row(tokenizer: Any, row: Mapping[str, Any], max_length: int, index: int = 0) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one training row, unpadded; labels are ``IGNORE_INDEX`` on the prompt.

    Prompt and answer are tokenised separately and concatenated, so the label boundary is exact; rows longer
    than ``max_length`` are cut at the end. A row whose answer is cut away entirely raises :class:`UserError`.
    """
    if not isinstance(row, Mapping) or "prompt" not in row or "answer" not in row:
        raise UserError(f"training example {index}: needs 'prompt' and 'answer' fields (optional 'system')")
    p = prompt_ids(tokenizer, str(row["prompt"]), row.get("system"))
    a = tokenizer(str(row["answer"]), add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        a = a + [tokenizer.eos_token_id]
    ids = (p + a)[:max_length]
    labels = ([IGNORE_INDEX] * len(p) + a)[:max_length]
    if all(x == IGNORE_INDEX for x in labels[1:]):  # position 0 is never predicted
        raise UserError(f"training example {index}: max_length={max_length} cuts off the whole answer; raise it")
    return ids, labels


def pad_ids(seqs: Sequence[Sequence[int]], pad_id: int, side: str = "right", fill: int | None = None):
    """(ids, attention_mask) long tensors of shape (len(seqs), longest): each sequence at the left edge with
    padding after it (``side="right"``) or at the right edge (``"left"``, for generation). ``fill`` replaces
    ``pad_id`` as the padding value (e.g. IGNORE_INDEX for labels); the mask is 1 on the sequences' tokens."""
    import torch

    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left', not {side!r}")
    t = max(map(len, seqs))
    ids = torch.full((len(seqs), t), pad_id if fill is None else fill, dtype=torch.long)
    mask = torch.zeros((len(seqs), t), dtype=torch.long)
    for i, sq in enumerate(seqs):
        sl = slice(0, len(sq)) if side == "right" else slice(t - len(sq), t)
        ids[i, sl] = torch.tensor(list(sq), dtype=torch.long)
        mask[i, sl] = 1
    return ids, mask


def pad_batch(rows: Sequence[tuple[list[int], list[int]]], pad_id: int, side: str = "right") -> dict[str, Any]:
    """Stack encoded rows into ``input_ids``, ``attention_mask`` and ``labels`` tensors (padding never trained)."""
    ids, mask = pad_ids([r[0] for r in rows], pad_id, side)
    labels, _ = pad_ids([r[1] for r in rows], pad_id, side, fill=IGNORE_INDEX)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
