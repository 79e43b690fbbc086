"""What bounds CPU rollouts (rollout): a vLLM decode step measured against this machine's memory-bandwidth floor.

    python bench/decode_roofline.py                          # embedded model, batches 1, 12, 48, ~550-token contexts
    python bench/decode_roofline.py --batches 12 --context 550 --tokens 96 --model <checkpoint>
    python bench/decode_roofline.py --engines eager          # the eager engine only (default: eager, then compiled)

A decode step reads every weight once (the engine's dtype; tied embeddings once, as the output projection) and,
per sequence, the KV cache of its whole context. On a CPU those bytes come from memory, so no engine can do a step
in less than ``bytes / read bandwidth``. This script measures, in one run:

1. the read bandwidth: ``torch.sum`` over a 512 MiB float32 tensor with ``--threads`` threads, best of 5;
2. vLLM decode steps with the rollout's engine settings (:class:`~trainers.policies.vllm.VLLMPolicy`: in
   process, OpenMP threads on every core, prefix caching, dtype ``auto``), eager (the CPU default) and compiled
   (``rollout.vllm.enforce_eager=false``), one engine after the other: ``B`` random prompts of
   ``--context`` tokens, prefilled and cached first, then ``--tokens`` tokens each (``ignore_eos``); a step is
   ``(time(1 + N tokens) - time(1 token)) / N``, so prefill is left out;
3. the floor: (weight bytes + B x KV bytes per token x mean context) / bandwidth, and measured/floor.

A ratio near 1 means the step is memory-bound and only fewer bytes (larger batches per weight read, fewer
decode steps, smaller dtypes) make it faster; a large ratio means per-step overhead (Python, op dispatch) leads.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def read_bandwidth(threads: int, mib: int = 512, repeats: int = 5) -> float:
    """Best-of-``repeats`` bytes/s of a full read (``sum``) of a ``mib`` MiB float32 tensor."""
    import torch

    torch.set_num_threads(threads)
    x = torch.ones(mib * 1024 * 1024 // 4)  # [n] float32
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t0)
    return x.numel() * 4 / best


def model_bytes(folder: Path, itemsize: int) -> tuple[int, int]:
    """(parameter count, bytes of one read of them at ``itemsize``) from the checkpoint's safetensors headers."""
    count = 0
    for f in sorted(folder.glob("*.safetensors")):
        with open(f, "rb") as fh:
            header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
        count += sum(math.prod(meta["shape"]) for name, meta in header.items() if name != "__metadata__")
    if count == 0:
        sys.exit(f"--model: no *.safetensors weights in {folder}; this bench reads parameter counts from them")
    return count, count * itemsize


def kv_bytes_per_token(folder: Path, itemsize: int) -> tuple[int, str]:
    """Bytes of K and V a decode step reads per context token, and how they add up (from config.json)."""
    cfg = json.loads((folder / "config.json").read_text())
    layers, heads = cfg["num_hidden_layers"], cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    per = layers * 2 * kv_heads * head_dim * itemsize
    return per, f"{layers} layers x 2 x {kv_heads} kv heads x {head_dim} x {itemsize} B"


def step_seconds(policy, batch: int, context: int, tokens: int, seed: int) -> float:
    """Seconds per decode step at ``batch`` sequences of ``context`` prompt tokens (prefill left out)."""
    import random

    from vllm import SamplingParams

    rng = random.Random(seed)
    vocab = len(policy.tokenizer)
    prompts = [{"prompt_token_ids": [rng.randrange(100, vocab - 100) for _ in range(context)]} for _ in range(batch)]

    def timed(n: int) -> float:
        params = SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)
        t0 = time.perf_counter()
        policy.llm.generate(prompts, params, use_tqdm=False)
        return time.perf_counter() - t0

    timed(1)  # prefill once: later calls find the prompts in the prefix cache
    one = min(timed(1), timed(1))
    return (timed(1 + tokens) - one) / tokens


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="embedded", help="a name for trainers.models.resolve_model (default embedded)")
    p.add_argument("--batches", default="1,12,48", help="comma-separated batch sizes (default 1,12,48; the ALFWorld "
                                                       "rollout bench plays 12 games a turn)")
    p.add_argument("--context", type=int, default=550, help="prompt tokens per sequence (the ALFWorld bench: ~550)")
    p.add_argument("--tokens", type=int, default=64, help="decode steps timed per batch")
    p.add_argument("--threads", type=int, default=2, help="threads for the bandwidth read and vLLM's OpenMP")
    p.add_argument("--engines", default="eager,compiled", help="vLLM engines to time, in order: eager, compiled")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if not engines or set(engines) - {"eager", "compiled"}:
        p.error(f"--engines takes eager and/or compiled, comma-separated, got {args.engines!r}")
    try:
        batches = [int(b) for b in args.batches.split(",")]
    except ValueError:
        p.error(f"--batches takes comma-separated integers like 1,12,48, got {args.batches!r}")
    if not batches or min(batches) < 1 or args.context < 1 or args.tokens < 1:
        p.error(f"--batches, --context and --tokens must be >= 1, got {args.batches!r}, {args.context}, "
                f"{args.tokens}")

    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{args.threads - 1}")
    bandwidth = read_bandwidth(args.threads)
    print(f"decode_roofline memory read {bandwidth / 1e9:.1f} GB/s (torch sum over 512 MiB float32, {args.threads} "
          f"threads, best of 5)", flush=True)

    from trainers.policies import make_policy

    for engine in engines:
        t0 = time.perf_counter()
        policy = make_policy("vllm", model=args.model, seed=args.seed, max_model_len=args.context + args.tokens + 64,
                             enforce_eager=engine == "eager")
        start = time.perf_counter() - t0
        try:
            folder = Path(policy.model_path)  # the resolved checkpoint folder the engine loaded
            dtype = policy.llm.model_config.dtype  # what the engine runs in (dtype "auto" resolved)
            itemsize = dtype.itemsize
            params, w_bytes = model_bytes(folder, itemsize)
            kv_per, kv_how = kv_bytes_per_token(folder, itemsize)
            print(f"decode_roofline {engine} engine (start {start:.1f} s), model {args.model}: {params / 1e6:.1f}M "
                  f"parameters in {str(dtype).removeprefix('torch.')} = {w_bytes / 1e6:.0f} MB read per decode step; "
                  f"KV {kv_per / 1e3:.1f} KB per context token ({kv_how})", flush=True)
            for batch in batches:
                step = step_seconds(policy, batch, args.context, args.tokens, args.seed)
                mean_ctx = args.context + (args.tokens + 1) / 2
                w_s, kv_s = w_bytes / bandwidth, batch * kv_per * mean_ctx / bandwidth
                floor = w_s + kv_s
                print(f"decode_roofline {engine:8s} batch {batch:3d}, context {args.context}+{args.tokens}: measured "
                      f"{step * 1e3:6.1f} ms/step ({batch / step:5.0f} tokens/s); floor {floor * 1e3:5.1f} ms "
                      f"(weights {w_s * 1e3:.1f} + KV {kv_s * 1e3:.1f}); measured/floor {step / floor:.2f}x",
                      flush=True)
        finally:
            policy.close()


if __name__ == "__main__":
    main()
