"""`maskae index` and `maskae search`: FAISS indexes of every precision and kind over what `maskae embed`
wrote, checked against exact search done by hand, and queries embedded as the corpus was."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from maskae.cli import main
from maskae.embeddings.stored import load_embeddings
from maskae.search.index import SearchIndex, build_index

pytest.importorskip("faiss")
pytestmark = pytest.mark.usefixtures("fresh_accelerator_state")


@pytest.fixture(scope="module")
def vectors(minilm_path, shared_data, tmp_path_factory):
    """MiniLM layer 3 vectors of 600 STS-B sentences (their duplicates removed), at each precision."""
    with open(shared_data / "stsb" / "train.tsv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    sentences = list(dict.fromkeys(row["sentence1"] for row in rows))[:600]
    root = tmp_path_factory.mktemp("search")
    (root / "corpus.txt").write_text("\n".join(sentences) + "\n")
    for precision in ("float32", "int8", "binary"):
        assert main(["--quiet", "embed", str(minilm_path), "--input", str(root / "corpus.txt"), "--output",
                     str(root / f"{precision}.npy"), "--layer", "3", "--precision", precision]) == 0
    return root, sentences


def test_flat_float_index_is_exact_cosine_search(vectors):
    root, sentences = vectors
    build_index(root / "float32.npy", root / "flat", "flat")
    index = SearchIndex.load(root / "flat")
    queries = sentences[:5] + ["A musician is performing on stage."]
    hits = index.search(queries, k=5)
    corpus = np.load(root / "float32.npy")
    corpus /= np.linalg.norm(corpus, axis=1, keepdims=True)
    query_vectors = index.embed(queries)
    for query_hits, query in zip(hits, query_vectors):
        scores = corpus @ query
        assert [hit.row for hit in query_hits] == list(np.argsort(-scores, kind="stable")[:5])
        np.testing.assert_allclose([hit.score for hit in query_hits], np.sort(scores)[::-1][:5], atol=1e-5)
    assert all(query_hits[0].text == query for query_hits, query in zip(hits[:5], queries))


def test_binary_index_ranks_by_hamming_distance(vectors):
    root, sentences = vectors
    build_index(root / "binary.npy", root / "binary-flat", "flat")
    index = SearchIndex.load(root / "binary-flat")
    [hits] = index.search([sentences[10]], k=10)
    bits = np.unpackbits(load_embeddings(root / "binary.npy").values, axis=1)
    distances = (bits != bits[10]).sum(axis=1)
    assert hits[0].score == 0 and sentences[hits[0].row] == sentences[10]
    assert [hit.score for hit in hits] == sorted(distances)[:10]


@pytest.mark.parametrize("precision", ["float32", "int8", "binary"])
def test_approximate_indexes_recall_the_exact_neighbours(vectors, precision):
    root, sentences = vectors
    queries = sentences[::20]
    exact = SearchIndex.load(_built(root, precision, "flat"))
    truth = [{hit.row for hit in hits} for hits in exact.search(queries, k=10)]
    for kind in ("hnsw", "ivf"):
        found = SearchIndex.load(_built(root, precision, kind)).search(queries, k=10)
        recall = np.mean([len(t & {hit.row for hit in hits}) / 10 for t, hits in zip(truth, found)])
        assert recall >= 0.9, (precision, kind, recall)


def _built(root, precision, kind):
    out = root / f"{precision}-{kind}"
    if not out.exists():
        build_index(root / f"{precision}.npy", out, kind)
    return out


def test_cli_search_prints_the_nearest_texts(vectors, capsys):
    root, sentences = vectors
    assert main(["--quiet", "index", str(root / "int8.npy"), "--out", str(root / "cli-index"), "--kind", "hnsw"]) == 0
    capsys.readouterr()
    assert main(["search", str(root / "cli-index"), sentences[3], "--k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    rank, score, row, text = lines[0].split("\t")
    assert rank == "1" and text == " ".join(sentences[3].split()) and float(score) > 0.99
