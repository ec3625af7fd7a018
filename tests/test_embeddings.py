"""`maskae.embed` must give exactly what sentence-transformers and Hugging Face give, from any layer."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

import maskae
from conftest import CORPUS, tiny_tokenizer
from maskae import ConfigError, DataError, Embedder, MaskAEForMaskedLM, embed
from maskae.cli import main

ATOL = 1e-4

SENTENCES = [
    "A man is playing a guitar.",
    "The quick brown fox jumps over the lazy dog near the river bank on a sunny afternoon.",
    "Hi",
    "Two dogs run through a field, chasing a red ball that a child threw.",
    "Stocks fell sharply on Monday after the central bank raised interest rates again.",
    "Nobody came.",
]
# longer than all-MiniLM-L6-v2's max_seq_length of 256 tokens: truncation must match sentence-transformers'
LONG = "word " * 300


@pytest.fixture(scope="module")
def minilm(minilm_path):
    return Embedder.from_pretrained(minilm_path, device="cpu")


@pytest.fixture(scope="module")
def minilm_reference(minilm_path):
    """Hugging Face's own hidden states for SENTENCES, padded batch, truncated as sentence-transformers does."""
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    model = AutoModel.from_pretrained(minilm_path).eval()
    inputs = tokenizer(SENTENCES, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    return out.hidden_states, inputs["attention_mask"]


def mean_pool(hidden, mask):
    weights = mask.unsqueeze(-1).float()
    return ((hidden * weights).sum(1) / weights.sum(1)).numpy()


def test_mean_normalized_equals_sentence_transformers(minilm_path):
    from sentence_transformers import SentenceTransformer

    texts = SENTENCES + [LONG]
    expected = SentenceTransformer(str(minilm_path), device="cpu").encode(texts, batch_size=3)
    got = embed(minilm_path, texts, pooling="mean", normalize=True, batch_size=3)
    assert got.dtype == np.float32 and got.shape == (len(texts), 384)
    assert np.abs(got - expected).max() < ATOL


@pytest.mark.parametrize("layer", [0, 3, 6, -1])
def test_layer_equals_hf_hidden_states_mean_pooled(minilm, minilm_reference, layer):
    states, mask = minilm_reference
    got = minilm.embed(SENTENCES, layer=layer, batch_size=3)
    np.testing.assert_allclose(got, mean_pool(states[layer], mask), atol=ATOL, rtol=0)


def test_default_layer_is_last(minilm, minilm_reference):
    states, mask = minilm_reference
    np.testing.assert_allclose(minilm.embed(SENTENCES, batch_size=2), mean_pool(states[6], mask), atol=ATOL, rtol=0)


def test_cls_and_max_pooling(minilm, minilm_reference):
    states, mask = minilm_reference
    cls = minilm.embed(SENTENCES, pooling="cls", batch_size=3)
    np.testing.assert_allclose(cls, states[6][:, 0].numpy(), atol=ATOL, rtol=0)
    padded = states[6].masked_fill(~mask.bool().unsqueeze(-1), float("-inf"))
    got = minilm.embed(SENTENCES, pooling="max", batch_size=3)
    np.testing.assert_allclose(got, padded.amax(1).numpy(), atol=ATOL, rtol=0)


def test_none_pooling_gives_each_texts_tokens(minilm, minilm_reference):
    states, mask = minilm_reference
    got = minilm.embed(SENTENCES, layer=2, pooling="none", batch_size=3)
    assert got.shape == (len(SENTENCES),)
    for i, tokens in enumerate(got):
        length = int(mask[i].sum())
        assert tokens.dtype == np.float32 and tokens.shape == (length, 384)
        np.testing.assert_allclose(tokens, states[2][i, :length].numpy(), atol=ATOL, rtol=0)


def test_layer_lists_average_or_concatenate(minilm, minilm_reference):
    states, mask = minilm_reference
    mean = minilm.embed(SENTENCES, layer=[4, 5, 6], batch_size=3)
    expected = np.mean([mean_pool(states[k], mask) for k in (4, 5, 6)], axis=0)
    np.testing.assert_allclose(mean, expected, atol=ATOL, rtol=0)
    concat = minilm.embed(SENTENCES, layer=[1, -1], layer_combine="concat", batch_size=3)
    expected = np.concatenate([mean_pool(states[1], mask), mean_pool(states[6], mask)], axis=1)
    np.testing.assert_allclose(concat, expected, atol=ATOL, rtol=0)


def test_early_exit_runs_only_the_first_k_layers(minilm):
    calls = []
    layers = minilm.adapter.layers(minilm.model)
    hooks = [layer.register_forward_hook(lambda *_, i=i: calls.append(i)) for i, layer in enumerate(layers)]
    try:
        minilm.embed(SENTENCES[:4], layer=2, batch_size=2)
    finally:
        for hook in hooks:
            hook.remove()
    assert sorted(set(calls)) == [0, 1] and len(calls) == 4


def test_order_and_values_do_not_depend_on_batching(minilm):
    one_by_one = np.stack([minilm.embed([text])[0] for text in SENTENCES])
    np.testing.assert_allclose(minilm.embed(SENTENCES, batch_size=4), one_by_one, atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"layer": 7}, ConfigError, "layer=7 is out of range"),
        ({"layer": -8}, ConfigError, "out of range"),
        ({"layer": [2, 9]}, ConfigError, "layer=9"),
        ({"pooling": "median"}, ConfigError, "unknown pooling 'median'"),
        ({"layer_combine": "sum", "layer": [1, 2]}, ConfigError, "unknown layer_combine"),
    ],
)
def test_bad_arguments_raise_clear_errors(minilm, kwargs, error, words):
    with pytest.raises(error, match=words):
        minilm.embed(SENTENCES, **kwargs)


