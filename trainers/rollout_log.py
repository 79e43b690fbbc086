"""The trajectories each training step learned from, as JSONL: ``run_dir/rollouts/step_NNNNNN.jsonl``.

Data flow: after advantages (the step's ``TrajectoryBatch`` and its advantage per loss row) and before the
learner; a sink beside ``metrics.jsonl``, read by people, never by the trainer. Metrics say *that* success moved;
these files say which behaviour the update pushed up or down (verl's ``trainer.rollout_data_dir`` serves the same
purpose). One line per episode: its task, reward, won/terminated/truncated, its advantage (``ratio_unit=trajectory``;
with ``turn`` rows every turn has its own), and per turn what the agent saw, replied and sent, with the env's info.
``traj_id`` and ``group_id`` tell a file's episodes and groups apart; they are numbered per process, so a resumed
run's ids differ from those of the attempt before.

``python -m trainers.rollout_log <run_dir>`` summarises a run's files: episodes, wins, episodes lost in a loop
(:func:`agent_rl.types.is_loop`), and the actions whose turns carried the largest summed advantage either way
(what the updates made likelier, or rarer).

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

from agent_rl.types import is_loop

_STEP_FILE = re.compile(r"^step_(\d+)\.jsonl(\.tmp)?$")


def rollout_records(batch, advantages, unit: str) -> list[dict[str, Any]]:
    """One JSON-ready record per trajectory of ``batch``; ``advantages`` ([R], one per loss row of ``unit``, as
    ``trainers.batch.row_advantages`` returns them) are put on the trajectory (``trajectory`` rows) or on each turn
    (``turn`` rows: one row per turn, trajectories in order, each turn in order). ``prompt_tokens`` of a turn: the
    tokens the model read before its reply (``conversation`` prompts: those added since the last reply)."""
    values = [float(a) for a in advantages]  # [R]
    trajs = batch.trajectories
    owners = batch.row_trajectories(unit)  # [R]: the trajectory of each loss row, as the learner orders them
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


def read_rollouts(run_dir: Path) -> list[dict[str, Any]]:
    """Every record of ``run_dir/rollouts``, in step order; a missing folder or a line that is not a JSON object
    is an error naming the file and line."""
    folder = Path(run_dir) / "rollouts"
    files = sorted((p for p in folder.glob("step_*.jsonl") if _STEP_FILE.match(p.name)), key=lambda p: p.name)
    if not files:
        raise FileNotFoundError(f"{folder} holds no step_N.jsonl: the run wrote no rollouts (logging.rollouts=false, "
                                f"or no step finished). Fix: point at a run dir of agent_rl.train that ran a step")
    records = []
    for path in files:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not JSON ({exc.msg}); the file was changed after the trainer wrote "
                                 f"it (it writes whole files). Fix: delete the file or the line") from None
            if not isinstance(record, dict) or "turns" not in record:
                raise ValueError(f"{path}:{n}: not a rollout record (RolloutLog writes JSON objects with 'turns'). "
                                 f"Fix: delete the line, or the file if something else wrote it")
            records.append(record)
    return records


def _turn_advantage(record: dict[str, Any], turn: dict[str, Any]) -> float:
    """The advantage a turn carried: its own under turn rows, else its episode's (None or absent: 0)."""
    return float(turn.get("advantage", record.get("advantage")) or 0.0)


def action_push(records: list[dict[str, Any]]) -> dict[str, tuple[float, int]]:
    """For each action the agent sent (``<no action>`` for an unparsed reply): the sum of the advantages its turns
    carried (the episode's, or the turn's own under turn rows) and how many turns sent it. A positive sum is an
    action the updates made likelier on the whole, a negative one an action they made rarer."""
    push: dict[str, tuple[float, int]] = {}
    for record in records:
        for turn in record["turns"]:
            key = turn["action"] if turn["action"] is not None else "<no action>"
            total, count = push.get(key, (0.0, 0))
            push[key] = (total + _turn_advantage(record, turn), count + 1)
    return push


def summary(run_dir: Path, top: int = 10) -> str:
    """What a run's updates learned from: episodes, wins, and the actions pushed up and down most."""
    records = read_rollouts(run_dir)
    steps = sorted({r["step"] for r in records})
    won = sum(bool(r["won"]) for r in records)
    signal = sum(any(_turn_advantage(r, t) != 0 for t in r["turns"]) for r in records)
    loops = sum(is_loop(r["won"], [t["action"] if t["action"] is not None else t["reply"] for t in r["turns"]])
                for r in records)
    push = sorted(action_push(records).items(), key=lambda kv: kv[1][0])
    lines = [f"{run_dir}: steps {steps[0]}-{steps[-1]} ({len(steps)} files), {len(records)} episodes, {won} won "
             f"({won / len(records):.1%}), {signal} with a non-zero advantage, {loops} lost in a loop"]
    up = [kv for kv in push[::-1] if kv[1][0] > 1e-9][:top]  # sums that cancel leave rounding, not a push
    down = [kv for kv in push if kv[1][0] < -1e-9][:top]
    for title, items in (("pushed up most", up), ("pushed down most", down)):
        lines.append(f"actions {title} (sum of advantages over the turns that sent them, turns):")
        lines += [f"  {total:+8.3f}  {count:5d}  {action}" for action, (total, count) in items]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m trainers.rollout_log", description=summary.__doc__)
    ap.add_argument("run_dir", type=Path, help="an agent_rl.train run dir (its rollouts/ folder is read)")
    ap.add_argument("--top", type=int, default=10, help="actions listed each way (default 10)")
    args = ap.parse_args(argv)
    try:
        print(summary(args.run_dir, args.top))
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(str(exc)) from None


if __name__ == "__main__":
    main()
