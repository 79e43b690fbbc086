"""Procedurally generated ALFWorld games, for users without ``alfworld-download`` (feeds the env of the data flow).

A game here is exactly what the release ships: a ``game.tw-pddl`` JSON (``pddl_domain``, ``grammar`` with
the goal sentence, ``pddl_problem``, ``solvable``) and a ``traj_data.json`` (``task_id``, ``task_type``,
``pddl_params``, ``turk_annotations.anns[].task_desc``), written in the standard layout
``<root>/json_2.1.1/<split>/<task_type>-<Object>-None-<Parent>-<scene>/<trial_id>/``, so textworld's PDDL
engine, ``AlfredTWEnv`` and agent-rl's ALFWorldEnv play them like released games.

Everything comes from the alfworld wheel: the domain and grammar (``alfred.pddl``/``alfred.twl2``, in
either text version, see ``text_version.py``), the goal PDDL and sentence templates
(``alfworld/gen/goal_library.py``) and the object/receptacle type tables (via ``households.py``). Before a
game is kept, ALFWorld's planner expert (fast-downward, as textworld[pddl] ships it) must find a plan
for it; a game it cannot solve is dropped and another is drawn. Game ``i`` of a set is drawn from
``random.Random(f"{seed}/{split}/{i}")``, so a seed always gives byte-identical files.

CLI: ``python -m envs.alfworld.generate --games 30 --seed 0 --out DIR [--difficulty medium]
[--split train] [--text-version 2.1.1] [--verify]``.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import fcntl
import json
import logging
import os
import random
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

from envs.alfworld import households as hh
from envs.alfworld.data import TASK_TYPES
from envs.alfworld.text_version import DEFAULT_TEXT_VERSION, check_version, logic, with_goal

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1  # bump when the same seed would produce different files
MAX_ATTEMPTS = 20  # draws per game before giving up (unsolvable draws are rare)
COMPLETE_MARKER = ".complete-{split}.json"

# Rooms each task is set in, as in the release.
ROOMS_FOR: dict[str, tuple[str, ...]] = {
    "pick_and_place_simple": hh.ROOMS,
    "pick_two_obj_and_place": hh.ROOMS,
    "look_at_obj_in_light": ("Bedroom", "LivingRoom"),
    "pick_clean_then_place_in_recep": ("Kitchen", "Bathroom"),
    "pick_heat_then_place_in_recep": ("Kitchen",),
    "pick_cool_then_place_in_recep": ("Kitchen",),
}
# The receptacle that does the state change, and the property the object needs for it.
TOOL: dict[str, tuple[str, str]] = {
    "pick_clean_then_place_in_recep": ("SinkBasin", "cleanable"),
    "pick_heat_then_place_in_recep": ("Microwave", "heatable"),
    "pick_cool_then_place_in_recep": ("Fridge", "coolable"),
}
# Never a goal receptacle in the release.
NON_PARENTS = frozenset({"SinkBasin", "BathtubBasin", "TowelHolder", "HandTowelHolder", "Toaster", "LaundryHamper"})
LAMP = "DeskLamp"
# fast-downward (as textworld[pddl] ships it) plans pick-two goals slowly in big rooms: released kitchen
# pick_two games take 40-440 s per plan on a 2-core machine, and the expert replans every step. Generated
# pick_two rooms are capped so a plan takes a few seconds; the other tasks keep release-sized rooms.
PICK_TWO_MAX_RECEPTACLES = 12
PICK_TWO_MAX_OBJECTS = 24

# The release declares these types, in this order, in every problem's header (constants of the PDDL
# problem, not scene data); generated problems declare the same so either text version's domain resolves.
RELEASE_OTYPES: tuple[str, ...] = (
    "RemoteControl", "Laptop", "Kettle", "Pen", "Fork", "Cloth", "HousePlant", "Plunger", "SoapBottle", "Cup",
    "Candle", "Tomato", "Television", "TennisRacket", "Towel", "SaltShaker", "Spoon", "Apple", "Poster", "Curtains",
    "Footstool", "AlarmClock", "Ladle", "PaperTowelRoll", "BaseballBat", "Knife", "Spatula", "SoapBar", "CreditCard",
    "Sink", "Newspaper", "LaundryHamperLid", "KeyChain", "Glassbottle", "ButterKnife", "Chair", "HandTowel",
    "ToiletPaperRoll", "Plate", "Pot", "WineBottle", "Boots", "PepperShaker", "PaperTowel", "Bowl", "SprayBottle",
    "ScrubBrush", "Box", "CD", "Pan", "Statue", "Vase", "ShowerGlass", "DishSponge", "Egg", "Lettuce", "Book",
    "TeddyBear", "ToiletPaper", "ShowerDoor", "Window", "Blinds", "CellPhone", "FloorLamp", "Pillow", "Mirror",
    "Painting", "TissueBox", "Pencil", "Potato", "LightSwitch", "StoveKnob", "Mug", "Bathtub", "DeskLamp", "Watch",
    "WateringCan", "BasketBall", "Bread",
)
RELEASE_RTYPES: tuple[str, ...] = (
    "SinkBasin", "GarbageCan", "StoveBurner", "Ottoman", "Cabinet", "SideTable", "DiningTable", "CoffeeTable", "Safe",
    "Dresser", "Desk", "Bed", "TowelHolder", "ToiletPaperHanger", "Microwave", "Sofa", "Cart", "ArmChair",
    "HandTowelHolder", "TVStand", "BathtubBasin", "CoffeeMachine", "Toaster", "LaundryHamper", "Drawer", "Fridge",
    "Toilet", "Shelf", "PaintingHanger", "CounterTop",
)


class GenerationError(RuntimeError):
    """No solvable game could be drawn, or a generated set on disk is broken."""


# ----------------------------------------------------------------------------------------------- task choice

def _task_params(rng: random.Random, task_type: str) -> tuple[str, dict[str, Any], hh.Requirements]:
    """Room, ``pddl_params`` and what the household must contain for this task."""
    room = rng.choice(ROOMS_FOR[task_type])
    present_r = {spec[0] for spec in hh.RECEPTACLE_CATALOG[room]}
    objects = [spec[0] for spec in hh.OBJECT_CATALOG[room] if hh.is_pickupable(spec[0])]
    params = {"mrecep_target": "", "object_sliced": False, "object_target": "", "parent_target": "",
              "toggle_target": ""}
    if task_type == "look_at_obj_in_light":
        lamp_hosts = sorted(hh.hosts_for(LAMP) & present_r)
        obj = rng.choice([o for o in objects if hh.hosts_for(o) & present_r])
        host = rng.choice(lamp_hosts)
        start = rng.choice(sorted(hh.hosts_for(obj) & present_r))  # somewhere the object can start
        params.update(object_target=obj, toggle_target=LAMP)
        req = hh.Requirements(receptacles=(host, start), objects=((obj, 1), (LAMP, 1)), targets=(obj,))
        return room, params, req
    tool, prop = TOOL.get(task_type, (None, None))
    if prop:
        objects = [o for o in objects if o in hh.PROPERTIES[prop]]
    pairs = [(o, r) for o in objects for r in sorted(hh.hosts_for(o) & present_r)
             if r not in NON_PARENTS and r != tool and o in hh.CAN_CONTAIN.get(r, ())]
    # An object must also be able to start somewhere other than the goal receptacle type.
    pairs = [(o, r) for o, r in pairs if (hh.hosts_for(o) & present_r) - {r}]
    obj, parent = rng.choice(pairs)
    params.update(object_target=obj, parent_target=parent)
    need = 2 if task_type == "pick_two_obj_and_place" else 1
    start = rng.choice(sorted((hh.hosts_for(obj) & present_r) - {parent}))  # somewhere the object can start
    receptacles = (parent, start) + ((tool,) if tool else ())
    caps = {"max_receptacles": PICK_TWO_MAX_RECEPTACLES, "max_objects": PICK_TWO_MAX_OBJECTS} if need == 2 else {}
    req = hh.Requirements(receptacles=receptacles, objects=((obj, need),), avoid=((obj, parent),), targets=(obj,),
                          **caps)
    return room, params, req


def _goal_library():
    try:
        import alfworld.gen.goal_library as glib
    except ImportError as exc:
        raise ImportError(f"generating ALFWorld games needs the alfworld wheel ({exc}); "
                          f"install it with `pip install 'agent-rl[alfworld]'`") from exc
    return glib.gdict


def goal_pddl(task_type: str, params: dict[str, Any]) -> str:
    """The ``(:goal ...)`` block ALFRED writes for these params (goal_library, ``#`` → ``-``)."""
    template = _goal_library()[task_type]["pddl"].replace("#", "-")
    return template.format(obj=params["object_target"], recep=params["parent_target"],
                           toggle=params["toggle_target"], mrecep=params["mrecep_target"])


def task_sentences(task_type: str, params: dict[str, Any]) -> list[str]:
    """Every goal_library template filled in, as ALFWorld's ``get_templated_task_desc`` does."""
    return [t.format(obj=params["object_target"].lower(), recep=params["parent_target"].lower(),
                     toggle=params["toggle_target"].lower(), mrecep=params["mrecep_target"].lower())
            for t in _goal_library()[task_type]["templates"]]


# ----------------------------------------------------------------------------------------------- PDDL writing

def mangle(name: str) -> str:
    """ALFRED's PDDL-safe ids: ``Apple|+00.78|...`` → ``Apple_bar__plus_00_dot_78_bar_...``."""
    return (name.replace("|", "_bar_").replace("+", "_plus_").replace("-", "_minus_")
            .replace(".", "_dot_").replace(",", "_comma_"))


def problem_text(house: hh.Household, task_type: str, params: dict[str, Any], trial_id: str) -> str:
    """The ``pddl_problem`` of a household, laid out like the release's."""
    for t in {o.type for o in house.objects}:
        if t not in RELEASE_OTYPES:
            raise GenerationError(f"object type {t!r} is not one the release declares")
    for t in house.receptacle_types():
        if t not in RELEASE_RTYPES:
            raise GenerationError(f"receptacle type {t!r} is not one the release declares")
    rec = {r.id: r for r in house.receptacles}
    objs = sorted(house.objects, key=lambda o: o.id)
    recs = sorted(house.receptacles, key=lambda r: r.id)
    obj_types = sorted({o.type for o in objs})

    def block(lines: Iterable[str]) -> str:
        return "\n        ".join(lines)

    facts: list[str] = []
    facts += [f"(receptacleType {mangle(r.id)} {r.type}Type)" for r in recs]
    facts += [f"(objectType {mangle(o.id)} {o.type}Type)" for o in objs]
    facts += [f"(canContain {rt}Type {ot}Type)" for rt in sorted(house.receptacle_types())
              for ot in obj_types if ot in hh.CAN_CONTAIN.get(rt, ())]
    facts += [f"(pickupable {mangle(o.id)})" for o in objs if hh.is_pickupable(o.type)]
    facts += [f"(isReceptacleObject {mangle(o.id)})" for o in objs if o.type in hh.RECEPTACLE_OBJECTS]
    facts += [f"(openable {mangle(r.id)})" for r in recs if r.openable]
    facts.append(f"(atLocation agent1 {mangle(house.agent_location)})")
    for prop in ("cleanable", "heatable", "coolable", "toggleable", "sliceable"):
        facts += [f"({prop} {mangle(o.id)})" for o in objs if o.type in hh.PROPERTIES[prop]]
    facts += [f"(inReceptacle {mangle(o.id)} {mangle(o.receptacle)})" for o in objs if o.receptacle]
    facts += [f"(receptacleAtLocation {mangle(r.id)} {mangle(r.location)})" for r in recs]
    facts += [f"(objectAtLocation {mangle(o.id)} {mangle(o.location)})" for o in objs]
    for o in objs:  # the writer's own invariant: an object in a receptacle stands where the receptacle is
        if o.receptacle and rec[o.receptacle].location != o.location:
            raise GenerationError(f"{o.id} is in {o.receptacle} but at another location")

    return (
        f"\n(define (problem plan_{trial_id})\n(:domain alfred)\n(:objects\nagent1 - agent\n"
        + block(f"{t} - object" for t in RELEASE_OTYPES) + "\n"
        + block(f"{t}Type - otype" for t in RELEASE_OTYPES) + "\n"
        + block(f"{t}Type - rtype" for t in RELEASE_RTYPES) + "\n\n\n        "
        + block([f"{mangle(o.id)} - object" for o in objs] + [f"{mangle(r.id)} - receptacle" for r in recs]
                + [f"{mangle(loc)} - location" for loc in house.locations])
        + "\n        )\n    \n\n(:init\n\n\n        " + block(facts) + "\n        )\n    \n"
        + goal_pddl(task_type, params)
    )


# ----------------------------------------------------------------------------------------------- engine checks

def _engine(policy: bool):
    try:
        import textworld
        from alfworld.agents.environment.alfred_tw_env import AlfredDemangler
        from textworld.envs.pddl import PddlEnv
    except ImportError as exc:
        raise ImportError(f"checking generated ALFWorld games needs the engine ({exc}); "
                          f"install it with `pip install 'agent-rl[alfworld]'`") from exc
    infos = textworld.EnvInfos(won=True, admissible_commands=True, policy_commands=policy)
    return AlfredDemangler(PddlEnv(infos), shuffle=False)  # what AlfredTWEnv does for evaluation


def planner_plan(game: dict[str, Any]) -> list[str] | None:
    """The planner expert's plan from the start state, or None when fast-downward finds none."""
    env = _engine(policy=True)
    try:
        env.load(game)
        state = env.reset()
        plan = list(state["policy_commands"] or [])
        return plan if plan and not state["won"] else None
    except Exception as exc:  # the engine raises e.g. KeyError('val1') on unsolvable problems
        log.debug("planner failed on a generated game: %r", exc)
        return None
    finally:
        env.close()


def play_expert(game: dict[str, Any] | str | os.PathLike, max_steps: int = 50) -> tuple[bool, list[str]]:
    """Follow the planner expert (replanning every step, like AlfredExpert) until won or max_steps."""
    if not isinstance(game, dict):
        with open(game, encoding="utf-8") as f:
            game = json.load(f)
    env = _engine(policy=True)
    try:
        env.load(game)
        state = env.reset()
        taken: list[str] = []
        while not state["won"] and len(taken) < max_steps and state["policy_commands"]:
            command = state["policy_commands"][0]
            state, _, _ = env.step(command)
            taken.append(command)
        return bool(state["won"]), taken
    finally:
        env.close()


# ----------------------------------------------------------------------------------------------- one game

def generate_game(rng_or_seed: random.Random | int | str, task_type: str, difficulty: str | hh.Difficulty = "medium",
                  text_version: str = DEFAULT_TEXT_VERSION, check: bool = True) -> tuple[dict, dict]:
    """One game of ``task_type``: ``(game_json, traj_data)``.

    With ``check`` (default) the planner expert must solve it: unsolvable draws are discarded and the
    next one is drawn from the same generator, so the result is still a function of the seed; the game
    is marked ``"solvable": true``. Without ``check`` the ``solvable`` key is left out (ALFWorld's own
    loader skips such games) and no engine is needed beyond the alfworld wheel's data files.
    """
    if task_type not in TASK_TYPES:
        raise ValueError(f"unknown ALFWorld task type {task_type!r}; choose one of {TASK_TYPES}")
    check_version(text_version)
    diff = hh.get_difficulty(difficulty)
    rng = rng_or_seed if isinstance(rng_or_seed, random.Random) else random.Random(rng_or_seed)
    failures = []
    for _ in range(MAX_ATTEMPTS):
        room, params, req = _task_params(rng, task_type)
        try:
            house = hh.sample_household(rng, room, diff, req)
        except ValueError as exc:
            failures.append(str(exc))
            continue
        trial_id = f"trial_G{rng.getrandbits(64):016x}"
        sentences = task_sentences(task_type, params)
        sentence = rng.choice(sentences) + "."
        domain, grammar = logic(text_version)
        game = {"pddl_domain": domain, "grammar": with_goal(grammar, sentence),
                "pddl_problem": problem_text(house, task_type, params, trial_id)}
        if check:
            if planner_plan(game) is None:
                failures.append(f"planner found no plan for {task_type} {params['object_target']} in a {room}")
                continue
            game["solvable"] = True
        traj = {
            "task_id": trial_id,
            "task_type": task_type,
            "pddl_params": params,
            "turk_annotations": {"anns": [{"task_desc": s[:1].upper() + s[1:] + "."} for s in sentences]},
            "scene": {"floor_plan": f"Generated{room}", "scene_num": house.scene_num},
            "generator": {"name": "agent_rl", "version": GENERATOR_VERSION, "difficulty": diff.name,
                          "text_version": text_version, "num_objects": len(house.objects),
                          "num_receptacles": len(house.receptacles), "num_locations": len(house.locations),
                          "rejected_draws": len(failures)},
        }
        return game, traj
    raise GenerationError(f"no solvable {task_type} game in {MAX_ATTEMPTS} draws: {failures[-3:]}")


def game_dir_name(traj: dict[str, Any]) -> str:
    """``<task_type>-<Object>-<mrecep|None>-<Parent|Toggle>-<scene>``, the release's folder naming."""
    p = traj["pddl_params"]
    parent = p["parent_target"] or p["toggle_target"]
    return f"{traj['task_type']}-{p['object_target']}-{p['mrecep_target'] or 'None'}-{parent}-{traj['scene']['scene_num']}"


def _dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=False) + "\n"


