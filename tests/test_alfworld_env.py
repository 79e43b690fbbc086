"""agent_rl/ALFWorld-v0 on the real engine and the real json_2.1.1 games (env end of the data flow).

Needs alfworld 0.4.2 + textworld 1.7.0 and a data root ($ALFWORLD_DATA, or ~/.cache/alfworld, holding
json_2.1.1/{train,valid_unseen} as unpacked from ../shared/alfworld/*.tar.xz); skips cleanly otherwise.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections import Counter
from pathlib import Path

import gymnasium as gym
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import envs  # noqa: F401  registers agent_rl/ALFWorld-v0
from envs.alfworld import data
from envs.alfworld.actions import CommandMatcher, normalize
from envs.alfworld.expert import expert_action, play_expert_episode

HAVE_ENGINE = importlib.util.find_spec("alfworld") is not None and importlib.util.find_spec("textworld") is not None
DATA_ROOT = data.default_data_root()
HAVE_DATA = DATA_ROOT is not None and (DATA_ROOT / "json_2.1.1" / "valid_unseen").is_dir()

needs_data = pytest.mark.skipif(not HAVE_DATA, reason="no ALFWorld data root: set ALFWORLD_DATA to an unpacked "
                                                      "json_2.1.1 release (../shared/alfworld/*.tar.xz)")
needs_engine = [
    pytest.mark.alfworld,
    pytest.mark.skipif(not HAVE_ENGINE, reason="alfworld/textworld not installed (pip install 'agent-rl[alfworld]')"),
    needs_data,
]

# README of ../shared: per-type counts of the 134 valid_unseen games AlfredTWEnv keeps.
VALID_UNSEEN_TYPES = {
    "pick_and_place_simple": 24, "look_at_obj_in_light": 18, "pick_clean_then_place_in_recep": 31,
    "pick_heat_then_place_in_recep": 23, "pick_cool_then_place_in_recep": 21, "pick_two_obj_and_place": 17,
}


@pytest.fixture(scope="module")
def env():
    if not (HAVE_ENGINE and HAVE_DATA):
        pytest.skip("needs the ALFWorld engine and data")
    e = gym.make("agent_rl/ALFWorld-v0", split="valid_unseen")
    yield e
    e.close()


def _first_game(task_type: str) -> int:
    games = data.collect_games(DATA_ROOT, "valid_unseen")
    return next(i for i, g in enumerate(games) if g.task_type == task_type)


# -- data: game set, order, filter, errors, stamp ---------------------------------------------------------


@needs_data
def test_valid_unseen_game_set_is_alfworlds():
    games = data.collect_games(DATA_ROOT, "valid_unseen")
    assert len(games) == 134
    assert [str(g.path) for g in games] == sorted(str(g.path) for g in games)  # the documented fixed order
    assert Counter(g.task_type for g in games) == VALID_UNSEEN_TYPES
    assert len({g.task_id for g in games}) == 134


@needs_data
def test_train_has_3553_games():
    assert len(data.collect_games(DATA_ROOT, "train")) == 3553


@pytest.mark.alfworld
@pytest.mark.skipif(not (HAVE_ENGINE and HAVE_DATA), reason="needs alfworld and the data")
def test_filter_equals_alfredtwenv_collect_game_files():
    from alfworld.agents.environment.alfred_tw_env import AlfredTWEnv

    split = DATA_ROOT / "json_2.1.1" / "valid_unseen"
    config = {"env": {"goal_desc_human_anns_prob": 0, "task_types": [1, 2, 3, 4, 5, 6]},
              "dataset": {"eval_ood_data_path": str(split), "num_eval_games": -1}}
    theirs = AlfredTWEnv(config, train_eval="eval_out_of_distribution").game_files
    ours = [str(g.path) for g in data.collect_games(DATA_ROOT, "valid_unseen")]
    assert sorted(theirs) == ours


def _copy_game(src_dir: Path, dst_dir: Path, *, edit_traj=None, edit_game=None) -> None:
    dst_dir.mkdir(parents=True)
    traj = json.loads((src_dir / "traj_data.json").read_text())
    game = json.loads((src_dir / "game.tw-pddl").read_text())
    (dst_dir / "traj_data.json").write_text(json.dumps(edit_traj(traj) if edit_traj else traj))
    (dst_dir / "game.tw-pddl").write_text(json.dumps(edit_game(game) if edit_game else game))


@pytest.fixture
def small_root(tmp_path):
    """A data root with real games and the cases AlfredTWEnv drops."""
    if not HAVE_DATA:
        pytest.skip("needs the ALFWorld data")
    games = data.collect_games(DATA_ROOT, "valid_unseen")
    src = [g.path.parent for g in games[:2]]
    split = tmp_path / "json_2.1.1" / "valid_unseen"
    _copy_game(src[0], split / "b-task" / "trial_1")
    _copy_game(src[1], split / "a-task" / "trial_2")
    _copy_game(src[0], split / "pick_and_place_with_movable_recep-X" / "trial_3")  # movable: dropped
    _copy_game(src[0], split / "c-task" / "trial_4", edit_game=lambda g: {**g, "solvable": False})
    _copy_game(src[0], split / "d-task" / "trial_5", edit_game=lambda g: {k: v for k, v in g.items() if k != "solvable"})
    _copy_game(src[0], split / "e-task" / "trial_6", edit_traj=lambda t: {**t, "task_type": "pick_two_obj_and_dance"})
    (split / "f-task" / "trial_7").mkdir(parents=True)  # traj_data.json without a game: dropped
    shutil.copy(src[0] / "traj_data.json", split / "f-task" / "trial_7")
    return tmp_path


def test_collect_games_keeps_what_alfredtwenv_keeps_in_sorted_order(small_root):
    games = data.collect_games(small_root, "valid_unseen", expect_release=False)
    assert [g.task_id for g in games] == ["a-task/trial_2", "b-task/trial_1"]


def test_missing_data_root_says_how_to_get_the_data(tmp_path):
    with pytest.raises(data.ALFWorldDataError, match="alfworld-download") as err:
        data.collect_games(tmp_path / "nowhere", "valid_unseen")
    assert "ALFWORLD_DATA" in str(err.value) and "nowhere" in str(err.value)


def test_partial_data_root_is_a_clear_error(tmp_path):
    (tmp_path / "json_2.1.1" / "train").mkdir(parents=True)
    with pytest.raises(data.ALFWorldDataError, match="partial") as err:
        data.collect_games(tmp_path, "valid_unseen")
    assert "'train'" in str(err.value)  # says what is there
    with pytest.raises(data.ALFWorldDataError, match="no json_2.1.1"):
        data.collect_games(tmp_path / "json_2.1.1", "valid_unseen")
    with pytest.raises(data.ALFWorldDataError, match="no playable ALFWorld game"):
        data.collect_games(tmp_path, "train")
    with pytest.raises(ValueError, match="split"):
        data.collect_games(tmp_path, "valid")


def test_broken_game_file_is_a_clear_error(small_root):
    victim = small_root / "json_2.1.1" / "valid_unseen" / "a-task" / "trial_2" / "game.tw-pddl"
    victim.write_text(victim.read_text()[:1000])
    with pytest.raises(data.ALFWorldDataError, match="cannot read ALFWorld file .*trial_2"):
        data.collect_games(small_root, "valid_unseen", expect_release=False)


def test_partial_unpack_warns_with_release_count(small_root, caplog):
    data.collect_games(small_root, "valid_unseen")
    assert "has 2 playable games; the json_2.1.1 release has 134" in caplog.text


def test_game_set_stamp_counts_and_checksums_game_files(small_root):
    stamp = data.game_set_stamp(small_root, "valid_unseen")
    assert stamp["num_games"] == 2 and stamp["split"] == "valid_unseen" and stamp["text_version"] == "2.1.1"
    assert stamp == data.game_set_stamp(small_root, "valid_unseen")
    assert data.game_set_stamp(small_root, "valid_unseen", "2.1.2")["text_version"] == "2.1.2"
    game = small_root / "json_2.1.1" / "valid_unseen" / "a-task" / "trial_2" / "game.tw-pddl"
    game.write_text(game.read_text().replace("alarmclock", "alarmklock"))
    changed = data.game_set_stamp(small_root, "valid_unseen")
    assert changed["num_games"] == 2 and changed["sha256"] != stamp["sha256"]


@needs_data
def test_release_stamp_is_stable():
    stamp = data.game_set_stamp(DATA_ROOT, "valid_unseen")
    assert stamp["num_games"] == 134 and len(stamp["sha256"]) == 64


# -- actions (no engine needed) -----------------------------------------------------------------------------

ADMISSIBLE_211 = ["go to desk 1", "put alarmclock 1 in/on desk 1", "put pen 2 into mug 1", "take pen 1 from desk 1",
                  "examine alarmclock 1", "inventory", "look"]
ADMISSIBLE_212 = ["go to desk 1", "help", "move alarmclock 1 to desk 1", "take pen 1 from desk 1", "look"]


@pytest.mark.parametrize("text,want", [
    ("  Go   TO desk 1.\n", "go to desk 1"),
    ('"take pen 1 from desk 1"', "take pen 1 from desk 1"),
    ("move alarmclock 1 to desk 1", "put alarmclock 1 in/on desk 1"),
    ("put alarmclock 1 in desk 1", "put alarmclock 1 in/on desk 1"),
    ("put alarmclock 1 on desk 1", "put alarmclock 1 in/on desk 1"),
    ("Put the AlarmClock 1 on the desk 1", "put alarmclock 1 in/on desk 1"),
    ("put pen 2 into mug 1", "put pen 2 into mug 1"),
    ("look\x00", "look"),
    ("look\u200b", "look"),
    ("move alarmclock 1 to desk 2", None),
    ("go to desk", None),
    ("", None),
    ("help", None),
])
def test_matcher_211(text, want):
    assert CommandMatcher(ADMISSIBLE_211).match(text) == want


@pytest.mark.parametrize("text,want", [
    ("put alarmclock 1 in/on desk 1", "move alarmclock 1 to desk 1"),
    ("put alarmclock 1 in desk 1", "move alarmclock 1 to desk 1"),
    ("MOVE alarmclock 1 to desk 1", "move alarmclock 1 to desk 1"),
    ("help", "help"),
    ("inventory", None),
])
def test_matcher_212(text, want):
    assert CommandMatcher(ADMISSIBLE_212).match(text) == want


@given(st.text())
def test_normalize_and_match_never_raise(text):
    assert isinstance(normalize(text), str)
    CommandMatcher(ADMISSIBLE_211).match(text)


# -- the env on the real engine -------------------------------------------------------------------------------


@pytest.mark.usefixtures("env")
class TestEnv:
    pytestmark = needs_engine

    def test_reset_observation_and_info(self, env):
        obs, info = env.reset(options={"game": 0})
        assert obs.startswith("You are in the middle of a room.") and "Welcome" not in obs
        assert "\n\nYour task is to: " in obs
        game = env.unwrapped.games[0]
        assert info["task_id"] == game.task_id == env.unwrapped.task_ids[0]
        assert info["task_type"] == game.task_type and info["game_index"] == 0
        assert obs.endswith(info["task"] + ".") and info["task"]
        assert info["won"] is False and info["success"] is False
        assert "look" in info["admissible_commands"] and info["admissible_commands"] == sorted(info["admissible_commands"])
        assert env.unwrapped.num_tasks == 134 and env.unwrapped.metadata["prompt_template"] == "alfworld"
        assert Counter(env.unwrapped.task_types) == VALID_UNSEEN_TYPES
        assert env.observation_space.contains(obs)

    def test_seeded_reset_is_deterministic(self, env):
        first = env.reset(seed=7)
        env.step("look")
        env.reset(seed=8)
        assert env.reset(seed=7) == first
        with gym.make("agent_rl/ALFWorld-v0", split="valid_unseen") as fresh:
            assert fresh.reset(seed=7) == first
        # Unseeded resets continue the seeded stream: the same sequence of games after the same seed.
        games = [env.reset(seed=11)[1]["task_id"], env.reset()[1]["task_id"]]
        assert [env.reset(seed=11)[1]["task_id"], env.reset()[1]["task_id"]] == games

    def test_task_and_game_options_choose_the_game(self, env):
        tid = env.unwrapped.task_ids[5]
        assert env.reset(options={"task": 5})[1]["task_id"] == tid
        assert env.reset(options={"game": 5})[1]["task_id"] == tid
        assert env.reset(options={"game": tid})[1]["game_index"] == 5
        path = str(env.unwrapped.games[5].path)
        assert env.reset(options={"game": path})[1]["game_index"] == 5
        with pytest.raises(ValueError, match="out of range.*134 games"):
            env.reset(options={"game": 134})
        with pytest.raises(ValueError, match="not understood"):
            env.reset(options={"gmae": 1})
        with pytest.raises(FileNotFoundError, match="neither a task id"):
            env.reset(options={"game": "no/such/game"})
        with pytest.raises(TypeError, match="int index or a game path"):
            env.reset(options={"game": True})
        with pytest.raises(ValueError, match="pass one of them"):
            env.reset(options={"game": 1, "task": 2})
        import numpy as np

        assert env.reset(options={"task": np.int64(5)})[1]["task_id"] == tid
        assert env.reset(options={"game": None, "task": 5})[1]["task_id"] == tid  # game=None: the task decides
        # a reset that fails leaves no episode to step, not the previous one
        with pytest.raises(ValueError, match="out of range"):
            env.reset(options={"task": 10**6})
        with pytest.raises(gym.error.ResetNeeded):
            env.step("look")

    def test_invalid_action_is_not_sent_and_the_episode_goes_on(self, env, monkeypatch):
        _obs, info = env.reset(options={"game": 0})
        sent = []
        engine = env.unwrapped._engine
        real_step = engine.step
        monkeypatch.setattr(engine, "step", lambda command: sent.append(command) or real_step(command))
        obs, reward, terminated, truncated, info2 = env.step("fly to the moon")
        assert (obs, reward, terminated, truncated) == ("Nothing happens.", 0.0, False, False)
        assert info2["action_valid"] is False and info2["command"] is None and info2["steps"] == 1
        assert info2["admissible_commands"] == info["admissible_commands"] and sent == []
        obs, _r, _te, _tr, info3 = env.step(" Go to  " + info["admissible_commands"][0][len("go to "):].upper())
        assert info3["action_valid"] is True and sent == [info["admissible_commands"][0]]
        assert obs.startswith("You arrive at")

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(action=st.one_of(
        st.text(),
        st.text(alphabet=st.characters(codec="utf-8"), max_size=300),
        st.sampled_from(["", " ", "x" * 10_000, "\x00\x1b[31m", "put", "move  to ", "put in/on", "go to",
                         "Положи яблоко", "把苹果放进冰箱", "🍎" * 50, "look", "inventory", "\ud800"]),
    ))
    def test_any_string_is_safe(self, env, action):
        if env.unwrapped._done or env.unwrapped._state is None:
            env.reset(options={"game": 0})
        obs, reward, terminated, truncated, info = env.step(action)
        assert isinstance(obs, str) and obs and reward in (0.0, 1.0)
        assert isinstance(info["action_valid"], bool) and not (terminated and truncated)

    def test_non_string_action_is_a_type_error(self, env):
        env.reset(options={"game": 0})
        with pytest.raises(TypeError, match="actions are text"):
            env.step(3)


@pytest.mark.alfworld
@pytest.mark.skipif(not (HAVE_ENGINE and HAVE_DATA), reason="needs alfworld and the data")
class TestEpisodes:
    def test_truncation_is_not_termination(self):
        from envs.alfworld.env import ALFWorldEnv

        with ALFWorldEnv(split="valid_unseen", max_episode_steps=3) as e:
            e.reset(options={"game": 1})
            flags = [e.step("look")[2:4] for _ in range(3)]
            assert flags == [(False, False), (False, False), (False, True)]
            with pytest.raises(gym.error.ResetNeeded):
                e.step("look")
            e.max_episode_steps = 60  # above the default 50; invalid actions keep the test fast
            e.reset(options={"game": 1})
            flags = [e.step("dance")[2:4] for _ in range(60)]
            assert flags == [(False, False)] * 59 + [(False, True)]
            with pytest.raises(ValueError, match="positive int"):
                e.max_episode_steps = 0
        # Through gymnasium.make the name is Gymnasium's TimeLimit: still truncation, never termination.
        with gym.make("agent_rl/ALFWorld-v0", split="valid_unseen", max_episode_steps=2) as e:
            e.reset(options={"game": 1})
            assert [e.step("look")[2:4] for _ in range(2)] == [(False, False), (False, True)]

    def test_expert_wins_with_scaled_reward(self):
        index = _first_game("pick_heat_then_place_in_recep")
        with gym.make("agent_rl/ALFWorld-v0", split="valid_unseen", expert=True, reward_scale=2.5) as e:
            _obs, info = e.reset(options={"game": index})
            assert info["expert_action"] == info["expert_plan"][0] == expert_action(e)
            # Leave the plan first: the expert must replan from where the agent went.
            detour = next(c for c in info["admissible_commands"]
                          if c.startswith("go to ") and c != info["expert_action"])
            _obs, _r, _te, _tr, info = e.step(detour)
            assert info["expert_action"] is not None and info["expert_action"] != detour
            rewards = []
            terminated = truncated = False
            while not (terminated or truncated):
                _obs, reward, terminated, truncated, info = e.step(info["expert_action"])
                rewards.append(reward)
            assert terminated and not truncated and info["won"] and info["success"]
            assert rewards[-1] == 2.5 and sum(rewards) == 2.5 and info["expert_action"] is None

    def test_expert_action_without_expert_flag_plans_on_demand(self):
        with gym.make("agent_rl/ALFWorld-v0", split="valid_unseen") as e:
            result = play_expert_episode(e, options={"game": _first_game("look_at_obj_in_light")})
            assert result["won"] and 1 <= result["steps"] <= 10 and result["return"] == 1.0

    def test_move_spelling_wins_a_2_1_1_game(self):
        index = _first_game("pick_and_place_simple")
        with gym.make("agent_rl/ALFWorld-v0", split="valid_unseen") as e:
            _obs, info = e.reset(options={"game": index})
            plan = e.unwrapped.expert_plan()
            assert any(" in/on " in a for a in plan)
            for action in plan:
                if action.startswith("put ") and " in/on " in action:
                    action = "move " + action[4:].replace(" in/on ", " to ")
                _obs, _r, terminated, _tr, info = e.step(action)
                assert info["action_valid"], action
            assert terminated and info["won"]

    @pytest.mark.skipif(importlib.util.find_spec("envs.alfworld.text_version") is None,
                        reason="envs.alfworld.text_version (the 2.1.2 converter) is not in this checkout")
    def test_text_version_2_1_2_plays_with_either_spelling(self):
        index = _first_game("pick_and_place_simple")
        with gym.make("agent_rl/ALFWorld-v0", split="valid_unseen", text_version="2.1.2") as e:
            _obs, info = e.reset(options={"game": index})
            assert "help" in info["admissible_commands"] and info["text_version"] == "2.1.2"
            plan = e.unwrapped.expert_plan()
            assert any(a.startswith("move ") for a in plan) and not any(" in/on " in a for a in plan)
            for action in plan:
                if action.startswith("move "):
                    action = "put " + action[5:].replace(" to ", " in/on ")
                obs, _r, terminated, _tr, info = e.step(action)
                assert info["action_valid"], action
                assert "loc " not in obs  # 2.1.2 says "You arrive at desk 1."
            assert terminated and info["won"]
            assert e.unwrapped.game_set_stamp["text_version"] == "2.1.2"

    def test_same_text_as_the_unmodified_engine(self):
        """Observations and admissible commands equal AlfredTWEnv's engine stack, step for step."""
        import random

        import textworld
        from alfworld.agents.environment.alfred_tw_env import AlfredDemangler
        from textworld.envs.pddl import PddlEnv

        rng = random.Random(0)
        with gym.make("agent_rl/ALFWorld-v0", split="valid_unseen") as e:
            for index in (0, 77):
                obs, info = e.reset(options={"game": index})
                raw = AlfredDemangler(PddlEnv(textworld.EnvInfos(won=True, admissible_commands=True)), shuffle=False)
                raw.load(str(e.unwrapped.games[index].path))
                state = raw.reset()
                assert state["feedback"].split("\n\n", 1)[1].strip() == obs
                for _ in range(6):
                    assert info["admissible_commands"] == state["admissible_commands"]
                    command = rng.choice(state["admissible_commands"])
                    state, _score, _done = raw.step(command)
                    obs, _r, _te, _tr, info = e.step(command)
                    assert obs == state["feedback"].strip() and info["won"] == state["won"]

    def test_env_stamp_matches_data_stamp(self):
        with gym.make("agent_rl/ALFWorld-v0", split="valid_unseen") as e:
            stamp = e.unwrapped.game_set_stamp
        assert stamp == dict(data.game_set_stamp(DATA_ROOT, "valid_unseen"), source="release")


