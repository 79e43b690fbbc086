"""agent_rl.curve: its stage commands are valid configs; eval.curve_report: its report reads eval results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_rl.validation import validate, validate_sft
from agent_rl import curve
from agent_rl.curve import build_parser, rl_overrides, sft_overrides
from eval import curve_report
from eval.curve_report import report, table
from agent_rl.train import compose_config


def _hydra_free(overrides):
    return [o for o in overrides if not o.startswith("hydra.")]


@pytest.mark.parametrize("source", ["release", "generated"])
def test_stage_overrides_compose_and_validate(tmp_path, source):
    args = build_parser().parse_args(["--out", str(tmp_path), "--source", source, "--rl-steps", "3"])
    cfg = compose_config(_hydra_free(sft_overrides(args, tmp_path / "sft")))
    validate(cfg)
    validate_sft(cfg)
    assert cfg.rollout.template == "alfworld_act" and cfg.sft.games == args.sft_games
    for algo in ("holder", "grpo", "holder+gigpo+ds"):
        cfg = compose_config(_hydra_free(rl_overrides(algo, tmp_path / "sft", args, tmp_path / algo)))
        validate(cfg)
        assert (cfg.algo.advantage == "gigpo") == ("gigpo" in algo) and cfg.algo.dynamic_sampling == ("ds" in algo)
        assert cfg.model.name == str(tmp_path / "sft") and cfg.train.steps == 3
        assert (cfg.env.kwargs.get("source") == "generated") == (source == "generated")
        assert not cfg.rollout.constrain_actions


def test_constrained_curve_constrains_rl_and_eval_in_its_own_folder(tmp_path, monkeypatch):
    args = build_parser().parse_args(["--out", str(tmp_path), "--constrain-actions"])
    cfg = compose_config(_hydra_free(rl_overrides("holder", tmp_path / "sft", args, tmp_path / "holder")))
    validate(cfg)
    assert cfg.rollout.constrain_actions and cfg.rollout.template == "alfworld_act"
    calls = []
    monkeypatch.setattr(curve, "run", lambda cmd, log, threads: calls.append(cmd))
    curve.evaluate("sft", ["--checkpoint", "x"], args)
    assert "--constrain-actions" in calls[0] and str(tmp_path / "eval_sft") in calls[0]
    monkeypatch.setattr(curve, "report", lambda rows, a: None)
    monkeypatch.chdir(tmp_path)
    curve.main(["--constrain-actions", "--report-only"])
    assert (tmp_path / "bench_out" / "alfworld_curve_constrained").is_dir()


def _results(wins_by_type):
    per = {t: {"episodes": n, "successes": w, "success_rate": w / n, "ci95": [0.0, 1.0], "tasks": n}
           for t, (w, n) in wins_by_type.items()}
    w, n = sum(x[0] for x in wins_by_type.values()), sum(x[1] for x in wins_by_type.values())
    return {"episodes": n, "successes": w, "success_rate": w / n, "ci95": [0.0, 1.0], "invalid_action_rate": 0.5,
            "mean_steps": 20.0, "per_task_type": per}


def test_report_orders_stages_and_writes_csv_png(tmp_path, capsys):
    for stage, r in (("rl-holder", {"a": (2, 3), "b": (1, 3)}), ("untrained", {"a": (0, 3), "b": (0, 3)}),
                     ("sft", {"a": (1, 3), "b": (1, 3)})):
        (tmp_path / f"eval_{stage}").mkdir()
        (tmp_path / f"eval_{stage}" / "results.json").write_text(json.dumps(_results(r)))
    args = build_parser().parse_args(["--out", str(tmp_path)])
    args.out = Path(tmp_path)
    rows = table(args)
    assert [(x["stage"], x["task_type"]) for x in rows if x["task_type"] == "all"] == [
        ("untrained", "all"), ("sft", "all"), ("rl-holder", "all")]
    report(rows, args)
    out = capsys.readouterr().out
    assert "rl-holder  all" in out and "3/6" in out
    assert (tmp_path / "curve.csv").read_text().count("\n") == 10 and (tmp_path / "curve.png").stat().st_size > 0


def test_report_prints_loop_rate_also_for_evals_written_before_it_was_kept(tmp_path, capsys):
    """results.json's loop_rate where it has one; for older ones the rate is read from the eval's episodes.jsonl,
    only when that holds exactly the eval's episodes, each with its actions (else nothing is printed)."""
    episodes = [{"task_id": "t0", "won": True, "actions": ["look"] * 5},
                {"task_id": "t1", "won": False, "actions": ["go to desk 1"] * 5},
                {"task_id": "t2", "won": False, "actions": ["go to desk 1", "look", "open drawer 1", "inventory"]}]
    stages = {"sft": (dict(_results({"a": (1, 3)}), loop_rate=0.5), episodes),  # results.json wins
              "rl-holder": (_results({"a": (1, 3)}), episodes),
              "rl-grpo": (_results({"a": (1, 3)}), episodes + episodes[:1]),  # resumed into a larger eval's folder
              "rl-gigpo": (_results({"a": (1, 3)}), [{k: v for k, v in e.items() if k != "actions"} for e in episodes])}
    for stage, (results, eps) in stages.items():
        (tmp_path / f"eval_{stage}").mkdir()
        (tmp_path / f"eval_{stage}" / "results.json").write_text(json.dumps(results))
        (tmp_path / f"eval_{stage}" / "episodes.jsonl").write_text("".join(json.dumps(e) + "\n" for e in eps))
    args = build_parser().parse_args(["--out", str(tmp_path)])
    args.out = Path(tmp_path)
    rows = {x["stage"]: x["loop_rate"] for x in table(args) if x["task_type"] == "all"}
    assert rows == {"sft": 0.5, "rl-holder": round(1 / 3, 4), "rl-grpo": "", "rl-gigpo": ""}
    report(table(args), args)
    out = capsys.readouterr().out
    assert "loops=0.3333" in out and "loops=0.5" in out and out.count("loops=") == 2


