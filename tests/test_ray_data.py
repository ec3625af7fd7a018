"""Embedding with Ray Data: `embed_with_ray` writes, in input order and without the blank rows, the vectors
that `maskae.embed` gives, from a text file or a directory of Parquet files with its own text column; Ray's
readers drop and strip rows as `load_corpus` does; an existing output is refused, and a missing Ray is one
line. One local Ray (2 CPUs) serves the module."""

from __future__ import annotations

import json
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import maskae
from maskae.data.corpus import load_corpus
from maskae.embeddings.ray_data import (
    _clean_rows,
    _input_files,
    _read,
    _user_error,
    embed_with_ray,
)
from maskae.errors import DataError, MissingExtraError

ray = pytest.importorskip("ray", reason="embed_with_ray needs maskae[ray]")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def read_output(directory) -> tuple[list[str], np.ndarray]:
    table = pq.read_table(directory)  # Ray's files, read back by pyarrow alone, in name order
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), table.column("embedding").type.list_size)
    column = table.column("embedding").combine_chunks()
    return table.column("text").to_pylist(), column.flatten().to_numpy().reshape(len(column), -1)


def test_a_text_file_comes_back_in_order_without_blanks(local_ray, minilm_path, shared_data, tmp_path):
    lines = [row.split("\t")[0] for row in (shared_data / "stsb" / "train.tsv").read_text().splitlines()[1:201]]
    texts = [line.strip() for line in lines if line.strip()]
    with_blanks = lines[:10] + ["", "   "] + lines[10:120] + ["\t"] + lines[120:]
    (tmp_path / "corpus.txt").write_text("\n".join(with_blanks) + "\n")

    rows = embed_with_ray(minilm_path, tmp_path / "corpus.txt", tmp_path / "out", num_workers=2, layer=3,
                          chunk_size=50, progress=False)

    written, vectors = read_output(tmp_path / "out")
    assert rows == len(texts) and written == texts
    assert np.abs(vectors - maskae.embed(minilm_path, texts, layer=3)).max() < 1e-5


def test_a_parquet_directory_with_its_own_text_column(local_ray, tiny_bert_dir, tmp_path):
    texts = [f"w{i} w{(i * 7) % 90} w{(i * 3) % 50}" + " w5" * (i % 6) for i in range(30)]
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"id": range(17), "sentence": texts[:15] + [None, " "]}), tmp_path / "in" / "a.parquet")
    pq.write_table(pa.table({"id": range(15), "sentence": texts[15:]}), tmp_path / "in" / "b.parquet")

    rows = embed_with_ray(tiny_bert_dir, tmp_path / "in", tmp_path / "out", num_workers=1, text_column="sentence",
                          chunk_size=4, progress=False)

    written, vectors = read_output(tmp_path / "out")
    assert pq.read_schema(next((tmp_path / "out").glob("*.parquet"))).names == ["text", "embedding"]
    assert rows == 30 and written == texts
    assert np.abs(vectors - maskae.embed(tiny_bert_dir, texts)).max() < 1e-5


def test_ray_readers_keep_the_rows_load_corpus_keeps(local_ray, tmp_path, private_datasets_cache):
    """Stripped, blanks and nulls dropped, WikiText headings reduced to their title in plain text only; a
    missing column is the one-line DataError."""
    rows = ["  first  ", "", "   ", "= Title =", None, "second part", "= = Section = ="]
    files = {".txt": "\n".join(row or "" for row in rows) + "\n",
             ".jsonl": "".join(json.dumps({"body": row}) + "\n" for row in rows),
             ".csv": "body\n" + "".join(f'"{row}"\n' if row is not None else "\n" for row in rows),
             ".tsv": "id\tbody\n" + "".join(f"{i}\t{row or ''}\n" for i, row in enumerate(rows))}
    for suffix, content in files.items():
        path = tmp_path / f"corpus{suffix}"
        path.write_text(content)
        column = "text" if suffix == ".txt" else "body"
        paths, reader, headings = _input_files(str(path))
        dataset = _read(ray, paths, reader).map_batches(
            _clean_rows, batch_format="pyarrow", fn_kwargs={"text_column": column, "headings": headings,
                                                           "source": str(path)})
        assert [row["text"] for row in dataset.take_all()] == load_corpus(path, column)["text"], suffix

    # A maskae error raised in a Ray task comes back as itself, out of Ray's wrapping.
    dataset = _read(ray, [str(path)], "read_csv").map_batches(
        _clean_rows, batch_format="pyarrow", fn_kwargs={"text_column": "sentence", "headings": False, "source": "x"})
    with pytest.raises(Exception) as raised:
        dataset.take_all()
    assert repr(_user_error(raised.value)) == repr(DataError("x has no column 'sentence' (it has id, body); pass "
                                                              "text_column=<one of them>."))


def test_an_existing_output_is_refused(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(DataError, match="already exists; pass --overwrite"):
        embed_with_ray("any-model", tmp_path / "corpus.txt", tmp_path / "out")


def test_a_missing_ray_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'maskae\[ray\]'"):
        embed_with_ray("any-model", tmp_path / "corpus.txt", tmp_path / "out")
