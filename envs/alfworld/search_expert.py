"""An ALFWorld expert that acts only on what the agent has seen (env end of the data flow: env → info["expert_action"]).

The planner expert (:meth:`envs.alfworld.env.ALFWorldEnv.expert_plan`) reads the whole game state:
it walks straight to the cabinet that hides the apple. Demonstrations from it teach which room
holds what, not how to look, and a model trained on them hallucinates ``take X from Y`` in unseen
rooms. This expert searches instead:

- It follows the planner only while the object the plan needs next (the first ``take O from R`` or
  ``use O`` of the plan) has already appeared in what the agent was shown (an observation since
  reset, or the inventory).
- Otherwise, if another instance of the needed kind has been seen (``apple 2`` on a countertop when
  the plan names ``apple 1``; any instance satisfies the task), it fetches that one: goes back to
  where it was seen and takes (or uses) it, then replans. Objects the agent put somewhere itself are
  left there (``pick_two``: the first one stays in place).
- Otherwise it explores: it goes to the next receptacle it has not searched, open surfaces first
  (one step each), then receptacles that open (two steps: go, open), each group in the order the
  room's first observation lists them; at a closed receptacle it opens it. A receptacle counts as
  searched once its contents were shown: a closed one the agent only went to (DAgger: the model's
  own moves) is searched again. When the needed object shows up, the planner takes over again.
- With every receptacle visited and the object still unseen (it is inside something that is not a
  receptacle), it falls back to the planner.

Places to *put* things (``put a saltshaker in drawer``) are named in the room's first observation,
so only objects to take or use are searched for. The expert tracks the episode from the env's own
steps, whoever chose them, so DAgger can label states the model reached.
"""

from __future__ import annotations

import re
from typing import Callable

# Receptacle classes that open (their contents are hidden until opened); the rest are surfaces.
OPENABLE = frozenset({"cabinet", "drawer", "fridge", "microwave", "safe", "box"})
_LISTING = re.compile(r"you see (.*?)\.(?:\s|$)", re.IGNORECASE | re.DOTALL)
_ARTICLE = re.compile(r"^(?:and\s+)?(?:a|an|the)\s+", re.IGNORECASE)
_NEEDS = (re.compile(r"^take (?P<obj>.+?) from .+$"), re.compile(r"^use (?P<obj>.+)$"))


def listed_receptacles(first_observation: str) -> list[str]:
    """The receptacles of ``"... you see a cabinet 4, a cabinet 3, ..., and a toaster 1."``, in order."""
    match = _LISTING.search(first_observation)
    if match is None:
        return []
    items = [_ARTICLE.sub("", part.strip()).strip() for part in re.split(r",\s*|\s+and\s+", match.group(1))]
    return [item.lower() for item in items if item]


def search_order(receptacles: list[str]) -> list[str]:
    """Surfaces before receptacles that open, each group in listing order."""
    return sorted(receptacles, key=lambda r: (r.rsplit(" ", 1)[0] in OPENABLE, receptacles.index(r)))


def needed_object(plan: list[str]) -> str | None:
    """The object the plan needs to find next: the first ``take O from R`` / ``use O`` (None: none)."""
    return needed_step(plan)[1]


def needed_step(plan: list[str]) -> tuple[str | None, str | None]:
    """(``"take"`` or ``"use"``, the object) of the plan's first ``take O from R`` / ``use O``; (None, None): none."""
    for command in plan:
        for verb, pattern in zip(("take", "use"), _NEEDS):
            match = pattern.match(command)
            if match:
                return verb, match["obj"].strip()
    return None, None


def _kind(obj: str) -> str:
    """``"apple 10"`` → ``"apple"``."""
    return obj.rsplit(" ", 1)[0]


class SearchExpert:
    """Per-episode state of the searching expert (see the module docstring)."""

    def __init__(self) -> None:
        self.reset("")

    def reset(self, observation: str) -> None:
        self.seen = observation.lower()  # everything the agent has been shown this episode
        self.order = search_order(listed_receptacles(observation))
        self.visited: set[str] = set()
        self.opened: set[str] = set()
        self.closed_when_visited: set[str] = set()  # went there, found it closed, not opened since
        self.where: dict[str, str] = {}  # object -> the receptacle it was last shown in
        self.placed: set[str] = set()  # objects the agent put somewhere: left there
        self.unreachable: set[str] = set()  # seen objects a fetch could not take (or use) where they were
        self.holding: str | None = None
        self.location: str | None = None
        self.target: str | None = None  # the object the last plan needed; None: ask the planner
        self.verb: str | None = None  # "take" or "use": what the plan does with it

    def observe(self, command: str | None, feedback: str) -> None:
        """Record one env step: the engine command run (None: invalid) and its feedback."""
        self.seen += "\n" + feedback.lower()
        if command is None:
            return
        if command.startswith("go to "):
            self.location = command[len("go to "):]
            self.visited.add(self.location)
            if _kind(self.location) in OPENABLE and " is closed" in feedback.lower():
                self.closed_when_visited.add(self.location)
            else:
                self.closed_when_visited.discard(self.location)
        elif command.startswith("open "):
            self.opened.add(command[len("open "):])
            self.closed_when_visited.discard(command[len("open "):])
        elif command.startswith("take "):
            self.holding = command[len("take "):].split(" from ", 1)[0]
            self.where.pop(self.holding, None)
        elif command.startswith("put "):
            obj = command[len("put "):].split(" in/on ", 1)[0]
            self.placed.add(obj)
            self.holding = None
        if self.location is not None and command.startswith(("go to ", "open ")):
            for item in listed_receptacles(feedback):  # what this receptacle holds, as shown
                if item != "nothing":
                    self.where[item] = self.location

    def is_seen(self, obj: str) -> bool:
        return re.search(rf"(?<![\w]){re.escape(obj.lower())}(?![\w])", self.seen) is not None

    def act(self, plan: Callable[[], list[str]], admissible: list[str]) -> str | None:
        """The next command. ``plan()`` is the planner's plan from the current state (called only
        when needed: replanning costs up to seconds); ``admissible`` the state's commands."""
        holds_one = self.holding is not None and self.target is not None and _kind(self.holding) == _kind(self.target)
        if self.target is None or self.is_seen(self.target) or holds_one:
            steps = plan()
            if not steps:
                return None
            self.verb, self.target = needed_step(steps)
            if self.target is None or self.is_seen(self.target):
                return steps[0]
        return self._fetch(admissible) or self._explore(admissible) or (plan() or [None])[0]

    def _fetch(self, admissible: list[str]) -> str | None:
        """Toward another seen instance of the needed kind (None: there is none to fetch)."""
        if self.verb == "take" and self.holding is not None:
            return None  # hands full: the planner's fallback puts it down
        commands = set(admissible)
        for obj, place in self.where.items():
            if _kind(obj) != _kind(self.target) or obj in self.placed or obj in self.unreachable:
                continue
            if self.location != place:
                if f"go to {place}" in commands:
                    return f"go to {place}"
                continue
            for command in (f"use {obj}" if self.verb == "use" else f"take {obj} from {place}", f"open {place}"):
                if command in commands:
                    return command
            self.unreachable.add(obj)  # shown here but not takeable: do not come back for it
        return None

    def _explore(self, admissible: list[str]) -> str | None:
        commands = set(admissible)
        here = self.location
        if here is not None and here not in self.opened and f"open {here}" in commands:
            return f"open {here}"
        for receptacle in self.order:
            searched = receptacle in self.visited and receptacle not in self.closed_when_visited
            if not searched and f"go to {receptacle}" in commands:
                return f"go to {receptacle}"
        return None
