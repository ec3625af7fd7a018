"""MaskAE: any stock transformer encoder split at layer N into an encoder and a decoder.

    ids ──▶ embeddings + layers[0:N] ──▶ code ──▶ (bottleneck) ──▶ decoder layers ──▶ MLM head ──▶ logits

The encoder is the stock base model (e.g. `BertModel`) with N layers; the decoder is a list of
layers of the same stock class; the head is the stock MLM head. maskae runs those stock modules
itself, so a bottleneck-free model is, weight for weight, a stock `*ForMaskedLM`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoConfig, AutoModelForMaskedLM, PreTrainedModel
from transformers.utils import ModelOutput
from transformers.utils import logging as hf_logging

from .backbones import Backbone, get_backbone
from .configuration_maskae import MaskAEConfig, num_layers, with_num_layers
from .errors import CheckpointError, ConfigError
from .linear_cross_entropy import linear_cross_entropy

IGNORE_INDEX = -100
# Tokens per layer chunk on a CPU when `layer_chunk_tokens` is None: chunks of 1024 and 2048 tokens ran
# a layer (hidden 256, FFN 1024) 6-8% faster than the whole batch of 4096 tokens, chunks of 512 3-5%.
CPU_LAYER_CHUNK_TOKENS = 1024


@dataclass
class MaskAEModelOutput(ModelOutput):
    """code: [batch, seq, code_dim], or [batch, code_dim] with the sentence bottleneck.
    last_hidden_state: the top encoder layer's output, before any bottleneck.
    hidden_states: embeddings and each encoder layer's output (when asked for)."""

    code: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


@dataclass
class MaskAEReplacedTokenOutput(ModelOutput):
    """loss: the generator's MLM loss + `rtd_weight` x the detection loss (with labels).
    logits: the generator's vocabulary logits (at the targets only, with labels), so that masked
        accuracy and pseudo-perplexity measure the generator.
    replaced_logits: [batch, seq], the detector's logit that each token was replaced.
    replaced_labels: [batch, seq], 1.0 where the generator's sample differs from the original (with labels).
    code: the encoder's code of the text the detector read."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    replaced_logits: torch.Tensor | None = None
    replaced_labels: torch.Tensor | None = None
    code: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


@dataclass
class MaskAEMaskedLMOutput(ModelOutput):
    """loss: mean cross-entropy over the targets (0.0 when a batch has none).
    logits: [batch, seq, vocab], or [num_targets, vocab] under sparse prediction with labels; None
        when the fused loss ran (sparse prediction, training mode, gradients on: see `fused_loss`).
    hidden_states: embeddings, encoder layers, then decoder layers (when asked for)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    code: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


def check_objective(model_class: type, config: MaskAEConfig) -> None:
    """A config trained for another objective (e.g. an RTD checkpoint loaded as a masked LM) is refused:
    its weights would not fit, and the missing head would silently start random."""
    if config.objective != model_class._objective:
        other = "MaskAEForReplacedTokenDetection (AutoModelForPreTraining)" if config.objective == "rtd" else \
            "MaskAEForMaskedLM (AutoModelForMaskedLM)"
        raise ConfigError(f"this model was configured for objective={config.objective!r}; load it with {other}, "
                          "or its encoder alone with MaskAEModel (AutoModel).")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None, how: str) -> torch.Tensor:
    """Mean over real tokens, or the first token."""
    if how == "cls":
        return hidden[:, 0]
    if attention_mask is None:
        return hidden.mean(dim=1)
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


def batch_slice(value: object, start: int, stop: int, batch: int) -> object:
    """`value` (a tensor, or dicts and tuples of them) cut to sequences start:stop where it has a batch
    dimension; what broadcasts over the batch (size 1, as rotary tables) is kept whole."""
    if isinstance(value, torch.Tensor):
        return value[start:stop] if value.dim() and value.shape[0] == batch else value
    if isinstance(value, dict):
        return {key: batch_slice(item, start, stop, batch) for key, item in value.items()}
    if isinstance(value, tuple):
        return tuple(batch_slice(item, start, stop, batch) for item in value)
    return value


