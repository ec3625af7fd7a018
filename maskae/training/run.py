"""`train`: run a recipe with the trainer it needs, holding the output directory's lock; `adapt`: the
same for an adaptation or distillation recipe built from `maskae adapt`'s arguments.

The choice of trainer lives here, above `trainer`, `growth`, `adaptation` and `distillation`, so that
they all build on `trainer` and nothing below imports upwards.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Sequence
from contextlib import nullcontext
from importlib.resources import files
from pathlib import Path

from accelerate.utils import get_int_from_env
from transformers import AutoConfig

from ..configuration_maskae import num_layers
from ..errors import CheckpointError, ConfigError, MaskAEError, StorageError
from ..utils.run_lock import RunLock
from .adaptation import AdaptationTrainer
from .distillation import DistillationTrainer
from .growth import GrowthTrainer
from .recipe import ADAPT_OBJECTIVES, Recipe, load_recipe
from .trainer import Trainer

LOCK_FILE = "maskae.lock"


def trainer_for(recipe: Recipe, output_dir: str | Path, resume: bool = False) -> Trainer:
    """The trainer that runs `recipe`: `DistillationTrainer` for a distill section, `AdaptationTrainer` for
    an adapt section, `GrowthTrainer` when it grows the encoder in stages."""
    if recipe.distill is not None:
        return DistillationTrainer(recipe, output_dir, resume=resume)
    if recipe.adapt is not None:
        return AdaptationTrainer(recipe, output_dir, resume=resume)
    return (GrowthTrainer if recipe.growth.stages else Trainer)(recipe, output_dir, resume=resume)


def train(recipe: Recipe, output_dir: str | Path, resume: bool = False) -> dict[str, float]:
    """Train `recipe` into `output_dir` (continuing from its newest complete checkpoint with `resume`);
    returns the final evaluation."""
    output_dir = Path(output_dir)
    # The launcher's rank, read before Accelerate sets up the processes (only global rank 0 takes the lock).
    rank = get_int_from_env(["RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK", "PMI_RANK"], 0)
    lock = RunLock(output_dir / LOCK_FILE, "maskae train") if rank == 0 else nullcontext()
    with lock:
        try:
            return trainer_for(recipe, output_dir, resume=resume).train()
        except OSError as error:
            if error.errno != errno.ENOSPC or isinstance(error, MaskAEError):
                raise
            raise StorageError(f"the disk is full (writing {error.filename or output_dir}); free space on it, then "
                               "rerun with --resume to continue from the last checkpoint.") from None


def default_adapt_recipe(objective: str, layer: int | None) -> Path:
    """The packaged recipe of an objective: recipes/adapt-mlm.yaml, adapt-tsdae.yaml, and for distillation
    adapt-static.yaml (layer 0) or adapt-distill.yaml."""
    name = f"adapt-{objective}" if objective != "distill" else "adapt-static" if layer == 0 else "adapt-distill"
    return Path(str(files("maskae.recipes").joinpath(f"{name}.yaml")))


def adapt(
    model: str | Path,
    corpus: str | Path | Sequence[str | Path],
    output_dir: str | Path,
    objective: str = "distill",
    layer: int | None = None,
    *,
    minutes: float | None = None,
    steps: int | None = None,
    overrides: Sequence[str] = (),
    recipe: str | Path | None = None,
    resume: bool = False,
) -> dict[str, float]:
    """Adapt `model` to the unlabelled `corpus` (what `maskae adapt` runs); returns the kept model's evaluation.

    objective "mlm" or "tsdae": continued denoising, with an anchor against forgetting and a label-free
    choice of the kept step (`adaptation`); the code is layer `layer` (default: the model's last).
    objective "distill": the first `layer` layers learn the model's own sentence embedding (`distillation`).
    `overrides` are `section.key=value` strings on top of the recipe (default: `default_adapt_recipe`)."""
    if objective not in ADAPT_OBJECTIVES:
        raise ConfigError(f"unknown objective {objective!r}; use one of {', '.join(ADAPT_OBJECTIVES)}.")
    if objective == "distill" and layer is None:
        raise ConfigError("distillation needs the student's depth; pass --layer K (0 = the embedding layer alone), or "
                          "--objective mlm or tsdae to adapt the whole model.")
    if layer is not None and layer < 0:
        raise ConfigError(f"layer {layer} is negative; give the encoder's depth K >= 0 (0 = the embedding layer alone).")
    if minutes is not None and minutes <= 0 or steps is not None and steps < 1:
        raise ConfigError("minutes must be positive and steps at least 1.")
    sources = [str(corpus)] if isinstance(corpus, (str, Path)) else [str(path) for path in corpus]
    section = "distill" if objective == "distill" else "adapt"
    given = {"model.backbone": str(model), f"{section}.corpus": sources, "training.output_dir": str(output_dir)}
    given["model.split_layer"] = layer if layer is not None else depth_of(model)  # default: the last layer
    if minutes is not None:
        given[f"{section}.max_minutes"] = minutes
    if steps is not None:
        given["training.max_steps"] = steps
    assignments = [f"{key}={json.dumps(value)}" for key, value in given.items()]  # JSON is YAML
    loaded = load_recipe(recipe or default_adapt_recipe(objective, layer), [*assignments, *overrides])
    return train(loaded, output_dir, resume=resume)


def depth_of(model: str | Path) -> int:
    """Number of layers of a stock encoder (directory or Hub id), read from its config."""
    try:
        return num_layers(AutoConfig.from_pretrained(str(model)))
    except (OSError, ValueError) as error:
        raise CheckpointError(f"cannot load a model config from {str(model)!r} ({error}); pass a directory with a "
                              "config.json or a Hub model id.") from None
