"""`DataCollatorForDenoising`: a drop-in for `DataCollatorForLanguageModeling` driven by a `NoiseConfig`.

Noise is drawn one of two ways:

* Features that carry `noise_epoch` and `noise_index` (the sequence's epoch and global index, as
  maskae's trainer and streams tag them) are noised counter-based (`noise.KeyedRandom`): a sequence's
  noise depends only on (seed, epoch, index). Any number of processes or DataLoader workers, and any
  resume point, then give it the same noise, and each process noises only its own rows.
* Plain features (the `DataCollatorForLanguageModeling` call) draw from the collator's
  `torch.Generator`, a stream; `state_dict()`/`load_state_dict()` expose it so that
  `accelerator.register_for_checkpointing(collator)` resumes to bit-identical batches.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import get_worker_info
from transformers import PreTrainedTokenizerBase

from ..errors import TokenizerError
from . import noise as noise_ops
from ..modeling_maskae import IGNORE_INDEX
from .noise import KeyedRandom, RandomSource
from .noise_config import NoiseConfig

# Marks that a vocabulary piece starts a new word (byte-level BPE and SentencePiece), or continues one (WordPiece).
WORD_START_MARKS = ("Ġ", "▁")
CONTINUATION_MARK = "##"
NOISE_KEYS = ("noise_epoch", "noise_index")


def continuation_table(tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """Per vocabulary id: does this piece continue the previous word?

    WordPiece marks continuations (`##ing`); byte-level BPE and SentencePiece mark word starts
    (`Ġthe`, `▁the`), so there every unmarked piece is a continuation.
    """
    vocab = tokenizer.get_vocab()
    table = torch.zeros(max(len(tokenizer), max(vocab.values()) + 1), dtype=torch.bool)
    pieces = list(vocab)
    marks_starts = any(piece.startswith(WORD_START_MARKS) for piece in pieces)
    for piece, index in vocab.items():
        if marks_starts:
            table[index] = not piece.startswith(WORD_START_MARKS)
        else:
            table[index] = piece.startswith(CONTINUATION_MARK)
    table[list(tokenizer.all_special_ids)] = False
    return table


class DataCollatorForDenoising:
    """Pads (or stacks already packed) features, corrupts them with `noise` and builds the labels.

    Call it like `DataCollatorForLanguageModeling`: a list of `{"input_ids": [...]}` (optionally with
    `attention_mask`, and `word_ids` from a fast tokenizer for whole-word masking) becomes a dict of
    `input_ids`, `attention_mask` and `labels` (-100 except at the targets, which hold the original
    id). With `noise.decoder_mask_prob` set (sentence bottleneck), it also returns `decoder_input_ids`
    and `decoder_attention_mask`, a masked copy of the clean input, and `labels` refer to that copy.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        noise: NoiseConfig | dict | None = None,
        seed: int | None = None,
        pad_to_multiple_of: int | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.noise = noise if isinstance(noise, NoiseConfig) else NoiseConfig.from_dict(noise)
        self.pad_to_multiple_of = pad_to_multiple_of
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        if tokenizer.mask_token_id is None:
            raise TokenizerError(
                f"tokenizer {name!r} has no mask token; add one with tokenizer.add_special_tokens("
                "{'mask_token': '[MASK]'}) and resize the model's embeddings, "
                "or train a tokenizer with `maskae tokenizer train`."
            )
        if tokenizer.pad_token_id is None:
            raise TokenizerError(
                f"tokenizer {name!r} has no padding token; set tokenizer.pad_token (e.g. to its eos or unk token)."
            )
        self.mask_token_id = int(tokenizer.mask_token_id)
        self.pad_token_id = int(tokenizer.pad_token_id)
        self.special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
        vocab_ids = torch.arange(len(tokenizer))
        self.random_ids = vocab_ids[~torch.isin(vocab_ids, self.special_ids)]
        if len(self.random_ids) == 0:
            raise TokenizerError(
                f"tokenizer {name!r} has only its {len(tokenizer)} special tokens, nothing to learn from; point at a "
                "trained tokenizer, or train one with `maskae tokenizer train`."
            )
        self.is_continuation = continuation_table(tokenizer) if self.noise.whole_word else None
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)
        self.seed = self.generator.initial_seed() if seed is None else seed
        self._worker_generator: torch.Generator | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed = state.get("seed", self.seed)
        self.generator.set_state(state["generator"])

    def random_source(self, features: list[dict[str, Any]]) -> RandomSource:
        """Counter-based randomness keyed by the features' (noise_epoch, noise_index), or else the
        collator's generator (inside a DataLoader worker, one derived from the worker's seed: otherwise
        every worker would draw the same noise from its copy of the generator)."""
        if all(key in features[0] for key in NOISE_KEYS):
            epochs, indices = (torch.tensor([int(f[key]) for f in features], dtype=torch.int64) for key in NOISE_KEYS)
            return KeyedRandom(self.seed, epochs, indices)
        worker = get_worker_info()
        if worker is None:
            return self.generator
        if self._worker_generator is None:
            self._worker_generator = torch.Generator().manual_seed(worker.seed)
        return self._worker_generator

    def _collate(self, features: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Stack the features; rows of equal length (packed data) take the fast path with no padding."""
        rows = [torch.as_tensor(feature["input_ids"], dtype=torch.long) for feature in features]
        lengths = [len(row) for row in rows]
        width = max(lengths)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        has_mask = "attention_mask" in features[0]
        has_words = "word_ids" in features[0]
        if min(lengths) == width and not has_mask and not has_words:
            input_ids = torch.stack(rows)
            return input_ids, torch.ones_like(input_ids), None
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        word_ids = torch.full((len(rows), width), -1, dtype=torch.long) if has_words else None
        for i, (feature, row) in enumerate(zip(features, rows)):
            input_ids[i, : len(row)] = row
            given = feature.get("attention_mask")
            attention_mask[i, : len(row)] = 1 if given is None else torch.as_tensor(given, dtype=torch.long)
            if word_ids is not None:
                words = [-1 if w is None else w for w in feature["word_ids"]]
                word_ids[i, : len(row)] = torch.as_tensor(words, dtype=torch.long)
        return input_ids, attention_mask, word_ids

    def _word_ids(self, input_ids: torch.Tensor, eligible: torch.Tensor, given: torch.Tensor | None) -> torch.Tensor:
        if given is not None:
            previous = torch.nn.functional.pad(given[:, :-1], (1, 0), value=-1)
            return noise_ops.word_ids_from_starts(given != previous, eligible)
        return noise_ops.word_ids_from_continuation(input_ids, self.is_continuation, eligible)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        config, generator = self.noise, self.random_source(features)
        input_ids, attention_mask, given_word_ids = self._collate(features)
        eligible = attention_mask.bool() & ~torch.isin(input_ids, self.special_ids)
        word_ids = self._word_ids(input_ids, eligible, given_word_ids) if config.whole_word else None
        corrupted, labels = input_ids, torch.full_like(input_ids, IGNORE_INDEX)
        selected = torch.zeros_like(eligible)
        if config.mask_prob > 0:
            selected = noise_ops.select(config, eligible, generator, word_ids=word_ids)
            corrupted, labels = noise_ops.apply_mask(
                input_ids,
                selected,
                self.mask_token_id,
                self.random_ids,
                generator,
                config.mask_token_frac,
                config.random_token_frac,
            )
        if config.substitute_prob > 0:
            chosen = noise_ops.select_tokens(eligible & ~selected, config.substitute_prob, generator)
            corrupted = noise_ops.substitute(corrupted, chosen, self.random_ids, generator)
            selected = selected | chosen
        if config.decoder_mask_prob is None:
            return {"input_ids": corrupted, "attention_mask": attention_mask, "labels": labels}

        # Sentence bottleneck: the decoder reads a heavily masked clean copy; position 0 carries the
        # sentence vector, so it is never masked there.
        decoder_eligible = eligible.clone()
        decoder_eligible[:, 0] = False
        decoder_selected = noise_ops.select(
            config,
            decoder_eligible,
            generator,
            word_ids=self._word_ids(input_ids, decoder_eligible, given_word_ids) if config.whole_word else None,
            prob=config.decoder_mask_prob,
        )
        batch = {
            "decoder_input_ids": input_ids.masked_fill(decoder_selected, self.mask_token_id),
            "decoder_attention_mask": attention_mask,
            "labels": input_ids.masked_fill(~decoder_selected, IGNORE_INDEX),
        }
        encoder_mask = attention_mask
        if config.delete_prob > 0:
            deleted = noise_ops.select_tokens(eligible & ~selected, config.delete_prob, generator)
            corrupted, encoder_mask = noise_ops.delete_tokens(corrupted, attention_mask, deleted, self.pad_token_id)
            if self.pad_to_multiple_of:
                extra = -corrupted.shape[1] % self.pad_to_multiple_of
                corrupted = torch.nn.functional.pad(corrupted, (0, extra), value=self.pad_token_id)
                encoder_mask = torch.nn.functional.pad(encoder_mask, (0, extra), value=0)
        return {"input_ids": corrupted, "attention_mask": encoder_mask, **batch}
