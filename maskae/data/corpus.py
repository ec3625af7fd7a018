"""Corpora for denoising: load text from files, a saved dataset or the Hub, then tokenize and pack it.

`load_corpus` always returns a `text` column, one non-blank document (or line) per row.
`tokenize_and_pack` turns it into rows of exactly `block_size` ids with `datasets.map`, so the
work is cached and parallel; `iter_packed` does the same lazily for corpora larger than memory.
"""

from __future__ import annotations

import csv
import glob
import itertools
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from datasets import (
    Dataset,
    DatasetDict,
    Features,
    IterableDataset,
    List,
    Value,
    concatenate_datasets,
    load_dataset,
    load_from_disk,
)
from datasets.exceptions import DatasetGenerationError
from pyarrow import ArrowException
from transformers import PreTrainedTokenizerBase

from ..errors import ConfigError, DataError, cause

RESOURCES = Path(__file__).parent / "resources"
DEFAULT_CORPUS = {
    # what a recipe without data.train pretrains on: the two files below
    "pretraining": RESOURCES / "pretraining",
    "train": RESOURCES / "pretraining" / "wikitext2_train_excerpt.txt",
    "tasks": RESOURCES / "pretraining" / "task_sentences_excerpt.txt",
    "validation": RESOURCES / "wikitext2_validation_excerpt.txt",
}
# File suffix -> (datasets builder, its extra arguments).
BUILDERS = {
    ".txt": ("text", {}),
    ".text": ("text", {}),
    ".jsonl": ("json", {}),
    ".json": ("json", {}),
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"delimiter": "\t"}),
    ".parquet": ("parquet", {}),
}
TEXT_SUFFIXES = (".txt", ".text", ".jsonl", ".json", ".csv", ".tsv")
# WikiText marks titles and sections as `= Title =`, `= = Section = =`.
HEADING = re.compile(r"^(=(?: =)*) (.*?) \1$")
# `tokenizers` treats larger model_max_length values as "no limit".
UNLIMITED = 1_000_000
SENTENCE_COLUMNS = ("sentence", "sentence1", "sentence2")  # the text columns of GLUE / STS task files


def default_corpus(split: str = "train") -> Path:
    """A packaged corpus (see maskae/resources/README.md): "pretraining", the folder of the two below;
    "train" and "validation", the WikiText-2 excerpts (CC BY-SA 3.0); "tasks", unlabelled training
    sentences of SST-2 and STS-B (task-adaptive pretraining text)."""
    if split not in DEFAULT_CORPUS:
        raise ConfigError(f"the packaged corpus has no split {split!r}; use one of {', '.join(DEFAULT_CORPUS)}.")
    return DEFAULT_CORPUS[split]


def check_utf8(path: Path, chunk_bytes: int = 1 << 24) -> None:
    """Raise a `DataError` naming the file and line of the first byte sequence that is not UTF-8."""
    lines_before = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes) + handle.readline():
            try:
                chunk.decode("utf-8")
            except UnicodeDecodeError as error:
                line = lines_before + chunk.count(b"\n", 0, error.start) + 1
                raise DataError(
                    f"{path}, line {line}: bytes {chunk[error.start:error.end]!r} are not UTF-8; "
                    f"re-encode the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`) or remove that line."
                ) from None
            lines_before += chunk.count(b"\n")


def _clean_lines(batch: dict[str, list], text_column: str, headings: bool) -> dict[str, list[str]]:
    """Strip rows, drop blank ones and, for WikiText-style text, keep only the title of `= Title =` lines."""
    texts = []
    for text in batch[text_column]:
        text = "" if text is None else str(text).strip()
        if headings and (heading := HEADING.match(text)):
            text = heading.group(2).strip()
        if text:
            texts.append(text)
    return {"text": texts}


def _files(source: str) -> list[Path]:
    if glob.has_magic(source):
        return sorted(Path(p) for p in glob.glob(source, recursive=True) if Path(p).is_file())
    path = Path(source)
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in BUILDERS)
    return [path]


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / name).exists() for name in ("state.json", "dataset_dict.json"))