class MaskAEPreTrainedModel(PreTrainedModel):
    config_class = MaskAEConfig
    base_model_prefix = "maskae"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True
    _fresh_modules: tuple[str, ...] = ()  # parameters that `from_backbone` initialises rather than loads
    _objective: str | None = None  # the config's `objective` that this class trains (None: any)

    def __init__(self, config: MaskAEConfig, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        # The stock layers read the attention implementation from the stock config.
        config.base_config._attn_implementation = config._attn_implementation

    @property
    def backbone_adapter(self) -> Backbone:
        return get_backbone(self.config.base_config)

    def run_layer(self, layer: nn.Module, hidden: torch.Tensor, context: dict) -> torch.Tensor:
        """One stock layer, a few whole sequences at a time where `layer_chunk_tokens` says so."""
        adapter = self.backbone_adapter
        batch, length = hidden.shape[:2]
        tokens = self.config.layer_chunk_tokens
        if tokens is None:
            tokens = CPU_LAYER_CHUNK_TOKENS if hidden.device.type == "cpu" else 0
        sequences = max(1, tokens // length) if tokens else batch
        if sequences >= batch:
            return adapter.run_layer(layer, hidden, context)
        return torch.cat([
            adapter.run_layer(layer, hidden[s:s + sequences], batch_slice(context, s, s + sequences, batch))
            for s in range(0, batch, sequences)
        ])

    def _stock_model(self) -> PreTrainedModel:
        return self.maskae.backbone if hasattr(self, "maskae") else self.backbone

    def _init_weights(self, module: nn.Module) -> None:
        # The stock family's own initialisation (BERT's normal(0.02), ModernBERT's truncated normals, ...).
        self._stock_model()._init_weights(module)

    # The methods below are for the models that hold the encoder as `maskae`; MaskAEModel, the encoder
    # itself, overrides the first three.
    def get_encoder(self, modality: str | None = None) -> "MaskAEModel":
        """The encoder (embeddings, the first `split_layer` layers and the bottleneck's way down): what
        embed, whitening and the encoder export use, whatever the objective."""
        return self.maskae

    def get_input_embeddings(self) -> nn.Module:
        return self.maskae.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.maskae.set_input_embeddings(value)

    def compile_layers(self, **compile_kwargs) -> None:
        """torch.compile every transformer layer in place (state-dict keys unchanged). In packed training
        each layer sees one shape, so it compiles once and its element-wise work (bias, activation,
        residual, norm) is fused; the sparse top layer and the loss stay eager, since their shapes follow
        the number of targets, which changes every step (a whole-model compile would recompile)."""
        for layer in [*self.maskae.layers(), *self.decoder]:
            layer.compile(**compile_kwargs)

    @classmethod
    def from_backbone(
        cls,
        name_or_path: str,
        split_layer: int,
        decoder: str = "layers",
        decoder_layers: int | None = None,
        bottleneck: str | None = None,
        bottleneck_dim: int | None = None,
        pooling: str = "mean",
        decoder_init: str = "fresh",
        **kwargs,
    ) -> "MaskAEPreTrainedModel":
        """Split a stock checkpoint (local directory or Hub id) at `split_layer`, reusing its weights, as
        this class (a model that holds the encoder as `maskae`: MaskAEForMaskedLM, ...ForReplacedTokenDetection).

        A checkpoint without an MLM head (e.g. a sentence-transformers `BertModel`) gets a fresh
        head tied to its word embeddings. A decoder="transformer" starts fresh, or with `decoder_init=
        "top_layers"` as a copy of the checkpoint's top `decoder_layers` layers (TSDAE's decoder starts
        from the encoder's own weights). The names of the parameters that start fresh are kept in the
        model's `fresh_keys`. Extra `kwargs` go to the `MaskAEConfig`.
        """
        try:
            stock_config = AutoConfig.from_pretrained(name_or_path)
        except (OSError, ValueError) as error:
            raise CheckpointError(
                f"cannot load a model config from {name_or_path!r} ({error}); pass a directory with a "
                "config.json or a Hub model id."
            ) from None
        adapter = get_backbone(stock_config)
        if cls._objective is not None:
            kwargs.setdefault("objective", cls._objective)
        total = num_layers(stock_config)
        lowest = 0 if decoder == "layers" else 1  # 0: the embedding layer alone is the encoder
        if not lowest <= split_layer <= total:
            raise ConfigError(
                f"split_layer={split_layer} is out of range for {name_or_path!r}, which has {total} layers; "
                f"choose {lowest} <= split_layer <= {total}."
            )
        # transformers' load report would list the MLM head that a sentence encoder lacks; maskae checks
        # below that everything else loaded, and says so in one line if not.
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            stock, loading = AutoModelForMaskedLM.from_pretrained(name_or_path, output_loading_info=True)
        finally:
            hf_logging.set_verbosity(verbosity)
        config = MaskAEConfig(
            base_config=stock.config.to_dict(),
            split_layer=split_layer,
            decoder=decoder,
            decoder_layers=decoder_layers if decoder == "transformer" else None,
            bottleneck=bottleneck,
            bottleneck_dim=bottleneck_dim,
            pooling=pooling,
            **kwargs,
        )
        if decoder_init not in ("fresh", "top_layers"):
            raise ConfigError(f"unknown decoder_init {decoder_init!r}; use fresh or top_layers.")
        copied_top = decoder == "transformer" and decoder_init == "top_layers"
        if copied_top and config.decoder_layers > total:
            raise ConfigError(f"decoder_init='top_layers' copies {config.decoder_layers} layers, but {name_or_path!r} "
                              f"has {total}; choose decoder_layers <= {total}.")
        model = cls(config)
        kept = model.state_dict()
        state = {}
        for key, value in stock.state_dict().items():
            targets = [adapter.maskae_key(key, split_layer)]
            if decoder == "transformer":  # not the backbone's upper layers: fresh, or a copy of its top ones
                targets = [t for t in targets if not (t or "").startswith("decoder.")]
                if copied_top:
                    targets.append(adapter.maskae_key(key, total - config.decoder_layers))
            for new_key in targets:
                if new_key in kept and kept[new_key].shape == value.shape:
                    state[new_key] = value
        missing, unexpected = model.load_state_dict(state, strict=False)
        fresh = ("decoder.", "maskae.down.", "up.") if decoder == "transformer" and not copied_top else ("maskae.down.", "up.")
        fresh += cls._fresh_modules
        fresh_in_stock = {adapter.maskae_key(key, split_layer) for key in loading["missing_keys"]}  # e.g. a missing head
        model.fresh_keys = sorted({k for k in [*missing, *fresh_in_stock] if k in kept} - set(model.all_tied_weights_keys))
        not_loaded = [k for k in missing if not k.startswith(fresh) and k not in model.all_tied_weights_keys]
        if not_loaded:
            raise CheckpointError(
                f"{name_or_path!r} lacks weights that maskae expected ({', '.join(not_loaded[:3])}...); "
                "the checkpoint may be truncated or of another architecture."
            )
        model.tie_weights()
        return model.to(stock.dtype)


class MaskAEModel(MaskAEPreTrainedModel):
    """The encoder: stock embeddings and the first `split_layer` layers, plus the bottleneck's way down."""

    # Loading a full MaskAEForMaskedLM checkpoint as the encoder alone leaves these out, by design.
    _keys_to_ignore_on_load_unexpected = [r"^decoder\.", r"^head\.", r"^up\.", r"^generator\.", r"^discriminator_head\."]

    def __init__(self, config: MaskAEConfig):
        super().__init__(config)
        adapter = get_backbone(config.base_config)
        encoder_config = with_num_layers(config.base_config, config.split_layer)
        self.backbone = adapter.make_base(encoder_config)
        self.rotary = adapter.make_rotary(config.base_config)
        self.down = nn.Linear(config.hidden_size, config.bottleneck_dim) if config.bottleneck == "projection" else None
        self.post_init()

    def get_encoder(self, modality: str | None = None) -> "MaskAEModel":
        return self

    def get_input_embeddings(self) -> nn.Module:
        return self.backbone.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.backbone.set_input_embeddings(value)

    def layers(self) -> nn.ModuleList:
        return self.backbone_adapter.layers(self.backbone)

    def compile_layers(self, **compile_kwargs) -> None:
        """torch.compile each encoder layer in place (see `MaskAEPreTrainedModel.compile_layers`)."""
        for layer in self.layers():
            layer.compile(**compile_kwargs)

    def run(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        num_layers: int | None = None,
        output_hidden_states: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor], dict]:
        """Embeddings and the first `num_layers` layers (all encoder layers by default: early exit for
        embeddings). Returns the top hidden state, the states on the way, and the per-layer context
        (masks, rotary embeddings) that the decoder reuses."""
        adapter = self.backbone_adapter
        hidden = adapter.embed(self.backbone, input_ids, token_type_ids)
        context = adapter.context(self.backbone, self.rotary, hidden, attention_mask)
        states = [hidden] if output_hidden_states else []
        depth = self.config.split_layer if num_layers is None else num_layers
        for layer in self.layers()[:depth]:
            hidden = self.run_layer(layer, hidden, context)
            if output_hidden_states:
                states.append(hidden)
        if adapter.final_norm and depth == self.config.split_layer + self.config.decoder_layers:
            # The top of the whole stack is normalised, as the stock model's last hidden state is.
            hidden = getattr(self.backbone, adapter.final_norm)(hidden)
            if output_hidden_states:
                states[-1] = hidden
        return hidden, states, context

    def encode(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Top encoder state -> code (through the bottleneck, if any)."""
        if self.config.bottleneck == "projection":
            return self.down(hidden)
        if self.config.bottleneck == "sentence":
            return pool(hidden, attention_mask, self.config.pooling)
        return hidden

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MaskAEModelOutput | tuple:
        hidden, states, _ = self.run(input_ids, attention_mask, token_type_ids, output_hidden_states=bool(output_hidden_states))
        output = MaskAEModelOutput(
            code=self.encode(hidden, attention_mask),
            last_hidden_state=hidden,
            hidden_states=tuple(states) if output_hidden_states else None,
        )
        return output if return_dict is not False else output.to_tuple()


class MaskAEForMaskedLM(MaskAEPreTrainedModel):
    """Encoder + decoder + stock MLM head, trained to reconstruct the clean tokens from a noisy input."""

    _objective = "mlm"

    def __init__(self, config: MaskAEConfig):
        check_objective(type(self), config)
        adapter = get_backbone(config.base_config)
        head_key = f"head.{adapter.head_output}"
        self._tied_weights_keys = {f"{head_key}.weight": f"maskae.backbone.{adapter.word_embeddings}.weight"}
        self._tied_weights_keys.update({f"head.{t}": f"head.{s}" for t, s in adapter.tied_extra})
        super().__init__(config)
        self.maskae = MaskAEModel(config)
        split = config.split_layer
        self.decoder = nn.ModuleList(
            adapter.make_layer(config.base_config, split + i) for i in range(config.decoder_layers)
        )
        self.up = nn.Linear(config.bottleneck_dim, config.hidden_size) if config.bottleneck == "projection" else None
        self.head = adapter.build_head(config.base_config)
        self.post_init()

    def get_output_embeddings(self) -> nn.Module:
        return self.head.get_submodule(self.backbone_adapter.head_output)

    def set_output_embeddings(self, value: nn.Module) -> None:
        parent, _, name = self.backbone_adapter.head_output.rpartition(".")
        setattr(self.head.get_submodule(parent) if parent else self.head, name, value)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MaskAEMaskedLMOutput | tuple:
        r"""
        labels: original ids at the positions to reconstruct, -100 elsewhere. With the sentence
            bottleneck they refer to `decoder_input_ids` (the heavily masked copy the decoder reads).
        decoder_input_ids / decoder_attention_mask: the decoder's own input (sentence bottleneck only;
            defaults to `input_ids`).
        """
        config, adapter = self.config, self.backbone_adapter
        want_states = bool(output_hidden_states)
        hidden, states, context = self.maskae.run(input_ids, attention_mask, token_type_ids, output_hidden_states=want_states)
        code = self.maskae.encode(hidden, attention_mask)

        if config.bottleneck == "sentence":
            if decoder_input_ids is None:
                decoder_input_ids, decoder_attention_mask = input_ids, attention_mask
            embedded = adapter.embed(self.maskae.backbone, decoder_input_ids)
            # The decoder sees the text only through the sentence vector, in place of the first token.
            hidden = torch.cat([code.unsqueeze(1), embedded[:, 1:]], dim=1)
            context = adapter.context(self.maskae.backbone, self.maskae.rotary, hidden, decoder_attention_mask)
        elif config.bottleneck == "projection":
            hidden = self.up(code)

        sparse = labels is not None and config.sparse_prediction
        # Under sparse prediction only the targets' top-layer outputs are ever read: compute just those.
        top_at_targets = sparse and not want_states and len(self.decoder) and adapter.run_layer_at_targets
        for layer in self.decoder[:-1] if top_at_targets else self.decoder:
            hidden = self.run_layer(layer, hidden, context)
            if want_states:
                states.append(hidden)
        if sparse:
            targets = labels != IGNORE_INDEX
            if top_at_targets:
                mask = decoder_attention_mask if config.bottleneck == "sentence" else attention_mask
                hidden = adapter.run_layer_at_targets(self.decoder[-1], hidden, mask, targets)
            else:  # project to the vocabulary only where there is something to predict
                hidden = hidden[targets]
            labels = labels[targets]
        if adapter.final_norm and len(self.decoder):
            hidden = getattr(self.maskae.backbone, adapter.final_norm)(hidden)
            if want_states:
                states[-1] = hidden

        loss = logits = None
        fused_dtype = self._fused_loss_dtype(hidden) if sparse else None
        if fused_dtype is not None:
            projection = self.get_output_embeddings()
            summed = linear_cross_entropy(self.head.features(hidden), projection.weight, projection.bias, labels,
                                          compute_dtype=fused_dtype)
            loss = summed / max(labels.numel(), 1)
        else:
            logits = self.head(hidden)
            if labels is not None:
                flat = labels.reshape(-1)
                summed = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), flat, ignore_index=IGNORE_INDEX,
                                         reduction="sum")
                loss = summed / max(int((flat != IGNORE_INDEX).sum()), 1)
        output = MaskAEMaskedLMOutput(
            loss=loss, logits=logits, code=code, hidden_states=tuple(states) if want_states else None
        )
        return output if return_dict is not False else output.to_tuple()

    def _fused_loss_dtype(self, hidden: torch.Tensor) -> torch.dtype | None:
        """The dtype of the fused loss's matmuls, or None where it does not apply. It computes gradients as it
        goes, with fp32 sums: only for a training step with fp32 weights, on fp32 rows, or under bf16
        autocast on a CPU (the one autocast its bf16 matmul path was measured on)."""
        device = hidden.device.type
        if not (self.config.fused_loss and self.training and torch.is_grad_enabled()
                and self.get_output_embeddings().weight.dtype == torch.float32):
            return None
        if not torch.is_autocast_enabled(device):
            return torch.float32 if hidden.dtype == torch.float32 else None
        return torch.bfloat16 if device == "cpu" and torch.get_autocast_dtype(device) == torch.bfloat16 else None


def sample_tokens(logits: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """One token id per row of `logits` [rows, vocab], drawn from its softmax by the inverse CDF at
    `uniforms` [rows] in [0, 1)."""
    cdf = torch.softmax(logits.float(), dim=-1).cumsum(dim=-1)
    drawn = torch.searchsorted(cdf, (uniforms * cdf[:, -1]).unsqueeze(-1)).squeeze(-1)
    return drawn.clamp_(max=logits.shape[-1] - 1)  # rounding can leave the last CDF value below 1


class ReplacedTokenHead(nn.Module):
    """ELECTRA's discriminator head: dense, GELU, one logit per token."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.dense_prediction = nn.Linear(hidden_size, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.dense_prediction(F.gelu(self.dense(hidden))).squeeze(-1)


class MaskAEForReplacedTokenDetection(MaskAEPreTrainedModel):
    """ELECTRA's objective (Clark et al. 2020) on a split encoder.

        masked ids ──▶ generator (small MLM) ──▶ samples at the masked positions ──▶ corrupted ids
        corrupted ids ──▶ encoder ──▶ code ──▶ (bottleneck) ──▶ decoder layers ──▶ head ──▶ replaced?

    Every token of the corrupted text carries a training signal, not only the masked 15%: the reason
    ELECTRA is the most sample-efficient objective for small models. The encoder (`maskae`) is the same
    `MaskAEModel` as under MLM, so embed, evaluate, whitening and the encoder export use it unchanged.
    The generator's samples come from the process's torch RNG, as dropout does: a resumed run repeats
    them exactly, and runs on other process counts agree in distribution.
    """

    _fresh_modules = ("generator.", "discriminator_head.")
    _objective = "rtd"

    def __init__(self, config: MaskAEConfig):
        check_objective(type(self), config)
        super().__init__(config)
        adapter = get_backbone(config.base_config)
        self.maskae = MaskAEModel(config)
        self.decoder = nn.ModuleList(
            adapter.make_layer(config.base_config, config.split_layer + i) for i in range(config.decoder_layers)
        )
        self.up = nn.Linear(config.bottleneck_dim, config.hidden_size) if config.bottleneck == "projection" else None
        self.discriminator_head = ReplacedTokenHead(config.hidden_size)
        self.generator = MaskAEForMaskedLM(MaskAEConfig(
            base_config=config.generator_base_config(), decoder="linear", sparse_prediction=True,
            fused_loss=False, layer_chunk_tokens=config.layer_chunk_tokens,  # sampling needs the logits
        ))
        self.post_init()

    def detect(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        token_type_ids: torch.Tensor | None,
        output_hidden_states: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(replaced logits [batch, seq], code, hidden states) for the text `input_ids`."""
        adapter = self.backbone_adapter
        hidden, states, context = self.maskae.run(input_ids, attention_mask, token_type_ids,
                                                  output_hidden_states=output_hidden_states)
        code = self.maskae.encode(hidden, attention_mask)
        if self.up is not None:
            hidden = self.up(code)
        for layer in self.decoder:
            hidden = self.run_layer(layer, hidden, context)
            if output_hidden_states:
                states.append(hidden)
        if adapter.final_norm and len(self.decoder):
            hidden = getattr(self.maskae.backbone, adapter.final_norm)(hidden)
            if output_hidden_states:
                states[-1] = hidden
        return self.discriminator_head(hidden), code, states

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MaskAEReplacedTokenOutput | tuple:
        r"""
        labels: original ids at the masked positions of `input_ids`, -100 elsewhere. With labels the
            generator fills those positions with its samples and the detector reads the result; without,
            the detector reads `input_ids` as they are.
        """
        want_states = bool(output_hidden_states)
        generated = self.generator(input_ids, attention_mask=attention_mask, labels=labels, token_type_ids=token_type_ids)
        loss = replaced = None
        text = input_ids
        if labels is not None:
            targets = labels != IGNORE_INDEX
            original = torch.where(targets, labels, input_ids)
            with torch.no_grad():
                uniforms = torch.rand(int(targets.sum()), device=input_ids.device)
                text = original.masked_scatter(targets, sample_tokens(generated.logits.detach(), uniforms))
            replaced = (text != original).float()
        replaced_logits, code, states = self.detect(text, attention_mask, token_type_ids, want_states)
        if replaced is not None:
            weights = torch.ones_like(replaced) if attention_mask is None else attention_mask.to(replaced.dtype)
            detection = F.binary_cross_entropy_with_logits(replaced_logits.float(), replaced, weight=weights,
                                                           reduction="sum") / weights.sum().clamp(min=1)
            loss = generated.loss + self.config.rtd_weight * detection
        output = MaskAEReplacedTokenOutput(
            loss=loss, logits=generated.logits, replaced_logits=replaced_logits, replaced_labels=replaced,
            code=code, hidden_states=tuple(states) if want_states else None,
        )
        return output if return_dict is not False else output.to_tuple()
