"""Embedding with Ray Data, for corpora that outgrow one process: `RayEmbedder` is the callable class that
`Dataset.map_batches` runs in a pool of actors (each loads the model once), and `embed_with_ray` builds the
whole pipeline (Ray's readers, blank rows dropped as `maskae.data.load_corpus` drops them, the actor pool,
Parquet in input order) on the cores of one machine or the nodes of a cluster.

Ray is an optional extra (`pip install 'maskae[ray]'`), imported only when `embed_with_ray` runs."""

from __future__ import annotations

import glob
import logging
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import errors
from ..errors import ConfigError, DataError, MaskAEError
from ..utils.extras import import_extra
from .choices import SENTENCE_POOLINGS

if TYPE_CHECKING:
    from .embedder import LayerSpec

# Ray's reader for each file suffix, and whether its rows are plain lines (WikiText headings cleaned).
READERS = {
    ".txt": ("read_text", True),
    ".text": ("read_text", True),
    ".jsonl": ("read_json", False),
    ".json": ("read_json", False),
    ".csv": ("read_csv", False),
    ".tsv": ("read_csv", False),
    ".parquet": ("read_parquet", False),
}
# `= Title =` / `= = Section = =` lines of WikiText keep only their title, as in maskae.data.corpus (which
# this part may not import).
HEADING = re.compile(r"^(=(?: =)*) (.*?) \1$")
# The last line of a remote traceback that ended in a maskae error: its class and its one-sentence message.
USER_ERROR = re.compile(r"^maskae\.errors\.(\w+): (.+)$", re.MULTILINE)


