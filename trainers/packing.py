"""Padding-free packing of learner sequences into micro-batches, and per-token logprobs.

Data flow: trajectory batch → **packed micro-batches** → logprobs → Hölder loss.

Variable-length sequences (one per turn in ``per_step`` mode, one per episode in
``conversation`` mode) are concatenated into rows, with position ids restarting at each
sequence and a block-diagonal causal mask so that no sequence attends to another, and
rows are grouped into micro-batches up to a token budget. Varlen attention (flash-attention,
or :mod:`trainers.attention` on any device) needs only the position ids and costs Σ nᵢ²
per row, so rows are then filled up to the budget. Almost no compute goes to padding,
unlike a padded [N, L_max] batch.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from agent_rl.types import Sequence
from trainers.attention import is_varlen


@dataclass
class MicroBatch:
    """R packed rows of length L. ``input_ids``/``position_ids``/``segments``/``loss_mask``:
    [R, L]; ``segments`` numbers the sequences within each row (−1 on the padding at a row's
    end); ``loss_mask`` marks the agent tokens (the only ones whose logprobs a loss reads).
    ``entries`` locate each sequence: (index into the step's list, row, offset, length)."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    segments: torch.Tensor
    entries: list[tuple[int, int, int, int]]
    loss_mask: torch.Tensor | None = None

    @property
    def seq_indices(self) -> list[int]:
        return [e[0] for e in self.entries]

    @property
    def num_tokens(self) -> int:
        return int((self.segments >= 0).sum())

    def gather(self, values: torch.Tensor) -> dict[int, torch.Tensor]:
        """Split an [R, L] tensor into per-sequence [length] tensors."""
        return {i: values[r, off : off + n] for i, r, off, n in self.entries}

    def scatter(self, per_seq: dict[int, torch.Tensor]) -> torch.Tensor:
        """Inverse of :meth:`gather`: an [R, L] tensor, 0 on padding."""
        out = torch.zeros(self.input_ids.shape, dtype=next(iter(per_seq.values())).dtype)
        for i, r, off, n in self.entries:
            out[r, off : off + n] = per_seq[i]
        return out


def twin_groups(sequences: list[Sequence], indices: list[int]) -> dict[int, list[int]]:
    """``indices`` grouped by identical sequences: the first index of each group → every index of it (itself
    first). Token-identical inputs with the same agent-token mask have the same logprobs under any weights, so a
    group is computed once. They are common in agent RL: the G episodes of a group start from one state, and
    while they take the same actions every turn of theirs is the same sequence (ALFWorld's engine is
    deterministic, so the same actions give the same observations)."""
    groups: dict[tuple, list[int]] = {}
    for i in indices:
        groups.setdefault((tuple(sequences[i].input_ids), tuple(sequences[i].loss_mask)), []).append(i)
    return {members[0]: members for members in groups.values()}


def _first_fit_decreasing(lengths: dict[int, int], capacity: int) -> list[list[int]]:
    bins: list[list[int]] = []
    loads: list[int] = []
    for i in sorted(lengths, key=lambda k: -lengths[k]):
        n = lengths[i]
        for b, load in enumerate(loads):
            if load + n <= capacity:
                bins[b].append(i)
                loads[b] += n
                break
        else:
            bins.append([i])
            loads.append(n)
    return bins


def pack_sequences(
    sequences: list[Sequence], max_tokens: int, indices: list[int] | None = None, row_tokens: int | None = None
) -> list[MicroBatch]:
    """Pack ``sequences[indices]`` into rows, and rows into micro-batches of ≤ ``max_tokens``.

    Rows are filled first-fit-decreasing up to ``row_tokens`` (default: the longest
    selected sequence). Attention inside a row costs O(row length²) with dense-mask
    kernels (sdpa/eager), so short rows keep that cost near a padded batch's while
    dropping almost all padding; with varlen attention pass ``row_tokens=max_tokens``
    (it costs only Σ length²). A sequence longer than ``max_tokens`` gets a
    micro-batch of its own. The padding at a row's end is one more sequence (positions
    0, 1, …) that no real token sees and whose logprobs are 0.
    """
    if max_tokens < 1:
        raise ValueError(f"micro-batch token budget must be >= 1, got {max_tokens}")
    indices = list(range(len(sequences))) if indices is None else list(indices)
    if not indices:
        return []
    lengths = {i: len(sequences[i]) for i in indices}
    capacity = max(row_tokens or 0, max(lengths.values()))
    rows = _first_fit_decreasing(lengths, capacity)  # longest rows first
    row_len = [sum(lengths[i] for i in r) for r in rows]
    groups: list[list[int]] = []
    for k in range(len(rows)):
        # rows are padded to the group's first (longest) row
        if groups and (len(groups[-1]) + 1) * row_len[groups[-1][0]] <= max_tokens:
            groups[-1].append(k)
        else:
            groups.append([k])
    out = []
    for group in groups:
        L = max(row_len[k] for k in group)
        ids = torch.zeros(len(group), L, dtype=torch.long)
        pos = torch.zeros(len(group), L, dtype=torch.long)
        seg = torch.full((len(group), L), -1, dtype=torch.long)
        loss_mask = torch.zeros(len(group), L, dtype=torch.bool)
        entries = []
        for r, k in enumerate(group):
            off = 0
            for j, i in enumerate(rows[k]):
                n = lengths[i]
                ids[r, off : off + n] = torch.tensor(sequences[i].input_ids)
                pos[r, off : off + n] = torch.arange(n)
                seg[r, off : off + n] = j
                loss_mask[r, off : off + n] = torch.tensor(sequences[i].loss_mask, dtype=torch.bool)
                entries.append((i, r, off, n))
                off += n
            pos[r, off:] = torch.arange(L - off)  # the padding is one segment, not L − off of them
        out.append(MicroBatch(input_ids=ids, position_ids=pos, segments=seg, entries=entries, loss_mask=loss_mask))
    return out


def block_causal_mask(segments: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[R, 1, L, L] additive mask: token i sees token j iff same segment and j ≤ i
    (padding, segment −1, sees only itself so that no row of the softmax is empty)."""
    L = segments.shape[-1]
    causal = torch.ones(L, L, dtype=torch.bool, device=segments.device).tril_()  # [L, L]
    same = segments[:, :, None] == segments[:, None, :]  # [R, L, L]
    allowed = causal & same
    allowed |= torch.eye(L, dtype=torch.bool, device=segments.device)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segments.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def _takes_logits_to_keep(model) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft forwards **kwargs
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def token_logprobs_and_entropy(
    model, mb: MicroBatch, *, with_entropy: bool = False, temperature: float = 1.0, loss_only: bool = False,
    frozen=None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probabilities ([R, L]) of each token given its prefix within its own sequence
    (0 at each sequence's first token, which has no prefix, and on padding), and
    optionally the entropy of the predictive distribution at the same positions ([R, L]).

    ``loss_only``: compute them only where ``mb.loss_mask`` is set (0 elsewhere). The LM
    head and the vocabulary-wide softmax then run on the agent tokens alone: prompts and
    observations are most of an agent's tokens, and with a large vocabulary (49k–152k)
    their logits are a large share of the learner's time and memory.

    ``frozen``: a :class:`trainers.frozen_cache.FrozenActivations` of ``model``: the frozen bottom layers run
    once per sequence and update, later passes start above them."""
    device = next(model.parameters()).device
    input_ids = mb.input_ids.to(device)  # [R, L]
    segments = mb.segments.to(device)  # [R, L]
    R, L = input_ids.shape
    # logits at t predict token t+1, within the same sequence only
    need = (segments[:, 1:] == segments[:, :-1]) & (segments[:, 1:] >= 0)  # [R, L-1]
    kwargs = {"position_ids": mb.position_ids.to(device)}
    if not is_varlen(model):
        kwargs["attention_mask"] = block_causal_mask(segments, next(model.parameters()).dtype)
    if loss_only and mb.loss_mask is not None:  # 0 off the agent tokens whether or not the model can skip them
        need &= mb.loss_mask[:, 1:].to(device)
    if loss_only and mb.loss_mask is not None and _takes_logits_to_keep(model):
        cols = need.any(0).nonzero().flatten()  # [K] positions some row needs (rows share one index)
        if cols.numel() == 0:
            cols = cols.new_zeros(1)
        kwargs["logits_to_keep"] = cols
    else:
        cols = torch.arange(L - 1, device=device)  # [L-1]
    call = model if frozen is None else (lambda **kw: frozen.forward(mb, **kw))
    logits = call(input_ids=input_ids, **kwargs).logits  # [R, K or L, V]
    logits = logits[:, : cols.numel()].float()  # [R, K, V] (without logits_to_keep: the first L-1)
    if temperature != 1.0:
        logits = logits / temperature
    targets = input_ids[:, 1:][:, cols]  # [R, K]
    keep = need[:, cols]  # [R, K]
    lp = -F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    lp = lp.view(R, -1).masked_fill(~keep, 0.0)  # [R, K]
    logprobs = lp.new_zeros(R, L).index_copy(1, cols + 1, lp)  # [R, L]
    entropy = None
    if with_entropy:
        logp_all = torch.log_softmax(logits, -1)  # [R, K, V]
        ent = -(logp_all.exp() * logp_all).sum(-1).masked_fill(~keep, 0.0)  # [R, K]
        entropy = ent.new_zeros(R, L).index_copy(1, cols + 1, ent)  # [R, L]
    return logprobs, entropy
