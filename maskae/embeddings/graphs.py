"""Exported sentence-encoder graphs at run time: ONNX Runtime and OpenVINO.

`maskae export MODEL --onnx/--openvino` writes one graph per backend that maps (input_ids, attention_mask)
to the sentence vector `maskae embed` returns: the first k layers, the pooling, the stored whitening and
the normalisation are inside it, and `maskae_graph.json` beside it records them. `GraphEmbedder` reads
that directory and embeds as `Embedder` does (tokenised once, batches in length order, input order kept),
with each runtime's threads set to torch's and precision chosen for the host.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError, ConfigError
from ..utils.extras import import_extra
from ..utils.host import bf16_unit_or_warn
from .choices import DTYPES
from .inputs import (
    check_texts,
    in_length_order,
    load_tokenizer,
    pad_batch,
    pad_id,
    tokenize,
)

logger = logging.getLogger(__name__)

GRAPH_CONFIG = "maskae_graph.json"
GRAPH_FORMAT = 1
INPUTS = ("input_ids", "attention_mask")
OUTPUT = "sentence_embedding"


def is_graph_export(path: str | Path) -> bool:
    return (Path(path) / GRAPH_CONFIG).is_file()


def read_graph_config(directory: str | Path) -> dict:
    """The export's `maskae_graph.json`, checked for the keys the runtime needs."""
    path = Path(directory) / GRAPH_CONFIG
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"cannot read {path} ({error}); export the model again with maskae export --onnx "
                              "or --openvino.") from None
    if not isinstance(config, dict) or config.get("format") != GRAPH_FORMAT or not isinstance(config.get("graphs"), dict):
        raise CheckpointError(f"{path} is not a maskae graph description (format {GRAPH_FORMAT}); export the model "
                              "again with this version of maskae.")
    return config


