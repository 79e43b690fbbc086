"""bench/alfworld_rollout_bench.py: its options are checked before anything loads, and (slow: real valid_unseen
games on vLLM, a compiled engine's first start takes over a minute) --compare-compile prints both engines'
lines and the ratio the README quotes."""

from __future__ import annotations

import functools
import re

import pytest

from bench_scripts import run_bench
from test_alfworld_env import HAVE_DATA, HAVE_ENGINE
from test_policies import need_vllm

_run = functools.partial(run_bench, "alfworld_rollout_bench")


def test_option_checks_compare_compile_overlap_block_size_and_ngram():
    r = _run("--compare-compile", "--compile")
    assert r.returncode == 2 and "--compare-compile plays an eager engine and then a compiled one" in r.stderr
    r = _run("--overlap")
    assert r.returncode == 2 and "--overlap needs --env-workers >= 2" in r.stderr
    r = _run("--compare-block-size", "24")
    assert r.returncode == 2 and "--compare-block-size must be a positive multiple of 16" in r.stderr
    r = _run("--compare-ngram", "-1")
    assert r.returncode == 2 and "--compare-ngram must be >= 0" in r.stderr
    r = _run("--ngram", "-2")
    assert r.returncode == 2 and "--ngram must be >= 0" in r.stderr


@pytest.mark.slow
@pytest.mark.alfworld
@pytest.mark.skipif(not (HAVE_ENGINE and HAVE_DATA), reason="needs alfworld and the valid_unseen games")
def test_compare_compile_plays_the_same_games_on_both_engines():
    need_vllm()
    r = _run("--skip-baseline", "--compare-compile", "--games", "1", "--turns", "2", "--template", "alfworld_act",
             "--max-new-tokens", "8", timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    eager = re.search(r"^new vllm \S+ prefix-caching block \d+ ngram \d+ eager: 1 of 1 games, (\d+) turns", r.stdout, re.M)
    compiled = re.search(r"^new vllm \S+ prefix-caching block \d+ ngram \d+ compiled: 1 of 1 games, (\d+) turns", r.stdout, re.M)
    assert eager and compiled and eager.group(1) == compiled.group(1), r.stdout
    assert re.search(r"^ratio compiled/eager = [\d.]+x turns/s, engine start [\d.]+ s vs [\d.]+ s", r.stdout, re.M)
