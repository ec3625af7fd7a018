"""Distribution is real: two gloo processes under `accelerate launch` on CPU train the same model as one
process on the same global batch, and checkpoints are elastic: two processes' resume in one, and one's in two."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
from conftest import RECIPES, max_abs_diff, read_log, weights

from maskae.training import run as pretraining
from maskae.training.recipe import load_recipe

SHRINK = [
    "model.hidden_size=16", "model.num_layers=2", "model.split_layer=1", "model.num_heads=2",
    "model.intermediate_size=32", "model.max_position_embeddings=32", "model.dropout=0.0",
    "data.block_size=32", "data.max_train_blocks=64", "data.max_eval_blocks=8",
    "training.batch_size=8", "training.max_steps=6", "training.warmup_steps=1", "training.lr=3e-3",
    "training.save_steps=3", "training.logging_steps=1", "training.save_total_limit=null",
    "training.pseudo_perplexity_blocks=1", "training.eval_batch_size=8", "tokenizer.train=null",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.usefixtures("fresh_accelerator_state")
def test_two_processes_match_one(tmp_path, small_tokenizer):
    recipe = load_recipe(RECIPES / "tiny-wikitext2.yaml", [*SHRINK, f"tokenizer.path={small_tokenizer}"])
    recipe_file = tmp_path / "recipe.yaml"
    recipe.save(recipe_file)

    two = tmp_path / "two"
    # `accelerate launch --cpu --num_processes 2` starts a single process in Accelerate 1.x (its --cpu path
    # is the one-process launcher unless MPI is used); the torchrun-based launcher with ACCELERATE_USE_CPU
    # starts two gloo processes on CPU. The num_processes check below proves that two really ran.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "ACCELERATE_USE_CPU": "true"}

    def launch_two(output_dir, *extra: str) -> None:
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                  "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                  "--main_process_port", str(free_port()), "-m", "maskae", "train", str(recipe_file),
                  "--output-dir", str(output_dir), *extra]
        done = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]

    launch_two(two)

    one = tmp_path / "one"
    pretraining.train(recipe, one)

    assert json.loads((two / "eval_results.json").read_text())["num_processes"] == 2
    assert json.loads((one / "eval_results.json").read_text())["num_processes"] == 1
    log_two, log_one = read_log(two / "log.jsonl"), read_log(one / "log.jsonl")
    assert [r["step"] for r in log_two] == [r["step"] for r in log_one] == [1, 2, 3, 4, 5, 6]
    # the same global batches (same targets), and the same token-mean loss over each of them
    assert [r["targets"] for r in log_two] == [r["targets"] for r in log_one]
    assert [r["loss"] for r in log_two] == pytest.approx([r["loss"] for r in log_one], abs=1e-4)
    assert log_one[-1]["loss"] < log_one[0]["loss"]
    assert max_abs_diff(weights(two), weights(one)) < 1e-4

    # a checkpoint of the two-process run resumes in one process and ends at the same weights
    resumed = tmp_path / "resumed"
    shutil.copytree(two / "checkpoint-3", resumed / "checkpoint-3")
    shutil.copy(two / "log.jsonl", resumed / "log.jsonl")
    pretraining.train(recipe, resumed, resume=True)
    assert max_abs_diff(weights(two), weights(resumed)) < 1e-4
    assert [r["loss"] for r in read_log(resumed / "log.jsonl")] == pytest.approx([r["loss"] for r in log_two], abs=1e-4)

    # and a checkpoint of the one-process run resumes in two processes
    grown = tmp_path / "grown"
    shutil.copytree(one / "checkpoint-3", grown / "checkpoint-3")
    shutil.copy(one / "log.jsonl", grown / "log.jsonl")
    launch_two(grown, "--resume")
    assert json.loads((grown / "eval_results.json").read_text())["num_processes"] == 2
    assert max_abs_diff(weights(one), weights(grown)) < 1e-4
    assert [r["loss"] for r in read_log(grown / "log.jsonl")] == pytest.approx([r["loss"] for r in log_one], abs=1e-4)


def test_the_readme_cpu_launch_command_starts_two_processes(tmp_path, small_tokenizer):
    """The `accelerate launch` line that the docs/recipes.md prints for CPU users, run as printed (plus a shrunken recipe
    and an output directory): it must really start two processes, which `--cpu --num_processes 2` does not."""
    import re
    import shlex

    from conftest import REPO

    readme = (REPO / "docs" / "recipes.md").read_text()
    [line] = re.findall(r"^(ACCELERATE_USE_CPU=true accelerate launch .+ -m maskae train \S+)$", readme, re.MULTILINE)
    assignment, *command = shlex.split(line)
    name, value = assignment.split("=")
    accelerate = os.path.join(os.path.dirname(sys.executable), command[0])  # the venv's own accelerate
    overrides = [arg for key in [*SHRINK, f"tokenizer.path={small_tokenizer}"] for arg in ("--set", key)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", name: value}
    done = subprocess.run([accelerate, *command[1:], *overrides, "--output-dir", str(tmp_path / "run")], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "eval_results.json").read_text())["num_processes"] == 2


@pytest.mark.usefixtures("fresh_accelerator_state")
def test_sigterm_to_two_processes_stops_both_after_one_step_and_resumes(tmp_path, small_tokenizer):
    """SIGTERM to `accelerate launch` (as SLURM or Kubernetes send it) reaches both ranks; they agree on one
    step, write one checkpoint of it, exit 143; `--resume` under two processes ends at the uninterrupted
    run's weights."""
    import signal
    import time

    from maskae.training import checkpoints

    recipe = load_recipe(RECIPES / "tiny-wikitext2.yaml",
                         [*SHRINK, f"tokenizer.path={small_tokenizer}", "training.max_steps=60",
                          "training.save_steps=50", "training.pseudo_perplexity_blocks=0"])
    recipe_file = tmp_path / "recipe.yaml"
    recipe.save(recipe_file)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "ACCELERATE_USE_CPU": "true"}

    def launch(output_dir, *extra: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
             "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
             str(free_port()), "-m", "maskae", "train", str(recipe_file), "--output-dir", str(output_dir), *extra],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    reference = launch(tmp_path / "reference")
    stopped_dir = tmp_path / "stopped"
    stopped = launch(stopped_dir)
    log = stopped_dir / "log.jsonl"
    deadline = time.monotonic() + 240
    while (not log.is_file() or len(log.read_text().splitlines()) < 3) and time.monotonic() < deadline:
        assert stopped.poll() is None, stopped.stderr.read()[-3000:]
        time.sleep(0.05)
    stopped.send_signal(signal.SIGTERM)
    err = stopped.communicate(timeout=240)[1]
    assert reference.wait(timeout=300) == 0
    lines = [line for line in err.splitlines() if line.startswith("maskae train: stopped by SIGTERM after step ")]
    assert lines, err[-3000:]
    steps = {int(line.split("after step ")[1].split()[0]) for line in lines}
    assert len(steps) == 1, lines  # every rank that said so stopped after the same step
    step = steps.pop()
    assert checkpoints.latest_checkpoint(stopped_dir) == stopped_dir / f"checkpoint-{step}" and step < 60

    resumed = launch(stopped_dir, "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()[-3000:]
    assert max_abs_diff(weights(tmp_path / "reference"), weights(stopped_dir)) < 1e-6
    assert [r["loss"] for r in read_log(stopped_dir / "log.jsonl")] == pytest.approx(
        [r["loss"] for r in read_log(tmp_path / "reference" / "log.jsonl")], abs=1e-6)