def test_unknown_algo_modifier_is_refused_before_any_stage(tmp_path, monkeypatch):
    monkeypatch.setattr(curve, "run", lambda *a: pytest.fail("a stage ran"))
    with pytest.raises(SystemExit, match="did you mean 'gigpo'"):
        curve.main(["--out", str(tmp_path), "--algos", "holder,grpo+gigp"])


@pytest.mark.parametrize("entry,schedule,p_start,p_end", [
    ("holder", "linear", 2.0, -2.0), ("holder+linear_2_-2", "linear", 2.0, -2.0),
    ("holder+linear_2_0", "linear", 2.0, 0.0),
    ("holder+linear_2_1.4", "linear", 2.0, 1.4), ("holder+cosine_2_-2", "cosine", 2.0, -2.0),
    ("holder+constant_1", "constant", 1.0, None), ("holder+adaptive+ds", "adaptive", 2.0, -2.0)])
def test_a_p_schedule_modifier_sets_the_holder_stage_schedule(tmp_path, entry, schedule, p_start, p_end):
    args = build_parser().parse_args(["--out", str(tmp_path), "--source", "generated"])
    cfg = compose_config(_hydra_free(rl_overrides(entry, tmp_path / "sft", args, tmp_path / entry)))
    validate(cfg)
    assert (cfg.algo.loss, cfg.algo.p_schedule, cfg.algo.p_start) == ("holder", schedule, p_start)
    assert p_end is None or cfg.algo.p_end == p_end
    if schedule == "adaptive":  # steered at run time by the measured ESS, not a function of the step
        return
    ps = [cfg.algo.p_at(k, 20) for k in (0, 9, 19)]  # the p each update uses over a 20-step stage
    if schedule == "constant":
        assert ps == [1.0, 1.0, 1.0]
    elif schedule in ("linear", "cosine"):
        assert ps[0] < p_start and ps[-1] == pytest.approx(p_end) and ps[0] > ps[1] > ps[2]
    assert cfg.algo.dynamic_sampling == entry.endswith("+ds")


