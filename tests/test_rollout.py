"""Rollout engine on the real EnvPool with a small in-test text env; scripted and tiny-model policies."""

from __future__ import annotations

import math
import re

import gymnasium
import pytest

from agent_rl.types import TaskSpec, TrajectoryBatch
from envs.pool import EnvPool
from envs.spaces import UnicodeText
from prompts.render import get_template
from trainers.models import build_tiny_model
from trainers.policies import Generation, SamplingParams, make_policy
from trainers.rollout import RolloutEngine

COLORS = ["red", "blue", "green", "gold"]


class DoorRoomEnv(gymnasium.Env):
    """Test env: open the door of the task's colour. ``crash`` raises (an env failure); ``nan`` is rewarded NaN."""

    metadata = {"render_modes": [], "prompt_template": "generic"}

    def __init__(self):
        self.observation_space = UnicodeText()
        self.action_space = UnicodeText()
        self.num_tasks = len(COLORS)
        self.task_ids = [f"door-{c}" for c in COLORS]

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        options = options or {}
        self.task = options.get("task", int(self.np_random.integers(self.num_tasks)))
        self.room = int(self.np_random.integers(1000))  # seed-dependent start state
        return f"You are in room {self.room}. Doors: {', '.join(COLORS)}.", self._info(won=False)

    def _info(self, won, valid=True):
        return {
            "task": f"open the {COLORS[self.task]} door",
            "task_id": self.task_ids[self.task],
            "task_type": "door",
            "won": won,
            "action_valid": valid,
            "admissible_commands": ["look"] + [f"open {c} door" for c in COLORS],
        }

    def step(self, action):
        if action == "crash":
            raise RuntimeError("the door env crashed")
        if action == "nan":  # a broken reward function
            return "Nothing happens.", float("nan"), False, False, self._info(False)
        if action == f"open {COLORS[self.task]} door":
            return "The door opens. You win.", 1.0, True, False, self._info(won=True)
        valid = action == "look" or action.startswith("open ")
        return "Nothing happens." if action != "look" else f"Room {self.room}.", 0.0, False, False, self._info(
            False, valid
        )


ENV_ID = "agent_rl_test/DoorRoom-v0"
if ENV_ID not in gymnasium.registry:
    gymnasium.register(ENV_ID, entry_point=DoorRoomEnv, disable_env_checker=True)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(build_tiny_model(tmp_path_factory.mktemp("tok")))


class ScriptedPolicy:
    """A Policy whose reply is a function of the decoded prompt (a fake for unit tests)."""

    def __init__(self, tokenizer, script):
        self.tokenizer, self.script, self.calls = tokenizer, script, []

    def generate(self, prompts, params):
        self.calls.append(len(prompts))
        out = []
        for p in prompts:
            text = self.script(self.tokenizer.decode(p))
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
            out.append([Generation(ids, [-0.5] * len(ids), text, "stop")])
        return out

    def sync_weights(self, named_tensors):
        pass

    def close(self):
        pass


def _steps_taken(prompt: str) -> int:
    m = re.findall(r"already taken (\d+) step", prompt)
    return int(m[-1]) if m else 0


def _solver(prompt: str) -> str:
    """Turn 1: no tags (invalid). Turn 2: look. Turn 3: open the right door."""
    color = re.search(r"open the (\w+) door", prompt).group(1)
    step = _steps_taken(prompt)
    if step == 0:
        return "I think I should open a door"
    if step == 1:
        return "<think>look first</think><action>look</action>"
    return f"<think>my task says {color}</think><action>open {color} door</action>"


