"""Supervised fine-tuning on demonstrations: the warm start before RL (demonstrations → sequences → NLL → optimizer).

    Demonstration (messages, reply) --sft_sequences--> Sequence (prompt ids + reply ids, loss on the reply)
      --pack_sequences (the learner's packing and per-sequence attention)--> NLL of the reply tokens --> AdamW

The prompt ids come from :func:`prompts.render.messages_prompt_ids`, the function the rollout
tokenizes its prompts with, so a demonstration rendered by the rollout trains on exactly the tokens
RL and eval will show the model. Only reply tokens carry loss (prompt and observation tokens are
masked). The loss of an optimizer step is the mean negative log-likelihood over all reply tokens
of its demonstrations (token mean, as TRL's SFTTrainer), accumulated micro-batch by micro-batch.
With ``model.freeze_layers`` the hidden state entering the lowest trainable layer is kept from a
demonstration's first pass (trainers.frozen_cache), so later epochs run only the trainable layers.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence as Seq

import torch

from agent_rl.types import Sequence
from prompts.render import messages_prompt_ids
from trainers.attention import enable_varlen_attention, is_varlen
from trainers.frozen_cache import frozen_activations
from trainers.packing import pack_sequences, token_logprobs_and_entropy


@dataclass
class SftSettings:
    """See ``agent_rl.config.SftConfig`` for the meaning of each field."""

    lr: float = 1e-4
    weight_decay: float = 0.0
    epochs: float = 2.0
    batch_size: int = 16
    warmup_steps: int = 10
    max_grad_norm: float | None = 1.0  # 0 or None: no clipping
    micro_batch_tokens: int = 8192
    bf16_autocast: bool | None = None
    seed: int = 0
    max_nonfinite_steps: int = 3  # batches in a row with a NaN/inf loss or gradient (each skipped) before stopping
    frozen_layers: int = 0  # model.freeze_layers: their output is kept across epochs unless freeze_cache is false
    freeze_cache: bool = True
    freeze_cache_max_gb: float | None = None


def sft_sequences(demos: Seq[Any], tokenizer: Any, end_ids: Seq[int] = ()) -> list[Sequence]:
    """One learner Sequence per demonstration: prompt ids (masked) + reply ids (the loss). ``end_ids``: tokens
    that close every reply, in the loss too: the end-of-sequence token where replies end only there (no stop
    string), as the rollout's replies then do (:func:`reply_end_ids`)."""
    out = []
    for i, d in enumerate(demos):
        prompt = messages_prompt_ids(tokenizer, d.messages)
        reply = list(tokenizer(d.reply, add_special_tokens=False)["input_ids"]) + list(end_ids)
        out.append(Sequence(prompt + reply, [0] * len(prompt) + [1] * len(reply), [0.0] * (len(prompt) + len(reply)), i))
    return out


def reply_end_ids(stop: Seq[str] | None, template_stop: Seq[str] | None, tokenizer: Any) -> list[int]:
    """What closes a reply in the rollout, as SFT must teach it: nothing when a stop string ends it (the string is
    the reply's last text, ``stop``, else the template's), else the end-of-sequence token, which the backends
    keep as the reply's last token."""
    stops = template_stop if stop is None else stop
    if stops or tokenizer.eos_token_id is None:
        return []
    return [int(tokenizer.eos_token_id)]


