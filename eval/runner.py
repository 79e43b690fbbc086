"""Run an evaluation: a fixed list of episodes through the training rollout (… → weight sync → eval).

    task selection (eval.tasks) --Job--> RolloutEngine (model policies: eval.model_policies) --> episode record
                                    \\-> action loop on the EnvPool (expert, random: eval.action_policies) --^
    episode records --episodes.jsonl, one line as each episode ends (resume)--> eval.report
                    --> results.json/csv, PNG, eval/ metrics

Which episodes: task ``i`` is the env's ``i``-th task (``env.unwrapped.task_ids``; ALFWorld: the
games in sorted path order). All tasks by default, played in index order, each once per sample.
A smaller ``episodes`` picks a stable stratified subset (:func:`eval.tasks.stratified_subset`), still
played in index order; more than the env has is an error. Episode ``i`` starts from
``reset(seed=seed + i, options={"task": i})``.

Model policies (anything with ``generate``: the trainer's in-memory HF policy, a vLLM policy) go
through :class:`trainers.rollout.RolloutEngine`, the same code path as training, with the same
prompts. Non-model policies (:data:`ACTION_POLICIES`: ``expert``, ``random``) choose an action from
the env's ``info`` (the planner's next command, the admissible commands), which a token-level
Policy never sees, so they run through a plain episode loop on the same :class:`envs.pool.EnvPool`.
Either way each episode is appended to episodes.jsonl (flushed) the moment it ends, so progress can
be watched there and a killed eval, run again with the same --out, plays only the missing episodes.

The names other modules import from here (``evaluate``, ``EvalConfigError``, ``ActionPolicy``,
``ACTION_POLICIES``, ``select_tasks``, ...) stay importable from ``eval.runner``.
"""

from __future__ import annotations

import inspect
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from eval import report
from eval.action_policies import (  # noqa: F401  re-exported: imported from eval.runner elsewhere
    ACTION_POLICIES,
    ActionPolicy,
    ExpertPolicy,
    RandomPolicy,
    make_action_policy,
    play_actions,
)
from eval.model_policies import play_model
from eval.tasks import (  # noqa: F401  re-exported: imported from eval.runner elsewhere
    MAX_ACTION_CHARS,
    EvalConfigError,
    episode_record,
    ordered_types,
    plan_jobs,
    read_task_types,
    select_tasks,
    stratified_subset,
    task_set_stamp,
)

log = logging.getLogger(__name__)

CONFIG_FILE = "eval_config.json"


@dataclass
class EvalResult:
    """What :func:`evaluate` returns: the results dict (as in results.json), flat ``eval/``
    metrics for a logger, the episode records it is computed from, and where files went."""

    results: dict[str, Any]
    metrics: dict[str, float]
    records: list[dict[str, Any]]
    out_dir: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)



