"""The learner: one policy update from a TrajectoryBatch.

Data flow: trajectory batch → advantages → **old logprobs → Hölder loss → optimizer**.

The Hölder ratio of a trajectory couples *all* its agent tokens, across all turns, and
those tokens may be spread over several packed micro-batches (one sequence per turn in
``per_step`` mode). Keeping every micro-batch's autograd graph alive until the loss is
known would cost memory proportional to the whole batch. Instead each update is exact
and runs in two passes:

1. without grad: per-token logprobs of the mini-batch under the current weights (on
   the first update these *are* the old logprobs, computed anyway); the loss (policy
   loss + KL) is evaluated on a leaf tensor of these logprobs, and its gradient
   g_t = ∂loss/∂logprob_t is taken;
2. with grad, micro-batch by micro-batch: backward of the surrogate Σ_t g_t·logprob_t
   (+ the entropy bonus, which is linear in per-token entropies), accumulating into the
   parameters' .grad.

Since ∂(Σ g·logπ)/∂θ = Σ g·∂logπ/∂θ, the accumulated gradient equals the gradient of
the trajectory-level loss. Then gradient clipping and one optimizer step.

Trajectories whose advantage is 0 (a group whose members all won or all lost: most groups
early in ALFWorld training) get no forward or backward pass when the loss is −A·f(ratio)
(:data:`trainers.losses.ZERO_ADVANTAGE_INERT`) and neither KL nor entropy terms are on: their
loss term and gradient are 0 whatever their logprobs, so they enter the loss with ratio 1
(their tokens still count in its normaliser) and the update is the same as computing them.
Ratio/clip metrics then count them at ratio 1.

Non-finite values never reach the weights: an update whose loss, token gradient or parameter
gradient norm is not finite (NaN/inf logprobs from a diverged model, a NaN advantage) takes no
optimizer step; it is counted in ``train/nonfinite_updates`` and its metrics are reported as they
are (the trainer stops after several such steps in a row).
"""

from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass

import torch

from agent_rl.types import Sequence, TrajectoryBatch
from trainers.losses import ZERO_ADVANTAGE_INERT, kl_low_var, policy_loss
from trainers.attention import enable_varlen_attention, is_varlen
from trainers.distributed import DataParallel
from trainers.packing import pack_sequences, token_logprobs_and_entropy


@dataclass
class LearnerSettings:
    """See ``agent_rl.config.AlgoConfig``/``TrainConfig`` for the meaning of each field."""

    loss: str = "holder"
    clip_low: float = 0.2
    clip_high: float = 0.2
    kl_coef: float = 0.0
    entropy_coef: float = 0.0
    micro_batch_tokens: int = 4096
    num_minibatches: int = 1
    epochs: int = 1
    max_grad_norm: float | None = 1.0  # 0 or None: no clipping
    bf16_autocast: bool | None = None  # None: on CUDA only; True: CPU too (see TrainConfig.bf16)
    # Sampling temperature of the rollouts: logprobs are taken under softmax(logits / T), the
    # distribution the tokens were drawn from (as verl does), so the ratio compares like with like.
    temperature: float = 1.0
    # Attend within each packed sequence (trainers.attention) instead of through a dense
    # block mask over the whole row: switches sdpa models to "agent_rl_varlen".
    varlen_attention: bool = True
    # Skip the passes over zero-advantage trajectories where that leaves the update unchanged (module
    # docstring). False computes them anyway (the reference the tests compare against).
    skip_zero_advantage: bool = True
    # What one Hölder ratio covers: "trajectory" (M_p over every agent token of all turns, the default) or
    # "turn" (M_p over one turn's tokens, each turn a loss row with its episode's advantage: the HölderPO
    # authors' ALFWorld code). See TrajectoryBatch.rows.
    ratio_unit: str = "trajectory"


