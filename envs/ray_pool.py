"""The env pool on Ray actors (env → rollout), for rollouts spread over a Ray cluster.

Same interface and failure contract as :class:`envs.pool.EnvPool`: envs are spread round-robin over
``num_workers`` actors (env ``i`` on actor ``i % N``), each an :class:`envs.pool.EnvHost`; an actor
that dies or exceeds ``timeout_s`` is killed and replaced, and its envs' episodes come back with
``StepResult.error`` set instead of hanging. Ray is imported only here, when a pool is built.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

from envs.pool import EnvHost, PoolFront, StepResult

log = logging.getLogger(__name__)



def init_ray(init_kwargs: dict | None = None, *, user: str, instead: str):
    """The ``ray`` module, initialised with ``init_kwargs`` unless a session is already up: the env
    pool and the rollout actor (trainers.policies.ray_actor) share one session, whichever starts first.
    ``user``/``instead`` name who needs Ray and the way around it, for the error without ray."""
    try:
        import ray
    except ImportError as exc:
        raise ImportError(f"{user} needs ray ({exc}); `pip install 'agent-rl[ray]'` or {instead}") from exc
    if not ray.is_initialized():
        check_reachable((init_kwargs or {}).get("address"))
        ray.init(**(init_kwargs or {}))
    return ray


def check_reachable(address: str | None, timeout_s: float = 10.0) -> None:
    """Fail in seconds, not after minutes of Ray's retries, when ``address`` (``host:port`` or
    ``ray://host:port``) accepts no connection. ``None``/``"auto"``/``"local"`` are left to Ray."""
    import socket

    if not address or address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"ray.address must be host:port, ray://host:port, auto or null; got {address!r}")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        raise ConnectionError(
            f"ray.address={address!r}: nothing accepts connections at {host}:{port} ({exc}). Fix: start the "
            f"cluster (`ray start --head` on that machine), correct the address, or use ray.address=null for "
            f"a local Ray"
        ) from None