def test_groups_start_from_identical_states_and_play_to_the_end(tokenizer):
    policy = ScriptedPolicy(tokenizer, _solver)
    tasks = [TaskSpec("door-red", seed=11, options={"task": 0}), TaskSpec("door-gold", seed=12, options={"task": 3})]
    with EnvPool(ENV_ID, num_envs=6) as pool:
        engine = RolloutEngine(policy, pool, max_turns=5, progress=False)
        trajs, metrics = engine.run(tasks, group_size=3)
    assert len(trajs) == 6 and [t.task_id for t in trajs] == ["door-red"] * 3 + ["door-gold"] * 3
    assert len({t.group_id for t in trajs}) == 2 and len({t.traj_id for t in trajs}) == 6
    for group in (trajs[:3], trajs[3:]):
        assert len({t.group_id for t in group}) == 1
        assert len({t.turns[0].observation for t in group}) == 1  # same game, same seed → same start
        assert len({tuple(t.turns[0].prompt_ids) for t in group}) == 1
    assert trajs[0].turns[0].observation != trajs[3].turns[0].observation
    for t in trajs:
        assert t.won and t.terminated and not t.truncated and t.num_turns == 3
        assert [turn.action_valid for turn in t.turns] == [False, True, True]
        assert t.turns[0].action is None and t.turns[0].info["parse_error"] == "no <action>...</action> block"
        assert t.turns[0].info["sent_action"] == "I think I should open a door"
        assert t.reward == pytest.approx(1.0 - 0.1)  # env return minus one invalid-action penalty
        assert t.info["task"].startswith("open the") and t.info["task_type"] == "door"
    assert policy.calls == [6, 6, 6]  # every live episode batched into one generate call per turn
    assert metrics["rollout/success_rate"] == 1.0
    assert metrics["rollout/mean_turns"] == 3.0
    assert metrics["rollout/invalid_action_rate"] == pytest.approx(1 / 3)
    assert metrics["rollout/mean_return"] == pytest.approx(0.9)
    # The per-step prompt shows the history window and the current observation.
    last_prompt = tokenizer.decode(trajs[0].turns[2].prompt_ids)
    assert "already taken 2 step(s)" in last_prompt and "Action 2: 'look'" in last_prompt
    assert "Action 1: 'I think I should open a door'" in last_prompt


def test_learner_view_per_step(tokenizer):
    policy = ScriptedPolicy(tokenizer, _solver)
    with EnvPool(ENV_ID, num_envs=2) as pool:
        trajs, _ = RolloutEngine(policy, pool, max_turns=5, progress=False).run([TaskSpec("t", 1, {"task": 1})], 2)
    seqs = TrajectoryBatch(trajs).sequences()
    assert len(seqs) == 6 and [s.traj_index for s in seqs] == [0, 0, 0, 1, 1, 1]
    for seq, turn in zip(seqs[:3], trajs[0].turns):
        assert seq.input_ids == turn.prompt_ids + turn.response_ids
        assert sum(seq.loss_mask) == len(turn.response_ids) and seq.loss_mask[-1] == 1
        assert seq.logprobs[-len(turn.response_ids) :] == turn.response_logprobs


def test_max_turns_and_env_errors_are_truncations(tokenizer):
    def script(prompt):
        if "open the gold door" in prompt:
            return "<think>x</think><action>crash</action>"
        return "<think>x</think><action>look</action>"

    tasks = [TaskSpec("door-red", 1, {"task": 0}), TaskSpec("door-gold", 2, {"task": 3})]
    with EnvPool(ENV_ID, num_envs=4) as pool:
        trajs, metrics = RolloutEngine(ScriptedPolicy(tokenizer, script), pool, max_turns=4, progress=False).run(tasks, 2)
    for t in trajs[:2]:
        assert t.truncated and not t.terminated and not t.won and t.num_turns == 4
        assert t.info["truncated_reason"] == "max_turns" and t.reward == 0.0
    for t in trajs[2:]:
        assert t.truncated and not t.won and t.num_turns == 1
        assert "the door env crashed" in t.info["error"] and t.info["failed_at"] == "turn 1"
    assert metrics["rollout/error_rate"] == 0.5 and metrics["rollout/truncated_rate"] == 1.0
    # the red-door episodes sent `look` 4 times and lost: loops; the crashed ones played one turn
    assert [t.looped for t in trajs] == [True, True, False, False] and metrics["rollout/loop_rate"] == 0.5


