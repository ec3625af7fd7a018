"""The layer-k sentence encoder as one ONNX or OpenVINO graph, fp32 or int8, checked against PyTorch.

The graph is `Embedder.pooled` traced (the first k layers and the pooling), then the stored whitening and
the normalisation, from (input_ids, attention_mask) with dynamic batch and sequence axes to the vector
`maskae embed` writes. Built with the field's tools and none that pins transformers: `torch.onnx` traces,
`onnxruntime.quantization` makes dynamic int8 (weights per channel; 7-bit weights on CPUs without VNNI,
whose int8 products would saturate), OpenVINO converts and NNCF quantizes (int8 weights with no data, or
static int8 of weights and activations calibrated on the user's text). Every export runs the graph on
probe sentences beside PyTorch and records how close it came in `maskae_graph.json`.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..embeddings.choices import (
    CALIBRATION_SIZE,
    GRAPH_BACKENDS,
    QUANTIZATIONS,
    SENTENCE_POOLINGS,
)
from ..embeddings.embedder import Embedder
from ..embeddings.graphs import (
    GRAPH_CONFIG,
    GRAPH_FORMAT,
    INPUTS,
    OUTPUT,
    GraphEmbedder,
)
from ..embeddings.inputs import in_length_order, pad_batch, pad_id
from ..embeddings.whitening import Whitening
from ..errors import DataError, ExportError
from ..utils.extras import import_extra
from ..utils.host import int8_kernels, needs_reduced_range
from .guards import hub_id

logger = logging.getLogger(__name__)

OPSET = 17
# Checked at export: an fp32 graph that strays further from PyTorch than this is a tracing fault, not rounding.
FP32_TOLERANCE = 1e-3
# Sentences of several lengths and kinds that every export is checked on when no calibration text is given.
PROBES = (
    "A man is playing a guitar.",
    "The quick brown fox jumps over the lazy dog near the riverbank at dawn.",
    "Stocks fell sharply on Tuesday after the central bank raised interest rates by half a point.",
    "ok",
    "What time does the museum open on Sundays, and is there a discount for students?",
    "The film's pacing drags in the middle, but its final act is genuinely moving.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "She didn't say whether she'd be back before the end of the week.",
)


class SentenceGraph(nn.Module):
    """(input_ids, attention_mask) -> the sentence vector, as `Embedder.embed` makes it for one request."""

    def __init__(self, embedder: Embedder, layers: list[int] | None, pooling: str, whitening: Whitening | None,
                 normalize: bool):
        super().__init__()
        self.embedder, self.layers, self.pooling, self.normalize = embedder, layers, pooling, normalize
        self.model = embedder.model  # registered, so that the trace sees the weights as parameters
        self.whitened = whitening is not None
        if whitening is not None:
            self.register_buffer("whitening_mean", torch.as_tensor(whitening.mean, dtype=torch.float32))
            self.register_buffer("whitening_matrix", torch.as_tensor(whitening.matrix, dtype=torch.float32))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        vectors = self.embedder.pooled(input_ids, attention_mask, self.layers, self.pooling).float()
        if self.whitened:
            vectors = (vectors - self.whitening_mean) @ self.whitening_matrix
        return F.normalize(vectors, p=2, dim=-1) if self.normalize else vectors


class TokenGraph(nn.Module):
    """(input_ids, attention_mask) -> `last_hidden_state` at one layer: the Transformer module of a
    sentence-transformers folder, whose pooling runs in sentence-transformers itself."""

    def __init__(self, embedder: Embedder, depth: int):
        super().__init__()
        self.embedder, self.depth, self.model = embedder, depth, embedder.model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.embedder.pooled(input_ids, attention_mask, [self.depth], "none")
        if self.depth == 0:
            # A lookup never reads the mask, and the tracer would drop the input that sentence-transformers'
            # OpenVINO backend always feeds; zeroing the padding (which pooling skips anyway) keeps it.
            hidden = hidden * attention_mask.unsqueeze(-1).to(hidden.dtype)
        return hidden


def export_graphs(
    model_or_path: str | Path | Embedder,
    out_dir: str | Path,
    backends: Sequence[str] = ("onnx",),
    layer: int | None = None,
    pooling: str = "mean",
    normalize: bool = False,
    quantize: str | None = None,
    calibration_texts: Sequence[str] | None = None,
    tokenizer=None,
) -> Path:
    """Write `out_dir` with one graph per backend, the tokenizer and `maskae_graph.json`.

    `layer`, `pooling` and `normalize` are `maskae.embed`'s; the whitening stored with the model is baked in
    when it was fitted on this layer and pooling. `quantize="int8"` makes ONNX graphs dynamic int8 and
    OpenVINO graphs int8: static (weights and activations) when `calibration_texts` are given, a few hundred
    sentences of the text to embed, else weights only. `Embedder.from_pretrained(out_dir)` and
    `maskae embed out_dir` then run it.
    """
    if pooling not in SENTENCE_POOLINGS:
        raise ExportError(f"unknown pooling {pooling!r} for a sentence graph; use one of {', '.join(SENTENCE_POOLINGS)}.")
    backends = _check_request(backends, quantize, calibration_texts)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"{out} is not empty; export into a new or empty directory.")
    embedder = _embedder(model_or_path, tokenizer)
    if isinstance(layer, bool) or not isinstance(layer, (int, type(None))):
        raise ExportError(f"layer={layer!r} must be one int (or None for the default); a graph holds one layer.")
    layers = embedder.check_request(layer, pooling)
    whitening = embedder.whitening_for(layer, pooling)
    graph = SentenceGraph(embedder, layers, pooling, whitening, normalize).eval()
    probes = list(calibration_texts or PROBES)[:32]
    reference = embedder.embed(probes, layer=layer, pooling=pooling, normalize=normalize)
    depth = embedder.num_layers if layers is None else layers[0]

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        onnx_fp32 = staging / "model_fp32.onnx"
        trace_onnx(graph, embedder, onnx_fp32, [OUTPUT])
        calibration = _calibration_batches(embedder, calibration_texts) if calibration_texts else None
        graphs = {}
        for backend in backends:
            if backend == "onnx":
                graphs[backend] = _write_onnx(onnx_fp32, staging, quantize)
            else:
                graphs[backend] = _write_openvino(onnx_fp32, staging, quantize, calibration)
        onnx_fp32.unlink()
        embedder.tokenizer.save_pretrained(staging)
        config = {
            "format": GRAPH_FORMAT,
            "source": _source_name(embedder),
            "layer": depth,
            "num_layers": embedder.num_layers,
            "code": layers is None,
            "pooling": pooling,
            "normalize": normalize,
            "whitened": whitening is not None,
            "dimension": int(reference.shape[1]),
            "max_length": embedder.max_length,
            "lowercase": embedder.lowercase,
            "inputs": list(INPUTS),
            "output": OUTPUT,
            "graphs": graphs,
        }
        _write_json(staging / GRAPH_CONFIG, config)
        for backend in backends:
            graphs[backend]["check"] = _check_against_torch(staging, backend, probes, reference, graphs[backend])
        _write_json(staging / GRAPH_CONFIG, config)
        if out.exists():
            out.rmdir()
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def write_sentence_transformers_graphs(
    embedder: Embedder,
    depth: int,
    out: Path,
    backends: Sequence[str],
    quantize: str | None = None,
    calibration_texts: Sequence[str] | None = None,
) -> list[str]:
    """The Transformer module of a sentence-transformers folder as graphs in its own layout: `onnx/model.onnx`
    and `openvino/openvino_model.xml` (what `SentenceTransformer(out, backend=...)` loads), plus with
    `quantize` the int8 files under sentence-transformers' names, loaded with
    `model_kwargs={"file_name": ...}`. Returns the files written, relative to `out`."""
    backends = _check_request(backends, quantize, calibration_texts)
    graph = TokenGraph(embedder, depth).eval()
    written = []
    with tempfile.TemporaryDirectory() as scratch:
        fp32 = Path(scratch) / "model.onnx"
        trace_onnx(graph, embedder, fp32, ["last_hidden_state"])
        calibration = _calibration_batches(embedder, calibration_texts) if calibration_texts else None
        for backend in backends:
            folder = out / backend
            folder.mkdir(parents=True, exist_ok=True)
            if backend == "onnx":
                shutil.copyfile(fp32, folder / "model.onnx")
                written.append("onnx/model.onnx")
                if quantize:  # sentence-transformers' name: model_qint8_<kernels>.onnx
                    name = f"model_qint8_{int8_kernels()}.onnx"
                    quantize_onnx(fp32, folder / name)
                    written.append(f"onnx/{name}")
            else:
                written.append(f"openvino/{_write_openvino(fp32, folder, None, None)['file']}")
                if quantize:
                    written.append(f"openvino/{_write_openvino(fp32, folder, quantize, calibration)['file']}")
    return written


def _check_request(backends: Sequence[str], quantize: str | None, calibration_texts: Sequence[str] | None) -> list[str]:
    """The backends asked for, once each, after checking the quantization, the calibration text and the extras."""
    backends = list(dict.fromkeys(backends))
    if not backends or any(b not in GRAPH_BACKENDS for b in backends):
        raise ExportError(f"backends={backends!r}: choose one or more of {', '.join(GRAPH_BACKENDS)}.")
    if quantize not in (None, *QUANTIZATIONS):
        raise ExportError(f"unknown quantization {quantize!r}; use int8, or none for fp32.")
    if calibration_texts is not None:
        if quantize is None or "openvino" not in backends:
            raise ExportError("calibration text is for OpenVINO's static int8; pass --openvino --quantize int8 with "
                              "it, or remove --calibrate.")
        if not any(isinstance(text, str) and text.strip() for text in calibration_texts):
            raise DataError("the calibration text is empty; pass a corpus of a few hundred sentences like the ones "
                            "you will embed.")
    for backend in backends:
        import_extra(*(("onnxruntime", "onnx") if backend == "onnx" else ("openvino", "openvino")),
                     f"exporting a {backend} graph")
    if "openvino" in backends and quantize:
        import_extra("nncf", "openvino", "int8 OpenVINO graphs")
    import_extra("onnx", "onnx" if "onnx" in backends else "openvino", "exporting a graph")
    return backends


def _embedder(model_or_path: str | Path | Embedder, tokenizer) -> Embedder:
    if isinstance(model_or_path, Embedder):
        return model_or_path
    return Embedder.from_pretrained(model_or_path, device="cpu", tokenizer=tokenizer, backend="torch")


def trace_onnx(module: nn.Module, embedder: Embedder, path: Path, outputs: list[str]) -> None:
    """`torch.onnx` (TorchScript tracing) with dynamic batch and sequence axes. The example batch has padding,
    so the traced graph keeps the attention-mask path that every later batch needs."""
    ids = embedder.tokenize(["an example sentence to trace the graph with", "short"])
    input_ids, attention_mask = pad_batch(ids, pad_id(embedder.tokenizer))
    axes = {name: {0: "batch", 1: "sequence"} for name in INPUTS}
    axes.update({name: {0: "batch"} if name == OUTPUT else {0: "batch", 1: "sequence"} for name in outputs})
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings about Python branches the padded example settles
        torch.onnx.export(module, (input_ids.to(embedder.device), attention_mask.to(embedder.device)), str(path),
                          input_names=list(INPUTS), output_names=outputs, dynamic_axes=axes,
                          opset_version=OPSET, dynamo=False)


def _write_onnx(fp32: Path, staging: Path, quantize: str | None) -> dict:
    if quantize is None:
        shutil.copyfile(fp32, staging / "model.onnx")
        return {"file": "model.onnx", "precision": "fp32"}
    return {"file": "model_qint8.onnx", "precision": "int8-dynamic",
            **quantize_onnx(fp32, staging / "model_qint8.onnx")}


def quantize_onnx(source: Path, target: Path) -> dict:
    """ONNX Runtime's dynamic int8: int8 weights per output channel, activations quantized per batch, with
    7-bit weights on CPUs whose int8 products would saturate. Returns the kernels and that choice."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    kernels = int8_kernels()
    reduce_range = needs_reduced_range(kernels)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer advises pre-processing through the root logger on every call
    try:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True,
                         reduce_range=reduce_range)
    finally:
        root.setLevel(level)
    return {"kernels": kernels, "reduce_range": reduce_range}


