"""Generated ALFWorld games (envs/alfworld/generate.py, households.py): ALFWorld's own loader accepts them,
the real engine plays them and the planner expert wins them; generation is deterministic per seed."""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

import pytest

pytest.importorskip("textworld")
pytest.importorskip("alfworld")

from envs.alfworld import generate as gen  # noqa: E402
from envs.alfworld import households as hh  # noqa: E402
from envs.alfworld.data import TASK_TYPES  # noqa: E402
from envs.alfworld.text_version import detect_version, goal_sentence  # noqa: E402

pytestmark = pytest.mark.alfworld


def _alfworld_collect(data_root: Path, split: str = "train") -> list[str]:
    """The game files ALFWorld's AlfredTWEnv keeps from a data folder (its solvable/type/layout filters)."""
    from alfworld.agents.environment.alfred_tw_env import AlfredTWEnv

    config = {"env": {"goal_desc_human_anns_prob": 0, "task_types": [1, 2, 3, 4, 5, 6]},
              "dataset": {"data_path": str(data_root / "json_2.1.1" / split), "num_train_games": -1}}
    return sorted(AlfredTWEnv(config, train_eval="train").game_files)


def _play_like_alfredtwenv(path: str, max_steps: int = 40) -> tuple[bool, list[str], str]:
    """Load a game file with AlfredTWEnv's wrappers and the planner expert; follow the expert."""
    import textworld
    from alfworld.agents.environment.alfred_tw_env import (AlfredDemangler, AlfredExpert, AlfredExpertType,
                                                           AlfredInfos)

    infos = textworld.EnvInfos(won=True, admissible_commands=True, extras=["gamefile", "expert_plan"])
    env = textworld.start(path, request_infos=infos,
                          wrappers=[AlfredDemangler(), AlfredInfos, AlfredExpert(expert_type=AlfredExpertType.PLANNER)])
    try:
        state = env.reset()
        intro, taken = state.feedback, []
        while not state["won"] and len(taken) < max_steps and state["extra.expert_plan"]:
            command = state["extra.expert_plan"][0]
            assert command in state["admissible_commands"], (command, state["admissible_commands"])
            state, _, _ = env.step(command)
            taken.append(command)
        return bool(state["won"]), taken, intro
    finally:
        env.close()


def test_every_task_type_loads_in_alfworld_and_the_planner_expert_wins(tmp_path):
    summary = gen.generate_set(tmp_path, num_games=6, seed=11, difficulty="easy")
    assert summary["solvable_per_task_type"] == {t: 1 for t in gen.TASK_TYPES}
    files = _alfworld_collect(tmp_path)
    assert len(files) == 6  # ALFWorld's own filters keep every generated game
    seen = set()
    for path in files:
        traj = json.loads((Path(path).parent / "traj_data.json").read_text())
        won, taken, intro = _play_like_alfredtwenv(path)
        assert won, (path, taken)
        seen.add(traj["task_type"])
        # ALFWorld-style names and the release's 2.1.1 text.
        assert re.search(r"you see a [a-z]+ \d+, ", intro), intro
        assert f"Your task is to: {goal_sentence(json.loads(Path(path).read_text()))}" in intro
        if traj["task_type"] != "look_at_obj_in_light":
            assert taken[-1].startswith("put ") and " in/on " in taken[-1]
    assert seen == set(gen.TASK_TYPES)


def test_game_matches_the_release_format():
    game, traj = gen.generate_game(5, "pick_heat_then_place_in_recep", "medium", check=False)
    assert set(game) == {"pddl_domain", "grammar", "pddl_problem"}  # unchecked: no 'solvable' key
    assert detect_version(game) == "2.1.1"
    params = traj["pddl_params"]
    assert set(params) == {"mrecep_target", "object_sliced", "object_target", "parent_target", "toggle_target"}
    assert traj["task_type"] == "pick_heat_then_place_in_recep" and traj["task_id"].startswith("trial_G")
    sentence = goal_sentence(game)
    assert sentence[:-1] in gen.task_sentences(traj["task_type"], params) and sentence.endswith(".")
    assert all(a["task_desc"] for a in traj["turk_annotations"]["anns"])
    problem = game["pddl_problem"]
    assert problem.endswith(gen.goal_pddl(traj["task_type"], params))
    problem = problem[problem.index("(:init"):problem.index("(:goal")]  # the start state's facts
    assert f"(objectType ?o {params['object_target']}Type)" in game["pddl_problem"]
    # Receptacle contents stand where their receptacle is; every object has a type and a location.
    rec_loc = dict(re.findall(r"\(receptacleAtLocation (\S+) (\S+)\)", problem))
    obj_loc = dict(re.findall(r"\(objectAtLocation (\S+) (\S+)\)", problem))
    inside = re.findall(r"\(inReceptacle (\S+) (\S+)\)", problem)
    assert inside and all(obj_loc[o] == rec_loc[r] for o, r in inside)
    assert set(obj_loc) == set(re.findall(r"\(objectType (\S+) \w+Type\)", problem))
    assert re.search(r"\(heatable \S*" + params["object_target"], problem)
    assert re.search(r"\(receptacleType \S+ MicrowaveType\)", problem)
    # The goal is not met at the start: no target object begins in a goal receptacle.
    goal_recs = set(re.findall(rf"\(receptacleType (\S+) {params['parent_target']}Type\)", problem))
    assert not [o for o, r in inside if r in goal_recs and o.startswith(params["object_target"] + "_bar_")]
    assert gen.game_dir_name(traj) == (f"pick_heat_then_place_in_recep-{params['object_target']}-None-"
                                       f"{params['parent_target']}-{traj['scene']['scene_num']}")


