"""Multi-turn rollouts: B tasks × G episodes played against an env pool (env → rollout → trajectory batch).

    TaskSpec ×B --reset (G identical starts each)--> EnvPool
    loop: observations --prompts.render--> prompt ids --Policy.generate (one batch for every live
          episode)--> replies --prompts.parse--> actions --EnvPool.step--> observations, rewards
    → one :class:`~agent_rl.types.Trajectory` per episode (+ ``rollout/*`` metrics)

Each turn generates for *all* live episodes in one ``policy.generate`` call, so the
model runs one batch per turn instead of one per episode. When there are more
episodes than pool envs, a finished episode's env is reset for the next one waiting.

With ``overlap_env_steps`` the live episodes are split into two lanes by env worker and the turns
alternate between them: while one lane's actions are stepped in the pool (a background thread waits
on the workers), the other lane's prompts are rendered and generated, so env time hides behind
generation time. Each generate call then holds about half the episodes.

Two prompt modes (see :mod:`agent_rl.types`): ``per_step`` renders a fresh prompt
each turn with the last ``history_k`` (observation, action) pairs, dropping older
pairs first when it exceeds ``max_prompt_tokens`` (never the instruction);
``conversation`` keeps the whole episode as one growing chat, and each Turn stores
only its new prompt tokens. An episode ends when the env terminates it, at
``max_turns`` (truncated), when its prompt no longer fits (truncated,
``info["truncated_reason"] = "context_full"``), or when the env fails
(truncated, ``info["error"]``): failures are recorded, never dropped here; the trainer leaves
their groups out of the update (:func:`drop_failed_groups`).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from agent_rl.types import PROMPT_MODES, TaskSpec, Trajectory, Turn
from prompts.render import ConversationTokens, PromptContext, chat_prompt_ids, get_template
from trainers.policies.base import Generation, SamplingParams
from trainers.rollout_stats import RolloutStats, progress_bar

log = logging.getLogger(__name__)
_RUN_IDS = itertools.count()


@dataclass
class _Episode:
    """Mutable state of one episode while it is being played."""

    traj: Trajectory
    spec: TaskSpec
    slot: int = -1  # pool env index while live
    observation: str = ""
    initial_observation: str = ""
    task: str = ""
    admissible: list[str] | None = None
    history: list[tuple[str, str]] = field(default_factory=list)
    conversation: list[int] = field(default_factory=list)  # every token so far (conversation mode)
    last_response: list[int] = field(default_factory=list)
    env_return: float = 0.0
    expert_action: str | None = None  # the expert's label for the current state (with an ExpertMix)
    prompt_text: str = ""  # this turn's rendered user message (kept for demonstrations)

    def context(self) -> PromptContext:
        return PromptContext(self.task, self.observation, self.history, self.admissible, self.initial_observation)


class RolloutEngine:
    """Plays groups of episodes with a :class:`~trainers.policies.base.Policy` on an env pool.

    Args:
        policy: anything with ``tokenizer`` and ``generate(prompt_ids, SamplingParams)``.
        pool: an :class:`envs.pool.EnvPool` (or same interface); the engine never closes it.
        max_turns: agent turns before an episode is truncated.
        sampling: per-turn sampling (``n`` is ignored: the G samples are separate episodes;
            ``stop`` defaults to the template's stop strings, e.g. ``</action>``).
        history_k: (observation, action) pairs in ``per_step`` prompts (paper: 2).
        prompt_mode: ``per_step`` or ``conversation``.
        max_prompt_tokens: prompt budget per turn (``conversation``: the whole chat so far).
        invalid_action_penalty: subtracted from the return for each unparseable reply.
        template: a template name/object; default ``env.unwrapped.metadata["prompt_template"]``.
        progress: show a tqdm bar (episodes done, turns, tokens/s).
        expert: a :class:`trainers.demonstrations.ExpertMix` (expert demonstrations and DAgger): every
            turn records the expert's action for its state (``turn.info["expert_label"]``, read from the
            env's ``info["expert_action"]``) and the rendered prompt (``turn.info["prompt_text"]``), and the expert's reply is played instead of the policy's with
            probability ``expert.beta``. None (training, eval): the policy plays every turn.
        constrain_actions: every reply is one of the env's admissible actions (``info["admissible_commands"]``)
            in the template's reply format: the policy's tokens are masked to those strings while sampling
            (vLLM structured outputs; a prefix tree in hf), so no reply is invalid and greedy plays the
            admissible action the model ranks first. Needs an action-only template (``alfworld_act``).
        overlap_env_steps: overlap one lane's env steps with the other lane's generation (module docstring);
            needs a pool with at least two workers (``pool.worker_of``).
        lowercase_actions: lowercase what a reply parses to before the env gets it and the history shows it (the
            HölderPO authors' ALFWorld code does; ALFWorld's commands are all lowercase, other envs may not be).
        parser: a :data:`prompts.parse.PARSERS` name that reads the replies instead of the template's own
            (``verl_agent``: verl-agent's ALFWorld rules); None keeps the template's.
    """

    def __init__(
        self,
        policy: Any,
        pool: Any,
        *,
        max_turns: int = 50,
        sampling: SamplingParams | None = None,
        history_k: int = 2,
        prompt_mode: str = "per_step",
        max_prompt_tokens: int = 2048,
        invalid_action_penalty: float = 0.1,
        template: Any = None,
        progress: bool = True,
        expert: Any = None,
        constrain_actions: bool = False,
        overlap_env_steps: bool = False,
        lowercase_actions: bool = False,
        parser: str | None = None,
    ):
        if prompt_mode not in PROMPT_MODES:
            raise ValueError(f"prompt_mode must be one of {PROMPT_MODES}, got {prompt_mode!r}")
        if max_turns < 1 or history_k < 0 or max_prompt_tokens < 1:
            raise ValueError(
                f"need max_turns >= 1, history_k >= 0, max_prompt_tokens >= 1; got {max_turns}, {history_k}, "
                f"{max_prompt_tokens}"
            )
        self.policy = policy
        self.pool = pool
        self.max_turns = max_turns
        self.sampling = sampling or SamplingParams()
        self.history_k = history_k
        self.prompt_mode = prompt_mode
        self.max_prompt_tokens = max_prompt_tokens
        self.invalid_action_penalty = invalid_action_penalty
        self.lowercase_actions = lowercase_actions
        self.template = get_template(template if template is not None else self._env_template_name())
        if parser is not None and parser != self.template.parser:
            # a copy, so the registered template keeps its parser; its reply format is re-checked against this one
            self.template = dataclasses.replace(self.template, parser=parser)
        self.progress = progress
        self.expert = expert
        if expert is not None:
            if prompt_mode != "per_step":
                raise ValueError("expert demonstrations need prompt_mode='per_step': each turn is one prompt "
                                 "and one reply, the unit SFT trains on")
            self.template.format_reply("look")  # a template without a demonstration format fails here
        self.constrain_actions = bool(constrain_actions)
        if self.constrain_actions and self.template.reply is None:
            raise ValueError(
                f"constrain_actions needs a template whose reply is the action alone, so that the allowed replies "
                f"can be written out; template {self.template.name!r} asks for reasoning first. Fix: "
                f"rollout.template=alfworld_act (or eval --template alfworld_act), or constrain_actions=false"
            )
        self.overlap_env_steps = bool(overlap_env_steps)
        if self.overlap_env_steps and self._lane(0) is None:
            raise ValueError(
                f"overlap_env_steps needs an env pool with at least two worker processes or actors, so that one "
                f"lane's env steps can run while the other generates; this pool has "
                f"{getattr(pool, 'num_workers', 'no')} workers. Fix: env.num_workers=2 (or more), or "
                f"rollout.overlap_env_steps=false"
            )
        self._conversation = ConversationTokens(policy.tokenizer) if prompt_mode == "conversation" else None
        self._calls = 0

    def _env_template_name(self) -> str:
        get_attr = getattr(self.pool, "get_attr", None)
        metadata = get_attr("metadata", 0) if get_attr else None
        return (metadata or {}).get("prompt_template") or "generic"

    # ------------------------------------------------------------------ run

    def run(
        self,
        tasks: Sequence[TaskSpec],
        group_size: int,
        on_episode: Callable[[Trajectory, int, int], None] | None = None,
    ) -> tuple[list[Trajectory], dict[str, float]]:
        """Play ``group_size`` episodes from each task's identical start state.

        Returns the trajectories in task order, the G members of a task together,
        and ``rollout/*`` metrics.

        ``on_episode(trajectory, task_index, member)``, if given, is called the moment an
        episode ends (a failed reset included), in finish order, with its index into
        ``tasks`` and its group member index; its trajectory is final (reward set) and is the
        same object returned at the end, so it must not be changed. An exception from the
        callback stops the run. The eval uses it to write each episode as it finishes.
        """
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        if not all(isinstance(t, TaskSpec) for t in tasks):
            raise TypeError("RolloutEngine.run(tasks=...) takes agent_rl.types.TaskSpec objects")
        run_id = next(_RUN_IDS)
        episodes = [
            _Episode(
                Trajectory(
                    traj_id=f"{run_id}:{i}:{g}",
                    group_id=f"{run_id}:{i}",
                    task_id=spec.task_id,
                    prompt_mode=self.prompt_mode,  # type: ignore[arg-type]
                ),
                spec,
            )
            for i, spec in enumerate(tasks)
            for g in range(group_size)
        ]
        stats = RolloutStats(start=time.perf_counter())
        waiting = deque(episodes)
        free = deque(range(self.pool.num_envs))
        live: list[_Episode] = []
        bar = progress_bar(len(episodes), self.progress)
        # _finish reports through self._on_episode (set only during this run), so the
        # reset and turn paths that end episodes need no callback argument of their own.
        where = {id(ep): divmod(k, group_size) for k, ep in enumerate(episodes)}  # (task index, member)
        self._on_episode = None if on_episode is None else (lambda ep: on_episode(ep.traj, *where[id(ep)]))
        try:
            if self.overlap_env_steps:
                self._play_overlapped(waiting, free, live, stats, bar)
            while waiting or live:
                live += self._start(waiting, free, stats, bar)
                if not live:
                    continue
                self._retire(self._turn(live, stats), live, free, stats, bar)
        finally:
            self._on_episode = None
            if bar is not None:
                bar.close()
        trajectories = [ep.traj for ep in episodes]
        return trajectories, stats.metrics(trajectories)

    def _retire(self, finished: list[_Episode], live: list[_Episode], free: deque, stats: RolloutStats, bar) -> None:
        """Finished episodes leave ``live`` and give their env back to ``free``."""
        for ep in finished:
            live.remove(ep)
            free.append(ep.slot)
            self._finish(ep, bar, stats)
        if bar is not None:
            bar.set_postfix(turns=stats.turns, tok_s=f"{stats.tokens_per_s():.0f}", refresh=False)

    def _lane(self, slot: int) -> int | None:
        """The overlap lane of an env: its worker's parity (lanes never share a worker), or None when the pool
        has fewer than two workers."""
        worker_of = getattr(self.pool, "worker_of", None)
        if worker_of is None or getattr(self.pool, "num_workers", 0) < 2:
            return None
        return worker_of(slot) % 2

    def _play_overlapped(self, waiting: deque, free: deque, live: list[_Episode], stats: RolloutStats, bar) -> None:
        """Every episode, the two lanes taking turns: lane k's step runs in the pool while lane 1−k generates.
        Resets and steps of one lane only touch its own workers, so the two never share a worker's pipe."""
        from concurrent.futures import ThreadPoolExecutor

        pending: dict[int, tuple] = {}  # lane → (its step in flight, stepping episodes, their turns, actions)
        lane = 0
        with ThreadPoolExecutor(2, thread_name_prefix="env-step") as steps:  # a lane's step never waits on the other's
            try:
                while waiting or live or pending:
                    if lane in pending:  # the step that ran during the other lane's generation
                        future, stepping, turns, actions = pending.pop(lane)
                        t0 = time.perf_counter()
                        results, busy = future.result()
                        stats.env_s += time.perf_counter() - t0  # only the wait that generation did not hide
                        stats.env_busy_s += busy
                        self._retire(self._observe(stepping, turns, actions, results, stats), live, free, stats, bar)
                    mine = deque(s for s in free if self._lane(s) == lane)
                    for s in mine:
                        free.remove(s)
                    live += self._start(waiting, mine, stats, bar)
                    free.extend(mine)  # slots left unused (or whose reset failed)
                    acting = [ep for ep in live if self._lane(ep.slot) == lane]
                    if acting:
                        finished, stepping, actions, turns = self._act(acting, stats)
                        self._retire(finished, live, free, stats, bar)
                        if stepping:
                            pending[lane] = (steps.submit(self._timed_step, actions), stepping, turns, actions)
                    lane = 1 - lane
            finally:
                for future, *_ in pending.values():  # never leave a step in flight on the pool
                    future.exception()

    def _timed_step(self, actions: list):
        t0 = time.perf_counter()
        results = self.pool.step(actions)
        return results, time.perf_counter() - t0

    def _start(self, waiting: deque, free: deque, stats: RolloutStats, bar) -> list[_Episode]:
        """Reset a free env for each waiting episode; an env that fails to reset ends its episode."""
        starting = []
        while waiting and free:
            ep = waiting.popleft()
            ep.slot = free.popleft()
            starting.append(ep)
        if not starting:
            return []
        t0 = time.perf_counter()
        results = self.pool.reset([(ep.slot, ep.spec.seed, dict(ep.spec.options)) for ep in starting])
        waited = time.perf_counter() - t0
        stats.env_s += waited
        stats.env_busy_s += waited  # nothing overlapped it
        started = []
        for ep, res in zip(starting, results):
            if res.error:
                ep.traj.truncated = True
                ep.traj.info.update(error=res.error, failed_at="reset")
                free.append(ep.slot)
                self._finish(ep, bar, stats)
                continue
            info = dict(res.info)
            ep.observation = ep.initial_observation = res.observation
            ep.task = str(info.get("task", ""))
            ep.admissible = info.get("admissible_commands")
            ep.expert_action = info.get("expert_action")
            ep.traj.info.update(task=ep.task, task_type=info.get("task_type"))
            if info.get("task_id") is not None:
                ep.traj.info["env_task_id"] = info["task_id"]
            started.append(ep)
        return started

    def _prompt(self, ep: _Episode) -> list[int] | None:
        """This turn's new prompt tokens, or None when the episode no longer fits."""
        tok = self.policy.tokenizer
        ctx = ep.context()
        if self.prompt_mode == "conversation":
            if not ep.traj.turns:
                ids = self._conversation.first(self.template.render_first(ctx))
            else:
                ids = self._conversation.next(self.template.render_turn(ctx), ep.last_response)
            return ids if len(ep.conversation) + len(ids) <= self.max_prompt_tokens else None
        # per_step: shed the oldest history pairs until the prompt fits.
        for k in range(min(self.history_k, len(ep.history)), -1, -1):
            ep.prompt_text = self.template.render_per_step(ctx, k)
            ids = chat_prompt_ids(tok, ep.prompt_text)
            if len(ids) <= self.max_prompt_tokens:
                if k < min(self.history_k, len(ep.history)):
                    ep.traj.info["history_cut_turns"] = ep.traj.info.get("history_cut_turns", 0) + 1
                return ids
        return None

    def _turn(self, live: list[_Episode], stats: RolloutStats) -> list[_Episode]:
        """One turn for every live episode: prompts → one generate call → one pool step."""
        finished, stepping, actions, turns = self._act(live, stats)
        if stepping:
            t0 = time.perf_counter()
            results = self.pool.step(actions)
            waited = time.perf_counter() - t0
            stats.env_s += waited
            stats.env_busy_s += waited  # nothing overlapped it
            finished += self._observe(stepping, turns, actions, results, stats)
        return finished

    def _act(self, live: list[_Episode], stats: RolloutStats):
        """Prompts → one generate call → parsed actions. Returns (episodes that ended without acting, episodes
        that act, their (slot, action) pairs for the pool, their turns)."""
        finished: list[_Episode] = []
        acting, prompts, new_ids = [], [], []
        for ep in live:
            ids = self._prompt(ep)
            if ids is None:
                self._truncate(ep, "context_full")
                finished.append(ep)
                continue
            full = ep.conversation + ids if self.prompt_mode == "conversation" else ids
            acting.append(ep)
            prompts.append(full)
            new_ids.append(ids)
        if not acting:
            return finished, [], [], []

        params = dataclasses.replace(
            self.sampling,
            n=1,
            stop=self.sampling.stop if self.sampling.stop is not None else self.template.stop,
            seed=None if self.sampling.seed is None else self.sampling.seed + self._calls,
        )
        self._calls += 1
        t0 = time.perf_counter()
        generations = self._replies(acting, prompts, params, self._choices(acting))
        stats.gen_s += time.perf_counter() - t0

        stepping, actions, turns = [], [], []
        for ep, ids, full, row in zip(acting, new_ids, prompts, generations):
            gen = row[0]
            stats.prompt_tokens += len(full)
            if not gen.token_ids:  # the model's context is full (or no expert action): nothing was generated
                self._truncate(ep, "no_expert_action" if gen.finish_reason == "no_expert_action" else "context_full")
                finished.append(ep)
                continue
            stats.gen_tokens += len(gen.token_ids)
            parsed = self.template.parse(gen.text)
            if self.lowercase_actions:  # what the env is sent and the history shows, valid or not
                parsed.env_action = parsed.env_action.lower()
                parsed.action = None if parsed.action is None else parsed.action.lower()
            turn = Turn(
                observation=ep.observation,
                prompt_ids=list(ids),
                response_ids=list(gen.token_ids),
                response_logprobs=list(gen.logprobs),
                response_text=gen.text,
                action=parsed.action,
                action_valid=parsed.valid,
                info={"finish_reason": gen.finish_reason},
            )
            if not parsed.valid:
                turn.info["parse_error"] = parsed.error
            if self.expert is not None:  # a demonstration turn: the state's label and how it was shown
                turn.info.update(expert_label=ep.expert_action, prompt_text=ep.prompt_text,
                                 actor="expert" if gen.finish_reason == "expert" else "policy")
            if self.prompt_mode == "conversation":
                ep.conversation += list(ids) + list(gen.token_ids)
            ep.last_response = list(gen.token_ids)
            stepping.append(ep)
            actions.append((ep.slot, parsed.env_action))
            turns.append(turn)
        return finished, stepping, actions, turns

    def _observe(self, stepping: list[_Episode], turns: list[Turn], actions: list, results: list,
                 stats: RolloutStats) -> list[_Episode]:
        """The pool's answers to ``actions``: each turn recorded, each episode advanced; returns those that ended."""
        finished: list[_Episode] = []
        for ep, turn, res, (_, sent) in zip(stepping, turns, results, actions):
            stats.turns += 1
            turn.reward, error = float(res.reward), res.error
            if not math.isfinite(turn.reward) and not error:  # the env's fault: its group is left out, as on a crash
                error = (f"the env returned a non-finite reward ({turn.reward}) for action {sent!r}; a NaN or inf "
                         f"would zero every advantage of its group")
                turn.reward = 0.0
            turn.info.update(res.info)
            if turn.action is None:
                turn.info["sent_action"] = sent
            ep.traj.turns.append(turn)
            ep.env_return += turn.reward
            ep.history.append((ep.observation, turn.action if turn.action is not None else sent))
            ep.observation = res.observation
            ep.admissible = res.info.get("admissible_commands", ep.admissible)
            ep.expert_action = res.info.get("expert_action")
            ep.traj.won = bool(res.info.get("won", ep.traj.won)) and not error
            if error:
                ep.traj.truncated = True
                ep.traj.info.update(error=error, failed_at=f"turn {len(ep.traj.turns)}")
                finished.append(ep)
            elif res.terminated or res.truncated:
                ep.traj.terminated, ep.traj.truncated = bool(res.terminated), bool(res.truncated)
                if res.truncated and not res.terminated:
                    ep.traj.info["truncated_reason"] = "env"
                finished.append(ep)
            elif len(ep.traj.turns) >= self.max_turns:
                self._truncate(ep, "max_turns")
                finished.append(ep)
        return finished

    def _choices(self, acting: list[_Episode]) -> list[list[str]] | None:
        """With ``constrain_actions``: each episode's allowed replies (its admissible actions in the
        template's reply format); else None."""
        if not self.constrain_actions:
            return None
        out = []
        for ep in acting:
            if not ep.admissible:
                raise ValueError(
                    f"constrain_actions: the env gave no admissible actions for task {ep.spec.task_id!r} at turn "
                    f"{len(ep.traj.turns)} (info['admissible_commands'] is {ep.admissible!r}); only envs that "
                    f"list them (ALFWorld) can be constrained. Fix: constrain_actions=false for this env"
                )
            out.append([self.template.format_reply(a) for a in ep.admissible])
        return out

    def _generate(self, prompts: list[list[int]], params: SamplingParams, choices: list[list[str]] | None):
        if choices is None:  # policies written before choices existed keep working unconstrained
            return self.policy.generate(prompts, params)
        return self.policy.generate(prompts, params, choices=choices)

    def _replies(self, acting: list[_Episode], prompts: list[list[int]], params: SamplingParams,
                 choices: list[list[str]] | None = None):
        """One generation per acting episode: the policy's, or (with an ExpertMix, for the turns it
        hands to the expert) the expert's action written in the template's reply format."""
        if self.expert is None:
            return self._generate(prompts, params, choices)
        # "expert": play the expert's action; "none": the expert has none for this state (it gave
        # up, e.g. a planner timeout) and pure demonstrations (beta = 1) never ask the model, so the
        # episode ends; "policy": the model replies (its share of DAgger's mixture).
        who = []
        for ep in acting:
            expert_turn = self.expert.takes_turn()
            if expert_turn and ep.expert_action is not None:
                who.append("expert")
            else:
                who.append("none" if expert_turn and self.expert.beta >= 1.0 else "policy")
        asked = [i for i, w in enumerate(who) if w == "policy"]
        asked_choices = None if choices is None else [choices[i] for i in asked]
        generated = iter(self._generate([prompts[i] for i in asked], params, asked_choices) if asked else [])
        out = []
        for ep, w in zip(acting, who):
            if w == "policy":
                out.append(next(generated))
                continue
            if w == "none":
                out.append([Generation([], [], "", "no_expert_action")])
                continue
            text = self.template.format_reply(ep.expert_action)
            ids = list(self.policy.tokenizer(text, add_special_tokens=False)["input_ids"])
            out.append([Generation(ids, [0.0] * len(ids), text, "expert")])  # logprobs unused: never RL data
        return out

    @staticmethod
    def _truncate(ep: _Episode, reason: str) -> None:
        ep.traj.truncated = True
        ep.traj.info["truncated_reason"] = reason

    def _finish(self, ep: _Episode, bar, stats: RolloutStats) -> None:
        ep.traj.reward = ep.env_return - self.invalid_action_penalty * ep.traj.num_invalid_actions
        ep.traj.info["env_return"] = ep.env_return
        stats.done += 1
        if bar is not None:
            bar.update(1)
        if self._on_episode is not None:  # the episode is final now: report it (see run's on_episode)
            self._on_episode(ep)


def drop_failed_groups(trajectories: list[Trajectory]) -> tuple[list[Trajectory], int]:
    """The training batch without the groups that had an env/worker failure (``info["error"]``): an
    infrastructure fault is not the policy's doing, and a group missing a member's true return has a
    biased baseline for the others. Returns (kept, number of episodes dropped)."""
    failed = {t.group_id for t in trajectories if "error" in t.info}
    kept = [t for t in trajectories if t.group_id not in failed]
    if failed:
        log.warning("dropped %d group(s) (%d episodes) with an env/worker failure from this training step",
                    len(failed), len(trajectories) - len(kept))
    return kept, len(trajectories) - len(kept)