# ----------------------------------------------------------------------------------------------- sets

def generate_set(out_root: str | os.PathLike, num_games: int = 24, seed: int = 0, split: str = "train",
                 difficulty: str | hh.Difficulty = "medium", text_version: str = DEFAULT_TEXT_VERSION,
                 task_types: tuple[str, ...] = TASK_TYPES, progress: bool = False) -> dict[str, Any]:
    """Write ``num_games`` checked games to ``<out_root>/json_2.1.1/<split>/`` (task types round-robin).

    Returns a summary: games per task type and draws the planner rejected; the same summary is written,
    last, to ``<out_root>/.complete-<split>.json`` (what :func:`ensure_generated_set` trusts). An existing
    split folder is replaced only by a finished new one, and only if this generator wrote it.
    """
    if num_games < 1:
        raise ValueError(f"num_games must be >= 1, got {num_games}")
    if not split or "/" in split or split.startswith("."):
        raise ValueError(f"split must be a plain folder name such as 'train', got {split!r}")
    unknown = [t for t in task_types if t not in TASK_TYPES]
    if unknown or not task_types:
        raise ValueError(f"task_types must be a non-empty subset of {TASK_TYPES}, got {task_types}")
    diff = hh.get_difficulty(difficulty)
    check_version(text_version)
    final = Path(out_root).expanduser() / "json_2.1.1" / split
    _refuse_foreign_games(final)
    tmp = final.parent / f".{split}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    made: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    start = time.time()
    for i in range(num_games):
        task_type = task_types[i % len(task_types)]
        rng = random.Random(f"{seed}/{split}/{i}")
        game, traj = generate_game(rng, task_type, diff, text_version)
        rejected[task_type] += traj["generator"]["rejected_draws"]
        folder = tmp / game_dir_name(traj) / traj["task_id"]
        folder.mkdir(parents=True)
        (folder / "game.tw-pddl").write_text(_dump(game), encoding="utf-8")
        (folder / "traj_data.json").write_text(_dump(traj), encoding="utf-8")
        made[task_type] += 1
        if progress:
            print(f"[{i + 1}/{num_games}] {game_dir_name(traj)} ({time.time() - start:.0f}s)", file=sys.stderr)
    marker = final.parent.parent / COMPLETE_MARKER.format(split=split)
    marker.unlink(missing_ok=True)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    summary = {"split": split, "num_games": num_games, "seed": seed, "difficulty": diff.name,
               "text_version": text_version, "generator_version": GENERATOR_VERSION,
               "task_types": list(task_types),
               "solvable_per_task_type": dict(made), "rejected_per_task_type": dict(rejected)}
    marker.write_text(_dump(summary), encoding="utf-8")  # last: its presence means the split is complete
    return summary


