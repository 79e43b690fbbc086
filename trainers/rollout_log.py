"""The trajectories each training step learned from, as JSONL: ``run_dir/rollouts/step_NNNNNN.jsonl``.

Data flow: after advantages (the step's ``TrajectoryBatch`` and its advantage per loss row) and before the
learner; a sink beside ``metrics.jsonl``, read by people, never by the trainer. Metrics say *that* success moved;
these files say which behaviour the update pushed up or down (verl's ``trainer.rollout_data_dir`` serves the same
purpose). One line per episode: its task, reward, won/terminated/truncated, its advantage (``ratio_unit=trajectory``;
with ``turn`` rows every turn has its own), and per turn what the agent saw, replied and sent. ``traj_id`` and
``group_id`` tell a file's episodes and groups apart; they are numbered per process, so a resumed run's ids differ
from those of the attempt before.

Each file is written whole (a temporary file renamed over it), so a kill leaves earlier steps complete, and a
resume rewrites the steps it plays again and drops files past its start, as ``metrics.jsonl`` drops rows.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

_STEP_FILE = re.compile(r"^step_(\d+)\.jsonl$")


def rollout_records(batch, advantages, unit: str) -> list[dict[str, Any]]:
    """One JSON-ready record per trajectory of ``batch``; ``advantages`` ([R], one per loss row of ``unit``, as
    ``trainers.batch.row_advantages`` returns them) are put on the trajectory (``trajectory`` rows) or on each turn
    (``turn`` rows: one row per turn, in order)."""
    values = [float(a) for a in advantages]  # [R]
    owners = batch.row_trajectories(unit)  # [R]
    if len(values) != len(owners):
        raise ValueError(f"{len(values)} advantages for {len(owners)} loss rows ({unit!r} rows of {len(batch)} "
                         f"trajectories); pass the advantages computed for this batch and ratio unit")
    per_traj: list[list[float]] = [[] for _ in batch.trajectories]
    for owner, value in zip(owners, values):
        per_traj[owner].append(value)
    records = []
    for traj, adv in zip(batch.trajectories, per_traj):
        if unit == "turn" and len(adv) != len(traj.turns):
            raise ValueError(f"trajectory {traj.traj_id}: {len(adv)} turn rows for {len(traj.turns)} turns")
        turns = [{"observation": t.observation, "reply": t.response_text, "action": t.action,
                  "action_valid": t.action_valid, "reward": t.reward, "prompt_tokens": len(t.prompt_ids),
                  "reply_tokens": len(t.response_ids), **({"advantage": adv[k]} if unit == "turn" else {}),
                  "info": t.info} for k, t in enumerate(traj.turns)]
        records.append({"traj_id": traj.traj_id, "group_id": traj.group_id, "task_id": traj.task_id,
                        "reward": traj.reward, "won": traj.won, "terminated": traj.terminated,
                        "truncated": traj.truncated, "num_turns": traj.num_turns,
                        "invalid_actions": traj.num_invalid_actions,
                        "advantage": (adv[0] if adv else None) if unit == "trajectory" else None,
                        "info": traj.info, "turns": turns})
    return records


class RolloutLog:
    """Writes each step's records under ``run_dir/rollouts`` (``enabled=False``: writes nothing)."""

    def __init__(self, run_dir: Path, *, enabled: bool, start_step: int = 0):
        self.dir = Path(run_dir) / "rollouts"
        self.enabled = enabled
        if enabled and self.dir.is_dir():  # a resume: steps past its start are played (and written) again or never
            for path in self.dir.iterdir():
                match = _STEP_FILE.match(path.name)
                if match and int(match.group(1)) > start_step:
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
                # default=str: an env's info may hold values JSON has no type for (numpy scalars, sets)
                f.write(json.dumps({"step": step, **record}, default=str) + "\n")
        os.replace(tmp, path)
