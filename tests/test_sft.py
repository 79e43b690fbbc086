"""SFT warm start: demonstrations rendered exactly as the rollout renders prompts, reply-only loss,
a tiny-model run that learns and writes a checkpoint train and eval load, DAgger, bad files."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import pytest
import torch

from agent_rl.config import ConfigError
from agent_rl.sft import sft
from agent_rl.train import compose_config, train
from agent_rl.types import TaskSpec
from envs.pool import EnvPool
from envs.spaces import UnicodeText
from prompts.render import get_template
from trainers.demonstrations import (
    DemonstrationFileError,
    ExpertMix,
    TokenizerOnlyPolicy,
    demonstrations_from,
    read_jsonl,
    write_jsonl,
)
from trainers.models import build_tiny_model, load_model_and_tokenizer
from trainers.policies.base import Generation, SamplingParams

ROOT = Path(__file__).resolve().parents[1]
from trainers.rollout import RolloutEngine
from trainers.sft import SftLearner, SftSettings, sft_sequences

ENV_ID = "test_sft/Rooms-v0"


class RoomsEnv(gym.Env):
    """Task i: the key is in room i % 3 of three; the expert opens rooms in order until it has it.
    Its observations change each step, so every state's prompt differs."""

    metadata = {"render_modes": [], "prompt_template": "alfworld_act"}
    ROOMS = ("red", "green", "blue")

    def __init__(self, num_tasks: int = 6, expert: bool = True, max_episode_steps: int = 6):
        self.observation_space = UnicodeText()
        self.action_space = UnicodeText()
        self.num_tasks = num_tasks
        self.task_ids = [f"rooms-{i}" for i in range(num_tasks)]
        self.expert = expert

    def _info(self, **extra):
        commands = [f"open {r}" for r in self.ROOMS if r not in self.opened] + (["take key"] if self.seen else [])
        info = {"task": "find the key", "task_id": self.task_ids[self.task], "task_type": "rooms", "won": self.won,
                "admissible_commands": commands, **extra}
        if self.expert:
            info["expert_action"] = None if self.won else ("take key" if self.seen else commands[0])
        return info

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.task = int(options["task"]) % self.num_tasks
        self.opened, self.seen, self.won = [], False, False
        return "You are in a hall with three doors.", self._info()

    def step(self, action):
        action = action.strip().lower()
        valid = action in self._info()["admissible_commands"]
        if valid and action.startswith("open "):
            self.opened.append(action[5:])
            self.seen = self.ROOMS.index(action[5:]) == self.task % 3
            text = f"You open the {action[5:]} room. " + ("You see a key." if self.seen else "It is empty.")
        elif valid:
            self.won, text = True, "You take the key."
        else:
            text = "Nothing happens."
        return text, float(self.won), self.won, False, self._info(action_valid=valid)


if ENV_ID not in gym.registry:
    gym.register(ENV_ID, entry_point=RoomsEnv, disable_env_checker=True)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny")))


def _expert_demos(tokenizer, tasks=(0, 1, 2)):
    template = get_template("alfworld_act")
    with EnvPool(ENV_ID, 3, {}) as pool:
        engine = RolloutEngine(TokenizerOnlyPolicy(tokenizer), pool, max_turns=6, template=template, progress=False,
                               sampling=SamplingParams(temperature=0.0, max_tokens=16), expert=ExpertMix(1.0))
        trajectories, _ = engine.run([TaskSpec(f"rooms-{i}", seed=i, options={"task": i}) for i in tasks], 1)
    return trajectories, demonstrations_from(trajectories, template, {"source": "test"})


class ReplayPolicy:
    """Plays given replies in order (the expert's own, as text): a model that imitates perfectly."""

    def __init__(self, tokenizer, replies):
        self.tokenizer, self.replies, self.prompts = tokenizer, list(replies), []

    def generate(self, prompts, params):
        out = []
        for p in prompts:
            self.prompts.append(list(p))
            ids = self.tokenizer(self.replies.pop(0), add_special_tokens=False)["input_ids"]
            out.append([Generation(list(ids), [0.0] * len(ids), self.tokenizer.decode(ids), "stop")])
        return out


