"""run_dir/rollouts/step_NNNNNN.jsonl: each step's episodes with the advantage the update gave them."""

from __future__ import annotations

import json

import pytest

from agent_rl.train import compose_config
from agent_rl.types import Trajectory, TrajectoryBatch, Turn
from trainers.batch import row_advantages
from trainers.rollout_log import RolloutLog, main, rollout_records


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


@pytest.mark.parametrize("overrides", [["algo=gigpo"], ["algo.ratio_unit=turn", "rollout.invalid_action_penalty=0.5"]])
def test_turn_rows_put_each_turns_advantage_on_its_turn(overrides):
    # GiGPO: step-level credit from repeated observations; grpo turn rows: the penalty on the invalid turn only
    batch = _batch()
    batch.trajectories.insert(2, _traj("empty", "g0", [], 0.0, False))  # an episode whose reset failed: no rows
    advantages = row_advantages(compose_config(overrides), batch)  # [7]: 2 + 3 + 0 + 1 + 1 turns
    assert len(set(advantages.tolist())) > 2  # the turns of one episode do not all share a value
    records = rollout_records(batch, advantages, "turn")
    assert [t["advantage"] for r in records for t in r["turns"]] == pytest.approx(advantages.tolist())
    assert all(r["advantage"] is None for r in records) and records[2]["turns"] == []
    with pytest.raises(ValueError, match="3 advantages for the 7 'turn' loss rows"):
        rollout_records(batch, advantages[:3], "turn")


def test_an_episode_without_turns_keeps_its_trajectory_row():
    batch = _batch()
    batch.trajectories.append(_traj("empty", "g1", [], 0.0, False))
    advantages = row_advantages(compose_config([]), batch)  # [5]
    assert [r["advantage"] for r in rollout_records(batch, advantages, "trajectory")] == pytest.approx(advantages.tolist())


def test_any_info_an_env_returns_is_written_as_strict_json(tmp_path):
    import numpy as np

    batch = _batch()
    batch.trajectories[0].info.update({("room", 1): "tuple key", np.int64(3): np.float32(0.5), "flag": np.bool_(True),
                                       "nan": float("nan"), "vec": np.arange(2), "when": object})
    batch.trajectories[1].turns[0].reward = float("inf")
    RolloutLog(tmp_path, enabled=True).write(1, batch, row_advantages(compose_config([]), batch), "trajectory")
    text = (tmp_path / "rollouts" / "step_000001.jsonl").read_text()
    first = json.loads(text.splitlines()[0], parse_constant=lambda c: pytest.fail(f"{c} is not strict JSON"))
    info = first["info"]
    assert info["('room', 1)"] == "tuple key" and info["3"] == 0.5 and info["flag"] is True and info["nan"] == "nan"
    assert info["vec"] == "[0 1]" and info["odd"] == [1, 2] and info["when"] == "<class 'object'>"
    assert json.loads(text.splitlines()[1])["turns"][0]["reward"] == "inf"


def test_a_step_file_is_written_whole_and_a_resume_drops_the_steps_past_its_start(tmp_path):
    batch = _batch()
    advantages = row_advantages(compose_config([]), batch)
    log = RolloutLog(tmp_path, enabled=True)
    for step in (1, 2, 3):
        log.write(step, batch, advantages, "trajectory")
    lines = [json.loads(x) for x in (tmp_path / "rollouts" / "step_000002.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and {x["step"] for x in lines} == {2}
    assert sorted(p.name for p in (tmp_path / "rollouts").iterdir()) == [f"step_00000{k}.jsonl" for k in (1, 2, 3)]
    (tmp_path / "rollouts" / "notes.txt").write_text("mine")
    (tmp_path / "rollouts" / "step_000001.jsonl.tmp").write_text('{"step": 1, "traj')  # killed mid-write
    RolloutLog(tmp_path, enabled=True, start_step=2)  # resumed from step 2's checkpoint
    assert sorted(p.name for p in (tmp_path / "rollouts").iterdir()) == ["notes.txt", "step_000001.jsonl",
                                                                        "step_000002.jsonl"]
    off = RolloutLog(tmp_path, enabled=False, start_step=1)  # resumed with logging.rollouts=false: still cut back
    assert sorted(p.name for p in (tmp_path / "rollouts").iterdir()) == ["notes.txt", "step_000001.jsonl"]
    off.write(5, batch, advantages, "trajectory")
    assert not (tmp_path / "rollouts" / "step_000005.jsonl").exists()


def test_the_summary_lists_the_actions_the_updates_pushed_up_and_down(tmp_path, capsys):
    """``python -m trainers.rollout_log <run_dir>`` (README): the won episode's ``take`` is pushed up, the lost
    one's unparsed reply and ``look`` down; ``go``, sent by both, nets out and is not listed."""
    batch = _batch()
    advantages = row_advantages(compose_config([]), batch)  # [4]: +a, -a, 0, 0
    log = RolloutLog(tmp_path, enabled=True)
    log.write(1, batch, advantages, "trajectory")
    log.write(2, batch, advantages, "trajectory")
    # step 3: a group lost in the same loop (4 turns of one action), no signal, so no push; and a lost episode of
    # 4 different unparsed replies: not a loop (an unparsed turn counts as its reply, as eval's records keep it)
    babble = _traj("g", "g2", [None] * 4, 0.0, False)
    for k, turn in enumerate(babble.turns):
        turn.response_text = f"reply {k}"
    stuck = TrajectoryBatch([_traj(x, "g2", ["go to desk 1"] * 4, 0.0, False) for x in ("e", "f")] + [babble])
    log.write(3, stuck, row_advantages(compose_config([]), stuck), "trajectory")
    main([str(tmp_path)])
    out = capsys.readouterr().out.splitlines()
    a = 2 * float(advantages[0])
    assert out[0] == (f"{tmp_path}: steps 1-3 (3 files), 11 episodes, 2 won (18.2%), 4 with a non-zero advantage, "
                      "2 lost in a loop")
    up, down = out.index(next(x for x in out if "pushed up" in x)), out.index(next(x for x in out if "pushed down" in x))
    assert out[up + 1:down] == [f"  {a:+8.3f}      2  take"]
    # <no action>: 2 turns of the lost episode b, 4 of the babbling one (advantage 0: counted, nothing added)
    assert sorted(out[down + 1:]) == sorted([f"  {-a:+8.3f}      6  <no action>", f"  {-a:+8.3f}      6  look"])
    (tmp_path / "rollouts" / "step_000002.jsonl").write_text('{"step": 2, "turns": []}\n{"step": 2, "tu\n')
    with pytest.raises(SystemExit, match="step_000002.jsonl:2: not JSON"):
        main([str(tmp_path)])
    with pytest.raises(SystemExit, match="holds no step_N.jsonl"):
        main([str(tmp_path / "elsewhere")])
