"""One small adapter per supported encoder family.

An adapter knows where a stock `*ForMaskedLM` keeps its embeddings, layer list and MLM head, how to
build one more layer of that kind, and what each layer needs besides hidden states (an attention
mask in the right format, ModernBERT's rotary embeddings and global/local masks). maskae runs the
stock modules themselves, so weights map one to one onto the stock classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from transformers import PreTrainedConfig
from transformers.activations import gelu, get_activation
from transformers.masking_utils import create_bidirectional_mask

from .errors import UnsupportedBackboneError


def _bidirectional_context(
    base: nn.Module, rotary: nn.Module | None, hidden: torch.Tensor, attention_mask: torch.Tensor | None
) -> dict:
    mask = create_bidirectional_mask(config=base.config, inputs_embeds=hidden, attention_mask=attention_mask)
    return {"attention_mask": mask}


def _modernbert_context(
    base: nn.Module, rotary: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor | None
) -> dict:
    from transformers.masking_utils import create_bidirectional_sliding_window_mask

    kwargs = {"config": base.config, "inputs_embeds": hidden, "attention_mask": attention_mask}
    position_ids = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
    builders = {"full_attention": create_bidirectional_mask, "sliding_attention": create_bidirectional_sliding_window_mask}
    masks = {kind: builders[kind](**kwargs) for kind in rotary.rope_type}
    # `rotary` is built from the whole stack's config: the encoder alone may lack the decoder's layer kinds.
    return {"masks": masks, "rotary": {kind: rotary(hidden, position_ids, kind) for kind in masks}}


def _run_plain_layer(layer: nn.Module, hidden: torch.Tensor, context: dict) -> torch.Tensor:
    return layer(hidden, context["attention_mask"])


def _run_modernbert_layer(layer: nn.Module, hidden: torch.Tensor, context: dict) -> torch.Tensor:
    kind = layer.attention_type
    return layer(hidden, attention_mask=context["masks"][kind], position_embeddings=context["rotary"][kind])


def _run_bert_layer_at_targets(
    layer: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor | None, targets: torch.Tensor
) -> torch.Tensor:
    """A BERT-style layer's output at the `targets` positions only, as [num_targets, hidden] in the
    order of `hidden[targets]`. Keys and values still come from every token; the queries, the
    attention output and the feed-forward block, most of the layer's cost, run only where the head
    will read. This is the top layer of a sparse-prediction step: other positions are never used."""
    batch, _, width = hidden.shape
    attention = layer.attention.self
    heads, head_dim = attention.num_attention_heads, attention.attention_head_size
    counts = targets.sum(dim=1)
    most = int(counts.max())
    # Each row's target positions first, in order (a stable sort), padded to the row with the most.
    positions = torch.argsort((~targets).to(torch.uint8), dim=1, stable=True)[:, :most]
    real = torch.arange(most, device=hidden.device) < counts.unsqueeze(1)
    rows = hidden.gather(1, positions.unsqueeze(-1).expand(batch, most, width))

    def split_heads(x: torch.Tensor) -> torch.Tensor:
        return x.view(batch, -1, heads, head_dim).transpose(1, 2)

    key_mask = None
    if attention_mask is not None and not bool(attention_mask.all()):
        key_mask = attention_mask.bool()[:, None, None, :]
    context = torch.nn.functional.scaled_dot_product_attention(
        split_heads(attention.query(rows)),
        split_heads(attention.key(hidden)),
        split_heads(attention.value(hidden)),
        attn_mask=key_mask,
        dropout_p=attention.dropout.p if layer.training else 0.0,
        scale=attention.scaling,
    )
    context = context.transpose(1, 2).reshape(batch, most, width)[real]
    attended = layer.attention.output(context, rows[real])
    return layer.output(layer.intermediate(attended), attended)


class DistilBertMLMHead(nn.Module):
    """DistilBERT's MLM head, which the stock class keeps inline; same parameter names."""

    def __init__(self, config: PreTrainedConfig):
        super().__init__()
        self.vocab_transform = nn.Linear(config.dim, config.dim)
        self.activation = get_activation(config.activation)
        self.vocab_layer_norm = nn.LayerNorm(config.dim, eps=1e-12)
        self.vocab_projector = nn.Linear(config.dim, config.vocab_size)

    def features(self, hidden: torch.Tensor) -> torch.Tensor:
        """Everything before the vocabulary projection."""
        return self.vocab_layer_norm(self.activation(self.vocab_transform(hidden)))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.vocab_projector(self.features(hidden))


class ModernBertMLMHead(nn.Module):
    def __init__(self, config: PreTrainedConfig):
        super().__init__()
        from transformers.models.modernbert.modeling_modernbert import (
            ModernBertPredictionHead,
        )

        self.head = ModernBertPredictionHead(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=config.decoder_bias)

    def features(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.features(hidden))