def _refuse_foreign_games(split_dir: Path) -> None:
    """A generated split replaces the folder it is written to: never one holding other games."""
    for traj_path in split_dir.glob("*/*/traj_data.json"):
        try:
            generator = json.loads(traj_path.read_text(encoding="utf-8")).get("generator", {})
        except (OSError, ValueError):
            generator = {}
        if not isinstance(generator, dict) or generator.get("name") != "agent_rl":
            raise GenerationError(
                f"{split_dir} holds games this generator did not write (e.g. {traj_path.parent}); writing a "
                f"generated set there would replace them. Choose another output folder"
            )


def default_cache_root() -> Path:
    return Path(os.environ.get("AGENT_RL_CACHE", "~/.cache/agent_rl")).expanduser() / "alfworld_generated"


def check_task_types(task_types) -> tuple[str, ...]:
    """``task_types`` (a list from a config or JSON, or a tuple) as a tuple of distinct known names, else a
    ValueError that says which name is wrong and what the names are."""
    task_types = tuple(task_types)
    if not task_types:
        raise ValueError(f"task_types is empty. Fix: name some of {', '.join(TASK_TYPES)}, or leave task_types out")
    for t in task_types:
        if t not in TASK_TYPES:
            close = difflib.get_close_matches(t, TASK_TYPES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown task type {t!r}{hint}; task types are {', '.join(TASK_TYPES)}. Fix: use a "
                             f"subset of those names, or leave task_types out")
    for t in task_types:
        if task_types.count(t) > 1:
            raise ValueError(f"task_types {list(task_types)} names {t!r} twice; they must be distinct. Fix: list "
                             f"each once")
    return task_types


