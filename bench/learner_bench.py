"""Benchmark: learner tokens/s with padding-free packing vs a padded batch.

Same model, same variable-length sequences (lengths drawn like multi-turn agent
prompts+responses), same fwd+bwd of the per-token logprob surrogate, side by side in one
run. The packed side is what the learner runs: rows filled up to the token budget and
attention within each packed sequence (``trainers.attention``, SDPA per sequence). The
padded baseline is the usual [rows, L_max] micro-batch with an attention mask (TRL/verl
without remove-padding) on transformers' SDPA, with as many rows as fit the same token
budget at the longest length, padded only to the longest sequence of each micro-batch.
Also printed: packing with a dense block-causal mask (no varlen kernel), for reference.
Prints one ratio line (target ≥ 1.5×).

    python bench/learner_bench.py [--sequences 48] [--budget 4096]
"""

from __future__ import annotations

import argparse
import copy
import random
import tempfile
import time

import torch
import torch.nn.functional as F

from agent_rl.types import Sequence
from trainers.attention import enable_varlen_attention
from trainers.models import build_tiny_model, load_model_and_tokenizer
from trainers.packing import pack_sequences, token_logprobs_and_entropy


def make_sequences(n: int, rng: random.Random, vocab: int) -> list[Sequence]:
    seqs = []
    for i in range(n):
        prompt = rng.randint(64, 900)  # per-step prompts vary with history and observation length
        resp = rng.randint(8, 200)
        ids = [rng.randrange(vocab) for _ in range(prompt + resp)]
        seqs.append(Sequence(ids, [0] * prompt + [1] * resp, [0.0] * (prompt + resp), i))
    return seqs


def packed_pass(model, seqs, budget, row_tokens=None) -> int:
    tokens = 0
    for mb in pack_sequences(seqs, budget, row_tokens=row_tokens):
        lp, _ = token_logprobs_and_entropy(model, mb)
        lp.sum().backward()
        tokens += mb.num_tokens
    return tokens


def padded_chunks(seqs, budget) -> list[list[Sequence]]:
    """The baseline's micro-batches: as many rows as fit the budget at the longest length, in order."""
    rows = max(1, budget // max(len(s) for s in seqs))
    return [seqs[i : i + rows] for i in range(0, len(seqs), rows)]


def padded_pass(model, seqs, budget, pad_id: int) -> int:
    for chunk in padded_chunks(seqs, budget):
        L = max(len(s) for s in chunk)
        ids = torch.full((len(chunk), L), pad_id, dtype=torch.long)
        attn = torch.zeros(len(chunk), L, dtype=torch.long)
        for r, s in enumerate(chunk):
            ids[r, : len(s)] = torch.tensor(s.input_ids)
            attn[r, : len(s)] = 1
        logits = model(input_ids=ids, attention_mask=attn).logits.float()  # [R, L, V]
        lp = -F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
        (lp.view(len(chunk), -1) * attn[:, 1:]).sum().backward()
    return sum(len(s) for s in seqs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sequences", type=int, default=48)
    ap.add_argument("--budget", type=int, default=4096)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    path = build_tiny_model(tempfile.mkdtemp(), hidden_size=args.hidden, num_layers=args.layers, num_heads=args.hidden // 64)
    model, tok = load_model_and_tokenizer(path)  # sdpa: the padded baseline and the dense-mask packing
    model.train()
    varlen = copy.deepcopy(model)
    assert enable_varlen_attention(varlen)
    seqs = make_sequences(args.sequences, random.Random(0), len(tok))
    useful = sum(len(s) for s in seqs)
    arms = {
        "packed": lambda: packed_pass(varlen, seqs, args.budget, row_tokens=args.budget),
        "padded": lambda: padded_pass(model, seqs, args.budget, tok.pad_token_id),
        "packed_dense_mask": lambda: packed_pass(model, seqs, args.budget),
    }
    times: dict[str, list[float]] = {k: [] for k in arms}
    for _ in range(args.rounds):  # alternate to share drift in machine load
        for name, run in arms.items():
            t0 = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t0)
            model.zero_grad(); varlen.zero_grad()
    t = {k: min(v) for k, v in times.items()}
    print(f"learner_bench {args.sequences} seqs, {useful} tokens, budget {args.budget}, hidden {args.hidden}, "
          f"threads={torch.get_num_threads()}: packed (varlen) {useful / t['packed']:,.0f} tok/s, "
          f"packed (dense block mask) {useful / t['packed_dense_mask']:,.0f} tok/s, padded {useful / t['padded']:,.0f} tok/s")
    padded_tokens = sum(len(c) * max(len(s) for s in c) for c in padded_chunks(seqs, args.budget))
    # Linear layers cost the same per token either way: packing saves at most this factor there,
    # and more only in attention (Σ n² instead of rows × L²).
    print(f"padded/useful tokens = {padded_tokens / useful:.2f} (the most packing saves in the MLPs)")
    print(f"ratio packed_dense_mask/padded = {t['padded'] / t['packed_dense_mask']:.2f}x (reference)")
    print(f"ratio packed/padded = {t['padded'] / t['packed']:.2f}x (target >= 1.5x)")


if __name__ == "__main__":
    main()
