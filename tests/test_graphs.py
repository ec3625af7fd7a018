"""ONNX and OpenVINO graphs of any layer: the fp32 graph computes what `maskae embed` (PyTorch) does, for
all-MiniLM-L6-v2 at layer 3 and at the top and for a MaskAE run's code and a lower layer, with a stored
whitening and without; int8 graphs keep the vectors' direction; sentence-transformers' layout holds the
token-level graphs its backends load; `maskae embed --backend` writes, chunks and resumes as with PyTorch;
what a graph cannot serve is refused in one line; the host's ISA picks the int8 kernels, with fallbacks."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAMILIES, tiny_stock, tiny_tokenizer

import maskae
from maskae import MaskAEForMaskedLM
from maskae.cli import main
from maskae.embeddings.graphs import GRAPH_CONFIG, GraphEmbedder
from maskae.errors import CheckpointError, ConfigError, DataError, ExportError, MissingExtraError
from maskae.export.graphs import export_graphs
from maskae.export.sentence_transformers import save_sentence_transformer
from maskae.utils import host

pytest.importorskip("onnxruntime", reason="the graph tests need maskae[onnx]")
pytest.importorskip("openvino", reason="the graph tests need maskae[openvino]")

TEXTS = [
    "A man is playing a guitar.",
    "The quick brown fox jumps over the lazy dog near the riverbank at dawn, while the farmer sleeps.",
    "ok",
    "Stocks fell sharply on Tuesday after the central bank raised interest rates.",
    "She didn't say whether she'd be back before the end of the week.",
] * 3
TINY_TEXTS = [f"w{i} w{(i * 7) % 90} w{(i * 3) % 50}" + " w5" * (i % 6) for i in range(15)]


def stsb_sentences(shared_data: Path, count: int) -> list[str]:
    with open(shared_data / "stsb" / "validation.tsv", encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [row["sentence1"] for row in rows[:count]]


@pytest.fixture(scope="module")
def minilm_white(tmp_path_factory, minilm_path, shared_data) -> Path:
    """A copy of all-MiniLM-L6-v2 with a whitening fitted at layer 3 (the installed package stays untouched)."""
    path = tmp_path_factory.mktemp("minilm") / "model"
    shutil.copytree(minilm_path, path)
    maskae.fit_whitening(str(path), stsb_sentences(shared_data, 200), dim=16, layer=3).save(path)
    return path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A 4-layer BERT split at 3 into a MaskAE model, with a whitening of its code stored beside it."""
    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    tiny_stock("bert").save_pretrained(root / "stock")
    tiny_tokenizer(root / "stock")
    run = root / "run"
    MaskAEForMaskedLM.from_backbone(root / "stock", split_layer=2).save_pretrained(run)
    tiny_tokenizer(run)
    maskae.fit_whitening(str(run), TINY_TEXTS * 4, dim=8).save(run)
    return run


CASES = {  # name -> (model fixture, layer, whitened)
    "minilm-3-whitened": ("minilm_white", 3, True),
    "minilm-top": ("minilm_white", None, False),
    "tiny-code-whitened": ("tiny_run", None, True),
    "tiny-layer-1": ("tiny_run", 1, False),
}


@pytest.mark.parametrize("name", CASES)
def test_fp32_graphs_equal_pytorch(name, request, tmp_path):
    fixture, layer, whitened = CASES[name]
    model = request.getfixturevalue(fixture)
    texts = TINY_TEXTS if fixture == "tiny_run" else TEXTS
    out = export_graphs(str(model), tmp_path / "graphs", ("onnx", "openvino"), layer=layer)
    config = json.loads((out / GRAPH_CONFIG).read_text())
    assert config["whitened"] is whitened
    expected = maskae.embed(str(model), texts, layer=layer)
    for backend in ("onnx", "openvino"):
        vectors = maskae.embed(out, texts, backend=backend, batch_size=4)
        assert vectors.shape == expected.shape
        np.testing.assert_allclose(vectors, expected, atol=1e-4, rtol=0)
        assert config["graphs"][backend]["check"]["max_abs_diff_to_torch"] < 1e-4
    if whitened:  # the whitening is really inside: the raw vectors differ from the graph's
        assert not np.allclose(maskae.embed(str(model), texts, layer=layer, whiten=False)[:, :8], expected[:, :8])