class RayEmbedder:
    """A callable class for `ray.data.Dataset.map_batches(RayEmbedder, fn_constructor_kwargs={...},
    batch_format="numpy")`: each actor loads `model` once, and each call adds an `embedding` column
    (float32 [n, dim]) holding the vectors of the batch's `text_column`.

    The other arguments are those of `maskae.embed`; `threads` sets the actor's torch (and graph runtime)
    threads.
    """

    def __init__(
        self,
        model: str | Path,
        layer: LayerSpec = None,
        pooling: str | None = None,
        normalize: bool = False,
        whiten: bool = True,
        backend: str | None = None,
        dtype: str | None = None,
        max_length: int | None = None,
        batch_size: int = 32,
        layer_combine: str = "mean",
        text_column: str = "text",
        threads: int | None = None,
        dim: int | None = None,
    ) -> None:
        # Imported here, in the actors: Ray's read and write tasks import this module too, and need no torch.
        import torch

        from .embedder import Embedder
        from .graphs import is_graph_export

        if threads is not None:
            torch.set_num_threads(threads)  # before loading: a graph runtime takes torch's thread count
        # A graph has its pooling baked in; PyTorch pools by the mean unless told otherwise (as maskae embed).
        self.pooling = pooling or (None if is_graph_export(model) else "mean")
        self.embedder = Embedder.from_pretrained(model, backend=backend, dtype=dtype)
        self.embedder.check_request(layer, self.pooling, layer_combine, batch_size, whiten, dim)
        self.layer, self.normalize, self.whiten, self.dim = layer, normalize, whiten, dim
        self.max_length, self.batch_size, self.layer_combine = max_length, batch_size, layer_combine
        self.text_column = text_column

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The batch with an `embedding` column added."""
        batch["embedding"] = self.embedder.embed(
            batch[self.text_column].tolist(), layer=self.layer, pooling=self.pooling,
            normalize=self.normalize, batch_size=self.batch_size, max_length=self.max_length,
            layer_combine=self.layer_combine, whiten=self.whiten, dim=self.dim,
        )
        return batch


def embed_with_ray(
    model: str | Path,
    input: str | Path,
    output: str | Path,
    *,
    num_workers: int = 1,
    text_column: str = "text",
    layer: LayerSpec = None,
    pooling: str | None = None,
    normalize: bool = False,
    whiten: bool = True,
    backend: str | None = None,
    dtype: str | None = None,
    max_length: int | None = None,
    batch_size: int = 32,
    chunk_size: int = 10_000,
    layer_combine: str = "mean",
    overwrite: bool = False,
    progress: bool = True,
    dim: int | None = None,
) -> int:
    """Embed every non-blank text of `input` with `num_workers` Ray actors and write a Parquet directory
    `output` with columns `text` (stripped, as `maskae.data.load_corpus` gives it) and `embedding`
    (fixed-size lists of float32, as `maskae embed` writes them), in input order. Returns the number of rows.

    `input` is a .txt (one text per line), .jsonl/.json, .csv, .tsv or .parquet file, or a directory or glob
    of files of one of these types. Each actor embeds `chunk_size` texts at a time, on its share of the
    cluster's CPUs. A local Ray is started unless `ray.init` was called or RAY_ADDRESS names a running
    cluster (on a cluster, give paths that every node can read and write). The files go to
    `output`.partial, renamed to `output` once complete; `overwrite` replaces an existing `output`, and
    `progress` shows Ray Data's progress bars. The other arguments are those of `maskae.embed`.
    """
    ray = import_extra("ray", "ray", "embedding with Ray")
    if num_workers < 1 or chunk_size < 1:
        raise ConfigError(f"num_workers={num_workers} and chunk_size={chunk_size} must both be at least 1.")
    if pooling not in (None, *SENTENCE_POOLINGS):
        raise ConfigError(f"pooling={pooling!r} cannot be written as one vector per text; use one of "
                          f"{', '.join(SENTENCE_POOLINGS)}, or maskae embed for per-token vectors.")
    output = Path(output)
    if output.exists() and not overwrite:
        raise DataError(f"{output} already exists; pass --overwrite to replace it.")
    files, reader, headings = _input_files(str(input))
    staged = output.with_name(output.name + ".partial")  # the output appears only once complete
    request = {"model": str(model), "layer": layer, "pooling": pooling, "normalize": normalize, "whiten": whiten,
               "backend": backend, "dtype": dtype, "max_length": max_length, "batch_size": batch_size,
               "layer_combine": layer_combine, "dim": dim}
    # Load the model here once, so that a wrong model, layer or pooling fails in one line before any actor starts
    # (an actor's failure comes back wrapped in Ray's own reports).
    RayEmbedder(**request)
    if not ray.is_initialized() and os.environ.get("RAY_ADDRESS"):  # a running cluster (ray start, a Ray job)
        ray.init(log_to_driver=False, logging_level=logging.WARNING)
    elif not ray.is_initialized():
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    cpus, threads = _share(ray, num_workers)
    with _ray_data_settings(ray, progress):
        dataset = _read(ray, files, reader).map_batches(
            _clean_rows, batch_format="pyarrow", num_cpus=0,
            fn_kwargs={"text_column": text_column, "headings": headings, "source": str(input)},
        )
        dataset = dataset.map_batches(
            RayEmbedder, batch_size=chunk_size, batch_format="numpy", num_cpus=cpus,
            compute=ray.data.ActorPoolStrategy(size=num_workers), fn_constructor_kwargs={**request, "threads": threads},
        ).map_batches(_fixed_size_lists, batch_format="numpy", num_cpus=0)
        _remove(staged)
        try:
            dataset.write_parquet(str(staged), ray_remote_args={"num_cpus": 0})
        except Exception as error:
            _remove(staged)
            if (user_error := _user_error(error)) is None:
                raise
            raise user_error from None
    rows = sum(pq.read_metadata(file).num_rows for file in staged.glob("*.parquet"))
    if rows == 0:
        _remove(staged)
        raise DataError(f"{input} contains no text (every row is blank); point the input at non-empty files.")
    _remove(output)
    staged.rename(output)
    return rows


def _input_files(source: str) -> tuple[list[str], str, bool]:
    """The files behind `source` in load_corpus's order, the Ray reader for them, and whether they are lines."""
    if glob.has_magic(source):
        files = sorted(Path(p) for p in glob.glob(source, recursive=True) if Path(p).is_file())
    elif Path(source).is_dir():
        files = sorted(p for p in Path(source).rglob("*") if p.is_file() and p.suffix.lower() in READERS)
    elif Path(source).is_file():
        files = [Path(source)]
    else:
        raise DataError(f"input {source} does not exist; check the path.")
    suffixes = {file.suffix.lower() for file in files}
    kinds = {(READERS[s][0], s == ".tsv") for s in suffixes if s in READERS}
    if not files or len(kinds) != 1 or not suffixes <= set(READERS):
        raise DataError(f"{source} holds {', '.join(sorted(suffixes)) or 'no files'}; give files of one type among "
                        f"{', '.join(READERS)}.")
    files = [file for file in files if file.stat().st_size > 0]
    if not files:
        raise DataError(f"{source} contains no text (it is empty, 0 bytes); point the input at files that hold text.")
    reader, headings = READERS[files[0].suffix.lower()]
    return [str(file) for file in files], reader, headings


