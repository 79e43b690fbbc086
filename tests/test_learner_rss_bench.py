"""bench/learner_rss.py: the learner's resident memory over updates without and with release_free_memory, each arm in
a process of its own; here on a tiny model (its numbers come from the embedded model)."""

from __future__ import annotations

import sys

import pytest

from bench_scripts import load_bench as _load


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_both_arms_run_the_trainers_learner_and_print_a_ratio(tmp_path, capsys):
    model_dir = _load("learner_memory").write_model(tmp_path, "tiny")
    _load("learner_rss").main(["--model", str(model_dir), "--updates", "2", "--trajectories", "2", "--turns", "2",
                               "--prompt-tokens", "60", "--response-tokens", "10", "--override=model.dtype=float32",
                               "--override=model.freeze_layers=1"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("learner_rss ")]
    assert len(lines) == 3
    assert lines[0].startswith("learner_rss trim=off ") and "model.freeze_layers=1" in lines[0]
    assert lines[1].startswith("learner_rss trim=on ") and "after update 2 " in lines[1]
    assert lines[2].startswith("learner_rss ratio trim/off: rss after the last update ")
