"""Reliability: seeded runs reproduce bit for bit, resume passes over damaged checkpoints and chunks, a
full disk stops a run cleanly and resumably, and one output directory holds one run at a time."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from conftest import CORPUS, RECIPES, max_abs_diff, tiny_recipe, weights

from maskae.cli import main
from maskae.data.corpus import default_corpus
from maskae.errors import CheckpointError, StorageError
from maskae.training import run as pretraining
from maskae.training import checkpoints
from maskae.utils.integrity import directory_records
from maskae.utils.run_lock import RunLock, RunLockedError

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def cli(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "maskae", *argv], env=ENV, cwd=cwd, capture_output=True, text=True)


# ---------------------------------------------------------------- reproducibility


def test_tokenizer_training_is_identical_in_two_processes(tmp_path):
    """The WordPiece trainer's ids used to follow a per-process random HashMap order."""
    for name in ("a", "b"):
        result = cli("tokenizer", "train", "--corpus", str(default_corpus("train")), "--vocab-size", "8000",
                     "--out", str(tmp_path / name))
        assert result.returncode == 0, result.stderr
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()


def test_two_fresh_training_runs_are_bit_identical(tmp_path):
    corpus = tmp_path / "corpus.txt"
    lines = default_corpus("train").read_text(encoding="utf-8").splitlines()
    corpus.write_text("\n".join(lines[:400]) + "\n")
    recipe = tiny_recipe(None, "tokenizer.train.vocab_size=300", f"data.train={corpus}", "training.max_steps=6",
                         "training.save_steps=100", "training.pseudo_perplexity_blocks=0", "data.max_train_blocks=48")
    recipe.save(tmp_path / "recipe.yaml")
    for name in ("a", "b"):
        result = cli("train", str(tmp_path / "recipe.yaml"), "--output-dir", str(tmp_path / name))
        assert result.returncode == 0, result.stderr
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()
    first, second = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(first[key], second[key]) for key in first)


# ---------------------------------------------------------------- verified checkpoints


@pytest.mark.usefixtures("fresh_accelerator_state")
def test_resume_falls_back_past_a_truncated_checkpoint(tmp_path, small_tokenizer, caplog):
    recipe = tiny_recipe(small_tokenizer, "training.pseudo_perplexity_blocks=0")
    pretraining.train(recipe, tmp_path / "reference")
    marker = json.loads((tmp_path / "reference" / "checkpoint-12" / checkpoints.COMPLETE_MARKER).read_text())
    assert marker["files"]["model.safetensors"]["size"] > 0 and len(marker["files"]["model.safetensors"]["sha256"]) == 64

    run = tmp_path / "run"  # a run killed right after writing checkpoint-12, which a full disk then cut short
    shutil.copytree(tmp_path / "reference", run)
    (run / "model.safetensors").unlink()
    newest = run / "checkpoint-12" / "model.safetensors"
    newest.write_bytes((tmp_path / "reference" / "checkpoint-12" / "model.safetensors").read_bytes()[:100])
    AcceleratorState._reset_state(reset_partial_state=True)
    pretraining.train(recipe, run, resume=True)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("checkpoint-12 is damaged (model.safetensors has 100 bytes" in w and "resumes from checkpoint-8" in w
               for w in warnings), warnings
    assert (run / "checkpoint-12.damaged").is_dir() and (run / "checkpoint-12" / checkpoints.COMPLETE_MARKER).is_file()
    assert max_abs_diff(weights(tmp_path / "reference"), weights(run)) == 0


@pytest.mark.usefixtures("fresh_accelerator_state")
def test_no_intact_checkpoint_is_one_error(tmp_path, small_tokenizer):
    recipe = tiny_recipe(small_tokenizer, "training.pseudo_perplexity_blocks=0", "training.max_steps=4")
    pretraining.train(recipe, tmp_path)
    AcceleratorState._reset_state(reset_partial_state=True)
    optimizer = tmp_path / "checkpoint-4" / "optimizer.bin"
    optimizer.write_bytes(b"\0" * optimizer.stat().st_size)  # same size, other bytes: only the hash sees it
    with pytest.raises(CheckpointError, match="no checkpoint in .* is intact .*optimizer.bin does not match") as error:
        pretraining.train(tiny_recipe(small_tokenizer, "training.max_steps=8"), tmp_path, resume=True)
    assert "\n" not in str(error.value)