def test_pooling_and_normalize_are_baked_in(tiny_run, tmp_path):
    out = export_graphs(str(tiny_run), tmp_path / "graphs", ("onnx",), layer=2, pooling="max", normalize=True)
    expected = maskae.embed(str(tiny_run), TINY_TEXTS, layer=2, pooling="max", normalize=True)
    vectors = GraphEmbedder.from_pretrained(out).embed(TINY_TEXTS)
    np.testing.assert_allclose(vectors, expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_int8_graphs_keep_direction(minilm_path, shared_data, tmp_path):
    sentences = stsb_sentences(shared_data, 400)
    calibration, held_out = sentences[:200], sentences[200:]
    expected = maskae.embed(str(minilm_path), held_out, layer=3)
    dynamic = export_graphs(str(minilm_path), tmp_path / "weights", ("onnx", "openvino"), layer=3, quantize="int8")
    static = export_graphs(str(minilm_path), tmp_path / "static", ("openvino",), layer=3, quantize="int8",
                           calibration_texts=calibration)
    graphs = {**json.loads((dynamic / GRAPH_CONFIG).read_text())["graphs"]}
    assert graphs["onnx"]["precision"] == "int8-dynamic"
    assert graphs["onnx"]["reduce_range"] == host.needs_reduced_range()
    assert graphs["openvino"]["precision"] == "int8-weights"
    assert json.loads((static / GRAPH_CONFIG).read_text())["graphs"]["openvino"]["precision"] == "int8-static"
    for directory, backend in ((dynamic, "onnx"), (dynamic, "openvino"), (static, "openvino")):
        vectors = maskae.embed(directory, held_out, backend=backend)
        cosine = np.sum(vectors * expected, axis=1) / np.linalg.norm(vectors, axis=1) / np.linalg.norm(expected, axis=1)
        assert cosine.mean() >= 0.99, (directory.name, backend, cosine.mean())
        assert not np.allclose(vectors, expected, atol=1e-4)  # int8 really ran


def test_sentence_transformers_layout_holds_token_graphs(minilm_path, tmp_path):
    """The files `SentenceTransformer(dir, backend=...)` opens (checked in sentence-transformers' own
    environment by benchmarks/bench_embed.py --backends; optimum pins transformers below 5): the token
    graph's `last_hidden_state`, pooled as the Pooling module does, is what maskae embeds at that layer."""
    import onnxruntime as ort
    import openvino as ov

    out = save_sentence_transformer(minilm_path, tmp_path / "st", layer=3, backends=("onnx", "openvino"),
                                    quantize="int8")
    kernels = host.int8_kernels()
    for name in ("onnx/model.onnx", f"onnx/model_qint8_{kernels}.onnx", "openvino/openvino_model.xml",
                 "openvino/openvino_model_qint8_weights.xml", "openvino/openvino_model_qint8_weights.bin"):
        assert (out / name).is_file(), name
    embedder = maskae.Embedder.from_pretrained(minilm_path, device="cpu")
    expected = embedder.embed(TEXTS, layer=3)
    ids = embedder.tokenizer(TEXTS, padding=True, truncation=True, return_tensors="np")
    feed = {"input_ids": ids["input_ids"].astype(np.int64), "attention_mask": ids["attention_mask"].astype(np.int64)}
    session = ort.InferenceSession(str(out / "onnx/model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["last_hidden_state"]
    compiled = ov.Core().compile_model(str(out / "openvino/openvino_model.xml"), "CPU",
                                       {"INFERENCE_PRECISION_HINT": "f32"})
    mask = feed["attention_mask"][..., None]
    for tokens in (session.run(None, feed)[0], compiled(feed)["last_hidden_state"]):
        pooled = (tokens * mask).sum(axis=1) / mask.sum(axis=1)
        np.testing.assert_allclose(pooled, expected, atol=1e-4, rtol=0)


def test_cli_embed_backend_chunks_and_resumes(tiny_run, tmp_path, monkeypatch):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TINY_TEXTS * 3) + "\n")
    graphs = tmp_path / "graphs"
    assert main(["--quiet", "export", str(tiny_run), "--out", str(graphs), "--onnx", "--openvino", "--layer", "1"]) == 0
    reference = tmp_path / "torch.npy"
    assert main(["--quiet", "embed", str(tiny_run), "--input", str(corpus), "--output", str(reference),
                 "--layer", "1"]) == 0
    for backend in ("onnx", "openvino"):
        output = tmp_path / f"{backend}.parquet"
        argv = ["--quiet", "embed", str(graphs), "--input", str(corpus), "--output", str(output),
                "--backend", backend, "--chunk-size", "7", "--batch-size", "3"]
        assert main(argv) == 0
        import pyarrow.parquet as pq

        vectors = np.stack(pq.read_table(output)["embedding"].to_numpy(zero_copy_only=False))
        np.testing.assert_allclose(vectors, np.load(reference), atol=1e-4, rtol=0)
    # interrupted after two chunks, then resumed: only the missing chunks run, the rows are the same
    output = tmp_path / "resumed.npy"
    argv = ["--quiet", "embed", str(graphs), "--input", str(corpus), "--output", str(output), "--chunk-size", "7"]
    real_embed, calls, interrupt = GraphEmbedder.embed, [], [True]

    def interrupted_after_two_chunks(self, texts, **kwargs):
        calls.append(list(texts))
        if len(calls) == 3 and interrupt[0]:
            raise KeyboardInterrupt
        return real_embed(self, texts, **kwargs)

    monkeypatch.setattr(GraphEmbedder, "embed", interrupted_after_two_chunks)
    assert main(argv) == 130
    calls.clear()
    interrupt[0] = False
    assert main(argv + ["--resume"]) == 0
    assert [len(chunk) for chunk in calls] == [7] * 4 + [3]  # chunks 3 to 7
    np.testing.assert_allclose(np.load(output), np.load(reference), atol=1e-4, rtol=0)


def test_graph_refuses_what_it_cannot_serve(tiny_run, tmp_path):
    out = export_graphs(str(tiny_run), tmp_path / "graphs", ("onnx",))
    graph = GraphEmbedder.from_pretrained(out)
    with pytest.raises(ConfigError, match="exported at layer 2"):
        graph.embed(TINY_TEXTS, layer=1)
    graph.embed(TINY_TEXTS, layer=-1)  # the same layer, counted from the top
    with pytest.raises(ConfigError, match="with mean pooling, not cls"):
        graph.embed(TINY_TEXTS, pooling="cls")
    with pytest.raises(ConfigError, match="whitening inside it"):
        graph.embed(TINY_TEXTS, whiten=False)
    with pytest.raises(ConfigError, match="no bf16 path"):
        GraphEmbedder(out, "onnx", dtype="bf16")
    with pytest.raises(ConfigError, match="holds no openvino graph"):
        GraphEmbedder(out, "openvino")
    with pytest.raises(ConfigError, match="not PyTorch weights"):
        maskae.Embedder.from_pretrained(out, backend="torch")
    with pytest.raises(ConfigError, match="export one first"):
        maskae.Embedder.from_pretrained(tiny_run, backend="onnx")
    with pytest.raises(DataError, match="not a string"):
        graph.embed(["fine", 3])


def test_damaged_and_foreign_graphs_are_refused(tiny_run, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    out = export_graphs(str(tiny_run), tmp_path / "graphs", ("onnx", "openvino"))
    corrupt = tmp_path / "corrupt"
    shutil.copytree(out, corrupt)
    (corrupt / "model.onnx").write_bytes(b"\x08\x07 not a protobuf at all")
    with pytest.raises(CheckpointError, match="not a loadable ONNX graph"):
        GraphEmbedder(corrupt, "onnx")
    (corrupt / "openvino_model.xml").write_text("<net>")
    with pytest.raises(CheckpointError, match="not a loadable OpenVINO model"):
        GraphEmbedder(corrupt, "openvino")
    foreign = tmp_path / "foreign"
    shutil.copytree(out, foreign)
    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph([node], "other", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])])
    onnx.save(helper.make_model(graph), str(foreign / "model.onnx"))
    with pytest.raises(CheckpointError, match="not a maskae sentence graph"):
        GraphEmbedder(foreign, "onnx")
    (foreign / GRAPH_CONFIG).write_text("{}")
    with pytest.raises(CheckpointError, match="not a maskae graph description"):
        GraphEmbedder(foreign, "onnx")


