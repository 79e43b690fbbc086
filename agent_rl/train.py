"""``python -m agent_rl.train env=alfworld``: the main job of agent-rl, top-down.

Data flow of one step (read :func:`train` from top to bottom):

    env pool → rollout (B tasks × G episodes) → TrajectoryBatch → advantages per group (both kept in run_dir/rollouts)
    → learner (old logprobs recomputed, K Hölder-loss updates with the scheduled p)
    → weight sync to the rollout engine → periodic eval → checkpoint → metrics

The rollout side (env pool, generating policy, rollout engine, weight sync) is built by
:mod:`agent_rl.rollout_side`. Configuration is Hydra (see :mod:`agent_rl.config` for every field);
Hydra, Ray and vLLM are imported only inside the functions that need them.

Under ``torchrun --nproc_per_node=N -m agent_rl.train ...`` the learner is data-parallel
(:mod:`trainers.distributed`): rank 0 owns rollouts, eval, weight sync, checkpoints and logging
(``dp.from_main``/``dp.on_main`` below) and every rank updates on its shard of the batch.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import random
import sys
import time
from pathlib import Path

from agent_rl.config import Config, ConfigError
from agent_rl.rollout_side import (make_pool, make_rollout_engine, make_rollout_policy, make_rollout_stream,
                                   rollout_settings, rollout_stop, sync_weights)  # env → rollout, and weight sync
from agent_rl.validation import validate
from trainers.batch import env_num_tasks, row_advantages  # the step's batch

log = logging.getLogger("agent_rl")


# ---------------------------------------------------------------------------------------- building blocks
def make_run_dir(cfg: Config) -> Path:
    if cfg.train.run_dir:
        return Path(cfg.train.run_dir)
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except Exception:  # not under Hydra (called from Python)
        return Path("runs") / time.strftime("%Y-%m-%d_%H-%M-%S")


def resolve_env(cfg: Config) -> str:
    for module in cfg.env.import_modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(
                f"env.import_modules: cannot import {module!r} ({exc}); it should be the module whose import "
                f"calls gymnasium.register(...) for env.id={cfg.env.id!r}. Fix: make it importable (pip install -e, "
                f"PYTHONPATH) or correct the name"
            ) from exc
    import envs  # noqa: F401  (registers agent-rl's ids and entry-point plugins)
    from envs.registration import resolve_env_id

    try:
        return resolve_env_id(cfg.env.id)
    except Exception as exc:
        raise ConfigError(f"env.id: {exc}") from exc


def resolve_template(cfg: Config, env_id: str):
    """The prompt template: ``rollout.template``, else the env's own (``metadata["prompt_template"]``),
    read from the registered class so that a bad name fails before any model or env loads; with
    ``rollout.parser`` set, a copy that reads replies with that parser (checked against its reply format)."""
    import dataclasses

    import gymnasium

    from prompts.render import get_template

    name = cfg.rollout.template
    if name is None:
        entry = gymnasium.spec(env_id).entry_point
        env_cls = gymnasium.envs.registration.load_env_creator(entry) if isinstance(entry, str) else entry
        name = (getattr(env_cls, "metadata", None) or {}).get("prompt_template") or "generic"
    try:
        template = get_template(name)
    except Exception as exc:
        raise ConfigError(f"rollout.template: {exc}") from exc
    if cfg.rollout.parser is None or cfg.rollout.parser == template.parser:
        return template
    try:
        return dataclasses.replace(template, parser=cfg.rollout.parser)
    except Exception as exc:  # an unknown parser, or one that cannot read the template's reply format
        raise ConfigError(f"rollout.parser: {exc}. Fix: use null (the template's parser, {template.parser!r}) "
                          f"or another template") from exc


def load_model(cfg: Config, checkpoint: Path | None = None):
    """The trainable model: the configured one, or a checkpoint's weights when resuming
    (a LoRA run's checkpoint holds only the adapter, loaded on top of the base model)."""
    import torch

    from trainers.models import load_model_and_tokenizer

    lora = cfg.model.lora.enabled
    source = checkpoint if checkpoint is not None and not lora else cfg.model.name
    # Weights that train are float32 masters whatever model.dtype says: at lr 1e-6 most AdamW updates are below
    # half a bf16 ulp and would round away (measured: 2.4% of bf16 weights moved in one step). The compute runs in
    # model.dtype through autocast (learner_autocast); a LoRA run's frozen base stays in model.dtype (peft keeps
    # its adapter weights in float32).
    model, tokenizer = load_model_and_tokenizer(source, dtype=cfg.model.dtype if lora else "float32")
    if torch.cuda.is_available():
        model.to("cuda")
    if cfg.model.gradient_checkpointing:
        # Non-reentrant: with the bottom frozen (model.freeze_layers) the lowest trainable layer's input needs no
        # gradient, and the reentrant form would then drop that layer's weight gradients.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.model.freeze_layers:
        from trainers.models import freeze_bottom_layers

        try:
            frozen = freeze_bottom_layers(model, cfg.model.freeze_layers)
        except ValueError as exc:  # more layers than the model has: a config error, like lora.target_modules below
            raise ConfigError(str(exc)) from None
        log.info("model.freeze_layers=%d: %.1fM of %.1fM weights fixed", cfg.model.freeze_layers, frozen / 1e6,
                 sum(p.numel() for p in model.parameters()) / 1e6)
    if cfg.model.lora.enabled:
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError as exc:
            raise ConfigError("model.lora.enabled=true needs peft: pip install 'agent-rl[lora]'") from exc
        lc = cfg.model.lora
        if checkpoint is not None:
            from peft import PeftModel

            return PeftModel.from_pretrained(model, checkpoint, is_trainable=True), tokenizer
        names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
        unknown = [m for m in lc.target_modules if m not in names]
        if unknown:
            raise ConfigError(f"model.lora.target_modules: {unknown} are not linear layers of {cfg.model.name}; "
                              f"its linear layers are {sorted(names)}. Fix: pick from those")
        model = get_peft_model(model, LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout,
                                                 target_modules=list(lc.target_modules), task_type="CAUSAL_LM"))
    return model, tokenizer


