"""The p schedule, from evidence: Hölder-loss runs with different p schedules × seeds, on the math curve or on
the ALFWorld curve.

Math (the default): each arm is ``python -m agent_rl.train preset=learning_curve`` (embedded SmolLM2-135M-Instruct,
generated level-1 math) with the overrides in ARMS; every seed changes the training tasks and sampling, not the eval
problems (fixed by the preset). ALFWorld (``--sft-run DIR``): each arm is the RL stage of ``python -m agent_rl.curve
--sft-run DIR --algos holder+<arm>`` (grpo: ``--algos grpo``) with ``--curve-args`` (source, games, eval size, lr,
...), all arms of a seed in one curve folder ``<out>/seed<k>``, so the curve's own table compares them per game; its
final eval is the stage's eval. One CPU core per run, ``--parallel`` runs at a time. Writes ``study.csv`` (one row
per run and step), ``study.png`` (greedy eval success per arm, mean over seeds) and prints per arm: final eval
success (mean, 95% t-interval over seeds), and token-weight ESS, clip fraction and gradient norm per p bucket.
A measurement, not a test.

    python bench/p_schedule_study.py --arms linear_2_-2,linear_2_0,constant_1,adaptive --seeds 0,1,2
    python bench/p_schedule_study.py --sft-run <sft run> --arms linear_2_-2,linear_2_0 --seeds 0 --tasks 4 --group 4 \
        --curve-args "--source generated --difficulty easy --generated-games 96 --episodes 48 --max-steps 20 \
        --max-new-tokens 24 --rl-lr 1e-5" model.freeze_layers=20
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shlex
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


# agent_rl.curve flags the study sets for each run (refused in --curve-args)
STUDY_FLAGS = {"--sft-run", "--algos", "--seed", "--rl-steps", "--tasks", "--group", "--threads", "--out",
               "--skip-untrained", "--skip-sft-eval", "--report-only"}


def curve_entry(arm: str) -> str:
    """The curve's ``--algos`` entry of an arm: holder with the arm's p schedule (the default one: plain holder)."""
    return arm if arm == "grpo" else "holder" if not P_SCHEDULES[arm] else f"holder+{arm}"


def curve_command(arm: str, seed: int, args) -> list[str]:
    # the SFT stage is --sft-run's and evaluated by the curve that trained it: each run here is one RL stage + its eval
    return [sys.executable, "-m", "agent_rl.curve", "--sft-run", str(args.sft_run), "--skip-untrained",
            "--skip-sft-eval", "--algos", curve_entry(arm), "--seed", str(seed), "--rl-steps", str(args.steps),
            "--tasks", str(args.tasks), "--group", str(args.group), "--threads", "1", "--out",
            str(args.out / f"seed{seed}"), *shlex.split(args.curve_args), *args.extra]


def check_curve_runs(arms: list[str], seeds: list[int], args) -> None:
    """ALFWorld: the SFT run exists and every curve command parses, before the first (long) run starts."""
    from agent_rl.curve import algo_overrides, build_parser, check_sft_demos, check_task_types, rl_overrides
    from agent_rl.train import compose_config
    from agent_rl.validation import validate
    from trainers.checkpoint import latest_checkpoint

    if not args.sft_run.is_dir() or latest_checkpoint(args.sft_run, weights_only=True) is None:
        raise SystemExit(f"--sft-run {args.sft_run}: no checkpoint there; give a finished agent_rl.sft run (the "
                         "folder its train.run_dir named, or the curve's <out>/sft)")
    own = {flag.split("=", 1)[0] for flag in shlex.split(args.curve_args)} & STUDY_FLAGS
    if own:  # argparse keeps the last value: one there would quietly replace the study's (every seed the same...)
        raise SystemExit(f"--curve-args {args.curve_args!r}: {', '.join(sorted(own))} set by the study for each run; "
                         "use its --arms, --seeds, --steps, --tasks, --group, --out and --sft-run instead")
    for arm in arms:
        algo_overrides(curve_entry(arm))
        try:
            curve_args = build_parser().parse_args(curve_command(arm, seeds[0], args)[3:])
        except SystemExit as exc:  # argparse has printed what it could not parse
            raise SystemExit(f"--curve-args {args.curve_args!r}: agent_rl.curve refused them (above)") from exc
        check_task_types(curve_args)
        check_sft_demos(curve_args)
        try:  # the RL stage's config, with the Hydra extras, composed and validated as the curve's run will
            overrides = rl_overrides(curve_args.algos, args.sft_run, curve_args, args.out / "check")
            validate(compose_config([o for o in overrides if not o.startswith("hydra.")]))
        except Exception as exc:
            raise SystemExit(f"arm {arm}: its RL stage's config is invalid: {exc}") from exc


def run_dir_of(arm: str, seed: int, args) -> Path:
    return args.out / f"seed{seed}" / f"rl-{curve_entry(arm)}" if args.sft_run else args.out / arm / f"seed{seed}"


def metrics_of(arm: str, seed: int, args) -> list[dict]:
    """A run's training rows; on ALFWorld with its stage's final eval as one more row (the curve evaluates
    after the last step, outside the run's metrics). A run that failed in this invocation has none (what its
    folder holds may be an earlier run's)."""
    if (arm, seed) in args.failed:
        return []
    rows = read_metrics(run_dir_of(arm, seed, args))
    results = args.out / f"seed{seed}" / f"eval_rl-{curve_entry(arm)}" / "results.json"
    if args.sft_run and results.is_file() and rows:
        rows.append({"step": max(r["step"] for r in rows if "step" in r),
                     "eval/success_rate": json.loads(results.read_text())["success_rate"]})
    return rows


def run_all(jobs: list[tuple[str, int]], args) -> dict[tuple[str, int], int]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", WANDB_MODE="offline", HF_HUB_OFFLINE="1")
    waiting, running, codes = list(jobs), {}, {}
    while waiting or running:
        while waiting and len(running) < args.parallel:
            arm, seed = waiting.pop(0)
            if args.sft_run:  # the curve resumes a stopped stage and reuses a finished one (after its checks)
                (args.out / f"seed{seed}").mkdir(parents=True, exist_ok=True)
                cmd, log = curve_command(arm, seed, args), args.out / f"seed{seed}" / f"study_{arm}.log"
            else:
                run_dir = args.out / arm / f"seed{seed}"
                shutil.rmtree(run_dir, ignore_errors=True)
                run_dir.mkdir(parents=True)
                cmd, log = command(arm, seed, run_dir, args), run_dir.parent / f"seed{seed}.log"
            running[(arm, seed)] = (subprocess.Popen(cmd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT),
                                    time.time())
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
    rows, raw = [], {arm: [] for arm in arms}  # raw: each arm's metrics rows, read once, for the signals per p
    for arm in arms:
        for seed in seeds:
            metrics = metrics_of(arm, seed, args)
            raw[arm] += metrics
            for m in metrics:
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
    ax.set_title(f"p schedules, SmolLM2-135M, {'ALFWorld' if args.sft_run else 'generated math'} (CPU)")
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
        for entry in signals_per_p(raw[arm]):
            print(f"p_study {arm}:   {format_signals(entry)}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arms", default="linear_2_-2,linear_2_0,constant_1,adaptive",
                    help=f"comma-separated, from {', '.join(ARMS)}")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--eval-every", type=int, default=10, help="math: greedy eval every N steps")
    ap.add_argument("--eval-episodes", type=int, default=64, help="math: problems per eval")
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--parallel", type=int, default=2, help="runs at a time, one CPU thread each")
    ap.add_argument("--out", type=Path, default=Path("bench_out/p_schedule_study"))
    ap.add_argument("--sft-run", type=Path, help="ALFWorld: the SFT run every arm starts from (its RL stage of "
                    "agent_rl.curve); without it, the math curve")
    ap.add_argument("--curve-args", default="", help="ALFWorld: more agent_rl.curve flags, one string (--source, "
                    "--episodes, --max-steps, --rl-lr, ...; one flag alone: --curve-args=--fresh)")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("extra", nargs="*", help="more Hydra overrides for every run")
    args = ap.parse_args()
    arms = args.arms.split(",")
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise SystemExit(f"unknown arm(s) {unknown}; choose from {', '.join(ARMS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.sft_run and not args.report_only:
        check_curve_runs(arms, seeds, args)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    args.failed = set()
    if not args.report_only:
        # seed-major order: with a time limit, every arm has its first seeds before any has its last
        codes = run_all([(arm, seed) for seed in seeds for arm in arms], args)
        args.failed = {key for key, code in codes.items() if code != 0}
        for arm, seed in sorted(args.failed):
            print(f"p_study {arm} seed {seed}: failed (exit {codes[(arm, seed)]}), left out of the report; see its log",
                  flush=True)
        if args.sft_run:  # each seed's curve table, once all its arms are in (their runs each wrote one as they ended)
            for seed in seeds:
                subprocess.call([sys.executable, "-m", "agent_rl.curve", "--report-only", "--sft-run",
                                 str(args.sft_run), "--out", str(args.out / f"seed{seed}"),
                                 *shlex.split(args.curve_args)])
    report(arms, seeds, args)
    print(f"p_study wall time {(time.time() - t0) / 60:.1f} min; wrote {args.out / 'study.csv'} and "
          f"{args.out / 'study.png'}", flush=True)


if __name__ == "__main__":
    main()
