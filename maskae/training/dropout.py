"""Dropout that costs little on a CPU. PyTorch's CPU dropout draws one Bernoulli sample per element
through its scalar generator (`bernoulli_`, 11% of a training step with dropout 0.1 in
benchmarks/bench_train.py), and attention dropout keeps `scaled_dot_product_attention` off its fused
kernel while drawing the same way. Here the random bits come from one 64-bit draw per four elements
(`random_` over int64, a vectorised path), each 16-bit piece kept when it clears p · 65536, and the mask
is applied in one `where`. The keep probability is p rounded to 1/65536 (0.1 → 0.1000061), and the
kept values are scaled by its exact inverse, so the expectation is unchanged.

`use_fast_dropout(model)` puts it in every `nn.Dropout` of a model and in its attention, for training
on a CPU; the draws come from torch's generator, so a seeded run and a resumed run repeat bit for bit.
Saved weights and configs are unchanged (dropout holds no state; the attention name is not saved).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

ATTENTION = "maskae_fast_dropout"


class _KeepMask(torch.autograd.Function):
    """x * keep * scale, with the boolean mask saved for the backward pass (1 byte per element)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.where(keep, x * scale, 0.0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad * ctx.scale, 0.0), None, None


def fast_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Dropout of `x` with probability p (rounded to 1/65536), in training; see the module."""
    if p == 0:
        return x
    threshold = round(p * 65536)
    words = torch.empty((x.numel() + 3) // 4, dtype=torch.int64, device=x.device).random_(-2**63, None)
    keep = (words.view(torch.int16)[: x.numel()] >= threshold - 32768).view(x.shape)
    return _KeepMask.apply(x, keep, 65536 / (65536 - threshold))


class FastDropout(nn.Dropout):
    """`nn.Dropout` with the cheap mask above (same `p`, same place in the model, nothing saved)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p) if self.training else x


def attention_with_fast_dropout(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                attention_mask: torch.Tensor | None, dropout: float = 0.0,
                                scaling: float | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention, except with dropout: then softmax, the cheap mask and the product, as
    SDPA's own math path computes them (it materialises the weights whenever dropout is on)."""
    if dropout == 0 or query.shape[1] != key.shape[1] or kwargs.get("is_causal"):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    scores = torch.matmul(query, key.transpose(-1, -2)) * (query.shape[-1] ** -0.5 if scaling is None else scaling)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    weights = fast_dropout(torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype), dropout)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION, attention_with_fast_dropout)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)  # the masks SDPA gets, so that p = 0 stays bit-exact


def use_fast_dropout(model: nn.Module) -> int:
    """Swap every `nn.Dropout` of `model` for `FastDropout`, and route the SDPA attention of the layers whose
    attention dropout is on through `attention_with_fast_dropout`; returns how many modules were swapped."""
    swapped = 0
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                setattr(parent, name, FastDropout(child.p, child.inplace))
                swapped += 1
    for module in model.modules():  # attention modules: a config and a dropout of their own
        config, dropout = getattr(module, "config", None), getattr(module, "dropout", None)
        if isinstance(dropout, nn.Dropout) and dropout.p > 0 and getattr(config, "_attn_implementation", None) == "sdpa":
            config._attn_implementation = ATTENTION
    return swapped
