"""Model-policy evals write each episode to episodes.jsonl as it ends; a killed eval resumes the rest only."""

from __future__ import annotations

import json
import re

import gymnasium
import pytest

from envs.spaces import UnicodeText
from eval import model_policies
from eval.runner import evaluate
from trainers.models import build_tiny_model
from trainers.policies import Generation

ENV_ID = "agent_rl_test/StreamCorridor-v0"


class StreamCorridor(gymnasium.Env):
    """Task i is won after (i % 3) + 1 "right"s; the observation names the task, so a policy sees which it plays."""

    metadata = {"render_modes": [], "prompt_template": "generic"}

    def __init__(self, num_tasks: int = 8, max_episode_steps: int = 50):
        self.observation_space = UnicodeText()
        self.action_space = UnicodeText()
        self.task_ids = [f"corridor-{i}" for i in range(num_tasks)]
        self.task_types = ["a" if i % 2 == 0 else "b" for i in range(num_tasks)]

    def _info(self, **extra):
        won = self.rights >= self.task % 3 + 1
        return {"task": "go right", "task_id": self.task_ids[self.task], "task_type": self.task_types[self.task],
                "won": won, "admissible_commands": ["left", "right"], **extra}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.task, self.rights = int(options["task"]), 0
        return f"corridor number {self.task}", self._info()

    def step(self, action):
        self.rights += action == "right"
        info = self._info(action_valid=action in ("left", "right"))
        return f"corridor number {self.task}, moved", float(info["won"]), info["won"], False, info


if ENV_ID not in gymnasium.registry:
    gymnasium.register(ENV_ID, entry_point=StreamCorridor, disable_env_checker=True)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(build_tiny_model(tmp_path_factory.mktemp("tok")))


class WalkRight(Exception):
    """Stands in for a kill (^C, OOM) in the middle of an eval."""


class RightPolicy:
    """A model policy (``tokenizer`` + ``generate``) that always walks right; its ``kill_at``-th generate
    call raises. It records which corridors it was asked about and how many lines episodes.jsonl had."""

    def __init__(self, tokenizer, log=None, kill_at: int | None = None):
        self.tokenizer, self.log, self.kill_at = tokenizer, log, kill_at
        self.calls, self.tasks_seen, self.lines_seen = 0, set(), []

    def generate(self, prompts, params):
        self.calls += 1
        if self.log is not None:
            self.lines_seen.append(len(self.log.read_text().splitlines()) if self.log.exists() else 0)
        if self.calls == self.kill_at:
            raise WalkRight(f"killed at generate call {self.calls}")
        out = []
        for p in prompts:
            self.tasks_seen.add(int(re.findall(r"corridor number (\d+)", self.tokenizer.decode(p))[-1]))
            text = "<think>onward</think><action>right</action>"
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            out.append([Generation(ids, [-0.1] * len(ids), text, "stop")])
        return out


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_episodes_are_written_as_they_end_and_a_kill_resumes_only_the_rest(tokenizer, tmp_path):
    log = tmp_path / "episodes.jsonl"
    killed = RightPolicy(tokenizer, log, kill_at=3)
    with pytest.raises(WalkRight):
        evaluate(killed, env_id=ENV_ID, out_dir=tmp_path, concurrency=2, max_steps=5, plot=False)
    # Two envs, corridors need 1, 2, 3, 1, ... steps: corridor 0 ends at call 1, corridor 1 at call 2, and the
    # kill at call 3 leaves corridor 2 (started after 0) and 3 (after 1) in flight. Each ended episode was on
    # disk before the next generate call.
    assert killed.lines_seen == [0, 1, 2]
    finished = _lines(log)
    assert [(r["task_index"], r["won"], r["steps"]) for r in finished] == [(0, True, 1), (1, True, 2)]

    resumed = RightPolicy(tokenizer, log)
    result = evaluate(resumed, env_id=ENV_ID, out_dir=tmp_path, concurrency=2, max_steps=5, plot=False)
    assert resumed.tasks_seen == set(range(2, 8))  # only the missing episodes are played
    assert result.results["episodes_this_run"] == 6 and result.results["resumed_episodes"] == 2
    assert result.results["success_rate"] == 1.0
    assert [r["steps"] for r in result.records] == [i % 3 + 1 for i in range(8)]
    assert sorted(r["task_index"] for r in _lines(log)) == list(range(8))
    assert all(0 <= r["elapsed_s"] <= result.results["wall_s"] + 1e-3 for r in _lines(log)[2:])  # in flight
    # Streaming: the line count grew while the eval ran, not all at once at the end.
    assert resumed.lines_seen[0] == 2 and 2 < resumed.lines_seen[-1] < 8


def test_a_torn_group_is_replayed_whole_and_written_once(tokenizer, tmp_path):
    log = tmp_path / "episodes.jsonl"
    kwargs = dict(env_id=ENV_ID, env_kwargs={"num_tasks": 4}, out_dir=tmp_path, concurrency=3, samples=2,
                  temperature=1.0, max_steps=5, plot=False)
    with pytest.raises(WalkRight):
        evaluate(RightPolicy(tokenizer, log, kill_at=3), **kwargs)
    # Three envs over (task, sample) (0,0) (0,1) (1,0) | (1,1) (2,0) | (2,1): task 0's pair ends at call 1,
    # (1,0) at call 2; the kill at call 3 leaves (1,1) unfinished, so task 1's group is torn.
    assert [(r["task_index"], r["sample"]) for r in _lines(log)] == [(0, 0), (0, 1), (1, 0)]

    resumed = RightPolicy(tokenizer, log)
    result = evaluate(resumed, **kwargs)
    assert resumed.tasks_seen == {1, 2, 3}  # task 1 again as a whole group (same start state for both)
    assert result.results["episodes_this_run"] == 5 and result.results["resumed_episodes"] == 3
    keys = [(r["task_index"], r["sample"]) for r in _lines(log)]
    assert sorted(keys) == [(i, s) for i in range(4) for s in range(2)]  # each once: (1, 0) not written twice


def test_big_evals_run_in_equal_chunks_and_still_stream(tokenizer, tmp_path, monkeypatch):
    """Past MAX_EPISODES_PER_RUN the tasks go to several engine runs (memory), of equal size."""
    from trainers.rollout import RolloutEngine

    sizes = []
    real_run = RolloutEngine.run

    def counting_run(self, tasks, group_size, on_episode=None):
        sizes.append(len(tasks))
        return real_run(self, tasks, group_size, on_episode=on_episode)

    monkeypatch.setattr(model_policies, "MAX_EPISODES_PER_RUN", 3)
    monkeypatch.setattr(RolloutEngine, "run", counting_run)
    log = tmp_path / "episodes.jsonl"
    policy = RightPolicy(tokenizer, log)
    result = evaluate(policy, env_id=ENV_ID, env_kwargs={"num_tasks": 7}, out_dir=tmp_path, concurrency=2,
                      max_steps=5, plot=False)
    assert sizes == [3, 2, 2]  # ceil(7 / 3) = 3 runs, split 3 + 2 + 2 rather than 3 + 3 + 1
    assert result.results["episodes"] == 7 and result.results["success_rate"] == 1.0
    assert len(_lines(log)) == 7 and 0 < policy.lines_seen[2] < 3  # written inside the first run
