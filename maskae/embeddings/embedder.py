"""Sentence and token embeddings from any layer of a MaskAE model or a stock encoder.

Extracting layer k runs only the embeddings and the first k layers (early exit), so a middle layer
costs a fraction of a full forward pass, and layer 0 (a static embedding, such as a distilled
`split_layer` 0 model) is a lookup and a mean. Texts are tokenised once, sorted by token length so that
each batch carries almost no padding, and returned in input order.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from transformers import (
    AutoModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import cached_file

from ..auto_registration import register_auto_classes
from ..backbones import BACKBONES, get_backbone
from ..configuration_maskae import num_layers
from ..errors import ConfigError, DataError, TokenizerError
from ..loading import load_checked
from ..modeling_maskae import MaskAEModel, MaskAEPreTrainedModel, pool
from ..utils.host import bf16_unit_or_warn
from .choices import BACKENDS, DTYPES, GRAPH_BACKENDS, LAYER_COMBINES, POOLINGS
from .graphs import GraphEmbedder, is_graph_export
from .inputs import (
    check_texts,
    in_length_order,
    load_tokenizer,
    pad_batch,
    pad_id,
    tokenize,
)
from .whitening import Whitening, check_dim, whitening_from_vectors

register_auto_classes()  # maskae checkpoints load through the Auto classes and save with their auto_map


logger = logging.getLogger(__name__)
LayerSpec = int | Sequence[int] | None


def _sentence_transformers_settings(name_or_path: str) -> dict:
    """A sentence-transformers checkpoint's own `max_seq_length` / `do_lower_case`, if it has them."""
    try:
        path = cached_file(
            name_or_path,
            "sentence_bert_config.json",
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
        )
    except OSError:
        return {}
    if path is None:
        return {}
    return json.loads(Path(path).read_text())


def _pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    if pooling == "max":
        padding = ~attention_mask.bool().unsqueeze(-1)
        return hidden.masked_fill(padding, torch.finfo(hidden.dtype).min).amax(dim=1)
    return pool(hidden, attention_mask, pooling)