def learner_autocast(cfg: Config, device_type: str = "cpu", cpu_native_bf16: bool | None = None) -> bool | None:
    """bf16 autocast for the learner on ``device_type``: on whenever the model's dtype is bfloat16 (its float32
    master weights then compute in bf16, see load_model), else ``train.bf16`` (null: on CUDA only). ``true`` on a
    CPU without native bf16 (no AVX512-BF16/AMX) gives float32 and a warning: autocast is emulated there, measured
    ~20x slower than float32 for the embedded model's forward and backward on an AVX2 EPYC, so nobody gains."""
    if cfg.model.dtype == "bfloat16":
        return True
    if cfg.train.bf16 and device_type == "cpu":
        if cpu_native_bf16 is None:
            import torch

            cpu_native_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        if not cpu_native_bf16:
            log.warning("train.bf16=true, but this CPU has no native bf16 (AVX512-BF16/AMX): bf16 autocast would be "
                        "emulated, ~20x slower than float32 here, so the learner runs in float32. For bf16 numerics "
                        "anyway use model.dtype=bfloat16")
            return False
    return cfg.train.bf16


def load_reference_model(cfg: Config, device):
    """The frozen reference policy of the KL term (``algo.kl_coef`` > 0), in ``model.dtype`` on ``device``; None
    without a KL term, and for LoRA, whose reference is the base model with the adapter switched off."""
    if cfg.algo.kl_coef <= 0 or cfg.model.lora.enabled:
        return None
    from trainers.models import load_model_and_tokenizer

    ref_model, _ = load_model_and_tokenizer(cfg.model.name, dtype=cfg.model.dtype)
    return ref_model.to(device).eval().requires_grad_(False)


def make_optimizer(cfg: Config, model):
    """AdamW over the trainable (float32 master) weights."""
    import torch

    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.train.lr,
                             weight_decay=cfg.train.weight_decay)


