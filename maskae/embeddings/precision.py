"""Compact storage of sentence vectors: float16 halves the bytes, int8 stores each coordinate in one
byte on a per-dimension range fitted on the vectors themselves, and binary keeps only the signs, one bit
per coordinate, taken around the vectors' mean. These are the int8 and binary schemes that sentence-transformers' `quantize_embeddings`
implements (Shakir, Aarsen and Lee, 2024) and that vector databases index natively.

The ranges are fitted on the whole output (not a calibration sample), so a corpus written by one process
or by many is quantised the same way, and they are stored beside it so that queries can be quantised to
match and vectors read back (`restore`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from .choices import PRECISIONS


@dataclass
class Quantizer:
    """How vectors of width `dimension` are stored at `precision`: int8 keeps `offset` and `step` per
    dimension (x = offset + step * (q + 128)); binary keeps the signs of x - `offset` (the mean)."""

    precision: str
    dimension: int
    offset: np.ndarray | None = None
    step: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}.")

    @classmethod
    def fit(cls, precision: str, batches: Iterable[np.ndarray]) -> "Quantizer":
        """Fit on every batch of vectors (read one at a time): int8's ranges, and binary's centre (the mean,
        whose signs carry far more than raw signs where every vector shares a large common component, as
        a middle layer's do)."""
        low = high = total = None
        dimension = count = 0
        for vectors in batches:
            dimension = vectors.shape[1]
            if precision not in ("int8", "binary"):
                break
            vectors = vectors.astype(np.float64)
            low = vectors.min(axis=0) if low is None else np.minimum(low, vectors.min(axis=0))
            high = vectors.max(axis=0) if high is None else np.maximum(high, vectors.max(axis=0))
            total = vectors.sum(axis=0) if total is None else total + vectors.sum(axis=0)
            count += len(vectors)
        if precision == "binary":
            return cls(precision, dimension, (total / count).astype(np.float32))
        if precision != "int8":
            return cls(precision, dimension)
        step = (high - low) / 255.0
        step[step == 0] = 1.0  # a constant dimension: every value maps to q = -128 and back exactly
        return cls(precision, dimension, low.astype(np.float32), step.astype(np.float32))

    @property
    def dtype(self) -> np.dtype:
        return np.dtype({"float32": np.float32, "float16": np.float16, "int8": np.int8, "binary": np.uint8}[self.precision])

    @property
    def width(self) -> int:
        """Stored values per vector: `dimension`, or its bytes of packed bits for binary."""
        return (self.dimension + 7) // 8 if self.precision == "binary" else self.dimension

    def compact(self, vectors: np.ndarray) -> np.ndarray:
        """float32 [n, dimension] -> the stored [n, width] array."""
        vectors = np.asarray(vectors, np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dimension:
            raise ConfigError(f"these vectors are {vectors.shape[-1]} wide, but the stored ones are {self.dimension} "
                              "wide; embed with the same model, layer and --dim.")
        if self.precision == "float32":
            return vectors
        if self.precision == "float16":
            return vectors.astype(np.float16)
        if self.precision == "binary":
            return np.packbits(vectors > self.offset, axis=1)
        codes = np.rint((vectors - self.offset) / self.step) - 128
        return np.clip(codes, -128, 127).astype(np.int8)

    def restore(self, stored: np.ndarray) -> np.ndarray:
        """The stored array back as float32 vectors: exact for float32, rounded for float16 and int8, and
        +1 / -1 per centred coordinate for binary."""
        if self.precision == "binary":
            bits = np.unpackbits(np.asarray(stored, np.uint8), axis=1, count=self.dimension)
            return bits.astype(np.float32) * 2 - 1
        if self.precision == "int8":
            return self.offset + self.step * (stored.astype(np.float32) + 128)
        return np.asarray(stored, np.float32)

    def to_dict(self) -> dict:
        record = {"precision": self.precision, "dimension": self.dimension}
        if self.precision in ("int8", "binary"):
            record["offset"] = self.offset.tolist()
        if self.precision == "int8":
            record["step"] = self.step.tolist()
        return record

    @classmethod
    def from_dict(cls, record: dict) -> "Quantizer":
        offset, step = record.get("offset"), record.get("step")
        return cls(record["precision"], int(record["dimension"]),
                   None if offset is None else np.asarray(offset, np.float32),
                   None if step is None else np.asarray(step, np.float32))
