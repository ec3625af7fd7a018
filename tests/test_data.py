"""Corpus loading from every supported source, packing into full blocks, caching, and the bad-input errors."""

from __future__ import annotations

import json
import os

import pytest
from datasets import Dataset, DatasetDict, IterableDataset
from transformers import AutoTokenizer

from maskae import ConfigError, DataError
from maskae.data.corpus import (
    default_corpus,
    iter_packed,
    load_corpus,
    tokenize_and_pack,
)

DOCS = ["First document about lobsters .", "Second one , a bit longer than the first document .", "Third ."]

pytestmark = pytest.mark.usefixtures("private_datasets_cache")


@pytest.fixture(scope="module")
def tokenizer(minilm_path):
    return AutoTokenizer.from_pretrained(minilm_path)


def test_txt_drops_blank_lines_and_keeps_heading_titles(tmp_path):
    path = tmp_path / "wiki.txt"
    path.write_text(" \n = Homarus = \n \n A lobster lives in the sea . \n = = Description = = \n\n", encoding="utf-8")
    assert load_corpus(path)["text"] == ["Homarus", "A lobster lives in the sea .", "Description"]


def test_packaged_excerpt_loads_every_non_blank_line():
    path = default_corpus("validation")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    corpus = load_corpus(path)
    assert len(corpus) == len(lines) > 600
    assert corpus[0]["text"] == "Homarus gammarus"
    assert sum(p.stat().st_size for p in (default_corpus("train"), path)) <= 1_500_000
    with pytest.raises(ConfigError, match="no split 'test'"):
        default_corpus("test")


@pytest.mark.parametrize("kind", ["jsonl", "csv", "tsv", "parquet", "saved", "saved_dict", "glob", "directory"])
def test_every_source_gives_the_same_text_column(tmp_path, kind):
    table = Dataset.from_dict({"body": DOCS, "id": [1, 2, 3]})
    source = tmp_path / f"corpus.{kind}"
    if kind == "jsonl":
        source.write_text("".join(json.dumps({"body": d, "id": i}) + "\n" for i, d in enumerate(DOCS)))
    elif kind == "csv":
        table.to_csv(str(source), index=False)
    elif kind == "tsv":
        rows = "".join(f"{doc}\t{i}\n" for i, doc in enumerate(DOCS[1:]))
        source.write_text('body\tid\n"A ""quoted"" first\tdocument"\t1\n' + rows)
    elif kind == "parquet":
        table.to_parquet(str(source))
    elif kind == "saved":
        table.save_to_disk(str(source))
    elif kind == "saved_dict":
        DatasetDict({"train": table, "validation": table.select([0])}).save_to_disk(str(source))
    else:
        folder = tmp_path / "parts"
        folder.mkdir()
        for i, doc in enumerate(DOCS):
            (folder / f"part-{i}.txt").write_text(doc + "\n\n", encoding="utf-8")
        source = folder / "*.txt" if kind == "glob" else folder
    corpus = load_corpus(source, text_column="text" if kind in ("glob", "directory") else "body")
    assert corpus.column_names == ["text"]
    expected = ['A "quoted" first\tdocument', *DOCS[1:]] if kind == "tsv" else DOCS
    assert corpus["text"] == expected
    if kind == "saved_dict":
        assert load_corpus(source, text_column="body", split="validation")["text"] == DOCS[:1]
        with pytest.raises(DataError, match="no split 'test'"):
            load_corpus(source, text_column="body", split="test")


def test_streaming_gives_the_same_rows():
    path = default_corpus("validation")
    streamed = load_corpus(path, streaming=True)
    assert isinstance(streamed, IterableDataset)
    assert [row["text"] for row in streamed] == load_corpus(path)["text"]