def learner_settings(cfg: Config, device_type: str):
    """The learner's settings from the config, for a model on ``device_type`` (bf16 autocast depends on it)."""
    from trainers.learner import LearnerSettings

    return LearnerSettings(
        loss=cfg.algo.loss, clip_low=cfg.algo.clip_low, clip_high=cfg.algo.clip_high,
        clip_ratio_c=cfg.algo.clip_ratio_c, kl_coef=cfg.algo.kl_coef,
        entropy_coef=cfg.algo.entropy_coef, micro_batch_tokens=cfg.train.micro_batch_tokens,
        num_minibatches=cfg.algo.num_minibatches, epochs=cfg.algo.epochs, max_grad_norm=cfg.train.max_grad_norm,
        bf16_autocast=learner_autocast(cfg, device_type), temperature=cfg.rollout.temperature,
        ratio_unit=cfg.algo.ratio_unit, frozen_layers=cfg.model.freeze_layers, freeze_cache=cfg.model.freeze_cache,
        freeze_cache_max_gb=cfg.model.freeze_cache_max_gb,
        # a row is one turn (ratio_unit=turn) or every turn of an episode: its agent-token budget
        norm_tokens=cfg.rollout.max_new_tokens * (1 if cfg.algo.ratio_unit == "turn" else cfg.rollout.max_turns))


