"""The step's training batch: tasks → rollouts → trajectory batch → advantages per loss row.

    sample_tasks --TaskSpec ×B--> RolloutEngine.run --Trajectory ×B·G--> collect_rollouts (groups with an env
    failure dropped; with dynamic sampling, groups without signal dropped and more tasks played)
    --TrajectoryBatch--> row_advantages (one per trajectory, or per turn) --> Learner.update

Light imports only (no torch at module level), so ``agent_rl.train`` can import it at the top.
"""

from __future__ import annotations

import random

from agent_rl.config import Config


def env_num_tasks(pool) -> int | None:
    """The env's task count (``env.unwrapped.num_tasks``), or None for an env without one."""
    try:
        return int(pool.get_attr("num_tasks"))
    except (AttributeError, RuntimeError, TypeError, ValueError):
        return None


def sample_tasks(rng: random.Random, num_tasks: int | None, count: int, step: int, seed: int, offset: int = 0,
                 exclude: frozenset[int] | set[int] = frozenset()):
    """``count`` distinct tasks (with replacement only when the env has fewer), each with
    its own reset seed; all G members of a group will share one TaskSpec. An env without
    ``num_tasks`` gets seeds only: its ``reset(seed)`` chooses the task. ``offset``: tasks already
    drawn this step (dynamic sampling's extra rounds), so reset seeds never repeat within a step;
    ``exclude``: task indices already played this step, drawn again only when the others run out."""
    from agent_rl.types import TaskSpec

    reset_seed = [seed * 1_000_003 + step * 1_009 + offset + k for k in range(count)]
    if num_tasks is None:
        return [TaskSpec(task_id=f"seed{s}", seed=s, options={}) for s in reset_seed]
    fresh = [i for i in range(num_tasks) if i not in exclude] if exclude else range(num_tasks)
    if count <= len(fresh):
        picks = rng.sample(fresh, count)
    elif exclude:  # every unplayed task once, then repeats
        picks = rng.sample(fresh, len(fresh)) + [rng.randrange(num_tasks) for _ in range(count - len(fresh))]
    else:
        picks = [rng.randrange(num_tasks) for _ in range(count)]
    return [TaskSpec(task_id=str(i), seed=s, options={"task": i}) for i, s in zip(picks, reset_seed)]


def collect_rollouts(cfg: Config, engine, tasks, num_tasks: int | None, step: int):
    """One step's training trajectories and rollout metrics: ``tasks`` × G episodes, less the groups with an
    env/worker failure (an infrastructure fault is not the policy's doing; their tasks are played once more,
    and what fails again is left out: ``rollout/dropped_episodes``, ``rollout/retried_groups``). With ``algo.dynamic_sampling``,
    groups without signal (every advantage 0: :func:`informative_groups`) are dropped too, and more tasks are played (at most
    ``algo.dynamic_sampling_rounds`` extra rounds, drawn from a per-step stream so a resumed run replays the
    same tasks) until ``rollout.tasks_per_step`` informative groups are held. ``rollout/*`` success metrics
    are those of the first round, comparable with runs without dynamic sampling."""
    from trainers.rollout import drop_failed_groups

    trajectories, metrics = engine.run(tasks, cfg.rollout.group_size)
    # the failed groups by position: two groups of one step can share a task (sampled with replacement)
    failed = sorted({_task_index(t.group_id) for t in trajectories if "error" in t.info})
    trajectories, dropped = drop_failed_groups(trajectories)
    if failed:  # replay the failed groups' tasks once (same start states), so a fault does not shrink the step
        retry = [tasks[i] for i in failed]
        again, _ = engine.run(retry, cfg.rollout.group_size)
        again, dropped = drop_failed_groups(again)  # left out: the episodes that failed twice
        trajectories += again
        metrics["rollout/retried_groups"] = float(len(retry))
    if cfg.algo.dynamic_sampling:
        want, played, rounds = cfg.rollout.tasks_per_step, len(tasks), 0
        # a stream of its own (the step's first draw is random.Random(train.seed)'s), over the tasks not yet
        # played this step: a group replayed from the same start state would only repeat one already held
        rng = random.Random(f"dynamic-sampling:{cfg.train.seed}:{step}")
        seen = {t.options["task"] for t in tasks if "task" in t.options}
        kept = informative_groups(cfg, trajectories)
        while len(kept) < want and rounds < cfg.algo.dynamic_sampling_rounds:
            rounds += 1
            more = sample_tasks(rng, num_tasks, want - len(kept), step, cfg.train.seed, offset=played, exclude=seen)
            seen.update(t.options["task"] for t in more if "task" in t.options)
            played += len(more)
            extra, _ = engine.run(more, cfg.rollout.group_size)
            extra, lost = drop_failed_groups(extra)
            dropped += lost
            kept += informative_groups(cfg, extra)
        kept = kept[:want]
        trajectories = [t for group in kept for t in group]
        metrics.update({"rollout/informative_groups": float(len(kept)), "rollout/extra_rounds": float(rounds),
                        "rollout/tasks_played": float(played)})
    metrics["rollout/dropped_episodes"] = float(dropped)
    return trajectories, metrics


