"""`maskae embed --precision` and `--dim`: what is stored, what is recorded beside it, and that reading it
back gives the float32 vectors within the precision's own rounding (signs, for binary)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from conftest import tiny_stock, tiny_tokenizer

import maskae
from maskae.cli import main
from maskae.embeddings.precision import Quantizer
from maskae.embeddings.stored import load_embeddings, record_path

pytestmark = pytest.mark.usefixtures("fresh_accelerator_state")


@pytest.fixture(scope="module")
def sentences(shared_data) -> list[str]:
    with open(shared_data / "stsb" / "validation.tsv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [row["sentence1"] for row in rows[:240]]


@pytest.fixture(scope="module")
def corpus(sentences, tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(sentences) + "\n")
    return path


@pytest.fixture(scope="module")
def reference(minilm_path, sentences) -> np.ndarray:
    return maskae.embed(minilm_path, sentences, layer=3)


@pytest.mark.parametrize("output_name", ["v.npy", "v.parquet", "v-dataset"])
def test_int8_output_restores_within_half_a_step_in_every_format(minilm_path, corpus, reference, tmp_path,
                                                                 output_name):
    output = tmp_path / output_name
    assert main(["--quiet", "embed", str(minilm_path), "--input", str(corpus), "--output", str(output), "--layer", "3",
                 "--precision", "int8", "--chunk-size", "50"]) == 0
    stored = load_embeddings(output)
    assert stored.values.dtype == np.int8 and stored.values.shape == reference.shape
    # ranges fitted on the whole output: its extremes map to -128 and 127 exactly
    assert stored.values.min(axis=0).tolist() == [-128] * 384 and stored.values.max(axis=0).tolist() == [127] * 384
    assert np.all(np.abs(stored.restored() - reference) <= stored.quantizer.step / 2 + 1e-6)
    assert stored.settings["layer"] == 3 and stored.settings["precision"] == "int8"


def test_float16_and_binary_outputs(minilm_path, corpus, reference, tmp_path):
    for precision in ("float16", "binary"):
        output = tmp_path / f"{precision}.npy"
        assert main(["--quiet", "embed", str(minilm_path), "--input", str(corpus), "--output", str(output),
                     "--layer", "3", "--precision", precision]) == 0
        stored = load_embeddings(output)
        if precision == "float16":
            assert stored.values.dtype == np.float16
            np.testing.assert_allclose(stored.restored(), reference, rtol=1e-3, atol=1e-4)
        else:  # 384 signs in 48 bytes
            assert stored.values.dtype == np.uint8 and stored.values.shape == (len(reference), 48)
            centre = reference.astype(np.float64).mean(axis=0)
            np.testing.assert_allclose(stored.quantizer.offset, centre, atol=1e-6)
            close = np.abs(reference - centre) < 1e-5  # a float32 mean may round either way at a tie
            agree = stored.restored() == np.where(reference > stored.quantizer.offset, 1.0, -1.0)
            assert np.all(agree | close)
    assert record_path(tmp_path / "binary.npy").name == "binary.npy.json"


def test_int8_ranges_come_from_the_whole_output_whatever_the_chunking(minilm_path, corpus, tmp_path):
    """Chunks of 7 and of 1,000 texts batch differently (float rounding moves a code by one at most), but the
    ranges are fitted on every row either way."""
    stored = []
    for chunk_size in (7, 1000):
        output = tmp_path / f"chunks-{chunk_size}.npy"
        assert main(["--quiet", "embed", str(minilm_path), "--input", str(corpus), "--output", str(output),
                     "--layer", "3", "--precision", "int8", "--chunk-size", str(chunk_size)]) == 0
        stored.append(load_embeddings(output))
    np.testing.assert_allclose(stored[0].quantizer.offset, stored[1].quantizer.offset, atol=1e-6)
    np.testing.assert_allclose(stored[0].quantizer.step, stored[1].quantizer.step, atol=1e-6)
    assert np.abs(stored[0].values.astype(int) - stored[1].values).max() <= 1


def test_quantizer_round_trip_and_its_record():
    vectors = np.random.default_rng(0).normal(size=(50, 10)).astype(np.float32)
    vectors[:, 3] = 0.25  # a constant dimension comes back exactly
    quantizer = Quantizer.fit("int8", [vectors[:20], vectors[20:]])
    again = Quantizer.from_dict(quantizer.to_dict())
    np.testing.assert_array_equal(again.compact(vectors), quantizer.compact(vectors))
    restored = again.restore(again.compact(vectors))
    assert np.all(np.abs(restored - vectors) <= quantizer.step / 2 + 1e-6)
    assert np.all(restored[:, 3] == 0.25)
    binary = Quantizer.fit("binary", [vectors])
    assert binary.width == 2 and binary.restore(binary.compact(vectors)).shape == vectors.shape
    with pytest.raises(maskae.ConfigError, match="11 wide"):
        binary.compact(np.zeros((1, 11), np.float32))


def test_dim_keeps_the_top_whitened_directions(tmp_path):
    model = tmp_path / "model"
    tiny_stock("bert").save_pretrained(model)
    tiny_tokenizer(model)
    texts = [" ".join(f"w{(i * j) % 90 + 5}" for j in range(1, 2 + i % 7)) for i in range(120)]
    maskae.fit_whitening(str(model), texts, layer=2).save(model)
    full = maskae.embed(str(model), texts, layer=2)
    short = maskae.embed(str(model), texts, layer=2, dim=8, normalize=True)
    expected = full[:, :8] / np.linalg.norm(full[:, :8], axis=1, keepdims=True)
    np.testing.assert_allclose(short, expected, atol=1e-6)
    with pytest.raises(maskae.ConfigError, match="none applies"):
        maskae.embed(str(model), texts, layer=1, dim=8)
    with pytest.raises(maskae.ConfigError, match="out of range"):
        maskae.embed(str(model), texts, layer=2, dim=500)
