"""Benchmark: the CPU learner's resident memory over many updates, with and without returning freed heap to the OS.

Data flow: (a synthetic) trajectory batch → advantages → **old logprobs → Hölder loss → optimizer**, the update
stage alone, built as ``train`` builds it (``load_model``, ``make_optimizer``, ``learner_settings``), here on the
real model ``--model`` (default: the embedded SmolLM2-135M) with the release ALFWorld runs' settings (20 frozen
layers and their activation cache, bf16 autocast, 2 minibatches). Every update gets a new batch, as every
training step does: ALFWorld-like trajectories of several per-step turns (prompt ~60–100% of ``--prompt-tokens``,
reply ~1/3–all of ``--response-tokens``), alternately won and lost, so every sequence gets its passes.

Why, and what the trim does: :mod:`trainers.memory` (the trainer calls ``release_free_memory`` after every update).

Each arm runs in a process of its own (the peak RSS is per process), one after the other; printed: the RSS after
each update, then one line per arm and the ratio of the trimmed arm's RSS to the untrimmed one's.

    python bench/learner_rss.py                       # embedded model, 6 updates per arm
    python bench/learner_rss.py --updates 3 --trajectories 4 --turns 6   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

RELEASE_LEARNER = ("model.freeze_layers=20", "train.bf16=true", "algo.num_minibatches=2")


def arm(args) -> dict:
    import torch

    from agent_rl.train import compose_config, learner_settings, load_model, make_optimizer
    from agent_rl.validation import validate
    from trainers.learner import Learner
    from trainers.memory import memory_metrics, release_free_memory

    sys.path.insert(0, str(Path(__file__).parent))
    from learner_memory import make_batch

    cfg = compose_config([f"model.name={args.model}", "logging.wandb=false", *args.override])
    validate(cfg)
    model, _ = load_model(cfg)
    optimizer = make_optimizer(cfg, model)
    learner = Learner(model, optimizer, learner_settings(cfg, "cpu"), seed=0)
    vocab = model.config.vocab_size
    loaded = memory_metrics()["perf/rss_gb"]
    rows = []
    for u in range(args.updates):
        batch, advantages, tokens = make_batch(args.trajectories, args.turns, args.prompt_tokens,
                                               args.response_tokens, vocab, seed=u)
        t0 = time.perf_counter()
        learner.update(batch, advantages, p=1.0)
        t1 = time.perf_counter()
        if args.trim:
            release_free_memory()
        t2 = time.perf_counter()
        rows.append({"rss": memory_metrics()["perf/rss_gb"], "seconds": t2 - t0, "trim_s": t2 - t1, "tokens": tokens})
        print(f"learner_rss trim={args.trim} update {u + 1}: {tokens} tokens in {rows[-1]['seconds']:.1f} s, "
              f"rss {rows[-1]['rss']:.2f} GiB", file=sys.stderr, flush=True)
    peak = memory_metrics()["perf/peak_rss_gb"]
    return {"loaded": loaded, "rows": rows, "peak": peak, "threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--updates", type=int, default=6)
    ap.add_argument("--trajectories", type=int, default=16)
    ap.add_argument("--turns", type=int, default=30, help="most turns a trajectory has (drawn from turns/2..turns)")
    ap.add_argument("--prompt-tokens", type=int, default=700)
    ap.add_argument("--response-tokens", type=int, default=14)
    ap.add_argument("--override", action="append",
                    help=f"a Hydra override of the trainer's config (repeatable; default: the release runs' learner, "
                         f"{' '.join(RELEASE_LEARNER)})")
    ap.add_argument("--trim", action="store_true", help=argparse.SUPPRESS)  # one arm, in a child process
    ap.add_argument("--arm", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.override = args.override or list(RELEASE_LEARNER)
    if args.arm:
        print(json.dumps(arm(args)), flush=True)
        return
    results = {}
    for trim in (False, True):
        cmd = [sys.executable, __file__, "--arm", "--model", args.model, "--updates", str(args.updates),
               "--trajectories", str(args.trajectories), "--turns", str(args.turns), "--prompt-tokens",
               str(args.prompt_tokens), "--response-tokens", str(args.response_tokens)]
        cmd += [f"--override={o}" for o in args.override] + (["--trim"] if trim else [])
        root = str(Path(__file__).resolve().parents[1])  # this checkout's packages, installed or not
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True, env=env).stdout
        r = results[trim] = json.loads(out.strip().splitlines()[-1])
        rss = [x["rss"] for x in r["rows"]]
        print(f"learner_rss trim={'on ' if trim else 'off'} model={args.model} {' '.join(args.override)}: "
              f"rss after load {r['loaded']:.2f} GiB, after update 1 {rss[0]:.2f}, after update {len(rss)} "
              f"{rss[-1]:.2f} (max {max(rss):.2f}), peak {r['peak']:.2f} GiB; update "
              f"{sum(x['seconds'] for x in r['rows']) / len(rss):.1f} s on average"
              + (f" (the trim in it {1000 * max(x['trim_s'] for x in r['rows']):.0f} ms at most)" if trim else "")
              + f", {r['threads']} torch threads", flush=True)
    off, on = ([x["rss"] for x in results[k]["rows"]] for k in (False, True))
    t_off, t_on = (sum(x["seconds"] for x in results[k]["rows"]) for k in (False, True))
    print(f"learner_rss ratio trim/off: rss after the last update {on[-1] / off[-1]:.2f}x, max rss between "
          f"updates {max(on) / max(off):.2f}x, update time {t_on / t_off:.2f}x")


if __name__ == "__main__":
    main()
