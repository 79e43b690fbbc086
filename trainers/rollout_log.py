"""The trajectories each training step learned from, as JSONL: ``run_dir/rollouts/step_NNNNNN.jsonl``.

Data flow: after advantages (the step's ``TrajectoryBatch`` and its advantage per loss row) and before the
learner; a sink beside ``metrics.jsonl``, read by people, never by the trainer. Metrics say *that* success moved;
these files say which behaviour the update pushed up or down (verl's ``trainer.rollout_data_dir`` serves the same
purpose). One line per episode: its task, reward, won/terminated/truncated, its advantage (``ratio_unit=trajectory``;
with ``turn`` rows every turn has its own), and per turn what the agent saw, replied and sent, with the env's info.
``traj_id`` and ``group_id`` tell a file's episodes and groups apart; they are numbered per process, so a resumed
run's ids differ from those of the attempt before.

Each file is written whole (a temporary file renamed over it), so a kill leaves earlier steps complete, and a
resume rewrites the steps it plays again and drops files past its start, as ``metrics.jsonl`` drops rows.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

_STEP_FILE = re.compile(r"^step_(\d+)\.jsonl(\.tmp)?$")


def rollout_records(batch, advantages, unit: str) -> list[dict[str, Any]]:
    """One JSON-ready record per trajectory of ``batch``; ``advantages`` ([R], one per loss row of ``unit``, as
    ``trainers.batch.row_advantages`` returns them) are put on the trajectory (``trajectory`` rows) or on each turn
    (``turn`` rows: one row per turn, trajectories in order, each turn in order). ``prompt_tokens`` of a turn: the
    tokens the model read before its reply (``conversation`` prompts: those added since the last reply)."""
    values = [float(a) for a in advantages]  # [R]
    trajs = batch.trajectories
    # the trajectory of each loss row [R], as TrajectoryBatch.rows orders them (without copying every token)
    owners = list(range(len(trajs))) if unit == "trajectory" else [k for k, t in enumerate(trajs) for _ in t.turns]
    if len(values) != len(owners):
        raise ValueError(f"rollout log: {len(values)} advantages for the {len(owners)} {unit!r} loss rows of "
                         f"{len(trajs)} trajectories; each row needs one, so these were computed for another batch or "
                         f"ratio unit. Fix: pass row_advantages(cfg, batch) of this batch with cfg.algo.ratio_unit")
    per_traj: list[list[float]] = [[] for _ in trajs]  # [B][rows of that trajectory]
    for owner, value in zip(owners, values):
        per_traj[owner].append(value)
    records = []
    for traj, adv in zip(trajs, per_traj):
        turns = [{"observation": t.observation, "reply": t.response_text, "action": t.action,
                  "action_valid": t.action_valid, "reward": t.reward, "prompt_tokens": len(t.prompt_ids),
                  "reply_tokens": len(t.response_ids), **({"advantage": adv[k]} if unit == "turn" else {}),
                  "info": t.info} for k, t in enumerate(traj.turns)]
        records.append({"traj_id": traj.traj_id, "group_id": traj.group_id, "task_id": traj.task_id,
                        "reward": traj.reward, "won": traj.won, "terminated": traj.terminated,
                        "truncated": traj.truncated, "num_turns": traj.num_turns,
                        "invalid_actions": traj.num_invalid_actions,
                        "advantage": adv[0] if unit == "trajectory" else None, "info": traj.info, "turns": turns})
    return records


def jsonable(value: Any) -> Any:
    """``value`` as strict JSON can hold it: keys as text, numpy scalars as numbers, NaN/inf as the strings
    ``metrics.jsonl`` uses, tuples and sets as lists, anything else as its ``str``: an env's info may hold any of
    these, and a log line must never stop a training run."""
    if isinstance(value, dict):
        return {k if isinstance(k, str) else str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in (sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value)]
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if hasattr(value, "item") and getattr(value, "shape", None) == ():  # a numpy or torch scalar
        return jsonable(value.item())
    return str(value)


class RolloutLog:
    """Writes each step's records under ``run_dir/rollouts``; ``enabled=False`` writes nothing. Either way, steps
    past ``start_step`` left by an earlier attempt (and torn ``.tmp`` files) are removed: they are not what this
    run trains on. Build it on the main rank only."""

    def __init__(self, run_dir: Path, *, enabled: bool, start_step: int = 0):
        self.dir = Path(run_dir) / "rollouts"
        self.enabled = enabled
        if self.dir.is_dir():
            for path in self.dir.iterdir():
                match = _STEP_FILE.match(path.name)
                if match and (match.group(2) or int(match.group(1)) > start_step):
                    path.unlink()

    def write(self, step: int, batch, advantages, unit: str) -> None:
        if not self.enabled:
            return
        records = rollout_records(batch, advantages, unit)
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"step_{step:06d}.jsonl"
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w") as f:
            for record in records:
                f.write(json.dumps(jsonable({"step": step, **record}), allow_nan=False) + "\n")
        os.replace(tmp, path)
