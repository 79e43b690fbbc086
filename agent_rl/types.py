"""Typed objects that cross the arrows of the data flow.

    env --Turn--> rollout --Trajectory--> TrajectoryBatch --advantages--> Hölder loss --LossOutput--> optimizer

* :class:`Turn` is one agent step: what the model saw, what it generated (token ids
  and their sampling logprobs) and what the environment answered.
* :class:`Trajectory` is one episode: all its turns, the return, whether it was won,
  and the group it belongs to (the G members of a group start from the same state).
* :class:`Sequence` is one model input for the learner: token ids and a mask of the
  agent tokens. In ``per_step`` prompt mode every turn is its own sequence (a prompt
  with a history window, then the response); in ``conversation`` mode the whole
  episode is one sequence. Either way the learner aggregates per trajectory.
* :class:`TrajectoryBatch` is the learner's input: B trajectories and their groups.
* :class:`LossOutput` is what a policy loss returns.

Plain Python lists inside a trajectory (so workers can pickle them cheaply); tensors
appear only once the learner packs a batch.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal

PromptMode = Literal["per_step", "conversation"]
PROMPT_MODES: tuple[str, ...] = ("per_step", "conversation")
LOOP_MIN_STEPS = 4  # in 2-3 turns a repeat is as likely a plan as a loop (go to, take, go to)


def is_loop(won: bool, actions: Iterable[str]) -> bool:
    """A lost episode of at least :data:`LOOP_MIN_STEPS` turns that sent one action in half of them or more
    (``actions``: :attr:`Trajectory.actions`, as eval's episode records keep them). Greedy small policies fall
    into such loops (``go to X`` to the step limit) and RL can make them likelier; ``rollout/loop_rate`` and
    eval's ``loop_rate`` (each a share of all episodes) count them by this one rule."""
    counts = Counter(actions)
    steps = sum(counts.values())
    return not won and steps >= LOOP_MIN_STEPS and 2 * max(counts.values()) >= steps


@dataclass
class Turn:
    """One agent step.

    ``prompt_ids`` are the context tokens fed to the model at this step. In
    ``per_step`` mode they are the whole rendered prompt; in ``conversation`` mode only
    the tokens added since the previous response (the new observation, chat markup).
    ``response_ids`` are the agent tokens and ``response_logprobs`` their sampling
    logprobs (same length). ``action`` is what was sent to the environment, or
    ``None`` when the reply could not be parsed (then ``action_valid`` is False).
    """

    observation: str
    prompt_ids: list[int]
    response_ids: list[int]
    response_logprobs: list[float]
    response_text: str = ""
    action: str | None = None
    action_valid: bool = True
    reward: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.response_ids) != len(self.response_logprobs):
            raise ValueError(
                f"Turn.response_ids has {len(self.response_ids)} tokens but response_logprobs has "
                f"{len(self.response_logprobs)}; the rollout must return one logprob per generated token"
            )


@dataclass
class Sequence:
    """One learner input. ``input_ids``, ``loss_mask``, ``logprobs``: [L] each.

    ``loss_mask[t]`` is 1 where ``input_ids[t]`` is an agent token; ``logprobs[t]`` is
    its sampling logprob (0.0 elsewhere). ``traj_index`` ties it to its trajectory.
    """

    input_ids: list[int]
    loss_mask: list[int]
    logprobs: list[float]
    traj_index: int

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_agent_tokens(self) -> int:
        return int(sum(self.loss_mask))


