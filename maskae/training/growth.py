"""Progressive and layer-wise pretraining: the encoder grows at stage boundaries of one training run.

A recipe's `growth` section lists stages (encoder depth, share of `training.max_steps`). Training
starts with the first stage's depth; at each boundary the encoder gains layers on top and the
decoder keeps reading the top of the current encoder:

* `stack`: the encoder's layers are copied on top of themselves (new layer i copies layer i - depth),
  as in progressive stacking (Gong et al., 2019); AdamW's moments may be copied with them;
* `append`: fresh layers (the family's random init, or zeroed residual branches) go on top;
* `greedy`: like `append`, but only the new layers (with the decoder, the head and the tied
  embeddings) train, the older encoder layers are frozen; a last stage that repeats the previous
  depth unfreezes everything for fine-tuning.

Growth edits the model in place and keeps its config truthful (`split_layer`, the stack's stock
config, the encoder's own config), so the saved model is an ordinary maskae model. New parameters
join the optimizer as new parameter groups with the loop's own weight-decay split, and the LR
scheduler learns of them. Frozen parameters stay in the optimizer: with `zero_grad(set_to_none=True)`
they have no gradient, and AdamW leaves them (and their moments) untouched.

A resumed run first replays the growth that the checkpoint's step had reached, then loads the
checkpoint: the shapes of model, optimizer and scheduler match, and the loaded weights, moments
and RNG states overwrite whatever the replay produced.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from ..configuration_maskae import with_num_layers
from ..errors import ConfigError
from ..modeling_maskae import MaskAEForMaskedLM
from .checkpoints import CHECKPOINT_PATTERN
from .optimization import build_optimizer
from .recipe import GrowthArgs, Recipe
from .trainer import Trainer

logger = logging.getLogger(__name__)

# The two projections that end a layer's residual branches (attention, feed-forward), per family.
# Only families whose layers do not depend on their index can grow by copying or appending layers.
RESIDUAL_OUTPUTS: dict[str, tuple[str, str]] = {
    "bert": ("attention.output.dense", "output.dense"),
    "roberta": ("attention.output.dense", "output.dense"),
    "xlm-roberta": ("attention.output.dense", "output.dense"),
    "electra": ("attention.output.dense", "output.dense"),
    "distilbert": ("attention.out_lin", "ffn.lin2"),
}


def stage_starts(growth: GrowthArgs, max_steps: int) -> list[int]:
    """The optimizer step after which each stage begins (0 for the first): rounded cumulative shares."""
    starts, done = [], 0.0
    for stage in growth.stages:
        starts.append(round(done * max_steps))
        done += stage.share
    return starts


def check_growth(growth: GrowthArgs, model: MaskAEForMaskedLM, max_steps: int) -> list[int]:
    """Checks the schedule against the model and the step budget; returns `stage_starts`."""
    family = model.config.base_config.model_type
    if family not in RESIDUAL_OUTPUTS:
        raise ConfigError(
            f"growth.stages cannot grow a {family} encoder, whose layers depend on their position; use one of "
            f"{', '.join(RESIDUAL_OUTPUTS)}, or leave growth.stages empty."
        )
    final = growth.stages[-1].layers
    if final != model.config.split_layer:
        raise ConfigError(
            f"growth.stages ends with {final} encoder layers but the model's encoder has "
            f"split_layer={model.config.split_layer}; make the last stage's layers {model.config.split_layer}."
        )
    starts = stage_starts(growth, max_steps)
    for index, (start, end) in enumerate(zip(starts, starts[1:] + [max_steps])):
        if end <= start:
            raise ConfigError(
                f"growth stage {index + 1} gets no step of training.max_steps={max_steps}; raise its share or max_steps."
            )
    return starts


def encoder_layers(model: MaskAEForMaskedLM) -> nn.ModuleList:
    return model.maskae.layers()


def set_encoder_depth(model: MaskAEForMaskedLM, depth: int) -> None:
    """Drop encoder layers above `depth` and make every config agree with the encoder's depth."""
    del encoder_layers(model)[depth:]
    config = model.config
    config.split_layer = depth
    config.base_config = with_num_layers(config.base_config, depth + config.decoder_layers)
    model.maskae.backbone.config = with_num_layers(model.maskae.backbone.config, depth)


def grow_encoder(model: MaskAEForMaskedLM, depth: int, copy_layers: bool, init: str = "random") -> list[nn.Module]:
    """Put `depth - current` layers on top of the encoder: copies of layers 0, 1, ... (`copy_layers`),
    or fresh ones (`init`: "random" or "zero_residual"). Returns the new layers."""
    layers = encoder_layers(model)
    current = len(layers)
    reference = next(layers[0].parameters())
    new = []
    for index in range(current, depth):
        if copy_layers:
            layer = copy.deepcopy(layers[index - current])
        else:
            layer = model.backbone_adapter.make_layer(model.config.base_config, index)
            layer.apply(model._init_weights)
            if init == "zero_residual":
                for name in RESIDUAL_OUTPUTS[model.config.base_config.model_type]:
                    projection = layer.get_submodule(name)
                    nn.init.zeros_(projection.weight)
                    nn.init.zeros_(projection.bias)
        new.append(layer.to(device=reference.device, dtype=reference.dtype).train(model.training))
    layers.extend(new)
    set_encoder_depth(model, depth)
    if model.is_activation_checkpointing:
        model.gradient_checkpointing_enable()  # as the loop did, now reaching the new layers too
    return new


