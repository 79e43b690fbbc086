"""Policy losses against direct implementations of the published formulas."""

from __future__ import annotations

import math

import pytest
import torch

from agent_rl.registry import RegistryError
from trainers.losses import LOSSES, kl_low_var, policy_loss

EPS_LOW, EPS_HIGH = 0.2, 0.28


def batch(seed=0, B=6, T=12, scale=0.3, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, T, generator=g, dtype=dtype) * 3
    new = (old + torch.randn(B, T, generator=g, dtype=dtype) * scale).requires_grad_()
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).to(dtype)
    adv = torch.randn(B, generator=g, dtype=dtype)
    adv[0] = 0.0
    return new, old, mask, adv


def run(name, new, old, mask, adv, p=None, norm_tokens=None, clip_ratio_c=None):
    return policy_loss(name, logprobs=new, old_logprobs=old, advantages=adv, loss_mask=mask, p=p,
                       clip_low=EPS_LOW, clip_high=EPS_HIGH, norm_tokens=norm_tokens, clip_ratio_c=clip_ratio_c)


def per_row(new, old, mask):
    for i in range(new.shape[0]):
        keep = mask[i] > 0
        yield i, new[i][keep] - old[i][keep]


def direct_grpo(new, old, mask, adv):
    losses = []
    for i, d in per_row(new, old, mask):
        r = d.exp()
        tok = torch.maximum(-adv[i] * r, -adv[i] * r.clamp(1 - EPS_LOW, 1 + EPS_HIGH))
        losses.append(tok.mean())
    return torch.stack(losses).mean()


def direct_gspo(new, old, mask, adv):
    losses = []
    for i, d in per_row(new, old, mask):
        s = d.mean().exp()
        losses.append(torch.maximum(-adv[i] * s, -adv[i] * s.clamp(1 - EPS_LOW, 1 + EPS_HIGH)))
    return torch.stack(losses).mean()


def direct_gmpo(new, old, mask, adv):
    # GMPO: exp(sgn(A)·mean_t min(sgn(A)·δ_t, sgn(A)·clip(δ_t))) · A, clip in log space.
    losses = []
    lo, hi = math.log(1 - EPS_LOW), math.log(1 + EPS_HIGH)
    for i, d in per_row(new, old, mask):
        sgn = 1.0 if adv[i] > 0 else -1.0
        inner = torch.minimum(sgn * d, sgn * d.clamp(lo, hi)).mean()
        losses.append(-adv[i] * (sgn * inner).exp())
    return torch.stack(losses).mean()


def direct_holder(new, old, mask, adv, p):
    losses = []
    for i, d in per_row(new, old, mask):
        rho = (d.exp() ** p).mean() ** (1 / p)
        losses.append(torch.maximum(-adv[i] * rho, -adv[i] * rho.clamp(1 - EPS_LOW, 1 + EPS_HIGH)))
    return torch.stack(losses).mean()


def direct_holder_token(new, old, mask, adv, p):
    losses = []
    for i, d in per_row(new, old, mask):
        r = d.exp()
        c = r.clamp(1 - EPS_LOW, 1 + EPS_HIGH)
        c = torch.minimum(r, c) if adv[i] > 0 else torch.maximum(r, c)
        losses.append(-adv[i] * (c**p).mean() ** (1 / p))
    return torch.stack(losses).mean()


MAX_TOKENS = 40  # Dr. GRPO's constant: the agent tokens a row could hold (the batches here have T = 12)


def direct_dr_grpo(new, old, mask, adv):
    r = (new - old).exp()
    tok = torch.maximum(-adv[:, None] * r, -adv[:, None] * r.clamp(1 - EPS_LOW, 1 + EPS_HIGH)) * mask
    return (tok.sum(-1) / MAX_TOKENS).mean()


def assert_same_value_and_grad(ours_fn, direct_fn, seed, scale=0.3):
    new, old, mask, adv = batch(seed, scale=scale)
    ours = ours_fn(new, old, mask, adv)
    (g_ours,) = torch.autograd.grad(ours, new)
    new2 = new.detach().clone().requires_grad_()
    ref = direct_fn(new2, old, mask, adv)
    (g_ref,) = torch.autograd.grad(ref, new2)
    assert float(ours) == pytest.approx(float(ref), abs=1e-10)
    assert torch.allclose(g_ours * mask, g_ref * mask, atol=1e-10)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("scale", [0.05, 0.5])