# ---------------------------------------------------------------------------------------- the loop
def train(cfg: Config) -> dict[str, float]:
    """Run (or resume) training; returns the last step's metrics."""
    import numpy as np
    import torch
    from omegaconf import OmegaConf

    from agent_rl.types import TrajectoryBatch
    from trainers.checkpoint import (damaged_checkpoints, latest_checkpoint, load_trainer_state, restore_rng_state,
                                     save_checkpoint)
    from trainers.async_rollout import BehaviourWeights, RolloutStream
    from trainers.distributed import init_data_parallel
    from trainers.learner import Learner
    from trainers.memory import memory_metrics, release_free_memory
    from trainers.rollout_log import RolloutLog
    from trainers.schedules import PControl
    from trainers.tracking import NullTracker, Tracker

    validate(cfg)
    with contextlib.ExitStack() as cleanup:  # every part built below is closed however the run ends, setup included
        dp = init_data_parallel()  # one process, or this rank of torchrun's
        cleanup.callback(dp.close)
        run_dir = Path(dp.broadcast(str(make_run_dir(cfg))))  # rank 0's, should Hydra's clock differ between ranks
        ckpt = latest_checkpoint(run_dir)
        damaged = damaged_checkpoints(run_dir) if ckpt is None else None
        if damaged:  # checkpoints there, none intact: never start over on top of them
            raise ConfigError(
                f"{run_dir}/checkpoints holds {damaged}; starting over there would overwrite this run's metrics and "
                f"prune its checkpoints. Fix: move {run_dir}/checkpoints away (or delete it) to start the run again, "
                f"or use a new train.run_dir")
        resume = str(cfg.train.resume).lower()
        if resume == "true" and ckpt is None:
            raise ConfigError(f"train.resume=true but {run_dir}/checkpoints has no complete checkpoint. Fix: point "
                              f"train.run_dir at the run to continue, or use train.resume=auto")
        if resume == "false" and ckpt is not None:
            raise ConfigError(f"train.resume=false but {run_dir} already holds checkpoints; refusing to overwrite. "
                              f"Fix: choose a new train.run_dir, or resume with train.resume=auto")
        if resume == "false":
            ckpt = None
        if ckpt is not None:
            check_resume_config(cfg, ckpt)  # before anything heavy loads
        random.seed(cfg.train.seed)
        np.random.seed(cfg.train.seed)
        torch.manual_seed(cfg.train.seed)

        env_id = resolve_env(cfg)
        template = resolve_template(cfg, env_id)
        model, tokenizer = load_model(cfg, ckpt)
        dp.broadcast_parameters(model)  # identical replicas whatever each rank's initialisation (a LoRA adapter's)
        # train.fsdp2: shard the model over the ranks; `weights` is the full copy rank 0's rollout side reads (the model
        # itself when it is not sharded)
        weights = dp.shard_parameters(model, cfg.train.fsdp2)
        ref_model = load_reference_model(cfg, next(model.parameters()).device)
        optimizer = make_optimizer(cfg, model)
        start_step, wandb_id = 0, None
        p_control = PControl(cfg.algo, cfg.train.steps)  # p per step (a schedule, or adaptive: trainers.schedules)
        if ckpt is not None:
            state = load_trainer_state(ckpt, optimizer,
                                       load_optimizer=lambda sd: dp.load_optimizer_state(model, optimizer, sd))
            start_step, wandb_id = state.step, state.extra.get("wandb_id")
            p_control.restore(state.extra)
            log.info("resumed from %s at step %d (p=%.3f)", ckpt, state.step, state.p)
        config_yaml = OmegaConf.to_yaml(OmegaConf.structured(cfg))
        tracker = Tracker(run_dir, config=OmegaConf.to_container(OmegaConf.structured(cfg)),
                          use_wandb=cfg.logging.wandb, wandb_mode=cfg.logging.wandb_mode, project=cfg.logging.project,
                          run_name=cfg.logging.run_name, resume_id=wandb_id,
                          start_step=start_step) if dp.is_main else NullTracker()
        cleanup.callback(tracker.close)
        # each step's episodes and advantages, in run_dir/rollouts (None off rank 0)
        rollout_log = dp.on_main(RolloutLog, run_dir, enabled=cfg.logging.rollouts, start_step=start_step)
        learner = Learner(model, optimizer, learner_settings(cfg, next(model.parameters()).device.type),
                          ref_model=ref_model, seed=cfg.train.seed + start_step, dp=dp)
        if ckpt is not None:  # the minibatch shuffle continues where it stopped (older checkpoints: seeded by the step)
            learner.set_rng_state(state.extra.get("learner_rng"))
        # the rollout side lives on rank 0 only (None on the other ranks)
        policy = close_at_exit(cleanup, dp.on_main(make_rollout_policy, cfg, weights, tokenizer, start_step))
        if ckpt is not None:  # an in-process vLLM engine reseeds python, numpy and torch when it starts
            restore_rng_state(state.rng)
        # rollout.backend=auto was resolved on rank 0: every rank takes the same branches below
        cfg.rollout.backend = dp.broadcast(cfg.rollout.backend)
        if ckpt is not None and cfg.rollout.backend != "hf" and not cfg.ray.rollout_in_actor:
            dp.on_main(sync_weights, cfg, policy, weights)  # the engine started from model.name, not these weights
        pool = close_at_exit(cleanup, dp.on_main(make_pool, cfg, env_id, cfg.episodes_per_step, dict(cfg.env.kwargs)))
        engine = dp.on_main(make_rollout_engine, cfg, policy, pool, template)
        num_tasks = dp.from_main(env_num_tasks, pool)
        rollouts = close_at_exit(cleanup, dp.on_main(make_rollout_stream, cfg, engine, policy, weights, num_tasks,
                                                     start_step))  # None off rank 0
        behaviour = BehaviourWeights(learner, stale=cfg.train.async_rollouts and cfg.train.max_staleness > 0)

        metrics: dict[str, float] = {}
        nonfinite_steps = 0  # steps in a row whose every update was NaN/inf (and so skipped)
        cleanup.callback(torch.set_num_threads, torch.get_num_threads())
        if cfg.train.learner_threads is not None:  # the update's cores, off those a concurrent rollout uses
            torch.set_num_threads(cfg.train.learner_threads)
        if cfg.train.eval_at_start and start_step == 0:
            tracker.log(0, dp.from_main(RolloutStream.when_idle, rollouts, run_periodic_eval, cfg, env_id, policy, 0))
        for step in range(start_step, cfg.train.steps):
            t0 = time.perf_counter()
            p = p_control.p_for(step)
            # 1. rollouts: B tasks × G episodes, each group from one identical start state (played now, or
            #    during the last update with the weights before it: train.async_rollouts)
            model.eval()
            trajectories, metrics = dp.from_main(RolloutStream.next, rollouts, step)
            t_rollout = time.perf_counter() - t0
            # 2. advantages per group, one per loss row (trajectory, or turn)
            batch = TrajectoryBatch(trajectories)
            advantages = row_advantages(cfg, batch)
            dp.on_main(RolloutLog.write, rollout_log, step + 1, batch, advantages, cfg.algo.ratio_unit)
            # 3. learner: old logprobs recomputed, K updates with the scheduled p
            model.train()
            metrics.update(learner.update(batch, advantages, p, behaviour=behaviour.for_update()))
            release_free_memory()  # the update's freed heap stays resident otherwise, and grows (trainers.memory)
            metrics.setdefault("loss/p", p)  # the p the loss used (grpo, gspo, gmpo, dr_grpo fix their own)
            p_control.observe(metrics)
            # 4. weight sync to the rollout engine (deferred while an asynchronous rollout is in flight); with
            #    train.fsdp2 the shards are first gathered into rank 0's full copy
            dp.publish(model, weights)
            dp.on_main(RolloutStream.weights_changed, rollouts)
            # 5. periodic eval, with the same rollout engine code
            if cfg.train.eval_every and (step + 1) % cfg.train.eval_every == 0:
                metrics.update(dp.from_main(RolloutStream.when_idle, rollouts, run_periodic_eval, cfg, env_id, policy, step))
            metrics["perf/step_seconds"] = time.perf_counter() - t0
            metrics["perf/rollout_seconds"] = t_rollout  # async: the wait for a batch played during the last update
            metrics.update(memory_metrics(next(model.parameters()).device.type))
            metrics["train/step"] = step + 1
            # 6. metrics, then the checkpoint (atomic): a run stopped between the two resumes from the checkpoint
            #    before and logs this step again (rows past a resume's start are cut), never loses its row
            tracker.log(step + 1, metrics)
            if (step + 1) % cfg.train.save_every == 0 or step + 1 == cfg.train.steps:
                optimizer_state = dp.optimizer_state(model, optimizer)  # FSDP2: gathered onto rank 0 (collective)
                dp.on_main(save_checkpoint, run_dir, model=weights, tokenizer=tokenizer, optimizer_state=optimizer_state,
                           step=step + 1, p=p, config_yaml=config_yaml, keep=cfg.train.keep_checkpoints,
                           extra={"wandb_id": tracker.wandb_id, "learner_rng": learner.rng_state(),
                                  **p_control.state()})
            if cfg.train.progress and dp.is_main:
                print(Tracker.console_line(step + 1, cfg.train.steps, metrics), flush=True)
            nonfinite_steps = check_finite_updates(cfg, metrics, nonfinite_steps, step + 1)
    return metrics


