"""Model-policy eval episodes through the training rollout (env → rollout → Trajectory → episode record).

    Job ×N --grouped by task--> TaskSpec ×B --RolloutEngine.run(on_episode=...)--> Trajectory, as each ends
          --trajectory_record--> on_finish(record) (evaluate: append to episodes.jsonl, flushed; progress bar)

Model policies (anything with ``generate``: the trainer's in-memory HF policy, a vLLM policy) go
through :class:`trainers.rollout.RolloutEngine`, the same code path and prompts as training. The
engine reports each episode the moment it ends (``on_episode``), so episodes.jsonl grows one
line per finished episode and a killed eval loses only the episodes in flight.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Sequence

from eval.tasks import Job, episode_record

# Episodes per engine.run. Writing no longer needs chunks (each episode is written as it ends);
# this bound is for memory: the engine keeps every finished Trajectory, token ids included, until
# its run returns (measured with tracemalloc: 31 KiB per turn of a 600-token prompt, a 100-token
# reply and their texts), so 256 episodes of 50 turns hold ~0.4 GB at worst. Evals up to this size
# (ALFWorld valid_unseen: 134 games, one sample) are one run, so no env waits for a chunk's slowest
# episode; bigger ones are split into near-equal runs.
MAX_EPISODES_PER_RUN = 256


def play_model(policy, pool, jobs: Sequence[Job], samples: int, task_ids: Sequence[str], temperature: float,
               max_steps: int, max_new_tokens: int, rollout_kwargs: dict[str, Any],
               on_finish: Callable[[dict[str, Any]], None]) -> None:
    """Play ``jobs`` with a model policy through the training rollout engine; report each as it ends.

    The engine plays groups of ``samples`` episodes per task and keeps every pool env busy (a
    finished episode's env takes the next waiting one). A task whose group is torn (some samples
    already in episodes.jsonl, the eval was killed mid-group) is played as a whole group, the
    same start state for every member, and only its missing samples are reported.
    """
    from trainers.rollout import RolloutEngine

    engine = make_engine(RolloutEngine, policy, pool, temperature, max_steps, max_new_tokens, rollout_kwargs)
    by_task: dict[int, dict[int, Job]] = {}
    for job in jobs:
        by_task.setdefault(job.task_index, {})[job.sample] = job
    tasks = list(by_task)
    if not tasks:
        return
    # Groups are never split; runs differ by at most one task, so no small last run leaves envs idle.
    runs = math.ceil(len(tasks) / max(1, MAX_EPISODES_PER_RUN // samples))
    size, extra = divmod(len(tasks), runs)
    for r in range(runs):
        begin = r * size + min(r, extra)
        _play_run(engine, tasks[begin:begin + size + (r < extra)], by_task, samples, task_ids, on_finish)


def _play_run(engine, chunk: list[int], by_task: dict[int, dict[int, Job]], samples: int,
              task_ids: Sequence[str], on_finish: Callable[[dict[str, Any]], None]) -> None:
    """One ``engine.run`` over the tasks ``chunk``; each wanted episode goes to ``on_finish`` as it ends."""
    from agent_rl.types import TaskSpec

    # Every sample of task i starts from seed + i, so any of its jobs gives the group's seed.
    specs = [TaskSpec(task_id=str(task_ids[i]), seed=next(iter(by_task[i].values())).seed, options={"task": i})
             for i in chunk]
    clock = _EpisodeClock(engine.pool.num_envs, samples)
    reported: set[tuple[int, int]] = set()

    def on_episode(traj, k: int, sample: int) -> None:
        reported.add((k, sample))
        elapsed = clock.finished(k, sample)
        job = by_task[chunk[k]].get(sample)
        if job is not None:  # samples already in episodes.jsonl (a torn group) are not written twice
            on_finish(trajectory_record(job, traj, elapsed))

    trajectories, _metrics = engine.run(specs, samples, on_episode=on_episode)
    if len(trajectories) != len(chunk) * samples or len(reported) != len(trajectories):
        raise RuntimeError(f"the rollout engine returned {len(trajectories)} trajectories and reported "
                           f"{len(reported)} finished episodes for {len(chunk)} tasks x {samples} samples")


class _EpisodeClock:
    """Seconds each episode of one ``engine.run`` was in flight, from the engine's documented schedule.

    The engine starts episodes in task-then-member order: the first ``num_envs`` at once, then the
    next waiting one each time an episode ends and frees its env. So episode ``n`` (``n >= num_envs``)
    started when the ``(n - num_envs)``-th episode (0-based) finished, and the finish times are all
    the clock needs; the engine itself does not time episodes.
    """

    def __init__(self, num_envs: int, samples: int):
        self.num_envs, self.samples = num_envs, samples
        self.began = time.monotonic()
        self.finishes: list[float] = []

    def finished(self, task: int, sample: int) -> float:
        now = time.monotonic()
        n = task * self.samples + sample  # start order
        slot_freed = n - self.num_envs
        started = self.finishes[slot_freed] if 0 <= slot_freed < len(self.finishes) else self.began
        self.finishes.append(now)
        return now - started


def make_engine(engine_cls, policy, pool, temperature, max_steps, max_new_tokens, rollout_kwargs):
    """The training rollout engine with eval sampling (greedy by default) and the step limit.

    ``rollout_kwargs`` pass through (``history_k``, ``prompt_mode``, ``max_prompt_tokens``...), so an
    eval can use exactly the trainer's prompt settings; ``stop`` (``rollout.stop``) goes into the sampling.
    """
    from trainers.policies import SamplingParams

    kwargs = dict(rollout_kwargs)
    stop = kwargs.pop("stop", None)  # null: the template's stop strings; []: end-of-sequence only (rollout.stop)
    kwargs.setdefault("sampling", SamplingParams(temperature=temperature, max_tokens=max_new_tokens,
                                                 stop=None if stop is None else list(stop)))
    kwargs.setdefault("max_turns", max_steps)
    kwargs.setdefault("progress", False)  # evaluate() shows its own bar over the whole eval
    return engine_cls(policy, pool, **kwargs)


def trajectory_record(job: Job, traj, elapsed_s: float) -> dict[str, Any]:
    """The episode record of a rollout Trajectory.

    A turn counts as an invalid action when the reply could not be parsed into an action or the
    env rejected the action (``info["action_valid"]`` False), the same rule as the action loop.
    ``reward`` is the env's return (the rollout's invalid-action penalty is a training signal).
    """
    info = traj.info or {}
    invalid = sum((not turn.action_valid) or not turn.info.get("action_valid", True) for turn in traj.turns)
    actions = traj.actions
    last_action = actions[-1] if actions else None
    return episode_record(
        job, str(info.get("env_task_id", traj.task_id)), str(info.get("task_type") or "unknown"), won=traj.won,
        reward=float(info.get("env_return", traj.reward)), steps=traj.num_turns, invalid_actions=invalid,
        terminated=traj.terminated, truncated=traj.truncated, error=info.get("error"), last_action=last_action,
        elapsed_s=elapsed_s, actions=actions,
    )
