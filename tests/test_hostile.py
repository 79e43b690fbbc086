"""A hostile or careless user: non-finite values, damaged and planted checkpoints, reused run and eval
dirs, values that cannot work. Each case failed (silently or with a raw traceback) before it was fixed."""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path

import pytest
import torch

from agent_rl.config import ConfigError, resume_changes
from agent_rl.validation import validate
from agent_rl.train import check_finite_updates, compose_config, train
from trainers.checkpoint import latest_checkpoint, load_trainer_state, save_checkpoint
from trainers.learner import Learner, LearnerSettings
from trainers.losses import LOSSES, policy_loss
from trainers.models import build_tiny_model, load_model_and_tokenizer
from trainers.tracking import Tracker

from test_learner import make_batch  # noqa: E402  (a batch of random trajectories)
from test_rollout import ENV_ID as DOOR_ENV  # noqa: E402  (an in-test env with admissible actions)
from test_train import quick  # noqa: E402  (a one-turn train config on an in-test env)


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny")))


@pytest.fixture(scope="module")
def tiny(tiny_path):
    return load_model_and_tokenizer(tiny_path)[0]


# ----------------------------------------------------------------------------- non-finite values


@pytest.mark.parametrize("loss", sorted(LOSSES.names()))
@pytest.mark.parametrize("p", [2.0, 1.0, 0.0, -2.0])
@pytest.mark.parametrize("delta", [100.0, -100.0, 1e4])
def test_losses_stay_finite_for_any_finite_log_ratio(loss, p, delta):
    lp = torch.tensor([[delta, 0.1, -0.2], [-delta, 0.0, 0.3]], requires_grad=True)  # [B, T]
    out = policy_loss(loss, logprobs=lp, old_logprobs=torch.zeros(2, 3), advantages=torch.tensor([1.0, -1.0]),
                      loss_mask=torch.ones(2, 3), p=p)
    (grad,) = torch.autograd.grad(out.loss, lp)
    assert math.isfinite(float(out.loss)) and bool(torch.isfinite(grad).all())


def test_nan_logprobs_never_reach_the_weights(tiny):
    model = copy.deepcopy(tiny)
    with torch.no_grad():  # one huge weight: logits overflow to inf, logprobs to NaN
        model.lm_head.weight[0, 0] = 1e38
        model.lm_head.weight[1, 0] = -1e38
    before = [t.detach().clone() for t in model.parameters()]
    learner = Learner(model, torch.optim.AdamW(model.parameters(), lr=1e-2), LearnerSettings(num_minibatches=2))
    m = learner.update(make_batch("per_step", seed=1), torch.tensor([1.0, -1.0, 1.0, -1.0]), p=1.0)
    assert m["train/nonfinite_updates"] == 2 and m["perf/optimizer_steps"] == 0
    assert not (math.isfinite(m["loss/policy"]) and math.isfinite(m["loss/grad_norm"]))  # reported, not hidden
    for a, b in zip(before, model.parameters()):
        assert torch.equal(a, b)


def test_a_nan_token_weight_ess_never_reaches_the_off_policy_summary(tiny):
    # behaviour weights given: every update is off-policy, so each one's ESS would feed the summary (adaptive p)
    model = copy.deepcopy(tiny)
    with torch.no_grad():  # a NaN weight: NaN logits, logprobs, ratios and token-weight ESS
        model.lm_head.weight[0, 0] = math.nan
    learner = Learner(model, torch.optim.AdamW(model.parameters(), lr=1e-2), LearnerSettings(num_minibatches=2))
    m = learner.update(make_batch("per_step", seed=1), torch.tensor([1.0, -1.0, 1.0, -1.0]), p=0.5,
                       behaviour=learner.snapshot())
    assert m["train/nonfinite_updates"] == 2
    assert math.isfinite(m.get("loss/token_weight_ess_offpolicy", 1.0))


