"""Dropout that costs little on a CPU. PyTorch's CPU dropout draws one Bernoulli sample per element
through its scalar generator (`bernoulli_`, 11% of a training step with dropout 0.1 in
benchmarks/bench_train.py), and attention dropout keeps `scaled_dot_product_attention` off its fused
kernel while drawing the same way. Here the random bits come from one 64-bit draw per four elements
(`random_` over int64, a vectorised path), each 16-bit piece kept when it clears p · 65536. The mask is
built and applied with float arithmetic only (convert, subtract, clamp, multiply), because on a CPU
every kernel that reads or writes a bool tensor (`>=`, `where`, a bool-to-float cast) runs 5-15x slower
than a float multiply. The backward pass rebuilds the mask from the 16-bit draws (2 bytes per element)
rather than keep a float one (4). The keep probability is p rounded to 1/65536 (0.1 → 0.1000061), and
the kept values are scaled by its exact inverse, so the expectation is unchanged.

`use_fast_dropout(model)` puts it in every `nn.Dropout` of a model (and `training/cpu_attention.py` in
its attention), for training on a CPU. The draws come from torch's generator, so a seeded run and a
resumed run repeat bit for bit. Saved weights and configs are unchanged: dropout holds no state.
"""

from __future__ import annotations

import torch
from torch import nn


def _kept(draws: torch.Tensor, threshold: int, dtype: torch.dtype) -> torch.Tensor:
    """1 where a 16-bit draw is at least `threshold` - 32768, else 0: the draws are integers, so after the
    subtraction a clamp to [0, 1] is the comparison. Built in fp32 (exact for 16-bit integers), then cast."""
    return draws.to(torch.float32).sub_(threshold - 32769).clamp_(0, 1).to(dtype)


class _KeepMask(torch.autograd.Function):
    """x * kept * scale; the backward pass rebuilds the mask from the saved 16-bit draws."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, draws: torch.Tensor, threshold: int, scale: float) -> torch.Tensor:
        ctx.save_for_backward(draws)
        ctx.threshold, ctx.scale = threshold, scale
        return torch.mul(x, _kept(draws, threshold, x.dtype)).mul_(scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (draws,) = ctx.saved_tensors
        return torch.mul(grad, _kept(draws, ctx.threshold, grad.dtype)).mul_(ctx.scale), None, None, None


def fast_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Dropout of `x` with probability p (rounded to 1/65536), in training; see the module."""
    if p == 0:
        return x
    threshold = round(p * 65536)
    words = torch.empty((x.numel() + 3) // 4, dtype=torch.int64, device=x.device).random_(-2**63, None)
    draws = words.view(torch.int16)[: x.numel()].view(x.shape)
    return _KeepMask.apply(x, draws, threshold, 65536 / (65536 - threshold))


class FastDropout(nn.Dropout):
    """`nn.Dropout` with the cheap mask above (same `p`, same place in the model, nothing saved)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p) if self.training else x


def use_fast_dropout(model: nn.Module) -> int:
    """Swap every `nn.Dropout` of `model` for `FastDropout`; returns how many were swapped. (Attention
    dropout goes through `training/cpu_attention.py`.)"""
    swapped = 0
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                setattr(parent, name, FastDropout(child.p, child.inplace))
                swapped += 1
    return swapped
