"""Learner time with token-identical sequences ("twins") computed once vs every copy, on one real training batch.

Data flow: one training step's rollout (``rollout.tasks_per_step`` tasks × G episodes, played by the train config's
own rollout side: env pool, vLLM or hf policy, RolloutEngine) → advantages → ``Learner.update`` from the same
weights with ``share_twins=False`` (the baseline: every copy computed) and ``share_twins=True``, in one process.

The G episodes of a group start from one state, and in a deterministic env (ALFWorld) every turn they play alike
is the same token sequence; the learner computes such twins once (trainers.learner). How many there are depends on
how peaked the policy is: a trained agent repeats its moves, an untrained one rarely does.

    python bench/twin_bench.py env=alfworld model.name=<sft or rl run dir> rollout.template=alfworld_act \\
        rollout.tasks_per_step=4 rollout.group_size=4 rollout.max_turns=20 rollout.max_new_tokens=24 \\
        model.freeze_layers=20 algo.num_minibatches=2 train.bf16=true [--reps 2]

Prints the batch (sequences, twins, tokens; the learner's share: the rows with a nonzero advantage), one line per
timed update, the ratio of the best times, and the largest weight difference between the two updated models. That
difference is rounding, not a different update: the two paths pack different micro-batches, so bf16 autocast rounds
differently, and AdamW's first steps move every weight by about ±lr whatever its gradient's size, so a rounding-size
change can flip a near-zero gradient's step (up to 2·lr an update). In float64 the two updates agree
(tests/test_learner.py).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import random
import time


def play_one_batch(cfg):
    """One step's trajectories and rollout metrics, as ``agent_rl.train`` plays its first step."""
    from agent_rl.rollout_side import make_pool, make_rollout_engine, make_rollout_policy
    from agent_rl.train import load_model, resolve_env, resolve_template
    from trainers.batch import collect_rollouts, env_num_tasks, sample_tasks

    env_id = resolve_env(cfg)
    template = resolve_template(cfg, env_id)
    model, tokenizer = load_model(cfg)
    policy = make_rollout_policy(cfg, model, tokenizer)
    pool = make_pool(cfg, env_id, cfg.episodes_per_step, dict(cfg.env.kwargs))
    try:
        engine = make_rollout_engine(cfg, policy, pool, template)
        num_tasks = env_num_tasks(pool)
        tasks = sample_tasks(random.Random(cfg.train.seed), num_tasks, cfg.rollout.tasks_per_step, 0, cfg.train.seed)
        trajectories, metrics = collect_rollouts(cfg, engine, tasks, num_tasks, 0)
    finally:
        pool.close()
        policy.close()
    return model, trajectories, metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=1, help="timed updates per setting (the best is compared)")
    parser.add_argument("overrides", nargs="*", help="agent_rl.train Hydra overrides")
    args = parser.parse_args()

    import torch

    from agent_rl.train import compose_config, learner_settings, make_optimizer
    from agent_rl.types import TrajectoryBatch
    from agent_rl.validation import validate
    from trainers.batch import row_advantages
    from trainers.learner import Learner
    from trainers.packing import twin_groups
    from trainers.schedules import PControl

    cfg = compose_config(args.overrides)
    validate(cfg)
    t0 = time.perf_counter()
    model, trajectories, rollout_metrics = play_one_batch(cfg)
    batch = TrajectoryBatch(trajectories)
    advantages = row_advantages(cfg, batch)
    sequences = batch.sequences()
    twins = twin_groups(sequences, list(range(len(sequences))))
    twin_tokens = sum(len(sequences[i]) for members in twins.values() for i in members[1:])
    # the learner's share: sequences of rows with a nonzero advantage (zero-advantage rows are skipped anyway)
    live = [i for r, seqs in enumerate(batch.rows(cfg.algo.ratio_unit, sequences)) if advantages[r] != 0 for i in seqs]
    live_tokens = sum(len(sequences[i]) for i in live)
    live_twin_tokens = sum(len(sequences[i]) for members in twin_groups(sequences, live).values() for i in members[1:])
    print(f"twin_bench batch: {len(trajectories)} episodes ({cfg.rollout.tasks_per_step} tasks x G="
          f"{cfg.rollout.group_size}), success {rollout_metrics.get('rollout/success_rate', float('nan')):.3f}, "
          f"{len(sequences)} sequences, {len(sequences) - len(twins)} twins "
          f"({twin_tokens / max(sum(len(s) for s in sequences), 1):.1%} of {sum(len(s) for s in sequences)} tokens), "
          f"{int((advantages != 0).sum())}/{len(advantages)} rows with a nonzero advantage ({len(live)} sequences, "
          f"{live_tokens} tokens, {live_twin_tokens / max(live_tokens, 1):.1%} of them in twins); rollout "
          f"{time.perf_counter() - t0:.0f} s", flush=True)

    p = PControl(cfg.algo, cfg.train.steps).p_for(0)
    best: dict[bool, float] = {}
    updated: dict[bool, torch.nn.Module] = {}
    for rep in range(args.reps):
        for share in (False, True):
            m = copy.deepcopy(model)
            settings = dataclasses.replace(learner_settings(cfg, next(m.parameters()).device.type), share_twins=share)
            learner = Learner(m, make_optimizer(cfg, m), settings, seed=cfg.train.seed)
            t = time.perf_counter()
            metrics = learner.update(batch, advantages, p)
            seconds = time.perf_counter() - t
            best[share] = min(best.get(share, float("inf")), seconds)
            updated[share] = m
            print(f"twin_bench update share_twins={str(share).lower():5s} rep {rep}: {seconds:6.1f} s, "
                  f"{metrics['perf/twin_sequences']:.0f} sequences from a twin, "
                  f"{metrics['perf/skipped_sequences']:.0f} zero-advantage skipped, "
                  f"loss {metrics.get('loss/policy', float('nan')):.6f}, grad norm "
                  f"{metrics.get('loss/grad_norm', float('nan')):.5f}", flush=True)
    diff = max(float((a - b).detach().abs().max()) for a, b in zip(updated[False].parameters(), updated[True].parameters()))
    print(f"twin_bench ratio (every copy / twins once, best of {args.reps}): {best[False] / best[True]:.2f}x "
          f"({best[False]:.1f} s -> {best[True]:.1f} s); max |weight difference| after the update {diff:.2e} "
          f"(train.lr {cfg.train.lr:g})")


if __name__ == "__main__":
    main()