def set_trainable_encoder_layers(model: MaskAEForMaskedLM, first: int) -> None:
    """Encoder layers below `first` are frozen (requires_grad=False), the others train."""
    for index, layer in enumerate(encoder_layers(model)):
        layer.requires_grad_(index >= first)


def add_param_groups(
    optimizer: torch.optim.Optimizer,
    scheduler: LambdaLR,
    layers: list[nn.Module],
    recipe: Recipe,
    copied_from: list[nn.Module] | None = None,
) -> None:
    """New layers join the optimizer (the loop's decay / no-decay groups, at the current scheduled LR)
    and the scheduler; with `copied_from`, they also take over those layers' AdamW state."""
    inner_optimizer = getattr(optimizer, "optimizer", optimizer)  # under Accelerate: AcceleratedOptimizer
    inner_scheduler = getattr(scheduler, "scheduler", scheduler)  # and AcceleratedScheduler
    if not isinstance(inner_scheduler, LambdaLR):
        raise ConfigError(f"growth supports LambdaLR schedules only, not {type(inner_scheduler).__name__}; "
                          "use one of the recipe's training.lr_scheduler choices.")
    reference = next(layers[0].parameters())
    for group in build_optimizer(nn.ModuleList(layers), reference.device, **recipe.training.optimizer_settings()).param_groups:
        if not group["params"]:
            continue
        group["initial_lr"] = group["lr"]
        group["lr"] = group["initial_lr"] * inner_scheduler.lr_lambdas[0](inner_scheduler.last_epoch)
        inner_optimizer.add_param_group(group)
        inner_scheduler.base_lrs.append(group["initial_lr"])
        inner_scheduler.lr_lambdas.append(inner_scheduler.lr_lambdas[0])
        inner_scheduler._last_lr.append(group["lr"])
    for layer, source in zip(layers, copied_from or []):
        for new, old in zip(layer.parameters(), source.parameters()):
            if old in inner_optimizer.state:
                inner_optimizer.state[new] = {
                    key: value.clone() if torch.is_tensor(value) else value
                    for key, value in inner_optimizer.state[old].items()
                }


def enter_stage(
    model: MaskAEForMaskedLM,
    optimizer: torch.optim.Optimizer,
    scheduler: LambdaLR,
    recipe: Recipe,
    stage: int,
) -> dict:
    """Grow (or, for greedy's final repeat, unfreeze) from stage `stage - 1` to `stage`; returns the
    growth event for log.jsonl (without its step)."""
    growth = recipe.growth
    before, depth = growth.stages[stage - 1].layers, growth.stages[stage].layers
    if depth == before:  # greedy's last stage: everything trains
        set_trainable_encoder_layers(model, 0)
    else:
        stack = growth.method == "stack"
        new = grow_encoder(model, depth, copy_layers=stack, init=growth.init)
        sources = list(encoder_layers(model)[: len(new)]) if stack and growth.copy_optimizer_state else None
        add_param_groups(optimizer, scheduler, new, recipe, copied_from=sources)
        if growth.method == "greedy":
            set_trainable_encoder_layers(model, before)
    return {
        "event": "growth", "method": growth.method, "from_layers": before, "to_layers": depth,
        "params": sum(p.numel() for p in model.parameters()),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "optimizer_groups": len(getattr(optimizer, "optimizer", optimizer).param_groups),
    }


class GrowthTrainer(Trainer):
    """The training loop with the recipe's growth schedule applied at step boundaries and on resume.

    Growth happens at the end of a stage's last step, before that step's evaluation and checkpoint,
    so a checkpoint holds the grown model. Single process only: a DDP/FSDP/DeepSpeed wrapper would
    have to be re-prepared around the new layers (Accelerate's wrappers register their parameters once).
    """

    def initial_model(self) -> MaskAEForMaskedLM:
        if self.accelerator.num_processes > 1:
            raise ConfigError(
                f"growth.stages runs in one process only, not {self.accelerator.num_processes}: the distributed wrapper "
                "would have to be rebuilt around the new layers; train without accelerate launch or drop growth.stages."
            )
        if self.args.compile:
            raise ConfigError("growth.stages and training.compile do not mix: new layers would join compiled ones; "
                              "set training.compile=false.")
        model = super().initial_model()
        self.stage_starts = check_growth(self.recipe.growth, model, self.args.max_steps)
        set_encoder_depth(model, self.recipe.growth.stages[0].layers)
        return model

    def grow_at(self, step: int) -> dict | None:
        """Enter the stage that begins after `step`, if one does; returns its growth event."""
        if step not in self.stage_starts[1:]:
            return None
        stage = self.stage_starts.index(step)
        model = self.accelerator.unwrap_model(self.model)
        return enter_stage(model, self.optimizer, self.scheduler, self.recipe, stage)

    def on_step_end(self) -> None:
        event = self.grow_at(self.state.step)
        if event is not None:
            self._log("log.jsonl", {"step": self.state.step, **event})
        super().on_step_end()

    def prepare_to_load(self, checkpoint: Path) -> None:
        reached = int(CHECKPOINT_PATTERN.match(checkpoint.name).group(1))
        for start in self.stage_starts[1:]:
            if start <= reached:
                self.grow_at(start)  # shapes only: the checkpoint's weights and states are loaded next
