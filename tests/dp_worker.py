"""Worker for tests/test_distributed.py, launched with torchrun: one learner update per case on a float64
tiny model, data-parallel over the ranks (gloo); rank 0 saves the parameters after each case.

    dp_worker.py MODEL OUT [fsdp2]     # fsdp2: the model sharded with FSDP2 (train.fsdp2), else replicated"""

from __future__ import annotations

import copy
import sys

import torch

from test_learner import batch_with_twins, make_batch  # tests/ is this script's directory, so first on sys.path
from trainers.distributed import init_data_parallel
from trainers.learner import Learner, LearnerSettings
from trainers.models import load_model_and_tokenizer

CASES = {
    # name: (prompt mode, trajectories, advantages, settings)
    "holder_minibatches": ("per_step", 5, [1.0, 0.0, -1.0, 0.5, -0.5],
                           dict(loss="holder", num_minibatches=2, epochs=2)),
    "grpo_turn_rows": ("per_step", 4, None, dict(loss="grpo", ratio_unit="turn")),
    "gspo_entropy": ("per_step", 3, [1.0, -1.0, 0.0], dict(loss="gspo", entropy_coef=0.01)),
    "one_sequence": ("conversation", 1, [1.0], dict(loss="holder")),  # rank 1 has nothing to compute
    # a KL term against a reference model, and a batch sampled by other (behaviour) weights
    "kl_behaviour": ("per_step", 4, [1.0, -1.0, 0.5, 0.0], dict(loss="holder", kl_coef=0.05, num_minibatches=2)),
    # one minibatch of zero advantages, computed anyway: a zero-gradient update after forwards, whose momentum
    # and weight-decay step must reach every parameter (SGD with momentum below)
    "zero_grad_momentum": ("per_step", 4, [1.0, 0.0, 0.0, 0.0],
                           dict(loss="holder", num_minibatches=2, skip_zero_advantage=False)),
    # episodes of a group that play the same first turns: each set of twins computed once, on one rank
    "twins": ("twins", 6, [1.0, -1.0, 0.5, -0.5, 0.0, 0.0], dict(loss="holder", entropy_coef=0.01, num_minibatches=2)),
}
P = {"holder_minibatches": -1.5, "grpo_turn_rows": 1.0, "gspo_entropy": 0.0, "one_sequence": 2.0, "kl_behaviour": -0.5,
     "zero_grad_momentum": 1.0, "twins": -1.0}


def perturbed(model, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)  # the same on every rank
    return {n: t.detach() + 0.02 * torch.randn(t.shape, generator=gen, dtype=t.dtype) for n, t in model.named_parameters()}


def run_case(name: str, model_path: str, dp, fsdp2: bool) -> tuple[torch.nn.Module, dict]:
    mode, n, adv, settings = CASES[name]
    model, _ = load_model_and_tokenizer(model_path)
    model = model.double()
    batch = batch_with_twins() if mode == "twins" else make_batch(mode, seed=7, n_traj=n)
    rows = batch.rows(settings.get("ratio_unit", "trajectory"))
    advantages = torch.tensor(adv if adv is not None else [(-1.0) ** k * (k % 3) for k in range(len(rows))])
    ref_model, behaviour = None, None
    if name == "kl_behaviour":
        ref_model = copy.deepcopy(model)
        ref_model.load_state_dict(perturbed(model, 1), strict=False)
        behaviour = None if fsdp2 else perturbed(model, 2)  # swapping weight sets needs unsharded parameters
    full = dp.shard_parameters(model, fsdp2)  # rank 0's full copy (the model itself unless sharded)
    momentum = dict(momentum=0.9, weight_decay=0.1) if name == "zero_grad_momentum" else {}
    learner = Learner(model, torch.optim.SGD(model.parameters(), lr=0.5, **momentum),
                      LearnerSettings(micro_batch_tokens=48, **settings), seed=1, dp=dp, ref_model=ref_model)
    metrics = learner.update(batch, advantages, p=P[name], behaviour=behaviour)
    dp.publish(model, full)
    return full, metrics


def main() -> None:
    model_path, out = sys.argv[1], sys.argv[2]
    fsdp2 = sys.argv[3:] == ["fsdp2"]
    dp = init_data_parallel()
    results = {}
    for name in CASES:
        model, metrics = run_case(name, model_path, dp, fsdp2)
        if dp.is_main:  # under FSDP2 only rank 0 holds the full weights
            results[name] = ({k: v.detach().clone() for k, v in model.state_dict().items()}, metrics)
    if dp.is_main:
        torch.save(results, out)
    dp.close()


if __name__ == "__main__":
    main()
