"""Which episodes an eval plays, and the record each becomes (the start and end of one eval episode).

    env task list --select_tasks (all, or a stratified subset)--> task indices
    task indices × samples, minus those already in episodes.jsonl --plan_jobs--> Job per episode
    finished episode --episode_record--> one line of episodes.jsonl (read by eval.report)

Task ``i`` is the env's ``i``-th task (``env.unwrapped.task_ids``; ALFWorld: the games in sorted
path order). Episode ``(i, sample)`` starts from ``reset(seed=seed + i, options={"task": i})``.
The task set is stamped (count + checksum, :func:`task_set_stamp`) so a resumed eval can tell
that its episodes came from the same tasks.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any, Sequence

log = logging.getLogger(__name__)

# Eval protocols: what each one sets (the CLI refuses an explicit flag that disagrees; training's periodic eval
# follows train.eval_protocol). "default" is ours: every game of valid_unseen once, greedy.
PROTOCOLS: dict[str, dict[str, Any]] = {
    "default": {"temperature": 0.0},
    # verl-agent's ALFWorld validation (and the HölderPO authors'): 128 seeded valid_seen episodes at temperature 0.4.
    "verl-agent": {"split": "valid_seen", "episodes": 128, "temperature": 0.4},
}

MAX_ACTION_CHARS = 2000  # the last reply kept per episode record (a math answer, an ALFWorld command)


class EvalConfigError(ValueError):
    """Bad eval arguments, or an --out folder that holds a different eval."""


# ------------------------------------------------------------------------------------ task selection


def stratified_subset(task_types: Sequence[str], task_ids: Sequence[str], n: int) -> list[int]:
    """``n`` task indices stratified by task type, deterministic and nested, returned sorted.

    Within each type, tasks are ranked by sha256 of their task id (a fixed shuffle that spreads
    the pick over scenes and objects, the same on every machine). Type ``t`` with ``N_t`` tasks
    gives its ``j``-th ranked task the key ``(j + 0.5) / N_t``; taking the ``n`` smallest keys
    (ties: type name, then rank) gives every type a share within one task of ``n * N_t / N``, and
    the subset for ``n`` is contained in the subset for ``n + 1`` (so a longer eval resumes a
    shorter one in the same --out).
    """
    total = len(task_ids)
    if len(task_types) != total:
        raise ValueError(f"stratified_subset got {len(task_types)} task types for {total} tasks")
    if not 0 <= n <= total:
        raise ValueError(f"cannot pick {n} of {total} tasks")
    by_type: dict[str, list[int]] = {}
    for index, task_type in enumerate(task_types):
        by_type.setdefault(str(task_type), []).append(index)
    keyed = []
    for task_type, indices in by_type.items():
        ranked = sorted(indices, key=lambda i: hashlib.sha256(str(task_ids[i]).encode()).hexdigest())
        size = len(ranked)
        keyed += [((j + 0.5) / size, task_type, j, index) for j, index in enumerate(ranked)]
    keyed.sort()
    return sorted(entry[3] for entry in keyed[:n])


def select_tasks(num_tasks: int, episodes: int | None, task_types: Sequence[str] | None,
                 task_ids: Sequence[str], what: str = "the env") -> list[int]:
    """All task indices (``episodes`` None), or a stratified subset; too many is a clear error."""
    if episodes is None:
        return list(range(num_tasks))
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise EvalConfigError(f"episodes must be a positive int (or None for all {num_tasks} tasks), got {episodes!r}")
    if episodes > num_tasks:
        raise EvalConfigError(
            f"asked for {episodes} episodes but {what} has only {num_tasks} tasks, and an eval plays each task "
            f"exactly once (per sample); pass --episodes {num_tasks} (or leave it out for all), or use "
            f"--samples k to draw k episodes per task"
        )
    if episodes == num_tasks:
        return list(range(num_tasks))
    if task_types is None:  # no types to stratify on: the same fixed hash order over one stratum
        task_types = ["all"] * num_tasks
    return stratified_subset(task_types, task_ids, episodes)


def read_task_types(pool) -> list[str] | None:
    """Each task's type, read without playing it: the env's ``task_types``, else its game/problem records."""
    for attr, field_name in (("task_types", None), ("games", "task_type"), ("problems", "task_type")):
        try:
            values = pool.get_attr(attr)
        except (AttributeError, RuntimeError):
            continue
        return [str(v if field_name is None else getattr(v, field_name)) for v in values]
    log.warning("the env exposes no task types (task_types/games/problems): --episodes subsets are not stratified")
    return None


def task_set_stamp(pool, task_ids: list[str]) -> dict[str, Any]:
    """Count + checksum of the task set (the env's own ``game_set_stamp`` when it has one)."""
    try:
        return dict(pool.get_attr("game_set_stamp"))
    except (AttributeError, RuntimeError):
        pass
    digest = hashlib.sha256()
    try:  # problems with their reference answers, so a changed answer key changes the stamp
        for p in pool.get_attr("problems"):
            digest.update(json.dumps([p.problem_id, p.problem, p.answer], ensure_ascii=False).encode() + b"\0")
    except (AttributeError, RuntimeError):
        for task_id in task_ids:
            digest.update(str(task_id).encode() + b"\0")
    return {"num_tasks": len(task_ids), "sha256": digest.hexdigest()}


def ordered_types(types: list[str] | None, chosen: list[int]) -> list[str]:
    """The task types of ``chosen``, each once, in order of first appearance (the report's row order)."""
    if types is None:
        return []
    seen: dict[str, None] = {}
    for i in chosen:
        seen.setdefault(types[i], None)
    return list(seen)


# ------------------------------------------------------------------------------------ episodes


@dataclass(frozen=True)
class Job:
    """One episode to play. ``task_id``/``task_type`` as read from the env up front (type None when the
    env does not expose types: then the episode's ``info`` names it), so a failed reset is still filed right."""

    task_index: int
    sample: int
    seed: int
    task_id: str
    task_type: str | None = None


def plan_jobs(chosen: Sequence[int], samples: int, seed: int, task_ids: Sequence[str],
              types: Sequence[str] | None, done: set[tuple[int, int]]) -> list[Job]:
    """The episodes still to play, in task then sample order: every ``(task, sample)`` not in ``done``."""
    return [Job(i, s, seed + i, str(task_ids[i]), None if types is None else types[i])
            for i in chosen for s in range(samples) if (i, s) not in done]


def episode_record(job: Job, task_id: str, task_type: str, *, won: bool, reward: float, steps: int,
                   invalid_actions: int, terminated: bool, truncated: bool, error: str | None,
                   last_action: str | None, elapsed_s: float, actions: Sequence[str] | None = None) -> dict[str, Any]:
    """One line of episodes.jsonl; ``actions`` (every turn's action, or its reply when it had none) where the
    episode's turns are known, so a failure can be read without replaying it."""
    record = {
        "task_index": job.task_index, "task_id": job.task_id or task_id, "task_type": job.task_type or task_type,
        "sample": job.sample,
        "seed": job.seed, "won": bool(won), "reward": float(reward), "steps": int(steps),
        "invalid_actions": int(invalid_actions), "terminated": bool(terminated), "truncated": bool(truncated),
        "error": error, "last_action": None if last_action is None else last_action[:MAX_ACTION_CHARS],
        "elapsed_s": round(elapsed_s, 3),
    }
    if actions is not None:
        record["actions"] = [a[:MAX_ACTION_CHARS] for a in actions]
    return record
