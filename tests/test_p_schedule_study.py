"""bench/p_schedule_study.py, the evidence behind the default p schedule: its report (final eval per arm with a
t-interval over seeds, the signals per p bucket) on hand-written run dirs, and the README's command naming only
arms the script knows."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

from bench_scripts import ROOT, readme_commands

SCRIPT = ROOT / "bench" / "p_schedule_study.py"


def _study(monkeypatch, capsys, *argv: str) -> list[str]:
    monkeypatch.setattr("sys.argv", ["p_schedule_study.py", *argv])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    return [l for l in capsys.readouterr().out.splitlines() if l.startswith("p_study ")]


def _run(out: Path, arm: str, seed: int, evals: dict[int, float], ps: list[float]) -> None:
    run = out / arm / f"seed{seed}"
    run.mkdir(parents=True)
    rows = [{"step": s, "loss/p": p, "rollout/success_rate": 0.5, "loss/token_weight_ess": 0.9 + 0.01 * s,
             "loss/clip_frac": 0.01, "loss/grad_norm": float(s)} for s, p in enumerate(ps, start=1)]
    rows += [{"step": s, "eval/success_rate": v} for s, v in evals.items()]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 9, "eval/succ')  # torn


def test_report_gives_the_last_eval_per_seed_with_a_t_interval_and_signals_per_p(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    # the final evals of the cosine arm in the README (43, 42 and 45 of 64 problems); an earlier, higher eval
    # must not count as "final"
    for seed, final in enumerate([0.672, 0.656, 0.703]):
        _run(tmp_path, "cosine_2_-2", seed, {0: 0.9, 2: final}, ps=[2.0, -2.0])
    lines = _study(monkeypatch, capsys, "--report-only", "--arms", "cosine_2_-2", "--seeds", "0,1,2",
                   "--out", str(tmp_path))
    assert lines[0] == ("p_study cosine_2_-2: final eval 0.677 [95% 0.618, 0.736] (n=3); "
                        "mean over evals 0.788 [95% 0.759, 0.818] (n=3)")
    assert lines[1] == ("p_study cosine_2_-2:   p≈+2.0: 3 steps, ESS 0.910, clip_frac 0.010, grad_norm 1.000, "
                        "train success 0.500")
    assert lines[2].startswith("p_study cosine_2_-2:   p≈-2.0: 3 steps, ESS 0.920,")
    assert (tmp_path / "study.csv").is_file() and (tmp_path / "study.png").is_file()


def test_an_unknown_arm_is_refused_with_the_known_ones(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["p_schedule_study.py", "--arms", "linear_2_-3", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"unknown arm\(s\) \['linear_2_-3'\]; choose from linear_2_-2"):
        runpy.run_path(str(SCRIPT), run_name="__main__")


def test_readme_study_commands_name_only_known_arms():
    arms = runpy.run_path(str(SCRIPT))["ARMS"]
    commands = readme_commands("p_schedule_study.py")
    named = [a for c in commands if "--arms" in c for a in c[c.index("--arms") + 1].split(",")]
    assert len(named) >= 7, commands
    assert set(named) <= set(arms), set(named) - set(arms)


def _curve_stage(out: Path, seed: int, stage: str, success: float | None, ps: list[float]) -> None:
    run = out / f"seed{seed}" / f"rl-{stage}"
    run.mkdir(parents=True)
    rows = [{"step": s, "loss/p": p, "rollout/success_rate": 0.25, "loss/token_weight_ess": 0.99,
             "loss/clip_frac": 0.0, "loss/grad_norm": 0.5} for s, p in enumerate(ps, start=1)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if success is not None:  # the curve's eval of the stage, after its last step
        (out / f"seed{seed}" / f"eval_rl-{stage}").mkdir()
        (out / f"seed{seed}" / f"eval_rl-{stage}" / "results.json").write_text(json.dumps({"success_rate": success}))


def test_alfworld_report_reads_each_seeds_curve_folder_and_its_stage_evals(tmp_path, monkeypatch, capsys):
    """ALFWorld arms are curve stages: the default schedule is plain holder, the others holder+<arm>, all arms of a
    seed in one folder; the final eval is the stage's eval (a stage not yet evaluated has none)."""
    pytest.importorskip("matplotlib")
    for seed, (default, late) in enumerate([(0.5, 0.25), (0.75, None)]):
        _curve_stage(tmp_path, seed, "holder", default, ps=[1.8, -2.0])
        _curve_stage(tmp_path, seed, "holder+linear_2_0", late, ps=[1.9, 0.0])
    lines = _study(monkeypatch, capsys, "--report-only", "--sft-run", str(tmp_path / "sft"), "--arms",
                   "linear_2_-2,linear_2_0", "--seeds", "0,1", "--out", str(tmp_path))
    assert lines[0] == ("p_study linear_2_-2: final eval 0.625 [95% -0.964, 2.214] (n=2); "
                        "mean over evals 0.625 [95% -0.964, 2.214] (n=2)")
    assert lines[1] == ("p_study linear_2_-2:   p≈+2.0: 2 steps, ESS 0.990, clip_frac 0.000, grad_norm 0.500, "
                        "train success 0.250")
    assert lines[2].startswith("p_study linear_2_-2:   p≈-2.0: 2 steps,")
    assert lines[3].startswith("p_study linear_2_0: final eval 0.250 (n=1)")
    assert lines[5].startswith("p_study linear_2_0:   p≈+0.0: 2 steps,")


