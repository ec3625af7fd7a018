"""What `maskae train` prints reads cleanly, on a terminal and captured: an error raised mid-training starts on
a line of its own, no checkpoint triggers accelerate's "Removed shared tensor" warning (the tied copies are
left out as save_pretrained leaves them out, and come back tied on loading), eval lines are whole lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import RECIPES
from safetensors.torch import load_file, load_model
from transformers import AutoTokenizer

from maskae.training.recipe import load_recipe
from maskae.training.trainer import build_model

OVERRIDES = [
    "model.hidden_size=16", "model.num_layers=2", "model.split_layer=1", "model.num_heads=2",
    "model.intermediate_size=32", "model.max_position_embeddings=32", "data.block_size=32",
    "data.max_train_blocks=32", "data.max_eval_blocks=4", "training.batch_size=8", "training.max_steps=6",
    "training.warmup_steps=1", "training.save_steps=2", "training.eval_steps=1", "training.logging_steps=1",
    "training.pseudo_perplexity_blocks=1", "training.eval_batch_size=4", "tokenizer.train=null",
]
FAIL_AT_STEP = 3
# Runs `maskae train` with an error injected into the third training step (after checkpoint-2 was written).
CHILD = f"""
import sys
import maskae.utils.console
from maskae import MaskAEError
from maskae.training import trainer as training
if sys.argv[1] == "terminal":
    maskae.utils.console.is_terminal = lambda: True  # draw the tqdm bar although stderr is a pipe
step = training.Trainer.training_step
def failing_step(self, batch):
    if self.state.step + 1 == {FAIL_AT_STEP}:
        raise MaskAEError("injected failure at step {FAIL_AT_STEP}.")
    return step(self, batch)
training.Trainer.training_step = failing_step
from maskae.cli import main
sys.exit(main(sys.argv[2:]))
"""


def run_failing(mode: str, output_dir, tokenizer) -> subprocess.CompletedProcess:
    overrides = [arg for key in [*OVERRIDES, f"tokenizer.path={tokenizer}"] for arg in ("--set", key)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(CHILD), mode, "train",
                           str(RECIPES / "tiny-wikitext2.yaml"), *overrides, "--output-dir", str(output_dir)],
                          capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def failed_runs(tmp_path_factory, small_tokenizer) -> dict:
    """mode -> (the finished process, its output directory), for a bar drawn on a terminal and a captured log."""
    runs = {}
    for mode in ("terminal", "captured"):
        output_dir = tmp_path_factory.mktemp(mode) / "run"
        runs[mode] = run_failing(mode, output_dir, small_tokenizer), output_dir
    return runs


@pytest.mark.parametrize("mode", ["terminal", "captured"])
def test_an_error_during_training_starts_on_its_own_line(mode, failed_runs):
    done, output_dir = failed_runs[mode]
    assert done.returncode == 2, done.stderr[-3000:]
    error = f"maskae train: error: injected failure at step {FAIL_AT_STEP}."
    lines = done.stderr.split("\n")
    assert error in lines, done.stderr[-2000:]  # a whole line: nothing before it, not even a bar's "\r" redraw
    output = done.stdout + done.stderr
    assert "Removed shared tensor" not in output
    evals = [line for line in done.stdout.split("\n") if " | eval | " in line]
    assert [line.split(" | ")[0] for line in evals] == ["step 1", "step 2"]
    assert all(line.startswith("step ") and "\r" not in line for line in evals)
    if mode == "captured":
        assert "\r" not in output  # no bar redraws in a file: plain status lines
        assert [line for line in done.stderr.split("\n") if line.startswith("training ")][-1].startswith(
            f"training {FAIL_AT_STEP - 1}/6")
    log = [json.loads(line) for line in (output_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and 0 < log[0]["elapsed_s"] < log[1]["elapsed_s"]


def test_checkpoint_leaves_out_tied_copies_and_reloads_tied(failed_runs, small_tokenizer):
    checkpoint = failed_runs["captured"][1] / "checkpoint-2"
    saved = load_file(str(checkpoint / "model.safetensors"))
    model = build_model(load_recipe(checkpoint / "recipe.yaml"), AutoTokenizer.from_pretrained(small_tokenizer))
    tied = model.all_tied_weights_keys
    assert tied and not set(tied) & set(saved)  # the copies were left out ...
    assert set(saved) == set(model.state_dict()) - set(tied)  # ... and nothing else
    load_model(model, str(checkpoint / "model.safetensors"), strict=True)  # as accelerate's load_state does
    state = model.state_dict()
    for target, source in tied.items():
        assert torch.equal(state[target], saved[source])  # ... and come back tied to the saved originals
    assert all(torch.equal(state[key], value) for key, value in saved.items())
