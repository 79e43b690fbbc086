"""The rollout's policy in a Ray actor (rollout ← policy ← weight sync): same tokens as in the
trainer, weights synced after each step, a dead actor is a clear error. One local Ray for the file."""

from __future__ import annotations

import json
import os

import gymnasium as gym
import pytest
import torch

from envs.spaces import UnicodeText
from trainers.models import build_tiny_model, load_model_and_tokenizer
from trainers.policies import SamplingParams, make_policy
from trainers.policies.hf import HFPolicy
from trainers.policies.ray_actor import RayPolicy, weights_digest

from test_policies import _ids, _prompts  # the prompts both backends are compared on

GREEDY = SamplingParams(n=2, temperature=0.0, max_tokens=12)
LETTERS_ID = "agent_rl_test/Letters-v0"
THIS_MODULE = __name__  # what the env actors import to get LETTERS_ID registered


class LettersEnv(gym.Env):
    """Reward = share of the letter 'a' in the reply: varies between samples of a random model,
    so group advantages are non-zero and one step must move the weights."""

    metadata = {"prompt_template": "generic", "render_modes": []}

    def __init__(self):
        self.observation_space, self.action_space = UnicodeText(), UnicodeText()
        self.num_tasks, self.task_ids = 2, ["0", "1"]

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return "Write something with many a's.", {"task": "say a", "task_id": "0", "task_type": "letters", "won": False}

    def step(self, action):
        reward = action.count("a") / max(len(action), 1)
        return "Done.", reward, True, False, {"won": reward > 0.2, "action_valid": True, "task_id": "0",
                                              "task_type": "letters", "task": "say a"}


if LETTERS_ID not in gym.registry:
    gym.register(LETTERS_ID, entry_point=f"{THIS_MODULE}:LettersEnv", disable_env_checker=True)


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny")))


@pytest.fixture(scope="module")
def ray_policy(ray_local, tiny_path):
    policy = RayPolicy("hf", {"model": tiny_path})
    yield policy
    policy.close()


def _assert_same(remote, local):
    assert _ids(remote) == _ids(local)
    for r_row, l_row in zip(remote, local):
        for r, l in zip(r_row, l_row):
            assert r.text == l.text and r.finish_reason == l.finish_reason
            assert r.logprobs == pytest.approx(l.logprobs, abs=1e-5)


def test_actor_greedy_generation_equals_the_in_driver_policy(ray_policy, tiny_path):
    local = make_policy("hf", model=tiny_path)
    prompts = _prompts(local.tokenizer)
    remote = ray_policy.generate(prompts, GREEDY)
    _assert_same(remote, local.generate(prompts, GREEDY))
    info = ray_policy.info()
    assert info["pid"] != os.getpid() and info["device"] == "cpu" and info["generate_calls"] >= 1
    assert ray_policy.weights_digest() == weights_digest(local.model.named_parameters())
    with pytest.raises(ValueError, match="non-empty"):  # the actor's own errors come back as they are
        ray_policy.generate([[]], GREEDY)


def test_sync_weights_makes_the_actor_generate_like_the_updated_model(ray_policy, tiny_path):
    model, tok = load_model_and_tokenizer(tiny_path)
    prompts = _prompts(tok)
    before = HFPolicy(model=model, tokenizer=tok).generate(prompts, GREEDY)
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    updated = HFPolicy(model=model, tokenizer=tok).generate(prompts, GREEDY)
    assert _ids(updated) != _ids(before)  # else this test could not tell a sync from none
    try:
        ray_policy.sync_weights(model.named_parameters())
        assert ray_policy.weights_digest() == weights_digest(model.named_parameters())
        _assert_same(ray_policy.generate(prompts, GREEDY), updated)
    finally:  # the module's actor goes back to the start weights for the other tests
        ray_policy.sync_weights(original.items())
    with pytest.raises(Exception, match="not parameters of the policy model"):
        ray_policy.sync_weights([("no.such.weight", torch.zeros(2))])


def test_a_killed_actor_is_a_clear_error_not_a_hang(ray_local, tiny_path):
    policy = RayPolicy("hf", {"model": tiny_path})
    prompts = _prompts(policy.tokenizer)
    assert policy.generate(prompts[:1], GREEDY)
    ray_local.kill(policy._actor)
    with pytest.raises(RuntimeError, match="rollout actor .* died during generate.*resume the run"):
        policy.generate(prompts[:1], GREEDY)
    with pytest.raises(RuntimeError, match="closed"):  # not a second wait on the dead actor
        policy.sync_weights([])
    policy.close()


