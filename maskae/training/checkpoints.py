"""Checkpoints on disk: how they are written so that a reader never sees half of one, how a resume
finds the newest intact one, and what is set aside when one is damaged.

A checkpoint is written to `checkpoint-<step>.tmp/`, marked complete (the marker records every file's
size and SHA-256, see `utils.integrity`), then renamed to `checkpoint-<step>/`. A resume only considers
renamed, marked directories, so a run killed mid-write never picks up a partial one, and it passes over
a checkpoint damaged later (a full disk, a lost node, bit rot) to the newest intact one.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import extract_model_from_parallel
from torch import nn

from ..errors import CheckpointError
from ..utils.integrity import damage, directory_records, file_record

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "checkpoint_complete.json"
DAMAGED_SUFFIX = ".damaged"
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """Finished `checkpoint-<step>/` directories, oldest first (`*.tmp` and unmarked ones are ignored)."""
    found = []
    for path in Path(output_dir).glob("checkpoint-*"):
        match = CHECKPOINT_PATTERN.match(path.name)
        if match and path.is_dir() and (path / COMPLETE_MARKER).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    checkpoints = complete_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def remove_checkpoint(path: Path) -> None:
    """Unmark first, so a deletion cut short leaves a directory that is never resumed from."""
    (path / COMPLETE_MARKER).unlink(missing_ok=True)
    shutil.rmtree(path, ignore_errors=True)


def checkpoint_damage(path: Path) -> str | None:
    """What is wrong with a complete checkpoint's files, or None when they match its marker's records
    (a marker without records, from before maskae wrote them, is trusted as it is)."""
    try:
        records = json.loads((path / COMPLETE_MARKER).read_text()).get("files")
    except (OSError, ValueError, AttributeError):
        return f"its {COMPLETE_MARKER} is unreadable"
    return None if records is None else damage(path, records)


def drop_tied_copies(models: list[nn.Module], weights: list[dict[str, torch.Tensor]], output_dir: str) -> None:
    """A `save_state` pre-hook: leave each tied copy (the MLM decoder, which is the word embeddings) out of
    the checkpoint, as `save_pretrained` does; `load_state` ties it again. Accelerate would otherwise drop
    the same tensors itself, with a "Removed shared tensor" warning on every checkpoint."""
    for model, state in zip(models, weights):
        tied = getattr(extract_model_from_parallel(model), "all_tied_weights_keys", None) or {}
        prefix = "module." if any(key.startswith("module.") for key in state) else ""  # DistributedDataParallel's
        for target, source in tied.items():
            copy, original = state.get(prefix + target), state.get(prefix + source)
            if copy is not None and original is not None and copy.data_ptr() == original.data_ptr():
                del state[prefix + target]


def mark_complete(partial: Path, step: int) -> None:
    """Record every file of a written checkpoint in its marker, which makes it complete."""
    marker = partial / COMPLETE_MARKER
    marker.write_text(json.dumps({"step": step, "files": directory_records(partial)}))
    file_record(marker)


def publish(partial: Path, final: Path) -> None:
    """Rename a marked `.tmp` checkpoint into place, replacing an older one of the same step."""
    if final.exists():
        remove_checkpoint(final)
    os.replace(partial, final)


def prune_checkpoints(output_dir: str | Path, keep: int | None) -> None:
    """Remove all but the newest `keep` complete checkpoints (None keeps all)."""
    for old in complete_checkpoints(output_dir)[: -keep] if keep else []:
        remove_checkpoint(old)


def intact_checkpoint(output_dir: Path, accelerator: Accelerator) -> Path | None:
    """The newest complete checkpoint whose files match their records; damaged newer ones are set
    aside as `<name>.damaged` with a warning. None when there is no complete checkpoint at all."""
    intact, damaged = None, []
    for checkpoint in reversed(complete_checkpoints(output_dir)):
        problem = checkpoint_damage(checkpoint)
        if problem is None:
            intact = checkpoint
            break
        damaged.append((checkpoint, problem))
    if intact is None and damaged:
        newest, problem = damaged[0]
        raise CheckpointError(
            f"no checkpoint in {output_dir} is intact (the newest, {newest.name}: {problem}); move them "
            "away and rerun without --resume to start over."
        )
    accelerator.wait_for_everyone()  # every process has verified before any damaged one moves
    for bad, problem in damaged:
        aside = bad.with_name(bad.name + DAMAGED_SUFFIX)
        logger.warning("checkpoint %s is damaged (%s), so this run resumes from %s and keeps the damaged one "
                       "as %s.", bad, problem, intact.name, aside.name)
        if accelerator.is_main_process:
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(bad, aside)
    return intact
