"""transformers backend: batched ``generate`` with left padding, adapters switched in place on one base model."""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from pathlib import Path

import numpy as np

from procure.errors import UserError
from procure.llm.formatting import pad_ids, prompt_ids
from procure.llm.generator import Generator, GenParams, adapter_key, check_adapter_mode, choice_pairs


class HFGenerator(Generator):
    """One transformers model; ``adapter_mode="merged"`` copies W + s*B@A into the loaded weights (restoring W
    for the next adapter), ``"lora"`` keeps peft adapters loaded side by side and activates one per call."""

    backend = "hf"

    def __init__(
        self,
        model_path: str,
        *,
        adapter_mode: str = "merged",
        dtype: str = "float32",
        device: str | None = None,
        batch_size: int = 16,
        max_loaded_adapters: int = 8,
    ):
        import torch

        from procure.llm.models import load_model, load_tokenizer

        self.adapter_mode = check_adapter_mode(adapter_mode)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = load_tokenizer(model_path)
        self.model = load_model(model_path, dtype=dtype, device=self.device)
        self.batch_size = batch_size
        self.max_loaded = max_loaded_adapters
        self._current: tuple[str, int] | None = None
        self._orig: dict = {}  # merged mode: original weights of the parameters an adapter touched
        self._peft = None  # lora mode: PeftModel around self.model
        self._names: OrderedDict[tuple[str, int], str] = OrderedDict()
        self._n = 0
        self._torch = torch

    # ------------------------------------------------------------------------------------------- adapters
    def _merged(self, adapter: Path | None) -> None:
        from procure.llm.merge import lora_deltas

        key = adapter_key(adapter)
        if key == self._current:
            return
        params = dict(self.model.named_parameters())
        deltas = lora_deltas(adapter) if adapter is not None else {}
        missing = [n for n in deltas if n not in params]
        if missing:
            raise UserError(f"adapter {adapter}: does not fit this model (no parameter {missing[0]})")
        with self._torch.no_grad():
            for name, w0 in self._orig.items():
                params[name].copy_(w0)
            for name, d in deltas.items():
                p = params[name]
                if name not in self._orig:
                    self._orig[name] = p.detach().clone()
                p.add_(d.to(device=p.device, dtype=p.dtype))
        self._current = key

    @contextlib.contextmanager
    def _using(self, adapter: Path | None):
        """Context in which ``self._forward_model()`` computes with ``adapter`` (None = base)."""
        if self.adapter_mode == "merged":
            self._merged(adapter)
            yield self.model
            return
        key = adapter_key(adapter)
        if key is None:
            if self._peft is None:
                yield self.model
            else:
                with self._peft.disable_adapter():
                    yield self._peft
            return
        from peft import PeftModel

        if key not in self._names:
            self._n += 1
            name = f"a{self._n}"
            if self._peft is None:
                self._peft = PeftModel.from_pretrained(self.model, key[0], adapter_name=name)
            else:
                self._peft.load_adapter(key[0], adapter_name=name)
            self._peft.eval()
            self._names[key] = name
        self._names.move_to_end(key)
        self._peft.set_adapter(self._names[key])
        while len(self._names) > self.max_loaded:
            _, old = self._names.popitem(last=False)
            self._peft.delete_adapter(old)
        yield self._peft

    # ----------------------------------------------------------------------------------------- generation
    def generate(
        self, prompts: list[str], adapter: Path | None, params: GenParams, system: str | None = None
    ) -> list[list[str]]:
        from transformers import GenerationConfig

        torch, tok = self._torch, self.tokenizer
        encoded = [prompt_ids(tok, p, system) for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))  # less padding per batch
        greedy = params.temperature == 0.0
        gcfg = GenerationConfig(
            max_new_tokens=params.max_new_tokens,
            do_sample=not greedy,
            temperature=None if greedy else params.temperature,
            top_p=None if greedy else params.top_p,
            top_k=None,
            num_return_sequences=1 if greedy else params.n,  # greedy: one decode, copied n times
            pad_token_id=tok.pad_token_id,
            eos_token_id=self.model.generation_config.eos_token_id or tok.eos_token_id,
            bos_token_id=tok.bos_token_id,
        )
        out: list[list[str]] = [[] for _ in prompts]
        torch.manual_seed(params.seed)
        with self._using(adapter) as model, torch.inference_mode():
            for s in range(0, len(order), self.batch_size):
                idx = order[s : s + self.batch_size]
                ids, mask = pad_ids([encoded[i] for i in idx], tok.pad_token_id, side="left")
                batch = {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}
                gen = model.generate(**batch, generation_config=gcfg)
                new = gen[:, batch["input_ids"].shape[1] :]
                texts = tok.batch_decode(new, skip_special_tokens=True)
                k = 1 if greedy else params.n
                for j, i in enumerate(idx):
                    out[i] = texts[j * k : (j + 1) * k] * (params.n if greedy else 1)
        return out

    def choice_logprobs(
        self, prompts: list[str], choices: list[str], adapter: Path | None, system: str | None = None
    ) -> np.ndarray:
        torch, tok = self._torch, self.tokenizer
        cids, pairs = choice_pairs(tok, prompts, choices, system)
        if _last_token_choices(cids):
            return self._last_token_logprobs(cids, [p for _, j, p in pairs if j == 0], adapter)
        out = np.zeros((len(prompts), len(choices)))
        with self._using(adapter) as model, torch.inference_mode():
            for s in range(0, len(pairs), self.batch_size):
                chunk = pairs[s : s + self.batch_size]
                seqs = [p + cids[j] for _, j, p in chunk]
                ids, mask = pad_ids(seqs, tok.pad_token_id)
                logits = model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
                logp = torch.log_softmax(logits.float(), dim=-1)
                for k, (i, j, p) in enumerate(chunk):
                    pos = torch.arange(len(p) - 1, len(p) - 1 + len(cids[j]))
                    tgt = torch.tensor(cids[j])
                    out[i, j] = float(logp[k, pos, tgt].sum())
        return out

    def _last_token_logprobs(self, cids: list[list[int]], prompts: list[list[int]], adapter: Path | None) -> np.ndarray:
        """Choices that differ only in their last token ("Answer: A", "Answer: B", ...): one forward pass per prompt
        over prompt + the shared part, log p(shared part) + log p(last token), the same numbers as one pass per
        choice (causal attention) at 1/len(choices) of the cost. Hand-written: no library call scores this way."""
        torch, tok = self._torch, self.tokenizer
        shared, last = cids[0][:-1], torch.tensor([c[-1] for c in cids])
        out = np.zeros((len(prompts), len(cids)))
        with self._using(adapter) as model, torch.inference_mode():
            for s in range(0, len(prompts), self.batch_size):
                seqs = [p + shared for p in prompts[s : s + self.batch_size]]
                ids, mask = pad_ids(seqs, tok.pad_token_id)
                logits = model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
                logp = torch.log_softmax(logits.float(), dim=-1).cpu()
                for k, sq in enumerate(seqs):
                    n_p = len(sq) - len(shared)
                    head = sum(float(logp[k, n_p - 1 + q, t_]) for q, t_ in enumerate(shared))
                    out[s + k] = head + logp[k, len(sq) - 1, last].double().numpy()
        return out

    def lookahead(
        self, prompts: list[str], prefix: str, symbols: list[str], adapter: Path | None, system: str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """See :meth:`Generator.lookahead`. One forward pass per prompt: the S branch tokens are appended after
        the prefix, all at the same position, each attending to the prompt and itself only (a tree-shaped 4D
        attention mask), so the first step's and every branch's next-token distributions come out together.
        Rows are left-padded in batches; written here because no library call gives branch logits in one pass."""
        torch, tok = self._torch, self.tokenizer
        sym = [tok(x, add_special_tokens=False)["input_ids"] for x in symbols]
        if any(len(i) != 1 for i in sym):
            raise UserError(f"lookahead: every symbol must be one token ({symbols})")
        sym_ids = torch.tensor([i[0] for i in sym])
        pre = tok(prefix, add_special_tokens=False)["input_ids"]
        rows = [prompt_ids(tok, p, system) + pre for p in prompts]
        n_sym = len(symbols)
        first = np.zeros((len(prompts), n_sym))
        second = np.zeros((len(prompts), n_sym, n_sym))
        with self._using(adapter) as model, torch.inference_mode():
            for s in range(0, len(rows), self.batch_size):
                chunk = rows[s : s + self.batch_size]
                ids, pos, mask = _tree_batch(chunk, sym_ids, tok.pad_token_id, model.dtype)
                logits = model(
                    input_ids=ids.to(self.device), position_ids=pos.to(self.device), attention_mask=mask.to(self.device)
                ).logits.float()
                logp = torch.log_softmax(logits[:, -n_sym - 1 :], dim=-1)[..., sym_ids].cpu().numpy()
                first[s : s + len(chunk)] = logp[:, 0]
                second[s : s + len(chunk)] = logp[:, 1:]
        return first, second

    def close(self) -> None:
        self.model = None
        self._peft = None
        self._orig = {}


def _tree_batch(rows: list[list[int]], branch_ids, pad_id: int, dtype) -> tuple:
    """(input_ids, position_ids, additive 4D mask) for :meth:`HFGenerator.lookahead`: each row left-padded,
    then the S branch tokens, all at position len(row); causal over the row, each branch sees the row and itself."""
    import torch

    n_b = len(branch_ids)
    t = max(map(len, rows)) + n_b
    ids = torch.full((len(rows), t), pad_id, dtype=torch.long)
    pos = torch.zeros((len(rows), t), dtype=torch.long)
    allowed = torch.zeros((len(rows), t, t), dtype=torch.bool)
    for k, r in enumerate(rows):
        start = t - n_b - len(r)
        ids[k, start : t - n_b] = torch.tensor(r)
        ids[k, t - n_b :] = branch_ids
        pos[k, start : t - n_b] = torch.arange(len(r))
        pos[k, t - n_b :] = len(r)
        allowed[k, start : t - n_b, start : t - n_b] = torch.tril(torch.ones(len(r), len(r), dtype=torch.bool))
        allowed[k, t - n_b :, start : t - n_b] = True
    allowed |= torch.eye(t, dtype=torch.bool)  # branches see themselves; pads see themselves (no empty rows)
    mask = torch.zeros((len(rows), 1, t, t), dtype=dtype)
    mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
    return ids, pos, mask


def _last_token_choices(cids: list[list[int]]) -> bool:
    """Do all choices (token ids) share everything but one different last token?"""
    n = len(cids[0])
    return (
        len(cids) > 1
        and all(len(c) == n for c in cids)
        and all(c[:-1] == cids[0][:-1] for c in cids)
        and len({c[-1] for c in cids}) == len(cids)
    )
