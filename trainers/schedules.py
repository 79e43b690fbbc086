"""Schedules: pure functions of the training step, for the Hölder exponent p (and the LR).

Data flow: the trainer asks ``schedule(step)`` for this step's p before the **Hölder loss**.

``make_schedule(name, **params)`` returns a callable ``step -> float``. All shapes go from
``start`` to ``end`` over ``steps`` steps and hold ``end`` afterwards; the paper's
default is ``linear`` from 2 to −2. Progress x = min(step, steps)/steps ∈ [0, 1]:

* ``constant``: value
* ``linear``: start + (end − start)·x
* ``cosine``: end + (start − end)·(1 + cos(πx))/2
* ``quadratic``: start + (end − start)·x²  (slow start, fast finish)
* ``cubic``: start + (end − start)·(3x² − 2x³)  (the S-curve: slow at both ends)
* ``cubic_dec``: (start + end)/2 + (start − end)/2·(1 − 2x)³  (the inverse S: fast at both ends, flat
  through the midpoint). Named after the HölderPO authors' schedule: their source was not readable here,
  and this is the shape that gives the one value of theirs we have (p = +0.26 at step 37 of 150 on 2 → −2;
  ``cubic`` gives +1.39 there); for a symmetric range it is start·(1 − 2x)³
* ``step``: start before ``steps``, end from then on

Add one with ``@SCHEDULES.register("name")`` on a function ``x -> fraction of the way``.

:class:`PControl` is what the trainer asks each step: one of those schedules (``algo.p_at``), or
``adaptive``, the one p schedule that is not a function of the step alone: p starts at ``start`` and
walks toward ``end`` by (end − start)/steps per step while the last step's lowest off-policy
token-weight ESS (the normalised effective sample size of the Hölder mean's token weights, 1 =
uniform; the first, on-policy update always has 1) stays at or above ``target_ess``; a step whose
ESS fell below it moves p one increment back toward 0, where the weights are uniform (never past
the [start, end] range); a step without that signal (every update skipped) holds p. So p anneals as
far as the weights stay spread over the tokens; on 2 → −2 both moves point the same way while p > 0,
and the controller acts once p is negative.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from agent_rl.registry import Registry

Shape = Callable[[float], float]
SCHEDULES: Registry[Shape] = Registry("schedule")

SCHEDULES.register("linear")(lambda x: x)
SCHEDULES.register("cosine")(lambda x: (1.0 - math.cos(math.pi * x)) / 2.0)
SCHEDULES.register("quadratic")(lambda x: x * x)
SCHEDULES.register("cubic")(lambda x: 3 * x * x - 2 * x**3)
SCHEDULES.register("cubic_dec")(lambda x: (1.0 - (1.0 - 2.0 * x) ** 3) / 2.0)
SCHEDULES.register("step")(lambda x: 1.0 if x >= 1.0 else 0.0)


@dataclass(frozen=True)
class Schedule:
    """A schedule from ``start`` to ``end`` over ``steps`` steps with the given shape."""

    name: str
    start: float
    end: float
    steps: int

    def __call__(self, step: int) -> float:
        if step < 0:
            raise ValueError(f"schedule step must be >= 0, got {step}")
        if self.name == "constant" or self.steps == 0:
            return float(self.end if self.name != "constant" else self.start)
        x = min(step, self.steps) / self.steps
        return float(self.start + (self.end - self.start) * SCHEDULES.get(self.name)(x))


def make_schedule(name: str, **params: float) -> Schedule:
    """``make_schedule("linear", start=2.0, end=-2.0, steps=500)(250) == 0.0``.

    ``constant`` takes ``value``; every other shape takes ``start``, ``end``, ``steps``.
    """
    if name == "constant":
        unknown = set(params) - {"value", "steps"}
        if "value" not in params or unknown:
            raise ValueError(
                f"schedule 'constant' takes value=<float>, got {params}; e.g. make_schedule('constant', value=1.0)"
            )
        value = _finite("value", params["value"])
        return Schedule("constant", value, value, 0)
    SCHEDULES.get(name)  # unknown names answer with "did you mean"
    expected = {"start", "end", "steps"}
    if set(params) != expected:
        raise ValueError(
            f"schedule {name!r} takes exactly start, end, steps; got {sorted(params)}. "
            f"Example: make_schedule({name!r}, start=2.0, end=-2.0, steps=500)"
        )
    steps = params["steps"]
    if isinstance(steps, bool) or not float(steps).is_integer() or steps < 1:
        raise ValueError(
            f"schedule {name!r}: steps must be a positive integer (the number of training steps to "
            f"anneal over), got {steps!r}"
        )
    return Schedule(name, _finite("start", params["start"]), _finite("end", params["end"]), int(steps))


class PControl:
    """p for each training step: ``p_for(step)`` before the update, ``observe(metrics)`` after it;
    ``state()`` goes into the checkpoint and ``restore`` takes it back on resume."""

    def __init__(self, algo, total_steps: int):
        self.algo, self.total_steps = algo, total_steps
        self.adaptive = algo.p_schedule == "adaptive"
        self.inc = (algo.p_end - algo.p_start) / (algo.p_steps or max(total_steps, 1))
        self.p, self.last_ess = algo.p_start, None  # the last update's p and ESS

    def p_for(self, step: int) -> float:
        if not self.adaptive:
            return self.algo.p_at(step, self.total_steps)
        lo, hi = sorted((self.algo.p_start, self.algo.p_end))
        if self.last_ess is None:
            pass  # the first step of the run, or a step without off-policy updates: hold p
        elif self.last_ess >= self.algo.p_target_ess:
            self.p = min(max(self.p + self.inc, lo), hi)  # on toward p_end
        else:  # back toward 0, to spread the weights
            self.p = min(max(self.p - math.copysign(min(abs(self.inc), abs(self.p)), self.p), lo), hi)
        return self.p

    def observe(self, metrics: dict[str, float]) -> None:
        ess = metrics.get("loss/token_weight_ess_offpolicy")
        self.last_ess = float(ess) if ess is not None and math.isfinite(ess) else None

    def state(self) -> dict:
        return {"p_control": {"p": self.p, "last_ess": self.last_ess}} if self.adaptive else {}

    def restore(self, extra: dict) -> None:
        saved = extra.get("p_control")
        if self.adaptive and saved:
            self.p, self.last_ess = float(saved["p"]), saved["last_ess"]


def _finite(key: str, value: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"schedule parameter {key} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"schedule parameter {key} must be finite, got {value!r}")
    return v