@pytest.mark.parametrize("entry,match", [
    ("grpo+constant_1", r"a p schedule \(constant_1\) needs the Hölder loss.*grpo fixes p\. Use holder\+constant_1"),
    ("holder+constant_1+linear_2_0", "one p schedule per stage, got constant_1, linear_2_0"),
    ("holder+constant1", "did you mean 'constant_1'")])
def test_a_p_schedule_modifier_is_refused_where_it_cannot_apply(tmp_path, monkeypatch, entry, match):
    monkeypatch.setattr(curve, "run", lambda *a: pytest.fail("a stage ran"))
    with pytest.raises(SystemExit, match=match):
        curve.main(["--out", str(tmp_path), "--algos", f"holder,{entry}"])


def test_make_demo_command_composes_valid_stage_configs(tmp_path):
    """The curve arguments of `make demo` (read from the Makefile) parse and give valid sft/train configs."""
    import shlex

    text = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    recipe = text.split("\ndemo:", 1)[1].split("\n\n", 1)[0].replace("\\\n", " ")
    words = shlex.split(recipe.split("agent_rl.curve", 1)[1])
    args = build_parser().parse_args([w for w in words if "$(" not in w])
    args.out = tmp_path
    assert args.source == "generated" and args.difficulty == "easy"
    cfg = compose_config(_hydra_free(sft_overrides(args, tmp_path / "sft")))
    validate(cfg)
    validate_sft(cfg)
    assert cfg.sft.batch_size == args.sft_batch and cfg.env.kwargs["generate_kwargs"]["difficulty"] == "easy"
    assert cfg.model.freeze_layers == args.sft_freeze
    cfg = compose_config(_hydra_free(rl_overrides("holder", tmp_path / "sft", args, tmp_path / "rl")))
    validate(cfg)
    assert cfg.train.steps == args.rl_steps and cfg.env.kwargs["generate_kwargs"]["difficulty"] == "easy"
    assert cfg.model.freeze_layers == 20  # the demo's RL step keeps SFT's frozen layers (an extra override)
    assert list(cfg.env.kwargs["generate_kwargs"]["task_types"]) == ["pick_and_place_simple", "look_at_obj_in_light"]
    kwargs = json.loads(curve.eval_env_kwargs(args)[1])["generate_kwargs"]
    assert kwargs["difficulty"] == "easy" and kwargs["task_types"] == ["pick_and_place_simple", "look_at_obj_in_light"]


def test_mcnemar_p_is_the_exact_binomial_tail():
    from math import comb

    assert curve_report.mcnemar_p(0, 0) == 1.0 and curve_report.mcnemar_p(2, 1) == 1.0
    assert curve_report.mcnemar_p(10, 2) == pytest.approx(2 * (1 + 12 + 66) / 4096)  # 0.0386
    assert curve_report.mcnemar_p(2, 10) == curve_report.mcnemar_p(10, 2)
    assert curve_report.mcnemar_p(8, 0) == pytest.approx(2 / 256)
    for gained, lost in ((5, 3), (12, 4)):  # the two tails at least as extreme, summed directly
        n = gained + lost
        both = sum(comb(n, k) for k in range(n + 1) if abs(2 * k - n) >= abs(gained - lost)) / 2 ** n
        assert curve_report.mcnemar_p(gained, lost) == pytest.approx(both)