def _task_index(group_id: str) -> int:
    """The index into ``tasks`` of a group's task: RolloutEngine.run names group i ``"<run>:<i>"``."""
    return int(group_id.rsplit(":", 1)[1])


def row_rewards(batch, owners: list[int], unit: str, invalid_action_penalty: float) -> list[float]:
    """The reward of each loss row [R] (``owners``: each row's trajectory, ``batch.row_trajectories(unit)``).
    ``trajectory``: the episode's reward (its env return less the penalty of every invalid turn). ``turn``: the
    episode's env return less the penalty of that turn only, as the HölderPO authors' per-turn ALFWorld code has
    it (verl-agent puts the penalty on the invalid turn's own reward), so an invalid turn ranks below the valid
    turns of its own episode and the number of invalid turns does not rank whole episodes."""
    from trainers.advantages import turn_row_rewards

    trajs = batch.trajectories
    if unit == "trajectory":
        return [trajs[k].reward for k in owners]
    if [k for k, t in enumerate(trajs) for _ in t.turns] != list(owners):
        raise ValueError(f"turn rows must be the turns in order, one per_step sequence each; got rows of trajectories "
                         f"{list(owners)[:20]} for turn counts {[t.num_turns for t in trajs][:20]}")
    return turn_row_rewards(trajs, invalid_action_penalty)


def row_advantages(cfg: Config, batch):
    """Group-relative advantages, one per loss row (``TrajectoryBatch.rows``): per trajectory, or with
    ``algo.ratio_unit=turn`` per turn, each turn carrying its episode's reward (:func:`row_rewards`) and
    normalised over all turn rows of its group (so a long episode weighs more, as in the HölderPO authors'
    per-turn ALFWorld code)."""
    import torch

    from trainers.advantages import TURN_ADVANTAGES, compute_advantages

    if cfg.algo.advantage in TURN_ADVANTAGES:  # estimators that see each turn (GiGPO's anchor states)
        return TURN_ADVANTAGES.get(cfg.algo.advantage)(
            batch, gamma=cfg.algo.gigpo_gamma, omega=cfg.algo.gigpo_omega,
            invalid_action_penalty=cfg.rollout.invalid_action_penalty, episode=cfg.algo.gigpo_episode,
            norm=cfg.algo.gigpo_norm)
    owners = batch.row_trajectories(cfg.algo.ratio_unit)  # [R]
    rewards = torch.tensor(row_rewards(batch, owners, cfg.algo.ratio_unit, cfg.rollout.invalid_action_penalty),
                           dtype=torch.float32)  # [R]
    group_of = batch.group_ids  # [B] (a property that walks the batch: read once)
    groups = torch.tensor([group_of[k] for k in owners])  # [R]
    advantages = compute_advantages(cfg.algo.advantage, rewards, groups)  # [R]
    if cfg.algo.ratio_unit == "trajectory":
        batch.advantages = advantages.tolist()
    return advantages


def informative_groups(cfg: Config, trajectories) -> list[list]:
    """The groups (in order of first appearance) with signal: some loss row of theirs gets a non-zero advantage
    from ``algo.advantage`` (DAPO drops the others because they add no gradient). For the episode-level
    estimators that is "rewards not all equal"; per-turn rows (``ratio_unit=turn``: only an invalid turn carries
    its penalty) and GiGPO's step advantages (an all-won group whose episodes took different paths) can have
    signal where every episode's reward is the same, and such a group is kept."""
    from agent_rl.types import TrajectoryBatch

    groups: dict[str, list] = {}
    for t in trajectories:
        groups.setdefault(t.group_id, []).append(t)
    # Advantages are relative within a group, so one group alone gets the values it has in the whole batch.
    # 1e-6: a group of equal rewards can come out at float rounding (~1e-8) instead of exactly 0.
    return [g for g in groups.values() if bool((row_advantages(cfg, TrajectoryBatch(list(g))).abs() > 1e-6).any())]
