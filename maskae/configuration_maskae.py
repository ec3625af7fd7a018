"""`MaskAEConfig`: a stock encoder config plus where to split it and what decodes the code.

The stock config (`base_config`) describes the whole stack that maskae runs: `split_layer` encoder
layers followed by `decoder_layers` decoder layers of the same kind. Keeping one stock config for
the whole stack is what makes a bottleneck-free model exportable to the stock `*ForMaskedLM` class.
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .errors import ConfigError

DECODERS = ("layers", "linear", "transformer")
BOTTLENECKS = ("projection", "sentence")
BOTTLENECK_POOLINGS = ("mean", "cls")  # how the sentence bottleneck pools its one vector
OBJECTIVES = ("mlm", "rtd")
GENERATOR_KEYS = ("hidden_size", "num_attention_heads", "intermediate_size")  # what a narrower generator rewrites


def num_layers(config: PreTrainedConfig) -> int:
    """Depth of a stock encoder config, whatever the family calls it."""
    for key in ("num_hidden_layers", "n_layers", "num_layers"):
        if getattr(config, key, None) is not None:
            return int(getattr(config, key))
    raise ConfigError(f"cannot tell how many layers a {type(config).__name__} has; set num_hidden_layers in it.")


def with_num_layers(config: PreTrainedConfig, n: int) -> PreTrainedConfig:
    """A copy of `config` with `n` layers (per-layer lists such as ModernBERT's `layer_types` follow)."""
    values = config.to_dict()
    key = "n_layers" if "n_layers" in values else "num_hidden_layers"
    values[key] = n
    layer_types = values.get("layer_types")
    if isinstance(layer_types, list) and layer_types:
        period = next((i for i in range(1, len(layer_types)) if layer_types[i] == layer_types[0]), len(layer_types))
        values["layer_types"] = [layer_types[i % period] if i >= len(layer_types) else layer_types[i] for i in range(n)]
    new = type(config).from_dict(values)
    new._attn_implementation = config._attn_implementation
    return new


@strict
class MaskAEConfig(PreTrainedConfig):
    r"""
    base_config (`dict` or `PreTrainedConfig`): the stock encoder config (BERT, RoBERTa, DistilBERT, ModernBERT, ...).
        Its layer count is normalised to `split_layer + decoder_layers`.
    split_layer (`int`): number of encoder layers; their output is the code. With decoder="layers" it may
        be 0: the encoder is then the embedding layer alone (a static embedding: no attention).
    decoder (`str`): "layers" (the backbone's remaining layers), "linear" (the MLM head only, classic BERT),
        or "transformer" (`decoder_layers` freshly initialised layers of the backbone's kind).
    decoder_layers (`int`, *optional*): layers after the split; derived for "layers" and "linear".
    bottleneck (`str`, *optional*): None, "projection" (per-token hidden -> d -> hidden) or "sentence"
        (the decoder sees one pooled vector).
    bottleneck_dim (`int`, *optional*): width d of the projection bottleneck.
    pooling (`str`): how the sentence bottleneck and default embeddings pool tokens: "mean" or "cls".
    sparse_prediction (`bool`): with labels, project to the vocabulary only at target positions
        (logits then have shape [num_targets, vocab]).
    fused_loss (`bool`): under sparse prediction, in training mode with gradients on, compute the vocabulary
        projection and cross-entropy chunk by chunk without storing the logits (faster, leaner; the
        output's logits are then None). Needs fp32 and no autocast; otherwise the plain path runs.
    decoder_mask_prob (`float`): for the sentence bottleneck, fraction of the decoder's copy that is masked.
    objective (`str`): "mlm" (reconstruct the masked tokens) or "rtd" (ELECTRA's replaced-token detection:
        a small generator fills the masked positions, and a binary head on the decoder says, for every
        token, whether it was replaced; see `MaskAEForReplacedTokenDetection`).
    generator_hidden_size (`int`, *optional*): "rtd" only: width of the generator; None is a quarter of
        the hidden size (at least 32), the size ELECTRA found best (Clark et al. 2020, section 3.2).
    generator_layers (`int`, *optional*): "rtd" only: depth of the generator; None is the whole stack's.
    rtd_weight (`float`): "rtd" only: weight of the detection loss against the generator's MLM loss
        (ELECTRA's lambda, 50).
    layer_chunk_tokens (`int`, *optional*): run each layer on a few whole sequences at a time, about this
        many tokens per chunk. The result is the same (attention stays within a sequence); on a CPU the
        chunk's activations stay in cache, which measured 6-8% faster per layer at 1024 tokens. None:
        1024 on a CPU, unchunked on accelerators, where big kernels are what counts; 0: never chunk.
    """

    model_type = "maskae"
    sub_configs_defaults = {
        "base_config": SubConfigSpec(config_class=AutoConfig, model_type="bert"),
    }

    base_config: dict | PreTrainedConfig | None = None
    split_layer: int | None = None
    decoder: str = "layers"
    decoder_layers: int | None = None
    bottleneck: str | None = None
    bottleneck_dim: int | None = None
    pooling: str = "mean"
    sparse_prediction: bool = False
    fused_loss: bool = True
    decoder_mask_prob: float = 0.5
    objective: str = "mlm"
    generator_hidden_size: int | None = None
    generator_layers: int | None = None
    rtd_weight: float = 50.0
    layer_chunk_tokens: int | None = None
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        base = self.base_config
        total = num_layers(base)
        if self.split_layer is None:
            self.split_layer = total if self.decoder == "linear" else total // 2
        if self.decoder not in DECODERS:
            raise ConfigError(f"unknown decoder {self.decoder!r}; use one of {', '.join(DECODERS)}.")
        if self.bottleneck not in (None, *BOTTLENECKS):
            raise ConfigError(
                f"unknown bottleneck {self.bottleneck!r}; use one of {', '.join(BOTTLENECKS)}, or none."
            )
        if self.bottleneck == "projection" and not (self.bottleneck_dim and self.bottleneck_dim > 0):
            raise ConfigError("bottleneck='projection' needs a positive bottleneck_dim, e.g. bottleneck_dim=64.")
        if self.pooling not in BOTTLENECK_POOLINGS:
            raise ConfigError(f"unknown pooling {self.pooling!r}; use one of {', '.join(BOTTLENECK_POOLINGS)}.")
        if self.decoder == "layers":
            limit = total if self.decoder_layers is None else self.split_layer + self.decoder_layers
            if not 0 <= self.split_layer <= limit:
                raise ConfigError(
                    f"split_layer={self.split_layer} is out of range for a {limit}-layer backbone; "
                    f"choose 0 <= split_layer <= {limit}."
                )
            self.decoder_layers = limit - self.split_layer
        elif self.decoder == "linear":
            if self.split_layer < 1 or (self.decoder_layers is None and self.split_layer > total):
                raise ConfigError(
                    f"split_layer={self.split_layer} is out of range for a {total}-layer backbone; "
                    f"choose 1 <= split_layer <= {total}."
                )
            self.decoder_layers = 0
        else:
            if self.split_layer < 1:
                raise ConfigError(f"split_layer={self.split_layer} must be at least 1.")
            if not self.decoder_layers or self.decoder_layers < 1:
                raise ConfigError("decoder='transformer' needs decoder_layers >= 1, e.g. decoder_layers=2.")
        if self.layer_chunk_tokens is not None and self.layer_chunk_tokens < 0:
            raise ConfigError(f"layer_chunk_tokens={self.layer_chunk_tokens} must be >= 0 (0 turns chunking off).")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"unknown objective {self.objective!r}; use one of {', '.join(OBJECTIVES)}.")
        if self.decoder == "linear" and self.bottleneck == "sentence":
            raise ConfigError("bottleneck='sentence' needs a decoder with attention; use decoder='transformer'.")
        wanted = self.split_layer + self.decoder_layers
        if wanted != total:
            self.base_config = with_num_layers(base, wanted)
        self.tie_word_embeddings = bool(getattr(self.base_config, "tie_word_embeddings", True))
        if self.objective == "rtd":
            self._check_rtd()

    def _check_rtd(self) -> None:
        """Checks the RTD keys and writes their defaults out, so that a saved config rebuilds the same generator."""
        base = self.base_config
        if self.bottleneck == "sentence":
            raise ConfigError("objective='rtd' labels every token, which a sentence bottleneck's decoder cannot see; "
                              "use no bottleneck or bottleneck='projection'.")
        missing = [key for key in GENERATOR_KEYS if not hasattr(base, key)]
        if missing:
            raise ConfigError(f"objective='rtd' builds a narrower generator of the backbone's family, but a "
                              f"{type(base).__name__} has no {missing[0]}; use a BERT-, RoBERTa-, ELECTRA- or "
                              "ModernBERT-style backbone.")
        for key in ("generator_hidden_size", "generator_layers"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"{key}={value} must be at least 1, or None for the default.")
        if self.rtd_weight <= 0:
            raise ConfigError(f"rtd_weight={self.rtd_weight} must be positive (ELECTRA uses 50).")
        self.generator_hidden_size = self.generator_hidden_size or max(32, self.hidden_size // 4)
        self.generator_layers = self.generator_layers or num_layers(base)

    def generator_base_config(self) -> PreTrainedConfig:
        """The stock config of the RTD generator: the backbone's family, narrower (heads of 64 dimensions
        where the width allows, a feed-forward block 4x wide)."""
        width = self.generator_hidden_size
        values = with_num_layers(self.base_config, self.generator_layers).to_dict()
        values.update(hidden_size=width, num_attention_heads=max(1, width // 64), intermediate_size=4 * width)
        config = type(self.base_config).from_dict(values)
        config._attn_implementation = self.base_config._attn_implementation
        return config

    @property
    def hidden_size(self) -> int:
        return int(getattr(self.base_config, "hidden_size", None) or self.base_config.dim)

    @property
    def vocab_size(self) -> int:
        return int(self.base_config.vocab_size)

    @property
    def code_dim(self) -> int:
        """Width of the code: the bottleneck's when there is one, else the hidden size."""
        return self.bottleneck_dim if self.bottleneck == "projection" else self.hidden_size