def _load_raw(source: str, streaming: bool, split: str) -> tuple[Dataset | IterableDataset, bool]:
    """The dataset behind `source`, and whether its text is plain lines (so headings are cleaned)."""
    path = Path(source)
    if _is_saved_dataset(path):
        loaded = load_from_disk(str(path))
        if isinstance(loaded, DatasetDict):
            if split not in loaded:
                raise DataError(f"{source} has no split {split!r}; choose one of {', '.join(loaded)}.")
            loaded = loaded[split]
        return (loaded.to_iterable_dataset() if streaming else loaded), False
    if path.exists() or glob.has_magic(source):
        files = _files(source)
        if not files:
            raise DataError(f"no corpus files match {source}; give a .txt, .jsonl, .csv, .tsv or .parquet file.")
        suffixes = {file.suffix.lower() for file in files}
        unknown = suffixes - set(BUILDERS)
        readers = {(BUILDERS[s][0], tuple(BUILDERS[s][1].items())) for s in suffixes - unknown}
        if unknown or len(readers) > 1:
            raise DataError(
                f"{source} mixes or uses unsupported file types ({', '.join(sorted(suffixes))}); "
                f"give files of one type among {', '.join(BUILDERS)}."
            )
        for file in files:
            if file.suffix.lower() in TEXT_SUFFIXES:
                check_utf8(file)
        files = [file for file in files if file.stat().st_size > 0]  # datasets cannot build from an empty file
        if not files:
            raise DataError(f"{source} contains no text (it is empty, 0 bytes); point the corpus at files that hold "
                            "text.")
        builder, options = BUILDERS[files[0].suffix.lower()]
        try:
            loaded = load_dataset(
                builder, data_files=[str(f) for f in files], split="train", streaming=streaming, **options
            )
        except (OSError, ValueError, DatasetGenerationError, ArrowException) as error:
            raise DataError(f"cannot read {source} as {builder} ({cause(error)}); fix the file or convert it to "
                            "one text per line (.txt) or JSON lines (.jsonl).") from None
        return loaded, builder == "text"
    if path.suffix.lower() in BUILDERS or source.startswith(("/", ".", "~")):
        raise DataError(f"corpus file {source} does not exist; check the path.")
    try:
        loaded = load_dataset(source, split=split, streaming=streaming)
    except Exception as error:  # the Hub raises many types; the user needs the one fact below
        raise DataError(
            f"{source!r} is neither a local path nor a loadable Hub dataset ({type(error).__name__}: {error}); "
            "check the path, or the dataset id and that it is cached when HF_HUB_OFFLINE=1."
        ) from error
    return loaded, False


def load_corpus(
    source: str | Path, text_column: str = "text", streaming: bool = False, split: str = "train"
) -> Dataset | IterableDataset:
    """Load a corpus as a dataset with one `text` column of non-blank, stripped rows.

    `source` is a `.txt` file (one line per row; WikiText `= Title =` lines keep only their title),
    a `.jsonl`/`.json`, `.csv`, `.tsv` or `.parquet` file, a directory or glob of such files, a
    directory saved with `save_to_disk`, or a Hub dataset id. `split` selects the split of a saved
    `DatasetDict` or a Hub dataset; `streaming=True` returns an `IterableDataset`.
    """
    source = str(source)
    dataset, plain_lines = _load_raw(source, streaming, split)
    columns = dataset.column_names
    if columns is None:  # a streamed csv/json does not know its columns before the first row
        first = next(iter(dataset), None)
        columns = list(first) if first is not None else None
    if columns is not None and text_column not in columns:
        raise DataError(
            f"{source} has no column {text_column!r} (it has {', '.join(columns)}); pass text_column=<one of them>."
        )
    dataset = dataset.map(
        _clean_lines,
        batched=True,
        remove_columns=columns,
        fn_kwargs={"text_column": text_column, "headings": plain_lines},
        **({} if streaming else {"desc": "Cleaning lines"}),
    )
    empty = next(iter(dataset), None) is None if streaming else len(dataset) == 0
    if empty:
        raise DataError(f"{source} contains no text (every row is blank); point the corpus at non-empty files.")
    return dataset


def _position_limit(tokenizer: PreTrainedTokenizerBase, max_positions: int | None) -> int | None:
    limits = [max_positions] if max_positions else []
    if tokenizer.model_max_length and tokenizer.model_max_length < UNLIMITED:
        limits.append(int(tokenizer.model_max_length))
    return min(limits) if limits else None


def _special_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[int | None, int | None]:
    """(id starting every block, id ending every document): [CLS]/[SEP] for BERT, <s>/</s> for RoBERTa."""
    start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    separator = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    return start, separator


def _check_block_size(tokenizer: PreTrainedTokenizerBase, block_size: int, max_positions: int | None) -> None:
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    if not isinstance(block_size, int) or block_size < 2:
        raise ConfigError(f"block_size={block_size!r} must be an integer of at least 2, e.g. 128.")
    limit = _position_limit(tokenizer, max_positions)
    if limit is not None and block_size > limit:
        raise ConfigError(
            f"block_size={block_size} is longer than the {limit} positions the model behind {name!r} supports; "
            f"choose block_size <= {limit}."
        )


