"""The optimizer every maskae loop uses: pre-training, growth stages and fine-tuning build it here, so a
change of grouping or kernel reaches all of them at once."""

from __future__ import annotations

from collections.abc import Mapping

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
    lrs: Mapping[str, float] | None = None,
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, without weight decay on biases and norms; `lrs` gives some
    parameters (by name) a learning rate of their own, in groups of their own. `impl="auto"` picks the
    fused kernel on CUDA and CPU (about 3x faster than foreach on a CPU too), foreach elsewhere."""
    lrs = lrs or {}
    groups: dict[tuple[bool, float | None], list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            groups.setdefault((parameter.ndim >= 2, lrs.get(name)), []).append(parameter)
    param_groups = [{"params": params, "weight_decay": weight_decay if decay else 0.0, **({"lr": own} if own else {})}
                    for (decay, own), params in sorted(groups.items(), key=lambda item: (not item[0][0], item[0][1] or 0))]
    if impl == "auto":
        impl = "fused" if device.type in ("cuda", "cpu") else "foreach"
    return torch.optim.AdamW(param_groups, lr=lr, betas=betas, eps=eps, **KERNELS[impl])
