"""Embeddings of a corpus of any size, written so that nothing is lost: each chunk of vectors becomes its
own parquet shard in `OUT.parts/` before the next one starts (memory stays flat however large the
corpus), each finished shard's size and SHA-256 go into `OUT.parts/chunks.json` (one records file per
rank when many processes write, `ranks`), and once every chunk is done the shards are joined into OUT
(.npy, .parquet or a datasets directory), one at a time, at the precision asked for (`precision`), with
a record of how it was made beside it (`stored`).

A resumed run redoes a shard that was damaged after it was written instead of joining bad data, and
refuses to continue a run made with other settings. A lock file beside the output (`OUT.lock`) keeps a
second run from writing the same output.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
from collections.abc import Callable, Iterable
from contextlib import nullcontext
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
from .precision import Quantizer
from .ranks import Ranks
from .stored import record_path, write_record

MANIFEST = "manifest.json"
RECORDS = "chunks.json"
RANK_RECORDS = "chunks.rank*.json"
COUNT = "count.txt"

logger = logging.getLogger(__name__)


class ChunkWriter:
    """The shards of one output: which are done, writing the next one, and joining them all.

    Creating it checks the request against what is on disk (so a bad request fails before a model
    loads); the main rank's `start` then clears or verifies the parts directory, and the others `attach`."""

    def __init__(self, output: str | Path, settings: dict, *, resume: bool = False, overwrite: bool = False,
                 ranks: Ranks | None = None) -> None:
        self.output = Path(output)
        self.parts = self.output.with_name(self.output.name + ".parts")
        self.settings, self.resume, self.overwrite = settings, resume, overwrite
        self.ranks = ranks or Ranks()
        self.records: dict[str, dict] = {}
        self.record_file = RECORDS if self.ranks.world == 1 else f"chunks.rank{self.ranks.rank}.json"
        if not self.ranks.is_main:  # the main rank checked, and may already have made the parts directory
            return
        if self.parts.exists() and not (resume or overwrite):
            raise DataError(
                f"found partial output of an earlier run in {str(self.parts)!r}; pass --resume to continue it or "
                "--overwrite to start over."
            )
        if self.output.exists() and not (overwrite or (resume and self.parts.exists())):
            raise DataError(f"{str(self.output)!r} already exists; pass --overwrite to replace it.")

    def start(self) -> set[int]:
        """Prepare the parts directory (main rank); returns the indexes of the chunks already done."""
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
        intact = _intact_chunks(parts)
        _save_records(parts, RECORDS, intact)
        if self.record_file == RECORDS:  # one process: its new records join the intact ones in the same file
            self.records = dict(intact)
        return self.attach()

    def attach(self) -> set[int]:
        """The chunks already done, as the main rank's `start` left them."""
        done = _read_records(self.parts / RECORDS)
        return {_chunk_index(name) for name in done}

    def write(self, index: int, vectors: np.ndarray) -> None:
        """Chunk `index` as a shard, renamed into place and recorded only once complete."""
        shard = _shard(self.parts, index)
        try:
            pq.write_table(pa.table({"embedding": _to_arrow(vectors)}), shard.with_suffix(".tmp"))
            os.replace(shard.with_suffix(".tmp"), shard)
            self.records[shard.name] = file_record(shard)
            _save_records(self.parts, self.record_file, self.records)
        except OSError as error:
            shard.with_suffix(".tmp").unlink(missing_ok=True)
            raise StorageError(
                f"could not write {shard} ({error.strerror or error}); the {len(self.records)} chunks before it "
                "are kept; free space on that disk, then rerun with --resume."
            ) from None

    def save_count(self, chunks: int) -> None:
        """How many chunks the corpus has, for the process that joins them (`ranks.launch_local`)."""
        (self.parts / COUNT).write_text(str(chunks))

    def saved_count(self) -> int:
        return int((self.parts / COUNT).read_text())

    def finish(self, chunks: int, precision: str = "float32") -> int:
        """Join the `chunks` shards into the output at `precision`, record how it was made, and remove the
        parts (main rank, once every rank is done); returns the number of rows."""
        output = self.output
        records = _merged_records(self.parts)
        names = [_shard(self.parts, index).name for index in range(chunks)]
        missing = [str(index) for index, name in enumerate(names) if name not in records]
        if missing:
            raise StorageError(f"chunk(s) {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} of {chunks} "
                               "were not written (a process stopped early); rerun with --resume to embed them.")
        _remove(output)
        record_path(output).unlink(missing_ok=True)
        shards = [self.parts / name for name in names]
        try:
            quantizer = Quantizer.fit(precision, (_vectors(shard) for shard in shards))
            rows = _join_shards(self.parts, output, shards, quantizer)
            write_record(output, {"rows": rows, "quantizer": quantizer.to_dict(), "settings": self.settings})
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
    precision: str = "float32",
    ranks: Ranks | None = None,
) -> int:
    """Embed each chunk of texts with `embed` and write them all to `output`, resumably (see the module);
    `settings` is what a resumed run must match. `before_start` runs once the request is checked against
    the disk and the lock is held (e.g. loading the model). With `ranks`, this process embeds only its
    own chunks and the main rank joins them all. Returns the number of rows written (0 on other ranks)."""
    output = Path(output)
    ranks = ranks or Ranks()
    lock = RunLock(output.with_name(output.name + ".lock"), "maskae embed") if ranks.is_main else nullcontext()
    with lock:
        writer = ChunkWriter(output, settings, resume=resume, overwrite=overwrite, ranks=ranks)
        if before_start is not None:
            before_start()
        done = writer.start() if ranks.is_main else set()
        ranks.wait_for_everyone()
        if not ranks.is_main:
            done = writer.attach()
        count = seen = 0
        with tqdm(unit="text", desc="embedding", disable=not (progress and ranks.rank == 0)) as bar:
            for index, chunk in enumerate(chunks):
                if index not in done and ranks.owns(index):
                    writer.write(index, embed(chunk))
                bar.update(len(chunk))
                seen += len(chunk)
                count = index + 1
                signum = stop_requested()
                if signum is not None:  # the chunk is written: stop here, --resume starts at the next one
                    raise Preempted(signum, f"stopped by {signal.Signals(signum).name} after chunk {index + 1} "
                                    f"({seen} texts), which is written; continue with the same command and --resume")
        if ranks.launched_here:
            if ranks.rank == 0:
                writer.save_count(count)
            return 0
        ranks.wait_for_everyone()
        return writer.finish(count, precision) if ranks.is_main else 0


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


