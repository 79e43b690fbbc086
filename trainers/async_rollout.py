"""Where each step's batch comes from: now (synchronous), or from a rollout that ran during the last update.

Data flow: **rollout stream** → TrajectoryBatch → advantages → learner → ``weights_changed`` (weight sync).

Synchronous (the default), step k: play the batch with θ_k, update to θ_{k+1}, sync θ_{k+1} to the engine.

One-step-off-policy (``train.async_rollouts=true``, ``train.max_staleness=1``): when step k's batch is
handed over, step k+1's rollout starts at once, in a background thread, with the engine's θ_k, and runs
while the learner updates on step k's batch. The learner's new weights reach the engine when that rollout
has finished (never in the middle of one), just before the next one starts. So batch k (k ≥ 1) was sampled
by θ_{k-1} while the learner stands at θ_k: staleness 1, and the ratios must use θ_{k-1}'s logprobs, which
:class:`BehaviourWeights` keeps on every learner rank (``Learner.update(behaviour=...)``).

``max_staleness=0`` runs the same thread machinery but starts each rollout when its step begins: it is the
synchronous trainer (tested equal). The engine must hold its own weights (vLLM, or a Ray rollout actor):
the in-process hf policy *is* the model being trained and cannot generate during the update.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable


class RolloutStream:
    """``produce(step) -> (trajectories, metrics)`` plays one step's batch; ``sync()`` pushes the learner's
    weights to the engine; ``release()``, when given, frees the engine's memory once a batch is played and no
    rollout is in flight (vLLM sleep mode: the next ``sync()`` wakes it). ``next(step)`` returns step ``step``'s
    batch."""

    def __init__(self, produce: Callable[[int], Any], sync: Callable[[], None], *, last_step: int,
                 asynchronous: bool = False, max_staleness: int = 1, release: Callable[[], None] | None = None):
        if max_staleness not in (0, 1):
            raise ValueError(f"max_staleness must be 0 or 1 (one rollout in flight at a time), got {max_staleness}")
        self.produce, self.sync, self.last_step, self.release = produce, sync, last_step, release
        self.ahead = 1 if asynchronous and max_staleness == 1 else 0  # rollouts started before their step
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="rollout") if asynchronous else None
        self.pending: tuple[int, Future] | None = None
        self.dirty = False  # the learner's weights changed since the engine last got them

    def _launch(self, step: int) -> None:
        if self.dirty:
            self.sync()
            self.dirty = False
        if self.executor is None:
            self.pending = (step, _done(self.produce(step)))
        else:
            self.pending = (step, self.executor.submit(self.produce, step))

    def next(self, step: int):
        """Step ``step``'s (trajectories, metrics); with ``ahead`` 1, step+1's rollout is started before returning."""
        if self.pending is None or self.pending[0] != step:
            self._launch(step)  # the first step of this process (or a synchronous stream)
        result = self.pending[1].result()
        self.pending = None
        if self.ahead and step + 1 < self.last_step:
            self._launch(step + 1)  # with the engine's current weights: this step's update is not applied yet
        elif self.release is not None:
            self.release()  # the GPU is the learner's until the weight sync
        return result

    def weights_changed(self) -> None:
        """The learner stepped: sync now, or (a rollout in flight) just before the next rollout starts."""
        self.dirty = True
        if self.pending is None:
            self.sync()
            self.dirty = False

    def when_idle(self, fn: Callable[..., Any], *args, **kwargs) -> Any:
        """Run ``fn`` (periodic eval) on an idle engine that holds the latest weights: waits for the rollout
        in flight, whose batch is kept for its step."""
        if self.pending is not None:
            step, future = self.pending
            self.pending = (step, _done(future.result()))
        if self.dirty:
            self.sync()
            self.dirty = False
        return fn(*args, **kwargs)

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)


def _done(value: Any) -> Future:
    f: Future = Future()
    f.set_result(value)
    return f


class BehaviourWeights:
    """On every learner rank: the weights that sampled the batch about to be learned from, as
    ``Learner.update(behaviour=...)`` takes them. Synchronous: None (the current weights). One step off
    policy: the weights at the start of the previous update, except for this process's first batch
    (sampled with the current weights before any update)."""

    def __init__(self, learner, *, stale: bool):
        self.learner, self.stale = learner, stale
        self.previous: dict | None = None

    def for_update(self) -> dict | None:
        if not self.stale:
            return None
        behaviour, self.previous = self.previous, self.learner.snapshot()
        return behaviour
