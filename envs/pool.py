"""Many environments stepped side by side for rollouts (env → rollout).

The rollout engine holds one :class:`EnvPool` of ``num_envs`` copies of an env id and sends it batches
of ``(env_index, seed, options)`` resets and ``(env_index, action)`` steps. With ``num_workers=0``
every env lives in this process; with ``N > 0`` the envs are spread round-robin over N worker
processes (env ``i`` on worker ``i % N``) that step their envs while the others do, so a batch costs
the slowest worker's share instead of the sum.

Failures are reported, never hidden and never a hang: an env that raises gives that env's
:class:`StepResult` an ``error`` (the others in the batch are unaffected); a worker that dies or
exceeds ``timeout_s`` is killed and restarted, every env it held loses its episode, the requested
ones come back with ``error`` set and the others report ``error`` on their next step until reset.
:mod:`envs.ray_pool` offers the same interface on Ray actors, built on the same :class:`EnvHost`.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing as mp
import os
import time
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Any, Sequence

log = logging.getLogger(__name__)

ResetRequest = tuple[int, "int | None", "dict | None"]  # (env_index, seed, options)
StepRequest = tuple[int, str]  # (env_index, action)


@dataclass
class StepResult:
    """What one env answered to a reset or step. ``error`` set ⇒ the episode failed (and ``truncated`` is True)."""

    env_index: int
    observation: str
    reward: float = 0.0
    terminated: bool = False
    truncated: bool = False
    info: dict = field(default_factory=dict)
    error: str | None = None

    @classmethod
    def failed(cls, env_index: int, error: str) -> "StepResult":
        # truncated=True so a caller that only looks at done flags still ends the episode.
        return cls(env_index, "", 0.0, False, True, {"error": error}, error)


class EnvHost:
    """Holds the envs of one process (or Ray actor) by global index and runs batches on them."""

    def __init__(self, env_id: str, indices: Sequence[int], env_kwargs: dict | None, import_modules: Sequence[str]):
        import gymnasium

        import envs  # noqa: F401  registers agent_rl/* ids

        for module in import_modules:
            importlib.import_module(module)
        self.envs = {i: _make_env(gymnasium, env_id, env_kwargs or {}) for i in indices}
        self._broken: dict[int, str] = {}  # env index → why its episode is lost until the next reset

    def pid(self) -> int:
        return os.getpid()

    def reset(self, requests: Sequence[ResetRequest]) -> list[StepResult]:
        results = []
        for index, seed, options in requests:
            try:
                obs, info = self.envs[index].reset(seed=seed, options=options)
                self._broken.pop(index, None)
                results.append(StepResult(index, obs, 0.0, False, False, info))
            except Exception as exc:
                results.append(self._fail(index, "reset", exc))
        return results

    def step(self, actions: Sequence[StepRequest]) -> list[StepResult]:
        results = []
        for index, action in actions:
            if index in self._broken:
                results.append(StepResult.failed(index, self._broken[index]))
                continue
            try:
                obs, reward, terminated, truncated, info = self.envs[index].step(action)
                results.append(StepResult(index, obs, float(reward), bool(terminated), bool(truncated), info))
            except Exception as exc:
                results.append(self._fail(index, "step", exc))
        return results

    def get_attr(self, request: tuple[int, str]) -> Any:
        index, name = request
        return getattr(self.envs[index].unwrapped, name)

    def close(self, _payload: Any = None) -> None:
        for env in self.envs.values():
            try:
                env.close()
            except Exception:  # closing must reach every env
                log.exception("closing an env failed")

    def _fail(self, index: int, what: str, exc: Exception) -> StepResult:
        error = f"env {index} raised in {what}: {type(exc).__name__}: {exc}\n{traceback.format_exc()}"
        self._broken[index] = f"env {index}'s previous {what} failed ({type(exc).__name__}: {exc}); reset it"
        return StepResult.failed(index, error)


def _make_env(gymnasium, env_id: str, env_kwargs: dict):
    # gymnasium.make takes `max_episode_steps` for its own TimeLimit and never passes it on, so an env
    # with its own step limit (ALFWorld: 50) would still stop at that limit; give it to the env instead.
    kwargs = dict(env_kwargs)
    limit = kwargs.pop("max_episode_steps", None)
    env = gymnasium.make(env_id, **kwargs)
    if limit is not None:
        if hasattr(env.unwrapped, "max_episode_steps"):
            env.unwrapped.max_episode_steps = limit
        else:
            env = gymnasium.wrappers.TimeLimit(env, limit)
    return env


def _worker_main(conn, env_id, indices, env_kwargs, import_modules) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        host = EnvHost(env_id, indices, env_kwargs, import_modules)
    except BaseException as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
        return
    conn.send(("ok", os.getpid()))
    while True:
        try:
            cmd, payload = conn.recv()
        except (EOFError, OSError):  # the pool went away
            break
        try:
            conn.send(("ok", getattr(host, cmd)(payload)))
        except BaseException as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
        if cmd == "close":
            break


class _Worker:
    """One worker process and its pipe (main-process side)."""

    def __init__(self, ctx, rank: int, indices: list[int], args: tuple, startup_timeout_s: float):
        self.rank, self.indices = rank, indices
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, *args), daemon=True,
                                   name=f"agent-rl-env-worker-{rank}")
        self.process.start()
        child.close()
        self.startup_timeout_s = startup_timeout_s

    def wait_ready(self) -> None:
        status, payload = self.receive(time.monotonic() + self.startup_timeout_s)
        if status != "ok":
            self.kill()
            raise RuntimeError(f"env worker {self.rank} could not build its envs {self.indices}: {payload}")
        self.pid = payload

    def receive(self, deadline: float | None) -> tuple[str, Any]:
        """("ok", value) | ("error", traceback) | ("crash", why); never blocks past the deadline."""
        if self.conn.closed:  # killed earlier (a restart that failed to start)
            return "crash", f"is not running (exit code {self.process.exitcode})"
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready = wait([self.conn, self.process.sentinel], timeout)
        if self.conn in ready:
            try:
                return self.conn.recv()
            except (EOFError, OSError):
                pass
        if not ready:
            return "crash", "did not answer within timeout_s and was killed"
        self.process.join(1.0)
        return "crash", f"died (exit code {self.process.exitcode})"

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5.0)
        self.conn.close()


class PoolFront:
    """What EnvPool and RayEnvPool share: the reset/step contract and its bookkeeping.

    A subclass provides ``num_envs``, ``_closed``, ``_lost`` (env index → why its episode was lost with a
    worker), ``_run(cmd, items)`` and ``close()``. An env whose episode was lost keeps answering
    ``step`` with that error until it is reset.
    """

    def reset(self, requests: Sequence[ResetRequest]) -> list[StepResult]:
        requests = [(int(i), seed, options) for i, seed, options in requests]
        self._check_indices([r[0] for r in requests])
        for index, _seed, _options in requests:
            self._lost.pop(index, None)
        return self._run("reset", requests)

    def step(self, actions: Sequence[StepRequest]) -> list[StepResult]:
        actions = [(int(i), action) for i, action in actions]
        self._check_indices([a[0] for a in actions])
        lost = {i: StepResult.failed(i, self._lost[i]) for i, _ in actions if i in self._lost}
        results = self._run("step", [a for a in actions if a[0] not in lost])
        by_index = {r.env_index: r for r in results}
        by_index.update(lost)
        return [by_index[i] for i, _ in actions]

    def worker_of(self, env_index: int) -> int | None:
        """The worker (process or actor) that holds env ``env_index``; None in-process. Steps and resets of
        envs on different workers may run concurrently (the rollout's overlap of env steps and generation)."""
        return env_index % self.num_workers if self.num_workers else None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_indices(self, indices: list[int]) -> None:
        name = type(self).__name__
        if self._closed:
            raise RuntimeError(f"{name} is closed")
        bad = [i for i in indices if not 0 <= i < self.num_envs]
        if bad:
            raise IndexError(f"{name} env indices {bad} out of range: the pool has {self.num_envs} envs")
        if len(set(indices)) != len(indices):
            raise ValueError(f"{name} got the same env index twice in one batch: {indices}")


class EnvPool(PoolFront):
    """``num_envs`` copies of ``env_id``, in-process (``num_workers=0``) or over worker processes.

    ``import_modules`` are imported (in every worker) before ``gymnasium.make``, for envs registered
    outside agent-rl. ``timeout_s`` bounds one batch on one worker (None: no bound); ``start_method``
    is the multiprocessing start method ("spawn": safe with threads and C extensions).
    """

    def __init__(self, env_id: str, num_envs: int, env_kwargs: dict | None = None, num_workers: int = 0,
                 import_modules: Sequence[str] = (), *, timeout_s: float | None = 300.0,
                 start_method: str = "spawn", startup_timeout_s: float = 300.0):
        if not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"EnvPool num_envs must be a positive int, got {num_envs!r}")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"EnvPool num_workers must be an int >= 0 (0 = in-process), got {num_workers!r}")
        self.env_id, self.num_envs = env_id, num_envs
        self.num_workers = min(num_workers, num_envs)
        self.timeout_s = timeout_s
        self.restarts = 0
        self._args = (env_id, env_kwargs or {}, tuple(import_modules))
        self._lost: dict[int, str] = {}  # env index → why its episode was lost with a worker
        self._closed = False
        self._host: EnvHost | None = None
        self._workers: list[_Worker] = []
        if self.num_workers == 0:
            self._host = EnvHost(env_id, range(num_envs), env_kwargs, import_modules)
            return
        self._ctx = mp.get_context(start_method)
        self._startup_timeout_s = startup_timeout_s
        try:
            # Start all, then wait for all: workers build their envs concurrently.
            self._workers = [self._spawn(rank) for rank in range(self.num_workers)]
            for worker in self._workers:
                worker.wait_ready()
        except BaseException:
            self.close()
            raise

    # -- public API ---------------------------------------------------------------------------------

    def get_attr(self, name: str, env_index: int = 0) -> Any:
        """An attribute of one env's ``unwrapped`` env (e.g. ``num_tasks``, ``task_ids``)."""
        self._check_indices([env_index])
        if self._host is not None:
            return self._host.get_attr((env_index, name))
        worker = self._workers[env_index % self.num_workers]
        status, payload = self._call(worker, "get_attr", (env_index, name))
        if status != "ok":
            raise RuntimeError(f"get_attr({name!r}) on env {env_index} failed: {payload}")
        return payload

    def worker_pids(self) -> list[int]:
        return [w.pid for w in self._workers]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._host is not None:
            self._host.close()
        for worker in self._workers:
            try:
                if worker.process.is_alive():
                    worker.conn.send(("close", None))
                    worker.receive(time.monotonic() + 10.0)
            except (OSError, EOFError, ValueError):
                pass
            worker.kill()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # -- internals ----------------------------------------------------------------------------------

    def _run(self, cmd: str, items: list) -> list[StepResult]:
        if not items:
            return []
        if self._host is not None:
            return getattr(self._host, cmd)(items)
        per_worker: dict[int, list] = {}
        for item in items:
            per_worker.setdefault(item[0] % self.num_workers, []).append(item)
        # Send every batch before reading any answer, so the workers run concurrently.
        sent = {}
        for rank, batch in per_worker.items():
            try:
                self._workers[rank].conn.send((cmd, batch))
                sent[rank] = batch
            except (OSError, ValueError) as exc:
                sent[rank] = batch  # the receive below sees the dead process
                log.warning("sending to env worker %d failed: %s", rank, exc)
        deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
        # Read every answer before restarting anyone: a restart takes seconds and must not eat
        # into the other workers' deadline.
        answers = {}
        try:
            for rank in sent:
                answers[rank] = self._workers[rank].receive(deadline)
        except BaseException:
            # Interrupted (Ctrl-C) with replies still owed: a later call would read them as its own.
            # Replace those workers; their envs' episodes are reported lost on the next step.
            for rank in sent:
                if rank not in answers:
                    self._worker_failed(rank, cmd, [], "was interrupted before it answered")
            raise
        results: list[StepResult] = []
        try:
            for rank, (status, payload) in answers.items():
                if status == "ok":
                    results.extend(payload)
                elif status == "error":  # the worker lives but could not answer (e.g. an unpicklable info)
                    results.extend(self._batch_failed(rank, cmd, sent[rank], payload))
                else:
                    results.extend(self._worker_failed(rank, cmd, sent[rank], payload))
        except BaseException as exc:  # a crashed worker could not be restarted: this batch's results are lost,
            # the other workers' envs included (they did step): their episodes say so until reset
            for rank, batch in sent.items():
                for item in batch:
                    self._lost.setdefault(item[0], f"the {cmd} results of this batch were lost ({type(exc).__name__}: "
                                                   f"{exc}); this episode is lost: reset it")
            raise
        order = {item[0]: n for n, item in enumerate(items)}
        return sorted(results, key=lambda r: order[r.env_index])

    def _call(self, worker: _Worker, cmd: str, payload: Any) -> tuple[str, Any]:
        worker.conn.send((cmd, payload))
        deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
        status, result = worker.receive(deadline)
        if status == "crash":
            self._worker_failed(worker.rank, cmd, [], result)
        return status, result

    def _batch_failed(self, rank: int, cmd: str, batch: list, why: str) -> list[StepResult]:
        reason = f"env worker {rank} could not return the {cmd} results of envs {[b[0] for b in batch]}: {why}"
        log.error("%s", reason)
        for item in batch:
            self._lost[item[0]] = f"{reason}; this episode is lost: reset it"
        return [StepResult.failed(item[0], reason) for item in batch]

    def _worker_failed(self, rank: int, cmd: str, batch: list, why: str) -> list[StepResult]:
        worker = self._workers[rank]
        reason = f"env worker {rank} (pid {getattr(worker, 'pid', None)}) {why}"
        log.error("%s; restarting it, the episodes of envs %s are lost", reason, worker.indices)
        worker.kill()
        requested = {item[0] for item in batch}
        for index in worker.indices:  # the new worker's envs start fresh: every old episode is gone
            when = f"during {cmd} of env {index}" if index in requested else f"while env {index} was idle"
            self._lost[index] = f"{reason} {when}; the worker was restarted and this episode is lost: reset it"
        self.restarts += 1
        self._workers[rank] = self._spawn(rank)  # one that fails to start is found dead, and replaced, next time
        self._workers[rank].wait_ready()
        return [StepResult.failed(item[0], f"{reason} during {cmd} of env {item[0]}; the worker was restarted "
                                           f"and this episode is lost") for item in batch]

    def _spawn(self, rank: int) -> _Worker:
        indices = [i for i in range(self.num_envs) if i % self.num_workers == rank]
        env_id, env_kwargs, modules = self._args
        return _Worker(self._ctx, rank, indices, (env_id, indices, env_kwargs, modules), self._startup_timeout_s)