def test_same_seed_same_bytes_and_cli(tmp_path, capsys):
    assert gen.main(["--games", "2", "--seed", "3", "--out", str(tmp_path / "a"), "--difficulty", "easy"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["num_games"] == 2 and sum(summary["solvable_per_task_type"].values()) == 2
    gen.generate_set(tmp_path / "b", num_games=2, seed=3, difficulty="easy")
    gen.generate_set(tmp_path / "c", num_games=2, seed=4, difficulty="easy")

    def files(root):
        base = root / "json_2.1.1" / "train"
        return {str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}

    a, b, c = files(tmp_path / "a"), files(tmp_path / "b"), files(tmp_path / "c")
    assert len(a) == 4 and a == b
    assert a.keys() != c.keys()
    # generate_game alone is deterministic too, seeded by int, str or Random.
    assert gen.generate_game(7, "look_at_obj_in_light", check=False) == \
        gen.generate_game(random.Random(7), "look_at_obj_in_light", check=False)


def test_ensure_generated_set_caches_and_redoes_unfinished_sets(tmp_path, monkeypatch):
    monkeypatch.setenv("AGENT_RL_CACHE", str(tmp_path / "cache"))
    root = gen.ensure_generated_set(num_games=1, seed=2, difficulty="easy")
    assert root == tmp_path / "cache" / "alfworld_generated" / "2-1-easy"
    game = next(root.glob("json_2.1.1/train/*/*/game.tw-pddl"))
    stamp = game.stat().st_mtime_ns
    assert gen.ensure_generated_set(num_games=1, seed=2, difficulty="easy") == root
    assert game.stat().st_mtime_ns == stamp  # reused, not regenerated
    # A killed run leaves no marker: the set is generated again (same bytes, it is the same seed).
    before = game.read_bytes()
    (root / gen.COMPLETE_MARKER.format(split="train")).unlink()
    (root / "json_2.1.1" / "train" / "half-written").mkdir()
    gen.ensure_generated_set(num_games=1, seed=2, difficulty="easy")
    assert not (root / "json_2.1.1" / "train" / "half-written").exists()
    assert next(root.glob("json_2.1.1/train/*/*/game.tw-pddl")).read_bytes() == before
    # An explicit root and another split live side by side; splits get different games.
    other = gen.ensure_generated_set(tmp_path / "mine", num_games=1, seed=2, split="valid_unseen", difficulty="easy")
    assert other == tmp_path / "mine"
    assert next(other.glob("json_2.1.1/valid_unseen/*/*/traj_data.json")).read_bytes() != \
        next(root.glob("json_2.1.1/train/*/*/traj_data.json")).read_bytes()


def test_difficulty_grows_the_household():
    def mean_size(difficulty):
        sizes = []
        for i in range(12):
            rng = random.Random(i)
            room, _, req = gen._task_params(rng, "pick_and_place_simple")
            house = hh.sample_household(rng, room, difficulty, req)
            sizes.append((len(house.receptacles), len(house.objects),
                          sum(r.openable for r in house.receptacles)))
        return [sum(s[k] for s in sizes) / len(sizes) for k in range(3)]

    easy, medium, hard = mean_size("easy"), mean_size("medium"), mean_size("hard")
    assert easy[0] < medium[0] < hard[0] and easy[1] < medium[1] <= hard[1] and easy[2] < medium[2] < hard[2]
    assert 12 <= medium[0] <= 30 and 25 <= medium[1] <= 65  # the release: 22 receptacles, 48 objects on average


def test_bad_arguments_are_explained(tmp_path):
    with pytest.raises(ValueError, match="unknown ALFWorld task type 'pick_three'"):
        gen.generate_game(0, "pick_three")
    with pytest.raises(ValueError, match="unknown ALFWorld household difficulty 'insane'"):
        gen.generate_game(0, "pick_and_place_simple", "insane")
    with pytest.raises(ValueError, match="num_games must be >= 1"):
        gen.generate_set(tmp_path, num_games=0)
    with pytest.raises(ValueError, match="plain folder name"):
        gen.generate_set(tmp_path, num_games=1, split="../x")
    with pytest.raises(ValueError, match="unknown ALFWorld text version"):
        gen.ensure_generated_set(tmp_path, num_games=1, text_version="3.0")


def test_the_planner_check_rejects_unsolvable_games(monkeypatch):
    game, traj = gen.generate_game(8, "pick_heat_then_place_in_recep", "easy", check=False)
    assert gen.planner_plan(game)  # solvable as drawn
    no_microwave = re.sub(r"\(receptacleType \S+ MicrowaveType\)", "", game["pddl_problem"])
    assert gen.planner_plan({**game, "pddl_problem": no_microwave}) is None  # nothing can heat it
    # generate_game draws again after a rejection, still as a function of the seed.
    calls = []

    def reject_first(candidate):
        calls.append(candidate)
        return None if len(calls) == 1 else ["go to microwave 1"]

    monkeypatch.setattr(gen, "planner_plan", reject_first)
    game2, traj2 = gen.generate_game(8, "pick_heat_then_place_in_recep", "easy")
    assert len(calls) == 2 and calls[0]["pddl_problem"] == game["pddl_problem"]
    assert game2["solvable"] is True and traj2["generator"]["rejected_draws"] == 1
    assert game2["pddl_problem"] != game["pddl_problem"]


def test_never_overwrites_games_it_did_not_write(tmp_path):
    foreign = tmp_path / "json_2.1.1" / "train" / "pick_and_place_simple-Mug-None-Desk-308" / "trial_T1"
    foreign.mkdir(parents=True)
    (foreign / "traj_data.json").write_text(json.dumps({"task_id": "trial_T1"}))
    with pytest.raises(gen.GenerationError, match="holds games this generator did not write"):
        gen.generate_set(tmp_path, num_games=1)
    assert (foreign / "traj_data.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("difficulty,num_games", [("medium", 30), ("hard", 12)])  # hard: ~40 s a game here
def test_generated_sets_all_won_by_the_planner_expert(tmp_path, difficulty, num_games):
    summary = gen.generate_set(tmp_path, num_games=num_games, seed=0, difficulty=difficulty)
    assert summary["solvable_per_task_type"] == {t: num_games // 6 for t in gen.TASK_TYPES}
    files = _alfworld_collect(tmp_path)
    assert len(files) == num_games
    results = [_play_like_alfredtwenv(path) for path in files]
    assert [won for won, _, _ in results] == [True] * num_games


@pytest.mark.slow
def test_212_generated_games_win(tmp_path):
    gen.generate_set(tmp_path, num_games=6, seed=1, difficulty="medium", text_version="2.1.2")
    for path in _alfworld_collect(tmp_path):
        won, taken, intro = _play_like_alfredtwenv(path)
        assert won and detect_version(json.loads(Path(path).read_text())) == "2.1.2"
        assert not any(" in/on " in c for c in taken)


def test_ensure_generated_set_of_some_task_types(tmp_path, monkeypatch):
    monkeypatch.setenv("AGENT_RL_CACHE", str(tmp_path / "cache"))
    types = ["look_at_obj_in_light", "pick_and_place_simple"]  # a list, as a config or JSON passes it
    root = gen.ensure_generated_set(num_games=3, seed=2, difficulty="easy", task_types=types)
    assert root.name == "2-3-easy-types-" + ".".join(str(TASK_TYPES.index(t)) for t in types)
    made = sorted(json.loads(p.read_text())["task_type"] for p in root.glob("json_2.1.1/train/*/*/traj_data.json"))
    assert made == sorted(["look_at_obj_in_light", "pick_and_place_simple", "look_at_obj_in_light"])
    with pytest.raises(ValueError, match="did you mean 'look_at_obj_in_light'"):
        gen.ensure_generated_set(num_games=1, task_types=["look_at_obj"])
    with pytest.raises(ValueError, match="distinct"):
        gen.ensure_generated_set(num_games=1, task_types=types + types[:1])
