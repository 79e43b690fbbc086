"""Policy losses: the Hölder loss and its named presets (GRPO, GSPO, GMPO, Dr. GRPO).

Data flow: trajectory batch → advantages → **policy loss** → optimizer.

Every loss takes per-token ``logprobs``/``old_logprobs``/``loss_mask`` of shape [B, T]
(B trajectories; T = all agent tokens of all turns of a trajectory, padded) and one
advantage per trajectory ([B]), and returns a :class:`~agent_rl.types.LossOutput`.
A trajectory's ratio is the Hölder mean M_p of its token ratios (see
:mod:`trainers.holder`):

* ``holder`` (sequence clip, the paper's default): ρ_i = M_p(r_i), clipped to
  [1 − ε_low, 1 + ε_high]; L_i = max(−A_i ρ_i, −A_i clip(ρ_i)).
* ``holder_token`` (token clip): c_t = min(r_t, clip(r_t)) if A_i > 0 else
  max(r_t, clip(r_t)); ρ_i = M_p(c_i); L_i = −A_i ρ_i.
* dual clip (``clip_ratio_c`` = c, verl's name and default 3 through ``algo.clip_ratio_c``; Ye et al. 2020):
  for A_i < 0 the loss is also capped at −A_i·c, i.e. the (sequence or token) ratio counts at most c, so a
  trajectory or token whose ratio ran past c pushes no further. PPO's pessimistic max alone leaves that branch
  unbounded (the ratio is not clipped from above when A < 0). ``None``: no dual clip.
* presets: ``grpo`` = holder_token at p = 1 (GRPO with per-sequence token mean),
  ``gspo`` = holder at p = 0, ``gmpo`` = holder_token at p = 0, ``dr_grpo`` = GRPO's
  token loss summed per trajectory over a constant length, the row's token budget (Dr. GRPO aggregation).

The loss is the mean of L_i over trajectories that have at least one agent token.

Token log-ratios δ are clamped to ±:data:`LOG_RATIO_BOUND` (20, as verl does) before anything else, so
every loss is finite for any finite input (without it δ = ±100 overflows exp to inf and the gradient to
NaN). A ratio of e^20 ≈ 5·10^8 is far past any clip range. For A > 0 the clip already stops the gradient long
before; for A < 0 the pessimistic max keeps the unclipped ratio (PPO), so a token whose ratio crosses e^20 has
its gradient cut to 0 by the clamp (it would be ~A·10^8 just below): the clamp is a last-resort bound there,
not a clip; the dual clip (above) bounds that branch at c.
Add a loss with ``@LOSSES.register("name")``: a function of the same keyword arguments.
"""

from __future__ import annotations

import inspect
import math
from typing import Callable

import torch

from agent_rl.registry import Registry
from agent_rl.types import LossOutput
from trainers.holder import holder_log_mean_factored, token_weight_stats

LOG_RATIO_BOUND = 20.0  # |logπ − logπ_old| past this is clamped (module docstring)
KL_BOUND = 10.0  # per-token k3 KL values are clamped to ±this (verl's low_var_kl)

LossFn = Callable[..., LossOutput]
LOSSES: Registry[LossFn] = Registry("loss")


def _validate(logprobs, old_logprobs, advantages, loss_mask, clip_low, clip_high, clip_ratio_c=None) -> None:
    if logprobs.dim() != 2:
        raise ValueError(f"logprobs must be [B, T], got shape {tuple(logprobs.shape)}")
    for name, t in (("old_logprobs", old_logprobs), ("loss_mask", loss_mask)):
        if t.shape != logprobs.shape:
            raise ValueError(
                f"{name} must have the shape of logprobs {tuple(logprobs.shape)}, got {tuple(t.shape)}"
            )
    if advantages.shape != logprobs.shape[:1]:
        raise ValueError(
            f"advantages must be one value per trajectory, shape [B]={tuple(logprobs.shape[:1])}, "
            f"got {tuple(advantages.shape)}; compute them per trajectory (trainers.advantages)"
        )
    if not (0.0 <= clip_low < 1.0) or clip_high < 0.0:
        raise ValueError(
            f"clip range needs 0 <= clip_low < 1 and clip_high >= 0, got clip_low={clip_low}, "
            f"clip_high={clip_high}"
        )
    if clip_ratio_c is not None and not clip_ratio_c > 1.0:
        raise ValueError(f"the dual clip's bound clip_ratio_c must be > 1 (a ratio cap for A < 0), got "
                         f"{clip_ratio_c}; use e.g. 3.0 (verl's default), or None for no dual clip")


