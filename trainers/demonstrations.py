"""Expert demonstrations for the SFT warm start (env → rollout with an expert → demonstrations → JSONL → SFT).

    env with an expert (info["expert_action"])
      --RolloutEngine(expert=ExpertMix(beta))--> trajectories whose turns carry the label and prompt
      --demonstrations_from--> Demonstration per turn --write_jsonl--> demos/*.jsonl --read_jsonl--> SFT

A demonstration is one turn: the chat ``messages`` the model was shown (rendered by the rollout's
own template code, so SFT sees token for token what RL and eval show), the ``reply`` that states
the expert's action in the template's reply format, the game id and a stamp (where and how it was
made). DAgger (Ross et al., 2011) is the same call with ``beta < 1``: the current model plays its
share of the turns, and every state it reaches is labelled with the expert's action.

Users can bring their own JSONL (from a bigger model, from people): one JSON object per line with
``messages`` (a list of ``{"role", "content"}`` ending with a user message) and ``reply`` (text);
``game_id`` and ``stamp`` are optional there.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from agent_rl.types import Trajectory
from trainers.policies.base import Generation

_ROLES = ("system", "user", "assistant")


class DemonstrationFileError(ValueError):
    """A demonstration file that cannot be used: says which file and line, what, why and how to fix."""


@dataclass
class ExpertMix:
    """DAgger's mixture policy: each turn the expert plays with probability ``beta``, else the model.

    ``beta = 1``: pure expert demonstrations (the model is never asked); ``beta = 0``: the model
    plays every turn and the expert only labels the states it reaches."""

    beta: float
    seed: int = 0
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"ExpertMix.beta is a probability, got {self.beta!r}; use 1 (expert only) to 0 (model only)")
        self._rng = random.Random(self.seed)

    def takes_turn(self) -> bool:
        if self.beta >= 1.0:
            return True
        return self.beta > 0.0 and self._rng.random() < self.beta


@dataclass
class Demonstration:
    """One turn to imitate: ``messages`` (the prompt as chat messages) → ``reply``."""

    messages: list[dict[str, str]]
    reply: str
    game_id: str = ""
    stamp: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


def demonstrations_from(trajectories: Iterable[Trajectory], template: Any, stamp: dict[str, Any]) -> list[Demonstration]:
    """A Demonstration for every labelled turn (the expert had an action for the state it was in)."""
    out = []
    for traj in trajectories:
        game = str(traj.info.get("env_task_id", traj.task_id))
        for k, turn in enumerate(traj.turns):
            label = turn.info.get("expert_label")
            if not label:
                continue
            out.append(Demonstration(
                messages=[{"role": "user", "content": turn.info["prompt_text"]}],
                reply=template.format_reply(label),
                game_id=game,
                stamp={**stamp, "turn": k, "actor": turn.info.get("actor"), "task_type": traj.info.get("task_type"),
                       "episode_won": bool(traj.won)},
            ))
    return out


def write_jsonl(path: str | os.PathLike, demos: Sequence[Demonstration], *, append: bool = True) -> Path:
    """Write ``demos`` to ``path`` (one JSON object per line), flushed and synced. ``append``: after what is there
    (which stays; a kill leaves at most one torn last line, dropped on read with ``allow_torn_tail``); else the
    file becomes exactly ``demos``, atomically (a temporary file renamed over it), as SFT writes each round: a
    rerun into the run dir of a crashed attempt replaces that attempt's round instead of adding to it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    target = path if append else path.with_name(path.name + ".tmp")
    with open(target, "a" if append else "w", encoding="utf-8") as f:
        for d in demos:
            f.write(d.to_json() + "\n")
        f.flush()
        os.fsync(f.fileno())
    if not append:
        os.replace(target, path)
    return path


