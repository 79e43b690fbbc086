"""Eval runner and CLI: episode selection, resume, reference policies, ALFWorld expert, math with a tiny model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import gymnasium
import pytest

from eval import report
from eval.runner import ActionPolicy, EvalConfigError, evaluate

TEST_ENV = "agent_rl_test/Corridor-v0"


class Corridor(gymnasium.Env):
    """A test-only env: task i is won by saying "right" (i % 3) + 1 times; "left" does nothing;
    anything else is an invalid action. Task types cycle a, b."""

    metadata = {"render_modes": []}

    def __init__(self, num_tasks: int = 8, max_episode_steps: int = 50, broken_task: int | None = None):
        self.broken_task = broken_task
        self.task_ids = [f"corridor-{i}" for i in range(num_tasks)]
        self.task_types = ["a" if i % 2 == 0 else "b" for i in range(num_tasks)]
        self.max_episode_steps = max_episode_steps

    @property
    def num_tasks(self) -> int:
        return len(self.task_ids)

    def _info(self, **extra):
        need = self.task % 3 + 1 - self.rights
        return {"task": "go right", "task_id": self.task_ids[self.task], "task_type": self.task_types[self.task],
                "won": need <= 0, "admissible_commands": ["left", "right"],
                "expert_action": "right" if need > 0 else None, **extra}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.task, self.rights, self.steps = int(options["task"]), 0, 0
        if self.task == self.broken_task:
            raise RuntimeError("this game file is damaged")
        return "a corridor", self._info()

    def step(self, action):
        self.steps += 1
        valid = action in ("left", "right")
        self.rights += action == "right"
        info = self._info(action_valid=valid)
        truncated = not info["won"] and self.steps >= self.max_episode_steps
        return "you moved", float(info["won"]), info["won"], truncated, info


if TEST_ENV not in gymnasium.registry:
    gymnasium.register(TEST_ENV, entry_point=Corridor, disable_env_checker=True)


class Interrupting(ActionPolicy):
    """Plays like the expert, then raises KeyboardInterrupt at its ``after``-th action (a user's ^C)."""

    def __init__(self, after: int):
        self.after, self.calls = after, 0

    def act(self, observation, info, rng):
        self.calls += 1
        if self.calls > self.after:
            raise KeyboardInterrupt
        return info["expert_action"]


def test_expert_plays_each_task_once_in_order(tmp_path):
    result = evaluate("expert", env_id=TEST_ENV, out_dir=tmp_path, concurrency=3)
    records = result.records
    assert [r["task_index"] for r in records] == list(range(8))
    assert all(r["won"] for r in records) and [r["steps"] for r in records] == [i % 3 + 1 for i in range(8)]
    assert result.results["success_rate"] == 1.0 and result.results["episodes"] == 8
    assert result.metrics["eval/a/success_rate"] == 1.0 and "eval/episodes_per_s" in result.metrics
    assert result.results["task_set"]["num_tasks"] == 8
    for name in ("episodes.jsonl", "results.json", "results.csv", "success.png"):
        assert (tmp_path / name).is_file(), name
    lines = [json.loads(line) for line in (tmp_path / "episodes.jsonl").read_text().splitlines()]
    # The file is in finish order (task 3 needs 1 step, task 2 needs 3); each episode i seeded with seed + i.
    assert sorted(r["task_index"] for r in lines) == list(range(8)) and lines[2]["task_index"] == 3
    assert all(r["seed"] == r["task_index"] for r in lines)


def test_random_policy_is_seeded_and_counts_steps():
    a = evaluate("random", env_id=TEST_ENV, seed=3, max_steps=4, concurrency=4)
    b = evaluate("random", env_id=TEST_ENV, seed=3, max_steps=4, concurrency=2)  # other scheduling, same episodes
    strip = lambda rs: [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rs]  # noqa: E731
    assert strip(a.records) == strip(b.records)
    assert all(r["steps"] <= 4 for r in a.records)
    assert all(r["truncated"] for r in a.records if not r["won"])
    assert 0.0 < a.results["success_rate"] < 1.0  # "left" half the time: some lose within 4 steps


def test_subset_and_too_many_episodes():
    result = evaluate("expert", env_id=TEST_ENV, episodes=4)
    assert len(result.records) == 4
    assert sorted(result.results["per_task_type"]) == ["a", "b"]
    assert all(g["episodes"] == 2 for g in result.results["per_task_type"].values())
    with pytest.raises(EvalConfigError, match="asked for 9 episodes but .* has only 8 tasks"):
        evaluate("expert", env_id=TEST_ENV, episodes=9)


def test_interrupted_eval_resumes_without_replaying(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        evaluate(Interrupting(after=7), env_id=TEST_ENV, out_dir=tmp_path, concurrency=1)
    log = tmp_path / "episodes.jsonl"
    finished = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["task_index"] for r in finished] == [0, 1, 2, 3]  # 1+2+3+1 actions, the 8th raised
    with open(log, "a") as f:  # and a crash mid-write on top
        f.write('{"task_index": 4, "task_id": "corri')
    result = evaluate(Interrupting(after=10**9), env_id=TEST_ENV, out_dir=tmp_path, concurrency=2)
    assert result.results["episodes_this_run"] == 4 and result.results["resumed_episodes"] == 4
    assert sorted(r["task_index"] for r in result.records) == list(range(8))
    lines = log.read_text().splitlines()
    assert len(lines) == 8 and all(json.loads(line) for line in lines)


def test_resume_refuses_a_different_eval(tmp_path):
    evaluate("expert", env_id=TEST_ENV, out_dir=tmp_path, episodes=2, plot=False)
    with pytest.raises(EvalConfigError, match="different eval .*seed"):
        evaluate("expert", env_id=TEST_ENV, out_dir=tmp_path, episodes=2, seed=1, plot=False)
    # A longer eval of the same config resumes the shorter one (subsets are nested).
    result = evaluate("expert", env_id=TEST_ENV, out_dir=tmp_path, episodes=6, plot=False)
    assert result.results["resumed_episodes"] == 2 and result.results["episodes"] == 6


def test_a_failed_reset_is_a_recorded_loss():
    result = evaluate("expert", env_id=TEST_ENV, env_kwargs={"broken_task": 5}, concurrency=2)
    broken = result.records[5]
    assert not broken["won"] and "damaged" in broken["error"] and broken["task_type"] == "b"
    assert broken["task_id"] == "corridor-5"
    assert result.results["episodes_with_error"] == 1 and result.results["successes"] == 7


def test_bad_arguments_are_explained():
    with pytest.raises(EvalConfigError, match="temperature"):
        evaluate("expert", env_id=TEST_ENV, temperature=-1.0)
    with pytest.raises(TypeError, match="model policy"):
        evaluate(object(), env_id=TEST_ENV)
    with pytest.raises(KeyError, match="Did you mean 'expert'"):
        evaluate("expret", env_id=TEST_ENV)


# --------------------------------------------------------------------------- ALFWorld: planner expert


def _alfworld_data() -> Path | None:
    root = Path(os.environ.get("ALFWORLD_DATA", "~/.cache/alfworld")).expanduser()
    return root if (root / "json_2.1.1" / "valid_unseen").is_dir() else None


@pytest.mark.alfworld
def test_cli_expert_wins_alfworld_games(tmp_path, capsys):
    """The harness check on a few games; the full one is
    ``python -m agent_rl.eval --policy expert --workers 2 --out runs/eval/expert`` (134/134)."""
    pytest.importorskip("alfworld")
    root = _alfworld_data()
    if root is None:
        pytest.skip("no ALFWorld data root ($ALFWORLD_DATA with json_2.1.1/valid_unseen); run `make data`")
    from agent_rl.eval import main

    out = tmp_path / "expert"
    assert main(["--policy", "expert", "--episodes", "2", "--data-root", str(root), "--out", str(out),
                 "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["successes"] == 2 and results["success_rate"] == 1.0
    assert results["protocol"] == "default" and results["temperature"] == 0.0
    assert results["task_set"]["num_games"] == 134 and len(results["task_set"]["sha256"]) == 64
    assert results["invalid_action_rate"] == 0.0 and results["mean_steps"] > 0
    assert results["versions"]["alfworld"] == "0.4.2" and results["versions"]["textworld"] == "1.7.0"
    assert all(g["ci95"][1] == 1.0 for g in results["per_task_type"].values() if g["episodes"])
    assert (out / "success.png").is_file() and (out / "results.csv").is_file()
    assert len((out / "episodes.jsonl").read_text().splitlines()) == 2
    assert "95% CI" in capsys.readouterr().out


# --------------------------------------------------------------------------- CLI pieces


def test_resolve_checkpoint_layouts(tmp_path):
    import torch

    from agent_rl.eval import resolve_checkpoint
    from trainers.checkpoint import save_checkpoint
    from trainers.models import build_tiny_model, load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(str(build_tiny_model(tmp_path / "tiny")))
    run = tmp_path / "run"
    for step in (3, 4):
        save_checkpoint(run, model=model, tokenizer=tok, step=step, p=1.0, config_yaml="", keep=5,
                        optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    newest = run / "checkpoints" / "step_000004"
    assert resolve_checkpoint(run) == newest
    assert resolve_checkpoint(newest) == newest  # a checkpoint folder directly
    (newest / "model.safetensors").write_bytes(b"torn")  # damaged: the newest intact one instead, as resume does
    assert resolve_checkpoint(run) == run / "checkpoints" / "step_000003"
    # a LoRA run's step folder holds the adapter, not config.json
    lora = run / "checkpoints" / "step_000003"
    (lora / "config.json").rename(lora / "adapter_config.json")
    assert resolve_checkpoint(run) == lora and resolve_checkpoint(lora) == lora
    (lora / "model.safetensors").write_bytes(b"torn")
    (run / "checkpoints" / "latest").write_text("step_000009")
    with pytest.raises(SystemExit, match=r"no intact checkpoint.* holds 2 checkpoint\(s\), none intact \(newest first: "
                       r"step_000004: model.safetensors.*step_000003: model.safetensors.*latest names 'step_000009'"):
        resolve_checkpoint(run)
    with pytest.raises(SystemExit, match="does not exist"):
        resolve_checkpoint(tmp_path / "nowhere")


def test_cli_rejects_bad_flags(tmp_path):
    from agent_rl.eval import main

    with pytest.raises(SystemExit, match="--policy 'oracle' is unknown"):
        main(["--env", TEST_ENV, "--policy", "oracle", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="not both"):
        main(["--env", TEST_ENV, "--model", "a", "--checkpoint", "b", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="only 8 tasks"):
        main(["--env", TEST_ENV, "--policy", "expert", "--episodes", "9", "--out", str(tmp_path), "--no-progress"])


def test_math_summary_averages_benchmarks(tmp_path):
    import argparse

    from agent_rl.eval import _write_summary
    from eval.runner import write_outputs

    def bench(wins: list[bool]) -> dict:
        recs = [{"task_index": i, "task_id": str(i), "task_type": "t", "sample": 0, "won": w, "steps": 1,
                 "invalid_actions": 0} for i, w in enumerate(wins)]
        return report.summarize(recs, episodes_per_s=1.0, task_set={"num_tasks": len(wins)})

    args = argparse.Namespace(temperature=0.0, samples=1, seed=0, no_plot=False)
    _write_summary(tmp_path, {"aime24": bench([True, False, False, False]), "amc23": bench([True, True])},
                   "tiny", args, {"agent-rl": "0"}, write_outputs)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["average_accuracy"] == pytest.approx((0.25 + 1.0) / 2)  # unweighted over benchmarks
    assert results["benchmarks"]["aime24"]["success_rate"] == 0.25
    rows = (tmp_path / "results.csv").read_text().splitlines()
    assert rows[1].startswith("benchmark,aime24,4,4,1,0.25") and rows[3].startswith("average,average,6,6,3,0.625")
    assert (tmp_path / "accuracy.png").is_file()


# --------------------------------------------------------------------------- math, tiny model, end to end


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from trainers.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def _math_data_dir() -> Path | None:
    for candidate in (os.environ.get("AGENT_RL_MATH_DATA"), Path(__file__).parents[2] / "shared" / "math"):
        if candidate and (Path(candidate) / "aime24" / "test.jsonl").is_file():
            return Path(candidate)
    return None


def test_cli_math_tiny_model_end_to_end(tiny_model, tmp_path):
    from agent_rl.eval import main
    from envs.math.env import MathEnv
    from envs.math.grader import grade

    out = tmp_path / "math"
    argv = ["--env", "math", "--model", str(tiny_model), "--episodes", "4", "--max-new-tokens", "12",
            "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    records = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert results["episodes"] == 4 and len(records) == 4 and results["model"] == str(tiny_model)
    assert results["temperature"] == 0.0 and results["task_set"]["num_tasks"] == 1000
    assert set(results["per_task_type"]) == {r["task_type"] for r in records} and len(results["per_task_type"]) == 2
    assert results["episodes_per_s"] > 0 and results["versions"]["agent-rl"]
    # Each record is the model's reply graded by the env: re-grading it gives the same verdict.
    problems = MathEnv().problems
    for r in records:
        assert r["steps"] == 1 and r["last_action"] is not None and r["actions"] == [r["last_action"]]
        assert grade(r["last_action"], problems[r["task_index"]].answer).correct == r["won"]
    for name in ("results.csv", "success.png"):
        assert (out / name).is_file()
    # Same --out again: everything is read back, nothing replayed, same numbers (greedy).
    assert main(argv) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["episodes_this_run"] == 0 and again["resumed_episodes"] == 4
    assert again["success_rate"] == results["success_rate"]

    # pass@k: 2 samples per task at temperature 1.
    out2 = tmp_path / "passk"
    assert main(["--env", "math", "--model", str(tiny_model), "--episodes", "2", "--samples", "2",
                 "--temperature", "1.0", "--max-new-tokens", "8", "--out", str(out2), "--no-progress"]) == 0
    results2 = json.loads((out2 / "results.json").read_text())
    assert results2["episodes"] == 4 and results2["tasks"] == 2 and {"pass@1", "pass@2"} <= set(results2)
    assert sorted((r["task_index"], r["sample"]) for r in
                  map(json.loads, (out2 / "episodes.jsonl").read_text().splitlines()))[1][1] == 1


def test_cli_math_benchmarks_average(tiny_model, tmp_path):
    data_dir = _math_data_dir()
    if data_dir is None:
        pytest.skip("no math benchmark JSONL ($AGENT_RL_MATH_DATA or ../shared/math)")
    from agent_rl.eval import main

    out = tmp_path / "bench"
    assert main(["--env", "math", "--benchmarks", "aime24,amc23", "--data-dir", str(data_dir), "--model",
                 str(tiny_model), "--episodes", "2", "--max-new-tokens", "8", "--out", str(out),
                 "--no-progress"]) == 0
    summary = json.loads((out / "results.json").read_text())
    assert set(summary["benchmarks"]) == {"aime24", "amc23"}
    assert summary["benchmarks"]["aime24"]["task_set"]["num_tasks"] == 30
    assert summary["average_accuracy"] == pytest.approx(
        (summary["benchmarks"]["aime24"]["success_rate"] + summary["benchmarks"]["amc23"]["success_rate"]) / 2)
    for sub in ("aime24", "amc23"):
        assert len((out / sub / "episodes.jsonl").read_text().splitlines()) == 2
    assert (out / "accuracy.png").is_file() and (out / "results.csv").is_file()


def test_evaluate_with_an_in_memory_policy_as_the_trainer_does(tiny_model, tmp_path, monkeypatch):
    from trainers.models import load_model_and_tokenizer
    from trainers.policies import make_policy

    model, tokenizer = load_model_and_tokenizer(tiny_model)
    policy = make_policy("hf", model=model, tokenizer=tokenizer)
    monkeypatch.chdir(tmp_path)
    result = evaluate(policy, env_id="math", env_kwargs={"dataset": "generated"}, episodes=3, max_steps=1,
                      temperature=0.0, workers=0, seed=0, max_new_tokens=6, progress=False)
    assert result.out_dir is None and not list(tmp_path.iterdir())  # nothing written without out_dir
    assert result.metrics["eval/episodes"] == 3.0
    assert {"eval/success_rate", "eval/invalid_action_rate", "eval/mean_steps"} <= set(result.metrics)
    assert any(k.startswith("eval/generated/level1/") for k in result.metrics)
    assert result.results["model"] == "HFPolicy"


def test_eval_protocols_set_their_flags_and_refuse_contradictions():
    from agent_rl.eval import apply_protocol, build_parser

    args = build_parser().parse_args(["--protocol", "verl-agent"])
    apply_protocol(args)
    assert (args.split, args.episodes, args.temperature) == ("valid_seen", 128, 0.4)
    args = build_parser().parse_args([])
    apply_protocol(args)
    assert args.temperature == 0.0 and args.split is None and args.episodes is None
    with pytest.raises(SystemExit, match="--temperature 0.4, but --temperature 0.0"):
        apply_protocol(build_parser().parse_args(["--protocol", "verl-agent", "--temperature", "0"]))
    with pytest.raises(SystemExit, match="ALFWorld protocol"):
        apply_protocol(build_parser().parse_args(["--protocol", "verl-agent", "--env", "math"]))


def test_checkpoint_eval_takes_the_runs_prompt_and_reply_settings(tmp_path):
    """eval --checkpoint plays with the template, stop strings and action casing the run trained with."""
    from agent_rl.eval import run_reply_settings

    (tmp_path / "config.yaml").write_text("rollout:\n  template: alfworld_act\n  stop: []\n  lowercase_actions: true\n"
                                          "  history_k: 2\n  parser: action\n")
    assert run_reply_settings(tmp_path) == {"template": "alfworld_act", "stop": [], "lowercase_actions": True,
                                            "history_k": 2, "parser": "action"}
    # what the prompt shows: the history the model learned to read, its layout and its length cap
    (tmp_path / "config.yaml").write_text("rollout:\n  history_k: 0\n  prompt_mode: conversation\n"
                                          "  max_prompt_tokens: 1024\n")
    assert run_reply_settings(tmp_path) == {"history_k": 0, "prompt_mode": "conversation", "max_prompt_tokens": 1024}
    (tmp_path / "config.yaml").write_text("rollout:\n  template: null\n  stop: null\n  lowercase_actions: false\n")
    assert run_reply_settings(tmp_path) == {}  # the defaults: nothing to carry over
    (tmp_path / "config.yaml").write_text("rollout: [unclosed\n")
    assert run_reply_settings(tmp_path) == {} and run_reply_settings(tmp_path / "missing") == {}