def close_at_exit(cleanup: contextlib.ExitStack, part):
    """``part`` (a policy, env pool or rollout stream; None off rank 0), closed when ``cleanup`` exits."""
    if part is not None:
        cleanup.callback(part.close)
    return part


def check_resume_config(cfg: Config, ckpt) -> None:
    """Refuse to resume a checkpoint whose run was configured differently (another env, model, loss,
    schedule...): that would continue someone else's run under this name (agent_rl.config.RESUME_SAFE)."""
    import yaml
    from omegaconf import OmegaConf

    from agent_rl.config import flatten, resume_changes

    meta = json.loads((ckpt / "trainer_state.json").read_text())  # readable: latest_checkpoint checked it
    if (meta.get("extra") or {}).get("kind") == "sft":
        raise ConfigError(f"train.run_dir={cfg.train.run_dir} is an SFT run (python -m agent_rl.sft), not an RL run "
                          f"to resume. Fix: start RL from it with model.name={cfg.train.run_dir} and a new "
                          f"train.run_dir")
    path = ckpt / "config.yaml"
    try:
        saved = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read {path} to check that this run continues it ({exc}). Fix: use a new "
                          f"train.run_dir, or train.resume=false with a fresh one") from None
    current = OmegaConf.to_container(OmegaConf.structured(cfg))
    changed = resume_changes(saved, current)
    if changed:
        was, now = flatten(saved), flatten(current)
        details = "; ".join(f"{k}: {was[k]!r} there, {now[k]!r} now" for k in changed[:8])
        raise ConfigError(
            f"train.run_dir={cfg.train.run_dir} holds a run with another configuration ({details}); resuming "
            f"would continue that run as if it were this one. Fix: use a new train.run_dir, or rerun with the "
            f"saved settings (they are in {path})"
        )


def check_finite_updates(cfg: Config, metrics: dict[str, float], in_a_row: int, step: int) -> int:
    """Count steps whose every update was skipped as NaN/inf (the weights did not move); stop the run
    after ``train.max_nonfinite_steps`` of them in a row. Returns the new count."""
    skipped = metrics.get("train/nonfinite_updates", 0.0)
    in_a_row = in_a_row + 1 if skipped and not metrics.get("perf/optimizer_steps") else 0
    if skipped:
        log.warning("step %d: %d update(s) had a NaN/inf loss or gradient and were skipped (loss/policy=%s, "
                    "loss/grad_norm=%s)", step, int(skipped), metrics.get("loss/policy"), metrics.get("loss/grad_norm"))
    if in_a_row >= cfg.train.max_nonfinite_steps:
        raise RuntimeError(
            f"training stopped at step {step}: every update of the last {in_a_row} steps had a NaN/inf loss or "
            f"gradient, so none was applied (the checkpoints hold the last finite weights). Likely causes: a "
            f"diverged or broken model (NaN logits), a learning rate too high, NaN rewards. Fix: lower train.lr, "
            f"check the model's logits, or resume from an earlier checkpoint"
        )
    return in_a_row