def test_empty_input_raises(minilm):
    with pytest.raises(DataError, match="empty"):
        minilm.embed([])
    with pytest.raises(DataError, match="not a string"):
        minilm.embed(["fine", None])


TINY_TEXTS = ["w1 w2 w3 w4 w5 w6 w7 w8", "w9 w10", "w11 w12 w13 w14 w15", "w90"]


def test_stock_families_early_exit_equals_hidden_states(stock_dir):
    """Every layer of BERT, RoBERTa, DistilBERT and ModernBERT (sliding windows, final norm) matches HF."""
    family, path, stock = stock_dir
    tokenizer = tiny_tokenizer(path)
    inputs = tokenizer(TINY_TEXTS, padding=True, return_tensors="pt", return_token_type_ids=False)
    with torch.no_grad():
        states = stock.base_model(**inputs, output_hidden_states=True).hidden_states
    embedder = Embedder.from_pretrained(path)
    assert embedder.adapter is not None
    for layer in range(5):
        got = embedder.embed(TINY_TEXTS, layer=layer, batch_size=2)
        np.testing.assert_allclose(got, mean_pool(states[layer], inputs["attention_mask"]), atol=ATOL, rtol=0)


def test_other_architectures_fall_back_to_hidden_states(tmp_path):
    """A family without a maskae adapter (ALBERT) still gives HF's hidden_states[k]."""
    from transformers import AlbertConfig, AlbertModel

    torch.manual_seed(0)
    model = AlbertModel(AlbertConfig(vocab_size=99, embedding_size=16, hidden_size=32, num_hidden_layers=3,
                                     num_attention_heads=4, intermediate_size=37)).eval()
    model.save_pretrained(tmp_path)
    tokenizer = tiny_tokenizer(tmp_path)
    inputs = tokenizer(TINY_TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        states = model(**inputs, output_hidden_states=True).hidden_states
    embedder = Embedder.from_pretrained(tmp_path)
    assert embedder.adapter is None
    for layer in (0, 2, None):
        got = embedder.embed(TINY_TEXTS, layer=layer, pooling="max", batch_size=3)
        reference = states[3 if layer is None else layer].masked_fill(~inputs["attention_mask"].bool()[..., None], -1e9)
        np.testing.assert_allclose(got, reference.amax(1).numpy(), atol=ATOL, rtol=0)


@pytest.mark.parametrize("bottleneck", [None, "projection", "sentence"])
def test_maskae_default_is_the_code(tiny_bert_dir, tmp_path, bottleneck):
    extra = {"decoder": "transformer", "decoder_layers": 1} if bottleneck == "sentence" else {}
    model = MaskAEForMaskedLM.from_backbone(
        tiny_bert_dir, split_layer=2, bottleneck=bottleneck, bottleneck_dim=8, pooling="cls", **extra
    ).eval()
    saved = tmp_path / "maskae"
    model.save_pretrained(saved)
    tiny_tokenizer(saved)
    inputs = AutoTokenizer.from_pretrained(saved)(TINY_TEXTS, padding=True, return_tensors="pt")
    mask = inputs["attention_mask"]
    with torch.no_grad():
        out = model(inputs["input_ids"], attention_mask=mask, output_hidden_states=True)
    embedder = Embedder.from_pretrained(saved)
    assert isinstance(embedder.model, maskae.MaskAEModel)
    code = embedder.embed(TINY_TEXTS, batch_size=3)
    expected = out.code.numpy() if bottleneck == "sentence" else mean_pool(out.code, mask)
    assert code.shape == (4, 8 if bottleneck == "projection" else 32)
    np.testing.assert_allclose(code, expected, atol=ATOL, rtol=0)
    first = embedder.embed(TINY_TEXTS, layer=1, batch_size=3)
    np.testing.assert_allclose(first, mean_pool(out.hidden_states[1], mask), atol=ATOL, rtol=0)
    with pytest.raises(ConfigError, match="layer=3 is out of range: this encoder"):
        embedder.embed(TINY_TEXTS, layer=3)
    if bottleneck == "sentence":
        with pytest.raises(ConfigError, match="pooling='none'"):
            embedder.embed(TINY_TEXTS, pooling="none")


def test_loaded_model_with_its_tokenizer(tiny_bert_dir):
    model = AutoModel.from_pretrained(tiny_bert_dir)
    from_model = embed(model, TINY_TEXTS, layer=3, pooling="cls")
    np.testing.assert_allclose(from_model, embed(tiny_bert_dir, TINY_TEXTS, layer=3, pooling="cls"), atol=ATOL, rtol=0)


def test_cli_writes_npy_in_chunks_equal_to_embed(tiny_bert_dir, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS) + "\n")
    out = tmp_path / "vectors.npy"
    assert main(["embed", str(tiny_bert_dir), "--input", str(corpus), "--output", str(out), "--layer", "2",
                 "--chunk-size", "4", "--batch-size", "3"]) == 0
    np.testing.assert_allclose(np.load(out), embed(tiny_bert_dir, CORPUS, layer=2), atol=ATOL, rtol=0)
    assert not out.with_name("vectors.npy.parts").exists()
    assert main(["embed", str(tiny_bert_dir), "--input", str(corpus), "--output", str(out)]) == 2  # no overwrite


