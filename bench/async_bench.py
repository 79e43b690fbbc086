"""Asynchronous vs synchronous rollouts: training steps per hour, in one run of this script.

Runs ``python -m agent_rl.train preset=learning_curve`` (embedded SmolLM2-135M-Instruct, generated math,
where rewards vary so the learner has real work) twice with the same settings, generation in a Ray actor
(``ray.enabled=true``): once synchronous, once with ``train.async_rollouts=true`` (one step off policy).
Steps/hour come from the runs' ``perf/step_seconds``; step 1 is reported apart (the async run plays its
first batch before any overlap is possible). A measurement, not a test.

    python bench/async_bench.py [--steps 6] [--learner-threads 1] [--out bench_out/async_bench]  # ~15 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def run(name: str, out: Path, args, extra: list[str]) -> list[dict]:
    run_dir = out / name
    shutil.rmtree(run_dir, ignore_errors=True)
    env = dict(os.environ, WANDB_MODE="offline", HF_HUB_OFFLINE="1")
    # rollout=hf: transformers generation in the Ray actor, as the README's measurement ran (extra overrides win)
    cmd = [sys.executable, "-m", "agent_rl.train", "preset=learning_curve", "rollout=hf", f"train.steps={args.steps}",
           f"rollout.tasks_per_step={args.tasks}", f"rollout.group_size={args.group}", "ray.enabled=true",
           f"ray.num_cpus={args.ray_cpus}", f"ray.rollout_num_cpus={args.actor_cpus}", "env.num_workers=1",
           f"train.run_dir={run_dir}", "train.resume=false", "train.progress=false", "logging.wandb=false", *extra,
           *args.extra]
    t0 = time.perf_counter()
    with open(out / f"{name}.log", "w") as log:
        code = subprocess.call(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    if code:
        raise SystemExit(f"{name} run failed (exit {code}); see {out / f'{name}.log'}")
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    print(f"async_bench {name}: {len(rows)} steps in {time.perf_counter() - t0:.0f} s (process wall, start-up included)",
          flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--tasks", type=int, default=4)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--ray-cpus", type=int, default=2, help="CPUs of the local Ray (env actors + rollout actor)")
    ap.add_argument("--actor-cpus", type=float, default=1, help="the rollout actor's CPUs (its torch threads)")
    ap.add_argument("--learner-threads", type=int, default=None,
                    help="also run async with train.learner_threads=N (the learner off the actor's cores)")
    ap.add_argument("--out", type=Path, default=Path("bench_out/async_bench"))
    ap.add_argument("extra", nargs="*", help="more Hydra overrides for both runs")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    runs = [("sync", []), ("async", ["train.async_rollouts=true"])]
    if args.learner_threads:
        runs.append((f"async-t{args.learner_threads}",
                     ["train.async_rollouts=true", f"train.learner_threads={args.learner_threads}"]))
    results = {name: run(name, args.out, args, extra) for name, extra in runs}
    rate = {}
    for name, rows in results.items():
        secs = [r["perf/step_seconds"] for r in rows]
        wait = [r["perf/rollout_seconds"] for r in rows]
        learn = [r["perf/learner_seconds"] for r in rows]
        rate[name] = 3600 / statistics.mean(secs[1:])
        print(f"async_bench {name}: step 1 {secs[0]:.1f} s; steps 2-{len(secs)}: {statistics.mean(secs[1:]):.1f} s/step "
              f"= {rate[name]:.0f} steps/h (rollout or wait {statistics.mean(wait[1:]):.1f} s, learner "
              f"{statistics.mean(learn[1:]):.1f} s); train success {statistics.mean(r['rollout/success_rate'] for r in rows):.3f}",
              flush=True)
    for name in rate:
        if name != "sync":
            print(f"async_bench speed-up (steps 2-{args.steps}, steps/h {name} / sync): {rate[name] / rate['sync']:.2f}x",
                  flush=True)


if __name__ == "__main__":
    main()
