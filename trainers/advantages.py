"""Advantage estimators: one advantage per trajectory from its group's rewards.

Data flow: trajectory batch → **advantages** → Hölder loss.

Each estimator maps ``rewards`` [B] and ``group_ids`` [B] (the G members of a group
share an id) to ``advantages`` [B]. A group whose rewards are all equal, and a group
of one, get 0: there is nothing to compare against.

* ``grpo``: (r − mean_g) / (std_g + eps), std with Bessel's correction (as TRL/verl)
* ``dr_grpo``: r − mean_g (Dr. GRPO drops the std normalisation)
* ``rloo``: r − mean of the *other* members (RLOO; equals G/(G − 1)·(r − mean_g))

Add one with ``@ADVANTAGES.register("name")``.

Per-turn estimators (``TURN_ADVANTAGES``, for ``algo.ratio_unit=turn``) see the whole batch and give one
advantage per turn row (``TrajectoryBatch.rows("turn")`` order):

* ``gigpo`` (GiGPO, Feng et al. 2025): A = A^E + ω·A^S. The episode part A^E is ``grpo`` over the group's
  trajectories, given to each of a trajectory's turns (the paper's Eq. 3); with ``episode="turn"`` it is
  verl-agent's code instead: ``grpo`` over the group's turn rows, each scored by :func:`turn_row_rewards`
  (verl-agent computes these stats "across steps" by default). The step part groups the turns of a group that acted
  on the same *anchor state* (identical observation text), and normalises their discounted returns
  R_t = Σ_k γ^(k−t) r_k within that anchor group as ``grpo`` does (``norm="mean"``: both parts subtract the
  mean only, as ``dr_grpo`` does: verl-agent's ``mode=mean_norm``); a state seen once gets A^S = 0. Step
  rewards r_t are the env's reward minus the invalid-action penalty on an invalid turn, so they sum to the
  trajectory's reward.
"""

from __future__ import annotations

from typing import Callable

import torch

from agent_rl.registry import Registry

AdvantageFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ADVANTAGES: Registry[AdvantageFn] = Registry("advantage estimator")


def _group_stats(rewards: torch.Tensor, group_ids: torch.Tensor):
    if rewards.dim() != 1 or group_ids.shape != rewards.shape:
        raise ValueError(
            f"rewards and group_ids must both be [B], got {tuple(rewards.shape)} and {tuple(group_ids.shape)}"
        )
    _, inverse = torch.unique(group_ids, return_inverse=True)  # [B]
    k = int(inverse.max()) + 1 if inverse.numel() else 0
    r = rewards.to(torch.float64)  # [B]
    count = torch.zeros(k, dtype=r.dtype).index_add_(0, inverse, torch.ones_like(r))  # [G_count]
    total = torch.zeros(k, dtype=r.dtype).index_add_(0, inverse, r)  # [G_count]
    mean = (total / count)[inverse]  # [B]
    sq = torch.zeros(k, dtype=r.dtype).index_add_(0, inverse, (r - mean) ** 2)  # [G_count]
    n = count[inverse]  # [B]
    var = sq[inverse] / (n - 1).clamp_min(1)  # [B]
    return r, mean, var.sqrt(), n, total[inverse]