@dataclass
class Trajectory:
    """One episode of one group member.

    ``reward`` is the episode return used for advantages (environment reward plus any
    invalid-action penalties); ``won`` is the environment's success flag.
    ``terminated``/``truncated`` keep Gymnasium's meaning (truncated: max turns or
    context full). ``group_id`` is shared by the G members started from one state.
    """

    traj_id: str
    group_id: str
    task_id: str
    turns: list[Turn] = field(default_factory=list)
    reward: float = 0.0
    won: bool = False
    terminated: bool = False
    truncated: bool = False
    prompt_mode: PromptMode = "per_step"
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_turns(self) -> int:
        return len(self.turns)

    @property
    def num_agent_tokens(self) -> int:
        return sum(len(t.response_ids) for t in self.turns)

    @property
    def num_invalid_actions(self) -> int:
        return sum(not t.action_valid for t in self.turns)

    @property
    def actions(self) -> list[str]:
        """Each turn's action, or its reply where none parsed (what eval's episode records keep)."""
        return [t.action if t.action is not None else t.response_text for t in self.turns]

    @property
    def looped(self) -> bool:
        """Lost while repeating one action (see :func:`is_loop`)."""
        return is_loop(self.won, self.actions)

    def sequences(self, traj_index: int = 0) -> list[Sequence]:
        """The learner's view of this episode (see :class:`Sequence`)."""
        if self.prompt_mode not in PROMPT_MODES:
            raise ValueError(f"Trajectory.prompt_mode must be one of {PROMPT_MODES}, got {self.prompt_mode!r}")
        out: list[Sequence] = []
        ids: list[int] = []
        mask: list[int] = []
        lps: list[float] = []
        for turn in self.turns:
            if self.prompt_mode == "per_step":
                ids, mask, lps = [], [], []
            ids += turn.prompt_ids + turn.response_ids
            mask += [0] * len(turn.prompt_ids) + [1] * len(turn.response_ids)
            lps += [0.0] * len(turn.prompt_ids) + list(turn.response_logprobs)
            if self.prompt_mode == "per_step":
                out.append(Sequence(ids, mask, lps, traj_index))
        if self.prompt_mode == "conversation" and ids:
            out.append(Sequence(ids, mask, lps, traj_index))
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Trajectory":
        d = dict(d)
        d["turns"] = [Turn(**t) for t in d.get("turns", [])]
        return cls(**d)


@dataclass
class TrajectoryBatch:
    """B trajectories for one learner step, with their group structure.

    ``advantages`` ([B], one per trajectory) is filled by an advantage estimator.
    """

    trajectories: list[Trajectory]
    advantages: list[float] | None = None

    def __len__(self) -> int:
        return len(self.trajectories)

    @property
    def rewards(self) -> list[float]:  # [B]
        return [t.reward for t in self.trajectories]

    @property
    def group_ids(self) -> list[int]:  # [B], dense ints in order of first appearance
        index: dict[str, int] = {}
        return [index.setdefault(t.group_id, len(index)) for t in self.trajectories]

    def sequences(self) -> list[Sequence]:
        return [s for i, t in enumerate(self.trajectories) for s in t.sequences(i)]

    def rows(self, unit: str = "trajectory", sequences: list[Sequence] | None = None) -> list[list[int]]:
        """The loss rows: for each, the indices (into :meth:`sequences`) of the sequences whose agent tokens form
        one ratio. ``trajectory``: one row per trajectory, all its turns (the default, M_p over the episode);
        ``turn``: one row per turn (``per_step`` prompts, where each turn is its own sequence).
        ``sequences``: :meth:`sequences` when the caller has built them already (they copy every token)."""
        seqs = self.sequences() if sequences is None else sequences
        if unit == "turn":
            if any(t.prompt_mode != "per_step" for t in self.trajectories):
                raise ValueError("ratio_unit='turn' needs per_step prompts (one sequence per turn); a conversation "
                                 "trajectory is one sequence. Fix: rollout.prompt_mode=per_step or ratio_unit=trajectory")
            return [[i] for i in range(len(seqs))]
        if unit != "trajectory":
            raise ValueError(f"ratio unit must be 'trajectory' or 'turn', got {unit!r}")
        rows: list[list[int]] = [[] for _ in self.trajectories]
        for i, s in enumerate(seqs):
            rows[s.traj_index].append(i)
        return rows

    def row_trajectories(self, unit: str = "trajectory") -> list[int]:  # [R]: the trajectory of each row
        seqs = self.sequences()
        return [seqs[r[0]].traj_index if r else k for k, r in enumerate(self.rows(unit, seqs))]


@dataclass
class LossOutput:
    """A policy loss: ``loss`` a scalar tensor to backprop, ``metrics`` floats to log."""

    loss: Any  # torch.Tensor, typed loosely so this module never imports torch
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskSpec:
    """Which start state an episode begins from: ``env.reset(seed=seed, options=options)``.

    All G members of a group get the identical TaskSpec, so they start from the same
    state. ``options`` uses each env's own keys (``{"game": i}``, ``{"problem": i}``)
    or the generic ``{"task": i}`` that every agent-rl env accepts.
    """

    task_id: str
    seed: int
    options: dict[str, Any] = field(default_factory=dict, hash=False, compare=True)
