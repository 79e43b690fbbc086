"""transformers policy backend: batched sampling with a KV cache (rollout's CPU path and reference).

    rollout --prompts [N][T_i], SamplingParams--> HFPolicy.generate --[N][n] Generation--> rollout

Prompts of one call (times ``n`` samples) are sorted by length, cut into batches of
``max_batch_size`` rows, left-padded and decoded token by token with a
:class:`~transformers.DynamicCache`; rows that finish (EOS or a stop string) are
dropped from the batch so late tokens cost only the live rows. We write the loop
ourselves instead of calling ``model.generate`` because ``generate`` would keep every
step's full-vocabulary logits ([rows, T, V]) just to read one logprob per token.

Identical prompts in one batch (the G episodes of a group start from the same state, so
their first prompts are equal; ``n > 1`` repeats each prompt) are prefilled once: the
prefill runs on the distinct prompts only and the :class:`~transformers.DynamicCache` and
last logits are then gathered out to every row. A row computes exactly what it would have
without the dedup, so tokens are the same (greedy and seeded sampling: the decode batch and
its row order are unchanged) and logprobs differ only by float32 rounding (measured ~2e-6:
a matmul over fewer rows rounds differently, as any other batch composition does).
Shared *prefixes* of different prompts (the instruction part of per-step prompts) are not
reused: with left padding they sit at different offsets per row, and vLLM's prefix cache
already does that on the fast path.

Constrained replies (``choices``): each allowed reply is tokenized once (the tokenizer's own
split of the string, then EOS) into a prefix tree; at every step a constrained row's logits
outside the tree's next tokens are set to -inf before sampling, so greedy picks, token by token,
the likeliest continuation that stays inside the tree. (vLLM's structured outputs also allow
other tokenizations of the same string; the model almost never prefers those.)

The backend can wrap the very model the trainer optimises (``HFPolicy(model=nn_module,
tokenizer=tok)``): then weight sync is free, the shared parameters are already new.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Iterable

import torch

from trainers.policies.base import POLICIES, Generation, SamplingParams, check_choices, check_prompts

log = logging.getLogger(__name__)


def sample_tokens(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """Draw one token per row from ``logits`` [R, V] with temperature and top-p; [R]."""
    if params.greedy:
        return logits.argmax(-1)
    probs = torch.softmax(logits / params.temperature, dim=-1)  # [R, V]
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)  # [R, V]
        # Keep the smallest prefix whose mass reaches top_p (the top token always survives).
        drop = sorted_probs.cumsum(-1) - sorted_probs >= params.top_p  # [R, V]
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        choice = torch.multinomial(sorted_probs, 1, generator=generator)  # [R, 1]
        return order.gather(-1, choice)[:, 0]
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


@POLICIES.register("hf")
class HFPolicy:
    """A :class:`~trainers.policies.base.Policy` on a transformers causal LM.

    Args:
        model: a name/path for :func:`trainers.models.load_model_and_tokenizer`, or an
            in-memory ``PreTrainedModel`` (then ``tokenizer`` is required).
        tokenizer: the tokenizer; loaded with the model when ``model`` is a name.
        dtype, device: for loading by name (default fp32 on CPU).
        max_batch_size: rows (prompts × n) decoded together; bounds memory.
        dedup_prompts: prefill identical prompts of a batch once (see the module docstring).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        *,
        dtype: Any = "float32",
        device: str | None = None,
        max_batch_size: int = 64,
        trust_remote_code: bool = False,
        dedup_prompts: bool = True,
    ):
        if isinstance(model, (str, os.PathLike)):
            from trainers.models import load_model_and_tokenizer

            model, loaded_tok = load_model_and_tokenizer(
                model, dtype=dtype, device=device, trust_remote_code=trust_remote_code
            )
            tokenizer = tokenizer if tokenizer is not None else loaded_tok
        elif not isinstance(model, torch.nn.Module):
            raise TypeError(f"HFPolicy(model=...) takes a model name/path or a torch nn.Module, got {type(model).__name__}")
        elif tokenizer is None:
            raise ValueError("HFPolicy got an in-memory model but no tokenizer; pass tokenizer=...")
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.dedup_prompts = dedup_prompts
        self.prefill_rows_saved = 0  # rows whose prefill dedup skipped (a counter for tests and benches)
        eos = model.generation_config.eos_token_id if getattr(model, "generation_config", None) else None
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if tokenizer.eos_token_id is not None:
            eos.append(tokenizer.eos_token_id)
        self.eos_token_ids = frozenset(eos)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_token_id = pad if pad is not None else 0
        self.max_model_len = getattr(model.config, "max_position_embeddings", None)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ generate

    def generate(
        self, prompts: list[list[int]], params: SamplingParams, choices: list[list[str] | None] | None = None
    ) -> list[list[Generation]]:
        check_prompts(prompts, vocab_size=self.model.config.vocab_size)
        trees = self._choice_trees(check_choices(choices, len(prompts)))
        rows = [(i, j) for i in range(len(prompts)) for j in range(params.n)]
        # Similar lengths together (less padding), identical prompts next to each other (one prefill).
        rows.sort(key=lambda r: (len(prompts[r[0]]), tuple(prompts[r[0]])))
        generator = None
        if params.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(params.seed)
        out: list[list[Generation | None]] = [[None] * params.n for _ in prompts]
        was_training = self.model.training
        self.model.eval()  # no dropout while sampling; restored for the trainer below
        try:
            with torch.no_grad():
                for start in range(0, len(rows), self.max_batch_size):
                    chunk = rows[start : start + self.max_batch_size]
                    gens = self._generate_batch([prompts[i] for i, _ in chunk], params, generator,
                                                [trees[i] for i, _ in chunk])
                    for (i, j), g in zip(chunk, gens):
                        out[i][j] = g
        finally:
            self.model.train(was_training)
        return out  # type: ignore[return-value]

    def _choice_trees(self, choices: list[list[str] | None]) -> list[dict[tuple[int, ...], list[int]] | None]:
        """Per prompt: None (free) or a prefix tree {tokens so far: allowed next tokens}; prompts
        with the same choices share one tree."""
        end = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else min(self.eos_token_ids)
        built: dict[tuple[str, ...], dict[tuple[int, ...], list[int]]] = {}
        trees = []
        for c in choices:
            if c is None:
                trees.append(None)
                continue
            key = tuple(c)
            if key not in built:
                tree: dict[tuple[int, ...], list[int]] = {}
                for text in dict.fromkeys(c):
                    ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) + [end]
                    for k in range(len(ids)):
                        nxt = tree.setdefault(tuple(ids[:k]), [])
                        if ids[k] not in nxt:
                            nxt.append(ids[k])
                built[key] = tree
            trees.append(built[key])
        return trees

    @staticmethod
    def _constrain(logits: torch.Tensor, trees: list, live: list[int], token_ids: list[list[int]]) -> torch.Tensor:
        """``logits`` [R, V] with every token a constrained row may not take next set to -inf."""
        rows = [(row, trees[k]) for row, k in enumerate(live) if trees[k] is not None]
        if not rows:
            return logits
        logits = logits.clone()  # [R, V]
        for row, tree in rows:
            allowed = torch.tensor(tree[tuple(token_ids[live[row]])], device=logits.device)  # [A]
            kept = logits[row, allowed]  # [A]
            logits[row] = float("-inf")
            logits[row, allowed] = kept
        return logits

    def _generate_batch(
        self, prompts: list[list[int]], params: SamplingParams, generator: torch.Generator | None,
        trees: list[dict[tuple[int, ...], list[int]] | None] | None = None,
    ) -> list[Generation]:
        from transformers import DynamicCache

        device = self.device
        n_rows, width = len(prompts), max(len(p) for p in prompts)
        max_new = params.max_tokens
        if self.max_model_len is not None:
            max_new = min(max_new, self.max_model_len - width)
        if max_new <= 0:  # prompt already fills the context: nothing can be generated
            return [Generation([], [], "", "length") for _ in prompts]

        # Distinct prompts (first-seen order) and, per row, which one it is.
        distinct: dict[tuple[int, ...], int] = {}
        row_of = [distinct.setdefault(tuple(p), len(distinct)) for p in prompts] if self.dedup_prompts else None
        unique = [list(p) for p in distinct] if self.dedup_prompts else prompts
        n_unique = len(unique)
        input_ids = torch.full((n_unique, width), self.pad_token_id, dtype=torch.long)  # [U, T]
        mask = torch.zeros((n_unique, width), dtype=torch.long)  # [U, T]
        for r, p in enumerate(unique):
            input_ids[r, width - len(p) :] = torch.tensor(p)
            mask[r, width - len(p) :] = 1
        input_ids, mask = input_ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [U, T]; left padding must not shift positions
        cache = DynamicCache(config=self.model.config)

        stops = params.stop or []
        # A stop string of k bytes lies within the last k tokens once it completes.
        stop_window = max((len(s.encode()) for s in stops), default=0)
        token_ids: list[list[int]] = [[] for _ in prompts]
        logprobs: list[list[float]] = [[] for _ in prompts]
        finish = ["length"] * n_rows
        live = list(range(n_rows))  # batch row → prompt index

        logits = self.model(
            input_ids=input_ids, attention_mask=mask, position_ids=positions, past_key_values=cache, logits_to_keep=1
        ).logits[:, -1, :].float()  # [U, V]
        if n_unique < n_rows:  # one prefill per distinct prompt: copy its KV, mask and logits to every row using it
            idx = torch.tensor(row_of, device=device)  # [R]
            cache.batch_select_indices(idx)  # [U, ...] -> [R, ...]
            logits, mask, positions = logits[idx], mask[idx], positions[idx]  # [R, V], [R, T], [R, T]
            self.prefill_rows_saved += n_rows - n_unique
        trees = trees or [None] * n_rows
        for step in range(max_new):
            logits = self._constrain(logits, trees, live, token_ids)  # [R, V]
            tokens = sample_tokens(logits, params, generator)  # [R]
            token_lps = torch.log_softmax(logits, dim=-1).gather(-1, tokens[:, None])[:, 0]  # [R]
            keep: list[int] = []
            for row, (tok, lp) in enumerate(zip(tokens.tolist(), token_lps.tolist())):
                k = live[row]
                token_ids[k].append(tok)
                logprobs[k].append(lp)
                if tok in self.eos_token_ids or (stops and self._hit_stop(token_ids[k][-stop_window:], stops)):
                    finish[k] = "stop"
                else:
                    keep.append(row)
            if not keep or step == max_new - 1:
                break
            if len(keep) < len(live):
                idx = torch.tensor(keep, device=device)
                cache.batch_select_indices(idx)
                tokens, mask, positions = tokens[idx], mask[idx], positions[idx]
                live = [live[r] for r in keep]
            mask = torch.cat([mask, mask.new_ones((len(live), 1))], dim=-1)  # [R, T+1]
            positions = positions[:, -1:] + 1  # [R, 1]
            logits = self.model(
                input_ids=tokens[:, None], attention_mask=mask, position_ids=positions, past_key_values=cache
            ).logits[:, -1, :].float()  # [R, V]

        decode = self.tokenizer.decode
        return [
            Generation(token_ids[k], logprobs[k], decode(token_ids[k], skip_special_tokens=True), finish[k])
            for k in range(n_rows)
        ]

    def _hit_stop(self, tail: list[int], stops: list[str]) -> bool:
        text = self.tokenizer.decode(tail, skip_special_tokens=True)
        return any(s in text for s in stops)

    # ------------------------------------------------------------------ weights

    def sync_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy new weights into the model. Tensors that already are the model's own
        parameters (the trainer shares this model) are skipped, so sync is free then."""
        params = dict(self.model.named_parameters())
        params.update(dict(self.model.named_buffers()))
        named_tensors = list(named_tensors)
        unknown = [name for name, _ in named_tensors if name not in params]
        if unknown:  # check everything before copying anything: no half-updated model
            raise KeyError(
                f"sync_weights: {len(unknown)} names are not parameters of the policy model, e.g. {unknown[:3]}; "
                f"send model.named_parameters() of the same architecture (merge LoRA adapters first)"
            )
        for name, tensor in named_tensors:
            if params[name].shape != tensor.shape:
                raise ValueError(
                    f"sync_weights: {name} has shape {tuple(tensor.shape)}, the policy's is "
                    f"{tuple(params[name].shape)}; the learner and the policy must hold the same architecture"
                )
        with torch.no_grad():
            for name, tensor in named_tensors:
                if params[name].data_ptr() != tensor.data_ptr():  # shared with the trainer: already new
                    params[name].copy_(tensor)

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
