"""CUDA checks (marked ``gpu``: skipped where there is none, as in CI): the learner's packed, varlen-attention
update gives the CPU's gradient on a GPU, and the trainer trains, checkpoints and resumes there with float32
master weights under bf16 autocast and a bf16 reference model. Their logic is covered on CPU by test_learner
and test_train; these check the device placement."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from test_learner import make_batch
from test_train import quick, tiny_model  # noqa: F401  (a fixture)
from trainers.learner import Learner, LearnerSettings
from trainers.models import build_tiny_model, load_model_and_tokenizer

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("loss,p", [("holder", -1.0), ("grpo", 1.0)])
def test_learner_update_on_cuda_equals_the_cpu_update(tmp_path, loss, p):
    model, _ = load_model_and_tokenizer(build_tiny_model(tmp_path / "tiny", init_std=0.02))
    batch = make_batch("per_step", seed=5, n_traj=6)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, 1.0, -1.0])  # [B]
    steps = {}
    for device in ("cpu", "cuda"):
        m = copy.deepcopy(model).to(device)
        before = {n: t.detach().clone() for n, t in m.named_parameters()}
        learner = Learner(m, torch.optim.SGD(m.parameters(), lr=1.0),  # the step is the gradient
                          LearnerSettings(loss=loss, micro_batch_tokens=32, max_grad_norm=1e9, bf16_autocast=False))
        learner.update(batch, adv, p=p)
        steps[device] = {n: (before[n] - t.detach()).cpu() for n, t in m.named_parameters()}
    assert any(s.abs().max() > 0 for s in steps["cpu"].values())
    for name, step in steps["cpu"].items():
        torch.testing.assert_close(steps["cuda"][name], step, atol=1e-5, rtol=1e-4, msg=name)


def test_train_on_cuda_with_bf16_compute_checkpoints_and_resumes(tiny_model, tmp_path):  # noqa: F811
    from agent_rl.train import train
    from trainers.checkpoint import latest_checkpoint

    run = tmp_path / "run"
    bf16 = ("model.dtype=bfloat16", "algo.kl_coef=0.01")  # float32 masters on the GPU, bf16 autocast, bf16 reference
    metrics = train(quick(tiny_model, run, *bf16))
    assert metrics["loss/grad_norm"] > 0 and metrics["loss/kl"] >= 0
    ckpt = latest_checkpoint(run)
    assert ckpt is not None and ckpt.name == "step_000002"
    saved, _ = load_model_and_tokenizer(ckpt, dtype="float32")
    start, _ = load_model_and_tokenizer(tiny_model, dtype="float32")
    assert any(not torch.equal(a, b) for a, b in zip(saved.parameters(), start.parameters()))
    train(quick(tiny_model, run, *bf16, "train.steps=3"))
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
