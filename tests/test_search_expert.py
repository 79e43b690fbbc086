"""The searching ALFWorld expert (envs.alfworld.search_expert): acts only on what the agent has seen."""

from __future__ import annotations

import importlib.util

import gymnasium as gym
import pytest

import envs  # noqa: F401  registers agent_rl/ALFWorld-v0
from envs.alfworld import data
from envs.alfworld.search_expert import SearchExpert, listed_receptacles, needed_object, search_order

FIRST = ("You are in the middle of a room. Looking quickly around you, you see a cabinet 2, a cabinet 1, a countertop 1, "
         "a drawer 1, a fridge 1, and a shelf 1.\n\nYour task is to: put a clean apple in shelf.")


def test_listing_and_order():
    assert listed_receptacles(FIRST) == ["cabinet 2", "cabinet 1", "countertop 1", "drawer 1", "fridge 1", "shelf 1"]
    # surfaces first (one step each), then what opens; listing order within each group
    assert search_order(listed_receptacles(FIRST)) == ["countertop 1", "shelf 1", "cabinet 2", "cabinet 1",
                                                       "drawer 1", "fridge 1"]
    assert listed_receptacles("Nothing happens.") == []


def test_needed_object_is_the_first_take_or_use():
    assert needed_object(["go to desk 2", "take alarmclock 1 from desk 2", "go to desk 1", "use desklamp 1"]) \
        == "alarmclock 1"
    assert needed_object(["go to desk 1", "use desklamp 1"]) == "desklamp 1"
    assert needed_object(["go to shelf 1", "put apple 1 in/on shelf 1"]) is None


def _admissible(expert: SearchExpert) -> list[str]:
    out = [f"go to {r}" for r in expert.order]
    if expert.location in ("cabinet 1", "cabinet 2", "drawer 1", "fridge 1"):
        out.append(f"open {expert.location}")
    return out


def test_explores_until_the_object_is_seen_then_follows_the_plan():
    plans = []

    def plan():  # the planner knows the apple is in the fridge
        plans.append(1)
        if x.location == "fridge 1" and "fridge 1" in x.opened:
            return ["take apple 1 from fridge 1", "go to sinkbasin 1"]
        return ["go to fridge 1", "open fridge 1", "take apple 1 from fridge 1", "go to sinkbasin 1"]

    x = SearchExpert()
    x.reset(FIRST)
    taken = []
    for _ in range(20):
        action = x.act(plan, _admissible(x))
        taken.append(action)
        if action.startswith("take"):
            break
        if action == "go to countertop 1":
            feedback = "You arrive at loc 3. On the countertop 1, you see a bread 1, and a pear 10."  # no apple
        elif action.startswith("go to"):
            feedback = f"You arrive at loc 5. The {action[6:]} is closed."
        elif action == "open fridge 1":
            feedback = "You open the fridge 1. The fridge 1 is open. In it, you see a apple 1."
        else:
            feedback = f"You {action.split()[0]} the {action.split(' ', 1)[1]}. It is empty."
        x.observe(action, feedback)
    assert taken == ["go to countertop 1", "go to shelf 1", "go to cabinet 2", "open cabinet 2", "go to cabinet 1",
                     "open cabinet 1", "go to drawer 1", "open drawer 1", "go to fridge 1", "open fridge 1",
                     "take apple 1 from fridge 1"]  # seen now: the planner takes over
    assert len(plans) == 2  # once at the start, once when the apple showed up: no planner call while exploring


def test_takes_another_seen_instance_of_the_needed_kind_and_replans():
    # the planner's plan names apple 1 (in the fridge); apple 10 was shown on the countertop: any apple will do
    plans = []

    def plan():
        plans.append(x.holding)
        if x.holding == "apple 10":
            return ["go to sinkbasin 1", "clean apple 10 with sinkbasin 1", "go to shelf 1", "put apple 10 in/on shelf 1"]
        return ["go to fridge 1", "open fridge 1", "take apple 1 from fridge 1", "go to sinkbasin 1"]

    x = SearchExpert()
    x.reset(FIRST)
    assert x.act(plan, _admissible(x)) == "go to countertop 1"
    x.observe("go to countertop 1", "You arrive at countertop 1. On the countertop 1, you see a apple 10, and a bread 1.")
    assert x.act(plan, _admissible(x)) == "go to shelf 1"  # the take is not admissible here: not fetched
    x.observe("go to shelf 1", "You arrive at shelf 1. On the shelf 1, you see nothing.")
    x.unreachable.clear()
    assert x.act(plan, _admissible(x)) == "go to countertop 1"  # back to the apple it saw
    x.observe("go to countertop 1", "You arrive at countertop 1. On the countertop 1, you see a apple 10, and a bread 1.")
    take = "take apple 10 from countertop 1"
    assert x.act(plan, _admissible(x) + [take]) == take
    x.observe(take, "You pick up the apple 10 from the countertop 1.")
    assert x.act(plan, _admissible(x)) == "go to sinkbasin 1" and plans == [None, "apple 10"]  # replanned, holding it


def test_a_closed_receptacle_the_agent_only_went_to_is_searched_again():
    x = SearchExpert()
    x.reset(FIRST)
    for where in ("countertop 1", "shelf 1"):
        x.observe(f"go to {where}", f"You arrive at {where}. On the {where}, you see nothing.")
    x.observe("go to cabinet 2", "You arrive at cabinet 2. The cabinet 2 is closed.")  # the model's move: no open
    x.observe("go to cabinet 1", "You arrive at cabinet 1. The cabinet 1 is closed.")
    x.target = "apple 1"  # unseen
    assert x.act(lambda: [], _admissible(x)) == "open cabinet 1"
    x.observe("open cabinet 1", "You open the cabinet 1. The cabinet 1 is open. In it, you see nothing.")
    assert x.act(lambda: [], _admissible(x)) == "go to cabinet 2"  # went there, never saw inside


def test_falls_back_to_the_planner_when_everything_was_visited():
    x = SearchExpert()
    x.reset(FIRST)
    x.visited = set(x.order)
    x.opened = set(x.order)
    assert x.act(lambda: ["take pen 1 from desk 1"], [f"go to {r}" for r in x.order]) == "take pen 1 from desk 1"
    assert x.act(lambda: [], []) is None


HAVE = (importlib.util.find_spec("alfworld") is not None and data.default_data_root() is not None
        and (data.default_data_root() / "json_2.1.1" / "valid_unseen").is_dir())


@pytest.mark.alfworld
@pytest.mark.skipif(not HAVE, reason="needs alfworld and the ALFWorld data (ALFWORLD_DATA)")
def test_search_expert_wins_real_games_and_never_takes_an_unseen_object():
    with gym.make("agent_rl/ALFWorld-v0", split="valid_unseen", expert="search") as e:
        for game in (0, 30):  # look_at_obj_in_light, pick_and_place_simple with a closed cabinet
            observation, info = e.reset(options={"task": game})
            shown = observation.lower()
            for _ in range(50):
                action = info["expert_action"]
                for obj in [needed_object([action])] if needed_object([action]) else []:
                    assert obj in shown, f"took {obj!r} before it was seen"
                observation, _r, terminated, truncated, info = e.step(action)
                assert info["action_valid"], action
                shown += "\n" + observation.lower()
                if terminated or truncated:
                    break
            assert info["won"] and "expert_plan" not in info


def test_bad_expert_name():
    with pytest.raises(ValueError, match="expert must be one of"):
        from envs.alfworld.env import ALFWorldEnv

        ALFWorldEnv(expert="oracle")
