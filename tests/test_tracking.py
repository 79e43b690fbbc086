"""Metric sinks (trainers.tracking): the real wandb client offline through the trainer, and what a resumed
online wandb run, which keeps its history, gets from a run that repeats steps after a stop."""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import pytest

from agent_rl.train import train
from trainers.checkpoint import latest_checkpoint
from trainers.tracking import Tracker

from test_train import quick, tiny_model  # noqa: F401  (a one-turn train config on an in-test env; its model)


def test_the_trainer_logs_to_real_offline_wandb_and_a_resume_continues_the_same_run(tiny_model, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    train(quick(tiny_model, run, "logging.wandb=true", "logging.wandb_mode=offline", "train.steps=1"))
    train(quick(tiny_model, run, "logging.wandb=true", "logging.wandb_mode=offline", "train.steps=2"))
    # run.finish() only informs wandb-core that the run is done (a fire-and-forget publish); the core closes the
    # run's stream, and with it flushes the .wandb file, on its own time, at the latest when the process exits.
    # wandb.teardown() is that exit's step: it waits for the core to shut down. Without it the read below races.
    import wandb

    wandb.teardown()
    run_id = json.loads((latest_checkpoint(run) / "trainer_state.json").read_text())["extra"]["wandb_id"]
    segments = sorted((run / "wandb").glob("offline-run-*"))
    assert run_id and len(segments) == 2 and all(d.name.endswith(f"-{run_id}") for d in segments)
    for d in segments:  # `wandb sync` uploads these: each holds its attempt's metric rows
        assert b"loss/p" in (d / f"run-{run_id}.wandb").read_bytes()


class FakeRun:
    """An online wandb run resumed after a stop: it holds steps up to ``held`` and accepts only later ones."""

    def __init__(self, held: int):
        self.id, self.step, self.logged = "abc123", held + 1, []

    def log(self, values, step):
        assert step >= self.step, f"wandb would drop step {step} (< {self.step}) with a warning"
        self.logged.append(step)
        self.step = step

    def finish(self):
        pass


def test_a_resumed_wandb_run_keeps_its_steps_and_gets_the_rest(tmp_path, monkeypatch, caplog):
    # the stopped attempt logged steps 1-4 and checkpointed at 2: steps 3-4 run again
    fake = FakeRun(held=4)
    monkeypatch.setitem(sys.modules, "wandb", SimpleNamespace(init=lambda **kw: fake))
    for step in (1, 2, 3, 4):
        (tmp_path / "metrics.jsonl").open("a").write(json.dumps({"step": step, "loss/p": 0.0}) + "\n")
    with caplog.at_level("WARNING", logger="agent_rl"):
        tracker = Tracker(tmp_path, config={}, use_wandb=True, resume_id="abc123", start_step=2)
    assert "already holds steps 3-4" in caplog.text
    for step in (3, 4, 5, 6):
        tracker.log(step, {"loss/p": float(step)})
    tracker.close()
    assert fake.logged == [5, 6]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss/p"]) for r in rows] == [(1, 0.0), (2, 0.0), (3, 3.0), (4, 4.0), (5, 5.0), (6, 6.0)]


@pytest.mark.parametrize("held", [0, 2])
def test_a_wandb_run_without_later_steps_gets_every_step_and_no_warning(tmp_path, monkeypatch, caplog, held):
    fake = FakeRun(held=held)
    monkeypatch.setitem(sys.modules, "wandb", SimpleNamespace(init=lambda **kw: fake))
    with caplog.at_level("WARNING", logger="agent_rl"):
        tracker = Tracker(tmp_path, config={}, use_wandb=True, resume_id="abc123" if held else None, start_step=held)
    for step in (held + 1, held + 2):
        tracker.log(step, {"loss/p": 1.0})
    tracker.close()
    assert fake.logged == [held + 1, held + 2] and "already holds" not in caplog.text


def test_signals_per_p_buckets_every_row_with_a_p_once_and_averages_only_logged_values():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from trainers.tracking import signals_per_p

    signal = st.one_of(st.none(), st.floats(0, 10, allow_nan=False))
    row = st.fixed_dictionaries({"loss/p": st.one_of(st.none(), st.floats(-3, 3, allow_nan=False)),
                                 "loss/token_weight_ess": signal, "loss/grad_norm": signal})

    @settings(max_examples=200, deadline=None)
    @given(st.lists(row, max_size=30))
    def check(rows):
        rows = [{k: v for k, v in r.items() if v is not None} for r in rows]  # a missing key, as a skipped update
        got = signals_per_p(rows)
        with_p = [r for r in rows if "loss/p" in r]
        assert sum(e["steps"] for e in got) == len(with_p)
        assert [e["p"] for e in got] == sorted({e["p"] for e in got}, reverse=True)
        for e in got:
            mine = [r for r in with_p if abs(r["loss/p"] - e["p"]) <= 0.25 + 1e-9]
            assert len(mine) >= e["steps"]  # a p exactly between two buckets is in one of them
            grads = [r["loss/grad_norm"] for r in with_p if round(r["loss/p"] / 0.5) * 0.5 == e["p"]
                     and "loss/grad_norm" in r]
            assert e["grad_norm"] is None if not grads else abs(e["grad_norm"] - sum(grads) / len(grads)) < 1e-9
            assert e["clip_frac"] is None  # never logged here

    check()
