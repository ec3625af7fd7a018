"""`train`: run a recipe with the trainer it needs, holding the output directory's lock.

The choice of trainer lives here, above `trainer`, `growth` and `distillation`, so that both build on
`trainer` and nothing below imports upwards.
"""

from __future__ import annotations

import errno
from contextlib import nullcontext
from pathlib import Path

from accelerate.utils import get_int_from_env

from ..errors import MaskAEError, StorageError
from ..utils.run_lock import RunLock
from .distillation import DistillationTrainer
from .growth import GrowthTrainer
from .recipe import Recipe
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
