"""model.freeze_layers: the bottom of the model stays fixed, every trainable gradient is the full model's,
with and without gradient checkpointing; bad values are refused before a model loads."""

from __future__ import annotations

import pytest
import torch

from agent_rl.config import ConfigError
from agent_rl.validation import validate
from agent_rl.train import compose_config, load_model
from trainers.models import build_tiny_model, decoder_layers, freeze_bottom_layers, load_model_and_tokenizer


@pytest.fixture(scope="module")
def tiny3(tmp_path_factory):
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny3"), num_layers=3))


def _grads(model, ids):
    model.zero_grad(set_to_none=True)
    logp = model(input_ids=ids).logits.log_softmax(-1)[:, :-1].gather(-1, ids[:, 1:, None])  # [B, T-1, 1]
    (-logp.sum()).backward()
    return {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("checkpointing", [False, True])
def test_frozen_bottom_keeps_every_trainable_gradient_exact(tiny3, checkpointing):
    full, _ = load_model_and_tokenizer(tiny3, dtype=torch.float64)
    part, _ = load_model_and_tokenizer(tiny3, dtype=torch.float64)
    if checkpointing:
        # as load_model enables it (the reentrant form loses layer 2's weight gradients here)
        part.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    part.train(), full.train()
    frozen = freeze_bottom_layers(part, 2)
    # the saving: nothing below layer 2 needs a gradient, so backward never enters the frozen layers
    into_layer2 = []
    decoder_layers(part)[2].register_forward_pre_hook(lambda _, args, kwargs: into_layer2.append(
        (args[0] if args else kwargs["hidden_states"]).requires_grad), with_kwargs=True)
    ids = torch.randint(0, 500, (2, 17), generator=torch.Generator().manual_seed(0))  # [B, T]
    want, got = _grads(full, ids), _grads(part, ids)
    assert into_layer2 and not any(into_layer2)  # (checkpointing runs the layer twice)
    bottom = ("model.embed_tokens.", "model.layers.0.", "model.layers.1.")
    assert frozen == sum(p.numel() for n, p in part.named_parameters() if n.startswith(bottom))
    trainable = 0
    for name, p in part.named_parameters():
        if name.startswith(bottom):
            assert not p.requires_grad and got[name] is None, name
        else:
            assert p.requires_grad and got[name] is not None, name
            torch.testing.assert_close(got[name], want[name], rtol=1e-10, atol=1e-12)
            trainable += 1
    assert trainable == len(list(decoder_layers(part)[2].parameters())) + 1  # layer 2 and the final norm
    # the tiny model ties its output head to the embeddings, so the head is fixed with them
    assert part.get_output_embeddings().weight is part.get_input_embeddings().weight


def test_freezing_every_layer_or_a_negative_count_is_refused(tiny3):
    model, _ = load_model_and_tokenizer(tiny3)
    with pytest.raises(ValueError, match=r"has 3 decoder layers.*Fix: use 0\.\.2"):
        freeze_bottom_layers(model, 3)
    assert all(p.requires_grad for p in model.parameters())
    assert freeze_bottom_layers(model, 0) == 0 and all(p.requires_grad for p in model.parameters())
    with pytest.raises(ConfigError, match="model.freeze_layers: got -1"):
        validate(compose_config([f"model.name={tiny3}", "model.freeze_layers=-1"]))
    with pytest.raises(ConfigError, match="LoRA already keeps the whole base model fixed"):
        validate(compose_config([f"model.name={tiny3}", "model.freeze_layers=1", "model.lora.enabled=true"]))


def test_load_model_applies_freeze_layers(tiny3):
    model, _ = load_model(compose_config([f"model.name={tiny3}", "model.freeze_layers=1"]))
    fixed = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert fixed == {n for n, _ in model.named_parameters() if n.startswith(("model.embed_tokens.", "model.layers.0."))}
    assert next(p for p in model.parameters() if p.requires_grad).dtype == torch.float32
    # more layers than the model has: the CLI's "configuration error", not a traceback
    with pytest.raises(ConfigError, match=r"model.freeze_layers: got 3; .* has 3 decoder layers"):
        load_model(compose_config([f"model.name={tiny3}", "model.freeze_layers=3"]))


def _bench_lines(monkeypatch, capsys, prefix: str, *argv: str) -> list[str]:
    """Run bench/freeze_bench.py with ``argv``; its printed lines that start with ``prefix``."""
    import runpy

    monkeypatch.setattr("sys.argv", ["freeze_bench.py", *argv])
    runpy.run_path(str(__import__("pathlib").Path(__file__).parents[1] / "bench" / "freeze_bench.py"), run_name="__main__")
    return [l for l in capsys.readouterr().out.splitlines() if l.startswith(prefix)]


def test_freeze_bench_runs_and_prints_ratios_to_nothing_frozen(tiny3, monkeypatch, capsys):
    lines = _bench_lines(monkeypatch, capsys, "freeze_bench", "--model", tiny3, "--layers", "2", "--turns", "2",
                         "--prompt-tokens", "30", "--reply-tokens", "4", "--reps", "1")
    assert len(lines) == 2
    assert "frozen= 0" in lines[0] and lines[0].endswith("ratio 1.00x") and "frozen= 2" in lines[1]


def test_freeze_bench_rl_mode_times_the_learner_without_and_with_the_cache(tiny3, monkeypatch, capsys):
    lines = _bench_lines(monkeypatch, capsys, "freeze_bench rl", "--rl", "--model", tiny3, "--layers", "2",
                         "--turns", "2", "--prompt-tokens", "30", "--reply-tokens", "4", "--reps", "1")
    assert [l.split(" tokens/update")[0].split(" ", 2)[2] for l in lines] == [
        "frozen= 0 cache=off 136", "frozen= 2 cache=off 136", "frozen= 2 cache=on  136"]  # 2 trajectories x 2 turns x 34
    assert lines[0].endswith("ratio 1.00x")


def test_freeze_bench_sft_fit_mode_times_epochs_without_and_with_the_cache(tiny3, monkeypatch, capsys):
    lines = _bench_lines(monkeypatch, capsys, "freeze_bench sft-fit", "--sft-epochs", "2", "--model", tiny3,
                         "--layers", "2", "--turns", "3", "--prompt-tokens", "30", "--reply-tokens", "4")
    assert [l.split(" tokens ")[0].split(" ", 3)[3] for l in lines] == [
        "frozen= 0 cache=off 204", "frozen= 2 cache=off 204", "frozen= 2 cache=on  204"]  # 2 epochs x 3 turns x 34
    assert lines[0].endswith("ratio 1.00x")
