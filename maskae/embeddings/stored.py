"""What `maskae embed` wrote, read back: the vectors in any of its formats (.npy, .parquet, a datasets
directory, the Ray engine's directory of parquet files) and the record beside them (`OUT.json`, or `maskae_embeddings.json` inside a directory) that
says which model, layer, pooling and precision made them, so that an index or a query can match them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import DataError
from .precision import Quantizer

DIRECTORY_RECORD = "maskae_embeddings.json"


def record_path(output: str | Path) -> Path:
    """Where the record of an output lives: inside a datasets directory, else beside the file."""
    output = Path(output)
    if output.suffix.lower() in (".npy", ".parquet"):
        return output.with_name(output.name + ".json")
    return output / DIRECTORY_RECORD


def write_record(output: str | Path, record: dict) -> None:
    """Write the record atomically (a reader sees the old one or the new one, never half)."""
    path = record_path(output)
    staged = path.with_name(path.name + ".tmp")
    staged.write_text(json.dumps(record, indent=1))
    os.replace(staged, path)


@dataclass
class StoredEmbeddings:
    """The stored vectors of one output ([n, width] in their stored dtype), how they were quantised, and the
    settings of the `maskae embed` run that wrote them."""

    values: np.ndarray
    quantizer: Quantizer
    settings: dict

    def restored(self) -> np.ndarray:
        """float32 vectors (dequantised; +1 / -1 coordinates for binary)."""
        return self.quantizer.restore(self.values)


def read_record(output: str | Path, command: str = "this") -> dict:
    path = record_path(output)
    if not Path(output).exists():
        raise DataError(f"{str(output)!r} does not exist; pass the --output of a finished maskae embed run.")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        raise DataError(f"{str(output)!r} has no readable record ({path.name}) of the model that wrote it, which "
                        f"{command} needs; rerun maskae embed to write it.") from None


def load_embeddings(output: str | Path, command: str = "this") -> StoredEmbeddings:
    """Read a `maskae embed` output (sentence vectors, not per-token ones) and its record."""
    record = read_record(output, command)
    if record["settings"].get("pooling") == "none":
        raise DataError(f"{str(output)!r} holds per-token vectors; {command} needs one vector per text, so embed "
                        "with a pooling (e.g. --pooling mean).")
    quantizer = Quantizer.from_dict(record["quantizer"])
    output = Path(output)
    if output.suffix.lower() == ".npy":
        values = np.load(output, mmap_mode="r")
    else:
        # a datasets directory (arrow files), or the parquet files of the Ray engine, named in input order
        files = [output] if output.suffix.lower() == ".parquet" else sorted(output.glob("*.arrow")) or sorted(
            output.glob("*.parquet"))
        values = np.concatenate([_column(file) for file in files]) if files else np.empty((0, quantizer.width))
    if values.shape != (record["rows"], quantizer.width):
        raise DataError(f"{str(output)!r} holds {values.shape[0]} x {values.shape[1]} values but its record says "
                        f"{record['rows']} x {quantizer.width}; embed the corpus again.")
    return StoredEmbeddings(values, quantizer, record["settings"])


def _column(file: Path) -> np.ndarray:
    if file.suffix == ".arrow":
        with pa.memory_map(str(file)) as source:
            column = pa.ipc.open_stream(source).read_all().column("embedding")
    else:
        column = pq.read_table(file, columns=["embedding"]).column("embedding")
    column = column.combine_chunks()
    return column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), -1)