def test_paired_counts_games_won_by_one_stage_only(tmp_path, capsys):
    def write(stage, won):  # won: per game index, True/False; game 5 only in some stages
        d = tmp_path / f"eval_{stage}"
        d.mkdir()
        (d / "results.json").write_text(json.dumps(_results({"a": (sum(won.values()), len(won))})))
        (d / "episodes.jsonl").write_text("".join(
            json.dumps({"task_id": f"game-{i}", "sample": 0, "won": w}) + "\n" for i, w in won.items()))

    write("untrained", {0: False, 1: False, 2: False, 3: False, 4: False})
    write("sft", {0: True, 1: True, 2: False, 3: False, 4: False})
    write("rl-holder", {0: True, 1: False, 2: True, 3: True, 4: False, 5: True})
    write("rl-grpo", {0: True, 1: True, 2: True, 3: False, 4: False, 5: False})
    args = build_parser().parse_args(["--out", str(tmp_path)])
    args.out = Path(tmp_path)
    got = {(x["stage"], x["versus"]): (x["games"], x["won_only_by_stage"], x["won_only_by_versus"])
           for x in curve_report.paired(args)}
    assert got == {("rl-grpo", "sft"): (5, 1, 0), ("rl-holder", "sft"): (5, 2, 1), ("sft", "untrained"): (5, 2, 0),
                   ("rl-grpo", "rl-holder"): (6, 1, 2)}
    report(table(args), args)
    assert "alfworld_curve paired rl-holder vs sft: 5 games, +2 / -1 (net +1), exact McNemar p = 1.000" in \
        capsys.readouterr().out
    (tmp_path / "eval_sft" / "results.json").unlink()  # SFT not evaluated (make demo): RL against untrained
    assert {(x["stage"], x["versus"]) for x in curve_report.paired(args)} == {
        ("rl-grpo", "untrained"), ("rl-holder", "untrained"), ("rl-grpo", "rl-holder")}


def test_task_types_reach_every_stage_and_are_checked_first(tmp_path, monkeypatch):
    args = build_parser().parse_args(["--out", str(tmp_path), "--source", "generated", "--difficulty", "easy",
                                      "--task-types", "pick_and_place_simple,look_at_obj_in_light"])
    want = ["pick_and_place_simple", "look_at_obj_in_light"]
    cfg = compose_config(_hydra_free(sft_overrides(args, tmp_path / "sft")))
    validate_sft(cfg)
    assert list(cfg.env.kwargs["generate_kwargs"]["task_types"]) == want
    cfg = compose_config(_hydra_free(rl_overrides("holder", tmp_path / "sft", args, tmp_path / "rl")))
    assert list(cfg.env.kwargs["generate_kwargs"]["task_types"]) == want
    assert json.loads(curve.eval_env_kwargs(args)[1])["generate_kwargs"]["task_types"] == want
    plain = build_parser().parse_args(["--out", str(tmp_path), "--source", "generated"])
    assert "task_types" not in curve.env_overrides(plain)[1]  # all six: the cached default sets are reused
    monkeypatch.setattr(curve, "run", lambda *a: pytest.fail("a stage ran"))
    for bad, match in ((["--source", "generated", "--task-types", "pick_and_place"], "did you mean 'pick_and_place_simple'"),
                       (["--task-types", "pick_and_place_simple"], "needs --source generated"),
                       (["--source", "generated", "--task-types", "pick_and_place_simple,pick_and_place_simple"],
                        "twice")):
        with pytest.raises(SystemExit, match=match):
            curve.main(["--out", str(tmp_path / "x"), *bad])


def _checkpoint(run_dir: Path, step: int) -> None:
    import torch
    from safetensors.torch import save_file

    ckpt = run_dir / "checkpoints" / f"step_{step:06d}"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text(json.dumps({"step": step, "p": 1.0, "extra": {}}))
    (ckpt / "config.json").write_text("{}")
    save_file({"w": torch.zeros(2)}, str(ckpt / "model.safetensors"))
    (run_dir / "checkpoints" / "latest").write_text(ckpt.name)


def test_an_rl_stage_stopped_part_way_runs_again_and_a_finished_one_is_reused(tmp_path, monkeypatch):
    args = build_parser().parse_args(["--out", str(tmp_path), "--rl-steps", "4"])
    calls = []
    monkeypatch.setattr(curve, "run", lambda cmd, log, threads: calls.append(cmd))
    _checkpoint(tmp_path / "rl-holder", 2)  # killed after step 2 of 4
    assert curve.finished_steps(tmp_path / "rl-holder") == 2
    curve.rl("holder", tmp_path / "sft", args)
    assert len(calls) == 1 and "train.steps=4" in calls[0]  # train resumes from step 2 (train.resume=auto)
    _checkpoint(tmp_path / "rl-holder", 4)
    curve.rl("holder", tmp_path / "sft", args)
    assert len(calls) == 1  # finished: reused, not retrained
    assert curve.finished_steps(tmp_path / "rl-grpo") == 0


