"""The trainer end to end on CPU: a tiny model, a few steps, checkpoints, resume, user envs."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from types import SimpleNamespace

import gymnasium as gym
import pytest
import torch

from agent_rl.config import ConfigError
from agent_rl.validation import validate
from agent_rl.train import compose_config, train
from envs.spaces import UnicodeText
from trainers.models import build_tiny_model


class EchoEnv(gym.Env):
    """A user's environment, registered only from this test module: say the secret word."""

    metadata = {"prompt_template": "generic", "render_modes": []}

    def __init__(self, words=("apple", "river", "stone")):
        self.words = list(words)
        self.observation_space = UnicodeText()
        self.action_space = UnicodeText()
        self.num_tasks, self.task_ids = len(self.words), list(self.words)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        i = (options or {}).get("task", int(self.np_random.integers(len(self.words))))
        self.word = self.words[i]
        return f"Say the word '{self.word}'.", {"task": f"say {self.word}", "task_id": self.word, "task_type": "echo", "won": False}

    def step(self, action):
        won = self.word in action.lower()
        return "Done.", float(won), True, False, {"won": won, "action_valid": True, "task_id": self.word,
                                                   "task_type": "echo", "task": f"say {self.word}"}


class LengthEnv(EchoEnv):
    """Reward = share of the letter 'a' in the reply: varies between samples of a random
    model, so group advantages are non-zero and a step must move the weights."""

    def step(self, action):
        reward = action.count("a") / max(len(action), 1)
        return "Done.", reward, True, False, {"won": reward > 0.2, "action_valid": True, "task_id": self.word,
                                              "task_type": "letters", "task": "say a"}


class BareEnv(LengthEnv):
    """No num_tasks/task_ids: the trainer must fall back to seeds."""

    def __init__(self):
        super().__init__()
        del self.num_tasks, self.task_ids

    def reset(self, *, seed=None, options=None):
        assert not options, "an env without num_tasks must not get task options"
        return super().reset(seed=seed)


gym.register(id="test_user/Echo-v0", entry_point=EchoEnv)
gym.register(id="test_user/Bare-v0", entry_point=BareEnv)
gym.register(id="test_user/Length-v0", entry_point=LengthEnv)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny")))


def quick(tiny_model, run_dir, *extra, env=("env=custom", "env.id=test_user/Length-v0")):
    return compose_config([
        *env, f"model.name={tiny_model}", "rollout=hf", "rollout.group_size=2", "rollout.tasks_per_step=2",
        "rollout.max_new_tokens=8", "rollout.max_turns=1", "train.steps=2", "train.lr=1e-2",
        "train.micro_batch_tokens=512", f"train.run_dir={run_dir}", "logging.wandb=false", "train.progress=false",
        *extra,
    ])


def test_two_steps_change_parameters_checkpoint_and_resume(tiny_model, tmp_path, monkeypatch):
    from trainers.checkpoint import latest_checkpoint
    from trainers.models import load_model_and_tokenizer

    import trainers.memory

    trims = []
    release = trainers.memory.release_free_memory
    monkeypatch.setattr(trainers.memory, "release_free_memory", lambda: trims.append(1) or release())
    run = tmp_path / "run"
    metrics = train(quick(tiny_model, run))
    assert len(trims) == 2  # freed heap handed back after each step's update (trainers.memory)
    assert all(torch.isfinite(torch.tensor(metrics[k])) for k in ("loss/policy", "loss/total", "loss/grad_norm"))
    ckpt = latest_checkpoint(run)
    assert ckpt is not None and ckpt.name == "step_000002"
    before, _ = load_model_and_tokenizer(tiny_model)
    after, _ = load_model_and_tokenizer(ckpt)
    assert any(not torch.equal(a, b) for a, b in zip(before.parameters(), after.parameters()))
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2]
    p_run = [x["loss/p"] for x in lines]
    assert p_run == [0.0, -2.0]  # linear 2 → -2 over the 2-step run, steps counted from 1: the last reaches p_end
    # the process's memory every step (a tiny model in a pytest process: more than nothing, less than the box)
    assert all(0 < x["perf/rss_gb"] <= x["perf/peak_rss_gb"] < 64 for x in lines)
    # resume: same run_dir, more steps → continues at step 3 with the schedule of a 4-step run
    train(quick(tiny_model, run, "train.steps=4"))
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4]
    assert lines[2]["loss/p"] == -1.0 and lines[3]["loss/p"] == -2.0
    assert latest_checkpoint(run).name == "step_000004"