def test_impossible_resources_and_bad_arguments_are_refused_at_once(ray_local, tiny_path):
    with pytest.raises(RuntimeError, match="asks for 64 GPU.*could never start.*rollout_num_gpus"):
        RayPolicy("hf", {"model": tiny_path}, num_gpus=64)
    with pytest.raises(TypeError, match="cannot be shipped"):
        RayPolicy("hf", {"model": torch.nn.Linear(2, 2)})
    with pytest.raises(KeyError, match="Did you mean 'hf'"):
        RayPolicy("hff", {"model": tiny_path})


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_train_step_rolls_out_in_the_actor_and_syncs_its_weights(ray_local, tiny_path, tmp_path, monkeypatch, lora):
    import agent_rl.rollout_side as rollout_side
    import agent_rl.train as train_mod
    from agent_rl.train import compose_config, train

    if lora:
        pytest.importorskip("peft")
    built, seen = {}, {}
    make = train_mod.make_rollout_policy

    def make_and_keep(cfg, model, tokenizer, start_step=0):
        built["policy"], built["model"] = make(cfg, model, tokenizer, start_step), model
        return built["policy"]

    real_close = RayPolicy.close

    def close_after_looking(self):
        if not self._closed:
            seen["info"], seen["digest"] = self.info(), self.weights_digest()
        real_close(self)

    monkeypatch.setattr(train_mod, "make_rollout_policy", make_and_keep)
    monkeypatch.setattr(RayPolicy, "close", close_after_looking)
    lora_args = ["model.lora.enabled=true", "model.lora.r=4", "model.lora.alpha=8"] if lora else []
    cfg = compose_config([
        "env=custom", f"env.id={LETTERS_ID}", f"env.import_modules=[{THIS_MODULE}]", f"model.name={tiny_path}",
        "rollout=hf", "rollout.group_size=2", "rollout.tasks_per_step=2", "rollout.max_new_tokens=8", "rollout.max_turns=1",
        "train.steps=1", "train.lr=1e-2", "train.micro_batch_tokens=512", f"train.run_dir={tmp_path / 'run'}",
        "logging.wandb=false", "train.progress=false", "ray.enabled=true", "train.eval_every=1",
        "train.eval_episodes=2", *lora_args,
    ])
    metrics = train(cfg)
    assert metrics["train/step"] == 1 and metrics["rollout/num_episodes"] == 4 and metrics["rollout/error_rate"] == 0
    assert "eval/success_rate" in metrics  # the periodic eval plays with the same actor policy
    assert isinstance(built["policy"], RayPolicy)
    info = seen["info"]
    assert info["pid"] != os.getpid() and info["generate_calls"] == 2  # the training rollout, then the eval
    assert info["sync_calls"] == 2  # the start weights, then after the one update
    model = built["model"]
    if lora:
        state = rollout_side._merged_lora_state(model).items()
    else:
        state = model.named_parameters()
    driver = weights_digest(state)
    assert seen["digest"] == driver  # bit-equal: the actor holds what the learner produced
    start, _ = load_model_and_tokenizer(tiny_path)
    assert driver != weights_digest(start.named_parameters())  # the step did move the weights


def _letters_cfg(tiny_path, run_dir, *extra):
    from agent_rl.train import compose_config

    return compose_config([
        "env=custom", f"env.id={LETTERS_ID}", f"env.import_modules=[{THIS_MODULE}]", f"model.name={tiny_path}",
        "rollout=hf", "rollout.group_size=2", "rollout.tasks_per_step=2", "rollout.max_new_tokens=8", "rollout.max_turns=1",
        "rollout.temperature=1.0", "train.steps=3", "train.lr=1e-2", "train.micro_batch_tokens=512",
        f"train.run_dir={run_dir}", "logging.wandb=false", "train.progress=false", "ray.enabled=true", *extra,
    ])


def test_async_rollouts_with_staleness_zero_reproduce_the_synchronous_trainer(ray_local, tiny_path, tmp_path):
    from agent_rl.train import train
    from trainers.checkpoint import latest_checkpoint

    runs = {}
    for name, extra in (("sync", []), ("async0", ["train.async_rollouts=true", "train.max_staleness=0"])):
        train(_letters_cfg(tiny_path, tmp_path / name, *extra))
        rows = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        model, _ = load_model_and_tokenizer(latest_checkpoint(tmp_path / name))
        runs[name] = (rows, weights_digest(model.named_parameters()))
    (sync_rows, sync_w), (a_rows, a_w) = runs["sync"], runs["async0"]
    assert a_w == sync_w  # bit-equal weights after 3 steps
    for s, a in zip(sync_rows, a_rows):
        for key in ("rollout/mean_return", "loss/policy", "loss/grad_norm", "loss/ratio_mean"):
            assert a[key] == s[key], key


def test_one_step_off_policy_training_learns_from_the_previous_weights_batch(ray_local, tiny_path, tmp_path,
                                                                             monkeypatch):
    """Staleness 1: from step 2 on the learner's first update is off-policy (ratios ≠ 1: the batch was played
    by the weights before the last update), and the actor ends with the learner's final weights."""
    import agent_rl.train as train_mod
    from agent_rl.train import train

    seen = {}
    real_close = RayPolicy.close

    def close_after_looking(self):
        if not self._closed:
            seen["digest"], seen["info"] = self.weights_digest(), self.info()
        real_close(self)

    built = {}
    make = train_mod.make_rollout_policy

    def make_and_keep(cfg, model, tokenizer, start_step=0):
        built["model"] = model
        return make(cfg, model, tokenizer, start_step)

    monkeypatch.setattr(RayPolicy, "close", close_after_looking)
    monkeypatch.setattr(train_mod, "make_rollout_policy", make_and_keep)
    metrics = train(_letters_cfg(tiny_path, tmp_path / "async1", "train.async_rollouts=true", "algo.epochs=1"))
    rows = [json.loads(x) for x in (tmp_path / "async1" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and metrics["rollout/error_rate"] == 0
    assert rows[0]["loss/ratio_mean"] == pytest.approx(1.0, abs=1e-6)  # batch 0: played by the current weights
    assert all(abs(r["loss/ratio_mean"] - 1.0) > 1e-6 for r in rows[1:])  # later batches: one update old
    assert seen["digest"] == weights_digest(built["model"].named_parameters())
    assert seen["info"]["sync_calls"] == 3  # the start weights, before step 3's rollout (θ1), after the last update
    assert seen["info"]["generate_calls"] == 3
