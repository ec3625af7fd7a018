"""`train`: run a recipe with the trainer it needs, holding the output directory's lock; `distill`: the
same for a distillation recipe built from `maskae adapt`'s arguments.

The choice of trainer lives here, above `trainer`, `growth` and `distillation`, so that both build on
`trainer` and nothing below imports upwards.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Sequence
from contextlib import nullcontext
from importlib.resources import files
from pathlib import Path

from accelerate.utils import get_int_from_env

from ..errors import ConfigError, MaskAEError, StorageError
from ..utils.run_lock import RunLock
from .distillation import DistillationTrainer
from .growth import GrowthTrainer
from .recipe import Recipe, load_recipe
from .trainer import Trainer

LOCK_FILE = "maskae.lock"


def trainer_for(recipe: Recipe, output_dir: str | Path, resume: bool = False) -> Trainer:
    """The trainer that runs `recipe`: `DistillationTrainer` for a distill section, `GrowthTrainer` when it
    grows the encoder in stages."""
    trainer = DistillationTrainer if recipe.distill is not None else GrowthTrainer if recipe.growth.stages else Trainer
    return trainer(recipe, output_dir, resume=resume)


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


def default_distill_recipe(layer: int) -> Path:
    """The packaged recipe for a student of depth `layer`: recipes/adapt-static.yaml for 0, else adapt-distill.yaml."""
    return Path(str(files("maskae.recipes").joinpath("adapt-static.yaml" if layer == 0 else "adapt-distill.yaml")))


def distill(
    model: str | Path,
    corpus: str | Path | Sequence[str | Path],
    output_dir: str | Path,
    layer: int,
    *,
    minutes: float | None = None,
    steps: int | None = None,
    overrides: Sequence[str] = (),
    recipe: str | Path | None = None,
    resume: bool = False,
) -> dict[str, float]:
    """Distil `model`'s sentence embedding into its own first `layer` layers on unlabelled `corpus` (what
    `maskae adapt --objective distill` runs); returns the kept model's evaluation (cosine to the teacher on
    held-out sentences, its step, the speed against the teacher). `overrides` are `section.key=value`
    strings on top of the recipe (default: `default_distill_recipe(layer)`)."""
    if layer < 0:
        raise ConfigError(f"layer {layer} is negative; give the student's depth K >= 0 (0 = the embedding layer alone).")
    if minutes is not None and minutes <= 0 or steps is not None and steps < 1:
        raise ConfigError("minutes must be positive and steps at least 1.")
    sources = [str(corpus)] if isinstance(corpus, (str, Path)) else [str(path) for path in corpus]
    given = {"model.backbone": str(model), "model.split_layer": layer, "distill.corpus": sources,
             "training.output_dir": str(output_dir)}
    if minutes is not None:
        given["distill.max_minutes"] = minutes
    if steps is not None:
        given["training.max_steps"] = steps
    assignments = [f"{key}={json.dumps(value)}" for key, value in given.items()]  # JSON is YAML
    loaded = load_recipe(recipe or default_distill_recipe(layer), [*assignments, *overrides])
    return train(loaded, output_dir, resume=resume)
