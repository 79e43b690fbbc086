"""bench/learner_memory.py: the learner built as `train` builds it (preset + overrides), on a random model of a
named shape; on a CPU the memory columns are n/a and the rest runs. Its numbers come from a GPU run."""

from __future__ import annotations

import functools

import pytest
import torch

from bench_scripts import ROOT, load_bench

_bench = functools.partial(load_bench, "learner_memory")


def test_variants_apply_their_overrides_and_checkpointing_keeps_the_gradient(tmp_path):
    bench = _bench()
    model_dir = bench.write_model(tmp_path, "tiny")
    batch, adv, tokens = bench.make_batch(4, 3, 120, 20, bench.SHAPES["tiny"]["vocab_size"])
    assert tokens == sum(len(t.prompt_ids) + len(t.response_ids) for tr in batch.trajectories for t in tr.turns)
    assert adv.tolist() == [-1.0, 1.0, -1.0, 1.0]
    f32 = ["model.dtype=float32"]  # emulated bf16 autocast is slow on this CPU and not what is compared here
    base = bench.run_variant(model_dir, "paper_alfworld", f32, batch, adv, updates=1)
    ckpt = bench.run_variant(model_dir, "paper_alfworld", [*f32, "model.gradient_checkpointing=true",
                                                           "train.micro_batch_tokens=256"], batch, adv, updates=1)
    assert (base["checkpointing"], ckpt["checkpointing"]) == (False, True)
    assert (base["mbt"], ckpt["mbt"]) == (4096, 256) and base["minibatches"] == 4 and base["kl"] == 0.01  # the preset
    assert base["grad_norm"] > 0
    # recomputing activations and packing smaller micro-batches change the order of float32 sums only
    assert ckpt["grad_norm"] == pytest.approx(base["grad_norm"], rel=1e-4)
    if not torch.cuda.is_available():
        assert base["peak"] is None and base["loaded"] is None


def test_main_prints_a_line_per_variant_and_a_ratio(capsys):
    _bench().main(["--shape", "tiny", "--trajectories", "2", "--turns", "2", "--prompt-tokens", "60",
                   "--response-tokens", "10", "--updates", "1", "--variant", "a:model.dtype=float32",
                   "--variant", "b:model.dtype=float32;train.micro_batch_tokens=128"])
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("learner_memory ")]
    assert len(lines) == 4 and "2 trajectories" in lines[0]
    assert lines[1].startswith("learner_memory a (model.dtype=float32)") and "micro_batch_tokens=4096" in lines[1]
    assert "micro_batch_tokens=128" in lines[2] and "tokens/s" in lines[2]
    assert lines[3].startswith("learner_memory ratio b/a: peak memory ")


def test_a_malformed_variant_is_refused():
    with pytest.raises(SystemExit, match="NAME:override"):
        _bench().parse_variant("no-colon")


def test_the_readme_command_names_known_shapes_and_valid_variants():
    import shlex

    text = (ROOT / "README.md").read_text().replace("\\\n", " ")
    commands = [shlex.split(l) for l in text.splitlines() if l.startswith("python bench/learner_memory.py --")]
    assert commands, "the README's measured learner_memory command is gone"
    bench = _bench()
    for argv in commands:
        args = argv[2:]
        assert args[args.index("--shape") + 1] in bench.SHAPES
        variants = [args[i + 1] for i, a in enumerate(args) if a == "--variant"]
        assert [bench.parse_variant(v)[0] for v in variants] == ["baseline", "gradient_checkpointing", "micro_batch_16k"]