def test_cli_resumes_after_the_last_written_chunk(tiny_bert_dir, tmp_path, monkeypatch):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": i, "sentence": t}) + "\n" for i, t in enumerate(CORPUS)))
    out = tmp_path / "vectors.parquet"
    argv = ["embed", str(tiny_bert_dir), "--input", str(corpus), "--text-column", "sentence", "--output", str(out),
            "--pooling", "cls", "--normalize", "--chunk-size", "3"]
    real_embed, calls = Embedder.embed, []

    def interrupted_after_two_chunks(self, texts, **kwargs):
        calls.append(list(texts))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_embed(self, texts, **kwargs)

    monkeypatch.setattr(Embedder, "embed", interrupted_after_two_chunks)
    assert main(argv) == 130
    assert len(list((tmp_path / "vectors.parquet.parts").glob("chunk-*.parquet"))) == 2
    assert main(argv) == 2  # partial output exists: refuses to start over silently
    calls.clear()
    assert main(argv + ["--resume"]) == 0
    assert calls == [CORPUS[6:9], CORPUS[9:]]  # only the chunks that were missing
    monkeypatch.undo()
    got = np.stack(pq.read_table(out).column("embedding").to_pylist())
    np.testing.assert_allclose(got, embed(tiny_bert_dir, CORPUS, pooling="cls", normalize=True), atol=ATOL, rtol=0)


def test_cli_datasets_dir_output_and_per_token(tiny_bert_dir, tmp_path):
    import datasets

    corpus = tmp_path / "corpus.csv"
    corpus.write_text("label,text\n" + "".join(f"0,{t}\n" for t in CORPUS))
    out = tmp_path / "vectors"
    assert main(["embed", str(tiny_bert_dir), "--input", str(corpus), "--output", str(out), "--pooling", "none",
                 "--chunk-size", "5"]) == 0
    rows = datasets.load_from_disk(str(out))["embedding"]
    expected = embed(tiny_bert_dir, CORPUS, pooling="none")
    assert len(rows) == len(CORPUS)
    for row, tokens in zip(rows, expected):
        np.testing.assert_allclose(np.asarray(row, dtype=np.float32), tokens, atol=ATOL, rtol=0)


def test_cli_errors_are_one_line(tiny_bert_dir, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert main(["embed", str(tiny_bert_dir), "--input", str(empty), "--output", str(tmp_path / "e.npy")]) == 2
    assert "contains no text" in capsys.readouterr().err
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"sentence": "w1 w2"}\n')
    assert main(["embed", str(tiny_bert_dir), "--input", str(corpus), "--output", str(tmp_path / "c.npy")]) == 2
    assert "no column 'text'" in capsys.readouterr().err
    assert main(["embed", str(tiny_bert_dir), "--input", str(corpus), "--text-column", "sentence",
                 "--output", str(tmp_path / "c.npy"), "--layer", "9"]) == 2
    assert "layer=9 is out of range" in capsys.readouterr().err