def _write_openvino(fp32: Path, staging: Path, quantize: str | None, calibration: list[dict] | None,
                    name: str = "openvino_model") -> dict:
    import openvino as ov

    model = ov.convert_model(str(fp32))
    record = {"precision": "fp32"}
    if quantize:
        nncf = import_extra("nncf", "openvino", "int8 OpenVINO graphs")
        with _quiet_nncf():
            if calibration:
                model = nncf.quantize(model, nncf.Dataset(calibration), model_type=nncf.ModelType.TRANSFORMER,
                                      subset_size=len(calibration))
                record = {"precision": "int8-static", "calibration_sentences": len(calibration)}
            else:
                model = nncf.compress_weights(model)
                record = {"precision": "int8-weights"}
        name += "_qint8_quantized" if calibration else "_qint8_weights"
    ov.save_model(model, str(staging / f"{name}.xml"), compress_to_fp16=False)
    return {"file": f"{name}.xml", **record}


@contextlib.contextmanager
def _quiet_nncf() -> Iterator[None]:
    """NNCF draws its own progress bars and tables on stdout; maskae's console shows only its own."""
    logging.getLogger("nncf").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _calibration_batches(embedder: Embedder, texts: Sequence[str]) -> list[dict]:
    """Up to CALIBRATION_SIZE sentences, one per item, as NNCF feeds them to the graph."""
    texts = [text for text in texts if isinstance(text, str) and text.strip()][:CALIBRATION_SIZE]
    items = []
    for _, batch in in_length_order(embedder.tokenize(texts), 1):
        input_ids, attention_mask = pad_batch(batch, pad_id(embedder.tokenizer))
        items.append({"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()})
    return items


def _check_against_torch(directory: Path, backend: str, probes: list[str], reference: np.ndarray,
                         record: dict) -> dict:
    """Run the written graph as users will and compare it with PyTorch: fp32 must agree to rounding."""
    vectors = GraphEmbedder(directory, backend).embed(probes)
    cosine = float(np.mean(np.sum(vectors * reference, axis=1)
                           / np.maximum(np.linalg.norm(vectors, axis=1) * np.linalg.norm(reference, axis=1), 1e-12)))
    worst = float(np.abs(vectors - reference).max())
    if record["precision"] == "fp32" and worst > FP32_TOLERANCE:
        raise ExportError(f"the {backend} graph differs from PyTorch by {worst:.2g} on probe sentences (more than "
                          "rounding); this model's code does not trace cleanly, so embed it with --backend torch.")
    return {"sentences": len(probes), "mean_cosine_to_torch": round(cosine, 6), "max_abs_diff_to_torch": worst}


def _source_name(embedder: Embedder) -> str:
    """The model's Hub id, or its directory's name: a shared export must not carry this machine's paths."""
    name = str(getattr(embedder.model, "name_or_path", "") or "")
    return hub_id(name) or Path(name).name


def _write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")