class Learner:
    def __init__(self, model, optimizer, settings: LearnerSettings, *, ref_model=None, seed: int = 0,
                 dp: DataParallel | None = None):
        self.model = model
        self.optimizer = optimizer
        self.s = settings
        self.ref_model = ref_model
        # Data-parallel ranks (trainers.distributed): each computes its shard of the sequences, the logprobs
        # are gathered so every rank evaluates the same loss, the gradient shares are summed. One rank: no-op.
        self.dp = dp or DataParallel()
        self.rng = random.Random(seed)
        if settings.varlen_attention:
            for m in (model, ref_model):
                if m is not None:
                    enable_varlen_attention(m)

    # ------------------------------------------------------------------ helpers
    def _autocast(self):
        device = next(self.model.parameters()).device
        on = self.s.bf16_autocast if self.s.bf16_autocast is not None else device.type == "cuda"
        if on and device.type in ("cuda", "cpu"):
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.no_grad()
    def sequence_logprobs(self, model, sequences: list[Sequence], indices: list[int]) -> dict[int, torch.Tensor]:
        """Per-token logprobs ([L] on CPU, float32) of ``sequences[indices]`` under ``model``."""
        out: dict[int, torch.Tensor] = {}
        for mb in pack_sequences(sequences, self.s.micro_batch_tokens, indices, self._row_tokens(model)):
            with self._autocast():
                lp, _ = token_logprobs_and_entropy(model, mb, temperature=self.s.temperature, loss_only=True)
            out.update(mb.gather(lp.float().cpu()))
        return out

    def _all_logprobs(self, model, sequences: list[Sequence], indices: list[int]) -> dict[int, torch.Tensor]:
        """sequence_logprobs of ``indices``, each rank computing its shard, gathered on every rank."""
        mine = self.dp.shard(indices, [len(s) for s in sequences])
        return self.dp.gather_dict(self.sequence_logprobs(model, sequences, mine))

    def _row_tokens(self, model) -> int | None:
        # varlen flash-attention kernels make long packed rows free; dense masks do not
        return self.s.micro_batch_tokens if is_varlen(model) else None

    def ref_logprobs(self, sequences, indices) -> dict[int, torch.Tensor]:
        if self.ref_model is not None:
            return self._all_logprobs(self.ref_model, sequences, indices)
        disable = getattr(self.model, "disable_adapter", None)  # LoRA: the base model is the reference
        if disable is None:
            raise ValueError(
                "kl_coef > 0 needs a reference model: the trainer loads one unless LoRA is on "
                "(then the adapter-free base model is the reference)"
            )
        with disable():
            return self._all_logprobs(self.model, sequences, indices)

    @staticmethod
    def _traj_matrix(per_seq: dict[int, torch.Tensor], traj_seqs: list[list[int]], masks: list[torch.Tensor]):
        """Concatenate each trajectory's agent-token values over its sequences: [b, T]."""
        rows = [torch.cat([per_seq[i][masks[i]] for i in seqs]) if seqs else torch.zeros(0) for seqs in traj_seqs]
        T = max((len(r) for r in rows), default=0)
        mat = torch.zeros(len(rows), max(T, 1))  # [b, T]
        mask = torch.zeros(len(rows), max(T, 1))  # [b, T]
        for k, r in enumerate(rows):
            mat[k, : len(r)] = r
            mask[k, : len(r)] = 1.0
        return mat, mask

    # ------------------------------------------------------------------ the update
    def update(self, batch: TrajectoryBatch, advantages: torch.Tensor, p: float) -> dict[str, float]:
        """K = epochs × num_minibatches optimizer steps on ``batch``; returns averaged metrics.

        ``advantages``: one per loss row (``batch.rows(ratio_unit)``): [B] per trajectory, or one per turn."""
        t0 = time.perf_counter()
        sequences = batch.sequences()
        seqs_of = batch.rows(self.s.ratio_unit, sequences)  # per loss row, its sequences (a trajectory's turns, or one turn)
        if advantages.shape != (len(seqs_of),):
            what = "[B]" if self.s.ratio_unit == "trajectory" else "[turns]"
            raise ValueError(f"advantages must be {what}=[{len(seqs_of)}] (one per {self.s.ratio_unit}), got "
                             f"{tuple(advantages.shape)}")
        masks = [torch.tensor(s.loss_mask, dtype=torch.bool) for s in sequences]
        all_idx = list(range(len(sequences)))
        inert = self._inert_sequences(seqs_of, advantages)
        # Inert sequences take their placeholder as both old and current logprobs: ratio exactly 1.
        placeholder = {i: torch.zeros(len(sequences[i])) for i in inert}
        old = self._all_logprobs(self.model, sequences, [i for i in all_idx if i not in inert])
        old.update(placeholder)
        ref = self.ref_logprobs(sequences, all_idx) if self.s.kl_coef > 0 else None
        sampled = {i: torch.tensor(s.logprobs) for i, s in enumerate(sequences)}
        sampled.update(placeholder)  # no recomputed logprob to compare with
        metrics_sum: dict[str, float] = {}

        traj_ids = list(range(len(seqs_of)))  # loss rows
        n_updates = n_skipped = 0
        fresh = True  # weights unchanged since `old` was computed
        tokens = 0
        for _ in range(self.s.epochs):
            self.rng.shuffle(traj_ids)
            k = max(1, min(self.s.num_minibatches, len(traj_ids)))
            for m in range(k):
                trajs = traj_ids[m::k]
                seq_idx = [i for t in trajs for i in seqs_of[t]]
                if not seq_idx:
                    continue
                live_idx = [i for i in seq_idx if i not in inert]
                if fresh:
                    current = old
                else:
                    current = self._all_logprobs(self.model, sequences, live_idx)
                    current.update({i: placeholder[i] for i in seq_idx if i in inert})
                lp_mat, mask = self._traj_matrix(current, [seqs_of[t] for t in trajs], masks)  # [b, T]
                old_mat, _ = self._traj_matrix(old, [seqs_of[t] for t in trajs], masks)  # [b, T]
                lp_leaf = lp_mat.clone().requires_grad_()
                out = policy_loss(
                    self.s.loss, logprobs=lp_leaf, old_logprobs=old_mat, advantages=advantages[trajs].float(),
                    loss_mask=mask, p=p, clip_low=self.s.clip_low, clip_high=self.s.clip_high,
                )
                total = out.loss
                metrics = dict(out.metrics)
                if ref is not None:
                    ref_mat, _ = self._traj_matrix(ref, [seqs_of[t] for t in trajs], masks)
                    kl = kl_low_var(lp_leaf, ref_mat, mask)
                    total = total + self.s.kl_coef * kl
                    metrics["loss/kl"] = float(kl)
                (g_mat,) = torch.autograd.grad(total, lp_leaf)  # [b, T]
                if not (bool(torch.isfinite(total)) and bool(torch.isfinite(g_mat).all())):
                    metrics.update({"loss/policy": float(out.loss), "loss/total": float(total),
                                    "train/nonfinite_updates": 1.0})
                    self._skip_update(metrics, metrics_sum)
                    n_skipped += 1
                    continue
                with torch.no_grad():
                    samp_mat, _ = self._traj_matrix(sampled, [seqs_of[t] for t in trajs], masks)
                    metrics["loss/policy"] = float(out.loss)
                    metrics["loss/total"] = float(total)
                    # vLLM/bf16 sampling vs the learner's recomputed logprobs (the reason we recompute),
                    # over the trajectories that were recomputed
                    computed = mask * torch.tensor([0.0 if seqs_of[t] and seqs_of[t][0] in inert else 1.0
                                                    for t in trajs]).unsqueeze(-1)  # [b, T]
                    n = computed.sum().clamp_min(1)
                    metrics["loss/sampler_logprob_diff"] = float(((samp_mat - old_mat).abs() * computed).sum() / n)
                ent_coef = self._entropy_coefficients([seqs_of[t] for t in trajs], masks, sequences)
                if ent_coef is None and not bool(g_mat.any()):
                    # e.g. every group had equal rewards: the gradient is exactly zero, so skip
                    # the backward pass but still take the (momentum, weight decay) step
                    for prm in self.model.parameters():
                        if prm.requires_grad:
                            prm.grad = torch.zeros_like(prm)
                    metrics["perf/skipped_zero_gradient"] = 1.0
                else:
                    grad_seq = self._scatter(g_mat, [seqs_of[t] for t in trajs], masks, sequences)
                    mine = self.dp.shard(live_idx, [len(s) for s in sequences])
                    entropy_sum, ent_tokens = self.dp.sum_floats(list(self._backward(sequences, mine, grad_seq, ent_coef)))
                    self.dp.reduce_gradients(self.model)  # the shares of one sum: the single-process gradient
                    if ent_tokens:
                        metrics["loss/entropy"] = entropy_sum / ent_tokens
                # max_grad_norm 0/None: no clipping (Hugging Face's convention); the norm is still reported
                max_norm = self.s.max_grad_norm or float("inf")
                grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
                metrics["loss/grad_norm"] = float(grad_norm)
                if not bool(torch.isfinite(grad_norm)):
                    metrics["train/nonfinite_updates"] = 1.0
                    self._skip_update(metrics, metrics_sum)
                    n_skipped += 1
                    continue
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                fresh = False
                tokens += sum(len(sequences[i]) for i in live_idx)
                n_updates += 1
                for key, v in metrics.items():
                    metrics_sum[key] = metrics_sum.get(key, 0.0) + v
        result = {k: v / max(n_updates + n_skipped, 1) for k, v in metrics_sum.items()}
        result["train/nonfinite_updates"] = float(n_skipped)
        elapsed = time.perf_counter() - t0
        result["perf/learner_seconds"] = elapsed
        result["perf/learner_tokens_per_s"] = tokens / elapsed if elapsed > 0 else 0.0
        result["perf/optimizer_steps"] = float(n_updates)
        result["perf/skipped_sequences"] = float(len(inert))  # zero-advantage: no forward or backward
        return result

    def _skip_update(self, metrics: dict[str, float], metrics_sum: dict[str, float]) -> None:
        """Drop this update's gradient (no optimizer step) and keep its metrics, NaNs included."""
        self.optimizer.zero_grad(set_to_none=True)
        for key, v in metrics.items():
            metrics_sum[key] = metrics_sum.get(key, 0.0) + v

    def _inert_sequences(self, rows: list[list[int]], advantages: torch.Tensor) -> set[int]:
        """Sequences of zero-advantage rows whose passes can be skipped (module docstring)."""
        if not (self.s.skip_zero_advantage and self.s.loss in ZERO_ADVANTAGE_INERT
                and self.s.kl_coef == 0 and self.s.entropy_coef == 0):
            return set()
        zero = (advantages == 0).tolist()
        return {i for r, seqs in enumerate(rows) if zero[r] for i in seqs}

    @staticmethod
    def _scatter(g_mat, traj_seqs, masks, sequences) -> dict[int, torch.Tensor]:
        """Inverse of _traj_matrix: per-sequence gradient tensors [L] (0 off the agent tokens)."""
        out: dict[int, torch.Tensor] = {}
        for row, seqs in enumerate(traj_seqs):
            pos = 0
            for i in seqs:
                g = torch.zeros(len(sequences[i]))
                n = int(masks[i].sum())
                g[masks[i]] = g_mat[row, pos : pos + n]
                pos += n
                out[i] = g
        return out

    def _entropy_coefficients(self, traj_seqs, masks, sequences) -> dict[int, torch.Tensor] | None:
        """∂(−c_H · mean_i mean_t H_t)/∂H_t per token: the entropy bonus is linear in H."""
        if self.s.entropy_coef == 0:
            return None
        rows = [seqs for seqs in traj_seqs if sum(int(masks[i].sum()) for i in seqs) > 0]
        out: dict[int, torch.Tensor] = {}
        for seqs in rows:
            T = sum(int(masks[i].sum()) for i in seqs)
            for i in seqs:
                out[i] = masks[i].float() * (-self.s.entropy_coef / (T * len(rows)))
        return out

    def _backward(self, sequences, seq_idx, grad_seq, ent_coef) -> tuple[float, int]:
        self.model.train()
        entropy_sum, ent_tokens = 0.0, 0
        device = next(self.model.parameters()).device
        for mb in pack_sequences(sequences, self.s.micro_batch_tokens, seq_idx, self._row_tokens(self.model)):
            with self._autocast():
                # g and h are 0 off the agent tokens, so only those need logits
                lp, ent = token_logprobs_and_entropy(self.model, mb, with_entropy=ent_coef is not None,
                                                     temperature=self.s.temperature, loss_only=True)
            g = mb.scatter({i: grad_seq[i] for i in mb.seq_indices}).to(device)  # [R, L]
            surrogate = (g * lp.float()).sum()
            if ent is not None:
                h = mb.scatter({i: ent_coef.get(i, torch.zeros(len(sequences[i]))) for i in mb.seq_indices}).to(device)  # [R, L]
                surrogate = surrogate + (h * ent.float()).sum()
                agent = mb.scatter({i: torch.tensor(sequences[i].loss_mask, dtype=torch.bool) for i in mb.seq_indices})
                entropy_sum += float(ent.detach().float().cpu()[agent].sum())
                ent_tokens += int(agent.sum())
            surrogate.backward()
        return entropy_sum, ent_tokens
