"""Non-model eval policies and their episode loop (env → action loop → episode record → eval.report).

    Job ×N --pool.reset--> observation, info --ActionPolicy.act--> env action --pool.step--> ... --> record

An :class:`ActionPolicy` (``expert``, ``random``; :data:`ACTION_POLICIES`) chooses an action from the
env's ``info`` (the planner's next command, the admissible commands), which a token-level model
Policy never sees, so it cannot go through the rollout engine; :func:`play_actions` is a plain
episode loop on the same :class:`envs.pool.EnvPool`, reporting each episode the moment it ends.
"""

from __future__ import annotations

import random
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from agent_rl.registry import Registry
from eval.tasks import EvalConfigError, Job, episode_record


class ActionPolicy:
    """A non-model policy: picks an env action from the observation and ``info``.

    ``env_kwargs`` are what it needs the env built with (the expert needs ``expert=True`` so the
    env puts the planner's next command into ``info``). ``rng`` is the episode's own generator.
    ``act`` returns None when it has no action (the episode then ends as a loss, never loops).
    """

    env_kwargs: dict[str, Any] = {}
    description = "action policy"

    def act(self, observation: str, info: dict[str, Any], rng: random.Random) -> str | None:
        raise NotImplementedError


ACTION_POLICIES: Registry[type[ActionPolicy]] = Registry("eval policy")


@ACTION_POLICIES.register("expert")
class ExpertPolicy(ActionPolicy):
    """The env's expert: ALFWorld's planner (``info["expert_action"]``, see envs.alfworld.expert)."""

    env_kwargs = {"expert": True}
    description = "planner expert (ALFWorld expert_type: planner)"

    def act(self, observation: str, info: dict[str, Any], rng: random.Random) -> str | None:
        if "expert_action" not in info:
            raise EvalConfigError(
                "--policy expert needs an env that puts its expert's next action in info['expert_action'] "
                f"(agent_rl/ALFWorld-v0 with expert=True); this env's info has {sorted(info)}"
            )
        return info["expert_action"]


@ACTION_POLICIES.register("random")
class RandomPolicy(ActionPolicy):
    """Uniform over ``info["admissible_commands"]``, drawn from the episode's seeded generator."""

    description = "uniform random over admissible commands"

    def act(self, observation: str, info: dict[str, Any], rng: random.Random) -> str | None:
        commands = info.get("admissible_commands")
        if commands is None:
            raise EvalConfigError(
                "--policy random picks from info['admissible_commands'], which this env does not provide "
                f"(its info has {sorted(info)}); use an env with a finite action list such as ALFWorld"
            )
        return rng.choice(list(commands)) if commands else None


def make_action_policy(name: str) -> ActionPolicy:
    return ACTION_POLICIES.get(name)()


@dataclass
class _Live:
    job: Job
    observation: str
    info: dict[str, Any]
    rng: random.Random
    started: float
    steps: int = 0
    invalid: int = 0
    reward: float = 0.0
    last_action: str | None = None


def play_actions(pool, num_envs: int, jobs: Sequence[Job], policy: ActionPolicy, max_steps: int,
                 on_finish: Callable[[dict[str, Any]], None]) -> None:
    """Play ``jobs`` with an :class:`ActionPolicy`, up to ``num_envs`` at once; report each as it ends.

    One ``pool.step`` per round carries every live episode's action, so envs in worker processes
    step concurrently; a freed env starts the next job at once.
    """
    queue, live, free = deque(jobs), {}, list(range(num_envs))[::-1]

    def finish(env_index: int, ep: _Live, won: bool, terminated: bool, truncated: bool, error: str | None):
        live.pop(env_index, None)
        free.append(env_index)
        on_finish(episode_record(
            ep.job, str(ep.info.get("task_id", ep.job.task_index)), str(ep.info.get("task_type", "unknown")),
            won=won, reward=ep.reward, steps=ep.steps, invalid_actions=ep.invalid, terminated=terminated,
            truncated=truncated, error=error, last_action=ep.last_action, elapsed_s=time.monotonic() - ep.started,
        ))

    while queue or live:
        starts = []
        while free and queue:
            starts.append((free.pop(), queue.popleft()))
        if starts:
            results = pool.reset([(env, job.seed, {"task": job.task_index}) for env, job in starts])
            for (env, job), r in zip(starts, results):
                # Each episode gets its own generator, so results do not depend on scheduling order.
                ep = _Live(job, r.observation, r.info, random.Random(f"{job.seed}/{job.sample}"), time.monotonic())
                live[env] = ep
                if r.error:
                    finish(env, ep, False, False, True, r.error)
        actions = []
        for env, ep in list(live.items()):
            action = policy.act(ep.observation, ep.info, ep.rng)
            if action is None:
                finish(env, ep, bool(ep.info.get("won")), False, True,
                       None if ep.info.get("won") else "the policy had no action for this state")
            else:
                ep.last_action = action
                actions.append((env, action))
        for r in pool.step(actions):
            ep = live[r.env_index]
            ep.steps += 1
            ep.reward += r.reward
            ep.observation, ep.info = r.observation, {**ep.info, **r.info} if r.error else r.info
            ep.invalid += not r.info.get("action_valid", True)
            won = bool(r.info.get("won", False))
            if r.error or r.terminated or r.truncated or ep.steps >= max_steps:
                finish(r.env_index, ep, won and not r.error, r.terminated, r.truncated or not r.terminated, r.error)