class Planted:
    """A pickle that writes a file when it is unpickled: what a tampered checkpoint would carry."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (Path.write_text, (self.target, "the checkpoint ran code"))


@pytest.mark.usefixtures("fresh_accelerator_state")
@pytest.mark.parametrize("planted", ["optimizer.bin", "scheduler.bin", "random_states_0.pkl", "custom_checkpoint_0.pkl"])
def test_resume_never_unpickles_a_planted_file(tmp_path, small_tokenizer, planted, capsys):
    """Every resume state loads with weights_only=True (torch before 2.6 unpickled anything by default), and the
    step counter is JSON: a planted pickle, even with the integrity records rewritten to match, is refused."""
    recipe = tiny_recipe(small_tokenizer, "training.pseudo_perplexity_blocks=0", "training.max_steps=4")
    pretraining.train(recipe, tmp_path / "run")
    AcceleratorState._reset_state(reset_partial_state=True)
    checkpoint = tmp_path / "run" / "checkpoint-4"
    target = tmp_path / "pwned.txt"
    torch.save(Planted(target), checkpoint / planted)
    if planted == "custom_checkpoint_0.pkl":  # the layout of older maskae, whose step was a pickle
        (checkpoint / "train_state.json").unlink()
    marker = checkpoint / checkpoints.COMPLETE_MARKER
    marker.write_text(json.dumps({"step": 4, "files": directory_records(checkpoint, skip=(marker.name,))}))
    longer = tiny_recipe(small_tokenizer, "training.pseudo_perplexity_blocks=0", "training.max_steps=8")
    longer.save(tmp_path / "recipe.yaml")
    code = main(["train", str(tmp_path / "recipe.yaml"), "--output-dir", str(tmp_path / "run"), "--resume"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not target.exists()
    assert lines[-1].startswith("maskae train: error: cannot ") and "Traceback" not in "\n".join(lines), lines


# ---------------------------------------------------------------- a full disk


@pytest.mark.usefixtures("fresh_accelerator_state")
def test_disk_full_while_checkpointing_keeps_the_previous_one(tmp_path, small_tokenizer, monkeypatch):
    recipe = tiny_recipe(small_tokenizer, "training.pseudo_perplexity_blocks=0")
    pretraining.train(recipe, tmp_path / "reference")
    AcceleratorState._reset_state(reset_partial_state=True)
    real = Accelerator.save_state

    def full_at_step_8(self, output_dir, **kwargs):
        real(self, output_dir, **kwargs)  # the files land, then the last write fails
        if output_dir.endswith("checkpoint-8.tmp"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), output_dir)

    monkeypatch.setattr(Accelerator, "save_state", full_at_step_8)
    run = tmp_path / "run"
    with pytest.raises(StorageError) as error:
        pretraining.train(recipe, run)
    message = str(error.value)
    assert "No space left on device" in message and "checkpoint-4 is intact" in message and "--resume" in message
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-4"]
    assert not (run / pretraining.LOCK_FILE).exists()
    monkeypatch.undo()
    AcceleratorState._reset_state(reset_partial_state=True)
    pretraining.train(recipe, run, resume=True)
    assert max_abs_diff(weights(tmp_path / "reference"), weights(run)) == 0


def test_embed_disk_full_then_resume_and_damaged_chunk(tiny_bert_dir, tmp_path, monkeypatch, capsys, caplog):  # noqa: F811
    import pyarrow.parquet as pq

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS) + "\n")
    out = tmp_path / "vectors.npy"
    argv = ["embed", str(tiny_bert_dir), "--input", str(corpus), "--output", str(out), "--chunk-size", "3"]
    assert main([*argv[:4], "--output", str(tmp_path / "reference.npy"), "--chunk-size", "3"]) == 0
    real, calls = pq.write_table, []

    def full_on_third_chunk(table, where, **kwargs):
        calls.append(where)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(where))
        return real(table, where, **kwargs)

    monkeypatch.setattr(pq, "write_table", full_on_third_chunk)
    assert main(argv) == 2
    message = capsys.readouterr().err.strip()
    assert "chunk-00002.parquet (No space left on device)" in message and "2 chunks before it are kept" in message
    parts = out.with_name("vectors.npy.parts")
    assert sorted(p.name for p in parts.iterdir()) == ["chunk-00000.parquet", "chunk-00001.parquet", "chunks.json",
                                                       "manifest.json"]
    monkeypatch.undo()
    shard = parts / "chunk-00001.parquet"
    shard.write_bytes(shard.read_bytes()[:-1] + b"x")  # damaged after it was written
    assert main([*argv, "--resume"]) == 0
    assert any("chunk-00001.parquet is damaged" in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(np.load(out), np.load(tmp_path / "reference.npy"))


# ---------------------------------------------------------------- one run per output directory

HOLDER = """
import sys, time
from maskae.utils.run_lock import RunLock
with RunLock(sys.argv[1], "maskae train"):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_live_run_keeps_a_second_one_out_and_a_dead_one_does_not(tmp_path, caplog):
    lock = tmp_path / "run" / pretraining.LOCK_FILE
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock)], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = cli("train", str(RECIPES / "tiny-wikitext2.yaml"), "--output-dir", str(tmp_path / "run"))
        assert result.returncode == 2 and "Traceback" not in result.stderr
        error = result.stderr.strip().splitlines()[-1]
        assert f"is in use by maskae train (pid {holder.pid} on " in error and "choose another output directory" in error
        with pytest.raises(RunLockedError):
            RunLock(lock, "maskae embed").acquire()
    finally:
        holder.kill()
        holder.wait()
    assert lock.exists()  # a killed holder leaves its file, but the OS has released the lock
    with RunLock(lock, "maskae train"):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert any(f"left by maskae train (pid {holder.pid}" in r.getMessage() and "no longer running" in r.getMessage()
               for r in caplog.records)
    assert not lock.exists()


ORPHANING_HOLDER = """
import os, sys, time
from maskae.utils.run_lock import RunLock
with RunLock(sys.argv[1], "maskae train"):
    if os.fork() == 0:  # a child shares the lock, as a DataLoader worker does, and outlives its parent briefly
        time.sleep(2)
        os._exit(0)
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_killed_runs_lingering_child_is_waited_for(tmp_path):
    lock = tmp_path / "run" / pretraining.LOCK_FILE
    holder = subprocess.Popen([sys.executable, "-c", ORPHANING_HOLDER, str(lock)], env=ENV, stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "locked"
    holder.kill()
    holder.wait()
    started = time.monotonic()
    with RunLock(lock, "maskae train"):  # waits for the child instead of refusing the resume
        waited = time.monotonic() - started
    assert 0.5 < waited < 10