def test_non_utf8_line_is_named(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("fine\nalso fine\ncaf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.txt, line 3: .*not UTF-8.*re-encode"):
        load_corpus(path)


def test_empty_corpus(tmp_path):
    path = tmp_path / "blank.txt"
    path.write_text("\n  \n\n", encoding="utf-8")
    with pytest.raises(DataError, match="blank.txt contains no text"):
        load_corpus(path)
    with pytest.raises(DataError, match="blank.txt contains no text"):
        load_corpus(path, streaming=True)


def test_missing_column_and_missing_source(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"sentence": "hello"}) + "\n")
    with pytest.raises(DataError, match="no column 'text' \\(it has sentence\\); pass text_column"):
        load_corpus(path)
    with pytest.raises(DataError, match="missing.txt does not exist"):
        load_corpus(tmp_path / "missing.txt")
    with pytest.raises(DataError, match="no corpus files match"):
        load_corpus(tmp_path / "*.txt")
    with pytest.raises(DataError, match="neither a local path nor a loadable Hub dataset"):
        load_corpus("no-such-user-maskae/no-such-dataset")


def reference_blocks(texts, tokenizer, block_size):
    """Plain-Python packing: [CLS] + block_size - 1 tokens of the stream 'doc [SEP] doc [SEP] ...'."""
    stream = []
    for text in texts:
        stream += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.sep_token_id]
    content = block_size - 1
    return [[tokenizer.cls_token_id] + stream[i : i + content] for i in range(0, len(stream) - content + 1, content)]


def test_packing_yields_full_blocks_and_loses_only_the_last_partial_one(tokenizer):
    corpus = load_corpus(default_corpus("validation"))
    expected = reference_blocks(corpus["text"], tokenizer, 64)
    # One map batch: exactly the reference.
    whole = tokenize_and_pack(corpus, tokenizer, 64, batch_size=len(corpus))
    assert whole["input_ids"] == expected
    # Many small batches and two processes: the same number of blocks, all full, same tokens.
    sharded = tokenize_and_pack(corpus, tokenizer, 64, batch_size=50, num_proc=2)
    rows = sharded["input_ids"]
    assert len(rows) == len(expected)
    assert all(len(row) == 64 and row[0] == tokenizer.cls_token_id for row in rows)
    assert sorted(t for row in rows for t in row) == sorted(t for row in expected for t in row)


def test_packing_is_cached(tokenizer):
    corpus = load_corpus(default_corpus("validation"))
    first = tokenize_and_pack(corpus, tokenizer, 128)
    files = {f["filename"] for f in first.cache_files}
    stamps = {name: os.stat(name).st_mtime_ns for name in files}
    second = tokenize_and_pack(corpus, tokenizer, 128)
    assert {f["filename"] for f in second.cache_files} == files
    assert {name: os.stat(name).st_mtime_ns for name in files} == stamps
    assert second["input_ids"] == first["input_ids"]


def test_streaming_packing_matches_the_reference(tokenizer):
    texts = load_corpus(default_corpus("validation"))["text"][:200]
    expected = reference_blocks(texts, tokenizer, 96)
    assert [row["input_ids"] for row in iter_packed(texts, tokenizer, 96, batch_size=7)] == expected
    streamed = tokenize_and_pack(load_corpus(default_corpus("validation"), streaming=True), tokenizer, 96)
    assert isinstance(streamed, IterableDataset)
    first_rows = [row["input_ids"] for _, row in zip(range(len(expected)), streamed)]
    assert first_rows == expected


def test_block_size_errors(tokenizer):
    corpus = Dataset.from_dict({"text": DOCS})
    with pytest.raises(ConfigError, match="block_size=1024 is longer than the 512 positions.*block_size <= 512"):
        tokenize_and_pack(corpus, tokenizer, 1024)
    with pytest.raises(ConfigError, match="block_size <= 256"):
        tokenize_and_pack(corpus, tokenizer, 384, max_positions=256)
    with pytest.raises(DataError, match="fewer tokens than one block of 128"):
        tokenize_and_pack(corpus, tokenizer, 128)
    with pytest.raises(DataError, match="no 'text' column .*load_corpus"):
        tokenize_and_pack(corpus.rename_column("text", "body"), tokenizer, 8)


def test_streamed_csv_names_a_missing_column(tmp_path):
    """A streamed csv only learns its columns from its first row; the error must still name them."""
    from maskae.data.corpus import load_corpus

    path = tmp_path / "labelled.csv"
    path.write_text("sentence,label\nhello world,1\n")
    with pytest.raises(DataError, match="has no column 'text' \\(it has sentence, label\\)"):
        load_corpus(path, "text", streaming=True)
    assert [row["text"] for row in load_corpus(path, "sentence", streaming=True)] == ["hello world"]