def test_presets_match_published_formulas(seed, scale):
    assert_same_value_and_grad(lambda *a: run("grpo", *a).loss, direct_grpo, seed, scale)
    assert_same_value_and_grad(lambda *a: run("gspo", *a).loss, direct_gspo, seed, scale)
    assert_same_value_and_grad(lambda *a: run("gmpo", *a).loss, direct_gmpo, seed, scale)
    assert_same_value_and_grad(lambda *a: run("dr_grpo", *a, norm_tokens=MAX_TOKENS).loss, direct_dr_grpo, seed, scale)


C = 3.0  # the dual clip's cap (verl's clip_ratio_c)


def verl_dual_clip_token_loss(r, adv):
    """verl's compute_policy_loss per token: PPO's pessimistic max, then for A < 0 also min with −A·c."""
    clip1 = torch.maximum(-adv * r, -adv * r.clamp(1 - EPS_LOW, 1 + EPS_HIGH))
    return torch.minimum(-adv * C, clip1) if adv < 0 else clip1


def dual_grpo(new, old, mask, adv):
    return torch.stack([verl_dual_clip_token_loss(d.exp(), adv[i]).mean() for i, d in per_row(new, old, mask)]).mean()


def dual_dr_grpo(new, old, mask, adv):
    return torch.stack([verl_dual_clip_token_loss(d.exp(), adv[i]).sum() / MAX_TOKENS
                        for i, d in per_row(new, old, mask)]).mean()


def dual_holder(new, old, mask, adv, p):
    # the same rule on the trajectory's ratio: ρ = M_p(r) counts at most c when A < 0
    return torch.stack([verl_dual_clip_token_loss((d.exp() ** p).mean() ** (1 / p), adv[i])
                        for i, d in per_row(new, old, mask)]).mean()


def dual_holder_token(new, old, mask, adv, p):
    losses = []
    for i, d in per_row(new, old, mask):
        r = d.exp()
        c = torch.minimum(r, r.clamp(max=1 + EPS_HIGH)) if adv[i] > 0 else torch.maximum(r, r.clamp(min=1 - EPS_LOW)).clamp(max=C)
        losses.append(-adv[i] * (c**p).mean() ** (1 / p))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("seed", [0, 1, 5])
def test_dual_clip_matches_verls_formula(seed):
    # scale 1.5: a good share of the tokens' ratios (and, at p = 2, some trajectories' Hölder means) are past c = 3
    new, old, mask, adv = batch(seed, scale=1.5)
    assert bool((((new - old).exp() > C) & (mask > 0) & (adv[:, None] < 0)).any())  # the token cap is reached
    assert run("holder", new, old, mask, adv, p=2.0, clip_ratio_c=C).metrics["loss/dual_clip_frac"] > 0  # and M_p's
    dual = dict(clip_ratio_c=C)
    assert_same_value_and_grad(lambda *a: run("grpo", *a, **dual).loss, dual_grpo, seed, scale=1.5)
    assert_same_value_and_grad(lambda *a: run("dr_grpo", *a, norm_tokens=MAX_TOKENS, **dual).loss, dual_dr_grpo,
                               seed, scale=1.5)
    for p in (2.0, 0.5, -1.0):
        assert_same_value_and_grad(lambda *a: run("holder", *a, p=p, **dual).loss, lambda *a: dual_holder(*a, p),
                                   seed, scale=1.5)
        assert_same_value_and_grad(lambda *a: run("holder_token", *a, p=p, **dual).loss,
                                   lambda *a: dual_holder_token(*a, p), seed, scale=1.5)
    for name in ("grpo", "dr_grpo", "holder_token", "gmpo"):  # the cap changes the token losses it reaches
        m = run(name, new, old, mask, adv, p=1.0, norm_tokens=MAX_TOKENS, **dual).metrics
        assert m["loss/dual_clip_frac"] > 0 and m["loss/dual_clip_frac"] + m["loss/clip_frac"] <= 1  # disjoint
        same_ppo = run(name, new, old, mask, adv, p=1.0, norm_tokens=MAX_TOKENS).metrics["loss/clip_frac"]
        # PPO's bound for A < 0 holds the ratio up at 1 − ε, the cap holds it down at c: disjoint sets, so PPO's
        # clip fraction is the same with the cap as without (verl's pg_clipfrac and pg_clipfrac_lower)
        assert m["loss/clip_frac"] == pytest.approx(same_ppo)
        plain = run(name, new, old, mask, adv, p=1.0, norm_tokens=MAX_TOKENS)
        assert plain.metrics["loss/dual_clip_frac"] == 0.0
        assert float(plain.loss) != pytest.approx(float(run(name, new, old, mask, adv, p=1.0, norm_tokens=MAX_TOKENS,
                                                                 **dual).loss), abs=1e-9)