def test_a_skipped_update_does_not_halve_the_step_s_gradient_norm(tiny, monkeypatch):
    # two minibatches, the first with a NaN loss (skipped before any gradient): the step's grad norm is the
    # second update's, not half of it; the skipped share is a share of all updates
    import trainers.learner as learner_mod

    real, calls, norms = learner_mod.policy_loss, [], []

    def first_nan(name, **kw):
        out = real(name, **kw)
        calls.append(name)
        return out if len(calls) > 1 else type(out)(loss=out.loss * math.nan, metrics=out.metrics)

    monkeypatch.setattr(learner_mod, "policy_loss", first_nan)
    model = copy.deepcopy(tiny)
    learner = Learner(model, torch.optim.SGD(model.parameters(), lr=0.0), LearnerSettings(num_minibatches=2))
    real_clip = learner._clip_gradients
    learner._clip_gradients = lambda max_norm: norms.append(float(real_clip(max_norm))) or torch.tensor(norms[-1])
    m = learner.update(make_batch("per_step", seed=1), torch.tensor([1.0, -1.0, 1.0, -1.0]), p=1.0)
    assert m["train/nonfinite_updates"] == 1 and len(norms) == 1 and norms[0] > 0
    assert m["loss/grad_norm"] == pytest.approx(norms[0])


def test_nan_advantages_skip_the_step_and_finite_ones_still_train(tiny):
    model = copy.deepcopy(tiny)
    learner = Learner(model, torch.optim.SGD(model.parameters(), lr=0.1), LearnerSettings())
    batch = make_batch("per_step", seed=2)
    m = learner.update(batch, torch.tensor([float("nan"), 1.0, -1.0, 0.0]), p=1.0)
    assert m["train/nonfinite_updates"] == 1 and all(torch.isfinite(t).all() for t in model.parameters())
    m = learner.update(batch, torch.tensor([1.0, 1.0, -1.0, -1.0]), p=1.0)
    assert m["train/nonfinite_updates"] == 0 and m["perf/optimizer_steps"] == 1


def test_max_grad_norm_zero_means_no_clipping(tiny):
    batch, adv = make_batch("per_step", seed=3), torch.tensor([1.0, -1.0, 1.0, -1.0])
    deltas = {}
    for bound in (0.0, None, 1e-6):
        model = copy.deepcopy(tiny)
        Learner(model, torch.optim.SGD(model.parameters(), lr=1.0), LearnerSettings(max_grad_norm=bound)).update(
            batch, adv, p=1.0)
        deltas[bound] = sum(float((a - b).abs().sum()) for a, b in zip(model.parameters(), tiny.parameters()))
    assert deltas[0.0] == pytest.approx(deltas[None]) and deltas[0.0] > 1000 * deltas[1e-6] > 0


def test_the_trainer_stops_after_steps_whose_updates_were_all_non_finite(tiny_path, tmp_path):
    cfg = quick(tiny_path, tmp_path / "r", "train.max_nonfinite_steps=2")
    bad = {"train/nonfinite_updates": 1.0, "perf/optimizer_steps": 0.0, "loss/policy": float("nan")}
    assert check_finite_updates(cfg, bad, 0, 1) == 1
    assert check_finite_updates(cfg, {"train/nonfinite_updates": 0.0, "perf/optimizer_steps": 1.0}, 1, 2) == 0
    with pytest.raises(RuntimeError, match="last 2 steps had a NaN/inf loss"):
        check_finite_updates(cfg, bad, 1, 3)


def test_non_finite_metrics_are_logged_not_dropped(tmp_path):
    tracker = Tracker(tmp_path, config={}, use_wandb=False)
    tracker.log(1, {"loss/policy": float("nan"), "loss/grad_norm": float("inf"), "loss/p": 1.0})
    tracker.close()
    row = json.loads((tmp_path / "metrics.jsonl").read_text())  # strict JSON
    assert row == {"step": 1, "loss/policy": "nan", "loss/grad_norm": "inf", "loss/p": 1.0}


def test_a_model_with_non_finite_weights_is_never_saved(tiny, tmp_path):
    model = copy.deepcopy(tiny)
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("nan")
    with pytest.raises(RuntimeError, match="refusing to save step 1"):
        save_checkpoint(tmp_path, model=model, tokenizer=None, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                        step=1, p=1.0, config_yaml="")
    assert latest_checkpoint(tmp_path) is None


