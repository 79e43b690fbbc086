"""ALFWorld as a Gymnasium text environment: the env at the start of the data flow (env → rollout → ...).

Plays the real ALFWorld text games with the real engine (textworld's PDDL environment wrapped by
ALFWorld's ``AlfredDemangler``, as ``AlfredTWEnv`` does), one game per episode, in-process.
Game files and their order come from :mod:`envs.alfworld.data`, free-text actions are mapped to
engine commands by :mod:`envs.alfworld.actions`, and the planner expert is read by
:mod:`envs.alfworld.expert`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import gymnasium as gym
from gymnasium.error import ResetNeeded

from envs.alfworld import data
from envs.alfworld.actions import CommandMatcher
from envs.alfworld.search_expert import SearchExpert
from envs.spaces import UnicodeText

log = logging.getLogger(__name__)

SOURCES = ("release", "generated")
INVALID_FEEDBACK = "Nothing happens."
_BANNER = "-= Welcome to TextWorld, ALFRED! =-"
_TASK_PREFIX = "Your task is to: "
_OPTION_KEYS = ("game", "task")
EXPERTS = (None, False, True, "planner", "search")  # the `expert` argument (True: "planner")
_logged_generated = False


class ALFWorldEnv(gym.Env[str, str]):
    """ALFWorld household tasks in text (Shridhar et al., 2021), on alfworld 0.4.2 + textworld 1.7.0.

    ## Description
    The agent is placed in a room with receptacles (drawers, fridge, sink, ...) and must reach a goal
    of one of six task types: pick_and_place_simple, look_at_obj_in_light, pick_clean_then_place_in_recep,
    pick_heat_then_place_in_recep, pick_cool_then_place_in_recep, pick_two_obj_and_place.
    Games are kept exactly as ALFWorld's ``AlfredTWEnv`` keeps them (solvable, no movable/Sliced
    trials, six task types): train 3553, valid_seen 140, valid_unseen 134 games of the json_2.1.1
    release. Game ``i`` is the ``i``-th game in sorted path order (``env.unwrapped.task_ids``).

    ## Action Space
    ``UnicodeText``: any string. It is normalised (whitespace, case, quotes, trailing full stop) and
    matched to an admissible command; placements may be written ``put X in/on Y``, ``put X in Y``,
    ``put X on Y`` or ``move X to Y`` whatever the game's text version. Text that matches no admissible
    command is not sent to the engine: the observation is "Nothing happens.", ``info["action_valid"]``
    is False, the step counts and the episode goes on.

    ## Observation Space
    ``UnicodeText``. After reset: the room description, a blank line and "Your task is to: ...".
    After a step: the engine's feedback for the action.

    ## Rewards
    ``reward_scale`` (default 1.0) on the step that wins the game, 0.0 otherwise.

    ## Starting State
    ``reset(seed=s)`` picks a game with the env's seeded RNG (same seed → same game and text);
    ``options={"game": i | path}`` or ``options={"task": i}`` chooses it. The game starts from its
    initial state (no domain randomisation, as ALFWorld evaluates).

    ## Episode End
    Terminated when the task is won. Truncated after ``max_episode_steps`` steps without a win.
    Both are never true together. ``step`` after the end raises ``ResetNeeded``.

    ## Info
    ``task`` (goal text), ``task_id`` (game folder relative to the split), ``task_type``, ``game_index``,
    ``gamefile``, ``won``/``success``, ``admissible_commands`` (sorted), ``steps``, ``text_version``;
    after a step ``action_valid`` and ``command`` (what the engine ran, or None); with ``expert=True``
    ``expert_plan`` and ``expert_action`` (the planner's next command, None once won).

    ## Arguments
    - ``split``: "train" | "valid_seen" | "valid_unseen" (default "train").
    - ``data_root``: folder holding ``json_2.1.1/`` (default ``$ALFWORLD_DATA``, else ``~/.cache/alfworld``).
    - ``max_episode_steps``: default 50. ``gymnasium.make(id, max_episode_steps=N)`` consumes this name
      itself (a ``TimeLimit(N)`` wrapper; the env's own limit stays 50 underneath, so N > 50 still ends at
      50): for more than 50 steps construct the env directly, set ``env.unwrapped.max_episode_steps``, or
      use :class:`envs.pool.EnvPool`, which gives ``max_episode_steps`` in ``env_kwargs`` to the env.
    - ``reward_scale``: reward for a win, default 1.0.
    - ``source``: "release" | "generated" | None (release if a data root is configured, else generated).
    - ``text_version``: "2.1.1" (the release text, default) | "2.1.2" (the alfworld 0.4.2 wheel's grammar).
    - ``expert``: None/False (default), ``"planner"`` (or True): put the planner's plan in info
      (``expert_plan``, ``expert_action``); ``"search"``: ``expert_action`` from an expert that acts only
      on what the agent has seen (:mod:`envs.alfworld.search_expert`: it searches receptacles for the
      objects it needs and follows the planner once they were seen). Planning costs 0.01-6 s a call; it
      runs again only when the agent leaves the plan.
    - ``generate_kwargs``: passed to ``envs.alfworld.generate.ensure_generated_set`` for source="generated".
    - ``render_mode``: None | "ansi" | "human".

    ## Version History
    - v0: first version (alfworld 0.4.2, textworld 1.7.0, json_2.1.1 games).
    """

    metadata = {"render_modes": ["ansi", "human"], "render_fps": 4, "prompt_template": "alfworld"}

    def __init__(
        self,
        split: str = "train",
        data_root: str | os.PathLike | None = None,
        max_episode_steps: int = 50,
        reward_scale: float = 1.0,
        source: str | None = None,
        text_version: str = "2.1.1",
        expert: bool | str | None = False,
        generate_kwargs: dict | None = None,
        render_mode: str | None = None,
    ):
        if split not in data.SPLITS:
            raise ValueError(f"ALFWorldEnv split must be one of {data.SPLITS}, got {split!r}")
        if text_version not in data.TEXT_VERSIONS:
            raise ValueError(f"ALFWorldEnv text_version must be one of {data.TEXT_VERSIONS}, got {text_version!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"ALFWorldEnv render_mode must be None or one of {self.metadata['render_modes']}, "
                             f"got {render_mode!r}")
        self.split = split
        self.max_episode_steps = max_episode_steps
        self.reward_scale = float(reward_scale)
        self.text_version = text_version
        if expert not in EXPERTS:
            raise ValueError(f"ALFWorldEnv expert must be one of {EXPERTS} (True means 'planner'), got {expert!r}")
        self.expert = {True: "planner", False: None}.get(expert, expert)
        self._search = SearchExpert() if self.expert == "search" else None
        self.render_mode = render_mode
        self.source, self.data_root = _resolve_source(source, data_root, split, generate_kwargs or {})
        self.games = data.collect_games(self.data_root, split, expect_release=self.source == "release")
        self.task_ids = [g.task_id for g in self.games]
        self.task_types = [g.task_type for g in self.games]  # read by eval to stratify subsets without playing
        self._index_by_id = {tid: i for i, tid in enumerate(self.task_ids)}
        self.observation_space = UnicodeText()
        self.action_space = UnicodeText()
        self._engine = _make_engine()
        self._loaded: str | None = None  # key of the game the engine holds, so re-playing it skips the load
        self._state = None
        self._matcher: CommandMatcher | None = None
        self._plan: list[str] | None = None  # the planner's plan from the current state, once asked for
        self._episode: dict[str, Any] = {}
        self._steps = 0
        self._done = False
        self._last_text = ""
        self._stamp: dict | None = None

    # -- contract ---------------------------------------------------------------------------------

    @property
    def max_episode_steps(self) -> int:
        return self._max_episode_steps

    @max_episode_steps.setter
    def max_episode_steps(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"ALFWorldEnv max_episode_steps must be a positive int, got {value!r}")
        self._max_episode_steps = value

    @property
    def num_tasks(self) -> int:
        return len(self.games)

    @property
    def game_set_stamp(self) -> dict:
        """Count + checksum of this env's game set, for eval reports (see data.game_set_stamp)."""
        if self._stamp is None:
            self._stamp = dict(data.game_set_stamp(self.data_root, self.split, self.text_version), source=self.source)
        return self._stamp

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[str, dict]:
        super().reset(seed=seed)
        self._state, self._done = None, True  # a reset that fails below leaves no episode to step, not the last one
        index, path, task_id, task_type = self._choose_game(options or {})
        key = str(path)
        if self._loaded != key:
            self._loaded = None  # a failed load must not leave a stale key behind
            self._engine.load(self._game_data(path))
            self._loaded = key
        self._state = self._engine.reset()
        self._matcher = CommandMatcher(self._state["admissible_commands"])
        self._plan = None
        self._steps = 0
        self._done = False
        observation = _strip_banner(self._state["feedback"])
        if self._search is not None:
            self._search.reset(observation)
        self._episode = {
            "task": _task_text(observation),
            "task_id": task_id,
            "task_type": task_type,
            "game_index": index,
            "gamefile": key,
            "text_version": self.text_version,
        }
        self._last_text = observation
        return observation, self._info()

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        if not isinstance(action, str):
            raise TypeError(f"ALFWorldEnv actions are text: got {type(action).__name__} {action!r}; pass a str")
        if self._state is None:
            raise ResetNeeded("ALFWorldEnv.step called before reset() (or after one that failed); "
                              "call env.reset() first")
        if self._done:
            raise ResetNeeded("ALFWorldEnv episode has ended (terminated or truncated); call env.reset()")
        command = self._matcher.match(action)
        if command is None:
            observation = INVALID_FEEDBACK
        else:
            self._state, _score, _done = self._engine.step(command)
            self._matcher = CommandMatcher(self._state["admissible_commands"])
            # The engine is deterministic: after the plan's first command the rest of the plan still
            # reaches the goal, so only a deviation needs a new (slow: 0.01-6 s) planner call.
            self._plan = self._plan[1:] if self._plan and self._plan[0] == command else None
            observation = self._state["feedback"].strip()
        if self._search is not None:
            self._search.observe(command, observation)
        self._steps += 1
        won = bool(self._state["won"])
        terminated = won
        truncated = not terminated and self._steps >= self.max_episode_steps
        self._done = terminated or truncated
        reward = self.reward_scale if won and command is not None else 0.0
        info = self._info()
        info["action_valid"] = command is not None
        info["command"] = command
        self._last_text = f"> {action}\n{observation}"
        return observation, reward, terminated, truncated, info

    def render(self) -> str | None:
        if self.render_mode == "ansi":
            return self._last_text
        if self.render_mode == "human":
            print(self._last_text)
        return None

    def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is None:
            return
        engine.close()
        lib = getattr(engine.unwrapped, "downward_lib", None)
        if lib is not None:
            # Free the planner's task memory. Not dlclose (fast_downward.close_lib): unloading this
            # C++ library leaves exit-time destructors pointing at unmapped code, a segfault at exit.
            lib.cleanup()

    # -- expert -----------------------------------------------------------------------------------

    def expert_plan(self) -> list[str]:
        """The planner's remaining plan from the current state (ALFWorld's `planner` expert).

        The call textworld makes for ``EnvInfos(policy_commands=True)`` (fast-downward on the current
        state), made when asked for and again only after the agent leaves the plan.
        """
        if self._state is None:
            raise ResetNeeded("ALFWorldEnv.expert_plan needs a started episode; call env.reset() first")
        if self._state["won"]:
            return []
        if self._plan is None:
            pddl_env = self._engine.unwrapped
            self._plan = list(pddl_env._pddl_state.replan(pddl_env._entity_infos) or [])
        return list(self._plan)

    # -- internals --------------------------------------------------------------------------------

    def _info(self) -> dict[str, Any]:
        won = bool(self._state["won"])
        info = dict(self._episode)
        info.update(won=won, success=won, steps=self._steps,
                    admissible_commands=list(self._state["admissible_commands"]))
        if self.expert == "planner":
            plan = self.expert_plan()
            info["expert_plan"] = plan
            info["expert_action"] = plan[0] if plan else None
        elif self.expert == "search":
            info["expert_action"] = None if won else self._search.act(self.expert_plan, info["admissible_commands"])
        return info

    def _choose_game(self, options: dict) -> tuple[int | None, Path, str, str]:
        unknown = sorted(set(options) - set(_OPTION_KEYS))
        if unknown:
            raise ValueError(f"ALFWorldEnv.reset options {unknown} are not understood; known keys: {_OPTION_KEYS}")
        if options.get("game") is not None and options.get("task") is not None and options["game"] != options["task"]:
            raise ValueError(f"ALFWorldEnv.reset got both game={options['game']!r} and task={options['task']!r}; "
                             f"pass one of them")
        choice = options.get("game")
        if choice is None:  # game=None beside a task: the task
            choice = options.get("task")
        if choice is None:
            choice = int(self.np_random.integers(self.num_tasks))
        if not isinstance(choice, bool) and not isinstance(choice, (int, str, os.PathLike)) \
                and hasattr(choice, "__index__"):  # numpy integers
            choice = int(choice)
        if isinstance(choice, bool) or not isinstance(choice, (int, str, os.PathLike)):
            raise TypeError(f"ALFWorldEnv reset option game/task must be an int index or a game path, "
                            f"got {type(choice).__name__} {choice!r}")
        if isinstance(choice, int):
            if not -self.num_tasks <= choice < self.num_tasks:
                raise ValueError(f"ALFWorldEnv game index {choice} is out of range: split {self.split!r} "
                                 f"has {self.num_tasks} games (0..{self.num_tasks - 1})")
            index = choice % self.num_tasks
            game = self.games[index]
            return index, game.path, game.task_id, game.task_type
        return self._game_from_path(str(choice))

    def _game_from_path(self, choice: str) -> tuple[int | None, Path, str, str]:
        task_dir = choice[: -len("/game.tw-pddl")] if choice.endswith("/game.tw-pddl") else choice
        if task_dir in self._index_by_id:  # a task id (relative path) of this split
            index = self._index_by_id[task_dir]
            game = self.games[index]
            return index, game.path, game.task_id, game.task_type
        path = Path(choice).expanduser()
        if path.is_dir():
            path = path / "game.tw-pddl"
        if not path.is_file():
            raise FileNotFoundError(f"ALFWorldEnv reset option game={choice!r} is neither a task id of split "
                                    f"{self.split!r} nor an existing game.tw-pddl file or game folder")
        resolved = path.resolve()
        for index, game in enumerate(self.games):
            if game.path.resolve() == resolved:
                return index, game.path, game.task_id, game.task_type
        traj_path = path.parent / "traj_data.json"
        task_type = data._read_json(str(traj_path)).get("task_type", "unknown") if traj_path.is_file() else "unknown"
        return None, path, str(path.parent), task_type

    def _game_data(self, path: Path) -> dict:
        # Read here rather than by textworld, whose loader leaves the file open.
        game = data._read_json(str(path))
        if self.text_version == "2.1.1" and self.source == "release":
            return game  # the release games carry their own 2.1.1 domain and grammar
        try:
            from envs.alfworld.text_version import convert_game
        except ImportError as exc:
            raise NotImplementedError(
                f"text_version={self.text_version!r} needs envs.alfworld.text_version.convert_game, which is not "
                f"available in this checkout ({exc}); use text_version='2.1.1' (the release text)"
            ) from exc
        return convert_game(game, self.text_version)


def _resolve_source(source: str | None, data_root, split: str, generate_kwargs: dict) -> tuple[str, Path]:
    if source not in (None, *SOURCES):
        raise ValueError(f"ALFWorldEnv source must be one of {SOURCES} or None, got {source!r}")
    if source is None:
        source = "release" if data_root is not None or data.default_data_root() is not None else "generated"
        if source == "generated":
            global _logged_generated
            if not _logged_generated:
                _logged_generated = True
                log.warning("no ALFWorld data root configured ($ALFWORLD_DATA unset, ~/.cache/alfworld has no "
                            "json_2.1.1): using locally generated households. %s", data.HOW_TO_GET_DATA)
    if source == "release":
        root = Path(data_root).expanduser() if data_root is not None else data.default_data_root()
        if root is None:
            raise data.ALFWorldDataError(f"no ALFWorld data root: data_root is None and $ALFWORLD_DATA is unset. "
                                         f"{data.HOW_TO_GET_DATA}")
        return source, root
    try:
        from envs.alfworld.generate import ensure_generated_set
    except ImportError as exc:
        raise NotImplementedError(
            f"source='generated' needs envs.alfworld.generate.ensure_generated_set, which is not available in "
            f"this checkout ({exc}); use source='release' with data_root=<folder holding json_2.1.1> "
            f"(or set ALFWORLD_DATA)"
        ) from exc
    out_root = Path(data_root).expanduser() if data_root is not None else None
    return source, Path(ensure_generated_set(out_root=out_root, split=split, **generate_kwargs))


def _make_engine():
    try:
        import textworld
        from alfworld.agents.environment.alfred_tw_env import AlfredDemangler
        from textworld.envs.pddl import PddlEnv
    except ImportError as exc:
        raise ImportError(
            f"agent_rl/ALFWorld-v0 needs the ALFWorld engine ({exc}); install it with "
            f"`pip install 'agent-rl[alfworld]'` (alfworld==0.4.2, textworld[pddl]==1.7.0)"
        ) from exc
    # What AlfredTWEnv requests (won, admissible_commands). Not policy_commands: that replans on every
    # step (up to seconds); ALFWorldEnv.expert_plan plans on demand instead.
    infos = textworld.EnvInfos(won=True, admissible_commands=True)
    return AlfredDemangler(_engine_class(PddlEnv)(infos), shuffle=False)  # no domain randomisation


_ENGINE_CLASS = None


def _engine_class(pddl_env_cls):
    """textworld's PddlEnv, minus one redundant PDDL→SAS translation on the first reset after a load.

    ``PddlEnv.load`` builds the initial ``PddlState`` (two fast-downward translations, ~0.7 s) and
    ``PddlEnv.reset`` builds it again; every episode of a new game paid both. Right after a load the
    state is the initial one, so this reset keeps it and runs the rest of textworld 1.7.0's reset
    unchanged. (tests/test_alfworld_env.py checks the result against the unmodified engine.)
    """
    global _ENGINE_CLASS
    if _ENGINE_CLASS is not None:
        return _ENGINE_CLASS
    from textworld.core import GameState

    class _PddlEnv(pddl_env_cls):
        _pristine = False

        def load(self, filename_or_data):
            self._pristine = False
            super().load(filename_or_data)
            self._pristine = True

        def step(self, command):
            self._pristine = False
            return super().step(command)

        def reset(self):
            if not self._pristine or "walkthrough" in self.request_infos.extras:
                return super().reset()
            self._pristine = False
            # textworld 1.7.0 PddlEnv.reset without `self._pddl_state = PddlState(...)`.
            self.prev_state = None
            self.state = GameState()
            self._last_action = None
            self._moves = 0
            context = {"state": self._pddl_state, "facts": list(self._pddl_state.facts), "variables": {},
                       "mapping": {}, "entity_infos": self._entity_infos}
            self.state.feedback = self._logic.grammar.derive("#intro#", context)
            self.state.raw = self.state.feedback
            self._gather_infos()
            return self.state

    _ENGINE_CLASS = _PddlEnv
    return _PddlEnv


def _strip_banner(text: str) -> str:
    text = text.strip()
    if text.startswith(_BANNER):
        text = text[len(_BANNER):].strip()
    return text


def _task_text(observation: str) -> str:
    for line in observation.splitlines():
        if line.startswith(_TASK_PREFIX):
            return line[len(_TASK_PREFIX):].strip().rstrip(".")
    return ""