def test_export_refusals(tiny_run, tmp_path):
    with pytest.raises(ConfigError, match="out of range"):
        export_graphs(str(tiny_run), tmp_path / "a", ("onnx",), layer=9)
    with pytest.raises(ExportError, match="unknown pooling"):
        export_graphs(str(tiny_run), tmp_path / "b", ("onnx",), pooling="none")
    with pytest.raises(DataError, match="calibration text is empty"):
        export_graphs(str(tiny_run), tmp_path / "c", ("openvino",), quantize="int8", calibration_texts=["", "  "])
    with pytest.raises(ExportError, match="for OpenVINO's static int8"):
        export_graphs(str(tiny_run), tmp_path / "d", ("onnx",), quantize="int8", calibration_texts=["text"])
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty"):
        export_graphs(str(tiny_run), tmp_path / "e", ("onnx",))
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no staging directory left behind


def test_missing_extra_is_one_line(tiny_run, tmp_path, monkeypatch, capsys):
    out = export_graphs(str(tiny_run), tmp_path / "graphs", ("onnx",))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what `import onnxruntime` meets when it is absent
    with pytest.raises(MissingExtraError, match=r"pip install 'maskae\[onnx\]'"):
        GraphEmbedder(out, "onnx")
    assert main(["export", str(tiny_run), "--out", str(tmp_path / "again"), "--onnx"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "maskae export: error: exporting a onnx graph needs onnxruntime, which is not installed; "
        "pip install 'maskae[onnx]'."]


def test_int8_kernels_follow_the_isa(monkeypatch):
    cases = {
        frozenset({"avx2", "avx512f", "avx512_vnni", "amx_int8", "amx_bf16"}): ("amx", False, True),
        frozenset({"avx2", "avx512f", "avx512_vnni"}): ("avx512_vnni", False, False),
        frozenset({"avx2", "avx512f", "avx512_bf16"}): ("avx512", True, True),
        frozenset({"avx2"}): ("avx2", True, False),
        frozenset(): ("generic", True, False),
    }
    monkeypatch.setattr(host.platform, "machine", lambda: "x86_64")
    for flags, (kernels, reduced, bf16) in cases.items():
        monkeypatch.setattr(host, "cpu_flags", lambda flags=flags: flags)
        assert (host.int8_kernels(), host.needs_reduced_range(), host.has_bf16_unit()) == (kernels, reduced, bf16)
    monkeypatch.setattr(host.platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(host, "cpu_flags", lambda: frozenset({"asimddp", "bf16"}))
    assert (host.int8_kernels(), host.needs_reduced_range(), host.has_bf16_unit()) == ("arm64", False, True)


def test_bf16_where_the_host_has_it_and_fp32_elsewhere(minilm_path, monkeypatch, caplog):
    fp32 = maskae.embed(str(minilm_path), TEXTS, layer=3)
    monkeypatch.setattr(host, "has_bf16_unit", lambda: False)
    with caplog.at_level("WARNING"):
        fallback = maskae.embed(str(minilm_path), TEXTS, layer=3, dtype="bf16")
    assert "no bf16 unit" in caplog.text
    np.testing.assert_array_equal(fallback, fp32)
    monkeypatch.setattr(host, "has_bf16_unit", lambda: True)  # autocast runs on any CPU, if slowly
    bf16 = maskae.embed(str(minilm_path), TEXTS, layer=3, dtype="bf16")
    assert not np.array_equal(bf16, fp32)
    cosine = np.sum(bf16 * fp32, axis=1) / np.linalg.norm(bf16, axis=1) / np.linalg.norm(fp32, axis=1)
    assert cosine.min() > 0.999


def test_static_token_graph_keeps_the_mask_input(tiny_run, tmp_path):
    """A layer-0 graph never reads the mask, but sentence-transformers' OpenVINO backend always feeds it."""
    import openvino as ov

    out = save_sentence_transformer(tiny_run, tmp_path / "st", layer=0, backends=("openvino",))
    model = ov.Core().read_model(str(out / "openvino" / "openvino_model.xml"))
    assert sorted(port.get_any_name() for port in model.inputs) == ["attention_mask", "input_ids"]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_traces_exactly(family, tmp_path):
    """BERT, RoBERTa, DistilBERT and ModernBERT (rotary embeddings, sliding-window masks) at a middle layer."""
    model = tmp_path / family
    tiny_stock(family).save_pretrained(model)
    tiny_tokenizer(model)
    out = export_graphs(str(model), tmp_path / "graphs", ("onnx", "openvino"), layer=2)
    expected = maskae.embed(str(model), TINY_TEXTS, layer=2)
    for backend in ("onnx", "openvino"):
        np.testing.assert_allclose(maskae.embed(out, TINY_TEXTS, backend=backend), expected, atol=1e-5, rtol=0)