def evaluate(
    policy: Any,
    *,
    env_id: str = "agent_rl/ALFWorld-v0",
    env_kwargs: dict[str, Any] | None = None,
    episodes: int | None = None,
    tasks: Sequence[int] | None = None,
    max_steps: int = 50,
    temperature: float = 0.0,
    max_new_tokens: int = 256,
    samples: int = 1,
    workers: int = 0,
    concurrency: int = 16,
    seed: int = 0,
    out_dir: str | Path | None = None,
    model_name: str | None = None,
    rollout_kwargs: dict[str, Any] | None = None,
    import_modules: Sequence[str] = (),
    pool: Any = None,
    env_timeout_s: float | None = 600.0,
    progress: bool = False,
    plot: bool = True,
    prefix: str = "eval",
    title: str = "",
    identity: dict[str, Any] | None = None,
) -> EvalResult:
    """Evaluate ``policy`` on ``env_id``; see the module docstring for which episodes and how.

    ``policy``: a model policy (``trainers.policies.Policy``: the trainer passes its in-memory HF
    policy), an :class:`ActionPolicy`, or the name of one (``"expert"``, ``"random"``).
    ``episodes``: how many tasks (None: all); or ``tasks``: explicit task indices.
    ``max_new_tokens``: per reply; ``rollout_kwargs``: more RolloutEngine arguments (history_k, ...).
    ``samples``: episodes per task (pass@k for k ≤ samples; needs ``temperature > 0`` when > 1).
    ``workers``: env worker processes (0: in-process); ``concurrency``: episodes in flight.
    ``out_dir``: write episodes.jsonl (resumed if present), results.json/csv and a PNG there.
    ``pool``: an existing EnvPool of this env to reuse (built with these env kwargs); else one is built and
    closed. ``env_timeout_s``: bound on one pool batch per worker (the planner expert can replan for minutes
    on a pick-two game on a busy machine); a worker past it is restarted and its episodes fail.
    ``identity``: more settings that make two evals different (the CLI's backend and dtype); with the rest of
    the config they are written to eval_config.json, and resuming an ``out_dir`` needs them all equal.
    Returns an :class:`EvalResult` whose ``metrics`` have ``<prefix>/`` names.
    """
    import envs  # noqa: F401  registers agent_rl/* ids
    from envs.pool import EnvPool
    from envs.registration import resolve_env_id

    env_id = resolve_env_id(env_id)
    policy = make_action_policy(policy) if isinstance(policy, str) else policy
    is_action = isinstance(policy, ActionPolicy)
    if not is_action and not callable(getattr(policy, "generate", None)):
        raise TypeError(f"evaluate(policy=...) takes a model policy (with .generate), an ActionPolicy or one of "
                        f"{ACTION_POLICIES.names()}; got {type(policy).__name__}")
    _check_args(max_steps, temperature, samples, workers, concurrency, is_action)
    # What an action policy needs from the env (the expert: expert=True), where the env takes that argument.
    needed = {k: v for k, v in (policy.env_kwargs if is_action else {}).items() if _env_accepts(env_id, k)}
    env_kwargs = {**needed, **(env_kwargs or {})}
    if _env_accepts(env_id, "max_episode_steps"):
        env_kwargs.setdefault("max_episode_steps", max_steps)

    own_pool = pool is None
    if own_pool:
        # One env first, to read the task list; grown to the needed size below.
        pool = EnvPool(env_id, 1, env_kwargs, 0, import_modules)
    try:
        task_ids = list(pool.get_attr("task_ids"))
        num_tasks = len(task_ids)
        types = read_task_types(pool)
        stamp = task_set_stamp(pool, task_ids)
        if tasks is None:
            chosen = select_tasks(num_tasks, episodes, types, task_ids, what=f"{env_id} {_describe(env_kwargs)}")
        else:
            chosen = sorted(set(int(t) for t in tasks))
            if any(not 0 <= t < num_tasks for t in chosen):
                raise EvalConfigError(f"tasks {[t for t in chosen if not 0 <= t < num_tasks]} are out of range: "
                                      f"{env_id} has {num_tasks} tasks (0..{num_tasks - 1})")
        model = model_name or getattr(policy, "description", None) or type(policy).__name__
        config = {
            "env_id": env_id, "env_kwargs": env_kwargs, "policy": "model" if not is_action else type(policy).__name__,
            "model": model, "temperature": temperature, "max_steps": max_steps, "samples": samples, "seed": seed,
            "task_set": stamp, "max_new_tokens": max_new_tokens, "rollout": dict(rollout_kwargs or {}),
            **(identity or {}),
        }
        log_path = None if out_dir is None else Path(out_dir) / report.EPISODES_FILE
        if out_dir is not None:
            _check_resume(Path(out_dir), config)
        episode_log = report.EpisodeLog(log_path) if log_path is not None else None
        if episode_log is not None and episode_log.dropped_torn_line:
            log.warning("%s ended with a torn line (an interrupted write); it was dropped and that episode "
                        "is played again", log_path)
        done = episode_log.done_keys() if episode_log is not None else set()
        jobs = plan_jobs(chosen, samples, seed, task_ids, types, done)
        records = list(episode_log.records) if episode_log is not None else []
        new_records: list[dict[str, Any]] = []
        bar = _progress(progress, len(chosen) * samples, len(chosen) * samples - len(jobs), title or env_id)
        chosen_set = set(chosen)
        wins = [sum(bool(r["won"]) for r in records if int(r["task_index"]) in chosen_set)]  # resumed ones too

        def on_finish(record: dict[str, Any]) -> None:
            if episode_log is not None:
                episode_log.append(record)
            else:
                records.append(record)
            new_records.append(record)
            wins[0] += bool(record["won"])
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"won {wins[0]}/{bar.n}")

        began = time.monotonic()
        try:
            if jobs:
                num_envs = min(concurrency, len(jobs))
                if own_pool and (num_envs > 1 or workers > 0):
                    pool.close()
                    pool = EnvPool(env_id, num_envs, env_kwargs, workers, import_modules, timeout_s=env_timeout_s)
                num_envs = min(num_envs, pool.num_envs)
                if is_action:
                    play_actions(pool, num_envs, jobs, policy, max_steps, on_finish)
                else:
                    play_model(policy, pool, jobs, samples, task_ids, temperature, max_steps, max_new_tokens,
                               rollout_kwargs or {}, on_finish)
        finally:
            wall = time.monotonic() - began
            if bar is not None:
                bar.close()
            if episode_log is not None:
                records = episode_log.records
                episode_log.close()
    finally:
        if own_pool:
            pool.close()

    wanted = {(i, s) for i in chosen for s in range(samples)}
    # episodes.jsonl is in finish order (episodes run concurrently); results list them in task order.
    final = sorted((r for r in records if (int(r["task_index"]), int(r["sample"])) in wanted),
                   key=lambda r: (int(r["task_index"]), int(r["sample"])))
    results = report.summarize(
        final, samples=samples, task_types=ordered_types(types, chosen),
        env_id=env_id, env_kwargs=env_kwargs, policy=config["policy"], model=model, temperature=temperature,
        max_steps=max_steps, seed=seed, task_set=stamp, episodes_this_run=len(new_records),
        resumed_episodes=len(final) - len(new_records), wall_s=round(wall, 3),
        episodes_per_s=round(len(new_records) / wall, 4) if wall > 0 and new_records else 0.0,
        versions=versions(),
    )
    results.update(identity or {})  # backend, dtype, protocol: named in results.json too
    result = EvalResult(results, report.metrics_from(results, prefix), final)
    if out_dir is not None:
        result.out_dir = Path(out_dir)
        result.files = write_outputs(Path(out_dir), results, title=title or f"{env_id} — {model}", plot=plot)
    return result