def test_a_non_finite_reward_fails_its_episode_and_its_group_is_left_out(tokenizer):
    from trainers.rollout import drop_failed_groups

    def script(prompt):
        return f"<think>x</think><action>{'nan' if 'open the gold door' in prompt else 'look'}</action>"

    tasks = [TaskSpec("door-red", 1, {"task": 0}), TaskSpec("door-gold", 2, {"task": 3})]
    with EnvPool(ENV_ID, num_envs=4) as pool:
        trajs, _ = RolloutEngine(ScriptedPolicy(tokenizer, script), pool, max_turns=2, progress=False).run(tasks, 2)
    for t in trajs[2:]:
        assert "non-finite reward (nan)" in t.info["error"] and t.num_turns == 1 and t.reward == 0.0
    assert all(math.isfinite(t.reward) for t in trajs)
    kept, dropped = drop_failed_groups(trajs)
    assert kept == trajs[:2] and dropped == 2


def test_more_episodes_than_envs_reuses_env_slots(tokenizer):
    policy = ScriptedPolicy(tokenizer, _solver)
    tasks = [TaskSpec(f"t{i}", seed=i, options={"task": i % 4}) for i in range(3)]
    with EnvPool(ENV_ID, num_envs=4) as pool:
        trajs, metrics = RolloutEngine(policy, pool, max_turns=5, progress=False).run(tasks, group_size=3)
    assert len(trajs) == 9 and all(t.won for t in trajs)
    assert [t.task_id for t in trajs] == ["t0"] * 3 + ["t1"] * 3 + ["t2"] * 3
    for i in range(3):
        assert len({t.turns[0].observation for t in trajs[3 * i : 3 * i + 3]}) == 1
    assert max(policy.calls) <= 4 and sum(policy.calls) == 27


def test_per_step_prompt_sheds_history_then_truncates_on_context_full(tokenizer):
    def verbose(prompt):
        return "<think>" + "wait " * 60 + "</think><action>look</action>"

    task = [TaskSpec("t", 0, {"task": 0})]
    with EnvPool(ENV_ID, num_envs=1) as pool:
        no_history = RolloutEngine(ScriptedPolicy(tokenizer, verbose), pool, max_turns=3, history_k=0, progress=False)
        (short,), _ = no_history.run(task, 1)
        first = len(short.turns[0].prompt_ids)
        budget = max(len(t.prompt_ids) for t in short.turns) + 5  # fits no history pair
        engine = RolloutEngine(ScriptedPolicy(tokenizer, verbose), pool, max_turns=3, max_prompt_tokens=budget,
                               history_k=2, progress=False)
        (traj,), _ = engine.run(task, 1)
        assert traj.num_turns == 3 and all(len(t.prompt_ids) <= budget for t in traj.turns)
        later = tokenizer.decode(traj.turns[2].prompt_ids)
        assert "Your task is to: open the red door" in later and "<action> </action> tags" in later  # instruction kept
        assert "most recent 0 observations" in later and traj.info["history_cut_turns"] == 2
        assert [t.prompt_ids for t in traj.turns] == [t.prompt_ids for t in short.turns]
        tight = RolloutEngine(ScriptedPolicy(tokenizer, verbose), pool, max_turns=3, max_prompt_tokens=first - 1,
                              progress=False)
        (cut,), metrics = tight.run(task, 1)
    assert cut.truncated and cut.num_turns == 0 and cut.info["truncated_reason"] == "context_full"
    assert metrics["rollout/context_full_rate"] == 1.0


def _conversation_solver(prompt: str) -> str:
    """Same plan as :func:`_solver`, counting turns by the user messages in the chat."""
    turns = prompt.count("<|im_start|>user")
    color = re.search(r"open the (\w+) door", prompt).group(1)
    if turns == 1:
        return "I think I should open a door"
    if turns == 2:
        return "<think>look first</think><action>look</action>"
    return f"<think>{color}</think><action>open {color} door</action>"


