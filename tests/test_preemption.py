"""Preemption: SIGTERM and SIGINT sent to a real `maskae train` / `maskae embed` at a point of the run stop it
after the current step or chunk, with a checkpoint (train) or a closed chunk (embed), one line on how to
resume and exit status 143 / 130; resuming gives what an uninterrupted run gives. A second signal exits at
once and leaves nothing half-written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import max_abs_diff, read_log, tiny_recipe, weights

from maskae.training import checkpoints
from maskae.training import run as pretraining

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
pytestmark = pytest.mark.usefixtures("fresh_accelerator_state")


def start(*argv: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "maskae", "--quiet", *argv], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for(condition, process: subprocess.Popen, limit: float = 240) -> None:
    deadline = time.monotonic() + limit
    while not condition() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before the signal: " + process.stderr.read()[-2000:]


def logged_steps(run: Path) -> int:
    log = run / "log.jsonl"
    return len(log.read_text().splitlines()) if log.is_file() else 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_train_stops_after_a_step_and_resumes_exactly(tmp_path, small_tokenizer, signum):
    recipe = tiny_recipe(small_tokenizer, "training.max_steps=40", "training.save_steps=25",
                         "training.pseudo_perplexity_blocks=0")  # dropout on: the RNG state matters too
    pretraining.train(recipe, tmp_path / "reference")
    recipe.save(tmp_path / "recipe.yaml")
    run = tmp_path / "run"
    process = start("train", str(tmp_path / "recipe.yaml"), "--output-dir", str(run))
    wait_for(lambda: logged_steps(run) >= 3, process)
    process.send_signal(signum)
    assert process.wait(timeout=240) == 128 + signum
    last = process.stderr.read().strip().splitlines()[-1]
    step = logged_steps(run)
    assert last.startswith(f"maskae train: stopped by {signal.Signals(signum).name} after step {step} of 40;"), last
    assert "--resume" in last and 3 <= step < 40
    assert checkpoints.latest_checkpoint(run) == run / f"checkpoint-{step}"
    assert not (run / "model.safetensors").exists()

    pretraining.train(recipe, run, resume=True)
    assert max_abs_diff(weights(tmp_path / "reference"), weights(run)) == 0
    reference, resumed = read_log(tmp_path / "reference" / "log.jsonl"), read_log(run / "log.jsonl")
    assert [r["loss"] for r in resumed] == [r["loss"] for r in reference]


def test_a_second_signal_exits_at_once():
    """The first signal only asks; the second does not wait for the step (what is on disk is whole anyway:
    checkpoints and chunks are renamed into place, as the SIGKILL tests check)."""
    code = """
import os, signal, sys, time
from maskae.utils.preemption import graceful_stop, stop_requested
with graceful_stop("train"):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.2)
    print("asked", stop_requested(), flush=True)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)
print("not reached")
"""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=60)
    assert done.returncode == 143 and time.monotonic() - started < 20
    assert done.stdout.split() == ["asked", str(int(signal.SIGTERM))]
    assert done.stderr.startswith("maskae train: SIGTERM again: stopped at once"), done.stderr


def test_embed_stops_after_a_chunk_and_resumes(tiny_bert_dir, tmp_path):
    from maskae import embed

    texts = [f"w{i % 90} w{(i * 7) % 90} w{(i * 3) % 50}" for i in range(4000)]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(texts) + "\n")
    output = tmp_path / "vectors.npy"
    argv = ["embed", str(tiny_bert_dir), "--input", str(corpus), "--output", str(output), "--chunk-size", "50",
            "--batch-size", "8"]
    process = start(*argv)
    parts = output.with_name(output.name + ".parts")
    wait_for(lambda: len(list(parts.glob("chunk-*.parquet"))) >= 2, process)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=240) == 143
    last = process.stderr.read().strip().splitlines()[-1]
    assert last.startswith("maskae embed: stopped by SIGTERM after chunk ") and "--resume" in last, last
    assert not output.exists()
    done = subprocess.run([sys.executable, "-m", "maskae", "--quiet", *argv, "--resume"], env=ENV,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    np.testing.assert_allclose(np.load(output), embed(tiny_bert_dir, texts), atol=1e-5, rtol=0)
