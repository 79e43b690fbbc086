"""Benchmark: the learner's GPU memory and tokens/s for a real model shape, as `train` builds it.

Data flow: (a synthetic) trajectory batch → advantages → **old/ref logprobs → Hölder loss → optimizer**,
the update stage alone, with the trainer's own construction: ``agent_rl.train.load_model`` (float32 master
weights, moved to the GPU), ``load_reference_model`` (the KL term's frozen copy in ``model.dtype``),
``make_optimizer`` (AdamW) and ``learner_settings`` (bf16 autocast, packing budget, minibatches) from
``preset=paper_alfworld`` plus any overrides. The weights are random, written once in the shape of the named
architecture (Qwen2.5-1.5B: 28 layers, hidden 1536, vocabulary 151,936): memory and time depend on the
shapes and the token counts, not on the values, so no download is needed.

The batch is ALFWorld-like: each trajectory has several turns, each a per-step prompt (history and
observation) and a reply, lengths drawn around ``--prompt-tokens`` and ``--response-tokens``; half the
trajectories won, so every advantage is ±1 and every sequence gets a forward and a backward pass.

Each variant (``NAME:override;override``, default: the preset as is, and with gradient checkpointing) runs
``--updates`` updates in this process, one after the other; the first also allocates the gradients and the
AdamW moments. Printed per variant: the memory held after loading (weights + reference), after the updates
(+ the AdamW moments; the gradients are freed after each optimizer step), the peak during them (CUDA allocator statistics; on a CPU they do not exist
and are printed as n/a), the last update's wall time and tokens/s. Then one ratio line per variant against
the first.

    python bench/learner_memory.py --shape qwen2.5-1.5b                 # on a GPU
    python bench/learner_memory.py --shape tiny --trajectories 4        # the same code on a CPU, in seconds
"""

from __future__ import annotations

import argparse
import gc
import random
import shutil
import tempfile
import time
from pathlib import Path

import torch

# Architectures by the numbers in their published config.json (Qwen2 family: GQA, tied embeddings below 7B).
SHAPES: dict[str, dict] = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1, vocab_size=512, tie_word_embeddings=True),
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-3b": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                       num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
}
DEFAULT_VARIANTS = ("baseline:", "gradient_checkpointing:model.gradient_checkpointing=true")
GIB = 2**30