# ----------------------------------------------------------------------------- checkpoints


def _save(model, run: Path, step: int) -> Path:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return save_checkpoint(run, model=model, tokenizer=None, optimizer=opt, step=step, p=1.0, config_yaml="x: 1\n",
                           keep=5)


class _Planted:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_planted_pickles_are_never_run(tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ckpt = _save(tiny, tmp_path / "run", 1)
    torch.save({"x": _Planted()}, ckpt / "rng.pt")
    load_trainer_state(ckpt)  # rng states are skipped with a warning
    torch.save({"state": _Planted()}, ckpt / "optimizer.pt")
    with pytest.raises(RuntimeError, match="not loaded"):
        load_trainer_state(ckpt, torch.optim.AdamW(tiny.parameters(), lr=1e-3))
    assert not (tmp_path / "PWNED").exists()


def test_rng_and_optimizer_state_round_trip_without_pickle(tiny, tmp_path):
    ckpt = _save(tiny, tmp_path / "run", 1)
    state = load_trainer_state(ckpt)
    a = [torch.rand(1).item(), __import__("random").random(), __import__("numpy").random.rand()]
    state = load_trainer_state(ckpt)
    b = [torch.rand(1).item(), __import__("random").random(), __import__("numpy").random.rand()]
    assert a == b and state.step == 1


def test_latest_never_points_outside_the_run(tiny, tmp_path):
    run = tmp_path / "run"
    _save(tiny, run, 1)
    elsewhere = _save(tiny, tmp_path / "other", 7)
    (run / "checkpoints" / "latest").write_text(str(elsewhere))
    assert latest_checkpoint(run) == run / "checkpoints" / "step_000001"
    (run / "checkpoints" / "latest").write_text("../../other/checkpoints/step_000007")
    assert latest_checkpoint(run) == run / "checkpoints" / "step_000001"


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


DAMAGE = {
    "truncated weights": lambda c: _truncate(c / "model.safetensors"),
    "truncated optimizer": lambda c: _truncate(c / "optimizer.pt"),
    "missing weights": lambda c: (c / "model.safetensors").unlink(),
    "missing rng": lambda c: (c / "rng.pt").unlink(),
    "garbage trainer_state": lambda c: (c / "trainer_state.json").write_text("{not json"),
    "trainer_state without p": lambda c: (c / "trainer_state.json").write_text('{"step": 2}'),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_latest_checkpoint_falls_back_to_the_newest_intact_one(tiny, tmp_path, damage, caplog):
    run = tmp_path / "run"
    _save(tiny, run, 1)
    newest = _save(tiny, run, 2)
    DAMAGE[damage](newest)
    assert latest_checkpoint(run) == run / "checkpoints" / "step_000001"
    assert "is damaged" in caplog.text


TOKENIZER_DAMAGE = {
    "torn tokenizer.json": lambda c: _truncate(c / "tokenizer.json"),
    "missing tokenizer.json": lambda c: (c / "tokenizer.json").unlink(),
    "missing tokenizer_config.json": lambda c: (c / "tokenizer_config.json").unlink(),
}


@pytest.mark.parametrize("damage", sorted(TOKENIZER_DAMAGE))
def test_a_checkpoint_whose_tokenizer_is_damaged_is_passed_over(tiny_path, tmp_path, damage, caplog):
    # eval and model.name=<run dir> load the tokenizer from the checkpoint; transformers' own error for a torn
    # tokenizer.json ("Expecting value: line 252 column 11") names no file, and an older intact step was there
    from trainers.checkpoint import checkpoint_problem

    model, tok = load_model_and_tokenizer(tiny_path)
    run = tmp_path / "run"
    for step in (1, 2):
        save_checkpoint(run, model=model, tokenizer=tok, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                        step=step, p=1.0, config_yaml="", keep=5)
    newest = run / "checkpoints" / "step_000002"
    assert checkpoint_problem(newest) is None and latest_checkpoint(run) == newest
    TOKENIZER_DAMAGE[damage](newest)
    file = damage.split()[-1]
    assert file in checkpoint_problem(newest, weights_only=True)
    assert latest_checkpoint(run, weights_only=True) == run / "checkpoints" / "step_000001"
    assert latest_checkpoint(run) == run / "checkpoints" / "step_000001"
    assert "is damaged" in caplog.text and file in caplog.text
    load_model_and_tokenizer(latest_checkpoint(run, weights_only=True))  # the one chosen loads


def test_a_tokenizer_with_named_chat_templates_saves_an_intact_checkpoint(tiny_path, tmp_path):
    # transformers writes templates beyond the default into additional_chat_templates/: files in a folder
    from trainers.checkpoint import checkpoint_problem

    model, tok = load_model_and_tokenizer(tiny_path)
    tok.chat_template = {"default": "{{ messages[0]['content'] }}", "tool_use": "{{ messages[-1]['content'] }}"}
    run = tmp_path / "run"
    ckpt = save_checkpoint(run, model=model, tokenizer=tok, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                           step=1, p=1.0, config_yaml="")
    listed = json.loads((ckpt / "trainer_state.json").read_text())["tokenizer_files"]
    assert any("/" in name for name in listed), listed
    assert checkpoint_problem(ckpt) is None and latest_checkpoint(run) == ckpt
    next(f for f in ckpt.rglob("*") if f.is_file() and f.parent != ckpt).unlink()
    assert "is missing" in checkpoint_problem(ckpt)


def test_resume_after_a_damaged_checkpoint_never_logs_a_step_twice(tiny_path, tmp_path):
    run = tmp_path / "run"
    train(quick(tiny_path, run, "train.steps=2", "train.keep_checkpoints=3"))
    _truncate(run / "checkpoints" / "step_000002" / "model.safetensors")
    train(quick(tiny_path, run, "train.steps=3", "train.keep_checkpoints=3"))  # resumes at step 1
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


def test_a_run_stopped_between_its_metrics_and_its_checkpoint_keeps_every_step_row(tiny_path, tmp_path, monkeypatch):
    run = tmp_path / "run"
    log = Tracker.log

    def stop_after_logging_step_2(self, step, metrics):
        log(self, step, metrics)
        if step == 2:
            raise KeyboardInterrupt("stopped before step 2's checkpoint")

    monkeypatch.setattr(Tracker, "log", stop_after_logging_step_2)
    with pytest.raises(KeyboardInterrupt):
        train(quick(tiny_path, run, "train.steps=3", "train.save_every=1", "train.keep_checkpoints=3"))
    monkeypatch.setattr(Tracker, "log", log)
    assert latest_checkpoint(run).name == "step_000001"  # step 2 was logged, not saved: it runs again
    train(quick(tiny_path, run, "train.steps=3", "train.save_every=1", "train.keep_checkpoints=3"))
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


def test_a_damaged_newer_checkpoint_never_prunes_the_one_just_written(tiny, tmp_path):
    # a run that resumed behind a damaged newer step: by name, step_000006 outranked the new step_000001
    run = tmp_path / "run"
    opt = torch.optim.AdamW(tiny.parameters(), lr=1e-3)
    save = lambda step: save_checkpoint(run, model=tiny, tokenizer=None, optimizer=opt, step=step, p=1.0,  # noqa: E731
                                        config_yaml="x: 1\n", keep=1)
    _truncate(save(6) / "model.safetensors")
    save(1)
    assert latest_checkpoint(run) == run / "checkpoints" / "step_000001"
    save(2)  # keep=1: the older step goes, the damaged later one stays until step 6 replaces it
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_000002", "step_000006"]
    assert latest_checkpoint(run) == run / "checkpoints" / "step_000002"


def test_a_run_whose_checkpoints_are_all_damaged_is_not_started_over(tiny_path, tmp_path):
    run = tmp_path / "run"
    train(quick(tiny_path, run, "train.steps=1", "train.keep_checkpoints=1"))
    _truncate(run / "checkpoints" / "step_000001" / "model.safetensors")
    metrics = (run / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError, match=r"1 checkpoint\(s\), none intact \(newest first: step_000001: model.safetensors"):
        train(quick(tiny_path, run, "train.steps=2", "train.keep_checkpoints=1"))
    assert (run / "metrics.jsonl").read_text() == metrics  # nothing of the run was overwritten


def test_cuda_rng_states_are_restored_on_the_gpus_a_resume_sees(monkeypatch):
    from trainers import checkpoint

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [torch.zeros(4, dtype=torch.uint8)] * 2)
    seen = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: seen.append(device))
    state = checkpoint._rng_state()  # saved on a process that saw 2 GPUs
    checkpoint._set_rng_state(state)  # resumed on one
    assert len(state["cuda"]) == 2 and seen == [0]


