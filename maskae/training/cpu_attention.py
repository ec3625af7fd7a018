"""Attention for training on a CPU, where transformers' SDPA attention is slow in two cases.

- **Dropout.** With attention dropout on, SDPA's CPU path leaves its fused kernel and materialises the
  weights anyway, drawing its mask one Bernoulli sample at a time. Here the weights are computed the
  same way (softmax, mask, product) with `fast_dropout`'s cheap mask.
- **bf16 on a CPU without AMX.** PyTorch's bf16 flash attention (forward + backward) ran 1.7-1.9x slower
  than fp32 at 128 tokens on an AVX-512 BF16 host, and 1.4-1.6x slower than fp32 with the casts up and
  back; at 256 tokens the two tied, and at 512 bf16 was 13% faster. So under bf16 autocast, on a CPU
  without AMX, sequences shorter than 256 tokens attend in fp32. With AMX the bf16 kernel is kept:
  this rule was not measured there.

Everywhere else (no dropout, fp32, a GPU) the call is transformers' own SDPA attention, bit for bit.
`use_cpu_attention(model, bf16)` switches a model's SDPA layers to it where it can matter (attention
dropout on, or bf16); the name is never saved.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from ..utils import host
from .dropout import fast_dropout

ATTENTION = "maskae_cpu_training"
FP32_BELOW_TOKENS = 256  # bf16 attention on a CPU without AMX runs in fp32 for key lengths below this


def attends_in_fp32(query: torch.Tensor, key: torch.Tensor) -> bool:
    """bf16 attention that ran faster in fp32 (see the module): a CPU without AMX, fewer than 256 keys."""
    return (query.dtype == torch.bfloat16 and query.device.type == "cpu" and key.shape[-2] < FP32_BELOW_TOKENS
            and not host.has_amx())


def cpu_training_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           attention_mask: torch.Tensor | None, dropout: float = 0.0,
                           scaling: float | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention, in fp32 where bf16 is slower (see `attends_in_fp32`), and with dropout
    computed as SDPA's own math path does (softmax, mask, product) but with the cheap mask."""
    dtype = query.dtype
    if attends_in_fp32(query, key):
        query, key, value = query.float(), key.float(), value.float()
    if dropout == 0 or query.shape[1] != key.shape[1] or kwargs.get("is_causal"):
        with torch.autocast(query.device.type, enabled=False):
            output, _ = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                               scaling=scaling, **kwargs)
        return output.to(dtype), None
    # the scale goes on the queries (L x d per head) rather than the scores (L x L), and the mask in place
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    with torch.autocast(query.device.type, enabled=False):
        scores = torch.matmul(query * scale, key.transpose(-1, -2))
        if attention_mask is not None:
            if attention_mask.dtype == torch.bool:
                scores.masked_fill_(attention_mask.logical_not(), torch.finfo(scores.dtype).min)
            else:
                scores.add_(attention_mask.to(scores.dtype))
        weights = fast_dropout(torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype), dropout)
        output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return output.to(dtype), None


AttentionInterface.register(ATTENTION, cpu_training_attention)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)  # the masks SDPA gets, so that p = 0 stays bit-exact


def use_cpu_attention(model: nn.Module, bf16: bool = False) -> int:
    """Route through `cpu_training_attention` the SDPA attention of the layers whose attention dropout is
    on, or of every layer when training in bf16; returns how many configs were switched (layers share
    their model's config). Other layers keep transformers' own call."""
    switched = {}
    for module in model.modules():
        config, dropout = getattr(module, "config", None), getattr(module, "dropout", None)
        if getattr(config, "_attn_implementation", None) != "sdpa":
            continue
        if bf16 or isinstance(dropout, nn.Dropout) and dropout.p > 0:
            config._attn_implementation = ATTENTION
            switched[id(config)] = config
    return len(switched)
