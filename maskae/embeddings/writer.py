"""Embeddings of a corpus of any size, written so that nothing is lost: each chunk of vectors becomes its
own parquet shard in `OUT.parts/` before the next one starts (memory stays flat however large the
corpus), each finished shard's size and SHA-256 go into `OUT.parts/chunks.json`, and once every chunk
is done the shards are joined into OUT (.npy, .parquet or a datasets directory), one at a time.

A resumed run redoes a shard that was damaged after it was written (and every shard after it) instead
of joining bad data, and refuses to continue a run made with other settings. A lock file beside the
output (`OUT.lock`) keeps a second run from writing the same output.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Dataset
from tqdm.auto import tqdm

from ..errors import DataError, StorageError
from ..utils.integrity import damage, file_record
from ..utils.preemption import Preempted, stop_requested
from ..utils.run_lock import RunLock

MANIFEST = "manifest.json"
RECORDS = "chunks.json"

logger = logging.getLogger(__name__)


class ChunkWriter:
    """The shards of one output: which are done, writing the next one, and joining them all.

    Creating it only checks the request against what is on disk (so a bad request fails before a model
    loads); `start` then clears or verifies the parts directory."""

    def __init__(self, output: str | Path, settings: dict, *, resume: bool = False, overwrite: bool = False) -> None:
        self.output = Path(output)
        self.parts = self.output.with_name(self.output.name + ".parts")
        self.settings, self.resume, self.overwrite = settings, resume, overwrite
        if self.parts.exists() and not (resume or overwrite):
            raise DataError(
                f"found partial output of an earlier run in {str(self.parts)!r}; pass --resume to continue it or "
                "--overwrite to start over."
            )
        if self.output.exists() and not (overwrite or (resume and self.parts.exists())):
            raise DataError(f"{str(self.output)!r} already exists; pass --overwrite to replace it.")
        self.records: dict[str, dict] = {}

    def start(self) -> int:
        """Prepare the parts directory; returns how many leading chunks are already done."""
        parts = self.parts
        if self.overwrite:
            shutil.rmtree(parts, ignore_errors=True)
        if parts.exists():
            try:
                earlier = json.loads((parts / MANIFEST).read_text())
            except (OSError, ValueError):
                raise DataError(f"cannot resume {str(parts)!r}: its {MANIFEST} is missing or unreadable; pass "
                                "--overwrite to start over.") from None
            changed = [key for key in self.settings if earlier.get(key) != self.settings[key]]
            if changed:
                raise DataError(
                    f"cannot resume {str(parts)!r}: it was written with different {', '.join(changed)}; rerun with "
                    "the same settings or pass --overwrite to start over."
                )
        else:
            parts.mkdir(parents=True)
            (parts / MANIFEST).write_text(json.dumps(self.settings, indent=2))
        self.records = _intact_chunks(parts)
        return len(self.records)

    def write(self, index: int, vectors: np.ndarray) -> None:
        """Chunk `index` as a shard, renamed into place and recorded only once complete."""
        shard = _shard(self.parts, index)
        try:
            pq.write_table(pa.table({"embedding": _to_arrow(vectors)}), shard.with_suffix(".tmp"))
            os.replace(shard.with_suffix(".tmp"), shard)
            self.records[shard.name] = file_record(shard)
            _save_records(self.parts, self.records)
        except OSError as error:
            shard.with_suffix(".tmp").unlink(missing_ok=True)
            raise StorageError(
                f"could not write {shard} ({error.strerror or error}); the {len(self.records)} chunks before it "
                "are kept; free space on that disk, then rerun with --resume."
            ) from None

    def finish(self) -> int:
        """Join the shards into the output and remove the parts; returns the number of rows."""
        output = self.output
        _remove(output)
        try:
            rows = _join_shards(self.parts, output, [self.parts / name for name in self.records])
        except OSError as error:
            _remove(output)
            raise StorageError(
                f"could not write {output} ({error.strerror or error}); every chunk is kept in {self.parts}; free "
                "space on that disk, then rerun with --resume."
            ) from None
        shutil.rmtree(self.parts)
        return rows


def write_embeddings(
    embed: Callable[[list[str]], np.ndarray],
    chunks: Iterable[list[str]],
    output: str | Path,
    settings: dict,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    before_start: Callable[[], None] | None = None,
) -> int:
    """Embed each chunk of texts with `embed` and write them all to `output`, resumably (see the module);
    `settings` is what a resumed run must match. `before_start` runs once the request is checked against
    the disk and the lock is held (e.g. loading the model). Returns the number of rows written."""
    output = Path(output)
    with RunLock(output.with_name(output.name + ".lock"), "maskae embed"):
        writer = ChunkWriter(output, settings, resume=resume, overwrite=overwrite)
        if before_start is not None:
            before_start()
        done = writer.start()
        seen = 0
        with tqdm(unit="text", desc="embedding", disable=not progress) as bar:
            for index, chunk in enumerate(chunks):
                if index >= done:
                    writer.write(index, embed(chunk))
                bar.update(len(chunk))
                seen += len(chunk)
                signum = stop_requested()
                if signum is not None:  # the chunk is written: stop here, --resume starts at the next one
                    raise Preempted(signum, f"stopped by {signal.Signals(signum).name} after chunk {index + 1} "
                                    f"({seen} texts), which is written; continue with the same command and --resume")
        return writer.finish()


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _to_arrow(vectors: np.ndarray) -> pa.Array:
    """[n, dim] -> fixed-size lists; an object array of [tokens_i, dim] -> lists of fixed-size lists."""
    if vectors.dtype != object:
        return pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])
    tokens = np.concatenate(list(vectors))
    offsets = np.concatenate([[0], np.cumsum([len(v) for v in vectors])]).astype(np.int32)
    inner = pa.FixedSizeListArray.from_arrays(pa.array(tokens.reshape(-1)), tokens.shape[1])
    return pa.ListArray.from_arrays(pa.array(offsets), inner)


def _shard(parts: Path, index: int) -> Path:
    return parts / f"chunk-{index:05d}.parquet"


def _intact_chunks(parts: Path) -> dict[str, dict]:
    """The records of the leading run of shards that match them; a damaged shard, and every shard
    after it, is deleted (with a warning naming it) so that it is embedded again."""
    try:
        records = json.loads((parts / RECORDS).read_text())
    except (OSError, ValueError):
        records = {}
    intact: dict[str, dict] = {}
    for index in range(len(records)):
        name = _shard(parts, index).name
        problem = "it has no record" if name not in records else damage(parts, {name: records[name]})
        if problem is not None:
            logger.warning("chunk %s is damaged (%s), so it and the chunks after it are embedded again.",
                           parts / name, problem)
            break
        intact[name] = records[name]
    for stray in parts.glob("chunk-*"):
        if stray.name not in intact:
            stray.unlink()
    return intact


def _save_records(parts: Path, records: dict[str, dict]) -> None:
    staged = parts / (RECORDS + ".tmp")
    staged.write_text(json.dumps(records, indent=1))
    os.replace(staged, parts / RECORDS)


def _join_shards(parts: Path, output: Path, shards: list[Path]) -> int:
    """Join the shards into OUTPUT, one shard in memory at a time; returns the number of rows."""
    rows = sum(pq.ParquetFile(shard).metadata.num_rows for shard in shards)
    if output.suffix.lower() == ".npy":
        # Header, then each shard's rows appended: a memory map would keep every written page resident.
        dim = pq.read_schema(shards[0]).field("embedding").type.list_size
        descr = np.lib.format.dtype_to_descr(np.dtype(np.float32))
        header = {"descr": descr, "fortran_order": False, "shape": (rows, dim)}
        with output.open("wb") as handle:
            np.lib.format.write_array_header_1_0(handle, header)
            for shard in shards:
                values = pq.read_table(shard).column("embedding").combine_chunks().flatten()
                handle.write(values.to_numpy().astype(np.float32, copy=False).tobytes())
    elif output.suffix.lower() == ".parquet":
        with pq.ParquetWriter(output, pq.read_schema(shards[0])) as writer:
            for shard in shards:
                writer.write_table(pq.read_table(shard))
    else:
        dataset = Dataset.from_parquet([str(s) for s in shards], cache_dir=str(parts / "cache"))
        dataset.save_to_disk(str(output))
    return rows