def test_conversation_mode_is_one_sequence_matching_the_chat_template(tokenizer):
    policy = ScriptedPolicy(tokenizer, _conversation_solver)
    with EnvPool(ENV_ID, num_envs=1) as pool:
        engine = RolloutEngine(policy, pool, max_turns=5, prompt_mode="conversation", progress=False)
        (traj,), _ = engine.run([TaskSpec("t", 3, {"task": 2})], 1)
    assert traj.won and traj.num_turns == 3 and traj.prompt_mode == "conversation"
    assert abs(traj.reward - 0.9) < 1e-9
    for turn in traj.turns:
        assert tokenizer.decode(turn.prompt_ids).count("<|im_start|>user") == 1  # only the new message
    (seq,) = traj.sequences()
    assert sum(seq.loss_mask) == traj.num_agent_tokens
    # The one sequence is exactly the chat template applied to the whole conversation.
    rendered = tokenizer.decode(seq.input_ids)
    assert rendered.count("<|im_start|>assistant") == 3 and rendered.count("<|im_start|>user") == 3
    user_texts = re.findall(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", rendered, re.DOTALL)
    messages = []
    for text, turn in zip(user_texts, traj.turns):
        messages += [{"role": "user", "content": text}, {"role": "assistant", "content": turn.response_text}]
    # (the template's newline after the last <|im_end|> comes only with the next message)
    assert rendered + "\n" == tokenizer.apply_chat_template(messages, tokenize=False)
    assert user_texts[2].startswith("Observation: Room")  # the env's reply to `look` is the next user message


def test_tiny_model_rollout_on_math_env(tmp_path):
    """End to end with a real (random) model and the real math env: replies are noise, the
    bookkeeping must still hold."""
    policy = make_policy("hf", model=str(build_tiny_model(tmp_path / "m")))
    tasks = [TaskSpec("p0", seed=0, options={"task": 0}), TaskSpec("p1", seed=1, options={"task": 1})]
    with EnvPool("agent_rl/Math-v0", num_envs=4, env_kwargs={"max_attempts": 2}) as pool:
        engine = RolloutEngine(policy, pool, max_turns=3, sampling=SamplingParams(max_tokens=12, seed=0), progress=False)
        assert engine.template.name == "math"
        trajs, metrics = engine.run(tasks, group_size=2)
    assert len(trajs) == 4
    for t in trajs:
        assert t.num_turns == 2 and t.terminated and not t.won  # 2 wrong attempts end the episode
        for turn in t.turns:
            assert 0 < len(turn.response_ids) <= 12 and len(turn.response_logprobs) == len(turn.response_ids)
            assert all(lp <= 0 for lp in turn.response_logprobs) and turn.action_valid
    assert trajs[0].turns[0].prompt_ids == trajs[1].turns[0].prompt_ids
    assert trajs[0].turns[0].response_ids != trajs[1].turns[0].response_ids  # G samples differ
    assert metrics["rollout/tokens_per_s"] > 0 and metrics["rollout/mean_response_tokens"] > 0


def test_bad_arguments(tokenizer):
    with EnvPool(ENV_ID, num_envs=1) as pool:
        with pytest.raises(ValueError, match="prompt_mode"):
            RolloutEngine(ScriptedPolicy(tokenizer, _solver), pool, prompt_mode="chat")
        engine = RolloutEngine(ScriptedPolicy(tokenizer, _solver), pool, progress=False)
        with pytest.raises(TypeError, match="TaskSpec"):
            engine.run([{"task": 0}], 2)
        with pytest.raises(ValueError, match="group_size"):
            engine.run([TaskSpec("t", 0)], 0)


def _alfworld_available() -> bool:
    import importlib.util

    if importlib.util.find_spec("alfworld") is None or importlib.util.find_spec("textworld") is None:
        return False
    from envs.alfworld import data

    root = data.default_data_root()
    return root is not None and (root / "json_2.1.1" / "valid_unseen").is_dir()


@pytest.mark.alfworld
def test_alfworld_group_rollout_uses_the_alfworld_template(tokenizer):
    """The real ALFWorld engine: G members see the same game; the prompt lists admissible actions."""
    if not _alfworld_available():
        pytest.skip("needs alfworld/textworld and an ALFWorld data root (../shared/alfworld, see its README)")

    def first_admissible(prompt: str) -> str:
        actions = re.findall(r"admissible actions of the current situation are: \[(.*?)\]\.", prompt)[-1]
        return f"<think>try something</think><action>{actions.split(', ')[0].strip(chr(39))}</action>"

    with EnvPool("agent_rl/ALFWorld-v0", num_envs=2, env_kwargs={"split": "valid_unseen"}) as pool:
        engine = RolloutEngine(ScriptedPolicy(tokenizer, first_admissible), pool, max_turns=2, progress=False)
        assert engine.template.name == "alfworld"
        trajs, metrics = engine.run([TaskSpec("g0", seed=0, options={"task": 0})], group_size=2)
    a, b = trajs
    assert a.turns[0].observation == b.turns[0].observation and a.turns[0].prompt_ids == b.turns[0].prompt_ids
    assert [t.action for t in a.turns] == [t.action for t in b.turns]  # same state, same deterministic policy
    assert all(t.action_valid and t.info["action_valid"] for t in a.turns)
    first_prompt = tokenizer.decode(a.turns[0].prompt_ids)
    assert "ALFRED" in first_prompt and f"Your task is to: {a.info['task']}" in first_prompt
    assert a.num_turns == 2 and a.truncated and a.info["truncated_reason"] == "max_turns"
    assert metrics["rollout/invalid_action_rate"] == 0.0


def test_on_episode_reports_each_episode_the_moment_it_ends(tokenizer):
    """The hook the eval uses to write episodes.jsonl line by line: (trajectory, task index, member)."""
    policy = ScriptedPolicy(tokenizer, _solver)  # 3 turns to win
    # Task 1's reset raises (no 10th colour): its episodes end at reset, without a turn.
    tasks = [TaskSpec("door-red", 1, {"task": 0}), TaskSpec("broken", 2, {"task": 9}),
             TaskSpec("door-gold", 3, {"task": 3})]
    seen = []

    def on_episode(traj, task_index, member):
        seen.append((task_index, member, len(policy.calls), traj))

    with EnvPool(ENV_ID, num_envs=2) as pool:
        trajs, metrics = RolloutEngine(policy, pool, max_turns=5, progress=False).run(tasks, 2, on_episode=on_episode)
    # Two envs: task 0's pair ends at generate call 3, frees both envs for task 1's pair (failed resets,
    # reported at once), then task 2's pair plays its 3 turns.
    assert [(i, g, calls) for i, g, calls, _ in seen] == [
        (0, 0, 3), (0, 1, 3), (1, 0, 3), (1, 1, 3), (2, 0, 6), (2, 1, 6)
    ]
    for i, g, _, traj in seen:
        assert traj is trajs[2 * i + g]  # the returned object, final when reported
    assert all(t.won and t.reward == pytest.approx(0.9) for t in trajs[:2] + trajs[4:])
    assert all(t.info["failed_at"] == "reset" and t.num_turns == 0 for t in trajs[2:4])
    assert metrics["rollout/num_episodes"] == 6.0 and metrics["rollout/error_rate"] == pytest.approx(2 / 6)


def test_on_episode_errors_stop_the_run(tokenizer):
    def on_episode(traj, task_index, member):
        raise OSError("disk full")

    with EnvPool(ENV_ID, num_envs=2) as pool:
        engine = RolloutEngine(ScriptedPolicy(tokenizer, _solver), pool, max_turns=5, progress=False)
        with pytest.raises(OSError, match="disk full"):
            engine.run([TaskSpec("door-red", 1, {"task": 0})], 2, on_episode=on_episode)
        trajs, _ = engine.run([TaskSpec("door-red", 1, {"task": 0})], 2)  # the next run has no stale hook
    assert len(trajs) == 2 and all(t.won for t in trajs)


def test_constrained_actions_make_every_reply_an_admissible_action(tmp_path):
    """A random tiny model with constrain_actions: every reply is one admissible action in the template's
    reply format, so nothing is invalid; tokens and logprobs are still one per generated token."""
    policy = make_policy("hf", model=str(build_tiny_model(tmp_path / "m")))
    tasks = [TaskSpec("door-red", seed=0, options={"task": 0}), TaskSpec("door-blue", seed=1, options={"task": 1})]
    with EnvPool(ENV_ID, num_envs=4) as pool:
        engine = RolloutEngine(policy, pool, max_turns=4, template="alfworld_act", constrain_actions=True,
                               sampling=SamplingParams(max_tokens=32, seed=0), progress=False)
        trajs, metrics = engine.run(tasks, group_size=2)
    admissible = ["look"] + [f"open {c} door" for c in COLORS]
    assert metrics["rollout/invalid_action_rate"] == 0.0
    for t in trajs:
        for turn in t.turns:
            assert turn.action_valid and turn.action in admissible
            assert turn.response_text == engine.template.format_reply(turn.action)
            assert len(turn.response_logprobs) == len(turn.response_ids) and all(lp <= 1e-6 for lp in turn.response_logprobs)


def test_constrained_actions_need_a_reply_format_and_admissible_actions(tokenizer, tmp_path):
    with EnvPool(ENV_ID, num_envs=1) as pool:
        with pytest.raises(ValueError, match="template whose reply is the action alone"):
            RolloutEngine(ScriptedPolicy(tokenizer, _solver), pool, template="alfworld", constrain_actions=True)
    policy = make_policy("hf", model=str(build_tiny_model(tmp_path / "m")))
    with EnvPool("agent_rl/Math-v0", num_envs=1) as pool:  # the math env lists no admissible actions
        engine = RolloutEngine(policy, pool, max_turns=1, template="alfworld_act", constrain_actions=True,
                               progress=False)
        with pytest.raises(ValueError, match="gave no admissible actions"):
            engine.run([TaskSpec("p0", seed=0, options={"task": 0})], group_size=1)


def test_an_empty_stop_list_means_end_of_sequence_only(tokenizer):
    seen = []

    class Recorder(ScriptedPolicy):
        def generate(self, prompts, params):
            seen.append(params.stop)
            return super().generate(prompts, params)

    with EnvPool(ENV_ID, num_envs=1) as pool:
        for stop, want in ((None, ["</action>"]), ([], [])):
            RolloutEngine(Recorder(tokenizer, _solver), pool, max_turns=1, sampling=SamplingParams(stop=stop),
                          progress=False).run([TaskSpec("door-red", seed=0, options={"task": 0})], group_size=1)
            assert seen[-1] == want


class SlowDoorRoomEnv(DoorRoomEnv):
    """DoorRoomEnv whose steps take 30 ms and report when they ran (``info["step_span"]``)."""

    def step(self, action):
        import time

        start = time.time()
        time.sleep(0.03)
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, reward, terminated, truncated, {**info, "step_span": (start, time.time())}


SLOW_ID = "agent_rl_test/SlowDoorRoom-v0"
if SLOW_ID not in gymnasium.registry:
    gymnasium.register(SLOW_ID, entry_point=SlowDoorRoomEnv, disable_env_checker=True)


def _patient_solver(prompt: str) -> str:
    """Looks (room number mod 3) times, then opens the right door: episodes of different lengths."""
    color = re.search(r"open the (\w+) door", prompt).group(1)
    room = int(re.search(r"You are in room (\d+)", prompt).group(1))
    if _steps_taken(prompt) < room % 3:
        return "<think>not yet</think><action>look</action>"
    return f"<think>{color}</think><action>open {color} door</action>"


class TimedPolicy(ScriptedPolicy):
    def __init__(self, tokenizer, script):
        super().__init__(tokenizer, script)
        self.spans = []

    def generate(self, prompts, params):
        import time

        start = time.time()
        time.sleep(0.03)
        out = super().generate(prompts, params)
        self.spans.append((start, time.time()))
        return out


def test_overlapped_env_steps_play_the_same_episodes_while_generation_runs(tokenizer):
    """overlap_env_steps: the same trajectories as the sequential engine (a deterministic policy; more episodes
    than envs, episodes of different lengths), and some env steps ran while a generate call did — never in the
    sequential engine."""
    tasks = [TaskSpec(f"door-{c}", seed=20 + k, options={"task": k}) for k, c in enumerate(COLORS)]
    played = {}
    for overlap in (False, True):
        policy = TimedPolicy(tokenizer, _patient_solver)
        with EnvPool(SLOW_ID, num_envs=6, num_workers=2, import_modules=["test_rollout"]) as pool:
            engine = RolloutEngine(policy, pool, max_turns=6, progress=False, overlap_env_steps=overlap)
            trajs, metrics = engine.run(tasks, group_size=3)
        steps = [turn.info["step_span"] for t in trajs for turn in t.turns]
        overlapping = sum(any(a < d and c < b for c, d in policy.spans) for a, b in steps)
        played[overlap] = (trajs, metrics, overlapping, policy.calls)
    (seq, m_seq, o_seq, calls_seq), (ovl, m_ovl, o_ovl, calls_ovl) = played[False], played[True]
    assert [t.task_id for t in ovl] == [t.task_id for t in seq]
    for a, b in zip(seq, ovl):
        assert [(u.observation, u.response_text, u.reward) for u in a.turns] == \
               [(u.observation, u.response_text, u.reward) for u in b.turns]
        assert (a.won, a.terminated, a.truncated, a.reward) == (b.won, b.terminated, b.truncated, b.reward)
    assert len({t.num_turns for t in seq}) > 1 and all(t.won for t in seq)
    assert o_seq == 0 and o_ovl > 0  # steps ran during generation only with the overlap
    assert max(calls_ovl) <= 3 < max(calls_seq)  # each lane's generate call holds its own envs' episodes
    assert m_ovl["rollout/env_busy_s"] > 0 and m_seq["rollout/env_busy_s"] > 0


def test_overlapped_env_steps_need_two_workers(tokenizer):
    with EnvPool(ENV_ID, num_envs=2, num_workers=1, import_modules=["test_rollout"]) as pool:
        with pytest.raises(ValueError, match="env.num_workers=2"):
            RolloutEngine(ScriptedPolicy(tokenizer, _solver), pool, overlap_env_steps=True)
    from agent_rl.config import ConfigError
    from agent_rl.validation import validate
    from agent_rl.train import compose_config

    with pytest.raises(ConfigError, match="rollout.overlap_env_steps"):
        validate(compose_config(["rollout.overlap_env_steps=true", "env.num_workers=1"]))


def test_lowercase_actions_reach_the_env_and_the_history_lowercased(tokenizer):
    """rollout.lowercase_actions (the HölderPO authors' ALFWorld parsing): the parsed action is lowercased
    before env.step and in the history the next prompt shows; off, the env gets the reply's casing."""
    def shouty(prompt):
        if _steps_taken(prompt) == 0:
            return "<think>first look</think><action>LOOK</action>"
        color = re.search(r"open the (\w+) door", prompt).group(1)
        return f"<think>go</think><action>Open {color.upper()} Door</action>"

    task = [TaskSpec("t", 0, {"task": 0})]
    with EnvPool(ENV_ID, num_envs=1) as pool:
        (low,), _ = RolloutEngine(ScriptedPolicy(tokenizer, shouty), pool, max_turns=2, lowercase_actions=True,
                                  progress=False).run(task, 1)
        (kept,), _ = RolloutEngine(ScriptedPolicy(tokenizer, shouty), pool, max_turns=2, progress=False).run(task, 1)
    assert [t.action for t in low.turns] == ["look", "open red door"] and low.won
    assert "Action 1: 'look'" in tokenizer.decode(low.turns[1].prompt_ids)
    assert [t.action for t in kept.turns] == ["LOOK", "Open RED Door"] and not kept.won
    assert "Action 1: 'LOOK'" in tokenizer.decode(kept.turns[1].prompt_ids)


def test_rollout_parser_override_reads_replies_with_verl_agents_rules(tokenizer):
    """rollout.parser=verl_agent (preset=paper_alfworld): a reply without <think> is charged as invalid, but its
    (lowercased) action still reaches the env, as in verl-agent; the template's own parser sends the env the
    reply's tail instead, and the registered template keeps its parser."""
    def no_think(prompt):
        color = re.search(r"open the (\w+) door", prompt).group(1)
        return f"<action>Open {color.upper()} Door</action>"

    task = [TaskSpec("t", 0, {"task": 0})]
    with EnvPool(ENV_ID, num_envs=1) as pool:
        engine = RolloutEngine(ScriptedPolicy(tokenizer, no_think), pool, max_turns=2, parser="verl_agent",
                               progress=False)
        (theirs,), _ = engine.run(task, 1)
        (ours,), _ = RolloutEngine(ScriptedPolicy(tokenizer, no_think), pool, max_turns=2, progress=False).run(task, 1)
    assert engine.template.parser == "verl_agent" and get_template("generic").parser == "tags"
    (turn,) = theirs.turns
    assert theirs.won and not turn.action_valid and turn.info["sent_action"] == "open red door"
    assert "think" in turn.info["parse_error"]
    assert not ours.won and ours.turns[0].info["sent_action"] == "<action>Open RED Door</action>"
