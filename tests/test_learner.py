"""Learner: packing is exact, and the two-pass update gives the trajectory-level gradient."""

from __future__ import annotations

import copy
import dataclasses
import math
import random

import pytest
import torch

from agent_rl.types import Trajectory, TrajectoryBatch, Turn
from trainers.learner import Learner, LearnerSettings
from trainers.losses import kl_low_var, policy_loss
from trainers.models import build_tiny_model, load_model_and_tokenizer
from trainers.packing import pack_sequences, token_logprobs_and_entropy, twin_groups


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = build_tiny_model(tmp_path_factory.mktemp("tiny"))
    model, _ = load_model_and_tokenizer(path)
    return model


def make_batch(mode: str, seed: int = 0, n_traj: int = 4, vocab: int = 300) -> TrajectoryBatch:
    rnd = random.Random(seed)
    trajs = []
    for i in range(n_traj):
        turns = []
        for _ in range(rnd.randint(1, 3)):
            prompt = [rnd.randrange(vocab) for _ in range(rnd.randint(3, 9))]
            resp = [rnd.randrange(vocab) for _ in range(rnd.randint(1, 6))]
            turns.append(Turn(observation="o", prompt_ids=prompt, response_ids=resp,
                              response_logprobs=[-rnd.random() * 3 for _ in resp]))
        trajs.append(Trajectory(traj_id=f"t{i}", group_id=f"g{i // 2}", task_id="x", turns=turns,
                                reward=float(i % 2), prompt_mode=mode))
    return TrajectoryBatch(trajs)


def with_attention(model, impl: str):
    """A copy of ``model`` on attention implementation ``impl`` (sdpa: dense block mask)."""
    from trainers.attention import enable_varlen_attention, is_varlen

    model = copy.deepcopy(model)
    model.set_attn_implementation("sdpa")
    if impl == "agent_rl_varlen":
        assert enable_varlen_attention(model) and is_varlen(model)
    assert model.config._attn_implementation == impl
    return model