def _zero_degenerate(adv: torch.Tensor, std: torch.Tensor, n: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    adv = torch.where((n > 1) & (std > 1e-12), adv, torch.zeros_like(adv))
    return adv.to(like.dtype if like.is_floating_point() else torch.float32)


@ADVANTAGES.register("grpo")
def grpo_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    r, mean, std, n, _ = _group_stats(rewards, group_ids)
    return _zero_degenerate((r - mean) / (std + eps), std, n, rewards)


@ADVANTAGES.register("dr_grpo")
def dr_grpo_advantages(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    r, mean, std, n, _ = _group_stats(rewards, group_ids)
    return _zero_degenerate(r - mean, std, n, rewards)


@ADVANTAGES.register("rloo")
def rloo_advantages(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    r, _, std, n, total = _group_stats(rewards, group_ids)
    others_mean = (total - r) / (n - 1).clamp_min(1)  # [B]
    return _zero_degenerate(r - others_mean, std, n, rewards)


def compute_advantages(name: str, rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """``ADVANTAGES.get(name)(rewards, group_ids)``: [B] → [B]."""
    return ADVANTAGES.get(name)(rewards, group_ids)


TURN_ADVANTAGES: Registry[Callable[..., torch.Tensor]] = Registry("per-turn advantage estimator")
GIGPO_EPISODE = ("trajectory", "turn")  # what GiGPO's episode part normalises over (gigpo_advantages)
# How both GiGPO parts normalise: "std", (x − mean) / std (the paper's F_norm; verl-agent's ALFWorld script,
# gigpo.mode=mean_std_norm); "mean", x − mean only (gigpo.mode=mean_norm, in verl-agent's scripts for other envs).
GIGPO_NORM = {"std": grpo_advantages, "mean": dr_grpo_advantages}


def turn_row_rewards(trajectories, invalid_action_penalty: float) -> list[float]:
    """One reward per turn row [R], turns in order: the episode's env return less the penalty of that turn only,
    where the HölderPO authors' and verl-agent's code put it (on the invalid turn's own reward). ``t.reward`` is
    the env return less every penalty of the episode, so the others are added back."""
    return [t.reward + invalid_action_penalty * (t.num_invalid_actions - (not turn.action_valid))
            for t in trajectories for turn in t.turns]


@TURN_ADVANTAGES.register("gigpo")
def gigpo_advantages(batch, *, gamma: float = 0.95, omega: float = 1.0, invalid_action_penalty: float = 0.0,
                     episode: str = "trajectory", norm: str = "std") -> torch.Tensor:
    """GiGPO advantages, one per turn row of ``batch`` (a ``TrajectoryBatch`` of per_step trajectories);
    ``episode``: what the episode part normalises over; ``norm``: how both parts normalise
    (:data:`GIGPO_NORM`; module docstring)."""
    trajs = batch.trajectories
    if any(t.prompt_mode != "per_step" for t in trajs):
        raise ValueError("gigpo needs one sequence per turn (rollout.prompt_mode=per_step)")
    if episode not in GIGPO_EPISODE:
        raise ValueError(f"gigpo episode must be one of {GIGPO_EPISODE}, got {episode!r}")
    if norm not in GIGPO_NORM:
        raise ValueError(f"gigpo norm must be one of {tuple(GIGPO_NORM)}, got {norm!r}")
    relative = GIGPO_NORM[norm]
    group_ids = torch.tensor(batch.group_ids)  # [B]
    owner, returns, anchors = [], [], []
    anchor_index: dict[tuple[int, str], int] = {}
    for k, t in enumerate(trajs):
        rewards = [turn.reward - invalid_action_penalty * (not turn.action_valid) for turn in t.turns]
        running, ret = 0.0, [0.0] * len(rewards)
        for i in range(len(rewards) - 1, -1, -1):  # discounted return from each turn on
            running = rewards[i] + gamma * running
            ret[i] = running
        for turn, r in zip(t.turns, ret):
            owner.append(k)
            returns.append(r)
            anchors.append(anchor_index.setdefault((int(group_ids[k]), turn.observation), len(anchor_index)))
    owner_t = torch.tensor(owner, dtype=torch.long)  # [R]
    step = relative(torch.tensor(returns, dtype=torch.float64), torch.tensor(anchors))  # [R]
    if episode == "turn":  # verl-agent: each turn row's own score, stats over the group's turn rows
        scores = torch.tensor(turn_row_rewards(trajs, invalid_action_penalty), dtype=torch.float64)  # [R]
        episode_rows = relative(scores, group_ids[owner_t])  # [R]
    else:  # the paper: one score per trajectory, stats over the group's trajectories
        rewards_t = torch.tensor([t.reward for t in trajs], dtype=torch.float64)  # [B]
        episode_rows = relative(rewards_t, group_ids)[owner_t]  # [R]
    return (episode_rows + omega * step).float()  # [R]