class SftLearner:
    """Trains ``model`` on demonstration sequences; the optimizer and its state live across calls to
    :meth:`fit` (DAgger trains the same weights round after round)."""

    def __init__(self, model, optimizer, settings: SftSettings):
        self.model = model
        self.optimizer = optimizer
        self.s = settings
        self.rng = random.Random(settings.seed)
        self.steps = 0  # optimizer steps so far, over all rounds
        enable_varlen_attention(model)
        self._base_lr = [g["lr"] for g in optimizer.param_groups]
        self.frozen = frozen_activations(model, settings.frozen_layers, enabled=settings.freeze_cache, sharded=False,
                                         max_gb=settings.freeze_cache_max_gb)

    def _autocast(self):
        device = next(self.model.parameters()).device
        on = self.s.bf16_autocast if self.s.bf16_autocast is not None else device.type == "cuda"
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if on else contextlib.nullcontext()

    def _row_tokens(self) -> int | None:
        return self.s.micro_batch_tokens if is_varlen(self.model) else None

    def nll(self, sequences: list[Sequence], indices: list[int], *, backward: bool, frozen=None) -> tuple[float, int]:
        """Summed reply-token NLL of ``sequences[indices]`` and the reply-token count; with
        ``backward`` the gradient of the token-mean NLL is accumulated into ``.grad``; ``frozen``: the kept
        activations of ``sequences`` (indexed as they are)."""
        n_tokens = sum(sequences[i].num_agent_tokens for i in indices)
        total = 0.0
        grad = contextlib.nullcontext() if backward else torch.no_grad()
        with grad:
            for mb in pack_sequences(sequences, self.s.micro_batch_tokens, indices, self._row_tokens()):
                with self._autocast():
                    lp, _ = token_logprobs_and_entropy(self.model, mb, loss_only=True, frozen=frozen)  # [R, L]
                nll = -lp.float().sum()  # lp is 0 off the reply
                if backward:
                    (nll / max(n_tokens, 1)).backward()
                total += float(nll.detach())
        return total, n_tokens

    def _lr_factor(self, step: int, planned: int, time_progress: float = 0.0) -> float:
        """Linear warmup, then a cosine to 10% of lr over whichever ends first: the planned steps or the time
        budget (``time_progress``: the fraction of the post-warmup time spent). A budget that stops a run early
        so still ends it at a low lr, not mid-schedule (measured: an ALFWorld SFT stopped at 88 of 187 planned
        steps with lr at ~60% of its peak won 0/36 valid_unseen games)."""
        if step < self.s.warmup_steps:
            return (step + 1) / (self.s.warmup_steps + 1)
        progress = min(1.0, max(time_progress, (step - self.s.warmup_steps) / max(1, planned - self.s.warmup_steps)))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))  # cosine to 10% of lr

    def fit(self, sequences: list[Sequence], *, deadline: float | None = None,
            log: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, float]:
        """``settings.epochs`` passes over ``sequences`` in shuffled batches of ``batch_size``, or until
        ``deadline`` (time.monotonic()) passes; returns the round's metrics."""
        if not sequences:
            raise ValueError("SFT needs at least one demonstration sequence")
        self.model.train()
        order: list[int] = []
        bs = min(self.s.batch_size, len(sequences))  # fewer demonstrations than a batch: every one each step
        planned = max(1, math.ceil(self.s.epochs * len(sequences) / bs))
        seen_items = 0
        t0 = time.perf_counter()
        seen_tokens = seen_reply = 0
        loss_sum = tokens_sum = 0.0
        done = nonfinite = 0
        stopped_by_time = False
        t_warm = time.monotonic()
        if self.frozen is not None:
            self.frozen.clear()  # kept by sequence index: a new call's sequences are other ones
            self.frozen.take_metrics()  # counts from this round only
        for step in range(planned):
            if deadline is not None and time.monotonic() >= deadline:
                stopped_by_time = True
                break
            if len(order) < bs:  # the epoch's last items, filled up from the next epoch without repeating one
                fresh = list(range(len(sequences)))
                self.rng.shuffle(fresh)
                waiting = set(order)
                head = [i for i in fresh if i not in waiting][: bs - len(order)]
                taken = set(head)
                order += head + [i for i in fresh if i not in taken]
            batch, order = order[:bs], order[bs:]
            if step == self.s.warmup_steps:
                t_warm = time.monotonic()  # the budget's cosine spans what is left after warmup
            time_progress = 0.0
            if deadline is not None and step >= self.s.warmup_steps:
                time_progress = (time.monotonic() - t_warm) / max(deadline - t_warm, 1e-9)
            factor = self._lr_factor(step, planned, time_progress)
            for g, lr in zip(self.optimizer.param_groups, self._base_lr):
                g["lr"] = lr * factor
            nll, n = self.nll(sequences, batch, backward=True, frozen=self.frozen)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.s.max_grad_norm or float("inf"))
            if not (math.isfinite(nll) and bool(torch.isfinite(grad_norm))):
                # a NaN/inf loss or gradient never reaches the weights (see trainers.learner)
                self.optimizer.zero_grad(set_to_none=True)
                nonfinite += 1
                if log is not None:
                    log(self.steps, {"sft/loss": nll / max(n, 1), "sft/grad_norm": float(grad_norm),
                                     "train/nonfinite_updates": float(nonfinite)})
                if nonfinite >= self.s.max_nonfinite_steps:
                    raise RuntimeError(
                        f"SFT stopped: {nonfinite} batches in a row had a NaN/inf loss or gradient and were skipped "
                        f"(the weights are unchanged since). Fix: lower sft.lr, check the demonstrations and the "
                        f"model's logits"
                    )
                continue
            nonfinite = 0
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.steps += 1
            done += 1
            seen_items += len(batch)
            loss_sum += nll
            tokens_sum += n
            seen_tokens += sum(len(sequences[i]) for i in batch)
            seen_reply += n
            if log is not None:
                elapsed = time.perf_counter() - t0
                log(self.steps, {"sft/loss": nll / max(n, 1), "sft/grad_norm": float(grad_norm),
                                 "sft/lr": self._base_lr[0] * factor, "perf/sft_tokens_per_s": seen_tokens / elapsed})
        elapsed = time.perf_counter() - t0
        kept = {}
        if self.frozen is not None:
            kept = self.frozen.take_metrics()
            self.frozen.clear()  # freed when the round's training ends
        return {**kept,
            "sft/loss": loss_sum / max(tokens_sum, 1.0),
            "sft/optimizer_steps": float(done),
            "sft/epochs_done": seen_items / len(sequences),
            "sft/stopped_by_time_budget": float(stopped_by_time),
            "perf/sft_seconds": elapsed,
            "perf/sft_tokens_per_s": seen_tokens / elapsed if elapsed > 0 else 0.0,
            "perf/sft_reply_tokens_per_s": seen_reply / elapsed if elapsed > 0 else 0.0,
        }

    @torch.no_grad()
    def heldout(self, sequences: list[Sequence]) -> dict[str, float]:
        """Reply-token NLL and the mean probability of the whole reply (a teacher-forced proxy of
        how often greedy decoding reproduces the expert's action) on held-out demonstrations."""
        if not sequences:
            return {}
        self.model.eval()
        per_seq: dict[int, float] = {}
        for mb in pack_sequences(sequences, self.s.micro_batch_tokens, None, self._row_tokens()):
            with self._autocast():
                lp, _ = token_logprobs_and_entropy(self.model, mb, loss_only=True)  # [R, L]
            per_seq.update({i: -float(v.sum()) for i, v in mb.gather(lp.float().cpu()).items()})
        self.model.train()
        tokens = sum(s.num_agent_tokens for s in sequences)
        return {"heldout/loss": sum(per_seq.values()) / max(tokens, 1),
                "heldout/reply_prob": sum(math.exp(-v) for v in per_seq.values()) / len(per_seq)}
