"""The rollout's policy in a Ray actor (rollout ← policy ← weight sync, across processes or nodes).

    rollout --prompt token ids, SamplingParams--> RayPolicy.generate --ray--> actor: inner policy.generate
    learner --named tensors--> RayPolicy.sync_weights --ray.put(CPU state dict)--> actor: inner.sync_weights
    learner --peft adapter--> RayPolicy.sync_adapter --adapter files' bytes--> actor: inner.sync_adapter
                               (only when the inner backend serves adapters: vllm with lora_rank)

:class:`RayPolicy` is a :class:`~trainers.policies.base.Policy` whose generation runs in one Ray actor
that builds any registered backend by name (``make_policy(inner, **inner_kwargs)`` inside the actor:
``hf`` or ``vllm``). The actor holds its *own* copy of the weights, loaded from a model name/path (the
driver's live ``nn.Module`` cannot be shipped), so the trainer must sync weights after every update:
the state dict goes to Ray's object store once, as CPU tensors, and the actor loads it in place.

A dead actor (killed, out of memory, its node lost) surfaces as ``RayActorError`` on the next call and
is re-raised as a ``RuntimeError`` that says what died and how to go on; it is not restarted, since a
fresh actor would hold the start weights and silently roll out a stale policy. Ray is imported only
inside functions, when a RayPolicy is built.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Any, Iterable

from envs.ray_pool import init_ray
from trainers.policies.base import POLICIES, Generation, SamplingParams

log = logging.getLogger(__name__)


class PolicyHost:
    """What runs inside the actor: one inner backend and counters for :meth:`RayPolicy.info`."""

    def __init__(self, inner: str, inner_kwargs: dict, num_threads: int | None, seed: int | None = None):
        import torch

        if num_threads:  # the CPUs this actor reserved; torch would otherwise take every core of the node
            torch.set_num_threads(num_threads)
        if seed is not None:  # unseeded sampling (hf) draws from this RNG: seeded, the actor's rollouts repeat
            torch.manual_seed(seed)
        from trainers.policies import make_policy

        self.inner = inner
        self.policy = make_policy(inner, **inner_kwargs)
        self.generate_calls = 0
        self.sync_calls = 0

    def info(self) -> dict[str, Any]:
        import ray

        model = getattr(self.policy, "model", None)
        device = str(next(model.parameters()).device) if hasattr(model, "parameters") else None
        return {"pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id(), "backend": self.inner,
                "device": device, "generate_calls": self.generate_calls, "sync_calls": self.sync_calls}

    def tokenizer(self):
        return self.policy.tokenizer

    def generate(self, prompts: list[list[int]], params: SamplingParams, choices=None) -> list[list[Generation]]:
        self.generate_calls += 1
        if choices is None:  # a backend written before choices existed still works unconstrained
            return self.policy.generate(prompts, params)
        return self.policy.generate(prompts, params, choices=choices)

    def sync_weights(self, state: dict) -> None:
        self.policy.sync_weights(state.items())
        self.sync_calls += 1

    def supports_adapters(self) -> bool:
        return callable(getattr(self.policy, "sync_adapter", None)) and getattr(self.policy, "lora_rank", None) is not None

    def sync_adapter(self, files: dict[str, bytes]) -> None:
        """Write the adapter's files into a fresh folder on this node; the inner backend loads
        (and copies) them, so the folder goes right after."""
        import shutil
        import tempfile
        from pathlib import Path

        folder = Path(tempfile.mkdtemp(prefix="agent_rl_adapter_in_actor_"))
        try:
            for name, data in files.items():
                (folder / name).write_bytes(data)
            self.policy.sync_adapter(str(folder))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        self.sync_calls += 1

    def weights_digest(self) -> dict[str, str]:
        """sha256 of every parameter's bytes: compare the actor's weights with the trainer's without
        shipping them (only an inner policy that exposes its ``model`` can answer)."""
        model = getattr(self.policy, "model", None)
        if not hasattr(model, "named_parameters"):
            raise TypeError(f"the {self.inner!r} backend does not expose its torch model; weights_digest needs 'hf'")
        return weights_digest(model.named_parameters())

    def close(self) -> None:
        self.policy.close()


def weights_digest(named_tensors: Iterable[tuple[str, Any]]) -> dict[str, str]:
    """sha256 of each tensor's bytes (dtype included), by name; equal digests mean bit-equal weights."""
    import torch

    out = {}
    for name, t in named_tensors:
        # bf16 has no numpy dtype: hash the raw bytes
        raw = t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)  # [numel × itemsize]
        out[name] = hashlib.sha256(str(t.dtype).encode() + raw.numpy().tobytes()).hexdigest()
    return out