def _chunk_index(name: str) -> int:
    return int(name.removeprefix("chunk-").removesuffix(".parquet"))


def _read_records(path: Path) -> dict[str, dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _merged_records(parts: Path) -> dict[str, dict]:
    """Every rank's records in the one records file (saved before the ranks' files go), and returned."""
    records = _read_records(parts / RECORDS)
    extras = sorted(parts.glob(RANK_RECORDS))
    for extra in extras:
        records |= _read_records(extra)
    if extras:
        _save_records(parts, RECORDS, records)
        for extra in extras:
            extra.unlink()
    return records


def _intact_chunks(parts: Path) -> dict[str, dict]:
    """The records, from every rank's records file, of the shards that match them; a damaged or unrecorded
    shard is deleted (with a warning naming a damaged one) so that it is embedded again."""
    records = _merged_records(parts)
    intact: dict[str, dict] = {}
    for name in sorted(records):
        problem = damage(parts, {name: records[name]})
        if problem is not None:
            logger.warning("chunk %s is damaged (%s), so it is embedded again.", parts / name, problem)
            continue
        intact[name] = records[name]
    for stray in parts.glob("chunk-*"):
        if stray.name not in intact:
            stray.unlink()
    return intact


def _save_records(parts: Path, name: str, records: dict[str, dict]) -> None:
    staged = parts / (name + ".tmp")
    staged.write_text(json.dumps(records, indent=1))
    os.replace(staged, parts / name)


def _vectors(shard: Path) -> np.ndarray:
    """A shard's vectors as [rows, dim] (per-token shards: every token's vector, [tokens, dim])."""
    column = pq.read_table(shard).column("embedding").combine_chunks()
    if pa.types.is_list(column.type):
        column = column.flatten()
    return column.flatten().to_numpy().reshape(len(column), -1)


def _join_shards(parts: Path, output: Path, shards: list[Path], quantizer: Quantizer) -> int:
    """Join the shards into OUTPUT at the quantizer's precision, one shard in memory at a time; returns the
    number of rows."""
    rows = sum(pq.ParquetFile(shard).metadata.num_rows for shard in shards)
    if output.suffix.lower() == ".npy":
        # Header, then each shard's rows appended: a memory map would keep every written page resident.
        header = {"descr": np.lib.format.dtype_to_descr(quantizer.dtype), "fortran_order": False,
                  "shape": (rows, quantizer.width)}
        with output.open("wb") as handle:
            np.lib.format.write_array_header_1_0(handle, header)
            for shard in shards:
                handle.write(quantizer.compact(_vectors(shard)).tobytes())
        return rows
    tables = (pq.read_table(shard) if quantizer.precision == "float32" else  # per-token shards are float32
              pa.table({"embedding": _to_arrow(quantizer.compact(_vectors(shard)))}) for shard in shards)
    if output.suffix.lower() == ".parquet":
        first = next(tables)
        with pq.ParquetWriter(output, first.schema) as writer:
            writer.write_table(first)
            for table in tables:
                writer.write_table(table)
        return rows
    if quantizer.precision != "float32":  # datasets reads files: the compacted shards are written first
        (parts / "compacted").mkdir(exist_ok=True)
        for shard, table in zip(shards, tables):
            pq.write_table(table, parts / "compacted" / shard.name)
        shards = [parts / "compacted" / shard.name for shard in shards]
    Dataset.from_parquet([str(s) for s in shards], cache_dir=str(parts / "cache")).save_to_disk(str(output))
    return rows