class Embedder:
    """A loaded encoder and its tokenizer, ready to turn texts into vectors from any layer.

    Load once with `Embedder.from_pretrained` and call `embed` many times (the CLI does this per chunk).
    Works with MaskAE models (whose default output is the code), with the stock encoders of the
    families in `maskae.backbones` (run layer by layer, so early exit is exact), and with any other
    Hugging Face encoder (through `output_hidden_states`, without early exit).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int | None = None,
        lowercase: bool = False,
        whitening: Whitening | None = None,
        dtype: str | None = None,
    ):
        if dtype not in (None, *DTYPES):
            raise ConfigError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}.")
        if isinstance(model, MaskAEPreTrainedModel):
            model = model.get_encoder()
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.lowercase = lowercase
        self.whitening = whitening
        self.is_maskae = isinstance(model, MaskAEModel)
        config = model.config
        if self.is_maskae:
            self.num_layers = config.split_layer
            self.adapter = None
        else:
            self.adapter = get_backbone(config) if getattr(config, "model_type", None) in BACKBONES else None
            self.num_layers = num_layers(config)
        if max_length is None:
            limits = [tokenizer.model_max_length]
            stock_config = config.base_config if self.is_maskae else config
            limits.append(getattr(stock_config, "max_position_embeddings", None))
            max_length = min(limit for limit in limits if limit is not None)
        self.max_length = max_length
        bf16 = dtype == "bf16" and (model.device.type != "cpu" or bf16_unit_or_warn("embedding"))
        self.dtype = "bf16" if bf16 else "fp32"

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        device: str | torch.device | None = None,
        tokenizer: PreTrainedTokenizerBase | str | Path | None = None,
        backend: str | None = None,
        dtype: str | None = None,
    ) -> "Embedder | GraphEmbedder":
        """Load a MaskAE or stock checkpoint (directory or Hub id) and its tokenizer.

        `backend` "onnx" or "openvino" loads a graph that `maskae export --onnx/--openvino` wrote (a
        `GraphEmbedder`, which embeds the same way); None picks the graph in such a directory, torch
        otherwise. `dtype` "bf16" runs the matmuls in bf16 where the CPU has a bf16 unit (or on a GPU).
        """
        if backend not in (None, *BACKENDS):
            raise ConfigError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}.")
        if is_graph_export(name_or_path):
            if backend == "torch":
                raise ConfigError(f"{name_or_path} holds exported graphs, not PyTorch weights; pass --backend onnx or "
                                  "openvino, or the model directory it was exported from.")
            return GraphEmbedder.from_pretrained(name_or_path, backend, dtype)
        if backend in GRAPH_BACKENDS:
            raise ConfigError(f"{name_or_path} holds no {backend} graph; export one first with maskae export "
                              f"{name_or_path} --out DIR --{backend} [--layer K], then embed DIR.")
        # A stock checkpoint saved from a task model has no pooler, which embedding never runs.
        model = load_checked(AutoModel, name_or_path, fresh=("pooler.",), what="a model",
                             fix="pass a directory with config.json and matching weights, or a Hub model id.")
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        return cls.from_model(model.to(device), tokenizer, dtype=dtype)

    @classmethod
    def from_model(
        cls,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase | str | Path | None = None,
        dtype: str | None = None,
    ) -> "Embedder":
        """Wrap a loaded model; its tokenizer and sentence-transformers settings come from `model.name_or_path`.

        A sentence-transformers checkpoint's `max_seq_length` and `do_lower_case` are honoured, as
        sentence-transformers itself does, so that both produce the same vectors; a whitening saved
        beside the model (`maskae.fit_whitening`) is loaded and applied to matching requests.
        """
        source = tokenizer if tokenizer is not None else model.name_or_path
        if not source:
            raise TokenizerError("this model does not say where its tokenizer is; pass tokenizer=... to embed.")
        settings = _sentence_transformers_settings(model.name_or_path) if model.name_or_path else {}
        return cls(
            model,
            load_tokenizer(source),
            max_length=settings.get("max_seq_length"),
            lowercase=bool(settings.get("do_lower_case", False)),
            whitening=Whitening.load(model.name_or_path) if model.name_or_path else None,
            dtype=dtype,
        )

    @property
    def device(self) -> torch.device:
        return self.model.device

    def resolve_layers(self, layer: LayerSpec) -> list[int] | None:
        """Layer indices as in `hidden_states` (0 = embeddings, negatives count from the top); None means the
        MaskAE code, or the last layer of a stock encoder."""
        if layer is None:
            return None if self.is_maskae else [self.num_layers]
        wanted = [layer] if isinstance(layer, int) else list(layer)
        if not wanted:
            raise ConfigError("layer=[] selects no layer; pass an int, a non-empty list of ints, or None.")
        top = self.num_layers
        what = "encoder (its split_layer)" if self.is_maskae else "model"
        resolved = []
        for k in wanted:
            if isinstance(k, bool) or not isinstance(k, int) or not -(top + 1) <= k <= top:
                raise ConfigError(
                    f"layer={k!r} is out of range: this {what} has {top} layers; choose an int from 0 "
                    f"(the embeddings) to {top}, or from -{top + 1} to -1 counting from the top."
                )
            resolved.append(k % (top + 1))
        return resolved

    def _hidden_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, layers: list[int]
    ) -> dict[int, torch.Tensor]:
        """The hidden states at `layers`, running nothing above the highest of them."""
        depth = max(layers)
        if depth == 0 and (self.is_maskae or self.adapter is not None):
            return {0: self._static(input_ids)}
        if self.is_maskae:
            _, states, _ = self.model.run(input_ids, attention_mask, num_layers=depth, output_hidden_states=True)
            return {k: states[k] for k in layers}
        if self.adapter is None:
            states = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
            return {k: states.hidden_states[k] for k in layers}
        adapter, base = self.adapter, self.model
        hidden = adapter.embed(base, input_ids)
        context = adapter.context(base, getattr(base, "rotary_emb", None), hidden, attention_mask)
        states = {0: hidden}
        for index, layer in enumerate(adapter.layers(base)[:depth], start=1):
            hidden = adapter.run_layer(layer, hidden, context)
            states[index] = hidden
        if adapter.final_norm and depth == self.num_layers:
            # The stock model's last hidden state (hidden_states[L]) is taken after its final norm.
            states[depth] = getattr(base, adapter.final_norm)(hidden)
        return {k: states[k] for k in layers}

    def _static(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Layer 0 alone: the embedding layer's lookup, with no attention mask or rotary tables to build."""
        if self.is_maskae:
            return self.model.backbone_adapter.embed(self.model.backbone, input_ids)
        return self.adapter.embed(self.model, input_ids)

    def _represent(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, layers: list[int] | None, layer_combine: str
    ) -> torch.Tensor:
        """[batch, seq, dim] token vectors (or [batch, dim] for a sentence-bottleneck code)."""
        if layers is None:
            hidden = self._static(input_ids) if self.num_layers == 0 else self.model.run(input_ids, attention_mask)[0]
            return self.model.encode(hidden, attention_mask)
        states = self._hidden_states(input_ids, attention_mask, layers)
        chosen = [states[k] for k in layers]
        if len(chosen) == 1:
            return chosen[0]
        return torch.cat(chosen, dim=-1) if layer_combine == "concat" else torch.stack(chosen).mean(dim=0)

    def pooled(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, layers: list[int] | None, pooling: str,
        layer_combine: str = "mean",
    ) -> torch.Tensor:
        """One batch's vectors before whitening: [batch, dim], or [batch, seq, dim] with pooling "none".
        Exported graphs trace this same function, so they compute what `embed` does."""
        vectors = self._represent(input_ids, attention_mask, layers, layer_combine)
        sentence_code = layers is None and self.model.config.bottleneck == "sentence"
        if sentence_code or pooling == "none":
            return vectors
        return _pool(vectors, attention_mask, pooling)

    def tokenize(self, texts: list[str], max_length: int | None = None) -> list[list[int]]:
        """Token ids as this embedder feeds them to the model (its lower-casing and truncation)."""
        return tokenize(self.tokenizer, texts, max_length or self.max_length, self.lowercase)

    def _pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        input_ids, attention_mask = pad_batch(rows, pad_id(self.tokenizer))
        return input_ids.to(self.device), attention_mask.to(self.device)

    def whitening_for(self, layer: LayerSpec, pooling: str) -> Whitening | None:
        """The stored whitening if it was fitted on the embeddings this request asks for, else None."""
        w = self.whitening
        if w is None or pooling == "none" or not (isinstance(layer, int) or layer is None):
            return None
        sentence_code = layer is None and self.is_maskae and self.model.config.bottleneck == "sentence"
        if self.resolve_layers(layer) != self.resolve_layers(w.layer) or not (sentence_code or pooling == w.pooling):
            return None
        return w

    def check_request(
        self, layer: LayerSpec, pooling: str, layer_combine: str = "mean", batch_size: int = 1, whiten: bool = True,
        dim: int | None = None,
    ) -> list[int] | None:
        """Validate embedding arguments before any work starts; returns the resolved layers."""
        if pooling not in POOLINGS:
            raise ConfigError(f"unknown pooling {pooling!r}; use one of {', '.join(POOLINGS)}.")
        if layer_combine not in LAYER_COMBINES:
            raise ConfigError(f"unknown layer_combine {layer_combine!r}; use one of {', '.join(LAYER_COMBINES)}.")
        if batch_size < 1:
            raise ConfigError(f"batch_size={batch_size} must be at least 1.")
        layers = self.resolve_layers(layer)
        if layers is None and self.model.config.bottleneck == "sentence" and pooling == "none":
            raise ConfigError(
                "this model's code is one pooled vector per text (sentence bottleneck), so pooling='none' has no "
                "tokens to return; pass a layer (e.g. layer=-1) for per-token vectors."
            )
        if dim is not None:
            check_dim(dim, self.whitening_for(layer, pooling) if whiten else None)
        return layers

    @torch.inference_mode()
    def embed(
        self,
        texts: Sequence[str] | str,
        layer: LayerSpec = None,
        pooling: str | None = None,
        normalize: bool = False,
        batch_size: int = 32,
        max_length: int | None = None,
        show_progress: bool = False,
        layer_combine: str = "mean",
        whiten: bool = True,
        dim: int | None = None,
    ) -> np.ndarray:
        """Embed `texts`; see `maskae.embed` for the arguments."""
        pooling = pooling or "mean"
        layers = self.check_request(layer, pooling, layer_combine, batch_size, whiten, dim)
        whitening = self.whitening_for(layer, pooling) if whiten else None
        texts = check_texts(texts)
        token_ids = self.tokenize(texts, max_length)
        result = np.empty(len(texts), dtype=object) if pooling == "none" else None
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.dtype == "bf16"):
            for rows, batch in in_length_order(token_ids, batch_size, show_progress):
                input_ids, attention_mask = self._pad(batch)
                vectors = self.pooled(input_ids, attention_mask, layers, pooling, layer_combine).float()
                if whitening is not None:
                    vectors = torch.from_numpy(whitening.apply(vectors.cpu().numpy()))[:, :dim]
                if normalize:
                    vectors = F.normalize(vectors, p=2, dim=-1)
                vectors = vectors.cpu().numpy()
                if pooling == "none":
                    for i, row in enumerate(rows):
                        result[row] = vectors[i, : len(token_ids[row])]
                else:
                    if result is None:
                        result = np.empty((len(texts), vectors.shape[-1]), dtype=np.float32)
                    result[rows] = vectors
        return result


