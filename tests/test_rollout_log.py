"""run_dir/rollouts/step_NNNNNN.jsonl: each step's episodes with the advantage the update gave them."""

from __future__ import annotations

import json

import pytest

from agent_rl.train import compose_config
from agent_rl.types import Trajectory, TrajectoryBatch, Turn
from trainers.batch import row_advantages
from trainers.rollout_log import RolloutLog, rollout_records


def _traj(name: str, group: str, actions: list[str | None], reward: float, won: bool) -> Trajectory:
    turns = [Turn(observation=f"{name} sees {k}", prompt_ids=[1, 2, 3], response_ids=[4, 5], response_logprobs=[-0.1, -0.2],
                  response_text=f"<action>{a}</action>" if a else "no tag", action=a, action_valid=a is not None)
             for k, a in enumerate(actions)]
    return Trajectory(traj_id=name, group_id=group, task_id=f"task-{group}", turns=turns, reward=reward, won=won,
                      terminated=won, truncated=not won, info={"env_return": reward, "odd": {1, 2}})


def _batch() -> TrajectoryBatch:
    return TrajectoryBatch([_traj("a", "g0", ["go", "take"], 1.0, True), _traj("b", "g0", ["go", None, "look"], 0.0, False),
                            _traj("c", "g1", ["look"], 0.0, False), _traj("d", "g1", ["look"], 0.0, False)])


def test_trajectory_rows_put_each_episodes_advantage_on_its_record():
    batch = _batch()
    advantages = row_advantages(compose_config([]), batch)  # [4]
    records = rollout_records(batch, advantages, "trajectory")
    assert [r["traj_id"] for r in records] == ["a", "b", "c", "d"]
    assert [r["advantage"] for r in records] == pytest.approx(advantages.tolist())
    assert records[0]["advantage"] > 0 > records[1]["advantage"] and records[2]["advantage"] == records[3]["advantage"] == 0
    b = records[1]
    assert (b["won"], b["terminated"], b["truncated"], b["num_turns"], b["invalid_actions"]) == (False, False, True, 3, 1)
    assert [t["action"] for t in b["turns"]] == ["go", None, "look"] and b["turns"][1]["reply"] == "no tag"
    assert b["turns"][2]["observation"] == "b sees 2" and b["turns"][0]["reply_tokens"] == 2
    assert all("advantage" not in t for r in records for t in r["turns"])


def test_turn_rows_put_each_turns_advantage_on_its_turn():
    batch = _batch()
    cfg = compose_config(["algo=gigpo"])  # GiGPO: per-turn rows, step-level credit from repeated observations
    advantages = row_advantages(cfg, batch)  # [7]: 2 + 3 + 1 + 1 turns
    records = rollout_records(batch, advantages, "turn")
    assert [t["advantage"] for r in records for t in r["turns"]] == pytest.approx(advantages.tolist())
    assert all(r["advantage"] is None for r in records)
    with pytest.raises(ValueError, match="3 advantages for 7 loss rows"):
        rollout_records(batch, advantages[:3], "turn")


def test_a_step_file_is_written_whole_and_a_resume_drops_the_steps_past_its_start(tmp_path):
    batch = _batch()
    advantages = row_advantages(compose_config([]), batch)
    log = RolloutLog(tmp_path, enabled=True)
    for step in (1, 2, 3):
        log.write(step, batch, advantages, "trajectory")
    lines = [json.loads(x) for x in (tmp_path / "rollouts" / "step_000002.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and {x["step"] for x in lines} == {2}
    assert lines[0]["info"]["odd"] == "{1, 2}"  # a value JSON has no type for is written as text, not lost
    assert sorted(p.name for p in (tmp_path / "rollouts").iterdir()) == [f"step_00000{k}.jsonl" for k in (1, 2, 3)]
    (tmp_path / "rollouts" / "notes.txt").write_text("mine")
    RolloutLog(tmp_path, enabled=True, start_step=1)  # resumed from step 1's checkpoint
    assert sorted(p.name for p in (tmp_path / "rollouts").iterdir()) == ["notes.txt", "step_000001.jsonl"]
    RolloutLog(tmp_path, enabled=False).write(5, batch, advantages, "trajectory")
    assert not (tmp_path / "rollouts" / "step_000005.jsonl").exists()
