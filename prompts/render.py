"""Render what the model sees at each turn (rollout: env observation → prompt text → tokens).

A prompt template is a small family of text files under ``prompts/templates/``
(``string.Template`` syntax, ``${name}``):

* ``<name>_first.txt``: the first turn (no history yet);
* ``<name>.txt``: later turns in ``per_step`` mode: task, the last ``k`` (observation,
  action) pairs, the current observation (the paper's ALFWorld setup, k = 2);
* ``<name>_turn.txt``: the user message of later turns in ``conversation`` mode,
  where the history is the conversation itself.

Variables: ``task``, ``observation``, ``initial_observation``, ``step_count`` (steps taken), ``current_step``,
``history`` (rendered pairs), ``history_length``, ``admissible_actions`` (quoted,
comma-separated) and ``admissible_block`` (a line with them, or nothing). An env picks
its template with ``env.unwrapped.metadata["prompt_template"]`` (``alfworld``, ``math``;
absent → ``generic``); users add one with :func:`register_template`.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from agent_rl.registry import Registry
from prompts.parse import PARSERS, ParsedAction

TEMPLATE_DIR = Path(__file__).parent / "templates"
DEFAULT_TEMPLATE = "generic"


@dataclass
class PromptContext:
    """Everything a template may show at one turn. ``history`` holds every earlier
    (observation, action) pair of the episode; the template shows the last ``k``."""

    task: str
    observation: str
    history: list[tuple[str, str]] = field(default_factory=list)
    admissible_actions: Sequence[str] | None = None
    initial_observation: str = ""  # the episode's first observation (math: problem + answer format)

    @property
    def step_count(self) -> int:
        return len(self.history)


@dataclass
class PromptTemplate:
    """Texts for the first turn, later per-step turns and later conversation turns,
    plus the name of the :data:`~prompts.parse.PARSERS` entry that reads replies."""

    name: str
    first: str
    per_step: str
    turn: str
    parser: str = "tags"
    stop: list[str] | None = None  # stop strings that end a reply early (e.g. "</action>")
    # How a demonstrated action is written as a reply (``${action}``), for expert demonstrations
    # and SFT. None: the template asks for reasoning an expert does not have, so it has no honest
    # demonstration format (use an action-only template such as ``alfworld_act``).
    reply: str | None = None

    def __post_init__(self) -> None:
        for part in ("first", "per_step", "turn"):
            try:
                string.Template(getattr(self, part)).substitute({k: "" for k in _VARIABLES})
            except (KeyError, ValueError) as exc:
                raise ValueError(
                    f"prompt template {self.name!r} ({part}) uses an unknown or malformed variable: {exc}. "
                    f"Known variables: {', '.join('${' + v + '}' for v in _VARIABLES)}; write '$$' for a literal '$'"
                ) from None
        PARSERS.get(self.parser)  # fail at load time, not mid-rollout
        if self.reply is not None:
            probe = self.format_reply("go to shelf 1")
            if self.parse(probe).action != "go to shelf 1":
                raise ValueError(f"prompt template {self.name!r}: its reply format {self.reply!r} gives {probe!r}, "
                                 f"which its parser {self.parser!r} does not read back as the action")

    def render_first(self, ctx: PromptContext) -> str:
        return _substitute(self.first, _variables(ctx, []))

    def render_per_step(self, ctx: PromptContext, history_k: int) -> str:
        """The per-step prompt showing the last ``history_k`` pairs (first-turn text when none)."""
        if history_k < 0:
            raise ValueError(f"history_k must be >= 0, got {history_k}")
        shown = ctx.history[-history_k:] if history_k else []
        if not ctx.history:
            return self.render_first(ctx)
        return _substitute(self.per_step, _variables(ctx, shown))

    def render_turn(self, ctx: PromptContext) -> str:
        """The user message after the first turn in ``conversation`` mode."""
        return _substitute(self.turn, _variables(ctx, []))

    def parse(self, reply: str) -> ParsedAction:
        return PARSERS.get(self.parser)(reply)

    def format_reply(self, action: str) -> str:
        """The reply that states ``action`` in this template's format (what SFT teaches)."""
        if self.reply is None:
            raise ValueError(
                f"prompt template {self.name!r} has no demonstration reply format: its replies need reasoning "
                f"(e.g. <think>) that an expert's actions do not carry. Fix: use an action-only template "
                f"(rollout.template=alfworld_act) or give the template a reply format"
            )
        try:
            return string.Template(self.reply).substitute(action=action)
        except (KeyError, ValueError) as exc:
            raise ValueError(f"prompt template {self.name!r}: reply format {self.reply!r} must use only "
                             f"${{action}} ({exc})") from None


_VARIABLES = (
    "task",
    "observation",
    "initial_observation",
    "step_count",
    "current_step",
    "history",
    "history_length",
    "action_history",
    "admissible_actions",
    "admissible_block",
)


def _variables(ctx: PromptContext, shown: list[tuple[str, str]]) -> dict[str, Any]:
    first_shown = ctx.step_count - len(shown) + 1
    history = "\n".join(
        f"[Observation {first_shown + i}: '{_one_line(obs)}', Action {first_shown + i}: '{_one_line(act)}']"
        for i, (obs, act) in enumerate(shown)
    )
    actions = ", ".join(f"'{a}'" for a in ctx.admissible_actions or [])
    return {
        "task": ctx.task.strip(),
        "observation": ctx.observation.strip(),
        "initial_observation": (ctx.initial_observation or ctx.observation).strip(),
        "step_count": ctx.step_count,
        "current_step": ctx.step_count + 1,
        "history": history,
        "history_length": len(shown),
        # Every earlier action, however long ago (a searching agent must know where it has been;
        # observations stay limited to the last k, they are what costs tokens).
        "action_history": ", ".join(_one_line(act) for _obs, act in ctx.history) or "none",
        "admissible_actions": actions,
        "admissible_block": f"\nYour admissible actions are: [{actions}]." if ctx.admissible_actions else "",
    }