@pytest.mark.parametrize("impl", ["sdpa", "agent_rl_varlen"])
@pytest.mark.parametrize("budget,row_tokens", [(40, None), (40, 40), (60, 25), (10_000, None), (10_000, 10_000)])
def test_packed_logprobs_equal_separate_forward_passes(tiny, budget, row_tokens, impl):
    tiny = with_attention(tiny, impl)
    seqs = make_batch("per_step", n_traj=6).sequences()
    mbs = pack_sequences(seqs, max_tokens=budget, row_tokens=row_tokens)
    assert sorted(i for mb in mbs for i in mb.seq_indices) == list(range(len(seqs)))
    assert sum(mb.num_tokens for mb in mbs) == sum(len(s) for s in seqs)
    assert all(mb.input_ids.numel() <= budget or mb.input_ids.shape[0] == 1 for mb in mbs)
    with torch.no_grad():
        for mb in mbs:
            lp, ent = token_logprobs_and_entropy(tiny, mb, with_entropy=True)
            got, got_ent = mb.gather(lp), mb.gather(ent)
            for i in mb.seq_indices:
                single = pack_sequences(seqs, 10_000, [i])[0]
                assert single.input_ids.shape == (1, len(seqs[i]))
                ref, ref_ent = token_logprobs_and_entropy(tiny, single, with_entropy=True)
                assert torch.allclose(got[i], ref[0], atol=1e-4)
                assert torch.allclose(got_ent[i], ref_ent[0], atol=1e-4)
                assert got[i][0] == 0.0 and (got[i][1:] < 0).all()
            # loss_only: the same values on the agent tokens, 0 elsewhere
            lp_loss, ent_loss = token_logprobs_and_entropy(tiny, mb, with_entropy=True, loss_only=True)
            assert mb.loss_mask is not None and mb.loss_mask.any()
            want = mb.loss_mask.clone()
            want[:, 0] = False
            want[:, 1:] &= mb.segments[:, 1:] == mb.segments[:, :-1]  # a sequence's first token has no prefix
            torch.testing.assert_close(lp_loss[want], lp[want], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(ent_loss[want], ent[want], atol=1e-4, rtol=1e-4)
            assert (lp_loss[~want] == 0).all() and (ent_loss[~want] == 0).all()


def test_loss_only_zeroes_the_prompt_tokens_also_for_a_model_without_logits_to_keep(tiny):
    """A model whose forward cannot skip logits (remote code, a wrapper) still gets 0 off the agent tokens: SFT and
    the policy loss sum these values and divide by the agent-token count."""

    class NoLogitsToKeep(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, position_ids=None, attention_mask=None):
            return self.inner(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask)

    mb = pack_sequences(make_batch("per_step", n_traj=3).sequences(), max_tokens=10_000)[0]
    with torch.no_grad():
        want, _ = token_logprobs_and_entropy(tiny, mb, loss_only=True)  # [R, L]
        got, _ = token_logprobs_and_entropy(NoLogitsToKeep(tiny), mb, loss_only=True)  # [R, L]
    assert (want != 0).any() and not mb.loss_mask.all()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_varlen_attention_gradient_equals_dense_block_mask(tiny):
    """Backward through the per-sequence SDPA calls gives the dense-mask gradient."""
    seqs = make_batch("per_step", seed=3, n_traj=6).sequences()
    grads = {}
    for impl in ("sdpa", "agent_rl_varlen"):
        model = with_attention(tiny, impl).double()  # float64: any difference is a bug, not rounding
        (mb,) = pack_sequences(seqs, 10_000, row_tokens=10_000)
        assert mb.input_ids.shape[0] == 1 and len(mb.entries) == len(seqs)  # one row, many sequences
        lp, ent = token_logprobs_and_entropy(model, mb, with_entropy=True)
        (lp.sum() + 0.1 * ent.sum()).backward()
        grads[impl] = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert grads["sdpa"].abs().max() > 0
    torch.testing.assert_close(grads["agent_rl_varlen"], grads["sdpa"], atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_varlen_attention_with_grouped_query_heads(tmp_path, arch):
    """4 query heads sharing 2 kv heads (as SmolLM2/Qwen2.5): same logprobs and gradient as sdpa."""
    path = build_tiny_model(tmp_path, arch=arch, hidden_size=128, num_heads=4, num_kv_heads=2)
    model, _ = load_model_and_tokenizer(path)
    assert model.config.num_key_value_heads == 2 and model.config.num_attention_heads == 4
    seqs = make_batch("per_step", seed=7, n_traj=5).sequences()
    (mb,) = pack_sequences(seqs, 10_000, row_tokens=10_000)
    out = {}
    for impl in ("sdpa", "agent_rl_varlen"):
        m = with_attention(model, impl).double()
        lp, _ = token_logprobs_and_entropy(m, mb)
        lp.sum().backward()
        out[impl] = (lp.detach(), torch.cat([p.grad.flatten() for p in m.parameters()]))
    torch.testing.assert_close(out["agent_rl_varlen"], out["sdpa"], atol=1e-10, rtol=1e-9)


def test_varlen_model_generates_and_saves_like_sdpa(tiny, tmp_path):
    """Switching to varlen changes nothing outside packed learner calls: padded batched
    forward passes equal sdpa's, and a saved checkpoint does not name the custom kernel."""
    ids = torch.tensor([[5, 6, 7, 8, 9], [0, 0, 3, 4, 5]])
    attn = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    outs = {}
    for impl in ("sdpa", "agent_rl_varlen"):
        model = with_attention(tiny, impl)
        with torch.no_grad():
            outs[impl] = (model(input_ids=ids, attention_mask=attn).logits, model(input_ids=ids[:1]).logits)
    torch.testing.assert_close(outs["agent_rl_varlen"], outs["sdpa"])
    model.save_pretrained(tmp_path)
    assert "agent_rl_varlen" not in (tmp_path / "config.json").read_text()


def direct_gradient(model, batch, adv, p, loss, kl_coef=0.0, entropy_coef=0.0, behaviour_model=None,
                    clip_ratio_c=None):
    """Reference: every sequence forward with grad at once, the loss on the in-graph matrix
    (old logprobs: the model's own, detached, or ``behaviour_model``'s)."""
    model = copy.deepcopy(model)
    model.zero_grad()
    seqs = batch.sequences()
    rows, ent_rows = [[] for _ in batch.trajectories], [[] for _ in batch.trajectories]
    old_rows = [[] for _ in batch.trajectories]
    for i, s in enumerate(seqs):
        mb = pack_sequences(seqs, 10_000, [i])[0]
        lp, ent = token_logprobs_and_entropy(model, mb, with_entropy=True)
        m = torch.tensor(s.loss_mask, dtype=torch.bool)
        rows[s.traj_index].append(lp[0][m])
        ent_rows[s.traj_index].append(ent[0][m])
        if behaviour_model is not None:
            with torch.no_grad():
                old_rows[s.traj_index].append(token_logprobs_and_entropy(behaviour_model, mb)[0][0][m])
    T = max(sum(len(x) for x in r) for r in rows)
    B = len(rows)
    lp_mat = torch.zeros(B, T)
    mask = torch.zeros(B, T)
    for b, r in enumerate(rows):
        cat = torch.cat(r)
        lp_mat = lp_mat.index_put((torch.full((len(cat),), b), torch.arange(len(cat))), cat)
        mask[b, : len(cat)] = 1
    old = lp_mat.detach()
    if behaviour_model is not None:
        old = torch.zeros(B, T)
        for b, r in enumerate(old_rows):
            cat = torch.cat(r)
            old[b, : len(cat)] = cat
    out = policy_loss(loss, logprobs=lp_mat, old_logprobs=old, advantages=adv, loss_mask=mask, p=p,
                      clip_ratio_c=clip_ratio_c)
    total = out.loss + (kl_coef * kl_low_var(lp_mat, old + 0.1 * mask, mask) if kl_coef else 0.0)
    if entropy_coef:
        total = total - entropy_coef * torch.stack([torch.cat(r).mean() for r in ent_rows]).mean()
    total.backward()
    return {n: p_.grad.clone() for n, p_ in model.named_parameters() if p_.grad is not None}


@pytest.mark.parametrize("mode", ["per_step", "conversation"])
@pytest.mark.parametrize("loss,p", [("holder", 2.0), ("holder_token", -1.0), ("grpo", None), ("gspo", None)])
def test_two_pass_update_equals_direct_trajectory_gradient(tiny, mode, loss, p):
    batch = make_batch(mode, seed=1)
    adv = torch.tensor([1.0, -0.5, 0.7, -1.2])
    expected = direct_gradient(tiny, batch, adv, p if p is not None else 1.0, loss, entropy_coef=0.01)
    model = copy.deepcopy(tiny)
    before = {n: t.detach().clone() for n, t in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    learner = Learner(model, opt, LearnerSettings(loss=loss, micro_batch_tokens=24, max_grad_norm=1e9, entropy_coef=0.01))
    metrics = learner.update(batch, adv, p=p if p is not None else 1.0)
    for name, t in model.named_parameters():
        step = before[name] - t.detach()  # = lr * grad
        assert torch.allclose(step, expected[name], atol=1e-5, rtol=1e-4), name
    assert metrics["perf/optimizer_steps"] == 1.0 and metrics["loss/grad_norm"] > 0


@pytest.mark.parametrize("clip_ratio_c", [3.0, None])
@pytest.mark.parametrize("loss,p", [("holder", -1.0), ("grpo", 1.0)])
def test_behaviour_weights_give_the_old_logprobs_of_an_asynchronous_batch(tiny, loss, p, clip_ratio_c):
    """A batch sampled by the previous weights (one-step-off-policy rollouts): the update's ratios use
    logprobs recomputed under those weights, not the current ones, from the first update on. Off policy, some
    grpo tokens of negative-advantage rows are past the dual clip's cap, so its setting reaches the loss."""
    batch = make_batch("per_step", seed=3)
    adv = torch.tensor([1.0, -0.5, 0.7, -1.2])
    behaviour_model = copy.deepcopy(tiny)
    model = copy.deepcopy(tiny)
    with torch.no_grad():
        for t in model.parameters():
            t.add_(0.02 * torch.randn_like(t))  # the update the learner made while the batch was generated
    behaviour = {n: t.detach().clone() for n, t in behaviour_model.named_parameters()}
    expected = direct_gradient(model, batch, adv, p, loss, behaviour_model=behaviour_model, clip_ratio_c=clip_ratio_c)
    on_policy = direct_gradient(model, batch, adv, p, loss, clip_ratio_c=clip_ratio_c)
    before = {n: t.detach().clone() for n, t in model.named_parameters()}
    learner = Learner(model, torch.optim.SGD(model.parameters(), lr=1.0),
                      LearnerSettings(loss=loss, micro_batch_tokens=24, max_grad_norm=1e9, clip_ratio_c=clip_ratio_c))
    metrics = learner.update(batch, adv, p=p, behaviour=behaviour)
    if loss == "grpo":
        assert (metrics["loss/dual_clip_frac"] > 0) == (clip_ratio_c is not None)
    assert metrics["loss/ratio_mean"] != pytest.approx(1.0, abs=1e-4)  # off-policy from the first update
    moved_apart = False
    for name, t in model.named_parameters():
        step = before[name] - t.detach()  # = lr * grad
        assert torch.allclose(step, expected[name], atol=1e-5, rtol=1e-4), name
        moved_apart |= not torch.allclose(expected[name], on_policy[name], atol=1e-4, rtol=1e-3)
    assert moved_apart  # the test can tell the behaviour logprobs from the current ones
    assert all(torch.equal(a, behaviour[n]) for n, a in behaviour_model.named_parameters())  # swapped back


def test_kl_term_uses_the_reference_model(tiny):
    batch = make_batch("per_step", seed=2)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    ref = copy.deepcopy(tiny)
    with torch.no_grad():
        for t in ref.parameters():
            t.add_(0.01 * torch.randn_like(t))
    model = copy.deepcopy(tiny)
    learner = Learner(model, torch.optim.SGD(model.parameters(), lr=0.0), LearnerSettings(kl_coef=0.5), ref_model=ref)
    m = learner.update(batch, adv, p=1.0)
    assert m["loss/kl"] > 0 and m["loss/total"] != m["loss/policy"]


def test_several_minibatches_and_epochs_change_weights_and_report(tiny):
    batch = make_batch("per_step", seed=3)
    model = copy.deepcopy(tiny)
    learner = Learner(model, torch.optim.AdamW(model.parameters(), lr=1e-3),
                      LearnerSettings(num_minibatches=2, epochs=2, micro_batch_tokens=32))
    m = learner.update(batch, torch.tensor([1.0, -1.0, 1.0, -1.0]), p=0.5)
    assert m["perf/optimizer_steps"] == 4.0
    changed = any(not torch.equal(a, b) for a, b in zip(model.parameters(), tiny.parameters()))
    assert changed and all(torch.isfinite(torch.tensor(v)) for v in m.values())


def test_wrong_advantage_shape_is_a_clear_error(tiny):
    learner = Learner(tiny, torch.optim.SGD(tiny.parameters(), lr=0.0), LearnerSettings())
    with pytest.raises(ValueError, match=r"advantages must be \[B\]"):
        learner.update(make_batch("per_step"), torch.zeros(3), p=1.0)


def test_zero_advantages_skip_backward_but_keep_the_optimizer_step(tiny):
    batch = make_batch("per_step", seed=4)
    model = copy.deepcopy(tiny)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    learner = Learner(model, opt, LearnerSettings())
    learner.update(batch, torch.tensor([1.0, -1.0, 0.5, -0.5]), p=1.0)  # builds Adam momentum
    twin = copy.deepcopy(model)
    twin_opt = torch.optim.AdamW(twin.parameters(), lr=1e-2, weight_decay=0.1)
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    m = learner.update(batch, torch.zeros(4), p=1.0)
    assert m["perf/skipped_zero_gradient"] == 1.0
    for t in twin.parameters():
        t.grad = torch.zeros_like(t)
    twin_opt.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("loss,p", [("holder", -1.5), ("grpo", 1.0), ("gspo", 0.0), ("dr_grpo", 1.0)])
def test_skipping_zero_advantage_trajectories_leaves_the_update_unchanged(tiny, loss, p):
    """Reference vs fast: the same two minibatches × two epochs (later updates off-policy) with the
    zero-advantage trajectories computed, and skipped."""
    batch = make_batch("per_step", seed=5, n_traj=6)
    adv = torch.tensor([1.0, 0.0, -1.0, 0.0, 0.0, 0.5])
    results = {}
    for skip in (False, True):
        # float64: the two paths pack different micro-batches, so their float32 rounding differs, and in the
        # later off-policy updates that can move a token ratio across the clip edge (seen on one install:
        # grpo, 5 of 32,768 weights 2.4e-6 apart); in float64 the paths agree to the tolerance below.
        model = copy.deepcopy(tiny).double()
        # SGD: the update is the gradient itself (Adam would divide float rounding by ~0 second moments)
        learner = Learner(model, torch.optim.SGD(model.parameters(), lr=0.5),
                          LearnerSettings(loss=loss, num_minibatches=2, epochs=2, micro_batch_tokens=48,
                                          skip_zero_advantage=skip), seed=1)
        results[skip] = (learner.update(batch, adv, p=p), model)
    (m_ref, ref), (m_fast, fast) = results[False], results[True]
    n_inert = sum(len(batch.trajectories[t].turns) for t in (1, 3, 4))
    assert m_ref["perf/skipped_sequences"] == 0 and m_fast["perf/skipped_sequences"] == n_inert
    for a, b in zip(ref.parameters(), fast.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert m_fast["loss/policy"] == pytest.approx(m_ref["loss/policy"], abs=1e-6)
    assert m_fast["loss/grad_norm"] == pytest.approx(m_ref["loss/grad_norm"], rel=1e-4)
    # an entropy bonus needs every trajectory's tokens: nothing is skipped then
    learner = Learner(copy.deepcopy(tiny), torch.optim.SGD(tiny.parameters(), lr=0.0),
                      LearnerSettings(loss=loss, entropy_coef=0.01))
    assert learner.update(batch, adv, p=p)["perf/skipped_sequences"] == 0


def batch_with_twins(mode: str = "per_step") -> TrajectoryBatch:
    """Six episodes in three groups of two, the members of a group playing the same first turns before they
    part (as G episodes from one start state do): 1 + 2 + 0 turns shared, as whole token-identical sequences."""
    base = make_batch(mode, seed=11, n_traj=6)
    openings = [t for traj in make_batch(mode, seed=12, n_traj=8).trajectories for t in traj.turns]
    trajs = []
    for k, shared in enumerate((1, 2, 0)):
        a, b = base.trajectories[2 * k], base.trajectories[2 * k + 1]
        common, openings = openings[:shared], openings[shared:]
        trajs.append(dataclasses.replace(a, turns=copy.deepcopy(common) + a.turns, group_id=f"g{k}", reward=1.0))
        trajs.append(dataclasses.replace(b, turns=copy.deepcopy(common) + b.turns, group_id=f"g{k}", reward=0.0))
    return TrajectoryBatch(trajs)


def test_twin_groups_find_token_identical_sequences():
    seqs = batch_with_twins().sequences()
    groups = twin_groups(seqs, list(range(len(seqs))))
    assert sum(len(m) for m in groups.values()) == len(seqs)
    assert len(seqs) - len(groups) == 3  # 1 + 2 + 0 shared turns
    for first, members in groups.items():
        assert members[0] == first
        assert all(seqs[i].input_ids == seqs[first].input_ids and seqs[i].loss_mask == seqs[first].loss_mask
                   for i in members)
    heads = [tuple(seqs[f].input_ids) for f in groups]
    assert len(set(heads)) == len(heads)
    # the same tokens with another agent-token mask are not twins (the loss reads other positions)
    other = dataclasses.replace(seqs[0], loss_mask=[1] * len(seqs[0]))
    assert len(twin_groups([seqs[0], other], [0, 1])) == 2


@pytest.mark.parametrize("loss,p,entropy_coef,kl", [("holder", -1.5, 0.0, 0.0), ("grpo", 1.0, 0.0, 0.0),
                                                   ("holder", 2.0, 0.01, 0.0), ("gspo", 0.0, 0.0, 0.05)])
def test_twin_sequences_computed_once_leave_the_update_unchanged(tiny, loss, p, entropy_coef, kl):
    """Reference vs fast: every twin computed (share_twins=False) against one pass per set of twins, over two
    minibatches × two epochs (later updates off-policy), with an entropy bonus and with a KL reference."""
    batch = batch_with_twins()
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, 0.0, 0.0])
    results = {}
    for share in (False, True):
        model = copy.deepcopy(tiny).double()
        tokens: list[int] = []
        hook = model.register_forward_hook(lambda _m, args, kw, out: tokens.append(int((kw["position_ids"] >= 0).sum())),
                                           with_kwargs=True)
        ref_model = copy.deepcopy(tiny).double() if kl else None
        learner = Learner(model, torch.optim.SGD(model.parameters(), lr=0.5),
                          LearnerSettings(loss=loss, num_minibatches=2, epochs=2, micro_batch_tokens=48,
                                          entropy_coef=entropy_coef, kl_coef=kl, share_twins=share),
                          ref_model=ref_model, seed=1)
        results[share] = (learner.update(batch, adv, p=p), model, sum(tokens))
        hook.remove()
    (m_ref, ref, tok_ref), (m_fast, fast, tok_fast) = results[False], results[True]
    for a, b in zip(ref.parameters(), fast.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    for key in ("loss/policy", "loss/total", "loss/grad_norm", "loss/entropy", "loss/kl"):
        if key in m_ref:
            assert m_fast[key] == pytest.approx(m_ref[key], rel=1e-6, abs=1e-9), key
    assert m_ref["perf/twin_sequences"] == 0
    # the zero-advantage group (no shared turns) is skipped unless an entropy or KL term needs it: 3 twins either way
    assert m_fast["perf/twin_sequences"] == 3
    assert tok_fast < tok_ref


@pytest.mark.parametrize("bf16", [None, True, False])
def test_bf16_autocast_on_cpu_only_when_asked(tiny, bf16):
    """train.bf16: null keeps float32 on CPU; true runs the learner's forwards under CPU bf16
    autocast (and the update still lands: finite loss, changed weights, close to float32)."""
    model = copy.deepcopy(tiny)
    seen: list[bool] = []
    hook = model.register_forward_hook(lambda *_: seen.append(torch.is_autocast_enabled("cpu")))
    before = [p.detach().clone() for p in model.parameters()]
    learner = Learner(model, torch.optim.AdamW(model.parameters(), lr=1e-3), LearnerSettings(bf16_autocast=bf16))
    batch = make_batch("per_step", seed=5)
    metrics = learner.update(batch, torch.tensor([1.0, -1.0, 0.5, -0.5]), p=1.0)
    hook.remove()
    assert seen and all(s == bool(bf16) for s in seen)
    assert torch.isfinite(torch.tensor(metrics["loss/total"]))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    if bf16:
        seqs = batch.sequences()
        lp32 = Learner(copy.deepcopy(tiny), None, LearnerSettings(bf16_autocast=False)).sequence_logprobs(tiny, seqs, [0])[0]
        lp16 = learner.sequence_logprobs(tiny, seqs, [0])[0]
        assert not torch.equal(lp16, lp32) and torch.allclose(lp16, lp32, atol=0.1)


def direct_turn_gradient(model, batch, adv, p, loss):
    """Reference for ratio_unit=turn: every turn its own row (M_p over that turn's tokens only)."""
    model = copy.deepcopy(model)
    model.zero_grad()
    rows = []
    for i, s in enumerate(batch.sequences()):
        mb = pack_sequences(batch.sequences(), 10_000, [i])[0]
        lp, _ = token_logprobs_and_entropy(model, mb)
        rows.append(lp[0][torch.tensor(s.loss_mask, dtype=torch.bool)])
    T = max(len(r) for r in rows)
    lp_mat = torch.stack([torch.cat([r, r.new_zeros(T - len(r))]) for r in rows])  # [R, T]
    mask = torch.stack([torch.cat([torch.ones(len(r)), torch.zeros(T - len(r))]) for r in rows])  # [R, T]
    out = policy_loss(loss, logprobs=lp_mat, old_logprobs=lp_mat.detach(), advantages=adv, loss_mask=mask, p=p)
    out.loss.backward()
    return {n: p_.grad.clone() for n, p_ in model.named_parameters() if p_.grad is not None}


@pytest.mark.parametrize("loss,p", [("holder", 2.0), ("holder", -1.0), ("holder_token", -1.0), ("grpo", 1.0),
                                    ("gspo", 0.0), ("gmpo", 0.0), ("dr_grpo", 1.0)])
def test_turn_rows_update_equals_direct_per_turn_gradient(tiny, loss, p):
    """algo.ratio_unit=turn for every loss, in float64 (a difference is a bug, not rounding)."""
    batch = make_batch("per_step", seed=7)
    n_rows = len(batch.sequences())
    assert n_rows > len(batch) and batch.rows("turn") == [[i] for i in range(n_rows)]
    adv = torch.linspace(-1.0, 1.0, n_rows, dtype=torch.float64)
    tiny = copy.deepcopy(tiny).double()
    expected = direct_turn_gradient(tiny, batch, adv, p, loss)
    model = copy.deepcopy(tiny)
    before = {n: t.detach().clone() for n, t in model.named_parameters()}
    learner = Learner(model, torch.optim.SGD(model.parameters(), lr=1.0),
                      LearnerSettings(loss=loss, micro_batch_tokens=24, max_grad_norm=None, ratio_unit="turn"))
    learner.update(batch, adv, p=p)
    for name, t in model.named_parameters():
        assert torch.allclose(before[name] - t.detach(), expected[name], atol=1e-12, rtol=1e-9), name
    with pytest.raises(ValueError, match=r"\[turns\]"):
        learner.update(batch, torch.zeros(len(batch)), p=p)
    with pytest.raises(ValueError, match="per_step"):
        make_batch("conversation").rows("turn")


def test_turn_advantages_are_normalised_over_the_groups_turn_rows():
    """float64 by hand: a group of a won 2-turn and a lost 3-turn episode gives rows [1, 1, 0, 0, 0]."""
    from agent_rl.train import compose_config
    from trainers.batch import row_advantages

    batch = make_batch("per_step", seed=0, n_traj=2)
    batch.trajectories[0].turns = batch.trajectories[0].turns[:1] * 2
    batch.trajectories[1].turns = batch.trajectories[1].turns[:1] * 3
    batch.trajectories[0].reward, batch.trajectories[1].reward = 1.0, 0.0
    got = row_advantages(compose_config(["algo.ratio_unit=turn"]), batch)
    r = torch.tensor([1, 1, 0, 0, 0], dtype=torch.float64)
    want = (r - r.mean()) / (r.std() + 1e-6)
    assert torch.allclose(got.double(), want, atol=1e-5)
    per_traj = row_advantages(compose_config([]), batch)
    assert per_traj.shape == (2,) and batch.advantages == per_traj.tolist()


def test_turn_rows_carry_only_their_own_invalid_action_penalty():
    """algo.ratio_unit=turn, float64 by hand: a won episode with turns (valid, invalid) and a lost one with
    (invalid, valid, valid), penalty 0.1. Each turn row's reward is the env return less its own turn's penalty
    (the authors' placement): rows [1.0, 0.9, -0.1, 0.0, 0.0]; trajectory rows keep every penalty: [0.9, -0.1]."""
    from agent_rl.train import compose_config
    from trainers.batch import row_advantages

    batch = make_batch("per_step", seed=0, n_traj=2)
    won, lost = batch.trajectories
    won.turns = [dataclasses.replace(won.turns[0], action_valid=v) for v in (True, False)]
    lost.turns = [dataclasses.replace(won.turns[0], action_valid=v) for v in (False, True, True)]
    won.turns[1].reward = 1.0  # the env's reward for the win, on the last turn
    won.reward, lost.reward = 1.0 - 0.1, 0.0 - 0.1  # what the rollout sets: env return less every penalty
    got = row_advantages(compose_config(["algo.ratio_unit=turn", "rollout.invalid_action_penalty=0.1"]), batch)
    r = torch.tensor([1.0, 0.9, -0.1, 0.0, 0.0], dtype=torch.float64)
    want = (r - r.mean()) / (r.std() + 1e-6)
    assert torch.allclose(got.double(), want, atol=1e-5)
    assert got[0] > got[1] and got[3] > got[2]  # within an episode, the invalid turn ranks below the valid ones
    per_traj = row_advantages(compose_config(["rollout.invalid_action_penalty=0.1"]), batch)
    assert torch.allclose(per_traj.double(), torch.tensor([0.9, -0.1], dtype=torch.float64).sub(0.4).div(0.5 ** 0.5 + 1e-6), atol=1e-5)


def test_sampler_logprob_gap_is_reported_only_at_temperature_1(tiny):
    # backends report temperature-1 logprobs; the learner's are at the sampling temperature
    batch = make_batch("per_step", seed=5)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    for temperature, logged in ((1.0, True), (0.7, False)):
        model = copy.deepcopy(tiny)
        learner = Learner(model, torch.optim.SGD(model.parameters(), lr=0.0), LearnerSettings(temperature=temperature))
        m = learner.update(batch, adv, p=1.0)
        assert ("loss/sampler_logprob_diff" in m) is logged
        assert math.isfinite(m["loss/policy"])