def _prepare(logprobs, old_logprobs, advantages, loss_mask, clip_low, clip_high, clip_ratio_c):
    """Validated inputs of the Hölder losses: maskf [B, T], token counts n [B], rows with
    tokens [B], and δ = logprobs − old_logprobs [B, T] (padding is zeroed inside the Hölder mean)."""
    _validate(logprobs, old_logprobs, advantages, loss_mask, clip_low, clip_high, clip_ratio_c)
    maskf = loss_mask.to(logprobs.dtype)  # [B, T]
    n = maskf.sum(-1)  # [B]
    log_ratio = (logprobs - old_logprobs).clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND)  # [B, T]
    return maskf, n, n > 0, log_ratio


def _finish(per_traj: torch.Tensor, rows: torch.Tensor, metrics: dict[str, float]) -> LossOutput:
    count = rows.sum().clamp_min(1)
    loss = (per_traj * rows).sum() / count  # scalar; empty rows give 0 loss and 0 gradient
    metrics["loss/empty_trajectories"] = float((~rows).sum())
    return LossOutput(loss=loss, metrics=metrics)


def _signal_rows(rows: torch.Tensor, advantages: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(signal, stat) [B]: the rows that carry gradient (A ≠ 0; only these can be clipped, so a clip fraction
    is 0 when none has signal), and the rows the ratio metrics (ESS, ratio range) describe: the signal rows, or
    every row when none has signal. A zero-advantage row's ratio is exactly 1 when the learner skips it, ESS 1
    by construction, and would pull the adaptive p's signal toward 1 by the share of groups without signal."""
    signal = rows & (advantages != 0)  # [B]
    return signal, (signal if bool(signal.any()) else rows)


def _ratio_metrics(p: float, log_rho: torch.Tensor, rows, e, inv_sum, n) -> dict[str, float]:
    """``rows``: the rows to describe (:func:`_signal_rows`)."""
    with torch.no_grad():
        rho = log_rho.exp()[rows] if bool(rows.any()) else log_rho.new_ones(1)
        ess, wmax = token_weight_stats(e, inv_sum, n * rows)
        return {
            "loss/p": float(p),
            "loss/ratio_mean": float(rho.mean()),
            "loss/ratio_max": float(rho.max()),
            "loss/ratio_min": float(rho.min()),
            "loss/token_weight_ess": ess,
            "loss/token_weight_max": wmax,
        }


@LOSSES.register("holder")
def holder_sequence_clip(
    *, logprobs, old_logprobs, advantages, loss_mask, p, clip_low=0.2, clip_high=0.2, clip_ratio_c=None
) -> LossOutput:
    maskf, n, rows, log_ratio = _prepare(logprobs, old_logprobs, advantages, loss_mask, clip_low, clip_high,
                                         clip_ratio_c)
    log_rho, e, inv_sum = holder_log_mean_factored(log_ratio, maskf, p)  # [B], [B, T], [B]
    lo, hi = math.log1p(-clip_low), math.log1p(clip_high)
    adv = advantages.to(log_rho.dtype)  # [B]
    unclipped = -adv * log_rho.exp()  # [B]
    clipped_loss = -adv * log_rho.clamp(lo, hi).exp()  # [B]
    per_traj = torch.maximum(unclipped, clipped_loss)  # [B]
    dual = torch.zeros_like(rows)  # [B]
    if clip_ratio_c is not None:
        dual = (adv < 0) & (log_rho > math.log(clip_ratio_c))  # [B]
        per_traj = torch.where(dual, -adv * clip_ratio_c, per_traj)  # [B]; constant there: no gradient
    signal, stat = _signal_rows(rows, adv)  # [B], [B]
    metrics = _ratio_metrics(p, log_rho, stat, e, inv_sum, n)
    with torch.no_grad():
        clipped = (clipped_loss > unclipped) & signal  # [B]
        metrics["loss/clip_frac"] = float(clipped.sum() / signal.sum().clamp_min(1))
        metrics["loss/dual_clip_frac"] = float((dual & signal).sum() / signal.sum().clamp_min(1))
    return _finish(per_traj, rows, metrics)


@LOSSES.register("holder_token")
def holder_token_clip(
    *, logprobs, old_logprobs, advantages, loss_mask, p, clip_low=0.2, clip_high=0.2, clip_ratio_c=None
) -> LossOutput:
    maskf, n, rows, log_ratio = _prepare(logprobs, old_logprobs, advantages, loss_mask, clip_low, clip_high,
                                         clip_ratio_c)
    adv = advantages.to(log_ratio.dtype)  # [B]
    lo, hi = math.log1p(-clip_low), math.log1p(clip_high)
    # min(r, clip(r)) = min(r, 1+ε_high) for A > 0; max(r, clip(r)) = max(r, 1−ε_low) for A < 0, capped at
    # c by the dual clip (min(max(r, 1−ε_low), c)): one clamp per row, with the bounds chosen by the advantage's sign.
    inf = log_ratio.new_tensor(float("inf"))
    cap = inf if clip_ratio_c is None else log_ratio.new_tensor(math.log(clip_ratio_c))
    upper = torch.where(adv > 0, log_ratio.new_tensor(hi), cap).unsqueeze(-1)  # [B, 1]
    lower = torch.where(adv > 0, -inf, log_ratio.new_tensor(lo)).unsqueeze(-1)  # [B, 1]
    log_c = torch.clamp(log_ratio, lower, upper)  # [B, T]
    log_rho, e, inv_sum = holder_log_mean_factored(log_c, maskf, p)  # [B], [B, T], [B]
    per_traj = -adv * log_rho.exp()  # [B]
    signal, stat = _signal_rows(rows, adv)  # [B], [B]
    metrics = _ratio_metrics(p, log_rho, stat, e, inv_sum, n)
    with torch.no_grad():
        dual_tok = (adv < 0).unsqueeze(-1) & (log_ratio > cap)  # [B, T]
        # clip_frac counts PPO's bounds only, as verl's pg_clipfrac does (and the other losses here)
        clipped = torch.linalg.vecdot(((log_c != log_ratio) & ~dual_tok).to(maskf.dtype), maskf)  # [B]
        dual = torch.linalg.vecdot(dual_tok.to(maskf.dtype), maskf)  # [B]
        tokens = (n * signal).sum().clamp_min(1)
        metrics["loss/clip_frac"] = float((clipped * signal).sum() / tokens)
        metrics["loss/dual_clip_frac"] = float((dual * signal).sum() / tokens)
    return _finish(per_traj, rows, metrics)


@LOSSES.register("grpo")
def grpo(*, p=None, **kw) -> LossOutput:
    """GRPO: token clip, per-sequence token mean (Hölder p = 1; a scheduled p is ignored)."""
    return holder_token_clip(p=1.0, **kw)


@LOSSES.register("gspo")
def gspo(*, p=None, **kw) -> LossOutput:
    """GSPO: sequence clip of the geometric-mean ratio (Hölder p = 0)."""
    return holder_sequence_clip(p=0.0, **kw)


@LOSSES.register("gmpo")
def gmpo(*, p=None, **kw) -> LossOutput:
    """GMPO: geometric mean of token-clipped ratios (Hölder p = 0, token clip)."""
    return holder_token_clip(p=0.0, **kw)


@LOSSES.register("dr_grpo")
def dr_grpo(
    *, logprobs, old_logprobs, advantages, loss_mask, p=None, clip_low=0.2, clip_high=0.2,
    norm_tokens: int | None = None, clip_ratio_c: float | None = None,
) -> LossOutput:
    """Dr. GRPO aggregation: GRPO token losses summed per trajectory, divided by a constant
    (not the trajectory's own length), then averaged.

    The constant is ``norm_tokens``, the agent-token budget of a row (Dr. GRPO's MAX_TOKENS; the learner
    passes ``rollout.max_new_tokens`` × the turns a row holds). It must not depend on the batch: the padded
    width T of the [B, T] matrix is the longest row of the minibatch, so dividing by it would rescale every
    row's gradient by whichever trajectory happens to be longest. ``None`` uses T, for callers whose
    matrices have a fixed width; a T past ``norm_tokens`` is used instead of it."""
    _validate(logprobs, old_logprobs, advantages, loss_mask, clip_low, clip_high, clip_ratio_c)
    mask = loss_mask.bool()  # [B, T]
    rows = mask.any(-1)  # [B]
    log_ratio = (logprobs - old_logprobs).clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND).masked_fill(~mask, 0.0)  # [B, T]
    ratio = log_ratio.exp()  # [B, T]
    clipped_ratio = ratio.clamp(1.0 - clip_low, 1.0 + clip_high)  # [B, T]
    adv = advantages.to(ratio.dtype).unsqueeze(-1)  # [B, 1]
    token_loss = torch.maximum(-adv * ratio, -adv * clipped_ratio)  # [B, T]
    dual = torch.zeros_like(mask)  # [B, T]
    if clip_ratio_c is not None:
        dual = (adv < 0) & (ratio > clip_ratio_c)  # [B, T]
        token_loss = torch.where(dual, -adv * clip_ratio_c, token_loss)  # [B, T]
    token_loss = token_loss * mask  # [B, T]
    # A row past its budget (a constrained reply longer than max_new_tokens) raises the constant, never the reverse.
    per_traj = token_loss.sum(-1) / max(norm_tokens or 0, logprobs.shape[1])  # [B]
    with torch.no_grad():
        stat = mask & _signal_rows(rows, advantages)[1].unsqueeze(-1)  # [B, T]
        n = stat.sum().clamp_min(1)
        metrics = {
            "loss/p": 1.0,
            "loss/ratio_mean": float((ratio * stat).sum() / n),
            "loss/ratio_max": float(ratio.masked_fill(~stat, 0).max()) if bool(stat.any()) else 1.0,
            "loss/clip_frac": float(((-adv * clipped_ratio > -adv * ratio) & stat).sum() / n),  # A = 0: never
            "loss/dual_clip_frac": float((dual & stat).sum() / n),
        }
    return _finish(per_traj, rows, metrics)


