"""The p schedule, from evidence: Hölder-loss runs with different p schedules × seeds on the math curve.

Each arm is ``python -m agent_rl.train preset=learning_curve`` (embedded SmolLM2-135M-Instruct, generated
level-1 math, one CPU core per run, ``--parallel`` runs at a time) with the overrides in ARMS; every seed
changes the training tasks and sampling, not the eval problems (fixed by the preset). Writes ``study.csv``
(one row per run and step), ``study.png`` (greedy eval success per arm, mean over seeds) and prints per arm:
final eval success (mean, 95% t-interval over seeds), and token-weight ESS, clip fraction and gradient norm
per p bucket. A measurement, not a test.

    python bench/p_schedule_study.py --arms linear_2_-2,linear_2_0,constant_1,adaptive --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from agent_rl.curve import P_SCHEDULES
from trainers.tracking import format_signals, read_metrics, signals_per_p

# the p schedules (shared with the ALFWorld curve's holder+<schedule> stages), and the token-clipped reference
ARMS: dict[str, list[str]] = {**P_SCHEDULES, "grpo": ["algo=grpo"]}
# t quantiles (two-sided 95%) for n − 1 degrees of freedom
T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}


def command(arm: str, seed: int, run_dir: Path, args) -> list[str]:
    # rollout=hf: one CPU core per run, no vLLM engine beside each (as measured; extra overrides win)
    return [sys.executable, "-m", "agent_rl.train", "preset=learning_curve", "rollout=hf", *ARMS[arm], f"train.seed={seed}",
            f"train.steps={args.steps}", f"train.eval_every={args.eval_every}", f"train.eval_episodes={args.eval_episodes}",
            f"rollout.tasks_per_step={args.tasks}", f"rollout.group_size={args.group}", f"train.run_dir={run_dir}",
            "train.resume=false", "train.progress=false", "logging.wandb=false", *args.extra]


def run_all(jobs: list[tuple[str, int]], args) -> dict[tuple[str, int], int]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", WANDB_MODE="offline", HF_HUB_OFFLINE="1")
    waiting, running, codes = list(jobs), {}, {}
    while waiting or running:
        while waiting and len(running) < args.parallel:
            arm, seed = waiting.pop(0)
            run_dir = args.out / arm / f"seed{seed}"
            shutil.rmtree(run_dir, ignore_errors=True)
            run_dir.mkdir(parents=True)
            log = open(run_dir.parent / f"seed{seed}.log", "w")
            running[(arm, seed)] = (subprocess.Popen(command(arm, seed, run_dir, args), env=env, stdout=log,
                                                     stderr=subprocess.STDOUT), time.time())
        for key, (proc, t0) in list(running.items()):
            if proc.poll() is not None:
                codes[key] = proc.returncode
                print(f"p_study {key[0]} seed {key[1]}: exit {proc.returncode} after {(time.time() - t0) / 60:.1f} min",
                      flush=True)
                del running[key]
        time.sleep(5)
    return codes


def mean_ci(values: list[float]) -> str:
    if not values:
        return "n/a"
    m = statistics.mean(values)
    if len(values) < 2:
        return f"{m:.3f} (n=1)"
    half = T95.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))
    return f"{m:.3f} [95% {m - half:.3f}, {m + half:.3f}] (n={len(values)})"


def report(arms: list[str], seeds: list[int], args) -> None:
    rows = []
    for arm in arms:
        for seed in seeds:
            for m in read_metrics(args.out / arm / f"seed{seed}"):
                rows.append({"arm": arm, "seed": seed, "step": m["step"], "p": m.get("loss/p"),
                             "train_success": m.get("rollout/success_rate"), "eval_success": m.get("eval/success_rate"),
                             "ess": m.get("loss/token_weight_ess"), "clip_frac": m.get("loss/clip_frac"),
                             "grad_norm": m.get("loss/grad_norm")})
    with open(args.out / "study.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["arm"])
        w.writeheader()
        w.writerows(rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    for arm in arms:
        mine = [r for r in rows if r["arm"] == arm]
        steps = sorted({r["step"] for r in mine if r["eval_success"] is not None})
        ev = [statistics.mean(r["eval_success"] for r in mine if r["step"] == s and r["eval_success"] is not None)
              for s in steps]
        ax.plot(steps, ev, "o-", label=arm)
        psteps = sorted({r["step"] for r in mine if r["p"] is not None})
        bx.plot(psteps, [statistics.mean(r["p"] for r in mine if r["step"] == s and r["p"] is not None) for s in psteps],
                label=arm)
    ax.set_xlabel("training step")
    ax.set_ylabel(f"greedy eval success (mean of {len(seeds)} seeds)")
    bx.set_xlabel("training step")
    bx.set_ylabel("p (mean over seeds)")
    ax.legend(fontsize=7)
    ax.set_title("p schedules, SmolLM2-135M, generated math (CPU)")
    fig.tight_layout()
    fig.savefig(args.out / "study.png", dpi=120)
    for arm in arms:
        mine = [r for r in rows if r["arm"] == arm]
        finals, mids = [], []
        for seed in seeds:
            ev = [(r["step"], r["eval_success"]) for r in mine if r["seed"] == seed and r["eval_success"] is not None]
            if ev:
                finals.append(max(ev)[1])
                mids.append(statistics.mean(v for _, v in ev))
        print(f"p_study {arm}: final eval {mean_ci(finals)}; mean over evals {mean_ci(mids)}", flush=True)
        raw = [m for seed in seeds for m in read_metrics(args.out / arm / f"seed{seed}")]
        for entry in signals_per_p(raw):
            print(f"p_study {arm}:   {format_signals(entry)}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arms", default="linear_2_-2,linear_2_0,constant_1,adaptive",
                    help=f"comma-separated, from {', '.join(ARMS)}")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--eval-episodes", type=int, default=64)
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--parallel", type=int, default=2, help="runs at a time, one CPU thread each")
    ap.add_argument("--out", type=Path, default=Path("bench_out/p_schedule_study"))
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("extra", nargs="*", help="more Hydra overrides for every run")
    args = ap.parse_args()
    arms = args.arms.split(",")
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise SystemExit(f"unknown arm(s) {unknown}; choose from {', '.join(ARMS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if not args.report_only:
        # seed-major order: with a time limit, every arm has its first seeds before any has its last
        run_all([(arm, seed) for seed in seeds for arm in arms], args)
    report(arms, seeds, args)
    print(f"p_study wall time {(time.time() - t0) / 60:.1f} min; wrote {args.out / 'study.csv'} and "
          f"{args.out / 'study.png'}", flush=True)


if __name__ == "__main__":
    main()
