"""The trainer process's memory (trainers.memory): what perf/rss_gb and perf/peak_rss_gb report, and that freed
heap goes back to the OS after an update."""

from __future__ import annotations

import sys

import pytest

from trainers.memory import memory_metrics, release_free_memory

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="perf/rss_gb reads /proc/self/statm")


@linux
def test_memory_metrics_follow_what_the_process_holds():
    import torch

    before = memory_metrics()
    block = torch.ones(256 * 2**20 // 4)  # 256 MiB, every page written
    held = memory_metrics()
    assert held["perf/rss_gb"] - before["perf/rss_gb"] > 0.2  # the block is resident
    assert held["perf/peak_rss_gb"] >= held["perf/rss_gb"] - 1e-3  # the peak is never below now
    del block
    after = memory_metrics()
    assert after["perf/peak_rss_gb"] >= held["perf/peak_rss_gb"] - 1e-3  # the peak keeps the block
    assert after["perf/rss_gb"] < held["perf/rss_gb"] - 0.2  # one large block is mmap'd: freeing returns it
    assert "perf/cuda_peak_gb" not in after


@linux
def test_freed_heap_chunks_stay_resident_until_released():
    if not release_free_memory():
        pytest.skip("this C library has no malloc_trim")
    blocks = [bytearray(64 * 1024) for _ in range(4096)]  # 256 MiB of heap chunks, below malloc's mmap threshold
    held = memory_metrics()["perf/rss_gb"]
    keep = blocks[-1]  # the chunk at the top of the heap stays: free() alone cannot shrink the heap past it
    del blocks
    freed = memory_metrics()["perf/rss_gb"]
    assert freed > held - 0.05  # what the learner's heaps do between updates: free, yet resident
    assert release_free_memory()
    assert memory_metrics()["perf/rss_gb"] < freed - 0.2  # handed back
    assert len(keep) == 64 * 1024
