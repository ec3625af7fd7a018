"""A FAISS index of a `maskae embed` output and the texts behind it, searched with queries embedded as the
corpus was (same model, layer, pooling, whitening, --dim and precision, read from the output's record).

Float vectors are searched by cosine (inner product of normalised vectors); int8 vectors go into FAISS's
8-bit scalar-quantiser indexes (one byte per coordinate, queries kept in float); binary vectors into its
binary indexes (Hamming distance on the packed sign bits). `flat` is exact, `hnsw` a graph and `ivf`
inverted lists: the approximate kinds trade recall for speed on large corpora (docs/search.md measures it).
The index directory is written next to its final place and renamed into it, so it is whole or absent;
FAISS's own file format is read back, nothing is unpickled.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import ConfigError, DataError
from ..utils.extras import import_extra
from ..embeddings.precision import Quantizer
from ..embeddings.stored import load_embeddings

logger = logging.getLogger(__name__)

KINDS = ("flat", "hnsw", "ivf")
CONFIG = "index.json"
INDEX_FILE = "index.faiss"
TEXTS_FILE = "texts.parquet"
HNSW_NEIGHBOURS = 32  # links per node: FAISS's and hnswlib's usual middle ground of memory and recall
HNSW_EF_CONSTRUCTION = 200
HNSW_EF_SEARCH = 128
IVF_TRAINING_PER_LIST = 64  # training vectors per inverted list (FAISS warns below 39)
IVF_MIN_PROBES = 8  # lists a query visits at least; an eighth of them on large corpora
SCALAR_TRAINING = 100_000  # vectors that fit the 8-bit quantiser's ranges


def _faiss():
    return import_extra("faiss", "search", "an index")


@dataclass
class Hit:
    """One result: the row of the corpus, its text and its score (cosine, or Hamming distance for binary)."""

    row: int
    text: str | None
    score: float


def build_index(vectors: str | Path, out: str | Path, kind: str = "flat", texts: str | Path | None = None,
                text_column: str | None = None, overwrite: bool = False, progress: bool = True) -> int:
    """Index the output of `maskae embed` at `vectors` into the directory `out`; the texts come from the
    corpus the output records (or `texts`), row by row. Returns the number of vectors indexed."""
    if kind not in KINDS:
        raise ConfigError(f"unknown index kind {kind!r}; choose one of {', '.join(KINDS)}.")
    out = Path(out)
    if out.exists() and not overwrite:
        raise DataError(f"{str(out)!r} already exists; pass --overwrite to replace it or choose another --out.")
    stored = load_embeddings(vectors, "maskae index")
    rows = len(stored.values)
    if rows == 0:
        raise DataError(f"{str(vectors)!r} holds no vectors; embed a corpus with at least one text.")
    faiss = _faiss()
    index, settings = _new_index(faiss, stored.quantizer, kind, rows)
    data = _prepared(stored.quantizer, stored.values)
    if not index.is_trained:
        size = settings["nlist"] * IVF_TRAINING_PER_LIST if "nlist" in settings else SCALAR_TRAINING
        sample = data[np.sort(np.random.default_rng(0).permutation(rows)[:size])]
        index.train(sample)
    index.add(data)
    staged = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    try:
        corpus = texts or stored.settings.get("input")
        _write_texts(staged / TEXTS_FILE, corpus, text_column or stored.settings.get("text_column", "text"),
                     stored.settings.get("split", "train"), rows)
        write = faiss.write_index_binary if stored.quantizer.precision == "binary" else faiss.write_index
        write(index, str(staged / INDEX_FILE))
        config = {"kind": kind, **settings, "rows": rows, "vectors": str(Path(vectors).resolve()),
                  "quantizer": stored.quantizer.to_dict(), "embedding": stored.settings}
        (staged / CONFIG).write_text(json.dumps(config, indent=1))
        if out.exists():
            shutil.rmtree(out)
        os.replace(staged, out)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return rows


def _new_index(faiss, quantizer: Quantizer, kind: str, rows: int):
    """The FAISS index for this precision and kind, and the settings to record."""
    dimension, precision = quantizer.dimension, quantizer.precision
    settings: dict = {"metric": "hamming" if precision == "binary" else "cosine"}
    nlist = max(1, min(round(4 * math.sqrt(rows)), rows // IVF_TRAINING_PER_LIST))
    if kind == "ivf":
        settings |= {"nlist": nlist, "nprobe": min(nlist, max(IVF_MIN_PROBES, nlist // 8))}
    if kind == "hnsw":
        settings |= {"ef_search": HNSW_EF_SEARCH}
    if precision == "binary":
        if kind == "flat":
            return faiss.IndexBinaryFlat(dimension), settings
        if kind == "hnsw":
            index = faiss.IndexBinaryHNSW(dimension, HNSW_NEIGHBOURS)
            index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            return index, settings
        coarse = faiss.IndexBinaryFlat(dimension)
        index = faiss.IndexBinaryIVF(coarse, dimension, nlist)
        index.own_fields = True  # the index keeps its coarse quantiser alive (and frees it)
        coarse.this.disown()
        return index, settings
    inner = faiss.METRIC_INNER_PRODUCT
    eight_bit = faiss.ScalarQuantizer.QT_8bit
    if kind == "flat":
        index = faiss.IndexScalarQuantizer(dimension, eight_bit, inner) if precision == "int8" else \
            faiss.IndexFlatIP(dimension)
    elif kind == "hnsw":
        index = faiss.IndexHNSWSQ(dimension, eight_bit, HNSW_NEIGHBOURS, inner) if precision == "int8" else \
            faiss.IndexHNSWFlat(dimension, HNSW_NEIGHBOURS, inner)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    else:
        coarse = faiss.IndexFlatIP(dimension)
        index = faiss.IndexIVFScalarQuantizer(coarse, dimension, nlist, eight_bit, inner) if precision == "int8" \
            else faiss.IndexIVFFlat(coarse, dimension, nlist, inner)
        index.own_fields = True
        coarse.this.disown()
    return index, settings


def _prepared(quantizer: Quantizer, values: np.ndarray) -> np.ndarray:
    """What FAISS is given of the stored vectors: packed bits for binary, else unit-length float32 rows."""
    if quantizer.precision == "binary":
        return np.ascontiguousarray(values, dtype=np.uint8)
    return _unit(quantizer.restore(values))


def _unit(vectors: np.ndarray) -> np.ndarray:
    """Rows of length one, so that FAISS's inner product is the cosine."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def _write_texts(path: Path, corpus: str | None, text_column: str, split: str, rows: int) -> None:
    """Row id and text of every vector, read again from the corpus (streamed); it must still hold exactly
    the rows that were embedded."""
    from ..data.corpus import load_corpus

    if corpus is None:
        raise DataError("the vectors do not record their corpus; pass --texts with the file that was embedded.")
    try:
        dataset = load_corpus(corpus, text_column, streaming=True, split=split)
    except (OSError, ValueError, DataError) as error:
        raise DataError(f"cannot read the texts of the vectors from {corpus!r} ({error}); pass --texts with the "
                        "corpus that was embedded.") from None
    written = 0
    schema = pa.schema([("row", pa.int64()), ("text", pa.string())])
    with pq.ParquetWriter(path, schema) as writer:
        for batch in dataset.iter(batch_size=10_000):
            texts = batch["text"][: max(0, rows - written)]
            writer.write_table(pa.table({"row": np.arange(written, written + len(texts)), "text": texts},
                                        schema=schema))
            written += len(batch["text"])
    if written != rows:
        raise DataError(f"{corpus!r} now holds {written} texts but {rows} vectors were embedded from it; pass --texts "
                        "with the corpus as it was embedded, or embed it again.")