# ----------------------------------------------------------------------------- reused dirs


def test_a_run_dir_of_another_configuration_is_not_resumed(tiny_path, tmp_path):
    run = tmp_path / "run"
    train(quick(tiny_path, run, "train.steps=1"))
    with pytest.raises(ConfigError, match=r"another configuration \(algo.loss: 'holder' there, 'grpo' now"):
        train(quick(tiny_path, run, "train.steps=2", "algo=grpo"))
    with pytest.raises(ConfigError, match="env.id"):
        train(quick(tiny_path, run, "train.steps=2", env=("env=custom", "env.id=test_user/Echo-v0")))
    metrics = train(quick(tiny_path, run, "train.steps=2", "train.eval_every=0", "logging.project=other"))
    assert metrics["train/step"] == 2  # length, logging and eval settings may change


def test_resume_changes_ignores_safe_keys_and_new_fields():
    saved = {"train": {"steps": 4, "lr": 1e-5}, "logging": {"project": "a"}, "algo": {"loss": "holder"}}
    now = {"train": {"steps": 8, "lr": 1e-5, "new_field": 1}, "logging": {"project": "b"}, "algo": {"loss": "gspo"}}
    assert resume_changes(saved, now) == ["algo.loss"]


def test_a_run_saved_before_the_dual_clip_resumes_only_without_it():
    # algo.clip_ratio_c arrived with default 3.0; a run saved before it trained with no dual clip
    saved = {"algo": {"loss": "holder", "clip_low": 0.2}}
    assert resume_changes(saved, {"algo": {"loss": "holder", "clip_low": 0.2, "clip_ratio_c": 3.0}}) == \
        ["algo.clip_ratio_c"]
    assert resume_changes(saved, {"algo": {"loss": "holder", "clip_low": 0.2, "clip_ratio_c": None}}) == []
    saved["algo"]["clip_ratio_c"] = 3.0  # saved since: compared as it is
    assert resume_changes(saved, {"algo": {"loss": "holder", "clip_low": 0.2, "clip_ratio_c": 3.0}}) == []


