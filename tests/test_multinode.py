"""A two-node Ray cluster on this machine (two `ray start` daemons, separate temp dirs, one CPU each): one
training step with env actors placed on both nodes. Slow (starts a cluster): run with -m slow."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from trainers.models import build_tiny_model

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(temp_dirs: list[str]) -> None:
    """Kill this cluster's daemons only (``ray stop`` would stop every Ray on the machine)."""
    import psutil  # installed with ray

    procs = []
    for p in psutil.process_iter(["cmdline"]):
        if any(d in " ".join(p.info["cmdline"] or []) for d in temp_dirs):
            procs.append(p)
    for p in procs:
        p.kill()
    psutil.wait_procs(procs, timeout=30)


@pytest.fixture
def two_node_cluster(monkeypatch):
    pytest.importorskip("ray")
    ray_cli = str(Path(sys.executable).parent / "ray")
    env = dict(os.environ, RAY_AUTH_MODE="disabled", PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    # short paths: Ray's unix sockets live under the temp dir and must stay under 107 characters
    head, worker = tempfile.mkdtemp(prefix="rayh", dir="/tmp"), tempfile.mkdtemp(prefix="rayw", dir="/tmp")
    port = _free_port()
    common = ["--num-cpus=1", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    try:
        subprocess.run([ray_cli, "start", "--head", f"--port={port}", f"--temp-dir={head}", "--include-dashboard=false",
                        *common], env=env, check=True, timeout=180, capture_output=True)
        subprocess.run([ray_cli, "start", f"--address=127.0.0.1:{port}", f"--temp-dir={worker}", *common], env=env,
                       check=True, timeout=180, capture_output=True)
        monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
        yield f"127.0.0.1:{port}"
    finally:
        _stop([head, worker])


def test_one_training_step_with_env_actors_on_two_ray_nodes(two_node_cluster, tmp_path, monkeypatch):
    import ray

    import agent_rl.train as train_mod
    from agent_rl.train import compose_config, train

    pools = []
    make_pool = train_mod.make_pool

    def keep(*args, **kwargs):
        pools.append(make_pool(*args, **kwargs))
        return pools[-1]

    monkeypatch.setattr(train_mod, "make_pool", keep)
    model = build_tiny_model(tmp_path / "tiny")
    cfg = compose_config([
        "env=math", f"model.name={model}", "rollout=hf", "ray.enabled=true", f"ray.address={two_node_cluster}",
        "ray.rollout_actor=false", "env.num_workers=2", "rollout.group_size=2", "rollout.tasks_per_step=2",
        "rollout.max_new_tokens=8", "train.steps=1", "train.lr=1e-3", f"train.run_dir={tmp_path / 'run'}",
        "logging.wandb=false", "train.progress=false",
    ])
    try:
        assert len(ray.init(address=two_node_cluster).address_info) and len(ray.nodes()) == 2
        metrics = train(cfg)
    finally:
        ray.shutdown()
    assert metrics["train/step"] == 1 and metrics["rollout/num_episodes"] == 4 and metrics["rollout/error_rate"] == 0
    nodes = pools[0].worker_nodes()
    assert len(nodes) == 2 and len(set(nodes)) == 2  # one env actor per node: each node has one CPU