def _concatenate(documents: list[list[int]], separator: int | None) -> np.ndarray:
    ending = [] if separator is None else [separator]
    return np.fromiter(
        itertools.chain.from_iterable(itertools.chain(ids, ending) for ids in documents), dtype=np.int32
    )


def _blocks(flat: np.ndarray, start: int | None, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut a token stream into full blocks (each led by `start` when there is one) and the leftover tail."""
    content = block_size - (start is not None)
    count = len(flat) // content
    blocks = flat[: count * content].reshape(count, content)
    if start is not None:
        blocks = np.concatenate([np.full((count, 1), start, dtype=np.int32), blocks], axis=1)
    return blocks, flat[count * content :]


def _tokenize_and_cut(
    batch: dict[str, list], tokenizer: PreTrainedTokenizerBase, block_size: int
) -> dict[str, list]:
    """One batch of documents -> its full blocks plus one shorter `full=False` row holding the leftover."""
    start, separator = _special_ids(tokenizer)
    encoded = tokenizer(
        batch["text"],
        add_special_tokens=False,
        return_attention_mask=False,
        return_token_type_ids=False,
        verbose=False,
    )["input_ids"]
    blocks, tail = _blocks(_concatenate(encoded, separator), start, block_size)
    return {"input_ids": [*blocks, tail], "full": [True] * len(blocks) + [False]}


def _pack_tails(batch: dict[str, list], tokenizer: PreTrainedTokenizerBase, block_size: int) -> dict[str, list]:
    start, _ = _special_ids(tokenizer)
    flat = np.fromiter(itertools.chain.from_iterable(batch["input_ids"]), dtype=np.int32)
    blocks, _ = _blocks(flat, start, block_size)
    return {"input_ids": list(blocks)}


def tokenize_and_pack(
    dataset: Dataset | IterableDataset,
    tokenizer: PreTrainedTokenizerBase,
    block_size: int,
    num_proc: int | None = None,
    max_positions: int | None = None,
    batch_size: int = 1000,
) -> Dataset | IterableDataset:
    """Tokenize the `text` column and pack it into rows of exactly `block_size` ids (column `input_ids`).

    Documents are concatenated, each followed by the separator ([SEP] / </s>), and every block starts
    with [CLS] / <s>, which the sentence bottleneck overwrites with its vector. There is no padding.
    Each `map` batch yields its full blocks and a leftover; the leftovers are packed together at the
    end, so only the very last partial block of the whole corpus is dropped, whatever `num_proc`.
    Both passes are `datasets.map` calls, cached by fingerprint: a second call is read from the cache.
    An `IterableDataset` is packed lazily with `iter_packed`. `max_positions` (the model's position
    count) is checked along with the tokenizer's `model_max_length`.
    """
    _check_block_size(tokenizer, block_size, max_positions)
    if dataset.column_names is not None and "text" not in dataset.column_names:
        raise DataError(
            f"the dataset to pack has no 'text' column (it has {', '.join(dataset.column_names)}); "
            "load it with maskae.data.load_corpus(source, text_column=...) first."
        )
    if isinstance(dataset, IterableDataset):
        return IterableDataset.from_generator(
            iter_packed,
            features=Features({"input_ids": List(Value("int32"))}),
            gen_kwargs={"texts": dataset, "tokenizer": tokenizer, "block_size": block_size, "batch_size": batch_size},
        )
    cut = dataset.map(
        _tokenize_and_cut,
        batched=True,
        batch_size=batch_size,
        remove_columns=dataset.column_names,
        features=Features({"input_ids": List(Value("int32")), "full": Value("bool")}),
        fn_kwargs={"tokenizer": tokenizer, "block_size": block_size},
        num_proc=num_proc,
        desc=f"Tokenizing and packing into blocks of {block_size}",
    )
    full = cut.filter(lambda flags: flags, input_columns="full", batched=True, batch_size=10_000)
    tails = cut.filter(lambda flags: [not f for f in flags], input_columns="full", batched=True, batch_size=10_000)
    tails = tails.map(
        _pack_tails,
        batched=True,
        batch_size=None,
        remove_columns=tails.column_names,
        features=Features({"input_ids": List(Value("int32"))}),
        fn_kwargs={"tokenizer": tokenizer, "block_size": block_size},
        desc="Packing leftovers",
    )
    packed = concatenate_datasets([full.remove_columns("full"), tails])
    if len(packed) == 0:
        raise DataError(
            f"the corpus has fewer tokens than one block of {block_size}; use a smaller block_size or more text."
        )
    return packed


def iter_packed(
    texts: Iterable[str] | Iterable[dict[str, Any]],
    tokenizer: PreTrainedTokenizerBase,
    block_size: int,
    batch_size: int = 1000,
) -> Iterator[dict[str, list[int]]]:
    """Lazily pack a stream of texts (strings or `{"text": ...}` rows) into `{"input_ids": block}` rows.

    Memory stays bounded by one batch of documents; only the final partial block is dropped.
    """
    _check_block_size(tokenizer, block_size, None)
    start, separator = _special_ids(tokenizer)
    leftover = np.zeros(0, dtype=np.int32)
    rows = iter(texts)
    while batch := list(itertools.islice(rows, batch_size)):
        batch = [row["text"] if isinstance(row, dict) else row for row in batch]
        encoded = tokenizer(
            batch, add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False, verbose=False
        )["input_ids"]
        blocks, leftover = _blocks(
            np.concatenate([leftover, _concatenate(encoded, separator)]), start, block_size
        )
        for block in blocks:
            yield {"input_ids": block.tolist()}


def corpus_texts(source: str | Path, max_texts: int | None = None, text_column: str = "text") -> list[str]:
    """Unlabelled texts to fit a whitening on: every sentence column of a task tsv (sentence, or
    sentence1 and sentence2) or the rows of any corpus `maskae.data.load_corpus` reads, seeded-sampled
    down to `max_texts`."""
    path = Path(source)
    if path.suffix.lower() == ".tsv" and path.is_file():
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle, delimiter="\t")
            columns = [c for c in SENTENCE_COLUMNS if c in (reader.fieldnames or [])]
            if columns:
                texts = [row[c].strip() for row in reader for c in columns]
                texts = [t for t in texts if t]
                if not texts:
                    raise DataError(f"{str(path)!r} has no sentences to fit the whitening on; give it data rows.")
                return sample_texts(texts, max_texts)
    return sample_texts(load_corpus(source, text_column=text_column)["text"], max_texts)


def sample_texts(texts: Iterable[str], max_texts: int | None, seed: int = 0) -> list[str]:
    """At most `max_texts` of `texts`, a seeded random sample in corpus order (all of them if fewer)."""
    texts = list(texts)
    if max_texts is None or len(texts) <= max_texts:
        return texts
    keep = np.sort(np.random.default_rng(seed).choice(len(texts), size=max_texts, replace=False))
    return [texts[i] for i in keep]


def distinct_sentences(sources: Iterable[str | Path], text_column: str = "text") -> list[str]:
    """Every distinct non-blank line (a task tsv: sentence) of `sources`, in order of first appearance: the
    unlabelled text that `maskae adapt` learns from."""
    sources = [str(source) for source in sources]
    texts = []
    for source in sources:
        texts.extend(corpus_texts(source, None, text_column))
    texts = list(dict.fromkeys(texts))
    if not texts:
        raise DataError(f"{', '.join(sources)} holds no text to learn from; give a corpus with sentences.")
    return texts


def hold_out(texts: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(kept, held out): a seeded random share of `texts`, each part in corpus order. Random, not the
    last lines: corpora are often sorted (by source, genre, date)."""
    order = np.random.default_rng(seed).permutation(len(texts))
    cut = max(1, round(len(texts) * fraction))
    return [texts[i] for i in sorted(order[cut:])], [texts[i] for i in sorted(order[:cut])]


def build_corpus_folder(out: str | Path, sources: Iterable[str | Path]) -> tuple[int, int]:
    """Write a pretraining corpus folder: text corpora copied as they are, and the distinct sentences of
    task tsvs (their `corpus_texts`, labels dropped) in one file; returns (text files, task sentences).
    The same reader gives whitening its texts, so both see a task's sentences the same way."""
    out, sources = Path(out), [Path(source) for source in sources]
    if out.exists():
        raise DataError(f"{str(out)!r} already exists; choose a new folder for the corpus.")
    missing = [str(path) for path in sources if not path.is_file()]
    if missing:
        raise DataError(f"{missing[0]!r} is not a file; give text files or task tsvs.")
    texts = [path for path in sources if path.suffix.lower() != ".tsv"]
    sentences = {text: None for path in sources if path.suffix.lower() == ".tsv"
                 for text in corpus_texts(path, max_texts=None)}
    out.mkdir(parents=True)
    for i, path in enumerate(texts):
        shutil.copyfile(path, out / f"{i:02d}-{path.stem}.txt")
    if sentences:
        (out / "task_sentences.txt").write_text("\n".join(sentences) + "\n", encoding="utf-8")
    return len(texts), len(sentences)