def test_an_episode_log_without_its_config_or_with_wrong_types_is_refused(tmp_path):
    from eval import report
    from eval.runner import EvalConfigError, evaluate

    out = tmp_path / "ev"
    out.mkdir()
    record = {"task_index": 0, "task_id": "a", "task_type": "t", "sample": 0, "won": False, "steps": 3,
              "invalid_actions": 0}
    (out / report.EPISODES_FILE).write_text(json.dumps(record) + "\n")
    with pytest.raises(EvalConfigError, match="no eval_config.json"):
        evaluate("random", env_id=DOOR_ENV, episodes=1, out_dir=out, plot=False)
    (out / report.EPISODES_FILE).write_text(json.dumps({**record, "won": "false"}) + "\n")
    with pytest.raises(report.EpisodeLogError, match="won='false'"):
        report.EpisodeLog(out / report.EPISODES_FILE)


def test_eval_resume_refuses_other_generation_settings(tmp_path):
    from eval.runner import EvalConfigError, evaluate

    out = tmp_path / "ev"
    evaluate("random", env_id=DOOR_ENV, episodes=1, out_dir=out, plot=False, max_new_tokens=64)
    with pytest.raises(EvalConfigError, match="max_new_tokens: 64 there, 128 now"):
        evaluate("random", env_id=DOOR_ENV, episodes=1, out_dir=out, plot=False, max_new_tokens=128)
    with pytest.raises(EvalConfigError, match="backend"):
        evaluate("random", env_id=DOOR_ENV, episodes=1, out_dir=out, plot=False, max_new_tokens=64,
                 identity={"backend": "vllm"})


