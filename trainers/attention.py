"""Variable-length (per-sequence) attention for packed learner rows, on any device.

Data flow: trajectory batch → packed micro-batches → **attention inside each packed
sequence** → logprobs → Hölder loss.

A packed row holds several sequences back to back, their position ids restarting at 0.
flash-attention's varlen kernels attend within each sequence only (cost Σ nᵢ²), but
they need a CUDA build of flash-attn. Without them a packed row needs a dense
block-causal [L, L] mask, and every kernel then pays for the whole L² square although
only Σ nᵢ²/2 of it is visible: packing then saves the padding in the MLPs but none of
the attention. This module gives every transformers model that uses the
``AttentionInterface`` the varlen behaviour with plain ``scaled_dot_product_attention``:
one causal SDPA call per packed sequence, found from where the position ids restart.

Registered as the attention implementation ``"agent_rl_varlen"``. Anything that is not a
packed, mask-free, cache-free call (generation with padding or a KV cache, a single
unpacked sequence) goes to transformers' own SDPA path, so a model switched to it
generates exactly as under ``"sdpa"``.
"""

from __future__ import annotations

import torch

NAME = "agent_rl_varlen"
_registered = False


def _segments(position_ids: torch.Tensor) -> list[tuple[int, int]]:
    """(start, end) of each sequence in one row: a new one starts wherever the position is 0."""
    starts = (position_ids == 0).nonzero().flatten().tolist()  # sync once per row and layer: cheap next to attention
    if not starts or starts[0] != 0:
        starts = [0, *starts]
    ends = [*starts[1:], position_ids.shape[0]]
    return list(zip(starts, ends))


def varlen_sdpa_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                        is_causal=None, **kwargs):
    """transformers attention function: query [B, H, L, D], key/value [B, Hkv, L, D] →
    output [B, L, H, D] (the layout transformers expects back)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    position_ids = kwargs.get("position_ids")
    B, H, L, D = query.shape
    packed = (
        attention_mask is None
        and position_ids is not None
        and key.shape[2] == L
        and L > 1
        and getattr(module, "is_causal", True)
        and bool((position_ids[..., 1:] == 0).any())  # a restart inside a row: more than one sequence
    )
    if not packed:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    groups = H // key.shape[1]
    if groups > 1:  # grouped-query attention: share each kv head with its query heads
        key = key.repeat_interleave(groups, dim=1)  # [B, H, L, D]
        value = value.repeat_interleave(groups, dim=1)  # [B, H, L, D]
    position_ids = position_ids.expand(B, L)  # [B, L]
    rows = []
    for r in range(B):
        parts = [
            torch.nn.functional.scaled_dot_product_attention(
                query[r : r + 1, :, s:e], key[r : r + 1, :, s:e], value[r : r + 1, :, s:e],
                dropout_p=dropout, scale=scaling, is_causal=e - s > 1,
            )  # [1, H, n, D]
            for s, e in _segments(position_ids[r])
        ]
        rows.append(torch.cat(parts, dim=2))  # [1, H, L, D]
    out = torch.cat(rows, dim=0)  # [B, H, L, D]
    return out.transpose(1, 2).contiguous(), None  # [B, L, H, D]


def varlen_mask(*, batch_size, q_length, kv_length, q_offset=0, kv_offset=0, attention_mask=None, **kwargs):
    """Mask builder for ``"agent_rl_varlen"``: none at all for a mask-free, cache-free call
    (the attention function reads the sequences from the position ids; building the L²
    block mask there would be wasted), transformers' SDPA mask otherwise."""
    from transformers.masking_utils import sdpa_mask

    if attention_mask is None and q_length == kv_length and int(q_offset) == 0 and int(kv_offset) == 0:
        return None
    return sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                     kv_offset=kv_offset, attention_mask=attention_mask, **kwargs)


def register() -> None:
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface

        AttentionInterface.register(NAME, varlen_sdpa_forward)
        AttentionMaskInterface.register(NAME, varlen_mask)
        _registered = True


def enable_varlen_attention(model) -> bool:
    """Switch a transformers model from ``sdpa`` to ``agent_rl_varlen``; returns whether the
    model now attends per packed sequence (true already for flash-attention models).
    Models on other implementations (eager, flex, sliding-window configs) are left as they are."""
    if is_varlen(model):
        return True
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa" or getattr(config, "use_sliding_window", False):
        return False
    register()
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wraps the HF model
    base.set_attn_implementation(NAME)
    return getattr(model.config, "_attn_implementation", None) == NAME


def is_varlen(model) -> bool:
    """Does ``model`` attend within each packed sequence given only position ids?"""
    impl = getattr(getattr(model, "config", None), "_attn_implementation", "") or ""
    return "flash" in impl or impl == NAME
