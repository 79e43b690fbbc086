"""Frozen-layer activations kept between the learner's passes over one batch.

Data flow: trajectory batch → packed micro-batches → **bottom (frozen) layers once per update** → top layers
on every pass → logprobs → Hölder loss.

With ``model.freeze_layers=N`` the embeddings and the bottom N decoder layers never change, so the hidden state
entering layer N is the same in every pass the learner makes over a batch: the old logprobs, each minibatch's
no-grad pass and its gradient pass. The first pass over a sequence keeps that hidden state (a forward hook on
layer N−1); a later pass whose every sequence is kept feeds them back as ``inputs_embeds`` with the bottom N
layers taken out of the stack, so only layers N.. run. A micro-batch with any sequence not kept (a sequence a
data-parallel shard first gave to another rank) runs the whole model and keeps what it computes.

Exact: the top layers see the same inputs, positions and per-sequence attention as in a full forward (the
equality is tested in float64). It costs hidden_size × 4 bytes per batch token (float32 residual stream; 2.3 KB
a token for SmolLM2-135M, ~220 MB for a 16-episode ALFWorld step), freed when the update ends. SFT keeps its
whole demonstration set the same way across epochs (the frozen layers run once per demonstration, not once per
epoch). ``max_bytes`` caps the store: sequences past it are not kept, and micro-batches holding them run in full.

Only for decoders whose forward does nothing to ``inputs_embeds`` before the first layer (Llama, Qwen2/3,
Mistral: :data:`SUPPORTED`); Gemma, for one, scales them. Not under FSDP2 (sharded layers gather their
weights in lockstep across ranks, so no rank may skip them).
"""

from __future__ import annotations

import contextlib
import logging

import torch

from trainers.models import decoder_layers

log = logging.getLogger(__name__)

# model_type values whose decoder feeds inputs_embeds unchanged to layer 0 and needs no per-layer index
SUPPORTED = ("llama", "qwen2", "qwen3", "mistral")


class FrozenActivations:
    """Per-sequence hidden states entering decoder layer ``n`` (the lowest trainable one), for one update."""

    def __init__(self, model, n: int, max_bytes: int | None = None):
        if n < 1:
            raise ValueError(f"FrozenActivations needs at least one frozen layer, got n={n}")
        self.model, self.n = model, n
        self.layers = decoder_layers(model)
        self.owner = next(m for m in model.modules() if getattr(m, "layers", None) is self.layers)
        self.top = torch.nn.ModuleList(list(self.layers)[n:])
        self.store: dict[int, torch.Tensor] = {}  # sequence index -> [length, hidden]
        self.max_bytes, self.bytes = max_bytes, 0
        self.hits = self.misses = 0  # micro-batches served from the store / computed in full

    @staticmethod
    def supported(model) -> bool:
        return getattr(getattr(model, "config", None), "model_type", None) in SUPPORTED

    def clear(self) -> None:
        self.store.clear()
        self.bytes = 0

    def take_metrics(self) -> dict[str, float]:
        """Micro-batches that started above the frozen layers / ran them, and the GB kept, since the last call."""
        out = {"perf/frozen_cache_hits": float(self.hits), "perf/frozen_cache_misses": float(self.misses),
               "perf/frozen_cache_gb": self.bytes / 2**30}
        self.hits = self.misses = 0
        return out

    def has(self, mb) -> bool:
        return bool(mb.entries) and all(i in self.store for i in mb.seq_indices)

    def forward(self, mb, **kwargs):
        """``model(**kwargs)`` on micro-batch ``mb`` (its ``input_ids`` given by the caller in kwargs): from the
        kept hidden states through the top layers when every sequence is kept, else in full, keeping them."""
        if self.has(mb):
            self.hits += 1
            kwargs.pop("input_ids")
            with self._top_only():
                return self.model(inputs_embeds=self._inputs_embeds(mb), **kwargs)
        self.misses += 1
        with self._capture(mb):
            return self.model(**kwargs)

    def _inputs_embeds(self, mb) -> torch.Tensor:
        first = self.store[mb.entries[0][0]]
        R, L = mb.input_ids.shape
        hidden = first.new_zeros(R, L, first.shape[-1])  # [R, L, H]; 0 on a row's padding
        for i, r, off, n in mb.entries:
            hidden[r, off : off + n] = self.store[i]
        return hidden

    @contextlib.contextmanager
    def _top_only(self):
        self.owner.layers = self.top
        try:
            yield
        finally:
            self.owner.layers = self.layers

    @contextlib.contextmanager
    def _capture(self, mb):
        def keep(_module, _args, output):
            hidden = output[0] if isinstance(output, tuple) else output  # [R, L, H]
            for i, r, off, n in mb.entries:
                size = n * hidden.shape[-1] * hidden.element_size()
                if i in self.store or (self.max_bytes is not None and self.bytes + size > self.max_bytes):
                    continue
                # a copy, not a view: a view would hold the whole micro-batch's [R, L, H] past the cap
                self.store[i] = hidden[r, off : off + n].detach().clone()
                self.bytes += size

        handle = self.layers[self.n - 1].register_forward_hook(keep)
        try:
            yield
        finally:
            handle.remove()


def frozen_activations(model, n: int, *, enabled: bool, sharded: bool,
                       max_gb: float | None = None) -> FrozenActivations | None:
    """The learner's cache for ``model.freeze_layers=n`` (at most ``max_gb`` GB kept), or None where it is off
    or cannot be exact."""
    if not enabled or n < 1:
        return None
    if sharded:
        log.info("model.freeze_cache: off under FSDP2 (every rank must run every sharded layer)")
        return None
    if not FrozenActivations.supported(model):
        log.warning("model.freeze_cache: off for model_type=%r (kept activations are exact for %s only); the "
                    "frozen layers run on every pass", getattr(model.config, "model_type", None), ", ".join(SUPPORTED))
        return None
    return FrozenActivations(model, n, None if max_gb is None else int(max_gb * 2**30))
