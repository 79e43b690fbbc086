"""Bookkeeping of a rollout (env → rollout → trajectory batch): the counters one
:meth:`trainers.rollout.RolloutEngine.run` keeps while it plays, the ``rollout/*`` metrics it returns
with the trajectories, and its progress bar."""

from __future__ import annotations

import time
from dataclasses import dataclass

from agent_rl.types import Trajectory


@dataclass
class RolloutStats:
    """Counters of one RolloutEngine.run, and the ``rollout/*`` metrics made from them."""

    start: float
    gen_s: float = 0.0
    env_s: float = 0.0  # time the rollout waited on the env pool (resets and steps)
    env_busy_s: float = 0.0  # time the pool spent on resets and steps: env_s plus what overlap hid behind generation
    gen_tokens: int = 0
    prompt_tokens: int = 0
    turns: int = 0
    done: int = 0

    def tokens_per_s(self) -> float:
        return self.gen_tokens / self.gen_s if self.gen_s > 0 else 0.0

    def metrics(self, trajs: list[Trajectory]) -> dict[str, float]:
        n = max(1, len(trajs))
        turns = sum(t.num_turns for t in trajs)
        invalid = sum(t.num_invalid_actions for t in trajs)
        env_invalid = sum(not turn.info.get("action_valid", True) for t in trajs for turn in t.turns)
        return {
            "rollout/num_episodes": float(len(trajs)),
            "rollout/success_rate": sum(t.won for t in trajs) / n,
            "rollout/mean_return": sum(t.reward for t in trajs) / n,
            "rollout/mean_env_return": sum(t.info.get("env_return", 0.0) for t in trajs) / n,
            "rollout/mean_turns": turns / n,
            "rollout/invalid_action_rate": invalid / max(1, turns),
            "rollout/env_invalid_action_rate": env_invalid / max(1, turns),
            "rollout/terminated_rate": sum(t.terminated for t in trajs) / n,
            "rollout/truncated_rate": sum(t.truncated for t in trajs) / n,
            "rollout/context_full_rate": sum(t.info.get("truncated_reason") == "context_full" for t in trajs) / n,
            "rollout/error_rate": sum("error" in t.info for t in trajs) / n,
            "rollout/loop_rate": sum(t.looped for t in trajs) / n,
            "rollout/mean_response_tokens": self.gen_tokens / max(1, turns),
            "rollout/mean_prompt_tokens": self.prompt_tokens / max(1, turns),
            "rollout/tokens_per_s": self.tokens_per_s(),
            "rollout/gen_time_s": self.gen_s,
            "rollout/env_time_s": self.env_s,
            "rollout/env_busy_s": self.env_busy_s,
            "rollout/time_s": time.perf_counter() - self.start,
        }


def progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="rollout", unit="ep", leave=False, dynamic_ncols=True)
