"""Weight sync into the engine the trainer actually runs on CPU: bf16 (vLLM packs small weights into copies on AMX)
and compiled (rollout.vllm.enforce_eager=false). A module of its own: closing an in-process engine tears down
vLLM's process-wide parallel state, which the module-scoped engine of test_policies.py still uses."""

from __future__ import annotations

import pytest
import torch

from test_policies import _prompts, need_vllm, tiny_path  # noqa: F401  (tiny_path: the module-scoped fixture)
from trainers.models import load_model_and_tokenizer
from trainers.policies import SamplingParams, make_policy


@pytest.mark.parametrize("eager", [True, False], ids=["eager", "compiled"])
def test_vllm_sync_reaches_a_bf16_or_compiled_engine_as_a_fresh_load_would(tiny_path, tmp_path, eager):
    """The trainer's CPU engine runs in bf16 where the CPU has it, and on AMX vLLM then packs small weights into
    copies (sgl kernels) that a reload must re-pack; a compiled engine (rollout.vllm.enforce_eager=false, which
    the README suggests for long CPU runs) must not keep the old weights in its graph. After a sync, greedy
    replies and logprobs equal a fresh engine's loaded from the new weights, in the same dtype and mode."""
    need_vllm()
    learner, tok = load_model_and_tokenizer(tiny_path)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in learner.parameters():
            # New values that bf16 holds exactly: vLLM keeps the sgl path's biases in float32, so a sync writes
            # a float32 bias unrounded where a fresh load rounds it through bf16 first (replies then differ by
            # that rounding alone, measured); with bf16-exact values both engines must hold the same numbers.
            p.add_(torch.randn_like(p) * 0.3).copy_(p.to(torch.bfloat16).float())
    learner.save_pretrained(tmp_path / "new")
    tok.save_pretrained(tmp_path / "new")
    prompts, params = _prompts(tok), SamplingParams(temperature=0.0, max_tokens=12)
    settings = dict(dtype="bfloat16", max_model_len=256, seed=0, enforce_eager=eager)

    def replies(policy):
        return [(g.token_ids, g.logprobs) for row in policy.generate(prompts, params) for g in row]

    engine = make_policy("vllm", model=str(tiny_path), **settings)
    try:
        before = replies(engine)
        engine.sync_weights(learner.named_parameters())
        after = replies(engine)
    finally:
        engine.close()
    fresh = make_policy("vllm", model=str(tmp_path / "new"), **settings)
    try:
        want = replies(fresh)
    finally:
        fresh.close()
    assert [ids for ids, _ in after] != [ids for ids, _ in before]
    assert after == want  # the same tokens and the same logprobs, bit for bit