def test_unconfigured_release_source_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path / "missing"))
    with pytest.raises(data.ALFWorldDataError, match="does not exist.*alfworld-download"):
        gym.make("agent_rl/ALFWorld-v0", split="valid_unseen", source="release")
    with pytest.raises(ValueError, match="split must be one of"):
        gym.make("agent_rl/ALFWorld-v0", split="test")
    with pytest.raises(ValueError, match="text_version must be one of"):
        gym.make("agent_rl/ALFWorld-v0", text_version="3.0")


@pytest.mark.skipif(importlib.util.find_spec("envs.alfworld.generate") is not None,
                    reason="the generator exists: source='generated' is tested by the slow test below")
def test_generated_source_without_generator_is_not_implemented(tmp_path):
    with pytest.raises(NotImplementedError, match="ensure_generated_set"):
        gym.make("agent_rl/ALFWorld-v0", source="generated", data_root=tmp_path)


@pytest.mark.slow
@pytest.mark.alfworld
@pytest.mark.skipif(not HAVE_ENGINE or importlib.util.find_spec("envs.alfworld.generate") is None,
                    reason="needs alfworld and envs.alfworld.generate")
def test_no_data_root_falls_back_to_generated_households(monkeypatch, tmp_path):
    monkeypatch.delenv("ALFWORLD_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.cache/alfworld
    monkeypatch.setenv("AGENT_RL_CACHE", str(tmp_path / "cache"))
    with gym.make("agent_rl/ALFWorld-v0", split="train", generate_kwargs={"num_games": 2}) as e:
        assert e.unwrapped.source == "generated" and e.unwrapped.num_tasks >= 1
        result = play_expert_episode(e, seed=0)
        assert result["won"]
        assert e.unwrapped.game_set_stamp["source"] == "generated"


@pytest.mark.slow
@pytest.mark.alfworld
@pytest.mark.skipif(not (HAVE_ENGINE and HAVE_DATA), reason="needs alfworld and the data")
def test_planner_expert_wins_every_valid_unseen_game():
    with gym.make("agent_rl/ALFWorld-v0", split="valid_unseen", expert=True) as e:
        results = [play_expert_episode(e, options={"game": i}) for i in range(e.unwrapped.num_tasks)]
    lost = [r["task_id"] for r in results if not r["won"]]
    assert lost == [] and len(results) == 134
