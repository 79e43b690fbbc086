"""Learning curve: the embedded SmolLM2-135M-Instruct learns easy generated math on CPU.

Runs ``python -m agent_rl.train preset=learning_curve`` twice side by side, once with the
Hölder loss (p linear 2 → −2) and once with ``algo=grpo``, one CPU core each, then writes
``curve.csv`` (step, algo, training success rate, greedy eval success rate) and ``curve.png``
into ``--out``, and prints the numbers. Whatever they are: this is a measurement, not a test.

    python bench/learning_curve.py [--steps 30] [--out bench_out/learning_curve]   # ~20 min on 2 cores
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

from trainers.tracking import read_metrics


def launch(algo: str, out: Path, args) -> subprocess.Popen:
    run_dir = out / algo
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", WANDB_MODE="offline", HF_HUB_OFFLINE="1")
    # rollout=hf: one CPU core per run, no vLLM engine beside each (as measured; extra overrides win)
    cmd = [sys.executable, "-m", "agent_rl.train", "preset=learning_curve", "rollout=hf", f"algo={algo}",
           f"train.steps={args.steps}", f"train.run_dir={run_dir}", f"train.eval_every={args.eval_every}",
           f"train.eval_episodes={args.eval_episodes}", "train.eval_at_start=true", f"rollout.tasks_per_step={args.tasks}",
           f"rollout.group_size={args.group}", f"train.lr={args.lr}", "train.resume=false",
           f"hydra.run.dir={run_dir}/hydra", "train.progress=true", *args.extra]
    log = open(out / f"{algo}.log", "w")
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--eval-every", type=int, default=5)
    ap.add_argument("--eval-episodes", type=int, default=64)
    ap.add_argument("--out", type=Path, default=Path("bench_out/learning_curve"))
    ap.add_argument("--report-only", action="store_true", help="rewrite CSV/PNG/summary from finished runs in --out")
    ap.add_argument("extra", nargs="*", help="more Hydra overrides for both runs")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if args.report_only:
        procs, codes = {"holder": None, "grpo": None}, {"holder": "n/a", "grpo": "n/a"}
    else:
        for algo in ("holder", "grpo"):  # a fresh run each time (train.resume=false refuses a used run_dir)
            import shutil

            shutil.rmtree(args.out / algo, ignore_errors=True)
        procs = {algo: launch(algo, args.out, args) for algo in ("holder", "grpo")}
        codes = {algo: p.wait() for algo, p in procs.items()}
    minutes = (time.time() - t0) / 60
    rows = []
    for algo in procs:
        for m in read_metrics(args.out / algo):
            rows.append({"step": m["step"], "algo": algo, "train_success": m.get("rollout/success_rate"),
                         "eval_success": m.get("eval/success_rate"), "p": m.get("loss/p")})
    with open(args.out / "curve.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["step", "algo", "train_success", "eval_success", "p"])
        w.writeheader()
        w.writerows(rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for algo, color in (("holder", "tab:blue"), ("grpo", "tab:orange")):
        r = [x for x in rows if x["algo"] == algo]
        ax.plot([x["step"] for x in r], [x["train_success"] for x in r], color=color, alpha=0.5, label=f"{algo} train (T=1)")
        e = [x for x in r if x["eval_success"] is not None]
        ax.plot([x["step"] for x in e], [x["eval_success"] for x in e], "o-", color=color, label=f"{algo} eval (greedy)")
    ax.set_xlabel("training step")
    ax.set_ylabel("success rate")
    ax.set_title("SmolLM2-135M-Instruct on generated math level 1 (CPU)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "curve.png", dpi=120)
    for algo in procs:
        r = [x for x in rows if x["algo"] == algo]
        train = [x["train_success"] for x in r if x["train_success"] is not None]
        ev = [(x["step"], x["eval_success"]) for x in r if x["eval_success"] is not None]
        print(f"learning_curve {algo}: exit {codes[algo]}, train success per step {[round(v, 3) for v in train]}, "
              f"greedy eval {ev}")
    print(f"learning_curve wall time {minutes:.1f} min; wrote {args.out / 'curve.csv'} and {args.out / 'curve.png'}")


if __name__ == "__main__":
    main()