def read_jsonl(paths: Sequence[str | os.PathLike], *, allow_torn_tail: bool = False) -> list[Demonstration]:
    """Read and check every line of every file before anything is trained on.

    ``allow_torn_tail``: a last line without its newline that does not parse (a writer killed
    mid-line, as in our own demos/*.jsonl) is dropped instead of being an error."""
    demos: list[Demonstration] = []
    for path in paths:
        path = Path(path).expanduser()
        if not path.is_file():
            raise DemonstrationFileError(
                f"demonstration file {path}: does not exist{' (it is a folder)' if path.is_dir() else ''}. Fix: pass "
                f"JSONL files (one {{\"messages\": [...], \"reply\": \"...\"}} object per line), e.g. "
                f"<sft run>/demos/round_0.jsonl")
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8-sig")  # a byte-order mark (some Windows editors write one) is not content
        except UnicodeDecodeError as exc:
            raise DemonstrationFileError(f"demonstration file {path}: not UTF-8 text ({exc}). Fix: write JSONL as "
                                         f"UTF-8") from None
        lines = text.split("\n")
        torn = lines[-1] if lines and lines[-1] else None  # a last line without its newline
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as exc:
                if allow_torn_tail and torn is not None and number == len(lines):
                    break
                raise DemonstrationFileError(
                    f"{path}:{number}: not a JSON object ({exc}); got {line[:80]!r}. Why: each line must be one "
                    f"demonstration. Fix: one JSON object per line (JSONL), no pretty-printing") from None
            demos.append(_demonstration(obj, f"{path}:{number}"))
    if not demos:
        raise DemonstrationFileError(f"demonstration files {[str(p) for p in paths]} hold no demonstrations. Fix: pass "
                                     f"non-empty JSONL files, or leave sft.demos empty to collect expert demonstrations")
    return demos


def _demonstration(obj: Any, where: str) -> Demonstration:
    fix = 'Fix: write {"messages": [{"role": "user", "content": "..."}], "reply": "<action>...</action>"}'
    if not isinstance(obj, dict):
        raise DemonstrationFileError(f"{where}: a demonstration is a JSON object, got {type(obj).__name__}. {fix}")
    messages, reply = obj.get("messages"), obj.get("reply")
    if not isinstance(messages, list) or not messages:
        raise DemonstrationFileError(f"{where}: 'messages' must be a non-empty list of chat messages, got "
                                     f"{type(messages).__name__ if messages is not None else 'nothing'}. {fix}")
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in _ROLES or not isinstance(m.get("content"), str):
            raise DemonstrationFileError(f"{where}: messages[{k}] must be {{'role': one of {_ROLES}, 'content': "
                                         f"text}}, got {str(m)[:80]!r}. {fix}")
    if messages[-1]["role"] != "user":
        raise DemonstrationFileError(f"{where}: the last message must be the user's (the reply answers it), got "
                                     f"role {messages[-1]['role']!r}. {fix}")
    if not isinstance(reply, str) or not reply.strip():
        raise DemonstrationFileError(f"{where}: 'reply' must be non-empty text, got {reply!r}. {fix}")
    stamp = obj.get("stamp", {})
    if not isinstance(stamp, dict):
        raise DemonstrationFileError(f"{where}: 'stamp' must be a JSON object when present, got {type(stamp).__name__}")
    return Demonstration(messages=[{"role": m["role"], "content": m["content"]} for m in messages], reply=reply,
                         game_id=str(obj.get("game_id", "")), stamp=stamp)


class TokenizerOnlyPolicy:
    """The policy of pure expert demonstrations (``beta = 1``): the rollout needs a tokenizer to
    render prompts, never a model. Asked to generate, it says so instead of guessing."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    def generate(self, prompts: list[list[int]], params: Any) -> list[list[Generation]]:
        raise RuntimeError("TokenizerOnlyPolicy cannot generate: pure expert demonstrations (beta=1) never ask "
                           "the model; pass a model policy for DAgger rounds (beta < 1)")

    def close(self) -> None:
        pass


def stamp_for(*, source: str, round_index: int, beta: float, template: str, history_k: int, env_id: str,
              env_kwargs: dict[str, Any], model: str | None) -> dict[str, Any]:
    """Where a batch of demonstrations came from, written into each of them."""
    return {"source": source, "round": round_index, "beta": beta, "template": template, "history_k": history_k,
            "env_id": env_id, "split": env_kwargs.get("split"), "model": model,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
