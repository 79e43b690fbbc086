"""SFT step throughput vs ``model.freeze_layers`` (embeddings + bottom N decoder layers fixed), in one process.

The learner's own path (packed micro-batches, varlen attention, reply-only logits, bf16 autocast over float32
masters, AdamW over the trainable weights); the baseline is the same step with nothing frozen.

    python bench/freeze_bench.py                           # embedded model, 8 turns of 406 + 14 tokens
    python bench/freeze_bench.py --demos run/demos/round_0.jsonl --layers 0,12,24

Prints one line per setting with its ratio to 0 frozen layers.
"""

from __future__ import annotations

import argparse
import json
import random
import time

import torch

from agent_rl.types import Sequence
from trainers.attention import enable_varlen_attention, is_varlen
from trainers.models import freeze_bottom_layers, load_model_and_tokenizer
from trainers.packing import pack_sequences, token_logprobs_and_entropy


def lengths(args, tokenizer) -> list[tuple[int, int]]:
    """(prompt, reply) token counts: from a demonstrations JSONL, or the measured demo mean."""
    if not args.demos:
        return [(args.prompt_tokens, args.reply_tokens)] * args.turns
    out = []
    for line in open(args.demos):
        row = json.loads(line)
        prompt = tokenizer.apply_chat_template(row["messages"], add_generation_prompt=True, tokenize=False)
        out.append((len(tokenizer(prompt)["input_ids"]), len(tokenizer(row["reply"])["input_ids"]) + 1))
        if len(out) == args.turns:
            break
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--layers", default="0,10,15,20,24", help="frozen-layer counts to time (0 is the baseline)")
    ap.add_argument("--demos", help="a demonstrations JSONL to take prompt/reply lengths from")
    ap.add_argument("--turns", type=int, default=8, help="demonstration turns per optimizer step")
    ap.add_argument("--prompt-tokens", type=int, default=406)
    ap.add_argument("--reply-tokens", type=int, default=14)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()

    counts = [int(x) for x in args.layers.split(",")]
    if counts[0] != 0:
        counts.insert(0, 0)
    rng = random.Random(0)
    base = None
    for n in counts:
        model, tokenizer = load_model_and_tokenizer(args.model, dtype=torch.float32)  # fresh weights per setting
        vocab = model.config.vocab_size
        seqs = [Sequence([rng.randrange(vocab) for _ in range(p + r)], [0] * p + [1] * r, [0.0] * (p + r), i)
                for i, (p, r) in enumerate(lengths(args, tokenizer))]
        ntok = sum(len(s.input_ids) for s in seqs)
        enable_varlen_attention(model)
        model.train()
        freeze_bottom_layers(model, n)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        times = []
        for rep in range(args.reps + 1):  # the first is warm-up
            t0 = time.perf_counter()
            for mb in pack_sequences(seqs, 8192, None, 8192 if is_varlen(model) else None):
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    lp, _ = token_logprobs_and_entropy(model, mb, loss_only=True)
                (-lp.float().sum() / ntok).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if rep:
                times.append(time.perf_counter() - t0)
        rate = ntok / min(times)
        base = base or rate
        print(f"freeze_bench frozen={n:2d} {ntok} tokens/step {min(times):6.2f} s/step {rate:6.0f} tokens/s "
              f"ratio {rate / base:.2f}x", flush=True)


if __name__ == "__main__":
    main()