class ElectraMLMHead(nn.Module):
    def __init__(self, config: PreTrainedConfig):
        super().__init__()
        from transformers.models.electra.modeling_electra import (
            ElectraGeneratorPredictions,
        )

        self.generator_predictions = ElectraGeneratorPredictions(config)
        self.generator_lm_head = nn.Linear(config.embedding_size, config.vocab_size)

    def features(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.generator_predictions(hidden)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.generator_lm_head(self.features(hidden))


class SingleModuleHead(nn.Module):
    """A head that the stock class keeps as one attribute (BERT's `cls`, RoBERTa's `lm_head`).
    `features` runs the stock head up to, not including, its vocabulary projection."""

    def __init__(self, attr: str, module: nn.Module, features: Callable[[nn.Module, torch.Tensor], torch.Tensor]):
        super().__init__()
        self.attr = attr
        self.add_module(attr, module)
        self._features = features

    def features(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._features(getattr(self, self.attr), hidden)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return getattr(self, self.attr)(hidden)


def _bert_head_features(cls: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    return cls.predictions.transform(hidden)


def _roberta_head_features(lm_head: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    # RobertaLMHead.forward without its last line (`self.decoder(x)`).
    return lm_head.layer_norm(gelu(lm_head.dense(hidden)))


def _single_module_head(
    attr: str, module_path: str, class_name: str, features: Callable[[nn.Module, torch.Tensor], torch.Tensor]
) -> Callable[[PreTrainedConfig], nn.Module]:
    def build(config: PreTrainedConfig) -> nn.Module:
        import importlib

        return SingleModuleHead(attr, getattr(importlib.import_module(module_path), class_name)(config), features)

    return build


@dataclass(frozen=True)
class Backbone:
    """Where the pieces of one family's stock `*ForMaskedLM` live, and how to run its layers."""

    model_type: str
    module: str  # transformers module holding the classes
    base_class: str  # stock base model, e.g. BertModel
    mlm_class: str  # stock MLM model, e.g. BertForMaskedLM
    base_prefix: str  # attribute of the MLM model holding the base model
    layers_attr: str  # dotted path of the layer list inside the base model
    layer_class: str
    build_head: Callable[[PreTrainedConfig], nn.Module]
    head_output: str  # name of the vocabulary projection inside the head (tied to the word embeddings)
    word_embeddings: str  # dotted path inside the base model
    base_kwargs: tuple[tuple[str, Any], ...] = ()
    final_norm: str | None = None  # applied to the top of the stack, before the head (ModernBERT)
    rotary_class: str | None = None  # rotary position embedding shared by all layers (ModernBERT)
    layer_takes_index: bool = True
    context: Callable = _bidirectional_context
    run_layer: Callable = _run_plain_layer
    tied_extra: tuple[tuple[str, str], ...] = ()  # further tied pairs inside the head (target, source)
    token_types: bool = True  # embeddings take token_type_ids
    # The top layer computed only at the target positions (sparse prediction); None runs it densely.
    run_layer_at_targets: Callable | None = None

    def _load(self, name: str) -> type:
        import importlib

        return getattr(importlib.import_module(self.module), name)

    def make_base(self, config: PreTrainedConfig) -> nn.Module:
        return self._load(self.base_class)(config, **dict(self.base_kwargs))

    def make_layer(self, config: PreTrainedConfig, index: int) -> nn.Module:
        layer_cls = self._load(self.layer_class)
        return layer_cls(config, index) if self.layer_takes_index else layer_cls(config)

    def make_rotary(self, config: PreTrainedConfig) -> nn.Module | None:
        return self._load(self.rotary_class)(config=config) if self.rotary_class else None

    def mlm_model_class(self) -> type:
        return self._load(self.mlm_class)

    def layers(self, base: nn.Module) -> nn.ModuleList:
        return base.get_submodule(self.layers_attr)

    def embed(self, base: nn.Module, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        kwargs = {"token_type_ids": token_type_ids} if self.token_types and token_type_ids is not None else {}
        hidden = base.embeddings(input_ids=input_ids, **kwargs)
        if self.model_type == "electra" and hasattr(base, "embeddings_project"):
            hidden = base.embeddings_project(hidden)
        return hidden

    def stock_key(self, key: str, split_layer: int) -> str | None:
        """Name in the stock `*ForMaskedLM` of a `MaskAEForMaskedLM` parameter (None: no stock equivalent)."""
        if key.startswith("maskae.backbone."):
            return f"{self.base_prefix}.{key[len('maskae.backbone.'):]}"
        if key.startswith("decoder."):
            index, rest = key[len("decoder."):].split(".", 1)
            return f"{self.base_prefix}.{self.layers_attr}.{split_layer + int(index)}.{rest}"
        if key.startswith("head."):
            return key[len("head."):]
        return None

    def maskae_key(self, stock_key: str, split_layer: int) -> str | None:
        """Inverse of `stock_key`; None for stock parameters that maskae does not use (e.g. a pooler)."""
        prefix = f"{self.base_prefix}."
        if not stock_key.startswith(prefix):
            return f"head.{stock_key}"
        rest = stock_key[len(prefix):]
        layers = f"{self.layers_attr}."
        if rest.startswith(layers):
            index, tail = rest[len(layers):].split(".", 1)
            if int(index) >= split_layer:
                return f"decoder.{int(index) - split_layer}.{tail}"
        if rest.startswith("pooler."):
            return None
        return f"maskae.backbone.{rest}"


_BERT_HEAD = _single_module_head(
    "cls", "transformers.models.bert.modeling_bert", "BertOnlyMLMHead", _bert_head_features
)
_ROBERTA_HEAD = _single_module_head(
    "lm_head", "transformers.models.roberta.modeling_roberta", "RobertaLMHead", _roberta_head_features
)
_XLMR_HEAD = _single_module_head(
    "lm_head", "transformers.models.xlm_roberta.modeling_xlm_roberta", "XLMRobertaLMHead", _roberta_head_features
)

BACKBONES: dict[str, Backbone] = {
    b.model_type: b
    for b in [
        Backbone(
            "bert", "transformers.models.bert.modeling_bert", "BertModel", "BertForMaskedLM", "bert",
            "encoder.layer", "BertLayer", _BERT_HEAD, "cls.predictions.decoder", "embeddings.word_embeddings",
            base_kwargs=(("add_pooling_layer", False),),
            tied_extra=(("cls.predictions.decoder.bias", "cls.predictions.bias"),),
            run_layer_at_targets=_run_bert_layer_at_targets,
        ),
        Backbone(
            "roberta", "transformers.models.roberta.modeling_roberta", "RobertaModel", "RobertaForMaskedLM",
            "roberta", "encoder.layer", "RobertaLayer", _ROBERTA_HEAD, "lm_head.decoder",
            "embeddings.word_embeddings", base_kwargs=(("add_pooling_layer", False),),
            tied_extra=(("lm_head.decoder.bias", "lm_head.bias"),), run_layer_at_targets=_run_bert_layer_at_targets,
        ),
        Backbone(
            "xlm-roberta", "transformers.models.xlm_roberta.modeling_xlm_roberta", "XLMRobertaModel",
            "XLMRobertaForMaskedLM", "roberta", "encoder.layer", "XLMRobertaLayer", _XLMR_HEAD,
            "lm_head.decoder", "embeddings.word_embeddings", base_kwargs=(("add_pooling_layer", False),),
            tied_extra=(("lm_head.decoder.bias", "lm_head.bias"),), run_layer_at_targets=_run_bert_layer_at_targets,
        ),
        Backbone(
            "electra", "transformers.models.electra.modeling_electra", "ElectraModel", "ElectraForMaskedLM",
            "electra", "encoder.layer", "ElectraLayer", ElectraMLMHead, "generator_lm_head",
            "embeddings.word_embeddings", run_layer_at_targets=_run_bert_layer_at_targets,
        ),
        Backbone(
            "distilbert", "transformers.models.distilbert.modeling_distilbert", "DistilBertModel",
            "DistilBertForMaskedLM", "distilbert", "transformer.layer", "TransformerBlock", DistilBertMLMHead,
            "vocab_projector", "embeddings.word_embeddings", layer_takes_index=False, token_types=False,
        ),
        Backbone(
            "modernbert", "transformers.models.modernbert.modeling_modernbert", "ModernBertModel",
            "ModernBertForMaskedLM", "model", "layers", "ModernBertEncoderLayer", ModernBertMLMHead, "decoder",
            "embeddings.tok_embeddings", final_norm="final_norm", rotary_class="ModernBertRotaryEmbedding",
            context=_modernbert_context,
            run_layer=_run_modernbert_layer, token_types=False,
        ),
    ]
}


def get_backbone(config: PreTrainedConfig) -> Backbone:
    """The adapter for a stock config, or a clear error naming the families maskae supports."""
    model_type = getattr(config, "model_type", None)
    if model_type not in BACKBONES:
        raise UnsupportedBackboneError(
            f"maskae has no adapter for model_type {model_type!r}; supported families: "
            f"{', '.join(sorted(BACKBONES))}. Add a Backbone entry in maskae/backbones.py to support it."
        )
    return BACKBONES[model_type]