def embed(
    model_or_path: str | Path | PreTrainedModel | Embedder | GraphEmbedder,
    texts: Sequence[str] | str,
    layer: LayerSpec = None,
    pooling: str | None = None,
    normalize: bool = False,
    batch_size: int = 32,
    max_length: int | None = None,
    device: str | torch.device | None = None,
    show_progress: bool = False,
    layer_combine: str = "mean",
    tokenizer: PreTrainedTokenizerBase | str | Path | None = None,
    whiten: bool = True,
    backend: str | None = None,
    dtype: str | None = None,
    dim: int | None = None,
) -> np.ndarray:
    """Embed `texts` with a MaskAE model, any Hugging Face encoder, or a graph exported from either.

    Args:
        model_or_path: a checkpoint directory or Hub id, a loaded model (its tokenizer is loaded from
            `model.name_or_path` unless `tokenizer` is given), an `Embedder`, or a directory that
            `maskae export --onnx/--openvino` wrote (its layer, pooling and whitening are baked in).
        layer: None for a MaskAE model's code or a stock encoder's last layer; `k` for `hidden_states[k]`
            (0 = embeddings; only layers 1..k run); a list of layers, combined by `layer_combine`.
        pooling: "mean" (over real tokens; the default), "cls" (first token), "max" (over real tokens), or
            "none" for per-token vectors; a graph's own pooling when None.
        normalize: L2-normalise each vector (each token's, with pooling="none").
        max_length: truncation length; by default a sentence-transformers checkpoint's `max_seq_length`,
            else the tokenizer's and model's limit.
        layer_combine: "mean" averages the layers of a list, "concat" concatenates them.
        whiten: apply the whitening saved with the model (`maskae.fit_whitening`) when it was fitted on
            this `layer` and `pooling` (before `normalize`); False returns the raw embeddings.
        backend: "torch", "onnx" or "openvino" (see `Embedder.from_pretrained`).
        dtype: "bf16" to run bf16 matmuls where the hardware has a bf16 unit; fp32 by default.
        dim: keep the top `dim` directions of the stored whitening (before `normalize`): a shorter
            vector that keeps most of the quality; needs a whitening that matches the request.

    Returns:
        float32 array [n, dim] in input order; with pooling="none", an object array of n float32
        arrays [tokens_i, dim] (special tokens included, padding excluded).
    """
    if isinstance(model_or_path, (Embedder, GraphEmbedder)):
        embedder = model_or_path
    elif isinstance(model_or_path, PreTrainedModel):
        model = model_or_path if device is None else model_or_path.to(device)
        embedder = Embedder.from_model(model, tokenizer, dtype=dtype)
    else:
        embedder = Embedder.from_pretrained(model_or_path, device=device, tokenizer=tokenizer, backend=backend,
                                            dtype=dtype)
    return embedder.embed(
        texts,
        layer=layer,
        pooling=pooling,
        normalize=normalize,
        batch_size=batch_size,
        max_length=max_length,
        show_progress=show_progress,
        layer_combine=layer_combine,
        whiten=whiten,
        dim=dim,
    )


def fit_whitening(
    model,
    texts: Sequence[str],
    dim: int | None = None,
    layer: int | None = None,
    pooling: str = "mean",
    **embed_kwargs,
) -> Whitening:
    """Fit a whitening on the pooled embeddings of `texts` (unlabelled; text like the target task's).

    `model` is anything `maskae.embed` accepts (path, Hub id, loaded model, `Embedder`); `dim` keeps the
    top directions (default: all); `layer` and `pooling` select the embeddings, as in `maskae.embed`,
    and are stored so that only matching requests are whitened. Save it with `.save(model_dir)`.
    """
    texts = list(texts)
    if not texts:
        raise DataError("no texts to fit the whitening on; pass a non-empty unlabelled corpus.")
    vectors = embed(model, texts, layer=layer, pooling=pooling, whiten=False, **embed_kwargs)
    mean, matrix = whitening_from_vectors(vectors, dim)
    return Whitening(mean=mean, matrix=matrix, layer=layer, pooling=pooling, num_texts=len(texts))