@POLICIES.register("ray")
class RayPolicy:
    """A :class:`~trainers.policies.base.Policy` whose ``inner`` backend runs in a Ray actor.

    Args:
        inner: the backend the actor builds (``"hf"``, ``"vllm"``, any registered name but ``"ray"``).
        inner_kwargs: its keyword arguments; ``model`` must be a name/path (the actor loads its own
            copy). A relative local path is made absolute here, since the actor's working directory
            differs; on a multi-node cluster the path must exist on the actor's node.
        tokenizer: the driver-side tokenizer the rollout renders prompts with; fetched from the
            actor when None. It must match the actor's (same model name).
        num_cpus, num_gpus: what the actor reserves in Ray's scheduler (``num_gpus=1`` puts the inner
            backend on the GPU Ray assigns; pass ``device="cuda"`` in ``inner_kwargs`` for ``hf``).
        env_vars: environment variables for the actor's process (e.g. vLLM's settings).
        ray_init_kwargs: for ``ray.init`` if no Ray session is up yet.
        startup_timeout_s: how long the actor may take to be placed and load its model.
        seed: seeds the actor's torch RNG, which unseeded sampling draws from (the trainer passes train.seed).
    """

    description = "ray"

    def __init__(self, inner: str = "hf", inner_kwargs: dict | None = None, *, tokenizer: Any = None,
                 num_cpus: float = 0.0, num_gpus: float = 0.0, env_vars: dict[str, str] | None = None,
                 ray_init_kwargs: dict | None = None, startup_timeout_s: float = 900.0, seed: int | None = None):
        if inner == "ray":
            raise ValueError("RayPolicy(inner='ray') would nest actors; name the backend the actor runs: "
                             "'hf' or 'vllm'")
        POLICIES.get(inner)  # an unknown name fails here, with did-you-mean, not inside the actor
        if num_cpus < 0 or num_gpus < 0:
            raise ValueError(f"RayPolicy num_cpus/num_gpus must be >= 0, got {num_cpus!r}/{num_gpus!r}")
        kwargs = dict(inner_kwargs or {})
        model = kwargs.get("model")
        if not isinstance(model, (str, os.PathLike)):
            raise TypeError(f"RayPolicy inner_kwargs['model'] must be a model name or path that the actor loads, "
                            f"got {type(model).__name__}; an in-memory model cannot be shipped to an actor "
                            f"(save it with save_pretrained and pass the folder)")
        if os.path.exists(model):
            kwargs["model"] = os.path.abspath(model)
        self._ray = ray = init_ray(ray_init_kwargs, user="RayPolicy", instead="set ray.rollout_actor=false")
        self.inner, self.description = inner, f"ray:{inner}:{kwargs['model']}"
        self._options = {"num_cpus": num_cpus, "num_gpus": num_gpus, "max_restarts": 0}
        self._check_feasible()
        options = dict(self._options)
        if env_vars:
            options["runtime_env"] = {"env_vars": {k: str(v) for k, v in env_vars.items()}}
        threads = int(num_cpus) if num_cpus >= 1 else None
        self._actor = ray.remote(PolicyHost).options(**options).remote(inner, kwargs, threads, seed)
        self._closed = False
        self._supports_adapters: bool | None = None
        try:
            self._info = ray.get(self._actor.info.remote(), timeout=startup_timeout_s)
        except ray.exceptions.GetTimeoutError as exc:
            self.close()
            raise RuntimeError(
                f"the Ray rollout actor ({inner}, {kwargs['model']}) was not ready within {startup_timeout_s}s: "
                f"either it waits for {self._options} that are busy (free resources: "
                f"{ray.available_resources()}) or loading the model is that slow. Fix: lower ray.rollout_num_cpus/"
                f"ray.rollout_num_gpus, free the cluster, or raise startup_timeout_s"
            ) from exc
        except ray.exceptions.RayError as exc:
            self.close()
            raise RuntimeError(f"the Ray rollout actor could not build the {inner!r} policy for "
                               f"{kwargs['model']!r}: {exc}") from exc
        self.tokenizer = tokenizer if tokenizer is not None else ray.get(self._actor.tokenizer.remote())
        log.info("rollout policy %s runs in Ray actor pid %s on node %s (%s)", inner, self._info["pid"],
                 self._info["node_id"], self._info["device"])

    # -- the Policy protocol ----------------------------------------------------------------------

    def generate(self, prompts: list[list[int]], params: SamplingParams, choices=None) -> list[list[Generation]]:
        return self._call("generate", prompts, params, choices)

    def sync_weights(self, named_tensors: Iterable[tuple[str, Any]]) -> None:
        """Ship the weights once through the object store as CPU tensors; the actor loads them in place."""
        state = {name: t.detach().to("cpu") for name, t in named_tensors}
        ref = self._ray.put(state)
        del state
        try:
            self._call("sync_weights", ref)
        finally:
            del ref  # the object store frees the copy once the actor has loaded it

    @property
    def supports_adapters(self) -> bool:
        """Whether the inner backend takes a LoRA adapter alone (vllm started with lora_rank)."""
        if self._supports_adapters is None:
            self._supports_adapters = bool(self._call("supports_adapters"))
        return self._supports_adapters

    def sync_adapter(self, adapter: Any) -> None:
        """Ship a peft adapter (a ``PeftModel``'s active adapter, or an adapter folder) to the actor:
        its two files' bytes, a few MB, instead of the whole model."""
        import tempfile
        from pathlib import Path

        from trainers.policies.vllm import ADAPTER_FILES, adapter_folder

        if not self.supports_adapters:
            raise RuntimeError(f"the Ray rollout actor's {self.inner!r} backend takes no LoRA adapter; "
                               f"sync merged weights with sync_weights, or use the vllm backend with lora_rank")
        with tempfile.TemporaryDirectory(prefix="agent_rl_adapter_") as tmp:
            folder = adapter_folder(adapter, Path(tmp))
            files = {f: (folder / f).read_bytes() for f in ADAPTER_FILES}
        self._call("sync_adapter", files)

    def close(self) -> None:
        if getattr(self, "_closed", True):
            return
        self._closed = True
        try:
            self._ray.get(self._actor.close.remote(), timeout=60.0)
        except Exception:  # a dead or stuck actor is killed below anyway
            pass
        self._ray.kill(self._actor)

    # -- inspection -------------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """The actor's pid, node, device and how many generate/sync calls it served."""
        return self._call("info")

    def weights_digest(self) -> dict[str, str]:
        """sha256 per parameter of the actor's model (compare with :func:`weights_digest` of the trainer's)."""
        return self._call("weights_digest")

    # -- internals --------------------------------------------------------------------------------

    def _call(self, method: str, *args: Any) -> Any:
        ray = self._ray
        if self._closed:
            raise RuntimeError(f"RayPolicy.{method}: the policy is closed; build a new one")
        try:
            return ray.get(getattr(self._actor, method).remote(*args))
        except ray.exceptions.RayActorError as exc:
            self._closed = True  # every later call would fail the same way: say so at once
            raise RuntimeError(
                f"the Ray rollout actor ({self.inner}, pid {self._info['pid']}) died during {method}: "
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}. It is not restarted, a fresh "
                f"one would hold stale weights. Likely causes: out of memory (lower rollout.tasks_per_step or "
                f"rollout.max_new_tokens), the actor was killed, or its node left the cluster; see `ray logs` or "
                f"/tmp/ray/session_latest/logs. Fix the cause and resume the run from its last checkpoint "
                f"(same train.run_dir, train.resume=auto)"
            ) from exc

    def _check_feasible(self) -> None:
        # Ray waits forever for an actor no node can hold; refuse that at once with the fix.
        total = self._ray.cluster_resources()
        for key, want in (("CPU", self._options["num_cpus"]), ("GPU", self._options["num_gpus"])):
            if want > total.get(key, 0):
                raise RuntimeError(
                    f"the Ray rollout actor asks for {want} {key} but the whole cluster has {total.get(key, 0)} "
                    f"({total}); it could never start. Fix: set ray.rollout_num_{key.lower()}s to at most that "
                    f"(0 GPUs runs generation on the actor's CPU), or add nodes with {key}s"
                )