def _read(ray: ModuleType, files: list[str], reader: str):
    """A dataset of the files' rows, read by Ray's own reader (tab-separated for .tsv)."""
    options = {}
    if files[0].lower().endswith(".tsv"):
        import pyarrow.csv

        options["parse_options"] = pyarrow.csv.ParseOptions(delimiter="\t")
    return getattr(ray.data, reader)(files, num_cpus=0, **options)


def _clean_rows(batch: pa.Table, text_column: str, headings: bool, source: str) -> pa.Table:
    """Only the text column, named `text`: rows stripped and blank ones dropped, as load_corpus does."""
    if text_column not in batch.column_names:
        raise DataError(f"{source} has no column {text_column!r} (it has {', '.join(batch.column_names)}); pass "
                        "text_column=<one of them>.")
    texts = []
    for text in batch.column(text_column).to_pylist():
        text = "" if text is None else str(text).strip()
        if headings and (heading := HEADING.match(text)):
            text = heading.group(2).strip()
        if text:
            texts.append(text)
    return pa.table({"text": pa.array(texts, pa.string())})


def _fixed_size_lists(batch: dict[str, np.ndarray]) -> pa.Table:
    """The rows with their vectors as fixed-size lists of float32, as maskae embed writes them (Ray's own
    tensor column would need Ray to read it back)."""
    vectors = batch["embedding"]
    return pa.table({
        "text": pa.array(batch["text"], pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1]),
    })


def _share(ray: ModuleType, num_workers: int) -> tuple[float, int]:
    """The CPUs each actor reserves and the threads it runs. The threads split the cluster's CPUs evenly (at
    most one node's); the reservations leave one CPU to Ray's readers and writers, which would otherwise wait
    forever for the actors to finish."""
    total = ray.cluster_resources().get("CPU", 1.0)
    largest = max((node["Resources"].get("CPU", 0.0) for node in ray.nodes() if node["Alive"]), default=total)
    threads = max(1, min(int(total // num_workers), int(largest)))
    return min(threads, max(total - 1, 0) / num_workers), threads


@contextmanager
def _ray_data_settings(ray: ModuleType, progress: bool) -> Iterator[None]:
    """For one run: rows in input order, progress bars only if asked, and Ray Data's console at warnings and
    above (less Ray's notice that the bars are off); the caller's own settings come back after it."""
    context = ray.data.DataContext.get_current()
    saved = context.execution_options.preserve_order, context.enable_progress_bars
    context.execution_options.preserve_order, context.enable_progress_bars = True, progress
    consoles = [handler for handler in logging.getLogger("ray.data").handlers
                if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)]
    levels = [handler.level for handler in consoles]
    for handler in consoles:
        handler.setLevel(max(handler.level, logging.WARNING))
        handler.addFilter(_no_bars_notice)
    try:
        yield
    finally:
        context.execution_options.preserve_order, context.enable_progress_bars = saved
        for handler, level in zip(consoles, levels, strict=True):
            handler.setLevel(level)
            handler.removeFilter(_no_bars_notice)


def _no_bars_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Progress bars disabled")


def _user_error(error: BaseException) -> MaskAEError | None:
    """The maskae error that an actor or task raised, rebuilt from the remote traceback in Ray's message (Ray
    keeps only the text of an actor's failed `__init__`, and wraps a task's error in a UserCodeException)."""
    raised = USER_ERROR.findall(str(error))
    if not raised:
        return None
    name, message = raised[-1]
    kind = getattr(errors, name, None)
    return kind(message) if isinstance(kind, type) and issubclass(kind, MaskAEError) else None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
