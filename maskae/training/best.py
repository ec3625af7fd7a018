"""Keep the best model by a label-free score while training, since the last step is not always the best.

Distillation keeps the step closest to its teacher, adaptation the step that reconstructs best without
drifting from the original: both keep it in `best/`, written beside and renamed into place, and carried
in every checkpoint, so that a resumed run continues with the best it had at that step.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from accelerate.utils import extract_model_from_parallel
from safetensors.torch import load_model, save_model

BEST_DIR = "best"
WEIGHTS_FILE = "model.safetensors"


class KeepsBest:
    """Mixin for a `Trainer`: `self.best` is the kept evaluation ({"step": ..., scores}), `best/` its weights."""

    best: dict

    def keep(self, results: dict) -> None:
        """Make `results`, the evaluation of the current step, the kept one, and save the model beside it."""
        self.best = {"step": self.state.step, **results}
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            partial = self._partial_best()
            partial.mkdir(parents=True)
            save_model(extract_model_from_parallel(self.model), str(partial / WEIGHTS_FILE))  # tied weights once
            (partial / "best.json").write_text(json.dumps(self.best, indent=2) + "\n")
            self._publish_best(partial)
        self.accelerator.wait_for_everyone()

    def restore_best(self) -> bool:
        """Load the kept weights into the model if they are not the current step's; says whether it did."""
        saved = self.output_dir / BEST_DIR / WEIGHTS_FILE
        if not saved.is_file() or self.best["step"] == self.state.step:
            return False
        load_model(extract_model_from_parallel(self.model), str(saved))
        return True

    def _partial_best(self) -> Path:
        partial = self.output_dir / f"{BEST_DIR}.tmp"
        shutil.rmtree(partial, ignore_errors=True)
        return partial

    def _publish_best(self, partial: Path) -> None:
        """Rename a fully written `best.tmp` over `best/`."""
        shutil.rmtree(self.output_dir / BEST_DIR, ignore_errors=True)
        os.replace(partial, self.output_dir / BEST_DIR)

    def add_to_checkpoint(self, partial: Path) -> None:
        """The kept model belongs to the resumable state: a resumed run continues with the best it had at
        that step, not with a later one that a killed run left in `best/`."""
        best = self.output_dir / BEST_DIR
        if best.is_dir():
            shutil.copytree(best, partial / BEST_DIR)

    def restore_from_checkpoint(self, checkpoint: Path) -> None:
        saved = checkpoint / BEST_DIR
        if not saved.is_dir():
            return
        self.best = json.loads((saved / "best.json").read_text())
        if self.accelerator.is_main_process:
            partial = self._partial_best()
            shutil.copytree(saved, partial)
            self._publish_best(partial)
        self.accelerator.wait_for_everyone()