# Losses of the form −A·f(ratio) (every built-in): a trajectory with advantage 0 adds nothing to the loss
# and gets zero gradient whatever its logprobs, so the learner need not compute them (Learner.update).
# A registered loss that is not (e.g. one with an advantage-free term) is simply not listed here.
ZERO_ADVANTAGE_INERT = frozenset({"holder", "holder_token", "grpo", "gspo", "gmpo", "dr_grpo"})


def takes_clip_ratio_c(name: str) -> bool:
    """Whether the registered loss ``name`` can apply the dual clip: it names ``clip_ratio_c`` or takes
    ``**kwargs`` (and so must take it or pass it on)."""
    return _takes_clip_ratio_c(inspect.signature(LOSSES.get(name)).parameters)


def _takes_clip_ratio_c(params) -> bool:
    return "clip_ratio_c" in params or any(v.kind is v.VAR_KEYWORD for v in params.values())


def policy_loss(
    name: str,
    *,
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    loss_mask: torch.Tensor,
    p: float,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    norm_tokens: int | None = None,
    clip_ratio_c: float | None = None,
) -> LossOutput:
    """Compute the registered loss ``name`` (see module docstring for the formulas).

    Shapes: ``logprobs``, ``old_logprobs``, ``loss_mask``: [B, T]; ``advantages``: [B]. ``norm_tokens``
    (a row's agent-token budget) goes to the losses that normalise by a constant length (``dr_grpo``,
    and any registered loss with a ``norm_tokens`` parameter); the others normalise per row. ``clip_ratio_c``
    (the dual clip's ratio cap for A < 0; None: off) goes, None too, to the losses that name it (every built-in)
    or take ``**kwargs`` (which then must take or pass it on); a registered loss without either has no dual
    clip (validation warns), as it would have no Dr. GRPO length constant.
    """
    fn = LOSSES.get(name)
    params = inspect.signature(fn).parameters
    extra = {"norm_tokens": norm_tokens} if "norm_tokens" in params else {}
    # a loss that can take it always gets it, None included: its own default (or that of the loss its
    # **kwargs reach) must not turn a dual clip the config switched off back on
    if _takes_clip_ratio_c(params):
        extra["clip_ratio_c"] = clip_ratio_c
    return fn(
        logprobs=logprobs,
        old_logprobs=old_logprobs,
        advantages=advantages,
        loss_mask=loss_mask,
        p=p,
        clip_low=clip_low,
        clip_high=clip_high,
        **extra,
    )


def kl_low_var(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """The low-variance KL estimator (k3) exp(ref − logp) − (ref − logp) − 1, clamped to [−10, 10] per token
    (verl's low_var_kl, which the HölderPO authors use), per trajectory token mean, then averaged over
    trajectories: a scalar. Shapes [B, T]."""
    mask = loss_mask.to(logprobs.dtype)  # [B, T]
    d = (ref_logprobs - logprobs).clamp(-20.0, 20.0)  # [B, T]; keeps exp finite
    k3 = (d.exp() - d - 1.0).clamp(-KL_BOUND, KL_BOUND) * mask  # [B, T]
    n = mask.sum(-1)  # [B]
    rows = n > 0
    return ((k3.sum(-1) / n.clamp_min(1.0)) * rows).sum() / rows.sum().clamp_min(1)
