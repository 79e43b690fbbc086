"""bench/twin_bench.py: one real batch (a tiny model on a test env, hf rollouts), timed with twins shared and not,
prints its batch, update and ratio lines, and both updates land on the same weights."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from trainers.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


def test_twin_bench_prints_the_batch_both_updates_and_the_ratio(tiny_model):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "twin_bench.py"), "--reps", "2", "env=custom",
                        "env.id=test_user/Length-v0", "env.import_modules=[test_train]", f"model.name={tiny_model}",
                        "rollout.backend=hf", "rollout.group_size=4", "rollout.tasks_per_step=2", "rollout.max_turns=1",
                        "rollout.max_new_tokens=8", "logging.wandb=false", "train.progress=false"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.search(r"^twin_bench batch: 8 episodes \(2 tasks x G=4\), success [\d.]+, 8 sequences, \d+ twins", r.stdout, re.M)
    updates = re.findall(r"^twin_bench update share_twins=(false|true)\s+rep (\d):", r.stdout, re.M)
    assert updates == [("false", "0"), ("true", "0"), ("false", "1"), ("true", "1")], r.stdout
    diff = re.search(r"^twin_bench ratio \(every copy / twins once, best of 2\): [\d.]+x .* max \|weight difference\| "
                     r"after the update (\S+) \(train.lr [\d.e-]+\)$", r.stdout, re.M)
    assert diff and float(diff.group(1)) < 1e-5, r.stdout