def test_a_resumed_run_with_minibatches_ends_where_the_uninterrupted_one_does(tiny_model, tmp_path):
    # hf sampling draws from the restored torch RNG; the learner's minibatch shuffle is checkpointed too
    from trainers.checkpoint import latest_checkpoint
    from trainers.models import load_model_and_tokenizer

    args = ("rollout=hf", "algo.num_minibatches=2", "rollout.tasks_per_step=4")
    train(quick(tiny_model, tmp_path / "whole", *args, "train.steps=3"))
    train(quick(tiny_model, tmp_path / "resumed", *args, "train.steps=3", "train.save_every=1", "train.keep_checkpoints=3"))
    # the same run stopped after step 1 (its later checkpoints removed) and resumed
    for later in ("step_000002", "step_000003"):
        shutil.rmtree(tmp_path / "resumed" / "checkpoints" / later)
    (tmp_path / "resumed" / "checkpoints" / "latest").write_text("step_000001")
    (tmp_path / "resumed" / "rollouts" / "step_000007.jsonl").write_text("{}\n")  # as if a longer attempt ran on
    train(quick(tiny_model, tmp_path / "resumed", *args, "train.steps=3", "train.save_every=1", "train.keep_checkpoints=3"))
    whole, _ = load_model_and_tokenizer(latest_checkpoint(tmp_path / "whole"))
    resumed, _ = load_model_and_tokenizer(latest_checkpoint(tmp_path / "resumed"))
    assert all(torch.equal(a, b) for a, b in zip(whole.parameters(), resumed.parameters()))
    # the episodes each step learned from: the resumed run played steps 2 and 3 again, exactly as the whole run did
    files = sorted(p.name for p in (tmp_path / "resumed" / "rollouts").iterdir())
    assert files == ["step_000001.jsonl", "step_000002.jsonl", "step_000003.jsonl"]

    def episodes(run, name):  # ids are numbered per process (by the rollout's counter): compared as groups
        records = [json.loads(x) for x in (tmp_path / run / "rollouts" / name).read_text().splitlines()]
        groups = [[r["group_id"] == o["group_id"] for o in records] for r in records]
        return [{k: v for k, v in r.items() if k not in ("traj_id", "group_id")} for r in records], groups

    for name in files:
        assert episodes("resumed", name) == episodes("whole", name)
        records, groups = episodes("whole", name)
        assert len(records) == 4 * 2 and sum(map(sum, groups)) == 4 * 2 * 2  # 4 groups of G = 2
        assert all(len(r["turns"]) == 1 and r["advantage"] is not None for r in records)


def test_resume_false_refuses_a_used_run_dir(tiny_model, tmp_path):
    run = tmp_path / "run"
    train(quick(tiny_model, run, "train.steps=1"))
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        train(quick(tiny_model, run, "train.steps=1", "train.resume=false"))


def test_trainer_runs_on_an_env_registered_only_in_a_test_module(tiny_model, tmp_path):
    cfg = quick(tiny_model, tmp_path / "user", "train.steps=1", env=("env=custom", "env.id=test_user/Echo-v0"))
    metrics = train(cfg)
    assert metrics["train/step"] == 1 and "rollout/success_rate" in metrics


def test_trainer_runs_on_an_env_without_task_indices(tiny_model, tmp_path):
    metrics = train(quick(tiny_model, tmp_path / "bare", "train.steps=1", env=("env=custom", "env.id=test_user/Bare-v0")))
    assert metrics["train/step"] == 1 and metrics["rollout/error_rate"] == 0


_THREADS_SCRIPT = """
import json, sys, torch
from agent_rl.train import compose_config, train
from trainers.learner import Learner

seen, update = [], Learner.update
def spy(self, *args, **kwargs):
    seen.append(torch.get_num_threads())
    return update(self, *args, **kwargs)
Learner.update = spy
model, out = sys.argv[1], sys.argv[2]
base = ["env=math", f"model.name={model}", "rollout=hf", "rollout.group_size=2", "rollout.tasks_per_step=2", "rollout.max_new_tokens=8",
        "rollout.max_turns=1", "train.steps=1", "train.micro_batch_tokens=512", "logging.wandb=false",
        "train.progress=false"]
torch.set_num_threads(3)  # a count the setting differs from, whatever this machine's default
train(compose_config([*base, f"train.run_dir={out}/t1", "train.learner_threads=1"]))
after = torch.get_num_threads()
train(compose_config([*base, f"train.run_dir={out}/default"]))
print(json.dumps({"seen": seen, "after": after}))
"""


