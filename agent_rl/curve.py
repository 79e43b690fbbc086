"""``python -m agent_rl.curve``: untrained → SFT warm start → RL (holder and grpo side by side), each stage
measured on the same held-out games — the whole pipeline, end to end (it runs every stage of the data flow).

    python -m agent_rl.curve                                  # release games (bench/alfworld_curve.py's defaults)
    python -m agent_rl.curve --sft-run runs/sft_main          # reuse a finished SFT run
    python -m agent_rl.curve --report-only --out DIR          # CSV/PNG/table from finished stages in DIR
    python -m agent_rl.curve --source generated ...           # generated households (make demo: no download)

Stages, each a README command run as a subprocess (so this measures exactly what users run):
1. ``untrained``: ``python -m agent_rl.eval`` of the embedded SmolLM2-135M-Instruct.
2. ``sft``: ``python -m agent_rl.sft env=alfworld rollout.template=alfworld_act`` on release *train* games
   (searching-expert demonstrations, or the JSONL files of ``--sft-demos``), then its eval.
3. ``rl-<algo>``: ``python -m agent_rl.train model.name=<sft run> algo=<algo>`` for ``--rl-steps`` steps on
   train games, same seeds and tasks for every algo, then its eval. An ``--algos`` entry may add ``+gigpo``
   (GiGPO step-level advantages, per-turn rows), ``+ds`` (dynamic sampling) and, for holder, a p schedule of
   ``P_SCHEDULES`` (``+constant_1``, ``+linear_2_0``, ...): ``holder,grpo+gigpo,holder+gigpo+ds,holder+constant_1``.

Every eval: ``--episodes`` valid_unseen games (the stratified subset of ``agent_rl.eval``: every task
type, the same games each stage), one greedy episode each, all in flight at once (one generation batch per turn), ``--max-steps`` steps, the alfworld_act
template; ``--constrain-actions``: every stage's replies restricted to the admissible actions (its own
output folder). ``--source generated`` trains on generated train households and evaluates on generated
valid_unseen ones (other households: the generator seeds each split apart). Writes ``curve.csv`` (stage × task type, success with Wilson 95% intervals) and ``curve.png``
to ``--out`` and prints them, with a per-game comparison of the stages (games one wins and the other loses,
exact McNemar p). A measurement, not a test: the numbers are whatever they are.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from envs.alfworld.households import DIFFICULTIES
from eval.curve_report import report, table

ROOT = Path(__file__).resolve().parents[1]


def env_overrides(args) -> list[str]:
    """Hydra overrides that pick the ALFWorld game source for sft and train."""
    if args.source == "generated":
        kwargs = f"num_games:{args.generated_games},difficulty:{args.difficulty}"
        if task_types(args):
            kwargs += f",task_types:[{','.join(task_types(args))}]"
        return ["+env.kwargs.source=generated", f"+env.kwargs.generate_kwargs={{{kwargs}}}"]
    return []


def task_types(args) -> list[str]:
    """``--task-types`` as a list; [] = all six (the generator's default, so its cached sets are reused)."""
    return [t for t in args.task_types.split(",") if t]


def eval_env_kwargs(args) -> list[str]:
    if args.source == "generated":
        kwargs = {"num_games": args.episodes, "difficulty": args.difficulty}
        if task_types(args):
            kwargs["task_types"] = task_types(args)
        return ["--env-kwargs", json.dumps({"source": "generated", "generate_kwargs": kwargs})]
    return []


def run(cmd: list[str], log: Path, threads: int) -> None:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), WANDB_MODE="offline", HF_HUB_OFFLINE="1")
    t0 = time.time()
    with open(log, "w") as f:
        code = subprocess.call(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    print(f"[curve] {' '.join(cmd[2:5])}... exit {code} in {(time.time() - t0) / 60:.1f} min (log {log})", flush=True)
    if code != 0:
        raise SystemExit(f"stage failed: {' '.join(cmd)}; see {log}")


def evaluate(stage: str, model_args: list[str], args) -> None:
    out = args.out / f"eval_{stage}"
    if (out / "results.json").is_file() and not args.fresh:
        return  # finished before (an interrupted eval resumes from its episodes.jsonl)
    run([sys.executable, "-m", "agent_rl.eval", *model_args, "--split", "valid_unseen", "--episodes", str(args.episodes),
         "--max-steps", str(args.max_steps), "--max-new-tokens", str(args.max_new_tokens), "--template", "alfworld_act",
         "--backend", args.backend, "--workers", "2", "--concurrency", str(args.episodes), *eval_env_kwargs(args),
         *(["--constrain-actions"] if args.constrain_actions else []), "--out", str(out), "--no-progress", "--no-plot"],
        args.out / f"eval_{stage}.log", args.threads)


def check_task_types(args) -> None:
    """``--task-types``: known, distinct names, and only where the games are generated (before any stage runs)."""
    from envs.alfworld.generate import check_task_types as check_names

    wanted = task_types(args)
    if wanted and args.source != "generated":
        raise SystemExit(f"--task-types {args.task_types} needs --source generated: it chooses which households are "
                         f"generated (the release splits are fixed). Fix: add --source generated, or drop --task-types")
    if wanted:
        try:
            check_names(wanted)
        except ValueError as exc:
            raise SystemExit(f"--task-types: {exc}") from None


def sft_overrides(args, run_dir: Path) -> list[str]:
    """The ``agent_rl.sft`` overrides of the SFT stage."""
    return ["env=alfworld", "rollout.template=alfworld_act", "env.num_workers=2", f"sft.games={args.sft_games}",
            "sft.heldout_games=5", f"sft.epochs={args.sft_epochs}", f"sft.batch_size={args.sft_batch}",
            "sft.warmup_steps=5", f"model.freeze_layers={args.sft_freeze}",
            f"sft.lr={args.sft_lr}", f"sft.time_budget_s={args.sft_budget_s}", "train.bf16=true",
            f"train.run_dir={run_dir}", f"train.seed={args.seed}", "logging.wandb=false", "train.progress=false",
            f"hydra.run.dir={run_dir}/hydra", *env_overrides(args),
            *([f"sft.demos=[{','.join(hydra_quoted(str(p)) for p in args.sft_demos)}]"] if args.sft_demos else [])]


def hydra_quoted(value: str) -> str:
    """``value`` as a single-quoted Hydra override string, so a path with a comma, ``=``, brackets or ``${``
    stays one literal string (unquoted, a comma splits a list item in two and ``${...}`` is interpolated)."""
    # a run of backslashes is literal text except right before a quote, the closing quote or ``${`` (Hydra's and
    # OmegaConf's escapes), where each one must be doubled to stay itself
    value = re.sub(r"(\\+)(?='|\$\{|$)", lambda m: m.group(1) * 2, value)
    return "'" + value.replace("'", "\\'").replace("${", "\\${") + "'"


def check_sft_demos(args) -> None:
    """--sft-demos: every line of every file is read and checked (trainers.demonstrations.read_jsonl) before
    the first (long) stage, and demonstrations of the games the curve evaluates on are refused (an SFT stage
    already in ``--out`` is reused only if it was trained on the same files: check_reused_stages)."""
    from trainers.demonstrations import DemonstrationFileError, read_jsonl

    if not args.sft_demos:
        return
    if args.sft_run:
        raise SystemExit(f"--sft-demos ({len(args.sft_demos)} file(s)) trains the SFT stage, --sft-run "
                         f"{args.sft_run} skips it: give one of the two")
    try:
        demos = read_jsonl(args.sft_demos)  # as strictly as the SFT stage will
    except DemonstrationFileError as exc:
        raise SystemExit(f"--sft-demos: {exc}") from None
    evaluated = [d for d in demos if d.stamp.get("split") == "valid_unseen"]
    if evaluated:
        raise SystemExit(f"--sft-demos: {len(evaluated)} of {len(demos)} demonstrations were played on valid_unseen "
                         f"games (e.g. {evaluated[0].game_id!r}), the games every stage is evaluated on: training on "
                         f"them would measure memory, not skill. Fix: demonstrations of train games")
    args.sft_demos = [p.resolve() for p in args.sft_demos]


# What an SFT stage is compared on when reused: what it plays, renders and trains (not RL's loss or learner).
SFT_KEYS = ("sft.", "env.", "model.", "rollout.", "train.seed", "train.bf16")


def stage_changes(run_dir: Path, overrides: list[str], keep: tuple[str, ...] | None = None) -> tuple[list[str], Path]:
    """How the newest checkpoint in ``run_dir`` (a stage finished before, or stopped part-way) was configured
    otherwise than ``overrides`` configure that stage now: ``"key: there, now"`` for each key that
    agent_rl.config.resume_changes reports (run dirs, logging and speed-only settings aside), only keys
    starting with one of ``keep`` when given; and the config.yaml compared. [] when ``run_dir`` holds no
    usable checkpoint."""
    import yaml
    from omegaconf import OmegaConf

    from agent_rl.config import flatten, resume_changes
    from agent_rl.train import compose_config
    from trainers.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(run_dir, weights_only=True)
    if ckpt is None:
        return [], run_dir
    path = ckpt / "config.yaml"
    try:
        saved = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        return [f"its config cannot be read ({exc})"], path
    try:
        current = OmegaConf.to_container(OmegaConf.structured(
            compose_config([o for o in overrides if not o.startswith("hydra.")])))
    except Exception as exc:  # Hydra's override and config errors have no common base
        raise SystemExit(f"the overrides of stage {run_dir.name} do not compose ({type(exc).__name__}: {exc}). Fix: "
                         f"the extra overrides (or --algos entry) this curve was given") from None
    was, now = flatten(saved), flatten(current)
    return [f"{k}: {was.get(k)!r} there, {now[k]!r} now" for k in resume_changes(saved, current)
            if keep is None or k.startswith(keep)], path


def _listed(problems: list[str], most: int = 6) -> str:
    more = f"; and {len(problems) - most} more" if len(problems) > most else ""
    return "; ".join(problems[:most]) + more


def sft_dir(args) -> Path:
    """The SFT run the RL stages start from: ``--sft-run``, or the curve's own SFT stage."""
    return args.sft_run.resolve() if args.sft_run else args.out / "sft"


def check_reused_stages(args, algos: list[str]) -> None:
    """A training stage already in ``--out`` (finished, or stopped part-way) is reused or resumed (sft(),
    rl()): refuse that, before any stage runs, when it was configured otherwise than this curve configures it
    (other demonstrations, games, seed, learning rate, SFT run, algo...), so a curve never reports one model
    under another's settings."""
    stages = [] if args.sft_run else [("sft", sft_overrides(args, args.out / "sft"), SFT_KEYS)]
    stages += [(f"rl-{a}", rl_overrides(a, sft_dir(args), args, args.out / f"rl-{a}"), None) for a in algos]
    for name, overrides, keep in stages:
        changed, path = stage_changes(args.out / name, overrides, keep)
        if changed:
            hint = ("; a stage trained before the dual clip existed had none: add algo.clip_ratio_c=null to reuse it"
                    if any(c.startswith("algo.clip_ratio_c: None there") for c in changed) else "")
            raise SystemExit(f"{args.out / name} holds a stage configured otherwise than this curve configures it "
                             f"({_listed(changed)}; saved in {path}); reusing it would report that model as this "
                             f"curve's. Fix: a new --out, this curve's arguments as that run had them, or delete "
                             f"{args.out / name} to train that stage again{hint}")


def eval_problems(results_path: Path, args, model_dir: Path | None, trains_on: str | None) -> list[str]:
    """How the eval whose results are at ``results_path`` differs from the one this curve would run for its
    stage: episodes, step limit, reply budget, action constraint, games (release, or which generated
    households), and the checkpoint (the newest in ``model_dir``, when the stage has one)."""
    from trainers.checkpoint import latest_checkpoint

    try:
        r = json.loads(results_path.read_text())
        config = json.loads((results_path.parent / "eval_config.json").read_text())
    except (OSError, ValueError) as exc:
        return [f"its results cannot be read ({exc})"]
    flags = eval_env_kwargs(args)  # [] or ["--env-kwargs", JSON]
    expected_env = json.loads(flags[1]) if flags else {}
    env = {k: v for k, v in (config.get("env_kwargs") or {}).items() if k in ("source", "generate_kwargs")}
    wanted = {"episodes": (r.get("episodes"), args.episodes), "max_steps": (r.get("max_steps"), args.max_steps),
              "max_new_tokens": (config.get("max_new_tokens"), args.max_new_tokens),
              "constrain_actions": ((config.get("rollout") or {}).get("constrain_actions", False),
                                    bool(args.constrain_actions)),
              "games": (env or "release", expected_env or "release")}
    problems = [f"{k} {there!r} there, {now!r} now" for k, (there, now) in wanted.items() if there != now]
    if model_dir is not None:
        ckpt = latest_checkpoint(model_dir, weights_only=True)
        now = "no checkpoint" if ckpt is None else str(ckpt.resolve())
        there = str(Path(r["model"]).resolve()) if r.get("model") else None
        if there != now:
            problems.append(f"model {r.get('model')!r} there, {now!r} now")
    if trains_on:
        problems.append(trains_on)
    return problems


def check_reused_evals(args, algos: list[str]) -> None:
    """An eval stage with a results.json in ``--out`` is reused (evaluate()) and reported (table()): refuse
    that, before any stage runs, when it is not the eval this curve would run: another checkpoint than its
    stage holds (another --sft-run; an RL stage that will train on for more --rl-steps), another episode
    count, step limit, reply budget, action constraint or game set."""
    for path in sorted(args.out.glob("eval_*/results.json")):
        stage = path.parent.name[len("eval_"):]
        model_dir = sft_dir(args) if stage == "sft" else args.out / stage if stage.startswith("rl-") else None
        trains_on = None
        if stage.startswith("rl-") and stage[len("rl-"):] in algos:
            held = finished_steps(model_dir)
            if held < args.rl_steps:
                trains_on = (f"the stage trains on to step {args.rl_steps} (it holds {held}), so this eval would "
                             f"be reported for a model it did not score")
        problems = eval_problems(path, args, model_dir, trains_on)
        if problems:
            raise SystemExit(f"{path.parent} holds an eval of stage {stage!r} that this curve would not run "
                             f"({_listed(problems)}); reporting it would label another model or protocol as this "
                             f"curve's. Fix: a new --out, or delete {path.parent} to evaluate that stage again")


def sft(args) -> Path:
    from trainers.checkpoint import latest_checkpoint

    run_dir = args.out / "sft"
    if latest_checkpoint(run_dir, weights_only=True) is not None:  # checked by check_reused_stages
        return run_dir
    run([sys.executable, "-m", "agent_rl.sft", *sft_overrides(args, run_dir)], args.out / "sft.log", args.threads)
    return run_dir


# ``--algos`` entries are an algo preset with optional ``+modifier`` suffixes (stage ``rl-holder+gigpo+ds``).
MODIFIERS: dict[str, list[str]] = {
    # GiGPO step-level advantages (anchor states) beside the episode's: one advantage per turn, so per-turn rows
    # (grpo+gigpo is the GiGPO paper's algorithm, the algo=gigpo preset)
    "gigpo": ["algo.advantage=gigpo", "algo.ratio_unit=turn"],
    "ds": ["algo.dynamic_sampling=true"],  # dynamic sampling: groups with equal rewards replaced by new ones
}
# p schedules of the Hölder loss (``holder+constant_1``): the arms of bench/p_schedule_study.py, which runs them
# on the math curve and, as these stages, on this one
P_SCHEDULES: dict[str, list[str]] = {
    "linear_2_-2": [],  # the default: p linear 2 → −2 over the run
    "linear_2_0": ["algo.p_end=0"],
    "linear_2_1": ["algo.p_end=1"],
    "linear_2_1.4": ["algo.p_end=1.4"],  # the authors' script: linear over 1,000 steps stops near 1.4 at step 150
    "cosine_2_-2": ["algo.p_schedule=cosine"],
    "constant_1": ["algo.p_schedule=constant", "algo.p_start=1"],
    "adaptive": ["algo.p_schedule=adaptive"],
}


def algo_overrides(entry: str) -> list[str]:
    """``holder+gigpo+ds`` → ``["algo=holder", "algo.advantage=gigpo", "algo.dynamic_sampling=true"]``."""
    import difflib

    algo, *mods = entry.split("+")
    out = [f"algo={algo}"]
    known = {**MODIFIERS, **P_SCHEDULES}
    for mod in mods:
        if mod not in known:
            close = difflib.get_close_matches(mod, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SystemExit(f"--algos {entry!r}: unknown modifier {mod!r}{hint}; modifiers are "
                             f"{', '.join(MODIFIERS)} and the p schedules {', '.join(P_SCHEDULES)} "
                             "(e.g. holder+gigpo+ds, holder+constant_1)")
        out += known[mod]
    schedules = [m for m in mods if m in P_SCHEDULES]
    # the other presets fix p with their loss (grpo: p = 1 with token clipping; gspo/gmpo: p → 0)
    if schedules and algo != "holder":
        raise SystemExit(f"--algos {entry!r}: a p schedule ({schedules[0]}) needs the Hölder loss, whose p it "
                         f"anneals; {algo} fixes p. Use holder+{schedules[0]}")
    if len(schedules) > 1:
        raise SystemExit(f"--algos {entry!r}: one p schedule per stage, got {', '.join(schedules)}")
    return out


def rl_overrides(algo: str, sft_run: Path, args, run_dir: Path) -> list[str]:
    """The ``agent_rl.train`` overrides of one RL stage (``algo``: an ``--algos`` entry): the same tasks and
    seeds for every algo; two minibatches per rollout batch, so the second update is off-policy and p shapes it
    (on-policy, every p and GRPO give the same gradient)."""
    return ["env=alfworld", *algo_overrides(algo), f"model.name={sft_run}", "rollout.template=alfworld_act",
            f"rollout.backend={args.backend}", "env.num_workers=2", f"rollout.tasks_per_step={args.tasks}",
            f"rollout.group_size={args.group}", f"rollout.max_turns={args.max_steps}", "algo.num_minibatches=2",
            f"rollout.max_new_tokens={args.max_new_tokens}", f"train.steps={args.rl_steps}", f"train.lr={args.rl_lr}",
            "train.bf16=true", "train.eval_every=0", f"train.seed={args.seed}", f"train.run_dir={run_dir}",
            "logging.wandb=false", "train.progress=false", f"hydra.run.dir={run_dir}/hydra", *env_overrides(args),
            f"rollout.constrain_actions={str(args.constrain_actions).lower()}", *args.extra]


def finished_steps(run_dir: Path) -> int:
    """Training steps the newest checkpoint of ``run_dir`` holds (0: none yet)."""
    from trainers.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(run_dir, weights_only=True)
    return 0 if ckpt is None else int(json.loads((ckpt / "trainer_state.json").read_text())["step"])


def rl(algo: str, sft_run: Path, args) -> Path:
    run_dir = args.out / f"rl-{algo}"
    if finished_steps(run_dir) >= args.rl_steps and not args.fresh:
        return run_dir
    # a run stopped part-way (killed, out of time) is run again and resumes from its newest checkpoint
    # (train.resume=auto), instead of its partial model being evaluated as if it were the stage's
    run([sys.executable, "-m", "agent_rl.train", *rl_overrides(algo, sft_run, args, run_dir)],
        args.out / f"rl-{algo}.log", args.threads)
    return run_dir


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m agent_rl.curve", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="output folder (default bench_out/alfworld_curve, "
                    "bench_out/alfworld_curve_constrained with --constrain-actions)")
    ap.add_argument("--source", choices=("release", "generated"), default="release",
                    help="release games (train for SFT/RL, valid_unseen for eval) or generated households")
    ap.add_argument("--generated-games", type=int, default=200, help="generated train households (--source generated)")
    ap.add_argument("--task-types", default="", help="generated households of these task types only (comma "
                    "list, e.g. pick_and_place_simple,look_at_obj_in_light; --source generated); default: all six")
    ap.add_argument("--difficulty", choices=sorted(DIFFICULTIES), default="medium",
                    help="generated households' size (--source generated): easy has <= 10 receptacles and no hidden "
                         "targets, medium matches the release's scenes")
    ap.add_argument("--episodes", type=int, default=36, help="valid_unseen games per eval (stratified, >= 36)")
    ap.add_argument("--max-steps", type=int, default=40)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sft-run", type=Path, help="a finished agent_rl.sft run dir to use instead of training one")
    ap.add_argument("--sft-demos", type=Path, action="append", default=[],
                    help="train the SFT stage on this demonstration JSONL file (sft.demos; repeat the option for "
                         "more) instead of playing the expert on --sft-games games, e.g. an earlier run's "
                         "<sft run>/demos/round_0.jsonl; all its turns are trained on (no held-out games)")
    ap.add_argument("--sft-games", type=int, default=90)
    ap.add_argument("--sft-epochs", type=float, default=1.0)
    ap.add_argument("--sft-lr", type=float, default=1e-4)
    ap.add_argument("--sft-batch", type=int, default=16, help="demonstration turns per SFT optimizer step")
    ap.add_argument("--sft-budget-s", type=float, default=1800)
    ap.add_argument("--sft-freeze", type=int, default=0,
                    help="bottom decoder layers (and embeddings) SFT keeps fixed (model.freeze_layers); RL trains all")
    ap.add_argument("--algos", default="holder,grpo",
                    help="RL stages: algo presets, each with optional +gigpo (GiGPO advantages) and +ds (dynamic "
                         "sampling), holder also with a p schedule (+constant_1, +linear_2_0, ...), e.g. "
                         "holder,grpo,holder+gigpo,grpo+gigpo+ds,holder+constant_1")
    ap.add_argument("--rl-steps", type=int, default=4)
    ap.add_argument("--rl-lr", type=float, default=1e-5)
    ap.add_argument("--tasks", type=int, default=2)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--constrain-actions", action="store_true",
                    help="every stage's replies restricted to the admissible actions (rollout.constrain_actions=true "
                    "for RL, eval --constrain-actions); SFT is unchanged (it trains on the demonstrations' replies)")
    ap.add_argument("--skip-untrained", action="store_true")
    ap.add_argument("--skip-sft-eval", action="store_true", help="evaluate untrained and RL only (make demo)")
    ap.add_argument("--fresh", action="store_true", help="rerun stages whose results exist")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("extra", nargs="*", help="more Hydra overrides for the RL runs")
    return ap


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    algos = [a for a in args.algos.split(",") if a]
    for algo in algos:
        algo_overrides(algo)  # every entry checked before the first (long) stage
    check_task_types(args)
    check_sft_demos(args)
    if args.out is None:
        args.out = Path("bench_out/alfworld_curve" + ("_constrained" if args.constrain_actions else ""))
    args.out = args.out.resolve()
    if not args.report_only:  # a report reads what is there (and --fresh runs every eval again)
        check_reused_stages(args, algos)
        if not args.fresh:
            check_reused_evals(args, algos)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if not args.report_only:
        if not args.skip_untrained:
            evaluate("untrained", [], args)
        sft_run = args.sft_run.resolve() if args.sft_run else sft(args)
        if not args.skip_sft_eval:
            evaluate("sft", ["--checkpoint", str(sft_run)], args)
        for algo in algos:
            evaluate(f"rl-{algo}", ["--checkpoint", str(rl(algo, sft_run, args))], args)
    rows = table(args)
    if rows:
        report(rows, args)
    print(f"alfworld_curve wall time {(time.time() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