# ----------------------------------------------------------------------------- values that cannot work


@pytest.mark.parametrize("overrides,match", [
    (["train.max_grad_norm=-1"], "reverses every update"),
    (["train.max_grad_norm=nan"], "train.max_grad_norm"),
    (["train.save_every=0"], "save_every"),
    (["train.eval_every=1", "train.eval_episodes=0"], "train.eval_episodes"),
    (["train.eval_every=-1"], "train.eval_every"),
    (["rollout.tasks_per_step=100000"], "episodes per step"),
    (["rollout.invalid_action_penalty=nan"], "rollout.invalid_action_penalty"),
    (["algo.p_start=nan"], "algo.p_start"),
    (["rollout.history_k=-1"], "rollout.history_k"),
    (["model.lora.enabled=true", "model.lora.r=0"], "model.lora.r"),
    (["model.lora.enabled=true", "model.lora.target_modules=[]"], "target_modules"),
    (["train.lr=inf"], "train.lr"),
    (["algo.clip_ratio_c=0.9"], "algo.clip_ratio_c: got 0.9; the dual clip"),
    (["algo.clip_ratio_c=nan"], "algo.clip_ratio_c"),
])
def test_values_that_cannot_work_are_refused_before_anything_loads(overrides, match):
    with pytest.raises(ConfigError, match=match) as info:
        validate(compose_config(overrides))
    assert "Fix:" in str(info.value)


def test_a_custom_env_needs_its_id():
    with pytest.raises(ConfigError, match="env.id"):
        validate(compose_config(["env=custom"]))


# ----------------------------------------------------------------------------- lost episodes


def test_groups_with_an_env_failure_are_left_out_of_the_update(tiny):
    from agent_rl.types import TrajectoryBatch
    from trainers.rollout import drop_failed_groups

    batch = make_batch("per_step", seed=6, n_traj=6)  # groups g0, g1, g2 of two episodes each
    trajs = list(batch.trajectories)
    trajs[3].info["error"] = "worker 1 died (EOFError)"
    kept, dropped = drop_failed_groups(trajs)
    assert dropped == 2 and [t.group_id for t in kept] == ["g0", "g0", "g2", "g2"]
    # a step whose every group failed trains on nothing, and nothing breaks
    for t in kept:
        t.info["error"] = "pool closed"
    kept, dropped = drop_failed_groups(kept)
    assert kept == [] and dropped == 4
    model = copy.deepcopy(tiny)
    m = Learner(model, torch.optim.SGD(model.parameters(), lr=0.1), LearnerSettings()).update(
        TrajectoryBatch(kept), torch.zeros(0), p=1.0)
    assert m["perf/optimizer_steps"] == 0 and m["train/nonfinite_updates"] == 0
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), tiny.parameters()))


def test_a_setup_failure_after_the_engine_started_still_closes_it_and_the_tracker(tiny_path, tmp_path, monkeypatch):
    # the env pool fails to start (bad data, a dead Ray cluster) after the rollout engine, which holds a vLLM
    # process or GPU memory in real runs, was built: the engine and the metrics sink are still closed
    import agent_rl.train as train_mod
    from trainers.policies.hf import HFPolicy
    from trainers.tracking import Tracker

    closed = []

    class Engine(HFPolicy):
        def close(self):
            closed.append("policy")

    def no_pool(*args, **kwargs):
        raise RuntimeError("env pool failed to start")

    real_tracker_close = Tracker.close
    monkeypatch.setattr(Tracker, "close", lambda self: (closed.append("tracker"), real_tracker_close(self)))
    monkeypatch.setattr(train_mod, "make_rollout_policy", lambda cfg, model, tok, start_step=0: Engine(model=model, tokenizer=tok))
    monkeypatch.setattr(train_mod, "make_pool", no_pool)
    with pytest.raises(RuntimeError, match="env pool failed to start"):
        train(quick(tiny_path, tmp_path / "run"))
    assert closed == ["policy", "tracker"]