def test_learner_threads_set_the_update_threads_and_are_restored(tiny_model, tmp_path):
    # its own process: once an in-process vLLM engine (an earlier test) has bound this process's threads,
    # torch.set_num_threads no longer takes effect here
    out = subprocess.run([sys.executable, "-c", _THREADS_SCRIPT, tiny_model, str(tmp_path)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"seen": [1, 3], "after": 3}


def test_trainer_runs_on_math_with_periodic_eval(tiny_model, tmp_path):
    metrics = train(quick(tiny_model, tmp_path / "math", "train.steps=1", "train.eval_every=1",
                          "train.eval_episodes=2", env=("env=math",)))
    assert "eval/success_rate" in metrics and metrics["train/step"] == 1


@pytest.mark.parametrize("override,match", [
    (["rollout.group_size=1"], "group_size"),
    (["algo.loss=holdr"], "algo.loss"),
    (["algo.p_steps=50", "train.steps=10"], "longer than the run"),
    (["rollout.temperature=0"], "greedy"),
    (["env.id=nope/Missing-v0"], "not registered"),
    (["env.import_modules=[no_such_module_xyz]"], "cannot import"),
    (["rollout.constrain_actions=true", "rollout.template=alfworld"], "reasoning before the action"),
    (["train.learner_threads=0"], "train.learner_threads"),
    (["rollout.vllm.block_size=24"], "rollout.vllm.block_size"),
    (["model.lora.enabled=true", "model.lora.dropout=0.05"], "two forward passes"),
])
def test_config_errors_say_what_and_how_to_fix(tiny_model, tmp_path, override, match):
    with pytest.raises(ConfigError, match=match) as info:
        train(quick(tiny_model, tmp_path / "bad", *override))
    assert "Fix" in str(info.value) or "Use an alias" in str(info.value)


def test_lora_dropout_is_refused_for_rl_and_accepted_for_sft():
    cfg = compose_config(["model.lora.enabled=true", "model.lora.dropout=0.05"])
    with pytest.raises(ConfigError, match="model.lora.dropout: got 0.05"):
        validate(cfg)
    validate(cfg, rl=False)  # agent_rl.sft: one forward pass per update, no behaviour policy


def test_cli_lists_choices_for_a_misspelled_group(tmp_path):
    out = subprocess.run([sys.executable, "-m", "agent_rl.train", "env=alfwrld", f"hydra.run.dir={tmp_path}"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "alfworld" in out.stderr and "math" in out.stderr


def test_dr_grpo_normalises_by_a_rows_token_budget_not_the_minibatchs_longest_row():
    from agent_rl.train import learner_settings

    cfg = compose_config(["algo=dr_grpo", "rollout.max_new_tokens=24", "rollout.max_turns=15"])
    assert learner_settings(cfg, "cpu").norm_tokens == 24 * 15  # a trajectory row holds every turn's reply
    cfg = compose_config(["algo=dr_grpo", "rollout.max_new_tokens=24", "algo.ratio_unit=turn"])
    assert learner_settings(cfg, "cpu").norm_tokens == 24  # a turn row holds one reply


def test_presets_compose():
    paper = compose_config(["preset=paper_alfworld"])
    assert (paper.rollout.tasks_per_step, paper.rollout.group_size, paper.rollout.max_turns) == (16, 8, 50)
    assert paper.algo.kl_coef == 0.01 and paper.algo.entropy_coef == 0.001 and paper.train.lr == 1e-6
    assert paper.model.name == "Qwen/Qwen2.5-1.5B-Instruct"
    lc = compose_config(["preset=learning_curve"])
    assert lc.env.id == "agent_rl/Math-v0" and "split" not in lc.env.kwargs
    grpo = compose_config(["algo=grpo"])
    assert grpo.algo.loss == "grpo" and grpo.algo.p_at(5, 10) == 1.0
    # the baselines' own papers' clip ranges
    gspo = compose_config(["algo=gspo"])
    assert (gspo.algo.clip_low, gspo.algo.clip_high) == (3e-4, 4e-4)
    gmpo = compose_config(["algo=gmpo", "algo.clip_high=0.3"])  # an override still wins
    assert math.log1p(-gmpo.algo.clip_low) == pytest.approx(-0.4) and gmpo.algo.clip_high == 0.3


def test_trainer_with_env_workers_as_local_ray_actors(tiny_model, tmp_path):
    pytest.importorskip("ray")
    import ray

    try:
        metrics = train(quick(tiny_model, tmp_path / "ray", "train.steps=1", "ray.enabled=true", "ray.num_cpus=2",
                              "env.num_workers=2", env=("env=math",)))
    finally:
        ray.shutdown()
    assert metrics["train/step"] == 1 and metrics["rollout/num_episodes"] == 4 and metrics["rollout/error_rate"] == 0


def test_lora_trains_only_the_adapter_and_resumes(tiny_model, tmp_path):
    pytest.importorskip("peft")
    from trainers.checkpoint import latest_checkpoint

    run = tmp_path / "lora"
    lora = ("model.lora.enabled=true", "model.lora.r=4", "model.lora.alpha=8")
    train(quick(tiny_model, run, "train.steps=1", *lora))
    ckpt = latest_checkpoint(run)
    assert (ckpt / "adapter_model.safetensors").exists() and not (ckpt / "model.safetensors").exists()
    metrics = train(quick(tiny_model, run, "train.steps=2", *lora))
    assert metrics["train/step"] == 2 and latest_checkpoint(run).name == "step_000002"
    # eval --checkpoint loads an adapter checkpoint as base + merged adapter
    from trainers.models import load_model_and_tokenizer

    merged, _ = load_model_and_tokenizer(latest_checkpoint(run))
    base, _ = load_model_and_tokenizer(tiny_model)
    assert type(merged).__name__ == type(base).__name__
    assert any(not torch.equal(a, b) for a, b in zip(merged.parameters(), base.parameters()))


def test_sigkill_mid_run_loses_at_most_the_step_in_flight(tiny_model, tmp_path):
    import os
    import signal
    import time

    run = tmp_path / "killed"
    # a user env module for the subprocess: every step takes 1 s, so the kill lands inside step 2
    (tmp_path / "slow_env.py").write_text(
        "import time, gymnasium as gym\n"
        "class Slow(gym.Env):\n"
        "    metadata = {'render_modes': []}\n"
        "    def __init__(self):\n"
        "        from envs.spaces import UnicodeText\n"
        "        self.observation_space = self.action_space = UnicodeText()\n"
        "    def reset(self, *, seed=None, options=None):\n"
        "        super().reset(seed=seed)\n"
        "        return 'Write many a letters.', {'task': 'a', 'task_id': 'a', 'won': False}\n"
        "    def step(self, action):\n"
        "        time.sleep(1.0)\n"
        "        r = action.count('a') / max(len(action), 1)\n"
        "        return 'Done.', r, True, False, {'won': r > 0.2}\n"
        "gym.register(id='slow_test/Slow-v0', entry_point=Slow)\n")
    args = [sys.executable, "-m", "agent_rl.train", "env=custom", "env.id=slow_test/Slow-v0",
            "env.import_modules=[slow_env]", f"model.name={tiny_model}", "rollout.group_size=2",
            "rollout.tasks_per_step=2", "rollout.max_new_tokens=8", "rollout.max_turns=1", "train.steps=3",
            "train.keep_checkpoints=5", "train.micro_batch_tokens=512", f"train.run_dir={run}", "logging.wandb=false",
            f"hydra.run.dir={run}/h"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (run / "checkpoints" / "step_000001" / "trainer_state.json").exists():
        assert proc.poll() is None and time.time() < deadline, "the first step never finished"
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)  # inside step 2's rollout (its env step sleeps 1 s)
    proc.wait()
    from trainers.checkpoint import latest_checkpoint

    done = int(latest_checkpoint(run).name.split("_")[1])
    assert done == 1 and not (run / "checkpoints" / "step_000002").exists()
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[-(3 - done):] == list(range(done + 1, 4))  # continued after the last complete step
    assert latest_checkpoint(run).name == "step_000003"


def _readme_commands(module: str) -> list[list[str]]:
    """Every `python -m <module> ...` (or `torchrun ... -m <module> ...`) command of the README's code blocks
    (line continuations joined), as Hydra overrides."""
    import re
    import shlex
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    out = []
    for line in lines:
        line = line.split(" #", 1)[0]
        if f" -m {module} " in f" {line} ":
            out.append(shlex.split(line.split(f"-m {module}", 1)[1]))
    return out


def test_every_readme_train_and_sft_command_composes_and_validates():
    from agent_rl.validation import validate_sft

    commands = _readme_commands("agent_rl.train") + _readme_commands("agent_rl.sft")
    assert len(commands) >= 9
    for args in commands:
        cfg = compose_config(args)
        validate(cfg)
        if "sft." in " ".join(args):
            validate_sft(cfg)


def test_bf16_models_train_float32_master_weights(tiny_model, tmp_path):
    """At lr 1e-6 bf16 weights would round most AdamW updates away; the trained weights are float32 masters
    (computing in bf16 through autocast), so one step moves nearly all of them."""
    from trainers.checkpoint import latest_checkpoint
    from trainers.models import load_model_and_tokenizer

    run = tmp_path / "bf16"
    train(quick(tiny_model, run, "train.steps=1", "train.lr=1e-6", "model.dtype=bfloat16"))
    before, _ = load_model_and_tokenizer(tiny_model)
    after, _ = load_model_and_tokenizer(latest_checkpoint(run))
    assert all(p.dtype == torch.float32 for p in after.parameters())  # the checkpoint keeps the masters
    changed = sum(int((a != b).sum()) for a, b in zip(before.parameters(), after.parameters()))
    total = sum(p.numel() for p in before.parameters())
    assert changed / total >= 0.9, f"only {changed / total:.1%} of the weights moved"


def test_bf16_lora_keeps_the_base_in_bf16_and_the_adapter_in_float32(tiny_model):
    pytest.importorskip("peft")
    from agent_rl.train import learner_autocast, load_model

    cfg = compose_config([f"model.name={tiny_model}", "model.dtype=bfloat16", "model.lora.enabled=true",
                          "model.lora.r=4"])
    model, _ = load_model(cfg)
    trainable = [p for p in model.parameters() if p.requires_grad]
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    assert learner_autocast(cfg) is True


def test_train_bf16_true_keeps_float32_on_a_cpu_without_native_bf16(monkeypatch):
    """train.bf16=true asks for bf16 autocast on CPU for speed; where the CPU has no native bf16 it is emulated
    (~20x slower than float32), so the learner stays float32 and says why."""
    import agent_rl.train as train_mod

    warned: list[str] = []
    monkeypatch.setattr(train_mod.log, "warning", lambda msg, *a: warned.append(msg % a if a else msg))
    on = compose_config(["train.bf16=true"])
    assert train_mod.learner_autocast(on, "cpu", cpu_native_bf16=True) is True and not warned
    assert train_mod.learner_autocast(on, "cpu", cpu_native_bf16=False) is False
    assert len(warned) == 1 and "no native bf16" in warned[0] and "float32" in warned[0]
    assert train_mod.learner_autocast(on, "cuda", cpu_native_bf16=False) is True  # the GPU's bf16, not the CPU's
    assert train_mod.learner_autocast(compose_config([]), "cpu", cpu_native_bf16=False) is None  # null: CUDA only
    # a bfloat16 model computes in bf16 whatever the CPU (its float32 masters need the autocast)
    assert train_mod.learner_autocast(compose_config(["model.dtype=bfloat16"]), "cpu", cpu_native_bf16=False) is True


class _ScriptedEngine:
    """RolloutEngine stand-in: a group's rewards are ``rewards[task_id]`` (default all 0); records the tasks."""

    def __init__(self, rewards):
        self.rewards, self.runs = rewards, []

    def run(self, tasks, group_size):
        from agent_rl.types import Trajectory

        self.runs.append([t.task_id for t in tasks])
        self.seeds = getattr(self, "seeds", []) + [t.seed for t in tasks]
        out = []
        for k, task in enumerate(tasks):
            rs = self.rewards.get(task.task_id, [0.0] * group_size)
            out += [Trajectory(traj_id=f"{len(self.runs)}:{k}:{j}", group_id=f"{len(self.runs)}:{k}", task_id=task.task_id,
                               reward=r) for j, r in enumerate(rs)]
        return out, {"rollout/success_rate": 0.0}


def test_dynamic_sampling_keeps_a_group_whose_rewards_are_equal_but_whose_turn_rows_differ():
    from agent_rl.types import Trajectory, Turn
    from trainers.batch import informative_groups

    def traj(j, group, observations, valid, reward):
        turns = [Turn(observation=o, prompt_ids=[1, 2], response_ids=[3], response_logprobs=[-0.5], action_valid=v,
                      reward=r) for o, v, r in zip(observations, valid, reward)]
        return Trajectory(traj_id=f"{group}:{j}", group_id=group, task_id=group, turns=turns,
                          reward=sum(reward) - 0.1 * valid.count(False))

    # "a": both episodes won in 2 turns, one invalid turn each, at different turns: equal episode rewards
    a = [traj(0, "a", ["s0", "s1"], [False, True], [0.0, 1.0]), traj(1, "a", ["s0", "s2"], [True, False], [0.0, 1.0])]
    # "b": both won by the same path: no signal at any level
    b = [traj(j, "b", ["s0", "s1"], [True, True], [0.0, 1.0]) for j in range(2)]
    # "c": both won, one in 1 turn, one in 3 turns from the same start: GiGPO's anchor "s0" ranks them
    c = [traj(0, "c", ["s0"], [True], [1.0]), traj(1, "c", ["s0", "s3", "s4"], [True] * 3, [0.0, 0.0, 1.0])]
    assert all(len({t.reward for t in g}) == 1 for g in (a, b, c))
    kw = ["rollout.invalid_action_penalty=0.1"]
    assert informative_groups(compose_config(kw), a + b) == []  # episode rows: equal rewards, advantage 0
    assert informative_groups(compose_config(kw + ["algo.ratio_unit=turn"]), a + b) == [a]  # the invalid turns rank
    gigpo = compose_config(kw + ["algo=gigpo"])
    assert informative_groups(gigpo, b + c) == [c]  # the shorter path has the higher discounted return from s0
    assert informative_groups(compose_config(kw), c) == []


def test_dynamic_sampling_keeps_informative_groups_and_plays_more_tasks():
    import random

    from trainers.batch import collect_rollouts, sample_tasks

    cfg = compose_config(["rollout.group_size=2", "rollout.tasks_per_step=3", "algo.dynamic_sampling=true",
                          "algo.dynamic_sampling_rounds=4"])
    informative = {str(i): [0.0, 1.0] for i in range(0, 20, 2)}  # every other task's group has signal
    engine = _ScriptedEngine(informative)
    tasks = sample_tasks(random.Random(0), 20, 3, 0, 0)
    trajs, m = collect_rollouts(cfg, engine, tasks, 20, step=0)
    groups = {t.group_id for t in trajs}
    assert len(groups) == 3 and all(t.task_id in informative for t in trajs)
    assert m["rollout/informative_groups"] == 3 and m["rollout/extra_rounds"] == len(engine.runs) - 1
    assert m["rollout/tasks_played"] == sum(len(r) for r in engine.runs)
    assert len(engine.seeds) == len(set(engine.seeds)) > 3  # extra rounds never reuse a reset seed of this step
    # no signal anywhere: the extra rounds are bounded and the batch is empty
    engine = _ScriptedEngine({})
    trajs, m = collect_rollouts(cfg, engine, tasks, 20, step=1)
    assert trajs == [] and m["rollout/informative_groups"] == 0 and m["rollout/extra_rounds"] == 4
    assert len(engine.runs) == 5
    # off: everything is kept
    cfg = compose_config(["rollout.group_size=2", "rollout.tasks_per_step=3"])
    trajs, m = collect_rollouts(cfg, _ScriptedEngine({}), tasks, 20, step=0)
    assert len(trajs) == 6 and "rollout/informative_groups" not in m


def test_dynamic_sampling_step_without_signal_skips_the_update(tiny_model, tmp_path):
    """Echo: a random model never says the word, every group is all-zero; the step trains on nothing."""
    m = train(quick(tiny_model, tmp_path / "ds", "train.steps=1", "algo.dynamic_sampling=true",
                    "algo.dynamic_sampling_rounds=1", env=("env=custom", "env.id=test_user/Echo-v0")))
    assert m["rollout/informative_groups"] == 0 and m["rollout/extra_rounds"] == 1
    assert m["rollout/tasks_played"] == 4 and m["perf/optimizer_steps"] == 0


def test_trainer_runs_with_per_turn_ratio_rows(tiny_model, tmp_path):
    m = train(quick(tiny_model, tmp_path / "turn", "train.steps=1", "algo.ratio_unit=turn"))
    assert m["perf/optimizer_steps"] == 1 and math.isfinite(m["loss/policy"])
    with pytest.raises(ConfigError, match="prompt_mode=per_step"):
        validate(compose_config(["algo.ratio_unit=turn", "rollout.prompt_mode=conversation"]))


def test_p_reaches_p_end_on_the_last_step_and_step_schedules_need_p_steps():
    algo = compose_config(["train.steps=150"]).algo
    assert algo.p_at(0, 150) == pytest.approx(2 - 4 / 150) and algo.p_at(149, 150) == -2.0  # the authors' indexing
    assert [compose_config([]).algo.p_at(k, 4) for k in range(4)] == [1.0, 0.0, -1.0, -2.0]
    with pytest.raises(ConfigError, match="never switches"):
        validate(compose_config(["algo.p_schedule=step", "train.steps=10"]))
    validate(compose_config(["algo.p_schedule=step", "algo.p_steps=5", "train.steps=10"]))


def test_paper_preset_has_the_authors_alfworld_settings():
    cfg = compose_config(["preset=paper_alfworld"])
    validate(cfg)
    assert cfg.env.kwargs["reward_scale"] == 10.0 and cfg.train.weight_decay == 0.01 and cfg.train.steps == 150
    assert cfg.rollout.stop == [] and (cfg.algo.kl_coef, cfg.algo.entropy_coef) == (0.01, 0.001)
    assert cfg.rollout.lowercase_actions and not compose_config([]).rollout.lowercase_actions
    assert cfg.rollout.parser == "verl_agent" and compose_config([]).rollout.parser is None
    # their periodic eval: before training, then every 5 steps, on their protocol
    assert (cfg.train.eval_at_start, cfg.train.eval_every, cfg.train.eval_protocol) == (True, 5, "verl-agent")
    with pytest.raises(ConfigError, match="rollout.stop"):
        validate(compose_config(["rollout.stop=['']"]))


def test_rollout_parser_is_checked_before_anything_loads():
    """rollout.parser: an unknown name is answered with the close ones; a parser that cannot read the template's
    demonstration format back is refused when the template is resolved (before the model loads)."""
    import envs  # noqa: F401  (registers the env ids)
    from agent_rl.train import resolve_template

    with pytest.raises(ConfigError, match=r"rollout.parser: got 'verl-agent'; .*Did you mean 'verl_agent'"):
        validate(compose_config(["rollout.parser=verl-agent"]))
    cfg = compose_config(["env=alfworld", "preset=paper_alfworld"])
    template = resolve_template(cfg, "agent_rl/ALFWorld-v0")
    assert (template.name, template.parser) == ("alfworld", "verl_agent")
    with pytest.raises(ConfigError, match=r"rollout.parser: .*'alfworld_act'.* does not read back"):
        resolve_template(compose_config(["env=alfworld", "rollout.template=alfworld_act", "rollout.parser=verl_agent"]),
                         "agent_rl/ALFWorld-v0")


def test_trainer_runs_gigpo(tiny_model, tmp_path):
    m = train(quick(tiny_model, tmp_path / "gigpo", "train.steps=1", "algo=gigpo", "rollout.max_turns=2"))
    assert m["perf/optimizer_steps"] == 1 and math.isfinite(m["loss/policy"])


def test_failed_groups_are_replayed_once_and_dropped_if_they_fail_again():
    import random

    from trainers.batch import collect_rollouts, sample_tasks

    class Flaky(_ScriptedEngine):
        def __init__(self, fail_runs):
            super().__init__({})
            self.fail_runs = fail_runs

        def run(self, tasks, group_size):
            out, m = super().run(tasks, group_size)
            if len(self.runs) in self.fail_runs:  # this run's first group lost a worker
                for t in out:
                    if t.group_id.endswith(":0"):
                        t.info["error"] = "worker died"
            return out, m

    cfg = compose_config(["rollout.group_size=2", "rollout.tasks_per_step=3"])
    tasks = sample_tasks(random.Random(0), 20, 3, 0, 0)
    engine = Flaky({1})
    trajs, m = collect_rollouts(cfg, engine, tasks, 20, step=0)
    assert len(trajs) == 6 and m["rollout/retried_groups"] == 1 and engine.runs[1] == [tasks[0].task_id]
    assert m["rollout/dropped_episodes"] == 0  # the replay recovered them: nothing is left out
    engine = Flaky({1, 2})  # fails again: left out
    trajs, m = collect_rollouts(cfg, engine, tasks, 20, step=0)
    assert len(trajs) == 4 and m["rollout/dropped_episodes"] == 2 and len(engine.runs) == 2


def test_a_failed_group_is_replayed_alone_when_another_group_shares_its_task():
    # an env with fewer tasks than tasks_per_step samples with replacement: two groups of task "1"
    from agent_rl.types import TaskSpec
    from trainers.batch import collect_rollouts

    class FailsFirstGroupOnce(_ScriptedEngine):
        def run(self, tasks, group_size):
            out, m = super().run(tasks, group_size)
            if len(self.runs) == 1:
                for t in out[:group_size]:
                    t.info["error"] = "worker died"
            return out, m

    cfg = compose_config(["rollout.group_size=2", "rollout.tasks_per_step=2"])
    tasks = [TaskSpec(task_id="1", seed=10, options={"task": 1}), TaskSpec(task_id="1", seed=11, options={"task": 1})]
    engine = FailsFirstGroupOnce({})
    trajs, m = collect_rollouts(cfg, engine, tasks, 1, step=0)
    assert len(trajs) == 4 and m["rollout/retried_groups"] == 1 and m["rollout/dropped_episodes"] == 0
    assert engine.seeds == [10, 11, 10]  # the failed group's start state, once


def test_dynamic_sampling_extra_rounds_play_tasks_not_yet_played_this_step():
    import random

    from trainers.batch import collect_rollouts, sample_tasks

    cfg = compose_config(["rollout.group_size=2", "rollout.tasks_per_step=3", "algo.dynamic_sampling=true",
                          "algo.dynamic_sampling_rounds=4"])
    for step in (0, 1, 2):  # step 0 with train.seed 0: the first draw's stream is random.Random(0)
        tasks = sample_tasks(random.Random(0), 20, 3, step, 0)
        engine = _ScriptedEngine({})  # no signal: every extra round is played
        collect_rollouts(cfg, engine, tasks, 20, step=step)
        played = [task for run in engine.runs for task in run]
        assert len(played) == 15 and len(set(played)) == 15, engine.runs  # 15 of the env's 20 tasks, none twice
    # more rounds than unplayed tasks: each task once, then repeats
    few = sample_tasks(random.Random(0), 4, 3, 0, 0)
    engine = _ScriptedEngine({})
    collect_rollouts(cfg, engine, few, 4, step=0)
    played = [task for run in engine.runs for task in run]
    assert set(played[:4]) == {"0", "1", "2", "3"} and len(played) == 15


def test_periodic_eval_follows_the_eval_protocol(monkeypatch):
    import eval.runner
    from agent_rl.train import run_periodic_eval

    seen = {}

    def fake_evaluate(policy, **kwargs):
        seen.update(kwargs)
        return SimpleNamespace(metrics={"eval/success_rate": 0.5, "other": 1.0})

    monkeypatch.setattr(eval.runner, "evaluate", fake_evaluate)
    cfg = compose_config(["env=alfworld", "train.eval_protocol=verl-agent"])
    validate(cfg)
    assert run_periodic_eval(cfg, "agent_rl/ALFWorld-v0", None, 0) == {"eval/success_rate": 0.5}
    assert (seen["env_kwargs"]["split"], seen["episodes"], seen["temperature"]) == ("valid_seen", 128, 0.4)
    run_periodic_eval(compose_config(["env=alfworld", "train.eval_episodes=7"]), "agent_rl/ALFWorld-v0", None, 0)
    assert (seen["env_kwargs"]["split"], seen["episodes"], seen["temperature"]) == ("valid_unseen", 7, 0.0)
    assert seen["rollout_kwargs"]["stop"] is None and not seen["rollout_kwargs"]["lowercase_actions"]
    # the eval replies end, and their actions are cased, as the training rollout's do
    run_periodic_eval(compose_config(["env=alfworld", "preset=paper_alfworld"]), "agent_rl/ALFWorld-v0", None, 0)
    assert seen["rollout_kwargs"]["stop"] == [] and seen["rollout_kwargs"]["lowercase_actions"] is True
    assert seen["rollout_kwargs"]["parser"] == "verl_agent"
    json.dumps(seen["rollout_kwargs"])  # written into the eval's results.json
    with pytest.raises(ConfigError, match="valid_seen"):
        validate(compose_config(["env=math", "train.eval_protocol=verl-agent"]))


def test_colocated_sleep_mode_order_in_the_trainer(tiny_model, tmp_path, monkeypatch):
    """rollout.vllm.sleep_mode: each step plays its batch, puts the engine to sleep for the update, then the weight
    sync wakes it with the new weights. The engine is faked by an hf policy holding its own weights (vLLM's
    sleep mode needs a GPU; its wake order inside VLLMPolicy is tested in test_async_rollout)."""
    import agent_rl.train as train_mod
    from trainers.policies.hf import HFPolicy

    events: list[str] = []

    class Colocated(HFPolicy):
        sleeping = False

        def generate(self, prompts, params, choices=None):
            assert not self.sleeping, "a sleeping engine was asked to generate"
            if not events or events[-1] != "generate":
                events.append("generate")
            return super().generate(prompts, params, choices)

        def sleep(self):
            events.append("sleep")
            self.sleeping = True

        def sync_weights(self, named_tensors):
            events.append("wake+sync")
            self.sleeping = False
            state = {n: t.detach().clone() for n, t in named_tensors}
            self.model.load_state_dict(state, strict=False)

        def close(self):
            pass

    monkeypatch.setattr(train_mod, "make_rollout_policy", lambda cfg, model, tok, start_step=0: Colocated(cfg.model.name))
    metrics = train(quick(tiny_model, tmp_path / "sleep", "rollout=vllm", "rollout.vllm.sleep_mode=true",
                          "train.eval_every=2", "train.eval_episodes=2"))
    assert metrics["train/step"] == 2 and "eval/success_rate" in metrics
    assert events == ["generate", "sleep", "wake+sync", "generate", "sleep", "wake+sync", "generate"]  # last: eval


def test_adaptive_p_in_the_trainer_follows_the_logged_ess_and_resumes(tiny_model, tmp_path):
    run = tmp_path / "adaptive"
    args = ("algo.p_schedule=adaptive", "algo.p_target_ess=0.97", "algo.num_minibatches=2")
    train(quick(tiny_model, run, *args, "train.steps=3"))
    train(quick(tiny_model, run, *args, "train.steps=4"))  # resumed: continues the walk from the checkpoint
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    incs = [-4.0 / 3] * 3 + [-4.0 / 4]  # (p_end − p_start) / train.steps of the run that made the step
    p = [r["loss/p"] for r in rows]
    assert p[0] == 2.0  # no signal before the first step
    moves = []
    for k in (1, 2, 3):
        ess = rows[k - 1]["loss/token_weight_ess_offpolicy"]  # the second minibatch's weights (1 exactly at p = 0)
        back = ess < 0.97
        want = p[k - 1] - math.copysign(min(abs(incs[k]), abs(p[k - 1])), p[k - 1]) if back else p[k - 1] + incs[k]
        assert p[k] == pytest.approx(max(min(want, 2.0), -2.0)), (k, ess)
        moves.append(back)
    assert True in moves and False in moves, [r["loss/token_weight_ess_offpolicy"] for r in rows]  # both branches ran


def test_the_vllm_engine_seed_is_the_run_seed_and_on_a_resume_one_of_its_own():
    from agent_rl.rollout_side import engine_seed

    assert engine_seed(7, 0) == 7  # a fresh run: train.seed, as the README says
    seeds = {engine_seed(seed, step) for seed in (0, 1, 7) for step in (1, 2, 3, 100)}
    assert len(seeds) == 12 and all(0 <= s < 2**31 for s in seeds)  # distinct, in any engine's seed range
    assert engine_seed(7, 3) == engine_seed(7, 3)  # reproducible: resuming twice at one step samples alike


def test_loss_p_is_the_p_the_loss_used(tiny_model, tmp_path):
    # grpo fixes p = 1 whatever the (default, linear 2 -> -2) schedule says; holder uses the scheduled p
    rows = {}
    for loss in ("grpo", "holder"):
        train(quick(tiny_model, tmp_path / loss, f"algo.loss={loss}", "train.steps=2"))
        rows[loss] = [json.loads(x)["loss/p"] for x in (tmp_path / loss / "metrics.jsonl").read_text().splitlines()]
    assert rows["grpo"] == [1.0, 1.0] and rows["holder"] == [0.0, -2.0]  # holder: the schedule at steps 1, 2 of 2
