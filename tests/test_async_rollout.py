"""RolloutStream and BehaviourWeights: when each batch is played, with which weights, and when the engine syncs."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from trainers.async_rollout import BehaviourWeights, RolloutStream


class FakeRun:
    """A trainer's loop over the stream: ``weights`` is the learner's version (bumped per update), the engine
    holds the last synced one; each batch records the engine's version it was played with."""

    def __init__(self, steps: int, *, asynchronous: bool, max_staleness: int = 1, produce_s: float = 0.0):
        self.learner, self.engine, self.log = 0, 0, []
        self.in_flight = threading.Event()
        self.produce_s = produce_s
        self.stream = RolloutStream(self.produce, self.sync, last_step=steps, asynchronous=asynchronous,
                                    max_staleness=max_staleness)

    def produce(self, step):
        self.in_flight.set()
        self.log.append(("produce", step, self.engine))
        time.sleep(self.produce_s)
        self.in_flight.clear()
        return [f"batch{step}"], {"played_with": self.engine}

    def sync(self):
        assert not self.in_flight.is_set(), "weights must never change under a running rollout"
        self.log.append(("sync", self.learner))
        self.engine = self.learner

    def run(self, steps, eval_every=0):
        used = []
        for step in range(steps):
            batch, metrics = self.stream.next(step)
            assert batch == [f"batch{step}"]
            used.append((self.learner, metrics["played_with"]))  # (learner version at update, sampler version)
            self.learner += 1  # the update
            self.stream.weights_changed()
            if eval_every and (step + 1) % eval_every == 0:
                seen = self.stream.when_idle(lambda: self.engine)
                assert seen == self.learner  # eval sees the newest weights
        self.stream.close()
        return used


def test_synchronous_stream_plays_each_batch_with_the_current_weights():
    run = FakeRun(3, asynchronous=False)
    assert run.run(3) == [(0, 0), (1, 1), (2, 2)]
    assert run.log == [("produce", 0, 0), ("sync", 1), ("produce", 1, 1), ("sync", 2), ("produce", 2, 2), ("sync", 3)]


def test_staleness_zero_is_the_synchronous_order_through_the_thread():
    sync, zero = FakeRun(3, asynchronous=False), FakeRun(3, asynchronous=True, max_staleness=0)
    assert zero.run(3) == sync.run(3)
    assert zero.log == sync.log


def test_one_step_off_policy_plays_the_next_batch_during_the_update_and_syncs_between_rollouts():
    run = FakeRun(4, asynchronous=True, produce_s=0.05)
    used = run.run(4)
    # batch 0 is played with θ0 before any update; batch k ≥ 1 with θ_{k-1} while the learner stands at θ_k
    assert used == [(0, 0), (1, 0), (2, 1), (3, 2)]
    assert run.log == [("produce", 0, 0), ("produce", 1, 0), ("sync", 1), ("produce", 2, 1), ("sync", 2),
                       ("produce", 3, 2), ("sync", 4)]  # no rollout after the last step; the final weights synced


def test_eval_waits_for_the_rollout_in_flight_and_sees_the_newest_weights():
    run = FakeRun(4, asynchronous=True, produce_s=0.05)
    used = run.run(4, eval_every=2)
    assert used == [(0, 0), (1, 0), (2, 1), (3, 2)]  # eval changes no batch's behaviour weights


def test_a_failed_background_rollout_raises_at_its_step():
    calls = []

    def produce(step):
        calls.append(step)
        if step == 1:
            raise RuntimeError("env worker died")
        return [], {}

    stream = RolloutStream(produce, lambda: None, last_step=3, asynchronous=True)
    stream.next(0)
    with pytest.raises(RuntimeError, match="env worker died"):
        stream.next(1)
    stream.close()
    with pytest.raises(ValueError, match="max_staleness"):
        RolloutStream(produce, lambda: None, last_step=3, asynchronous=True, max_staleness=2)


def test_behaviour_weights_are_the_previous_update_start():
    class L:
        def __init__(self):
            self.w = torch.zeros(1)

        def snapshot(self):
            return {"w": self.w.clone()}

    learner = L()
    stale = BehaviourWeights(learner, stale=True)
    seen = []
    for _ in range(3):
        seen.append(stale.for_update())
        learner.w += 1
    assert seen[0] is None and float(seen[1]["w"]) == 0.0 and float(seen[2]["w"]) == 1.0
    assert BehaviourWeights(learner, stale=False).for_update() is None


# ---------------------------------------------------------------------------------------- sleep mode (colocated vLLM)
def test_sleep_mode_releases_the_engine_after_each_batch_and_the_sync_wakes_it():
    run = FakeRun(2, asynchronous=False)
    run.stream.release = lambda: run.log.append(("release",))
    run.run(2)
    assert run.log == [("produce", 0, 0), ("release",), ("sync", 1), ("produce", 1, 1), ("release",), ("sync", 2)]


class FakeLLM:
    """vllm.LLM's sleep/wake/weight-load surface, recording the calls."""

    def __init__(self):
        self.calls = []

    def sleep(self, level):
        self.calls.append(("sleep", level))

    def wake_up(self, tags=None):
        self.calls.append(("wake_up", tags))

    def collective_rpc(self, method, kwargs):
        self.calls.append(("load", sorted(kwargs["weights"])[0][0] if "weights" in kwargs else "path"))

    def reset_prefix_cache(self):
        self.calls.append(("reset_prefix_cache",))


def _policy_on(llm, sleep_mode=True):
    from trainers.policies.vllm import VLLMPolicy

    policy = VLLMPolicy.__new__(VLLMPolicy)  # the engine itself needs a GPU for sleep mode; its surface is faked
    policy.llm, policy._in_process, policy.sleep_mode, policy.sleeping = llm, True, sleep_mode, False
    return policy


def test_vllm_policy_wakes_weights_then_loads_then_wakes_the_kv_cache():
    llm = FakeLLM()
    policy = _policy_on(llm)
    policy.sleep()
    policy.sleep()  # already asleep: no second call
    assert policy.sleeping and llm.calls == [("sleep", 1)]
    policy.sync_weights([("w", torch.zeros(2))])
    assert llm.calls[1:] == [("wake_up", ["weights"]), ("load", "w"), ("wake_up", ["kv_cache"]), ("reset_prefix_cache",)]
    assert not policy.sleeping
    llm.calls.clear()
    policy.sync_weights([("w", torch.zeros(2))])  # awake: a plain load
    assert llm.calls == [("load", "w"), ("reset_prefix_cache",)]
    off = _policy_on(FakeLLM(), sleep_mode=False)
    off.sleep()
    assert off.llm.calls == [] and not off.sleeping


def test_sleep_mode_is_refused_where_it_cannot_work():
    from agent_rl.config import ConfigError
    from agent_rl.validation import validate
    from agent_rl.train import compose_config

    for extra in (["rollout=hf"], ["rollout=vllm", "train.async_rollouts=true"], ["rollout=vllm", "ray.enabled=true"]):
        with pytest.raises(ConfigError, match="rollout.vllm.sleep_mode"):
            validate(compose_config(["rollout.vllm.sleep_mode=true", *extra]))
    validate(compose_config(["rollout=vllm", "rollout.vllm.sleep_mode=true"]))
    with pytest.raises(ConfigError, match="train.async_rollouts"):
        validate(compose_config(["rollout=hf", "train.async_rollouts=true"]))
    with pytest.raises(ConfigError, match="train.max_staleness"):
        validate(compose_config(["rollout=vllm", "train.async_rollouts=true", "train.max_staleness=2"]))