def test_dual_clip_leaves_positive_advantages_and_small_ratios_alone():
    new, old, mask, adv = batch(2, scale=0.05)  # every ratio within e^±0.3 of 1: far below c
    for name, p in (("grpo", None), ("holder", 2.0), ("holder_token", -1.0), ("gspo", None), ("dr_grpo", None)):
        a = run(name, new, old, mask, adv, p=p, norm_tokens=MAX_TOKENS)
        b = run(name, new, old, mask, adv, p=p, norm_tokens=MAX_TOKENS, clip_ratio_c=C)
        assert float(a.loss) == float(b.loss) and b.metrics["loss/dual_clip_frac"] == 0.0
    new, old, mask, adv = batch(3, scale=1.5)
    adv = adv.abs()  # only positive advantages: the dual clip never applies
    for name in ("grpo", "holder", "dr_grpo"):
        a = run(name, new, old, mask, adv, p=-1.0, norm_tokens=MAX_TOKENS)
        b = run(name, new, old, mask, adv, p=-1.0, norm_tokens=MAX_TOKENS, clip_ratio_c=C)
        assert float(a.loss) == float(b.loss)
    with pytest.raises(ValueError, match="clip_ratio_c must be > 1"):
        run("grpo", new, old, mask, adv, clip_ratio_c=1.0)


def test_a_registered_loss_gets_the_configured_cap_and_one_without_the_parameter_is_warned_about(caplog):
    from agent_rl.train import compose_config
    from agent_rl.validation import validate

    got = []

    def capped(*, clip_ratio_c=3.0, **kw):  # its own default must not outlive algo.clip_ratio_c=null
        got.append(clip_ratio_c)
        return LOSSES.get("grpo")(clip_ratio_c=clip_ratio_c, **kw)

    def plain(*, logprobs, old_logprobs, advantages, loss_mask, p, clip_low, clip_high):
        return LOSSES.get("grpo")(logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages,
                                  loss_mask=loss_mask, p=p, clip_low=clip_low, clip_high=clip_high)

    def forwarding(**kw):  # its **kwargs reach `capped`, whose default must not outlive null either
        return capped(**kw)

    names = {"test_capped": capped, "test_plain": plain, "test_forwarding": forwarding}
    for name, fn in names.items():
        LOSSES.register(name)(fn)
    try:
        new, old, mask, adv = batch(4)
        for c in (None, 2.5):
            run("test_capped", new, old, mask, adv, p=1.0, clip_ratio_c=c)
            run("test_forwarding", new, old, mask, adv, p=1.0, clip_ratio_c=c)
            run("test_plain", new, old, mask, adv, p=1.0, clip_ratio_c=c)  # no dual clip to pass: no error
        assert got == [None, None, 2.5, 2.5]
        for loss, c, rl, warned in (("test_plain", 3.0, True, True), ("test_plain", None, True, False),
                                    ("test_plain", 3.0, False, False),  # SFT has no loss to warn about
                                    ("test_capped", 3.0, True, False), ("test_forwarding", 3.0, True, False)):
            caplog.clear()
            with caplog.at_level("WARNING", logger="agent_rl"):
                validate(compose_config([f"algo.loss={loss}", f"algo.clip_ratio_c={c if c else 'null'}"]), rl=rl)
            assert ("trains without the dual clip" in caplog.text) == warned, (loss, c, rl)
    finally:
        for name in names:
            LOSSES.unregister(name)


