"""model.freeze_cache: the learner's later passes start above the frozen layers and give the same logprobs and
the same update as running the whole model every pass (reference vs fast, float64)."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.test_learner import make_batch
from trainers.frozen_cache import FrozenActivations, frozen_activations
from trainers.learner import Learner, LearnerSettings
from trainers.models import build_tiny_model, decoder_layers, freeze_bottom_layers, load_model_and_tokenizer
from trainers.packing import pack_sequences, token_logprobs_and_entropy


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def tiny3(request, tmp_path_factory):
    path = build_tiny_model(tmp_path_factory.mktemp(f"tiny3_{request.param}"), arch=request.param, num_layers=3)
    model, _ = load_model_and_tokenizer(path, dtype=torch.float64)
    freeze_bottom_layers(model, 2)
    return model


def _logprobs(model, sequences, budget, frozen=None):
    out = {}
    for mb in pack_sequences(sequences, budget):
        lp, _ = token_logprobs_and_entropy(model, mb, frozen=frozen)
        out.update(mb.gather(lp))
    return out


def test_kept_activations_give_the_full_models_logprobs_under_another_packing(tiny3):
    sequences = make_batch("per_step", seed=7, n_traj=6).sequences()
    want = _logprobs(tiny3, sequences, 48)
    frozen = FrozenActivations(tiny3, 2)
    ran = []  # which decoder layers run
    hooks = [layer.register_forward_pre_hook(lambda m, a, i=i: ran.append(i)) for i, layer in enumerate(decoder_layers(tiny3))]
    try:
        with torch.no_grad():
            first = _logprobs(tiny3, sequences, 48, frozen)  # runs every layer, keeps layer 2's input
            assert frozen.misses > 0 and frozen.hits == 0 and set(ran) == {0, 1, 2}
            ran.clear()
            again = _logprobs(tiny3, sequences, 32, frozen)  # other rows and offsets: from the kept states
    finally:
        for h in hooks:
            h.remove()
    assert frozen.hits > 0 and set(ran) == {2}  # the frozen layers did not run again
    assert len(decoder_layers(tiny3)) == 3  # the stack is whole again
    for i in want:
        torch.testing.assert_close(first[i], want[i], rtol=0, atol=1e-12)
        torch.testing.assert_close(again[i], want[i], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("loss,p", [("holder", -1.5), ("grpo", 1.0)])
def test_update_with_kept_activations_equals_running_every_layer(tiny3, checkpointing, loss, p):
    """Two minibatches × two epochs: the old-logprob pass keeps the activations, every later pass (off-policy
    no-grad passes and the gradient passes) starts above the frozen layers."""
    batch = make_batch("per_step", seed=5, n_traj=6)
    adv = torch.tensor([1.0, 0.0, -1.0, 0.5, -0.5, 0.25])
    results = {}
    for cache in (False, True):
        model = copy.deepcopy(tiny3)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        trainable = [q for q in model.parameters() if q.requires_grad]
        learner = Learner(model, torch.optim.SGD(trainable, lr=0.5),
                          LearnerSettings(loss=loss, num_minibatches=2, epochs=2, micro_batch_tokens=48,
                                          frozen_layers=2, freeze_cache=cache), seed=1)
        results[cache] = (learner.update(batch, adv, p=p), model, learner)
    (m_ref, ref, _), (m_fast, fast, learner) = results[False], results[True]
    assert "perf/frozen_cache_hits" not in m_ref
    assert m_fast["perf/frozen_cache_hits"] > 0 and not learner.frozen.store  # freed when the update ends
    moved = False
    for (name, a), b, before in zip(ref.named_parameters(), fast.parameters(), tiny3.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12, msg=name)
        moved |= not torch.equal(a, before)
    assert moved
    assert m_fast["loss/policy"] == pytest.approx(m_ref["loss/policy"], rel=1e-10, abs=1e-12)
    assert m_fast["loss/grad_norm"] == pytest.approx(m_ref["loss/grad_norm"], rel=1e-10)


def test_cache_only_where_it_is_exact(tiny3):
    assert frozen_activations(tiny3, 2, enabled=True, sharded=False) is not None
    assert frozen_activations(tiny3, 0, enabled=True, sharded=False) is None  # nothing frozen
    assert frozen_activations(tiny3, 2, enabled=False, sharded=False) is None  # model.freeze_cache=false
    assert frozen_activations(tiny3, 2, enabled=True, sharded=True) is None  # FSDP2: every rank runs every layer
    other = copy.deepcopy(tiny3)
    other.config.model_type = "gemma"  # its decoder scales inputs_embeds: kept states would not be exact
    assert frozen_activations(other, 2, enabled=True, sharded=False) is None
    with pytest.raises(ValueError, match="at least one frozen layer"):
        FrozenActivations(tiny3, 0)
    # exact either way, so a run may resume with it switched
    from agent_rl.config import resume_changes

    assert resume_changes({"model": {"freeze_cache": True}}, {"model": {"freeze_cache": False}}) == []
    assert resume_changes({"model": {"freeze_cache_max_gb": 4.0}}, {"model": {"freeze_cache_max_gb": 1.0}}) == []


def test_the_cap_keeps_what_fits_and_the_rest_runs_every_layer(tiny3):
    sequences = make_batch("per_step", seed=3, n_traj=6).sequences()
    want = _logprobs(tiny3, sequences, 48)
    hidden = tiny3.config.hidden_size * 8  # float64 bytes per token
    cap = hidden * sum(len(s) for s in sequences) // 2  # room for about half the tokens
    frozen = FrozenActivations(tiny3, 2, max_bytes=cap)
    with torch.no_grad():
        _logprobs(tiny3, sequences, 48, frozen)
        kept = len(frozen.store)
        assert 0 < kept < len(sequences) and 0 < frozen.bytes <= cap
        assert frozen.bytes == hidden * sum(len(sequences[i]) for i in frozen.store)  # copies, not views of a batch
        hits, misses = frozen.hits, frozen.misses
        again = _logprobs(tiny3, sequences, 24, frozen)  # some micro-batches kept, the others in full
    assert frozen.hits > hits and frozen.misses > misses and len(frozen.store) == kept  # full: nothing more kept
    for i in want:
        torch.testing.assert_close(again[i], want[i], rtol=1e-10, atol=1e-12)
    frozen.clear()
    assert frozen.bytes == 0 and not frozen.store


def test_sft_epochs_from_kept_activations_equal_running_every_layer(tiny3):
    """Three SFT epochs: the first keeps every demonstration's activations, the later ones start above the
    frozen layers; under a cap of ~40 tokens (of 98) only the demonstrations kept skip them. The weights
    end equal every way."""
    from trainers.sft import SftLearner, SftSettings

    sequences = make_batch("per_step", seed=9, n_traj=6).sequences()
    results = {}
    for name, cache, cap_gb in (("off", False, None), ("all", True, None), ("capped", True, 2e-5)):
        model = copy.deepcopy(tiny3)
        learner = SftLearner(model, torch.optim.SGD([q for q in model.parameters() if q.requires_grad], lr=0.5),
                             SftSettings(epochs=3, batch_size=1, warmup_steps=0, micro_batch_tokens=48,
                                         frozen_layers=2, freeze_cache=cache, freeze_cache_max_gb=cap_gb))
        results[name] = (learner.fit(sequences), model, learner)
    m_ref, ref, _ = results["off"]
    assert "perf/frozen_cache_hits" not in m_ref
    m_all, m_cap = results["all"][0], results["capped"][0]
    assert m_all["perf/frozen_cache_hits"] > m_all["perf/frozen_cache_misses"] > 0
    assert 0 < m_cap["perf/frozen_cache_hits"] < m_all["perf/frozen_cache_hits"]
    assert 0 < m_cap["perf/frozen_cache_gb"] <= 2e-5 < m_all["perf/frozen_cache_gb"]
    assert any(not torch.equal(a, b) for a, b in zip(ref.parameters(), tiny3.parameters()))
    for name in ("all", "capped"):
        m_fast, fast, learner = results[name]
        assert not learner.frozen.store and learner.frozen.bytes == 0  # freed when the round ends
        assert m_fast["sft/loss"] == pytest.approx(m_ref["sft/loss"], rel=1e-10)
        for (pname, a), b in zip(ref.named_parameters(), fast.parameters()):
            torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12, msg=f"{name}: {pname}")


def test_trainer_passes_freeze_layers_to_the_learner_cache(tmp_path):
    from agent_rl.train import compose_config, train

    tiny = build_tiny_model(tmp_path / "tiny", num_layers=3)
    cfg = compose_config([
        "env=custom", "env.id=test_user/Length-v0", f"model.name={tiny}", "rollout=hf", "model.freeze_layers=2",
        "rollout.group_size=2", "rollout.tasks_per_step=2", "rollout.max_new_tokens=8", "rollout.max_turns=1",
        "train.steps=1", "train.lr=1e-2", "algo.num_minibatches=2", "train.micro_batch_tokens=512",
        f"train.run_dir={tmp_path / 'run'}", "logging.wandb=false", "train.progress=false",
    ])
    import gymnasium as gym

    if "test_user/Length-v0" not in gym.registry:  # registered by test_train.py; run alone, import it
        import tests.test_train  # noqa: F401

    m = train(cfg)
    assert m["perf/optimizer_steps"] == 2
    assert "perf/frozen_cache_hits" in m  # the learner kept activations (hits: 0 when every advantage was 0)