class RayEnvPool(PoolFront):
    """``num_envs`` copies of ``env_id`` on Ray actors.

    ``num_workers=0`` means one actor per CPU Ray reports (at most ``num_envs``). Ray is initialised
    with ``ray_init_kwargs`` if it is not already. ``actor_options`` go to ``.options()`` of every
    actor (default ``{"num_cpus": 1}``); an actor that cannot be placed within ``startup_timeout_s``
    is an error that says so, not a hang.
    """

    def __init__(self, env_id: str, num_envs: int, env_kwargs: dict | None = None, num_workers: int = 0,
                 import_modules: Sequence[str] = (), *, timeout_s: float | None = 300.0,
                 startup_timeout_s: float = 300.0, actor_options: dict | None = None,
                 ray_init_kwargs: dict | None = None):
        ray = init_ray(ray_init_kwargs, user="RayEnvPool", instead="use envs.pool.EnvPool")
        if not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"RayEnvPool num_envs must be a positive int, got {num_envs!r}")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"RayEnvPool num_workers must be an int >= 0 (0 = one per Ray CPU), got {num_workers!r}")
        self._ray = ray
        if num_workers == 0:
            num_workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.env_id, self.num_envs = env_id, num_envs
        self.num_workers = min(num_workers, num_envs)
        self.timeout_s, self.startup_timeout_s = timeout_s, startup_timeout_s
        self.restarts = 0
        self._args = (env_id, env_kwargs or {}, tuple(import_modules))
        # max_restarts=0: Ray must not revive an actor behind our back, the pool reports the lost episodes.
        self._actor_options = {"num_cpus": 1, **(actor_options or {}), "max_restarts": 0}
        self._actor_cls = ray.remote(RayEnvHost).options(**self._actor_options)
        self._lost: dict[int, str] = {}
        self._closed = False
        self._actors: list[Any] = [None] * self.num_workers
        self._pids: list[int | None] = [None] * self.num_workers
        self._nodes: list[str | None] = [None] * self.num_workers  # Ray node id of each actor
        try:
            pending = [self._spawn(rank) for rank in range(self.num_workers)]
            for rank, ref in enumerate(pending):
                self._pids[rank], self._nodes[rank] = self._wait_ready(rank, ref)
        except BaseException:
            self.close()
            raise

    # -- public API (same as EnvPool) -------------------------------------------------------------

    def get_attr(self, name: str, env_index: int = 0) -> Any:
        self._check_indices([env_index])
        actor = self._actors[env_index % self.num_workers]
        return self._ray.get(actor.get_attr.remote((env_index, name)), timeout=self.timeout_s)

    def worker_pids(self) -> list[int]:
        return list(self._pids)

    def worker_nodes(self) -> list[str]:
        """The Ray node id each env actor runs on (a multi-node cluster spreads them)."""
        return list(self._nodes)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for actor in self._actors:
            if actor is None:
                continue
            try:
                self._ray.get(actor.close.remote(None), timeout=10.0)
            except Exception:  # a dead or stuck actor is killed below anyway
                pass
            self._ray.kill(actor)

    # -- internals --------------------------------------------------------------------------------

    def _spawn(self, rank: int):
        indices = [i for i in range(self.num_envs) if i % self.num_workers == rank]
        env_id, env_kwargs, modules = self._args
        self._actors[rank] = self._actor_cls.remote(env_id, indices, env_kwargs, modules)
        return self._actors[rank].where.remote()

    def _wait_ready(self, rank: int, ref) -> tuple[int, str]:
        ray = self._ray
        try:
            return ray.get(ref, timeout=self.startup_timeout_s)
        except ray.exceptions.GetTimeoutError as exc:
            raise RuntimeError(
                f"Ray env actor {rank} did not start within {self.startup_timeout_s}s: the cluster may lack free "
                f"resources for {self.num_workers} actors with options {self._actor_options}; lower num_workers or "
                f"actor_options['num_cpus']"
            ) from exc
        except ray.exceptions.RayError as exc:
            raise RuntimeError(f"Ray env actor {rank} could not build its envs: {exc}") from exc

    def _run(self, cmd: str, items: list) -> list[StepResult]:
        if not items:
            return []
        ray = self._ray
        per_worker: dict[int, list] = {}
        for item in items:
            per_worker.setdefault(item[0] % self.num_workers, []).append(item)
        refs = {rank: getattr(self._actors[rank], cmd).remote(batch) for rank, batch in per_worker.items()}
        # One wait over all refs: the deadline is shared, and a slow actor does not delay reading the others.
        ready, _pending = ray.wait(list(refs.values()), num_returns=len(refs), timeout=self.timeout_s)
        ready = set(ready)
        results: list[StepResult] = []
        for rank, ref in refs.items():
            batch = per_worker[rank]
            if ref not in ready:
                results.extend(self._actor_failed(rank, cmd, batch, f"did not answer within timeout_s={self.timeout_s}s"))
                continue
            try:
                results.extend(ray.get(ref))
            except ray.exceptions.RayActorError as exc:
                results.extend(self._actor_failed(rank, cmd, batch, f"died ({type(exc).__name__})"))
            except ray.exceptions.RayError as exc:  # the actor lives but the call failed (e.g. unpicklable info)
                reason = f"Ray env actor {rank} could not return the {cmd} results: {exc}"
                for item in batch:
                    self._lost[item[0]] = f"{reason}; this episode is lost: reset it"
                results.extend(StepResult.failed(item[0], reason) for item in batch)
        order = {item[0]: n for n, item in enumerate(items)}
        return sorted(results, key=lambda r: order[r.env_index])

    def _actor_failed(self, rank: int, cmd: str, batch: list, why: str) -> list[StepResult]:
        reason = f"Ray env actor {rank} (pid {self._pids[rank]}) {why}"
        indices = [i for i in range(self.num_envs) if i % self.num_workers == rank]
        log.error("%s; restarting it, the episodes of envs %s are lost", reason, indices)
        self._ray.kill(self._actors[rank])
        self.restarts += 1
        self._pids[rank], self._nodes[rank] = self._wait_ready(rank, self._spawn(rank))
        requested = {item[0] for item in batch}
        for index in indices:
            when = f"during {cmd} of env {index}" if index in requested else f"while env {index} was idle"
            self._lost[index] = f"{reason} {when}; the actor was restarted and this episode is lost: reset it"
        return [StepResult.failed(item[0], f"{reason} during {cmd} of env {item[0]}; the actor was restarted "
                                           f"and this episode is lost") for item in batch]


class RayEnvHost(EnvHost):
    """An :class:`envs.pool.EnvHost` that can say where it runs."""

    def where(self) -> tuple[int, str]:
        import os

        import ray

        return os.getpid(), ray.get_runtime_context().get_node_id()