def test_demonstration_prompts_are_token_exact_the_rollout_prompts(tiny_model):
    _, tokenizer = load_model_and_tokenizer(tiny_model)
    trajectories, demos = _expert_demos(tokenizer, tasks=(2,))  # key in the third room: 4 turns
    assert [d.reply for d in demos] == ["<action>open red</action>", "<action>open green</action>",
                                        "<action>open blue</action>", "<action>take key</action>"]
    assert trajectories[0].won
    # The same episode played by a model that writes the expert's replies, through the plain
    # (training/eval) rollout: what it is shown at each state is what SFT trains on.
    policy = ReplayPolicy(tokenizer, [d.reply for d in demos])
    with EnvPool(ENV_ID, 1, {"expert": False}) as pool:
        engine = RolloutEngine(policy, pool, max_turns=6, template="alfworld_act", progress=False,
                               sampling=SamplingParams(temperature=0.0, max_tokens=16))
        played, _ = engine.run([TaskSpec("rooms-2", seed=2, options={"task": 2})], 1)
    assert played[0].won
    sequences = sft_sequences(demos, tokenizer)
    assert len(policy.prompts) == len(sequences) == 4
    for seq, seen, turn in zip(sequences, policy.prompts, played[0].turns):
        prompt = seq.input_ids[: seq.loss_mask.index(1)]
        assert prompt == seen == turn.prompt_ids
        assert seq.input_ids[len(prompt):] == turn.response_ids  # the reply tokens are the ones RL would sample


def test_sft_loss_covers_reply_tokens_only(tiny_model):
    model, tokenizer = load_model_and_tokenizer(tiny_model, dtype=torch.float64)
    _, demos = _expert_demos(tokenizer, tasks=(1,))
    seqs = sft_sequences(demos, tokenizer)
    learner = SftLearner(model, torch.optim.SGD(model.parameters(), lr=0.0), SftSettings(micro_batch_tokens=4096))
    total, n_tokens = learner.nll(seqs, list(range(len(seqs))), backward=False)
    expected, count = 0.0, 0
    with torch.no_grad():
        for s in seqs:
            ids = torch.tensor([s.input_ids])
            logp = model(ids).logits.log_softmax(-1)[0, :-1].gather(-1, ids[0, 1:, None])[:, 0]  # [T-1]
            start = s.loss_mask.index(1)
            assert all(m == 0 for m in s.loss_mask[:start]) and all(m == 1 for m in s.loss_mask[start:])
            expected -= float(logp[start - 1:].sum())  # token t is predicted at position t-1
            count += len(s.input_ids) - start
    assert n_tokens == count
    assert total == pytest.approx(expected, rel=1e-6)  # the learner sums float32 logprobs; one token more or less is ~1e-2


def _sft_cfg(tiny_model, run_dir, *extra):
    return compose_config([
        "env=custom", f"env.id={ENV_ID}", f"model.name={tiny_model}", "rollout=hf", "rollout.template=alfworld_act",
        "rollout.max_turns=6", "rollout.max_new_tokens=12", "sft.games=6", "sft.heldout_games=1", "sft.expert=null",
        "sft.epochs=30", "sft.batch_size=8", "sft.lr=3e-3", "sft.warmup_steps=2", "train.micro_batch_tokens=2048",
        f"train.run_dir={run_dir}", "logging.wandb=false", "train.progress=false", *extra,
    ])


def _nll(model_path, demos):
    model, tokenizer = load_model_and_tokenizer(str(model_path))
    seqs = sft_sequences(demos, tokenizer)
    learner = SftLearner(model, torch.optim.SGD(model.parameters(), lr=0.0), SftSettings())
    total, n = learner.nll(seqs, list(range(len(seqs))), backward=False)
    return total / n


