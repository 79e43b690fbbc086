"""bench/decode_roofline.py: bad options fail before anything loads, the bytes a decode step must read are counted
from the checkpoint as the model defines them, and a run on a tiny model prints the lines the README quotes."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import pytest

from bench_scripts import load_bench, run_bench
from test_policies import need_vllm
from trainers.models import build_tiny_model

_bench_module = functools.partial(load_bench, "decode_roofline")
_run = functools.partial(run_bench, "decode_roofline")


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    # Grouped-query attention (4 heads, 2 KV heads), as SmolLM2's 9/3: the KV count must use the KV heads.
    return build_tiny_model(tmp_path_factory.mktemp("roofline"), arch="llama", hidden_size=128, num_layers=3,
                            num_heads=4, num_kv_heads=2)


def test_bad_options_fail_before_loading():
    r = _run("--engines", "fast")
    assert r.returncode == 2 and "--engines takes eager and/or compiled" in r.stderr
    r = _run("--batches", "1,a")
    assert r.returncode == 2 and "--batches takes comma-separated integers" in r.stderr
    r = _run("--batches", "0")
    assert r.returncode == 2 and "must be >= 1" in r.stderr


def test_bytes_per_step_are_the_models_parameters_and_kv_heads(tiny_llama):
    from transformers import AutoModelForCausalLM

    mod = _bench_module()
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    unique = sum(p.numel() for p in model.parameters())  # tied embeddings once, as the checkpoint stores them
    count, nbytes = mod.model_bytes(Path(tiny_llama), 2)
    assert (count, nbytes) == (unique, 2 * unique)
    cfg = json.loads((Path(tiny_llama) / "config.json").read_text())
    per, how = mod.kv_bytes_per_token(Path(tiny_llama), 2)
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    assert per == cfg["num_hidden_layers"] * 2 * 2 * head_dim * 2  # layers x (K, V) x 2 KV heads x head_dim x bf16
    assert how == f"3 layers x 2 x 2 kv heads x {head_dim} x 2 B"


def test_a_folder_without_safetensors_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match=r"no \*\.safetensors weights in"):
        _bench_module().model_bytes(tmp_path, 2)


def test_read_bandwidth_is_a_positive_rate():
    assert _bench_module().read_bandwidth(1, mib=8, repeats=2) > 0


def test_a_run_prints_measured_floor_and_ratio_per_batch(tiny_llama):
    need_vllm()
    r = _run("--model", str(tiny_llama), "--batches", "1,3", "--context", "24", "--tokens", "4", "--engines",
             "eager", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.search(r"^decode_roofline memory read [\d.]+ GB/s", r.stdout, re.M), r.stdout
    assert re.search(r"^decode_roofline eager engine \(start [\d.]+ s\), model .*: [\d.]+M parameters in \w+ = \d+ MB "
                     r"read per decode step; KV [\d.]+ KB per context token \(3 layers x 2 x 2 kv heads", r.stdout,
                     re.M), r.stdout
    rows = re.findall(r"^decode_roofline eager +batch +(\d+), context 24\+4: measured +[\d.]+ ms/step .* floor +[\d.]+ "
                      r"ms \(weights [\d.]+ \+ KV [\d.]+\); measured/floor ([\d.]+)x", r.stdout, re.M)
    assert [b for b, _ in rows] == ["1", "3"] and all(float(x) > 0 for _, x in rows), r.stdout