# ----------------------------------------------------------------------------- data edge cases


def test_math_data_edge_cases_name_the_file_and_line(tmp_path):
    from envs.math.datasets import MathDataError, load_jsonl

    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"problem": "1+1", "answer": "2"}\n{"problem": "caf\xe9", "answer": "3"}\n')
    with pytest.raises(MathDataError, match=rf"{latin}:2: not UTF-8"):
        load_jsonl(latin)
    listed = tmp_path / "list.jsonl"
    listed.write_text('{"problem": "roots?", "answer": ["1", "2"]}\n')
    with pytest.raises(MathDataError, match=rf"{listed}:1: .*expected text or a number"):
        load_jsonl(listed)


def test_an_action_with_a_lone_surrogate_is_logged(tmp_path):
    from eval import report

    record = {"task_index": 0, "task_id": "a", "task_type": "t", "sample": 0, "won": False, "steps": 1,
              "invalid_actions": 1, "last_action": "go to \udcff shelf"}
    with report.EpisodeLog(tmp_path / "episodes.jsonl") as log_:
        log_.append(record)
    assert report.EpisodeLog(tmp_path / "episodes.jsonl").records[0]["last_action"] == "go to \udcff shelf"


def test_a_dead_ray_address_fails_in_seconds():
    import socket
    import time

    from envs.ray_pool import check_reachable

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.time()
    with pytest.raises(ConnectionError, match="nothing accepts connections"):
        check_reachable(f"127.0.0.1:{port}", timeout_s=5)
    with pytest.raises(ConnectionError):
        check_reachable(f"ray://127.0.0.1:{port}", timeout_s=5)
    assert time.time() - t0 < 10
    with pytest.raises(ValueError, match="host:port"):
        check_reachable("not-an-address")
    check_reachable("auto")  # left to Ray


def test_lora_target_modules_must_exist(tiny_path, tmp_path):
    pytest.importorskip("peft")
    cfg = quick(tiny_path, tmp_path / "lora", "model.lora.enabled=true", "model.lora.target_modules=[q_proj,qq_proj]")
    with pytest.raises(ConfigError, match=r"\['qq_proj'\] are not linear layers"):
        train(cfg)


def test_an_unparseable_reference_answer_is_flagged_when_the_env_loads(caplog):
    from envs.math.datasets import MathProblem
    from envs.math.env import MathEnv

    bad = r"x_{0} \cos (\omega t)+$ $\dot{x}_{0} \sin (\omega t) / \omega"  # minerva_math's own (real)
    problems = [MathProblem(problem_id="ok", problem="1+1?", answer="2", source="t"),
                MathProblem(problem_id="minerva-bad", problem="x?", answer=bad, source="t")]
    env = MathEnv(problems=problems)
    assert env.unparseable_references == [1]
    assert "cannot be parsed by math-verify" in caplog.text and "minerva-bad" in caplog.text


def test_a_checkpoint_without_optimizer_state_loads_as_a_model_but_is_not_resumed(tiny, tmp_path):
    # optimizer.pt is a finished run's largest file, the one users delete to free disk
    from trainers.models import resolve_model

    run = tmp_path / "run"
    ckpt = _save(tiny, run, 3)
    (ckpt / "optimizer.pt").unlink()
    (ckpt / "rng.pt").unlink()
    assert latest_checkpoint(run) is None  # resuming needs the optimizer and RNG states
    assert latest_checkpoint(run, weights_only=True) == ckpt
    assert resolve_model(run) == str(ckpt)  # model.name=<run dir>, as a curve's RL stage starts from its SFT run
    (ckpt / "model.safetensors").unlink()
    assert latest_checkpoint(run, weights_only=True) is None