def ensure_generated_set(out_root: str | os.PathLike | None = None, num_games: int = 24, seed: int = 0,
                         split: str = "train", difficulty: str = "medium",
                         text_version: str = DEFAULT_TEXT_VERSION, task_types=TASK_TYPES) -> Path:
    """A data root (holding ``json_2.1.1/<split>``) with a generated set; generated once, then reused.

    Default location: ``$AGENT_RL_CACHE`` or ``~/.cache/agent_rl``, under
    ``alfworld_generated/<seed>-<num_games>-<difficulty>[-<text_version>][-types-<indices>]`` (``task_types``:
    a subset of the six, round-robin; the name lists their indices in TASK_TYPES). A set counts as complete
    only when its marker file (written last) matches the request, so a killed generation is redone; a file
    lock lets parallel env workers wait for one generator instead of racing.
    """
    diff = hh.get_difficulty(difficulty)
    check_version(text_version)
    task_types = check_task_types(task_types)
    if out_root is None:
        name = f"{seed}-{num_games}-{diff.name}" + ("" if text_version == DEFAULT_TEXT_VERSION else f"-{text_version}")
        if task_types != TASK_TYPES:
            name += "-types-" + ".".join(str(TASK_TYPES.index(t)) for t in task_types)
        root = default_cache_root() / name
    else:
        root = Path(out_root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    marker = root / COMPLETE_MARKER.format(split=split)
    want = {"split": split, "num_games": num_games, "seed": seed, "difficulty": diff.name,
            "text_version": text_version, "generator_version": GENERATOR_VERSION, "task_types": list(task_types)}
    with _locked(root / ".lock"):
        if _marker_matches(marker, want) and (root / "json_2.1.1" / split).is_dir():
            return root
        marker.unlink(missing_ok=True)
        log.warning("generating %d ALFWorld games (seed %s, %s, split %s) into %s; the planner checks each, "
                    "about 1-3 s a game", num_games, seed, diff.name, split, root)
        generate_set(root, num_games, seed, split, diff, text_version, task_types)
    return root


def _marker_matches(marker: Path, want: dict[str, Any]) -> bool:
    try:
        have = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return all(have.get(k) == v for k, v in want.items())


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ----------------------------------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m envs.alfworld.generate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--games", type=int, default=24, help="number of games (task types round-robin)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="data root to write (json_2.1.1/<split>/... goes inside)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--difficulty", default="medium", choices=sorted(hh.DIFFICULTIES))
    parser.add_argument("--text-version", default=DEFAULT_TEXT_VERSION, choices=("2.1.1", "2.1.2"))
    parser.add_argument("--task-types", default=",".join(TASK_TYPES), help="comma-separated subset")
    parser.add_argument("--verify", action="store_true", help="play every game with the planner expert and report")
    args = parser.parse_args(argv)
    task_types = tuple(t for t in args.task_types.split(",") if t)
    summary = generate_set(args.out, args.games, args.seed, args.split, args.difficulty, args.text_version,
                           task_types, progress=True)
    if args.verify:
        wins, steps = Counter(), Counter()
        for path in sorted((Path(args.out) / "json_2.1.1" / args.split).glob("*/*/game.tw-pddl")):
            won, taken = play_expert(path)
            task_type = path.parent.parent.name.split("-")[0]
            wins[task_type] += int(won)
            steps[task_type] += len(taken)
        summary["expert_wins_per_task_type"] = dict(wins)
        summary["expert_win_rate"] = sum(wins.values()) / args.games
        summary["expert_mean_steps"] = sum(steps.values()) / args.games
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.games} games to {Path(args.out) / 'json_2.1.1' / args.split}; "
          f"play them with ALFWORLD_DATA={Path(args.out).resolve()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
