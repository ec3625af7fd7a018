"""`maskae embed` with many processes writes one output, the rows one process writes, bit for bit: under
`--num-processes` and under `accelerate launch`, with uneven shares and with more ranks than chunks; a
killed rank leaves its neighbours' chunks, and --resume embeds only the missing ones."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from maskae.cli import main
from maskae.embeddings.writer import ChunkWriter

pytestmark = pytest.mark.usefixtures("fresh_accelerator_state")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def texts(count: int) -> list[str]:
    return [" ".join(f"w{(i * j * 7) % 90 + 5}" for j in range(1, 3 + i % 11)) for i in range(count)]


def embed_argv(model: Path, corpus: Path, output: Path, *extra: str) -> list[str]:
    return ["--quiet", "embed", str(model), "--input", str(corpus), "--output", str(output), "--layer", "2",
            "--chunk-size", "16", *extra]


def vectors(path: Path) -> np.ndarray:
    return np.stack(pq.read_table(path).column("embedding").to_numpy(zero_copy_only=False))


def test_two_processes_write_what_one_writes_with_uneven_shares(tiny_bert_dir, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(texts(205)) + "\n")  # 13 chunks: 7 for rank 0, 6 for rank 1, the last one short
    assert main(embed_argv(tiny_bert_dir, corpus, tmp_path / "one.parquet")) == 0
    done = subprocess.run([sys.executable, "-m", "maskae", *embed_argv(tiny_bert_dir, corpus, tmp_path / "two.parquet",
                                                                       "--num-processes", "2")],
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines() == [f"wrote 205 embeddings to {tmp_path / 'two.parquet'}"]
    np.testing.assert_array_equal(vectors(tmp_path / "two.parquet"), vectors(tmp_path / "one.parquet"))
    assert not (tmp_path / "two.parquet.parts").exists()


def test_accelerate_launch_with_more_ranks_than_chunks(tiny_bert_dir, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(texts(20)) + "\n")  # 2 chunks, 3 ranks: rank 2 has nothing to do
    assert main(embed_argv(tiny_bert_dir, corpus, tmp_path / "one.parquet")) == 0
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "3",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
              str(_free_port()), "-m", "maskae", *embed_argv(tiny_bert_dir, corpus, tmp_path / "three.parquet")]
    done = subprocess.run(launch, env={**ENV, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("wrote 20 embeddings") == 1  # the main rank joins and reports
    np.testing.assert_array_equal(vectors(tmp_path / "three.parquet"), vectors(tmp_path / "one.parquet"))


def test_a_killed_rank_is_reported_and_resume_embeds_only_the_missing_chunks(minilm_path, shared_data, tmp_path,
                                                                             monkeypatch):
    lines = (shared_data / "stsb" / "train.tsv").read_text(encoding="utf-8").splitlines()[1:1001]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(line.split("\t")[0] for line in lines) + "\n")
    output = tmp_path / "vectors.npy"
    argv = ["--quiet", "embed", str(minilm_path), "--input", str(corpus), "--output", str(output),
            "--chunk-size", "20", "--num-processes", "2"]
    parent = subprocess.Popen([sys.executable, "-m", "maskae", *argv], env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    parts = tmp_path / "vectors.npy.parts"
    rank_1 = _rank_pid(parent.pid, 1)
    deadline = time.monotonic() + 120
    while not (parts / "chunk-00001.parquet").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(rank_1, signal.SIGKILL)
    _, stderr = parent.communicate(timeout=120)
    assert parent.returncode == 2
    assert stderr.strip().splitlines()[-1].startswith("maskae embed: error: rank 1 of 2 failed (exit -9)"), stderr
    # what the ranks recorded: a shard renamed into place just before the kill, but not yet recorded, is redone
    recorded = [name for records in parts.glob("chunks*.json") for name in json.loads(records.read_text())]
    kept = {int(name.removeprefix("chunk-").removesuffix(".parquet")) for name in recorded}
    assert 0 < len(kept) < 50

    written = []
    original = ChunkWriter.write
    monkeypatch.setattr(ChunkWriter, "write", lambda self, index, v: (written.append(index), original(self, index, v)))
    assert main([*argv[:-2], "--resume"]) == 0  # resumed by one process: the chunks are not tied to a rank
    assert sorted(written) == sorted(set(range(50)) - kept)
    assert main(["--quiet", "embed", str(minilm_path), "--input", str(corpus), "--output", str(tmp_path / "one.npy"),
                 "--chunk-size", "20"]) == 0
    np.testing.assert_array_equal(np.load(output), np.load(tmp_path / "one.npy"))


def _rank_pid(parent: int, rank: int) -> int:
    """The pid of the child of `parent` that runs `rank` (read from its environment)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        for pid in children:
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:  # gone already
                continue
            if f"MASKAE_EMBED_RANK={rank}".encode() in environ:
                return int(pid)
        time.sleep(0.01)
    raise AssertionError(f"rank {rank} never started")


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