def run_periodic_eval(cfg: Config, env_id: str, policy, step: int) -> dict[str, float]:
    from eval.runner import evaluate
    from eval.tasks import PROTOCOLS

    protocol = PROTOCOLS[cfg.train.eval_protocol]
    kwargs = dict(cfg.env.eval_kwargs) or dict(cfg.env.kwargs)
    if "split" in protocol:
        kwargs["split"] = protocol["split"]
    result = evaluate(policy, env_id=env_id, env_kwargs=kwargs, episodes=protocol.get("episodes", cfg.train.eval_episodes),
                      max_steps=cfg.rollout.max_turns, temperature=protocol["temperature"], workers=cfg.env.num_workers,
                      seed=cfg.train.seed, import_modules=list(cfg.env.import_modules),
                      max_new_tokens=cfg.rollout.max_new_tokens, progress=False,
                      rollout_kwargs={**rollout_settings(cfg), "stop": rollout_stop(cfg)})
    return {k: v for k, v in result.metrics.items() if k.startswith("eval/")}


# ---------------------------------------------------------------------------------------- CLI
PRIMARY_DEFAULTS = ["agent_rl_schema", {"env": "alfworld"}, {"model": "embedded"}, {"algo": "holder"},
                    {"rollout": "auto"}, {"preset": None}, "_self_"]


def _register_primary() -> None:
    from hydra.core.config_store import ConfigStore

    from agent_rl.config import register_configs

    register_configs()
    ConfigStore.instance().store(name="train", node={"defaults": PRIMARY_DEFAULTS})


def compose_config(overrides: list[str] | None = None) -> Config:
    """The Config that ``python -m agent_rl.train <overrides>`` would run (for tests, notebooks, benches)."""
    from hydra import compose, initialize
    from omegaconf import OmegaConf

    _register_primary()
    with initialize(version_base="1.3", config_path=None):
        return OmegaConf.to_object(compose(config_name="train", overrides=list(overrides or [])))


def run_cli(job, prog: str, argv: list[str] | None, errors: dict[type, str]) -> None:
    """The Hydra entry point of ``train`` and ``sft``: compose the config, run ``job(cfg)``, and turn
    the user errors in ``errors`` (exception type → message prefix) into that message and exit 2."""
    import hydra
    from omegaconf import OmegaConf

    _register_primary()

    @hydra.main(version_base="1.3", config_path=None, config_name="train")
    def _run(dcfg) -> None:
        from agent_rl.signals import exit_on_sigterm

        exit_on_sigterm()
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        cfg: Config = OmegaConf.to_object(dcfg)
        try:
            job(cfg)
        except tuple(errors) as exc:
            prefix = next(p for t, p in errors.items() if isinstance(exc, t))
            print(f"{prog}: {prefix}{exc}", file=sys.stderr)
            sys.exit(2)

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    sys.argv[1:] = hydra_dir_in_run_dir(sys.argv[1:])
    _run()


def hydra_dir_in_run_dir(args: list[str]) -> list[str]:
    """With ``train.run_dir`` set, Hydra's own files (.hydra/config.yaml, the job log) go into it too,
    instead of a new ``./outputs/<date>/<time>/`` in whatever directory the command ran from."""
    run_dir = next((a.split("=", 1)[1] for a in args if a.split("=", 1)[0].lstrip("+~") == "train.run_dir"), None)
    if run_dir in (None, "", "null") or any(a.startswith(("hydra.run.dir=", "hydra/")) for a in args):
        return args
    return [*args, f"hydra.run.dir={run_dir}"]


def main(argv: list[str] | None = None) -> None:
    """Hydra entry point: ``python -m agent_rl.train env=alfworld preset=cpu_quick train.steps=10``."""
    run_cli(train, "agent_rl.train", argv, {ConfigError: "configuration error: "})

if __name__ == "__main__":
    main()