def write_model(out: Path, shape: str) -> Path:
    """A random bf16 Qwen2 model of ``shape`` with the project's tiny tokenizer (its ids are all below the
    vocabulary size, and the learner never decodes)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    from trainers.models import build_tiny_model

    tok_dir = build_tiny_model(out / "tokenizer_source")
    tok = AutoTokenizer.from_pretrained(tok_dir)
    config = Qwen2Config(**SHAPES[shape], max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    path = out / shape
    model.save_pretrained(path)
    tok.save_pretrained(path)
    shutil.rmtree(tok_dir)
    return path


def make_batch(n: int, turns: int, prompt_tokens: int, response_tokens: int, vocab: int, seed: int = 0):
    """``n`` ALFWorld-like trajectories, alternately won and lost; advantages ±1."""
    from agent_rl.types import Trajectory, TrajectoryBatch, Turn

    rng = random.Random(seed)
    trajs = []
    for i in range(n):
        steps = []
        for _ in range(rng.randint(max(1, turns // 2), turns)):
            prompt = [rng.randrange(vocab) for _ in range(rng.randint(int(0.6 * prompt_tokens), prompt_tokens))]
            reply = [rng.randrange(vocab) for _ in range(rng.randint(max(1, response_tokens // 3), response_tokens))]
            steps.append(Turn(observation="", prompt_ids=prompt, response_ids=reply, response_logprobs=[-1.0] * len(reply)))
        trajs.append(Trajectory(traj_id=f"t{i}", group_id=f"g{i // 2}", task_id="bench", turns=steps,
                                reward=float(i % 2), won=bool(i % 2), prompt_mode="per_step"))
    advantages = torch.tensor([1.0 if i % 2 else -1.0 for i in range(n)])  # [B]
    tokens = sum(len(t.prompt_ids) + len(t.response_ids) for tr in trajs for t in tr.turns)
    return TrajectoryBatch(trajs), advantages, tokens


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, sep, overrides = text.partition(":")
    if not sep or not name:
        raise SystemExit(f"--variant {text!r}: expected NAME:override;override (overrides may be empty, "
                         f"e.g. 'baseline:'), as in {DEFAULT_VARIANTS[1]!r}")
    return name, [o for o in overrides.split(";") if o]


def run_variant(model_dir: Path, preset: str, overrides: list[str], batch, advantages, updates: int) -> dict:
    from agent_rl.train import compose_config, learner_settings, load_model, load_reference_model, make_optimizer
    from agent_rl.validation import validate
    from trainers.learner import Learner

    cfg = compose_config([f"preset={preset}", f"model.name={model_dir}", "logging.wandb=false", *overrides])
    validate(cfg)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model, _ = load_model(cfg)
    device = next(model.parameters()).device
    ref = load_reference_model(cfg, device)
    optimizer = make_optimizer(cfg, model)
    learner = Learner(model, optimizer, learner_settings(cfg, device.type), ref_model=ref, seed=0)
    loaded = torch.cuda.memory_allocated() if cuda else None
    times, metrics = [], {}
    for _ in range(updates):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        metrics = learner.update(batch, advantages, p=cfg.algo.p_start)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    out = dict(device=device.type, loaded=loaded, after=torch.cuda.memory_allocated() if cuda else None,
               peak=torch.cuda.max_memory_allocated() if cuda else None,
               reserved=torch.cuda.max_memory_reserved() if cuda else None, seconds=times[-1], first_seconds=times[0],
               autocast=learner.s.bf16_autocast, mbt=cfg.train.micro_batch_tokens,
               minibatches=cfg.algo.num_minibatches, kl=cfg.algo.kl_coef, grad_norm=metrics.get("loss/grad_norm"),
               params=sum(p.numel() for p in model.parameters()), checkpointing=model.is_gradient_checkpointing)
    del learner, optimizer, model, ref
    gc.collect()
    return out


def gib(x: int | None) -> str:
    return "n/a" if x is None else f"{x / GIB:.1f} GiB"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="qwen2.5-1.5b")
    ap.add_argument("--preset", default="paper_alfworld")
    ap.add_argument("--variant", action="append", help=f"NAME:override;override (repeatable; default {DEFAULT_VARIANTS})")
    ap.add_argument("--trajectories", type=int, default=16)
    ap.add_argument("--turns", type=int, default=8, help="most turns a trajectory has (drawn from turns/2..turns)")
    ap.add_argument("--prompt-tokens", type=int, default=1400, help="longest per-step prompt (drawn from 60%%..100%%)")
    ap.add_argument("--response-tokens", type=int, default=200, help="longest reply (drawn from 1/3..all of it)")
    ap.add_argument("--updates", type=int, default=2)
    ap.add_argument("--workdir", default=None, help="where the random model is written (default: a temp dir)")
    args = ap.parse_args(argv)
    variants = [parse_variant(v) for v in (args.variant or DEFAULT_VARIANTS)]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="learner_memory_"))
    model_dir = write_model(work, args.shape)
    batch, advantages, tokens = make_batch(args.trajectories, args.turns, args.prompt_tokens, args.response_tokens,
                                           SHAPES[args.shape]["vocab_size"])
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    print(f"learner_memory shape={args.shape} preset={args.preset} gpu={gpu} torch={torch.__version__} "
          f"batch: {args.trajectories} trajectories, {sum(len(t.turns) for t in batch.trajectories)} turns, "
          f"{tokens} tokens", flush=True)
    results = {}
    for name, overrides in variants:
        r = run_variant(model_dir, args.preset, overrides, batch, advantages, args.updates)
        results[name] = r
        print(f"learner_memory {name} ({' '.join(overrides) or 'preset as is'}): {r['params'] / 1e6:,.1f}M params "
              f"on {r['device']}, bf16 autocast={r['autocast']}, micro_batch_tokens={r['mbt']}, "
              f"minibatches={r['minibatches']}, kl_coef={r['kl']} | held after load {gib(r['loaded'])}, "
              f"after {args.updates} updates {gib(r['after'])}, peak {gib(r['peak'])} (reserved {gib(r['reserved'])}) "
              f"| update {r['seconds']:.1f} s (first {r['first_seconds']:.1f} s) = {tokens / r['seconds']:,.0f} tokens/s, "
              f"grad_norm {r['grad_norm']:.3g}", flush=True)
    base_name, base = next(iter(results.items()))
    for name, r in list(results.items())[1:]:
        peak = f"{r['peak'] / base['peak']:.2f}x" if base["peak"] else "n/a"
        print(f"learner_memory ratio {name}/{base_name}: peak memory {peak}, "
              f"tokens/s {base['seconds'] / r['seconds']:.2f}x")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