def test_dr_grpo_normaliser_does_not_depend_on_the_batchs_padding():
    # The learner pads each minibatch to its longest row; with the budget given, extra padding (a longer
    # trajectory elsewhere in the minibatch) must not rescale this row's loss or gradient.
    new, old, mask, adv = batch(1)
    pad = lambda t: torch.cat([t, torch.zeros(t.shape[0], 4, dtype=t.dtype)], -1)  # noqa: E731
    wide_new = pad(new.detach()).requires_grad_()
    a = run("dr_grpo", new, old, mask, adv, norm_tokens=MAX_TOKENS).loss
    b = run("dr_grpo", wide_new, pad(old), pad(mask), adv, norm_tokens=MAX_TOKENS).loss
    assert float(a) == pytest.approx(float(b), abs=1e-12)
    (ga,), (gb,) = torch.autograd.grad(a, new), torch.autograd.grad(b, wide_new)
    assert torch.allclose(ga, gb[:, :12], atol=1e-12)
    # losses that normalise per row take no budget; a row past the budget raises the constant
    assert float(run("grpo", new, old, mask, adv, norm_tokens=MAX_TOKENS).loss) == float(run("grpo", new, old, mask, adv).loss)
    assert float(run("dr_grpo", new, old, mask, adv, norm_tokens=5).loss) == float(run("dr_grpo", new, old, mask, adv).loss)


@pytest.mark.parametrize("p", [2.0, 1.0, 0.5, -1.0, -2.0])
@pytest.mark.parametrize("seed", range(3))
def test_holder_losses_match_direct_power_mean(p, seed):
    assert_same_value_and_grad(lambda *a: run("holder", *a, p=p).loss, lambda *a: direct_holder(*a, p), seed)
    assert_same_value_and_grad(
        lambda *a: run("holder_token", *a, p=p).loss, lambda *a: direct_holder_token(*a, p), seed
    )


def test_holder_token_at_p1_is_grpo_and_p_to_0_is_gmpo_gspo():
    new, old, mask, adv = batch(3)
    assert float(run("holder_token", new, old, mask, adv, p=1.0).loss) == pytest.approx(float(run("grpo", new, old, mask, adv).loss), abs=1e-12)
    assert float(run("holder_token", new, old, mask, adv, p=1e-7).loss) == pytest.approx(float(run("gmpo", new, old, mask, adv).loss), abs=1e-7)
    assert float(run("holder", new, old, mask, adv, p=-1e-7).loss) == pytest.approx(float(run("gspo", new, old, mask, adv).loss), abs=1e-7)


def test_metrics_are_floats_and_meaningful():
    new, old, mask, adv = batch(4, scale=0.8)
    out = run("holder", new, old, mask, adv, p=2.0)
    m = out.metrics
    assert all(isinstance(v, float) for v in m.values())
    assert m["loss/p"] == 2.0
    assert 0.0 <= m["loss/clip_frac"] <= 1.0 and 0.0 < m["loss/token_weight_ess"] <= 1.0
    assert m["loss/ratio_min"] <= m["loss/ratio_mean"] <= m["loss/ratio_max"]
    # p = 0 weights are uniform: ESS exactly 1, concentration rises with |p|
    assert run("holder", new, old, mask, adv, p=0.0).metrics["loss/token_weight_ess"] == pytest.approx(1.0)
    assert run("holder", new, old, mask, adv, p=8.0).metrics["loss/token_weight_ess"] < m["loss/token_weight_ess"]


def test_no_overflow_for_large_p_delta_in_float32():
    new, old, mask, adv = batch(5, dtype=torch.float32, scale=30.0)
    for name in ("holder", "holder_token"):
        for p in (50.0, -50.0):
            out = run(name, new, old, mask, adv, p=p)
            (g,) = torch.autograd.grad(out.loss, new)
            assert math.isfinite(float(out.loss)) and torch.isfinite(g).all()


