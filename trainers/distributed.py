"""Data parallelism for the learner over torch.distributed, launched with torchrun.

Place in the data flow: rank 0 runs env → rollout → TrajectoryBatch and **broadcasts** the batch;
every rank runs the learner's two passes on **its shard** of the batch's sequences; the per-token
logprobs are **all-gathered** so that each rank evaluates the same trajectory-level loss; the
gradients are **summed** over ranks before clipping and the optimizer step. Rank 0 then syncs
weights to the rollout engine, evaluates, checkpoints and logs.

Why the gradient stays exact: the learner's second pass back-propagates Σ_t g_t·logπ_t with
g_t = ∂loss/∂logπ_t of the *global* mini-batch loss (its normaliser counts every rank's tokens), so
each rank's accumulated gradient is its shard's share of one sum, and the all-reduce SUM of the
shares is the single-process gradient (not a mean of per-rank means when shards differ in size).

Two ways to hold the weights (``train.fsdp2``):

- replicated (default): every rank holds the whole model and AdamW state; a rank's shard of a batch is a
  set of packed variable-length micro-batches (zero-advantage sequences skipped), so ranks run different
  numbers of micro-batches, and the gradient is all-reduced once per update (what DDP's ``no_sync`` plus one
  reduction does). Rank 0's rollout side uses the trained model itself.
- FSDP2 (:meth:`DataParallel.shard_parameters`): ``fully_shard`` on each decoder layer and the root, so
  parameters, gradients and AdamW state are split over the ranks. FSDP2 all-gathers a layer's weights in
  every forward and reduce-scatters its gradient in every backward, so every rank must run the same number
  of forward and backward passes: a rank with fewer micro-batches runs padding passes on a two-token dummy
  (its backward carries a zero gradient), :meth:`DataParallel.lockstep`. The reduction is a SUM (divide
  factor 1) for the same reason as above. Rank 0's rollout side reads a full copy of the weights
  (:meth:`DataParallel.publish` refreshes it after each update, a collective), and checkpoints gather a full
  state dict (model and AdamW state, saved in the single-process format), so a run resumes on any number
  of ranks, sharded or not.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable

import torch


@dataclass
class DataParallel:
    """This process's place among the learner ranks; ``world_size`` 1 is the single-process trainer
    (every method then does nothing but call through)."""

    rank: int = 0
    world_size: int = 1
    # Group for the control traffic (batches, logprobs, floats) on CPU tensors: gloo, with a timeout longer than
    # any rollout or eval the other ranks wait through. The default group (nccl on GPUs) carries the gradients.
    control: Any = None
    # FSDP2: parameters, gradients and optimizer state sharded over the ranks (shard_parameters).
    sharded: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    # ------------------------------------------------------------------ sharding
    def shard(self, indices: list[int], sizes: list[int]) -> list[int]:
        """This rank's share of ``indices`` (sequence ids with token counts ``sizes[i]``): largest first to
        the least-loaded rank, the same on every rank (deterministic), returned in the input order."""
        if not self.enabled:
            return list(indices)
        load = [0] * self.world_size
        owner: dict[int, int] = {}
        for i in sorted(indices, key=lambda i: (-sizes[i], i)):
            r = min(range(self.world_size), key=lambda r: (load[r], r))
            owner[i] = r
            load[r] += sizes[i]
        return [i for i in indices if owner[i] == self.rank]

    # ------------------------------------------------------------------ collectives
    def gather_dict(self, local: dict[int, Any]) -> dict[int, Any]:
        """The union of every rank's ``local`` (disjoint keys), on every rank."""
        if not self.enabled:
            return local
        parts: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(parts, local, group=self.control)
        out: dict[int, Any] = {}
        for part in parts:
            out.update(part)
        return out

    def sum_floats(self, values: list[float]) -> list[float]:
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64)  # [k], on CPU: the gloo control group
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM, group=self.control)
        return t.tolist()

    def lockstep(self, count: int) -> int:
        """FSDP2: the most micro-batches any rank has for this pass (every rank runs that many; see the module
        docstring). Replicated: ``count``."""
        if not self.sharded:
            return count
        t = torch.tensor([count], dtype=torch.int64)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX, group=self.control)
        return int(t.item())

    def reduce_gradients(self, model) -> None:
        """Sum ``.grad`` over ranks, in one flat buffer (a rank without a micro-batch adds zeros). FSDP2 has
        already reduce-scattered the sum inside each backward."""
        if not self.enabled or self.sharded:
            return
        params = [p for p in model.parameters() if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])  # [N]
        torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
        pos = 0
        for p in params:
            n = p.grad.numel()
            p.grad.copy_(flat[pos: pos + n].view_as(p.grad))
            pos += n

    def broadcast_parameters(self, model) -> None:
        """Rank 0's weights on every rank (as DDP does when it wraps a model)."""
        if not self.enabled:
            return
        with torch.no_grad():
            for t in [*model.parameters(), *model.buffers()]:
                torch.distributed.broadcast(t.data, src=0)

    # ------------------------------------------------------------------ FSDP2
    def shard_parameters(self, model, shard: bool):
        """With ``shard`` under torchrun: FSDP2 on ``model`` (in place) and return rank 0's full copy of the
        weights for its rollout side (None on the other ranks), kept current by :meth:`publish`. Otherwise
        ``model`` itself. Call after :meth:`broadcast_parameters` and before the optimizer is built."""
        if not (shard and self.enabled):
            return model
        import copy

        from torch.distributed.fsdp import fully_shard

        replica = copy.deepcopy(model).eval().requires_grad_(False) if self.is_main else None
        layers = set(getattr(model, "_no_split_modules", None) or ())  # HF: the decoder layer classes
        units = [m for m in model.modules() if type(m).__name__ in layers and m is not model]
        for unit in units:
            fully_shard(unit)
        fully_shard(model)
        for unit in [*units, model]:
            unit.set_gradient_divide_factor(1.0)  # a SUM of the ranks' shares, not a mean (module docstring)
            unit.set_force_sum_reduction_for_comms(True)  # a plain SUM (gloo has no PREMUL_SUM; NCCL's is zero-copy)
        self.sharded = True
        return replica

    def publish(self, model, replica) -> None:
        """FSDP2: gather the updated weights into rank 0's ``replica`` (every rank must call it). Else nothing
        (the replica is the model)."""
        if not self.sharded:
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.is_main:
            with torch.no_grad():
                for name, t in replica.named_parameters():  # tied weights once, under their first name
                    t.copy_(full[name])

    def optimizer_state(self, model, optimizer) -> dict | None:
        """The optimizer's state dict in the single-process format (parameters numbered in the optimizer's
        order): FSDP2 gathers it onto rank 0 (every rank must call it; None elsewhere)."""
        if not self.sharded:
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        full = get_optimizer_state_dict(model, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.is_main:
            return None
        index = {name: i for i, name in enumerate(_optimizer_param_names(model, optimizer))}
        return {"state": {index[name]: s for name, s in full["state"].items()},
                "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in full["param_groups"]]}

    def load_optimizer_state(self, model, optimizer, state: dict) -> None:
        """Load a single-process-format optimizer state dict (every rank passes the whole of it)."""
        if not self.sharded:
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        names = _optimizer_param_names(model, optimizer)
        full = {"state": {names[i]: s for i, s in state["state"].items()},
                "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]}
        set_optimizer_state_dict(model, optimizer, full, options=StateDictOptions(full_state_dict=True))

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (pickled)."""
        if not self.enabled:
            return obj
        box = [obj if self.is_main else None]
        torch.distributed.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    def from_main(self, fn: Callable[..., Any], *args, **kwargs) -> Any:
        """Run ``fn`` on rank 0 only and give its result to every rank (rollouts, eval, env sizes)."""
        return self._on_rank0(fn, args, kwargs, share=True)

    def on_main(self, fn: Callable[..., Any], *args, **kwargs) -> Any:
        """Run ``fn`` on rank 0 only (weight sync, checkpoint, building the rollout side); its result stays
        there (None elsewhere)."""
        return self._on_rank0(fn, args, kwargs, share=False)

    def _on_rank0(self, fn, args, kwargs, *, share: bool) -> Any:
        """A failure on rank 0 reaches every rank as an error instead of a wait in the next collective."""
        result = None
        if self.is_main:
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:  # the other ranks wait in broadcast: tell them, then re-raise
                if self.enabled:
                    self.broadcast(("error", f"{type(exc).__name__}: {exc}"))
                raise
        if not self.enabled:
            return result
        tag, value = self.broadcast(("ok", result if share else None))
        if tag == "error":
            raise RuntimeError(f"rank 0 failed, so rank {self.rank} stops too: {value}")
        return value if share else result

    def close(self) -> None:
        if self.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _optimizer_param_names(model, optimizer) -> list[str]:
    """The parameters' names in the optimizer's order (its state dict numbers them that way)."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    return [name_of[id(p)] for g in optimizer.param_groups for p in g["params"]]


def torchrun_world_size() -> int:
    """How many learner ranks torchrun started (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_data_parallel(timeout_s: float = 6 * 3600) -> DataParallel:
    """The learner ranks torchrun started (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``), or one process.
    Gradients over gloo on CPU, nccl on CUDA (each rank on GPU ``LOCAL_RANK``); control traffic over a gloo group
    whose ``timeout_s`` bounds how long ranks 1.. wait for rank 0's rollouts and evals (NCCL's default is 10 min)."""
    world = torchrun_world_size()
    if world <= 1:
        return DataParallel()
    rank = int(os.environ["RANK"])
    if torch.cuda.is_available():
        local, gpus = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
        if local >= gpus:  # NCCL needs a GPU of its own per rank; two ranks on one GPU fail deep inside its init
            raise RuntimeError(
                f"torchrun started local rank {local} of {os.environ.get('LOCAL_WORLD_SIZE', world)} on this node, "
                f"but it has {gpus} visible CUDA device(s): the learner's NCCL gradients need one GPU per rank. "
                f"Fix: --nproc_per_node={gpus} (or fewer), or CUDA_VISIBLE_DEVICES= to train on the CPU over gloo")
        torch.cuda.set_device(local)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo",
                                             timeout=timedelta(seconds=timeout_s))
    control = torch.distributed.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))
    return DataParallel(rank=rank, world_size=world, control=control)
