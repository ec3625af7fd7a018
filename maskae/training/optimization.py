"""The optimizer every maskae loop uses: pre-training, growth stages and fine-tuning build it here, so a
change of grouping or kernel reaches all of them at once."""

from __future__ import annotations

import torch
from torch import nn

KERNELS = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}


def build_optimizer(
    model: nn.Module,
    device: torch.device,
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    impl: str = "auto",
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, without weight decay on biases and norms; `impl="auto"` picks
    the fused kernel on CUDA and CPU (about 3x faster than foreach on a CPU too), foreach elsewhere."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim < 2 else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if impl == "auto":
        impl = "fused" if device.type in ("cuda", "cpu") else "foreach"
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, **KERNELS[impl])