class SearchIndex:
    """A built index, its texts and the settings that embed a query the way the corpus was embedded."""

    def __init__(self, directory: str | Path, model: str | None = None, device: str | None = None):
        self.directory = Path(directory)
        try:
            self.config = json.loads((self.directory / CONFIG).read_text())
        except (OSError, ValueError):
            raise DataError(f"{str(directory)!r} is not an index that maskae index wrote (no readable {CONFIG}); "
                            "pass the --out of maskae index VECTORS --out DIR.") from None
        faiss = _faiss()
        self.quantizer = Quantizer.from_dict(self.config["quantizer"])
        read = faiss.read_index_binary if self.quantizer.precision == "binary" else faiss.read_index
        self.index = read(str(self.directory / INDEX_FILE))
        if "nprobe" in self.config:
            self.index.nprobe = self.config["nprobe"]
        if "ef_search" in self.config:
            self.index.hnsw.efSearch = self.config["ef_search"]
        self.settings = dict(self.config["embedding"])
        if model is not None:
            self.settings["model"] = model
        self.device = device
        self._embedder = None
        self._texts = None

    @classmethod
    def load(cls, directory: str | Path, model: str | None = None, device: str | None = None) -> "SearchIndex":
        """Open an index; `model` replaces the recorded model (e.g. moved), which must give vectors as wide."""
        return cls(directory, model, device)

    def embed(self, queries: list[str]) -> np.ndarray:
        """The queries as the corpus was embedded, then prepared for FAISS (`prepare`)."""
        from ..embeddings.embedder import Embedder

        s = self.settings
        if self._embedder is None:
            self._embedder = Embedder.from_pretrained(s["model"], device=self.device, backend=s.get("backend"),
                                                      dtype=s.get("dtype"))
        vectors = self._embedder.embed(queries, layer=s.get("layer"), pooling=s.get("pooling"),
                                       normalize=s.get("normalize", False), max_length=s.get("max_length"),
                                       layer_combine=s.get("layer_combine", "mean"), whiten=s.get("whiten", True),
                                       dim=s.get("dim"))
        if vectors.shape[1] != self.quantizer.dimension:
            raise DataError(f"the index holds {self.quantizer.dimension}-wide vectors of "
                            f"{self.config['embedding']['model']}, but {s['model']} gives {vectors.shape[1]}-wide "
                            "ones; use the model that built the index (remove --model), or index vectors of "
                            "this model.")
        return self.prepare(vectors)

    def prepare(self, vectors: np.ndarray) -> np.ndarray:
        """Float query vectors as FAISS searches them here: their sign bits around the corpus's centre for
        binary, else unit length (int8 queries stay float: asymmetric search)."""
        return self.quantizer.compact(vectors) if self.quantizer.precision == "binary" else _unit(vectors)

    def search(self, queries: list[str] | str, k: int = 10) -> list[list[Hit]]:
        """The `k` nearest texts of each query, best first."""
        if isinstance(queries, str):
            queries = [queries]
        if k < 1:
            raise ConfigError(f"k={k} must be at least 1.")
        scores, rows = self.index.search(self.embed(list(queries)), min(k, self.index.ntotal))
        texts = self.texts()
        return [[Hit(int(row), texts[int(row)].as_py() if texts is not None else None, float(score))
                 for score, row in zip(query_scores, query_rows) if row >= 0]
                for query_scores, query_rows in zip(scores, rows)]

    def texts(self) -> pa.ChunkedArray | None:
        """The texts by row, memory-mapped (a corpus of any size costs only the pages a search reads)."""
        if self._texts is None and (self.directory / TEXTS_FILE).exists():
            self._texts = pq.read_table(self.directory / TEXTS_FILE, columns=["text"], memory_map=True).column("text")
        return self._texts