def test_sft_run_learns_and_train_and_eval_load_its_checkpoint(tiny_model, tmp_path):
    run = tmp_path / "sft"
    metrics = sft(_sft_cfg(tiny_model, run))
    demos = read_jsonl([run / "demos" / "round_0.jsonl"])
    assert len(demos) == metrics["sft/demonstrations"] + sum(d.game_id == demos[0].game_id for d in demos)
    assert {d.stamp["source"] for d in demos} == {"expert:env"} and demos[0].messages[-1]["role"] == "user"
    ckpt = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    before, after = _nll(tiny_model, demos), _nll(ckpt, demos)
    assert after < 0.5 * before, (before, after)
    assert metrics["heldout/loss_round0"] < before

    # RL starts from the SFT run dir; resuming it as an RL run is refused.
    rl = train(compose_config([
        "env=custom", f"env.id={ENV_ID}", f"model.name={run}", "rollout=hf", "rollout.template=alfworld_act", "rollout.group_size=2",
        "rollout.tasks_per_step=2", "rollout.max_turns=4", "rollout.max_new_tokens=12", "train.steps=1",
        "train.micro_batch_tokens=2048", f"train.run_dir={tmp_path / 'rl'}", "logging.wandb=false",
        "train.progress=false"]))
    assert rl["rollout/invalid_action_rate"] < 0.9  # the untrained tiny model writes no admissible <action> at all
    with pytest.raises(ConfigError, match="SFT run"):
        train(_sft_cfg(tiny_model, run, "train.steps=1", "rollout.group_size=2"))

    # eval --checkpoint <sft run dir> loads it and plays with the same template.
    out = tmp_path / "eval"
    proc = subprocess.run(
        [sys.executable, "-m", "agent_rl.eval", "--env", ENV_ID, "--import-module", "tests.test_sft", "--checkpoint",
         str(run), "--episodes", "3", "--max-steps", "6", "--max-new-tokens", "12", "--backend", "hf",
         "--out", str(out), "--no-progress", "--no-plot"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "using the run's prompt template 'alfworld_act'" in proc.stderr  # no --template needed
    results = json.loads((out / "results.json").read_text())
    assert results["episodes"] == 3
    for r in map(json.loads, (out / "episodes.jsonl").read_text().splitlines()):  # every turn's action is kept
        assert len(r["actions"]) == r["steps"] >= 1 and r["actions"][-1] == r["last_action"]


def test_sft_rerun_after_a_crash_replaces_the_crashed_attempts_demonstrations(tiny_model, tmp_path):
    run = tmp_path / "sft"
    (run / "demos").mkdir(parents=True)
    (run / "demos" / "round_0.jsonl").write_text('{"messages": [{"role": "user", "content": "old"}], "reply": "<act')
    metrics = sft(_sft_cfg(tiny_model, run, "sft.epochs=1"))  # the crashed attempt left no checkpoint: allowed
    demos = read_jsonl([run / "demos" / "round_0.jsonl"])  # strict: no torn line in the middle
    heldout = sum(d.game_id == demos[0].game_id for d in demos)
    assert len(demos) == metrics["sft/demonstrations"] + heldout and metrics["demos/round0_turns"] == len(demos)


def test_sft_with_frozen_layers_keeps_their_activations_across_epochs(tiny_model, tmp_path):
    metrics = sft(_sft_cfg(tiny_model, tmp_path / "sft", "model.freeze_layers=1", "sft.epochs=3"))
    # epoch 1 runs both layers and keeps layer 1's input; epochs 2-3 start there (trainers.frozen_cache)
    assert metrics["perf/frozen_cache_hits"] > metrics["perf/frozen_cache_misses"] > 0
    assert 0 < metrics["perf/frozen_cache_gb"] < 4.0


@pytest.mark.parametrize("backend", ["hf", "vllm"])
def test_dagger_round_labels_the_states_the_model_reaches(tiny_model, tmp_path, backend):
    """The model's turns are played by the rollout backend (vllm: an engine synced with the SFT weights)."""
    if backend == "vllm":
        from test_policies import need_vllm

        need_vllm()
    run = tmp_path / "dagger"
    metrics = sft(_sft_cfg(tiny_model, run, "sft.epochs=2", "sft.dagger_rounds=1", "sft.dagger_games=6",
                           "sft.dagger_beta=0.0", f"rollout.backend={backend}", "rollout.vllm.dtype=float32",
                           "rollout.vllm.max_model_len=1024"))
    round1 = read_jsonl([run / "demos" / "round_1.jsonl"])
    assert {d.stamp["actor"] for d in round1} == {"policy"} and {d.stamp["round"] for d in round1} == {1}
    # every label is the expert's action for the state the model was in (its reply format)
    assert all(d.reply.startswith("<action>") for d in round1)
    assert metrics["demos/round1_episodes"] == 6  # every game of the env, the held-out one too...
    heldout = read_jsonl([run / "demos" / "round_0.jsonl"])[0].game_id  # sft.heldout_games=1: round 0's first
    assert metrics["demos/round1_heldout_turns_dropped"] > 0 and heldout not in {d.game_id for d in round1}  # ...not trained on
    assert metrics["sft/demonstrations"] >= len(round1)


@pytest.mark.parametrize("content, match", [
    ("not json\n", "not a JSON object"),
    ('[1, 2]\n', "a demonstration is a JSON object"),
    ('{"messages": [], "reply": "x"}\n', "'messages' must be a non-empty list"),
    ('{"messages": [{"role": "bot", "content": "hi"}], "reply": "x"}\n', r"messages\[0\] must be"),
    ('{"messages": [{"role": "assistant", "content": "hi"}], "reply": "x"}\n', "the last message must be the user's"),
    ('{"messages": [{"role": "user", "content": "hi"}], "reply": ""}\n', "'reply' must be non-empty"),
    ("", "hold no demonstrations"),
])
def test_bad_demonstration_files_say_what_why_fix(tmp_path, content, match):
    path = tmp_path / "demos.jsonl"
    path.write_text(content)
    with pytest.raises(DemonstrationFileError, match=match) as info:
        read_jsonl([path])
    assert "Fix" in str(info.value) or "hold no" in str(info.value)
    assert path.read_text() == content  # reading never changes the file


def test_bad_demo_file_stops_sft_before_any_model_loads_and_keeps_written_demos(tiny_model, tmp_path):
    good = tmp_path / "good.jsonl"
    write_jsonl(good, [])
    line = json.dumps({"messages": [{"role": "user", "content": "hi"}], "reply": "<action>open red</action>"})
    good.write_text(line + "\n")
    write_jsonl(good, read_jsonl([good]))  # appends: what was there stays
    assert good.read_text().count("\n") == 2
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + (line + "\n").encode())  # UTF-8 with a byte-order mark
    assert len(read_jsonl([bom])) == 1
    write_jsonl(bom, read_jsonl([good]), append=False)  # replaces, atomically
    assert len(read_jsonl([bom])) == 2 and not list(tmp_path.glob("*.tmp"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(line + "\n{broken\n")
    proc = subprocess.run(
        [sys.executable, "-m", "agent_rl.sft", "env=custom", f"env.id={ENV_ID}", "env.import_modules=[tests.test_sft]",
         "model.name=/nonexistent/model", f"sft.demos=[{good},{bad}]", f"train.run_dir={tmp_path / 'run'}",
         "logging.wandb=false"], capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert not (tmp_path / "outputs").exists() and (tmp_path / "run" / ".hydra").is_dir()  # Hydra's files in the run
    assert f"{bad}:2: not a JSON object" in proc.stderr and "Fix:" in proc.stderr
    assert good.read_text().count("\n") == 2 and bad.read_text().endswith("{broken\n")
    # a torn last line of our own writer (killed mid-line) is dropped when asked
    torn = tmp_path / "torn.jsonl"
    torn.write_text(line + "\n" + line[:20])
    assert len(read_jsonl([torn], allow_torn_tail=True)) == 1
    with pytest.raises(DemonstrationFileError):
        read_jsonl([torn])


def test_templates_without_a_reply_format_are_refused_for_demonstrations(tiny_model, tmp_path):
    with pytest.raises(ConfigError, match="no demonstration reply format"):
        sft(_sft_cfg(tiny_model, tmp_path / "r", "rollout.template=alfworld"))


def test_time_budget_counts_training_only(monkeypatch):
    from agent_rl import sft as sft_module

    clock = [100.0]
    monkeypatch.setattr(sft_module.time, "monotonic", lambda: clock[0])
    budget = sft_module._TrainingBudget(60.0)
    clock[0] += 500  # collecting demonstrations: not counted
    with budget.running() as deadline:
        assert deadline == 660.0
        clock[0] += 45
    clock[0] += 300  # a DAgger round's collection
    assert not budget.spent()
    with budget.running() as deadline:
        assert deadline == clock[0] + 15
        clock[0] += 20
    assert budget.spent()
    unlimited = sft_module._TrainingBudget(None)
    with unlimited.running() as deadline:
        assert deadline is None
    assert not unlimited.spent()


def test_a_time_budget_ends_the_cosine_at_its_deadline_not_mid_schedule(tiny_model, monkeypatch):
    from trainers import sft as sft_learner

    model, tokenizer = load_model_and_tokenizer(tiny_model)
    _, demos = _expert_demos(tokenizer, tasks=(1,))
    seqs = sft_sequences(demos, tokenizer)
    settings = SftSettings(epochs=1000.0, batch_size=1, warmup_steps=2)  # planned: thousands of steps
    learner = SftLearner(model, torch.optim.SGD(model.parameters(), lr=1e-6), settings)
    assert learner._lr_factor(5, 1000, time_progress=1.0) == pytest.approx(0.1)  # the budget's end: the floor
    assert learner._lr_factor(5, 1000, time_progress=0.5) == pytest.approx(0.55)
    assert learner._lr_factor(5, 1000) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 3 / 998)))
    assert learner._lr_factor(1000, 1000, time_progress=0.2) == pytest.approx(0.1)  # the steps end first

    clock = [0.0]

    def tick():  # every reading of the clock is one second later
        clock[0] += 1.0
        return clock[0]

    monkeypatch.setattr(sft_learner.time, "monotonic", tick)
    lrs: list[float] = []
    metrics = learner.fit(seqs, deadline=40.0, log=lambda step, m: lrs.append(m["sft/lr"] / 1e-6))
    assert metrics["sft/stopped_by_time_budget"] == 1.0 and 5 < len(lrs) < 40
    assert lrs[:2] == pytest.approx([1 / 3, 2 / 3])  # warmup by steps
    assert lrs[-1] < 0.15 and all(a >= b for a, b in zip(lrs[2:], lrs[3:]))  # decays to ~10% by the deadline


@pytest.mark.parametrize("n, batch_size, epochs", [(5, 16, 3), (12, 8, 4), (10, 4, 2.5)])
def test_sft_batches_hold_distinct_demonstrations_and_epochs_are_what_they_say(tiny_model, n, batch_size, epochs):
    model, _ = load_model_and_tokenizer(tiny_model)
    learner = SftLearner(model, torch.optim.SGD(model.parameters(), lr=0.0),
                         SftSettings(epochs=epochs, batch_size=batch_size, warmup_steps=0))
    batches = []
    learner.nll = lambda seqs, batch, **kw: (batches.append(list(batch)), (1.0, 1))[1]  # records each step's batch
    metrics = learner.fit([[0, 1, 2]] * n)  # sequences: only their lengths are read outside nll
    assert all(len(b) == len(set(b)) == min(batch_size, n) for b in batches)  # no demonstration twice in a step
    seen = [i for b in batches for i in b]
    assert metrics["sft/epochs_done"] == pytest.approx(len(seen) / n) and len(seen) >= epochs * n
    counts = [seen.count(i) for i in range(n)]
    assert max(counts) - min(counts) <= 1  # every demonstration as often as the others, give or take the last epoch


def test_replies_that_end_only_at_end_of_sequence_are_trained_to_end_there(tiny_model, tmp_path, monkeypatch):
    import trainers.rollout
    import trainers.sft as sft_learner
    from trainers.sft import reply_end_ids

    _, tokenizer = load_model_and_tokenizer(tiny_model)
    eos = tokenizer.eos_token_id
    assert reply_end_ids(None, ["</action>"], tokenizer) == []  # the template's stop string ends the reply
    assert reply_end_ids(["\n"], None, tokenizer) == []
    assert reply_end_ids([], ["</action>"], tokenizer) == [eos]  # rollout.stop=[]: end-of-sequence only
    assert reply_end_ids(None, None, tokenizer) == [eos]  # a template without stop strings (math)
    demo = _expert_demos(tokenizer, tasks=(1,))[1][0]
    plain, closed = sft_sequences([demo], tokenizer)[0], sft_sequences([demo], tokenizer, [eos])[0]
    assert closed.input_ids == plain.input_ids + [eos] and closed.loss_mask == plain.loss_mask + [1]

    # the sft command: with rollout.stop=[] the replies it trains on end with the token the rollout stops at, and
    # the model's DAgger turns are sampled with the same stop list
    ends, stops = [], []
    real_sequences, real_init = sft_learner.sft_sequences, trainers.rollout.RolloutEngine.__init__

    def sequences(demos, tok, end_ids=()):
        ends.append(list(end_ids))
        return real_sequences(demos, tok, end_ids)

    def init(self, *args, **kwargs):
        stops.append(kwargs["sampling"].stop)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(sft_learner, "sft_sequences", sequences)
    monkeypatch.setattr(trainers.rollout.RolloutEngine, "__init__", init)
    sft(_sft_cfg(tiny_model, tmp_path / "eos", "rollout.stop=[]", "sft.epochs=1", "sft.dagger_rounds=1",
                 "sft.dagger_games=2", "rollout.backend=hf"))
    assert ends and all(e == [eos] for e in ends) and stops == [[], []]


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_the_sft_rounds_and_the_rl_run_after_them_draw_their_games_apart(seed):
    # round k once drew random.Random(7919 * seed + k), the trainer's stream at train.seed = k when seed = 0: its
    # first 20 steps x 4 tasks replayed round 0's 80 demonstrated games in order (RL on memorized games only)
    from agent_rl.rollout_side import task_draws
    from agent_rl.sft import demo_tasks

    cfg = compose_config(["env=alfworld", f"train.seed={seed}", "rollout.tasks_per_step=4"])
    demonstrated = {t.task_id for r in (0, 1) for t in demo_tasks(cfg, 3553, 80, r)}
    draw = task_draws(cfg, 3553)
    played = {t.task_id for step in range(1, 21) for t in draw(step)}
    assert len(demonstrated & played) <= 12, "chance alone gives 160 x 80 / 3553 = 3.6 games on average"