def test_empty_trajectory_contributes_zero_loss_and_gradient():
    new, old, mask, adv = batch(6)
    mask[2] = 0
    out = run("holder", new, old, mask, adv, p=1.5)
    (g,) = torch.autograd.grad(out.loss, new)
    assert torch.equal(g[2], torch.zeros_like(g[2])) and out.metrics["loss/empty_trajectories"] == 1.0
    keep = [i for i in range(6) if i != 2]
    sub = run("holder", new[keep], old[keep], mask[keep], adv[keep], p=1.5)
    assert float(out.loss) == pytest.approx(float(sub.loss), abs=1e-12)


def test_unknown_loss_and_bad_shapes_are_clear_errors():
    new, old, mask, adv = batch(0)
    with pytest.raises(RegistryError, match="Did you mean 'holder'"):
        run("holdr", new, old, mask, adv, p=1.0)
    with pytest.raises(ValueError, match="one value per trajectory"):
        run("holder", new, old, mask, adv[:-1], p=1.0)
    with pytest.raises(ValueError, match="clip_low"):
        policy_loss("holder", logprobs=new, old_logprobs=old, advantages=adv, loss_mask=mask, p=1.0, clip_low=1.5)
    assert set(LOSSES.names()) >= {"holder", "holder_token", "grpo", "gspo", "gmpo", "dr_grpo"}


def test_kl_low_var_is_zero_at_reference_and_positive_elsewhere():
    new, old, mask, _ = batch(7)
    assert float(kl_low_var(old, old, mask)) == 0.0
    kl = kl_low_var(new, old, mask)
    d = (old - new.detach())
    direct = torch.stack([((d[i].exp() - d[i] - 1)[mask[i] > 0]).mean() for i in range(d.shape[0])]).mean()
    assert float(kl) == pytest.approx(float(direct), rel=1e-10) and float(kl) > 0


def test_kl_per_token_is_clamped_like_verl_low_var_kl():
    from trainers.losses import KL_BOUND, kl_low_var

    lp = torch.zeros(1, 2)
    ref = torch.tensor([[15.0, 0.0]])  # k3 = e^15 - 16 for the first token, 0 for the second
    assert float(kl_low_var(lp, ref, torch.ones(1, 2))) == pytest.approx(KL_BOUND / 2)


@pytest.mark.parametrize("loss", ["holder", "holder_token", "grpo", "gspo", "gmpo", "dr_grpo"])
def test_ratio_metrics_describe_the_rows_that_carry_gradient(loss):
    # one row with signal; zero-advantage rows (ratio 1 when the learner skips them, or anything else) beside it
    # must not move the ESS adaptive p steers by, nor count as clipped
    signal = torch.tensor([[1.0, 0.0, 0.0, 0.0]])  # [1, T]
    alone = policy_loss(loss, logprobs=signal, old_logprobs=torch.zeros(1, 4), advantages=torch.tensor([1.0]),
                        loss_mask=torch.ones(1, 4), p=2.0).metrics
    others = torch.tensor([[-0.5, 0.0, 0.0, 0.0]] + [[0.0] * 4] * 8)  # [9, T]
    mixed = policy_loss(loss, logprobs=torch.cat([signal, others]), old_logprobs=torch.zeros(10, 4),
                        advantages=torch.tensor([1.0] + [0.0] * 9), loss_mask=torch.ones(10, 4), p=2.0).metrics
    for key in ("loss/token_weight_ess", "loss/token_weight_max", "loss/clip_frac", "loss/ratio_mean"):
        if key in alone:
            assert mixed[key] == pytest.approx(alone[key]), key
    # no row with signal: the metrics describe every row
    none = policy_loss(loss, logprobs=others, old_logprobs=torch.zeros(9, 4), advantages=torch.zeros(9),
                       loss_mask=torch.ones(9, 4), p=2.0).metrics
    assert none["loss/clip_frac"] == 0.0 and math.isfinite(none.get("loss/token_weight_ess", 1.0))
