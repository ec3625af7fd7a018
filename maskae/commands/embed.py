"""`maskae embed`: embed a corpus of any size into .npy, .parquet or a datasets directory.

The corpus is read lazily and embedded in chunks; each chunk is written as its own parquet shard
beside the output (`OUT.parts/`) before the next one starts, so memory stays flat however large the
corpus is, and `--resume` continues after the last shard written. Once every chunk is done the shards
are joined into OUT, one shard at a time.

Each finished shard's size and SHA-256 go into `OUT.parts/chunks.json`, so `--resume` redoes a shard
that was damaged after it was written (and every shard after it) instead of joining bad data. A
lock file beside the output (`OUT.lock`) keeps a second run from writing the same output.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
from datasets import Dataset
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from ..data import load_corpus
from ..embeddings import LAYER_COMBINES, POOLINGS, Embedder
from ..errors import ConfigError, DataError, StorageError
from ..integrity import damage, file_record
from ..run_lock import RunLock

MANIFEST = "manifest.json"
RECORDS = "chunks.json"

logger = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "embed",
        help="embed a text corpus with a MaskAE model or any Hugging Face encoder",
        description=(
            "Embed every text of INPUT with MODEL and write one vector per text, in input order. Layer k runs "
            "only the first k layers. The corpus is processed in chunks written to OUTPUT.parts/, so inputs "
            "larger than memory work and an interrupted run continues with --resume."
        ),
        epilog="example: maskae embed sentence-transformers/all-MiniLM-L6-v2 --input corpus.txt --layer 3 "
        "--output vectors.npy",
    )
    parser.add_argument("model", metavar="MODEL", help="checkpoint directory or Hub id (MaskAE or stock encoder)")
    parser.add_argument(
        "--input", required=True,
        help="texts: .txt (one per line), .jsonl, .csv, .tsv or .parquet file, a glob or directory of them, a "
        "datasets directory or a Hub dataset id; blank rows are skipped, as maskae.data.load_corpus does",
    )
    parser.add_argument("--text-column", default="text", help="column holding the text (not for .txt; default: text)")
    parser.add_argument("--split", default="train", help="split of a DatasetDict or Hub dataset (default: train)")
    parser.add_argument(
        "--output", required=True, type=Path,
        help="OUT.npy (float32 [n, dim]), OUT.parquet (column 'embedding'), or a directory (datasets save_to_disk)",
    )
    parser.add_argument(
        "--layer", type=_parse_layers, default=None,
        help="hidden_states index (0 = embeddings, -1 = last), or a comma list such as 4,5,6; "
        "default: a MaskAE model's code, else the last layer",
    )
    parser.add_argument("--layer-combine", choices=LAYER_COMBINES, default="mean", help="how to join several layers")
    parser.add_argument(
        "--pooling", choices=POOLINGS, default="mean",
        help="mean / max over real tokens, cls (first token), or none for per-token vectors (.parquet or a directory)",
    )
    parser.add_argument("--normalize", action="store_true", help="L2-normalise every vector")
    parser.add_argument(
        "--no-whiten", dest="whiten", action="store_false",
        help="skip the whitening stored with the model (`maskae whiten`), which is otherwise applied when its "
        "layer and pooling match",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="texts per forward pass (default: 32)")
    parser.add_argument("--max-length", type=int, default=None, help="truncate texts to this many tokens")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument(
        "--chunk-size", type=int, default=10_000, help="texts per chunk written to disk (default: 10000)"
    )
    parser.add_argument("--resume", action="store_true", help="continue after the chunks an earlier run wrote")
    parser.add_argument("--overwrite", action="store_true", help="replace OUTPUT and any partial output")
    parser.set_defaults(func=run)


def _parse_layers(value: str) -> int | list[int]:
    try:
        layers = [int(part) for part in value.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a layer index or a comma list of them") from None
    return layers[0] if len(layers) == 1 else layers


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


def run(args: argparse.Namespace) -> int:
    output: Path = args.output
    parts = output.with_name(output.name + ".parts")
    if args.pooling == "none" and output.suffix.lower() == ".npy":
        raise ConfigError(
            "--pooling none gives a matrix per text, which .npy cannot hold; write .parquet or a directory instead."
        )
    if args.chunk_size < 1:
        raise ConfigError(f"--chunk-size {args.chunk_size} must be at least 1.")
    if output.is_dir() and output.suffix.lower() in (".npy", ".parquet"):
        raise DataError(f"{str(output)!r} is a directory, but its name asks for a {output.suffix} file; remove it "
                        "or choose another --output.")
    with RunLock(output.with_name(output.name + ".lock"), "maskae embed"):
        return _run_locked(args, output, parts)


def _run_locked(args: argparse.Namespace, output: Path, parts: Path) -> int:
    settings = {
        "model": args.model,
        "input": str(Path(args.input).resolve()) if Path(args.input).exists() else args.input,
        "text_column": args.text_column,
        "split": args.split,
        "layer": args.layer,
        "layer_combine": args.layer_combine,
        "pooling": args.pooling,
        "normalize": args.normalize,
        "whiten": args.whiten,
        "max_length": args.max_length,
        "chunk_size": args.chunk_size,
    }
    if parts.exists() and not (args.resume or args.overwrite):
        raise DataError(
            f"found partial output of an earlier run in {str(parts)!r}; pass --resume to continue it or "
            "--overwrite to start over."
        )
    if output.exists() and not (args.overwrite or (args.resume and parts.exists())):
        raise DataError(f"{str(output)!r} already exists; pass --overwrite to replace it.")
    embedder = Embedder.from_pretrained(args.model, device=args.device)
    embedder.check_request(args.layer, args.pooling, args.layer_combine, args.batch_size)
    corpus = load_corpus(args.input, args.text_column, streaming=True, split=args.split)
    if args.overwrite:
        shutil.rmtree(parts, ignore_errors=True)
    if parts.exists():
        try:
            earlier = json.loads((parts / MANIFEST).read_text())
        except (OSError, ValueError):
            raise DataError(f"cannot resume {str(parts)!r}: its {MANIFEST} is missing or unreadable; pass "
                            "--overwrite to start over.") from None
        changed = [key for key in settings if earlier.get(key) != settings[key]]
        if changed:
            raise DataError(
                f"cannot resume {str(parts)!r}: it was written with different {', '.join(changed)}; rerun with "
                "the same settings or pass --overwrite to start over."
            )
    else:
        parts.mkdir(parents=True)
        (parts / MANIFEST).write_text(json.dumps(settings, indent=2))

    records = _intact_chunks(parts)
    done = len(records)
    with tqdm(unit="text", desc="embedding", disable=args.quiet) as progress:
        for index, batch in enumerate(corpus.iter(batch_size=args.chunk_size)):
            chunk = batch["text"]
            if index >= done:
                vectors = embedder.embed(
                    chunk,
                    layer=args.layer,
                    pooling=args.pooling,
                    normalize=args.normalize,
                    batch_size=args.batch_size,
                    max_length=args.max_length,
                    layer_combine=args.layer_combine,
                    whiten=args.whiten,
                )
                shard = _shard(parts, index)
                try:
                    pq.write_table(pa.table({"embedding": _to_arrow(vectors)}), shard.with_suffix(".tmp"))
                    os.replace(shard.with_suffix(".tmp"), shard)
                    records[shard.name] = file_record(shard)
                    _save_records(parts, records)
                except OSError as error:
                    shard.with_suffix(".tmp").unlink(missing_ok=True)
                    raise StorageError(
                        f"could not write {shard} ({error.strerror or error}); the {len(records)} chunks before it "
                        "are kept; free space on that disk, then rerun with --resume."
                    ) from None
            progress.update(len(chunk))
    if output.exists():
        shutil.rmtree(output) if output.is_dir() else output.unlink()
    try:
        rows = _join_shards(parts, output, [parts / name for name in records])
    except OSError as error:
        if output.exists():
            shutil.rmtree(output) if output.is_dir() else output.unlink()
        raise StorageError(
            f"could not write {output} ({error.strerror or error}); every chunk is kept in {parts}; free space on "
            "that disk, then rerun with --resume."
        ) from None
    shutil.rmtree(parts)
    print(f"wrote {rows} embeddings to {output}")
    return 0
