"""SFT and RL step throughput vs ``model.freeze_layers`` (embeddings + bottom N decoder layers fixed), in one process.

The learner's own path (packed micro-batches, varlen attention, reply-only logits, bf16 autocast over float32
masters, AdamW over the trainable weights); the baseline is the same step with nothing frozen.

    python bench/freeze_bench.py                           # SFT: embedded model, 8 turns of 406 + 14 tokens
    python bench/freeze_bench.py --demos run/demos/round_0.jsonl --layers 0,12,24
    python bench/freeze_bench.py --rl --layers 20          # RL: Learner.update, frozen without and with the cache
    python bench/freeze_bench.py --sft-epochs 3 --layers 20 --turns 16   # SFT fit over epochs, without/with the cache

Prints one line per setting with its ratio to 0 frozen layers. ``--rl`` times one ``Learner.update`` (the ALFWorld
preset's two minibatches, so the old-logprob pass, a gradient pass, a no-grad pass and a gradient pass) on
``--trajectories`` trajectories of ``--turns`` turns each, every one with a nonzero advantage, for each frozen
count without and with ``model.freeze_cache`` (the frozen layers' output kept between the passes).
``--sft-epochs E`` times one ``SftLearner.fit`` (E passes over ``--turns`` demonstrations in batches of 4) the same
way: with the cache, epochs after the first start above the frozen layers.
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


def best_seconds(step, reps: int) -> float:
    """The fastest of ``reps`` timed calls of ``step``, after one untimed warm-up call."""
    step()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return min(times)


def rl_rates(args, counts: list[int]) -> None:
    """One Learner.update per setting: 0 frozen (baseline), then each count without and with the kept activations."""
    from agent_rl.types import Trajectory, TrajectoryBatch, Turn
    from trainers.learner import Learner, LearnerSettings

    rng = random.Random(0)
    base = None
    for n, cache in [(0, False)] + [(n, c) for n in counts if n for c in (False, True)]:
        model, tokenizer = load_model_and_tokenizer(args.model, dtype=torch.float32)
        vocab = model.config.vocab_size
        trajs = []
        for t in range(args.trajectories):
            turns = [Turn(observation="o", prompt_ids=[rng.randrange(vocab) for _ in range(p)],
                          response_ids=[rng.randrange(vocab) for _ in range(r)], response_logprobs=[-1.0] * r)
                     for p, r in lengths(args, tokenizer)]
            trajs.append(Trajectory(traj_id=f"t{t}", group_id="g", task_id="x", turns=turns, reward=float(t % 2)))
        batch = TrajectoryBatch(trajs)
        adv = torch.tensor([1.0 if t % 2 else -1.0 for t in range(args.trajectories)])  # [B]
        ntok = sum(len(s.input_ids) for s in batch.sequences())
        freeze_bottom_layers(model, n)
        learner = Learner(model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6),
                          LearnerSettings(num_minibatches=2, micro_batch_tokens=8192, bf16_autocast=True,
                                          frozen_layers=n, freeze_cache=cache))
        seconds = best_seconds(lambda: learner.update(batch, adv, p=1.0), args.reps)
        rate = ntok / seconds
        base = base or rate
        print(f"freeze_bench rl frozen={n:2d} cache={'on ' if cache else 'off'} {ntok} tokens/update "
              f"{seconds:6.2f} s/update {rate:6.0f} tokens/s ratio {rate / base:.2f}x", flush=True)


def sft_fit_rates(args, counts: list[int]) -> None:
    """One SftLearner.fit per setting: 0 frozen (baseline), then each count without and with the kept activations."""
    from trainers.sft import SftLearner, SftSettings

    base = None
    for n, cache in [(0, False)] + [(n, c) for n in counts if n for c in (False, True)]:
        rng = random.Random(0)  # the same demonstrations and batches for every setting
        model, tokenizer = load_model_and_tokenizer(args.model, dtype=torch.float32)
        vocab = model.config.vocab_size
        seqs = [Sequence([rng.randrange(vocab) for _ in range(p + r)], [0] * p + [1] * r, [0.0] * (p + r), i)
                for i, (p, r) in enumerate(lengths(args, tokenizer))]
        ntok = round(args.sft_epochs * sum(len(s.input_ids) for s in seqs))
        freeze_bottom_layers(model, n)
        learner = SftLearner(model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5),
                             SftSettings(epochs=args.sft_epochs, batch_size=4, warmup_steps=0, micro_batch_tokens=8192,
                                         bf16_autocast=True, frozen_layers=n, freeze_cache=cache))
        seconds = best_seconds(lambda: learner.fit(seqs), 1)
        rate = ntok / seconds
        base = base or rate
        print(f"freeze_bench sft-fit epochs={args.sft_epochs:g} frozen={n:2d} cache={'on ' if cache else 'off'} "
              f"{ntok} tokens {seconds:6.1f} s {rate:6.0f} tokens/s ratio {rate / base:.2f}x", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--layers", default="0,10,15,20,24", help="frozen-layer counts to time (0 is the baseline)")
    ap.add_argument("--demos", help="a demonstrations JSONL to take prompt/reply lengths from")
    ap.add_argument("--turns", type=int, default=8, help="demonstration turns per optimizer step")
    ap.add_argument("--prompt-tokens", type=int, default=406)
    ap.add_argument("--reply-tokens", type=int, default=14)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rl", action="store_true", help="time Learner.update (RL) instead of an SFT step")
    ap.add_argument("--trajectories", type=int, default=2, help="--rl: trajectories per update (of --turns turns)")
    ap.add_argument("--sft-epochs", type=float, default=0, help="time SftLearner.fit over this many epochs instead")
    args = ap.parse_args()

    counts = [int(x) for x in args.layers.split(",")]
    if args.rl:
        return rl_rates(args, counts)
    if args.sft_epochs:
        return sft_fit_rates(args, counts)
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

        def sft_step():
            for mb in pack_sequences(seqs, 8192, None, 8192 if is_varlen(model) else None):
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    lp, _ = token_logprobs_and_entropy(model, mb, loss_only=True)
                (-lp.float().sum() / ntok).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        seconds = best_seconds(sft_step, args.reps)
        rate = ntok / seconds
        base = base or rate
        print(f"freeze_bench frozen={n:2d} {ntok} tokens/step {seconds:6.2f} s/step {rate:6.0f} tokens/s "
              f"ratio {rate / base:.2f}x", flush=True)


if __name__ == "__main__":
    main()
