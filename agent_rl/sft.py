"""``python -m agent_rl.sft env=alfworld rollout.template=alfworld_act``: the SFT warm start before RL, top-down.

    expert demonstrations (the env's expert plays train games through the rollout engine)
    → SFT (reply tokens only) → [DAgger round k: the model plays, the expert labels every state it
    reaches, SFT on the aggregate] × sft.dagger_rounds → checkpoint in the trainer's format

Same Hydra groups and overrides as ``agent_rl.train`` (env, model, rollout, train, logging, preset)
plus ``sft.*`` (:class:`agent_rl.config.SftConfig`). The demonstrations are rendered by the
rollout's own prompt code (template, history_k, admissible actions, chat template), so SFT teaches
token for token what RL and eval show the model. They are written to ``<run_dir>/demos/round_K.jsonl``;
``sft.demos=[a.jsonl,...]`` trains on your own instead. The checkpoint (``<run_dir>/checkpoints``)
loads with ``python -m agent_rl.eval --checkpoint <run_dir>`` and starts RL with
``python -m agent_rl.train model.name=<run_dir>``.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time

from agent_rl.config import Config, ConfigError
from agent_rl.validation import validate, validate_sft

log = logging.getLogger("agent_rl")


def collect_round(cfg: Config, env_id: str, template, policy, *, round_index: int, games: int, beta: float,
                  temperature: float, num_tasks: int | None, pool) -> tuple[list, dict[str, float]]:
    """Play ``games`` train games with DAgger's mixture (``beta = 1``: the expert alone) and return
    the labelled turns as demonstrations, plus what happened in the episodes."""
    from agent_rl.rollout_side import rollout_settings, rollout_stop
    from trainers.demonstrations import ExpertMix, demonstrations_from, stamp_for
    from trainers.policies.base import SamplingParams
    from trainers.rollout import RolloutEngine

    settings = rollout_settings(cfg)  # the prompts and reply handling RL and eval will use
    settings.update(template=template, invalid_action_penalty=0.0)
    engine = RolloutEngine(policy, pool, max_turns=cfg.rollout.max_turns,
                           sampling=SamplingParams(temperature=temperature, top_p=cfg.rollout.top_p,
                                                   max_tokens=cfg.rollout.max_new_tokens, stop=rollout_stop(cfg)),
                           progress=cfg.train.progress, expert=ExpertMix(beta, seed=cfg.train.seed + round_index),
                           **settings)
    tasks = demo_tasks(cfg, num_tasks, games, round_index)
    t0 = time.perf_counter()
    trajectories, metrics = engine.run(tasks, 1)
    source = "expert" if beta >= 1.0 else "dagger"
    stamp = stamp_for(source=f"{source}:{cfg.sft.expert or 'env'}", round_index=round_index, beta=beta,
                      template=template.name, history_k=cfg.rollout.history_k, env_id=env_id,
                      env_kwargs=dict(cfg.env.kwargs), model=None if beta >= 1.0 else cfg.model.name)
    demos = demonstrations_from(trajectories, template, stamp)
    failed = sum(1 for t in trajectories if t.info.get("error") or t.info.get("truncated_reason") == "no_expert_action")
    return demos, {
        f"demos/round{round_index}_episodes": float(len(trajectories)),
        f"demos/round{round_index}_success_rate": metrics["rollout/success_rate"],
        f"demos/round{round_index}_mean_turns": metrics["rollout/mean_turns"],
        f"demos/round{round_index}_turns": float(len(demos)),
        f"demos/round{round_index}_failed_episodes": float(failed),
        f"demos/round{round_index}_seconds": time.perf_counter() - t0,
    }


def demo_tasks(cfg: Config, num_tasks: int | None, games: int, round_index: int):
    """The ``games`` train games a round plays, from a stream of its own. Not ``random.Random(train.seed)``:
    that is the trainer's task stream (agent_rl.rollout_side.task_draws), and an RL run after SFT at the
    same seed would replay the demonstrated games in order."""
    from trainers.batch import sample_tasks

    rng = random.Random(f"sft-demos:{cfg.train.seed}:{round_index}")
    return sample_tasks(rng, num_tasks, games, round_index, cfg.train.seed)


def split_heldout(demos: list, heldout_games: int) -> tuple[list, list]:
    """Hold out every demonstration of the first ``heldout_games`` games (by game id, in order of appearance)."""
    games: list[str] = []
    for d in demos:
        if d.game_id not in games:
            games.append(d.game_id)
    held = set(games[:heldout_games]) if heldout_games < len(games) else set()
    return [d for d in demos if d.game_id not in held], [d for d in demos if d.game_id in held]


def sft(cfg: Config) -> dict[str, float]:
    """Collect (or read) demonstrations, fine-tune, optionally run DAgger rounds; returns the metrics."""
    import torch
    from omegaconf import OmegaConf

    from agent_rl.rollout_side import make_pool, make_rollout_policy, rollout_stop, sync_weights
    from agent_rl.train import learner_autocast, load_model, make_run_dir, resolve_env, resolve_template
    from trainers.batch import env_num_tasks
    from trainers.checkpoint import latest_checkpoint, save_checkpoint
    from trainers.demonstrations import TokenizerOnlyPolicy, read_jsonl, write_jsonl
    from trainers.sft import SftLearner, SftSettings, reply_end_ids, sft_sequences
    from trainers.tracking import Tracker

    # 1. everything that can be wrong is checked before a model or an env loads
    validate(cfg, rl=False)
    validate_sft(cfg)
    s = cfg.sft
    run_dir = make_run_dir(cfg)
    if latest_checkpoint(run_dir, weights_only=True) is not None:
        raise ConfigError(f"train.run_dir={run_dir} already holds a checkpoint; SFT does not overwrite one. Fix: "
                          f"choose a new train.run_dir (or start RL from this one with model.name={run_dir})")
    user_demos = read_jsonl(s.demos) if s.demos else None
    env_id = resolve_env(cfg)
    template = resolve_template(cfg, env_id)
    if user_demos is None or s.dagger_rounds:
        try:
            template.format_reply("look")
        except ValueError as exc:
            raise ConfigError(f"rollout.template: {exc}") from None
    random.seed(cfg.train.seed)
    torch.manual_seed(cfg.train.seed)

    # 2. model, optimizer, learner
    model, tokenizer = load_model(cfg)
    end_ids = reply_end_ids(rollout_stop(cfg), template.stop, tokenizer)  # replies end as the rollout's do
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=s.lr,
                                  weight_decay=cfg.train.weight_decay)
    learner = SftLearner(model, optimizer, SftSettings(
        lr=s.lr, weight_decay=cfg.train.weight_decay, epochs=s.epochs, batch_size=s.batch_size,
        warmup_steps=s.warmup_steps, max_grad_norm=cfg.train.max_grad_norm,
        micro_batch_tokens=cfg.train.micro_batch_tokens, seed=cfg.train.seed,
        bf16_autocast=learner_autocast(cfg, next(model.parameters()).device.type),
        max_nonfinite_steps=cfg.train.max_nonfinite_steps, frozen_layers=cfg.model.freeze_layers,
        freeze_cache=cfg.model.freeze_cache, freeze_cache_max_gb=cfg.model.freeze_cache_max_gb))
    tracker = Tracker(run_dir, config=OmegaConf.to_container(OmegaConf.structured(cfg)), use_wandb=cfg.logging.wandb,
                      wandb_mode=cfg.logging.wandb_mode, project=cfg.logging.project, run_name=cfg.logging.run_name)
    budget = _TrainingBudget(s.time_budget_s)  # training time only: collection is not counted
    demos_dir = run_dir / "demos"
    metrics: dict[str, float] = {}
    pool = policy = None

    def log_step(step: int, m: dict[str, float]) -> None:
        tracker.log(step, m)

    try:
        # 3. round 0: the expert's demonstrations (or the user's JSONL)
        if user_demos is None or s.dagger_rounds:
            env_kwargs = dict(cfg.env.kwargs)
            if s.expert is not None:
                env_kwargs["expert"] = s.expert
            num_envs = min(s.num_envs, max(s.games if user_demos is None else 0,
                                           s.dagger_games if s.dagger_rounds else 0))
            # A worker steps its envs one after another within one batch, so the bound on a batch
            # is the per-step bound times the envs it holds (env_timeout_s is per env step).
            per_worker = -(-num_envs // max(1, cfg.env.num_workers))
            pool = make_pool(cfg, env_id, num_envs, env_kwargs, timeout_s=s.env_timeout_s * per_worker)
            num_tasks = env_num_tasks(pool)
        if user_demos is None:
            demos, m = collect_round(cfg, env_id, template, TokenizerOnlyPolicy(tokenizer), round_index=0,
                                     games=s.games, beta=1.0, temperature=0.0, num_tasks=num_tasks, pool=pool)
            write_jsonl(demos_dir / "round_0.jsonl", demos, append=False)
            metrics.update(m)
            log.info("round 0: %d expert demonstrations from %d games (expert won %.0f%%) in %.0f s",
                     len(demos), s.games, 100 * m["demos/round0_success_rate"], m["demos/round0_seconds"])
        else:
            demos = user_demos
        train_demos, held = split_heldout(demos, s.heldout_games if user_demos is None else 0)
        held_ids = {d.game_id for d in held}  # kept out of the DAgger rounds too
        held_seqs = sft_sequences(held, tokenizer, end_ids)
        with budget.running() as deadline:
            metrics.update(_prefixed(learner.fit(sft_sequences(train_demos, tokenizer, end_ids), deadline=deadline,
                                                 log=log_step), 0))
        metrics.update(_prefixed(learner.heldout(held_seqs), 0))
        tracker.log(learner.steps, metrics)
        _print_round(0, metrics)

        # 4. DAgger: the model plays (its share 1 - beta), the expert labels every state it reaches
        for k in range(1, s.dagger_rounds + 1):
            if budget.spent():
                log.info("time budget spent: skipping DAgger rounds %d..%d", k, s.dagger_rounds)
                break
            model.eval()
            if policy is None:  # rollout.backend as in train (auto: vLLM where it works), started once
                policy = make_rollout_policy(cfg, model, tokenizer)
            sync_weights(cfg, policy, model)  # the engine plays the weights SFT has trained so far
            new, m = collect_round(cfg, env_id, template, policy, round_index=k, games=s.dagger_games,
                                   beta=s.dagger_beta ** k, temperature=s.dagger_temperature, num_tasks=num_tasks,
                                   pool=pool)
            # the held-out games' states, reached by the model this time, are not trained on either
            m[f"demos/round{k}_heldout_turns_dropped"] = float(sum(d.game_id in held_ids for d in new))
            new = [d for d in new if d.game_id not in held_ids]
            write_jsonl(demos_dir / f"round_{k}.jsonl", new, append=False)
            metrics.update(m)
            train_demos += new
            with budget.running() as deadline:
                metrics.update(_prefixed(learner.fit(sft_sequences(train_demos, tokenizer, end_ids), deadline=deadline,
                                                     log=log_step), k))
            metrics.update(_prefixed(learner.heldout(held_seqs), k))
            tracker.log(learner.steps, metrics)
            _print_round(k, metrics)

        # 5. a checkpoint in the trainer's format: eval --checkpoint and train model.name=<run_dir> load it
        final = save_checkpoint(run_dir, model=model, tokenizer=tokenizer, optimizer=optimizer, step=learner.steps,
                                p=0.0, config_yaml=OmegaConf.to_yaml(OmegaConf.structured(cfg)),
                                extra={"kind": "sft", "demonstrations": len(train_demos)}, keep=1)
        log.info("SFT checkpoint: %s", final)
        metrics["sft/demonstrations"] = float(len(train_demos))
    finally:
        if policy is not None:
            policy.close()
        if pool is not None:
            pool.close()
        tracker.close()
    return metrics


class _TrainingBudget:
    """``sft.time_budget_s`` over all rounds' training: the clock runs only inside :meth:`running`
    (demonstration collection between rounds is not counted)."""

    def __init__(self, seconds: float | None):
        self.left = seconds

    def spent(self) -> bool:
        return self.left is not None and self.left <= 0

    @contextlib.contextmanager
    def running(self):
        start = time.monotonic()
        try:
            yield None if self.left is None else start + self.left
        finally:
            if self.left is not None:
                self.left -= time.monotonic() - start


def _prefixed(m: dict[str, float], k: int) -> dict[str, float]:
    """Round k's metrics under both their own names (the latest) and ``.../roundK`` ones."""
    out = dict(m)
    out.update({f"{key}_round{k}": v for key, v in m.items()})
    return out


def _print_round(k: int, m: dict[str, float]) -> None:
    print(f"[sft] round {k}: loss={m.get('sft/loss', float('nan')):.4f} heldout_loss={m.get('heldout/loss', float('nan')):.4f} "
          f"heldout_reply_prob={m.get('heldout/reply_prob', float('nan')):.3f} steps={m.get('sft/optimizer_steps', 0):.0f} "
          f"epochs={m.get('sft/epochs_done', 0):.2f} tokens/s={m.get('perf/sft_tokens_per_s', 0):.0f}", flush=True)


def main(argv: list[str] | None = None) -> None:
    """Hydra entry point, with the same config as ``agent_rl.train``."""
    from agent_rl.train import run_cli
    from trainers.demonstrations import DemonstrationFileError  # says what, why and how to fix itself

    run_cli(sft, "agent_rl.sft", argv, {ConfigError: "configuration error: ", DemonstrationFileError: ""})

if __name__ == "__main__":
    main()