def test_alfworld_runs_are_curve_commands_that_compose_valid_rl_stages(tmp_path):
    from agent_rl.curve import build_parser, rl_overrides
    from agent_rl.train import compose_config
    from agent_rl.validation import validate

    study = runpy.run_path(str(SCRIPT))
    args = type("A", (), {"sft_run": tmp_path / "sft", "steps": 20, "tasks": 4, "group": 4, "out": tmp_path,
                          "curve_args": "--source generated --difficulty easy --episodes 48 --rl-lr 1e-5",
                          "extra": ["model.freeze_layers=20"]})()
    for arm in study["ARMS"]:
        cmd = study["curve_command"](arm, 3, args)
        assert cmd[1:3] == ["-m", "agent_rl.curve"]
        curve_args = build_parser().parse_args(cmd[3:])
        assert curve_args.out == tmp_path / "seed3" and curve_args.seed == 3 and curve_args.threads == 1
        cfg = compose_config([o for o in rl_overrides(curve_args.algos, args.sft_run, curve_args, tmp_path / "rl")
                              if not o.startswith("hydra.")])
        validate(cfg)
        assert cfg.train.steps == 20 and cfg.train.seed == 3 and cfg.model.freeze_layers == 20
        assert cfg.algo.loss == ("grpo" if arm == "grpo" else "holder")
        assert study["run_dir_of"](arm, 3, args) == tmp_path / "seed3" / f"rl-{curve_args.algos}"


def test_alfworld_study_refuses_a_missing_sft_run_or_bad_curve_flags_before_any_run(tmp_path, monkeypatch):
    import subprocess

    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("a run started"))
    argv = ["p_schedule_study.py", "--arms", "linear_2_-2", "--seeds", "0", "--out", str(tmp_path / "out")]
    monkeypatch.setattr("sys.argv", [*argv, "--sft-run", str(tmp_path / "nowhere")])
    with pytest.raises(SystemExit, match="no checkpoint there; give a finished agent_rl.sft run"):
        runpy.run_path(str(SCRIPT), run_name="__main__")
    (tmp_path / "sft").mkdir()
    monkeypatch.setattr("trainers.checkpoint.latest_checkpoint", lambda run, **k: run / "checkpoints" / "step_000001")
    monkeypatch.setattr("sys.argv", [*argv, "--sft-run", str(tmp_path / "sft"), "--curve-args", "--sorce generated"])
    with pytest.raises(SystemExit, match="--curve-args '--sorce generated': agent_rl.curve refused them"):
        runpy.run_path(str(SCRIPT), run_name="__main__")


def test_alfworld_study_refuses_curve_flags_it_sets_itself(tmp_path, monkeypatch):
    (tmp_path / "sft").mkdir()
    monkeypatch.setattr("trainers.checkpoint.latest_checkpoint", lambda run, **k: run / "checkpoints" / "step_000001")
    monkeypatch.setattr("sys.argv", ["p_schedule_study.py", "--arms", "linear_2_-2", "--seeds", "0,1", "--out",
                                     str(tmp_path / "out"), "--sft-run", str(tmp_path / "sft"),
                                     "--curve-args", "--episodes 48 --seed=3"])
    with pytest.raises(SystemExit, match="--seed set by the study for each run; use its --arms, --seeds"):
        runpy.run_path(str(SCRIPT), run_name="__main__")


def test_alfworld_study_leaves_a_failed_run_out_of_the_report_even_with_an_old_folder(tmp_path, monkeypatch, capsys):
    """A curve run that exits non-zero (e.g. refusing a reused stage) leaves an earlier run's files in place:
    they are not reported as this study's."""
    import subprocess
    import time

    pytest.importorskip("matplotlib")
    out = tmp_path / "out"
    _curve_stage(out, 0, "holder+linear_2_0", 0.9, ps=[1.9, 0.0])  # an earlier run's
    (tmp_path / "sft").mkdir()
    monkeypatch.setattr("trainers.checkpoint.latest_checkpoint", lambda run, **k: run / "checkpoints" / "step_000001")
    started, reported = [], []

    class Done:
        def __init__(self, cmd, **kwargs):
            started.append(cmd)
            self.returncode = 1 if "holder+linear_2_0" in cmd else 0
            if self.returncode == 0:
                _curve_stage(out, 0, "holder", 0.5, ps=[1.8, -2.0])

        def poll(self):
            return self.returncode

    monkeypatch.setattr(subprocess, "Popen", Done)
    monkeypatch.setattr(subprocess, "call", lambda cmd, **k: reported.append(cmd) or 0)
    monkeypatch.setattr(time, "sleep", lambda s: None)
    lines = _study(monkeypatch, capsys, "--arms", "linear_2_-2,linear_2_0", "--seeds", "0", "--out", str(out),
                   "--sft-run", str(tmp_path / "sft"), "--curve-args", "--source generated --episodes 48")
    assert len(started) == 2 and [c[c.index("--algos") + 1] for c in started] == ["holder", "holder+linear_2_0"]
    assert "p_study linear_2_0 seed 0: failed (exit 1), left out of the report; see its log" in lines
    assert "p_study linear_2_-2: final eval 0.500 (n=1); mean over evals 0.500 (n=1)" in lines
    assert "p_study linear_2_0: final eval n/a; mean over evals n/a" in lines
    assert not any(l.startswith("p_study linear_2_0:   p≈") for l in lines)
    assert reported and reported[0][2:4] == ["agent_rl.curve", "--report-only"] and str(out / "seed0") in reported[0]