def _one_line(text: str) -> str:
    return " ".join(text.split())  # a history entry stays on one line


def _substitute(text: str, values: dict[str, Any]) -> str:
    # Values are inserted verbatim: a '$' or '{' in an observation is never re-interpreted.
    return string.Template(text).substitute(values)


TEMPLATES: Registry[PromptTemplate] = Registry("prompt template")


def register_template(template: PromptTemplate) -> PromptTemplate:
    TEMPLATES.register(template.name)(template)
    return template


def load_template_dir(name: str, directory: str | Path = TEMPLATE_DIR, **kwargs: Any) -> PromptTemplate:
    """Read ``<name>_first.txt``, ``<name>.txt`` and ``<name>_turn.txt`` from ``directory``."""
    directory = Path(directory)
    texts = {}
    for part, filename in (("first", f"{name}_first.txt"), ("per_step", f"{name}.txt"), ("turn", f"{name}_turn.txt")):
        path = directory / filename
        if not path.is_file():
            raise FileNotFoundError(
                f"prompt template {name!r} needs {path}; a template is three files: "
                f"{name}_first.txt, {name}.txt and {name}_turn.txt"
            )
        texts[part] = path.read_text(encoding="utf-8").removesuffix("\n")
    return PromptTemplate(name=name, **texts, **kwargs)


register_template(load_template_dir("alfworld", stop=["</action>"]))
# Action-only replies for small models and expert demonstrations (no invented reasoning); the
# constant instruction comes first, so every prompt of a run shares it as a cacheable prefix.
register_template(load_template_dir("alfworld_act", parser="action", stop=["</action>"],
                                    reply="<action>${action}</action>"))
register_template(load_template_dir("math", parser="whole"))
register_template(load_template_dir("generic", stop=["</action>"]))


def get_template(template: str | PromptTemplate | None) -> PromptTemplate:
    if isinstance(template, PromptTemplate):
        return template
    return TEMPLATES.get(template or DEFAULT_TEMPLATE)


def template_name_for_env(env: Any) -> str:
    """``env.unwrapped.metadata["prompt_template"]``, or ``generic`` when absent."""
    metadata = getattr(getattr(env, "unwrapped", env), "metadata", None) or {}
    return metadata.get("prompt_template") or DEFAULT_TEMPLATE


def chat_prompt_ids(tokenizer: Any, user_text: str, system: str | None = None) -> list[int]:
    """Token ids of one user message in the tokenizer's chat template, ready for generation."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user_text}]
    return messages_prompt_ids(tokenizer, messages)


def messages_prompt_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of chat ``messages`` (ending with the user's) ready for the assistant's reply: the
    one path by which the rollout and SFT tokenize prompts, so both see the same tokens."""
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        return list(ids)
    # Base models without a chat template get the bare text.
    return list(tokenizer("\n\n".join(m["content"] for m in messages), add_special_tokens=True)["input_ids"])


class ConversationTokens:
    """Token ids for a growing chat: the first user message, then for each later user
    message only the *new* tokens (the end of the previous assistant message plus the
    new user message and the assistant header), as ``conversation`` mode needs.

    The deltas come from rendering a reference chat twice and taking the suffix, so the
    sampled response tokens are kept exactly as generated (never re-tokenized).
    """

    _PROBE = "\x00agent-rl-probe\x00"

    def __init__(self, tokenizer: Any):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("conversation prompt mode needs a tokenizer with a chat template; use prompt_mode='per_step'")
        self.tokenizer = tokenizer
        eos = tokenizer.eos_token_id
        self.eos_token_ids = {eos} if eos is not None else set()

    def _text(self, messages: list[dict[str, str]], gen: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=gen, tokenize=False)

    def first(self, user_text: str) -> list[int]:
        return chat_prompt_ids(self.tokenizer, user_text)

    def next(self, user_text: str, response_ids: list[int]) -> list[int]:
        """New tokens after a response ``response_ids`` to append ``user_text``."""
        probe_user = {"role": "user", "content": "u"}
        probe_reply = {"role": "assistant", "content": self._PROBE}
        closed = self._text([probe_user, probe_reply], gen=False)
        full = self._text([probe_user, probe_reply, {"role": "user", "content": user_text}], gen=True)
        if not full.startswith(closed) or self._PROBE not in closed:
            raise ValueError(
                "this tokenizer's chat template re-renders earlier messages when a new one is added, so a "
                "conversation cannot grow by appending tokens; use prompt_mode='per_step'"
            )
        after_reply = closed[closed.index(self._PROBE) + len(self._PROBE) :]  # e.g. "<|im_end|>\n"
        if response_ids and response_ids[-1] in self.eos_token_ids:
            eos_text = self.tokenizer.decode([response_ids[-1]])
            after_reply = after_reply.removeprefix(eos_text)  # the model already closed its message
        delta = after_reply + full[len(closed) :]
        return list(self.tokenizer(delta, add_special_tokens=False)["input_ids"])
