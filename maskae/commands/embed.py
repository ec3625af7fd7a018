"""`maskae embed`: embed a corpus of any size into .npy, .parquet or a datasets directory, resumably
(`embeddings.writer` holds the chunked, checksummed writing)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..embeddings.choices import BACKENDS, DTYPES, ENGINES, LAYER_COMBINES, POOLINGS, PRECISIONS
from ..errors import ConfigError, DataError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "embed",
        help="embed a text corpus with a MaskAE model or any Hugging Face encoder",
        description=(
            "Embed every text of INPUT with MODEL and write one vector per text, in input order. Layer k runs "
            "only the first k layers. The corpus is processed in chunks written to OUTPUT.parts/, so inputs "
            "larger than memory work and an interrupted run continues with --resume; SIGTERM or Ctrl-C stops "
            "after the current chunk (exit 143 / 130). MODEL may also be a directory of ONNX / OpenVINO graphs "
            "from maskae export --onnx/--openvino, run on those runtimes."
        ),
        epilog="examples: maskae embed sentence-transformers/all-MiniLM-L6-v2 --input corpus.txt --layer 3 "
        "--output vectors.npy; maskae embed graphs/minilm-l3 --input corpus.txt --output vectors.npy --backend openvino",
    )
    parser.add_argument("model", metavar="MODEL", help="checkpoint directory or Hub id (MaskAE or stock encoder), or "
                        "a directory of graphs that maskae export --onnx/--openvino wrote")
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
        "--pooling", choices=POOLINGS, default=None,
        help="mean / max over real tokens (default: mean, or the graph's own), cls (first token), or none for "
        "per-token vectors (.parquet or a directory)",
    )
    parser.add_argument(
        "--backend", choices=BACKENDS, default=None,
        help="what runs the encoder: torch, or the onnx / openvino graph of an exported directory (default: the "
        "graph in such a directory, else torch)",
    )
    parser.add_argument(
        "--dtype", choices=DTYPES, default=None,
        help="bf16 runs the matmuls in bf16 where the CPU has a bf16 unit (AMX, AVX-512 BF16, ARM BF16) or on a "
        "GPU; not for onnx (default: fp32)",
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
    parser.add_argument(
        "--precision", choices=PRECISIONS, default="float32",
        help="how the vectors are stored: float32, float16, int8 (one byte per coordinate on per-dimension ranges "
        "fitted on the output) or binary (sign bits, packed); recorded beside the output (default: float32)",
    )
    parser.add_argument("--dim", type=int, default=None,
                        help="keep the top D directions of the model's whitening (a whitened model only)")
    parser.add_argument(
        "--num-processes", type=int, default=1,
        help="embed with N processes on this host, each taking every N-th chunk, into one output (threads are "
        "shared out); under accelerate launch or torchrun the launcher's processes do the same (default: 1)",
    )
    parser.add_argument(
        "--engine", choices=ENGINES, default="maskae",
        help="maskae (chunked, resumable), or ray: a Ray Data pipeline read -> map_batches -> write_parquet, "
        "OUTPUT a directory of parquet files with text and embedding (pip install 'maskae[ray]')",
    )
    parser.add_argument("--num-workers", type=int, default=1, help="Ray actors embedding in parallel (--engine ray)")
    parser.add_argument("--resume", action="store_true", help="continue after the chunks an earlier run wrote")
    parser.add_argument("--overwrite", action="store_true", help="replace OUTPUT and any partial output")
    parser.set_defaults(func=run)


def _parse_layers(value: str) -> int | list[int]:
    try:
        layers = [int(part) for part in value.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a layer index or a comma list of them") from None
    return layers[0] if len(layers) == 1 else layers


def run(args: argparse.Namespace) -> int:
    output: Path = args.output
    if args.pooling == "none" and output.suffix.lower() == ".npy":
        raise ConfigError(
            "--pooling none gives a matrix per text, which .npy cannot hold; write .parquet or a directory instead."
        )
    if args.chunk_size < 1:
        raise ConfigError(f"--chunk-size {args.chunk_size} must be at least 1.")
    if output.is_dir() and output.suffix.lower() in (".npy", ".parquet"):
        raise DataError(f"{str(output)!r} is a directory, but its name asks for a {output.suffix} file; remove it "
                        "or choose another --output.")
    if args.precision != "float32" and args.pooling == "none":
        raise ConfigError(f"--precision {args.precision} stores one vector per text; remove it for --pooling none, or choose a sentence pooling.")
    if args.num_processes < 1 or args.num_workers < 1:
        raise ConfigError("--num-processes and --num-workers must be at least 1.")
    if args.engine == "ray":
        return _embed_with_ray(args, output)
    if args.num_workers != 1:
        raise ConfigError("--num-workers counts Ray actors; pass --engine ray, or --num-processes for maskae's own.")
    if args.num_processes > 1:
        return _launch(args, output)
    return _embed(args, output)


def _settings(args: argparse.Namespace, pooling: str | None) -> dict:
    """What a resumed run must match, and what the record beside the output keeps."""
    return {
        "model": args.model,
        "input": str(Path(args.input).resolve()) if Path(args.input).exists() else args.input,
        "text_column": args.text_column,
        "split": args.split,
        "layer": args.layer,
        "layer_combine": args.layer_combine,
        "pooling": pooling,
        "backend": args.backend,
        "dtype": args.dtype,
        "normalize": args.normalize,
        "whiten": args.whiten,
        "dim": args.dim,
        "max_length": args.max_length,
        "chunk_size": args.chunk_size,
        "precision": args.precision,
    }


def _pooling(args: argparse.Namespace) -> str | None:
    """A graph has its pooling baked in; PyTorch pools by the mean unless told otherwise."""
    from ..embeddings.graphs import is_graph_export

    return args.pooling or (None if is_graph_export(args.model) else "mean")


def _launch(args: argparse.Namespace, output: Path) -> int:
    """`--num-processes N`: prepare the output here, run N ranks of this very command, join their chunks."""
    import sys

    from ..embeddings.ranks import launch_local
    from ..embeddings.writer import ChunkWriter
    from ..utils.run_lock import RunLock

    argv = sys.argv[1:]
    for position, word in enumerate(argv):
        if word == "--num-processes":
            del argv[position:position + 2]
            break
        if word.startswith("--num-processes="):
            del argv[position]
            break
    with RunLock(output.with_name(output.name + ".lock"), "maskae embed"):
        writer = ChunkWriter(output, _settings(args, _pooling(args)), resume=args.resume, overwrite=args.overwrite)
        writer.start()
        code = launch_local(argv, args.num_processes)
        if code:
            return code
        rows = writer.finish(writer.saved_count(), args.precision)
    print(f"wrote {rows} embeddings to {output}")
    return 0


def _embed_with_ray(args: argparse.Namespace, output: Path) -> int:
    if args.num_processes != 1 or args.resume or args.precision != "float32":
        raise ConfigError("--engine ray writes float32 parquet files in one pass: remove --num-processes, --resume "
                          "and --precision (use --num-workers for parallelism).")
    from ..embeddings.precision import Quantizer
    from ..embeddings.ray_data import embed_with_ray
    from ..embeddings.stored import write_record

    rows = embed_with_ray(
        args.model, args.input, output, num_workers=args.num_workers, text_column=args.text_column,
        layer=args.layer, pooling=args.pooling, normalize=args.normalize, whiten=args.whiten, backend=args.backend,
        dtype=args.dtype, max_length=args.max_length, batch_size=args.batch_size, chunk_size=args.chunk_size,
        layer_combine=args.layer_combine, overwrite=args.overwrite, progress=not args.quiet, dim=args.dim,
    )
    if rows:  # the record that maskae index and search read, as for maskae's own engine
        import pyarrow.parquet as pq

        dimension = pq.read_schema(min(output.glob("*.parquet"))).field("embedding").type.list_size
        write_record(output, {"rows": rows, "quantizer": Quantizer("float32", dimension).to_dict(),
                              "settings": _settings(args, _pooling(args))})
    print(f"wrote {rows} embeddings to {output}")
    return 0


def _embed(args: argparse.Namespace, output: Path) -> int:
    from ..data.corpus import load_corpus
    from ..embeddings.embedder import Embedder
    from ..embeddings.ranks import current_ranks
    from ..embeddings.writer import write_embeddings

    pooling = _pooling(args)
    ranks = current_ranks()
    loaded: dict = {}

    def load() -> None:
        embedder = Embedder.from_pretrained(args.model, device=args.device or ranks.device, backend=args.backend,
                                            dtype=args.dtype)
        embedder.check_request(args.layer, pooling, args.layer_combine, args.batch_size, args.whiten, args.dim)
        loaded["embedder"] = embedder
        loaded["corpus"] = load_corpus(args.input, args.text_column, streaming=True, split=args.split)

    def embed(texts: list[str]):
        return loaded["embedder"].embed(
            texts, layer=args.layer, pooling=pooling, normalize=args.normalize, batch_size=args.batch_size,
            max_length=args.max_length, layer_combine=args.layer_combine, whiten=args.whiten, dim=args.dim,
        )

    def chunks():
        for batch in loaded["corpus"].iter(batch_size=args.chunk_size):
            yield batch["text"]

    rows = write_embeddings(embed, chunks(), output, _settings(args, pooling), resume=args.resume,
                            overwrite=args.overwrite, progress=not args.quiet, before_start=load,
                            precision=args.precision, ranks=ranks)
    if ranks.is_main:
        print(f"wrote {rows} embeddings to {output}")
    return 0