def write_outputs(out_dir: Path, results: dict[str, Any], *, title: str, plot: bool = True,
                  rows: list[dict[str, Any]] | None = None, png_name: str = "success.png") -> dict[str, Path]:
    """results.json, results.csv and (``plot``) the PNG bar chart of ``rows`` (default: per task type)."""
    rows = report.csv_rows(results) if rows is None else rows
    report.write_results(out_dir, results, rows)
    files = {"results_json": out_dir / report.RESULTS_JSON, "results_csv": out_dir / report.RESULTS_CSV}
    episodes_file = out_dir / report.EPISODES_FILE
    if episodes_file.exists():
        files["episodes"] = episodes_file
    if plot:
        from eval.plots import plot_success

        files["plot"] = plot_success(rows, out_dir / png_name, title=title)
    return files


# ------------------------------------------------------------------------------------ helpers


def _check_args(max_steps, temperature, samples, workers, concurrency, is_action) -> None:
    problems = []
    if not isinstance(max_steps, int) or max_steps < 1:
        problems.append(f"max_steps must be a positive int, got {max_steps!r}")
    if temperature < 0:
        problems.append(f"temperature must be >= 0 (0 = greedy), got {temperature!r}")
    if not isinstance(samples, int) or samples < 1:
        problems.append(f"samples must be a positive int, got {samples!r}")
    elif samples > 1 and temperature == 0 and not is_action:
        problems.append(f"samples={samples} with temperature 0 (greedy) would repeat one episode {samples} times; "
                        f"pass a temperature > 0 (e.g. --temperature 0.6) for pass@k")
    if not isinstance(workers, int) or workers < 0:
        problems.append(f"workers must be an int >= 0 (0 = envs in this process), got {workers!r}")
    if not isinstance(concurrency, int) or concurrency < 1:
        problems.append(f"concurrency must be a positive int, got {concurrency!r}")
    if problems:
        raise EvalConfigError("invalid eval arguments: " + "; ".join(problems))


def _env_accepts(env_id: str, name: str) -> bool:
    import gymnasium

    entry = gymnasium.spec(env_id).entry_point
    try:
        cls = gymnasium.envs.registration.load_env_creator(entry) if isinstance(entry, str) else entry
        return name in inspect.signature(cls).parameters
    except (ImportError, AttributeError, TypeError, ValueError):
        return False


def _describe(env_kwargs: dict[str, Any]) -> str:
    shown = {k: v for k, v in env_kwargs.items() if k in ("split", "dataset", "source")}
    return " ".join(f"{k}={v}" for k, v in shown.items())


def _check_resume(out_dir: Path, config: dict[str, Any]) -> None:
    """Refuse to mix two different evals in one --out; remember this one's config otherwise."""
    path = out_dir / CONFIG_FILE
    current = json.loads(json.dumps(config, default=str))
    episodes = out_dir / report.EPISODES_FILE
    if episodes.exists() and episodes.stat().st_size and not path.exists():
        raise EvalConfigError(
            f"{out_dir} holds {report.EPISODES_FILE} but no {CONFIG_FILE}, so nothing says which eval wrote those "
            f"episodes and resuming could mix two evals. Fix: use another --out, or delete {episodes} to start over"
        )
    if path.exists() and episodes.exists():
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise EvalConfigError(f"{path} is damaged ({exc}); delete it to resume, or use another --out") from None
        diff = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
        if diff:
            details = "; ".join(f"{k}: {previous.get(k)!r} there, {current.get(k)!r} now" for k in diff)
            raise EvalConfigError(
                f"{out_dir} holds episodes of a different eval ({details}). Resuming would mix them: use another "
                f"--out, or delete {out_dir / report.EPISODES_FILE} to start this one over"
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(current, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def _progress(enabled: bool, total: int, initial: int, desc: str):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="ep", dynamic_ncols=True)


def versions() -> dict[str, str | None]:
    """Installed versions of the packages that decide an eval's numbers."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in ("agent-rl", "alfworld", "textworld", "gymnasium", "torch", "transformers", "vllm", "math-verify"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    if out["agent-rl"] is None:  # a source checkout that is not pip-installed
        import agent_rl

        out["agent-rl"] = agent_rl.__version__
    return out