class GraphEmbedder:
    """Sentence vectors from an exported graph: what `Embedder` does, on ONNX Runtime or OpenVINO.

    The layer, pooling, whitening and normalisation were fixed at export (see `maskae_graph.json`);
    `embed` accepts the same arguments as `Embedder.embed` and refuses a request the graph cannot serve.
    """

    def __init__(self, directory: str | Path, backend: str | None = None, dtype: str | None = None,
                 threads: int | None = None):
        directory = Path(directory)
        self.config = read_graph_config(directory)
        if backend is None:  # OpenVINO when both are there: the faster one on Intel and AMD CPUs alike
            backend = "openvino" if "openvino" in self.config["graphs"] else "onnx"
        if backend not in self.config["graphs"]:
            made = ", ".join(sorted(self.config["graphs"])) or "none"
            raise ConfigError(
                f"{directory} holds no {backend} graph (it has: {made}); export one with maskae export MODEL "
                f"--out DIR --{backend}, or pass --backend {made.split(',')[0]}."
            )
        if dtype not in (None, *DTYPES):
            raise ConfigError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}.")
        self.directory, self.backend = directory, backend
        self.graph = self.config["graphs"][backend]
        self.layer, self.pooling = self.config["layer"], self.config["pooling"]
        self.num_layers = self.config["num_layers"]
        self.normalized, self.whitened = self.config["normalize"], self.config["whitened"]
        self.max_length, self.lowercase = self.config["max_length"], self.config["lowercase"]
        self.tokenizer = load_tokenizer(directory)
        self.threads = threads or torch.get_num_threads()
        self.dtype = self._choose_dtype(dtype)
        self._run = self._load_onnx() if backend == "onnx" else self._load_openvino()

    @classmethod
    def from_pretrained(cls, directory: str | Path, backend: str | None = None, dtype: str | None = None) -> "GraphEmbedder":
        """Load a `maskae export --onnx/--openvino` directory; `backend` defaults to the graph it holds
        (OpenVINO when it holds both)."""
        return cls(directory, backend, dtype=dtype)

    def _choose_dtype(self, dtype: str | None) -> str:
        if dtype != "bf16":
            return "fp32"
        if self.backend == "onnx":
            raise ConfigError("ONNX Runtime's CPU kernels have no bf16 path; use --backend openvino for bf16, or an "
                              "int8 ONNX graph (--quantize int8).")
        return "bf16" if bf16_unit_or_warn("the graph") else "fp32"

    def _file(self) -> Path:
        path = self.directory / self.graph["file"]
        if not path.is_file():
            raise CheckpointError(f"{path} is missing; export the model again with maskae export --{self.backend}.")
        return path

    def _load_onnx(self):
        ort = import_extra("onnxruntime", "onnx", "the onnx backend")
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        path = self._file()
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph/InvalidProtobuf classes
            raise CheckpointError(f"{path} is not a loadable ONNX graph ({_short(error)}); export the model again "
                                  "with maskae export --onnx.") from None
        _check_signature(path, [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
        return lambda input_ids, attention_mask: session.run(
            [OUTPUT], {"input_ids": input_ids, "attention_mask": attention_mask})[0]

    def _load_openvino(self):
        ov = import_extra("openvino", "openvino", "the openvino backend")
        path = self._file()
        core = ov.Core()
        try:
            model = core.read_model(str(path))
        except Exception as error:  # openvino raises RuntimeError subclasses of its own
            raise CheckpointError(f"{path} is not a loadable OpenVINO model ({_short(error)}); export the model "
                                  "again with maskae export --openvino.") from None
        _check_signature(path, [p.get_any_name() for p in model.inputs], [p.get_any_name() for p in model.outputs])
        properties = {
            "INFERENCE_PRECISION_HINT": "bf16" if self.dtype == "bf16" else "f32",
            "INFERENCE_NUM_THREADS": self.threads,
            "PERFORMANCE_HINT": "LATENCY",
        }
        request = core.compile_model(model, "CPU", properties).create_infer_request()
        return lambda input_ids, attention_mask: request.infer(
            {"input_ids": input_ids, "attention_mask": attention_mask})[OUTPUT].copy()

    def check_request(self, layer=None, pooling: str | None = None, layer_combine: str = "mean",
                      batch_size: int = 1, whiten: bool = True, dim: int | None = None) -> None:
        """Refuse, before any work, what the graph cannot give: it has one layer and one pooling baked in
        (`layer_combine` is accepted as `Embedder.check_request` accepts it; one layer has nothing to combine)."""
        if batch_size < 1:
            raise ConfigError(f"batch_size={batch_size} must be at least 1.")
        if layer is not None and not (isinstance(layer, int) and not isinstance(layer, bool)
                                      and -(self.num_layers + 1) <= layer <= self.num_layers
                                      and layer % (self.num_layers + 1) == self.layer):
            raise ConfigError(f"this {self.backend} graph was exported at layer {self.layer} (of {self.num_layers}); "
                              f"drop --layer, or export the layer you want with maskae export --layer {layer}.")
        if pooling is not None and pooling != self.pooling:
            raise ConfigError(f"this {self.backend} graph was exported with {self.pooling} pooling, not {pooling}; "
                              f"drop --pooling, or export again with --pooling {pooling}.")
        if not whiten and self.whitened:
            raise ConfigError(f"this {self.backend} graph has the model's whitening inside it; export the model "
                              "again after removing its whitening to get raw vectors.")
        if dim is not None:
            if not self.whitened:
                raise ConfigError(f"--dim {dim} keeps the top directions of a whitening, and this {self.backend} graph "
                                  "has none; whiten the model (maskae whiten) and export it again, or drop --dim.")
            if not 1 <= dim <= self.config["dimension"]:
                raise ConfigError(f"--dim {dim} is out of range: the graph gives {self.config['dimension']} "
                                  f"directions; choose 1 to {self.config['dimension']}.")

    def embed(
        self,
        texts: Sequence[str] | str,
        layer=None,
        pooling: str | None = None,
        normalize: bool = False,
        batch_size: int = 32,
        max_length: int | None = None,
        show_progress: bool = False,
        layer_combine: str = "mean",
        whiten: bool = True,
        dim: int | None = None,
    ) -> np.ndarray:
        """Embed `texts` as the exported graph does; `normalize` adds L2 normalisation to a graph without it,
        and `dim` keeps the top directions of its whitening (a graph that normalised is normalised again)."""
        self.check_request(layer, pooling, layer_combine, batch_size, whiten, dim)
        texts = check_texts(texts)
        token_ids = tokenize(self.tokenizer, texts, max_length or self.max_length, self.lowercase)
        padding = pad_id(self.tokenizer)
        result = np.empty((len(texts), self.config["dimension"]), dtype=np.float32)
        for rows, batch in in_length_order(token_ids, batch_size, show_progress):
            input_ids, attention_mask = pad_batch(batch, padding)
            result[rows] = self._run(input_ids.numpy(), attention_mask.numpy())
        if dim is not None:
            result = np.ascontiguousarray(result[:, :dim])
        if (normalize and not self.normalized) or (dim is not None and self.normalized):
            result /= np.maximum(np.linalg.norm(result, axis=1, keepdims=True), 1e-12)
        return result


def _check_signature(path: Path, inputs: list[str], outputs: list[str]) -> None:
    """A graph that another tool wrote (token outputs, other input names) would fail mid-corpus, or worse."""
    if sorted(inputs) != sorted(INPUTS) or OUTPUT not in outputs:
        raise CheckpointError(
            f"{path} is not a maskae sentence graph: it takes {', '.join(inputs) or 'nothing'} and gives "
            f"{', '.join(outputs) or 'nothing'}, not {' and '.join(INPUTS)} to {OUTPUT}; export the model with "
            "maskae export --onnx or --openvino."
        )


def _short(error: BaseException, limit: int = 200) -> str:
    text = " ".join(str(error).split())
    return text[:limit] + ("..." if len(text) > limit else "")