def test_training_lines_count_steps_with_a_gradient_and_dynamic_sampling(tmp_path, capsys):
    """An RL stage whose every step skipped its update (all groups scored alike) is reported as such, so a
    table row named rl-holder is not read as RL's doing; a step written twice counts once, a torn line not at all."""
    def write(stage, rows):
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")

    write("rl-holder", [{"step": 1, "rollout/success_rate": 0.0, "perf/skipped_zero_gradient": 1.0,
                         "perf/step_seconds": 60.0, "loss/p": 2.0},  # skipped update: p but no loss signals
                        {"step": 2, "rollout/success_rate": 0.25, "perf/skipped_zero_gradient": 0.5,
                         "perf/step_seconds": 90.0},
                        {"step": 2, "rollout/success_rate": 0.5, "perf/step_seconds": 30.0,  # resumed: this one
                         "loss/p": -1.8, "loss/token_weight_ess": 0.95, "loss/clip_frac": 0.0, "loss/grad_norm": 0.5},
                        {"step": 2, "eval/success_rate": 1.0}])  # not a training row
    write("rl-grpo+ds", [{"step": 1, "rollout/success_rate": 0.0, "rollout/tasks_played": 5.0,
                          "rollout/informative_groups": 1.0, "perf/skipped_zero_gradient": 0.0},
                         # no informative group found: an empty batch, no update at all
                         {"step": 2, "rollout/success_rate": 0.0, "rollout/tasks_played": 8.0,
                          "rollout/informative_groups": 0.0, "perf/optimizer_steps": 0.0}])
    with open(tmp_path / "rl-grpo+ds" / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "rollout/succ')  # killed mid-write: the torn line is not a step
    (tmp_path / "rl-grpo").mkdir()  # started, no step written yet: no line
    args = build_parser().parse_args(["--out", str(tmp_path)])
    args.out = Path(tmp_path)
    got = {x["stage"]: x for x in curve_report.training(args)}
    assert set(got) == {"rl-holder", "rl-grpo+ds"}
    assert got["rl-holder"]["steps"] == 2 and got["rl-holder"]["steps_with_gradient"] == 1
    assert got["rl-holder"]["rollout_success"] == [0.0, 0.5] and got["rl-holder"]["minutes"] == 1.5
    assert got["rl-grpo+ds"]["steps_with_gradient"] == 1 and got["rl-grpo+ds"]["tasks_played"] == 13
    (tmp_path / "eval_rl-holder").mkdir()
    (tmp_path / "eval_rl-holder" / "results.json").write_text(json.dumps(_results({"a": (1, 3)})))
    report(table(args), args)
    out = capsys.readouterr().out
    assert ("alfworld_curve training rl-holder: 2 steps in 1.5 min, 1 with a gradient, rollout success per step "
            "0.000 0.500\n"
            "alfworld_curve training rl-holder:   p≈+2.0: 1 steps, ESS n/a, clip_frac n/a, grad_norm n/a, "
            "train success 0.000\n"
            "alfworld_curve training rl-holder:   p≈-2.0: 1 steps, ESS 0.950, clip_frac 0.000, grad_norm 0.500, "
            "train success 0.500\n") in out
    assert "rl-grpo+ds: 2 steps in 0.0 min, 1 with a gradient, rollout success per step 0.000 0.000, dynamic " \
           "sampling: 13 tasks played, 1 informative groups kept" in out


def _demo_line(split="train"):
    return json.dumps({"messages": [{"role": "user", "content": "look around"}], "reply": "<action>look</action>",
                       "game_id": "g1", "stamp": {"split": split}}) + "\n"


def test_sft_demos_reach_the_sft_stage_and_are_checked_first(tmp_path, monkeypatch):
    odd = tmp_path / "lr=1e-4,a b" / "round_0,${x},\\${y}.jsonl"  # a comma, =, a space, ${ and \${ in one path
    odd.parent.mkdir()
    odd.write_text(_demo_line())
    plain_file = tmp_path / "more.jsonl"
    plain_file.write_text(_demo_line())
    args = build_parser().parse_args(["--out", str(tmp_path), "--sft-demos", str(odd), "--sft-demos", str(plain_file)])
    curve.check_sft_demos(args)
    cfg = compose_config(_hydra_free(sft_overrides(args, tmp_path / "sft")))
    validate_sft(cfg)
    assert list(cfg.sft.demos) == [str(odd.resolve()), str(plain_file.resolve())]  # each path literally, whole
    plain = build_parser().parse_args(["--out", str(tmp_path)])
    assert list(compose_config(_hydra_free(sft_overrides(plain, tmp_path / "sft"))).sft.demos) == []
    monkeypatch.setattr(curve, "run", lambda *a: pytest.fail("a stage ran"))
    empty, torn, evaluated = tmp_path / "empty.jsonl", tmp_path / "torn.jsonl", tmp_path / "valid_unseen.jsonl"
    empty.write_text("")
    torn.write_text(_demo_line() + "{not json\n")
    evaluated.write_text(_demo_line("valid_unseen"))
    for bad, match in ((["--sft-demos", str(tmp_path / "nope.jsonl")], "does not exist"),
                       (["--sft-demos", str(empty)], "empty.jsonl"),
                       (["--sft-demos", str(torn)], "torn.jsonl:2: not a JSON object"),
                       (["--sft-demos", str(evaluated)], "played on valid_unseen games"),
                       (["--sft-demos", str(plain_file), "--sft-run", str(tmp_path)], "give one of the two")):
        with pytest.raises(SystemExit, match=match):
            curve.main(["--out", str(tmp_path / "out"), *bad])


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="a\\'\"${},=[] ", max_size=12))
def test_a_quoted_override_value_reads_back_as_itself(value):
    """hydra_quoted through Hydra's override parser, then OmegaConf's resolution (what compose does with it): every
    backslash, quote and ``${`` comes back as written, never as an escape or an interpolation."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    parsed = OverridesParser.create().parse_override(f"k=[{curve.hydra_quoted(value)}]").value()
    assert OmegaConf.to_container(OmegaConf.create({"k": parsed}), resolve=True)["k"] == [value]


def _fake_checkpoint(run_dir: Path, config: dict, step: int = 4) -> Path:
    """A checkpoint latest_checkpoint(weights_only=True) accepts, with ``config`` as its config.yaml."""
    import yaml

    ckpt = run_dir / "checkpoints" / f"step_{step:06d}"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text(json.dumps({"step": step, "p": 1.0, "extra": {}}))
    (ckpt / "config.json").write_text("{}")
    (ckpt / "model.safetensors").write_bytes((2).to_bytes(8, "little") + b"{}")
    for name in ("optimizer.pt", "rng.pt"):
        (ckpt / name).write_bytes(b"")
    (run_dir / "checkpoints" / "latest").write_text(ckpt.name)
    (ckpt / "config.yaml").write_text(yaml.safe_dump(config))
    return ckpt


def test_a_finished_sft_stage_is_reused_only_for_the_same_demonstrations(tmp_path, monkeypatch):
    import yaml

    demos = tmp_path / "d.jsonl"
    demos.write_text(_demo_line())
    out = tmp_path / "out"
    ckpt = _fake_checkpoint(out / "sft", {"sft": {"demos": []}})  # trained on the expert's games
    monkeypatch.setattr(curve, "run", lambda *a: pytest.fail("a stage ran"))
    with pytest.raises(SystemExit, match=r"sft.demos: \[\] there, \['.*d.jsonl'\] now"):
        curve.main(["--out", str(out), "--sft-demos", str(demos), "--skip-untrained"])
    (ckpt / "config.yaml").write_text(yaml.safe_dump({"sft": {"demos": [str(demos.resolve())]}}))
    with pytest.raises(SystemExit, match=r"sft.demos: \['.*d.jsonl'\] there, \[\] now"):
        curve.main(["--out", str(out), "--skip-untrained"])
    args = build_parser().parse_args(["--out", str(out), "--sft-demos", str(demos)])
    curve.check_sft_demos(args)
    args.out = out
    curve.check_reused_stages(args, [])  # the same file: reused
    # an SFT run has no loss: its saved algo section (older defaults) is not compared
    (ckpt / "config.yaml").write_text(yaml.safe_dump({"sft": {"demos": [str(demos.resolve())]}, "algo": {"p_end": 9.0}}))
    curve.check_reused_stages(args, [])


def _fake_eval(out: Path, stage: str, model: Path | None, args, **changed) -> None:
    """An eval stage's results.json and eval_config.json as agent_rl.eval writes them for this curve's ``args``."""
    env = json.loads(curve.eval_env_kwargs(args)[1]) if curve.eval_env_kwargs(args) else {}
    results = {"episodes": args.episodes, "max_steps": args.max_steps, "model": str(model) if model else "embedded"}
    config = {"env_kwargs": {"split": "valid_unseen", **env}, "max_new_tokens": args.max_new_tokens,
              "rollout": {"constrain_actions": args.constrain_actions}}
    for key, value in changed.items():
        (results if key in results else config)[key] = value
    (out / f"eval_{stage}").mkdir(parents=True, exist_ok=True)
    (out / f"eval_{stage}" / "results.json").write_text(json.dumps(results))
    (out / f"eval_{stage}" / "eval_config.json").write_text(json.dumps(config))


def test_a_reused_rl_stage_or_eval_must_match_what_the_curve_would_run(tmp_path, monkeypatch):
    import yaml

    out = tmp_path / "out"
    sft_run = tmp_path / "sft_run"
    sft_ckpt = _fake_checkpoint(sft_run, {"sft": {"demos": []}}, step=7)
    argv = ["--out", str(out), "--sft-run", str(sft_run), "--algos", "holder", "--rl-steps", "4", "--rl-lr", "1e-5"]
    args = build_parser().parse_args(argv)
    args.out = out.resolve()
    rl = compose_config(_hydra_free(curve.rl_overrides("holder", sft_run.resolve(), args, out / "rl-holder")))
    saved = {"train": {"lr": rl.train.lr, "seed": rl.train.seed}, "model": {"name": rl.model.name},
             "algo": {"loss": rl.algo.loss, "clip_ratio_c": rl.algo.clip_ratio_c}}
    ckpt = _fake_checkpoint(out / "rl-holder", saved)
    monkeypatch.setattr(curve, "run", lambda *a: pytest.fail("a stage ran"))  # refusals come before any stage
    curve.check_reused_stages(args, ["holder"])  # as this curve would train it
    for field, value, match in (("train", {"lr": 1e-3, "seed": rl.train.seed}, r"train.lr: 0.001 there, 1e-05 now"),
                                ("model", {"name": "/elsewhere/sft"}, r"model.name: '/elsewhere/sft' there"),
                                ("algo", {"loss": rl.algo.loss}, r"algo.clip_ratio_c: None there, 3.0 now.*add "
                                                                r"algo.clip_ratio_c=null to reuse it")):
        (ckpt / "config.yaml").write_text(yaml.safe_dump({**saved, field: value}))
        with pytest.raises(SystemExit, match=match):
            curve.main(argv)
    (ckpt / "config.yaml").write_text(yaml.safe_dump({**saved, "algo": {"loss": rl.algo.loss, "clip_ratio_c": 3.0}}))
    with pytest.raises(SystemExit, match=r"clip_ratio_c: 3.0 there, None now") as refused:
        curve.main([*argv, "algo.clip_ratio_c=null"])
    assert "add algo.clip_ratio_c=null" not in str(refused.value)  # the hint is for runs from before the dual clip
    (ckpt / "config.yaml").write_text(yaml.safe_dump(saved))
    _fake_eval(out, "rl-holder", ckpt.resolve(), args)
    _fake_eval(out, "sft", sft_ckpt.resolve(), args)
    _fake_eval(out, "untrained", None, args)
    curve.check_reused_evals(args, ["holder"])  # each scored the checkpoint its stage holds, as this curve would
    for flag, match in (("--max-steps=30", "max_steps 40 there, 30 now"), ("--max-new-tokens=64", "max_new_tokens 48 there, 64 now"),
                        ("--constrain-actions", "constrain_actions False there, True now"),
                        ("--episodes=12", "episodes 36 there, 12 now")):
        with pytest.raises(SystemExit, match=r"eval of stage 'rl-holder'.*" + match):
            curve.main([*argv, flag])
    with pytest.raises(SystemExit, match=r"eval of stage 'rl-holder'.*trains on to step 8 \(it holds 4\)"):
        curve.main([*argv[:-4], "--rl-steps", "8", "--rl-lr", "1e-5"])  # the step-4 eval is not the step-8 model's
    _fake_checkpoint(out / "rl-holder", saved, step=8)  # a stage trained on by hand: its eval is stale
    with pytest.raises(SystemExit, match=r"eval of stage 'rl-holder'.*step_000004' there, '.*step_000008' now"):
        curve.main(argv)
    monkeypatch.setattr(curve, "table", lambda args: [])  # the fake results hold no per-type table
    curve.main([*argv, "--max-steps=30", "--report-only"])  # a report reads what is there
    calls = []
    monkeypatch.setattr(curve, "run", lambda cmd, *a: calls.append(cmd[2]))
    curve.main([*argv, "--fresh"])  # every eval runs again: none is reused, so none is refused
    assert calls.count("agent_rl.eval") == 3


def test_stages_saved_by_a_real_run_are_reused_by_the_same_command(tmp_path, monkeypatch):
    # what train/sft write (the whole config, agent_rl.train/sft: OmegaConf.to_yaml) must compare equal to what
    # the same curve command composes, or every rerun of `make demo` would be refused
    from omegaconf import OmegaConf

    argv = ["--source", "generated", "--difficulty", "easy", "--generated-games", "24", "--out", str(tmp_path),
            "--task-types", "pick_and_place_simple,look_at_obj_in_light", "--episodes", "12", "--max-steps", "15",
            "--max-new-tokens", "24", "--sft-games", "24", "--sft-epochs", "12", "--sft-batch", "4", "--sft-lr",
            "2e-4", "--sft-budget-s", "450", "--sft-freeze", "20", "--rl-steps", "1", "--tasks", "2", "--group", "2",
            "--algos", "holder", "--skip-sft-eval", "model.freeze_layers=20"]  # the Makefile's demo
    args = build_parser().parse_args(argv)
    args.out = tmp_path.resolve()
    for name, overrides in (("sft", sft_overrides(args, args.out / "sft")),
                            ("rl-holder", rl_overrides("holder", args.out / "sft", args, args.out / "rl-holder"))):
        cfg = compose_config(_hydra_free(overrides))
        cfg.rollout.backend = "vllm"  # resolved at run time from auto before the config is saved
        _fake_checkpoint(args.out / name, {})
        ckpt = args.out / name / "checkpoints" / "step_000004"
        (ckpt / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    curve.check_reused_stages(args, ["holder"])
    _fake_eval(args.out, "untrained", None, args)
    _fake_eval(args.out, "rl-holder", (args.out / "rl-holder" / "checkpoints" / "step_000004").resolve(), args)
    curve.check_reused_evals(args, ["holder"])
    _fake_eval(args.out, "untrained", None, args, env_kwargs={"split": "valid_unseen"})  # release games
    with pytest.raises(SystemExit, match=r"eval of stage 'untrained'.*games 'release' there"):
        curve.check_reused_evals(args, ["holder"])


def test_every_readme_curve_command_parses_and_its_stages_compose(tmp_path):
    """The README's `bench/alfworld_curve.py` lines (the algorithm comparison, the ALFWorld p study) name only
    flags, algos, modifiers and p schedules the curve knows, and each RL stage composes a valid config."""
    from bench_scripts import readme_commands

    commands = readme_commands("alfworld_curve.py")
    assert len(commands) >= 3 and any("holder+constant_1" in " ".join(c) for c in commands)
    for argv in commands:
        args = build_parser().parse_args([*argv, "--out", str(tmp_path)])
        for algo in args.algos.split(","):
            validate(compose_config(_hydra_free(rl_overrides(algo, tmp_path / "sft", args, tmp_path / algo))))
