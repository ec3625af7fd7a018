"""Train a WordPiece (BERT-style) or byte-level BPE (RoBERTa-style) tokenizer on a corpus with `tokenizers`.

The result is a `PreTrainedTokenizerFast` saved with `save_pretrained`, so `AutoTokenizer` loads it,
and it always has a mask token for denoising.

Training is deterministic: the same corpus gives the same `tokenizer.json`, byte for byte. The
`tokenizers` WordPiece trainer (0.23) gives each continuation piece `##c` the next free id in the
iteration order of a Rust `HashMap` of words, which is seeded at random per process, and it breaks
ties between equally frequent merges by those ids; so two runs learned different vocabularies. Here
every `##c` the corpus can produce is handed to the trainer up front, in code-point order, as a
leading "special" token (the only tokens whose ids the trainer takes in the order given), and that
special status is removed again afterwards. Byte-level BPE needs nothing: its whole alphabet is
fixed and sorted before the words are read.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterator
from pathlib import Path

from datasets import Dataset
from tokenizers import (
    AddedToken,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import PreTrainedTokenizerFast

from ..errors import ConfigError, StorageError
from ..utils.console import is_terminal
from .corpus import load_corpus

KINDS = ("wordpiece", "bpe")
WORDPIECE_SPECIALS = {
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}
BPE_SPECIALS = {
    "bos_token": "<s>",
    "pad_token": "<pad>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "mask_token": "<mask>",
    "cls_token": "<s>",
    "sep_token": "</s>",
}


def _wordpiece(lowercase: bool, vocab_size: int, min_frequency: int) -> tuple[Tokenizer, trainers.Trainer]:
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=lowercase or None)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    specials = list(WORDPIECE_SPECIALS.values())
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials,
                                        show_progress=is_terminal())  # off a terminal: blank lines only
    return tokenizer, trainer


def _bpe(lowercase: bool, vocab_size: int, min_frequency: int) -> tuple[Tokenizer, trainers.Trainer]:
    tokenizer = Tokenizer(models.BPE())
    if lowercase:
        tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = list(dict.fromkeys(BPE_SPECIALS.values()))  # <s> <pad> </s> <unk> <mask>, RoBERTa's ids 0..4
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=is_terminal(),  # off a terminal its bars leave only blank lines
    )
    return tokenizer, trainer


def _batches(corpus: Dataset, batch_size: int = 1000) -> Iterator[list[str]]:
    for start in range(0, len(corpus), batch_size):
        yield corpus[start : start + batch_size]["text"]


def _continuation_pieces(corpus: Dataset, tokenizer: Tokenizer) -> list[str]:
    """`##c` for every normalised character that can continue a word, sorted by code point.

    The normaliser works character by character (lower-casing, NFD accent stripping, spacing out CJK),
    so normalising each distinct raw character finds every character of the normalised text. A
    character that the pre-tokeniser splits off (whitespace, punctuation) or the normaliser spaces
    out (CJK) never continues a word and gets no piece. Pieces for characters that only ever start a
    word are kept: unused, but they cost no determinism.
    """
    raw: set[str] = set()
    for batch in _batches(corpus, batch_size=10_000):
        raw.update(*batch)
    normalize = tokenizer.normalizer.normalize_str
    chars = {char for text in map(normalize, raw) for char in text}
    pieces = []
    for char in sorted(chars):
        if char.isspace() or unicodedata.category(char) in ("Mn", "Cc") or normalize(char) != char:
            continue
        words = [word for word, _ in tokenizer.pre_tokenizer.pre_tokenize_str("a" + char)]
        if words == ["a" + char]:
            pieces.append("##" + char)
    return pieces


def _without_added(tokenizer: Tokenizer, contents: set[str]) -> Tokenizer:
    """The same tokenizer with `contents` removed from its added tokens (they stay in the vocabulary)."""
    state = json.loads(tokenizer.to_str())
    state["added_tokens"] = [token for token in state["added_tokens"] if token["content"] not in contents]
    return Tokenizer.from_str(json.dumps(state))


def train_tokenizer(
    corpus: str | Path,
    vocab_size: int,
    out_dir: str | Path,
    kind: str = "wordpiece",
    lowercase: bool = True,
    min_frequency: int = 2,
    model_max_length: int = 512,
    text_column: str = "text",
) -> PreTrainedTokenizerFast:
    """Train a tokenizer on `corpus` (anything `load_corpus` reads) and save it to `out_dir`.

    "wordpiece" gives BERT's special tokens ([PAD] [UNK] [CLS] [SEP] [MASK]) and a `[CLS] … [SEP]`
    post-processor; "bpe" gives RoBERTa's byte-level BPE with <s> <pad> </s> <unk> <mask>.
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown tokenizer kind {kind!r}; use one of {', '.join(KINDS)}.")
    specials = WORDPIECE_SPECIALS if kind == "wordpiece" else BPE_SPECIALS
    if not isinstance(vocab_size, int) or vocab_size <= len(set(specials.values())):
        raise ConfigError(f"vocab_size={vocab_size!r} is too small; use more than the special tokens, e.g. 30000.")
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise StorageError(f"{out_dir} is an existing file, not a directory; choose a directory to save the "
                           "tokenizer to.")
    texts = load_corpus(corpus, text_column=text_column)
    build = _wordpiece if kind == "wordpiece" else _bpe
    tokenizer, trainer = build(lowercase, vocab_size, min_frequency)
    if kind == "wordpiece":
        pieces = _continuation_pieces(texts, tokenizer)
        trainer.special_tokens = trainer.special_tokens + [AddedToken(p, special=True) for p in pieces]
    tokenizer.train_from_iterator(_batches(texts), trainer=trainer, length=len(texts))
    if kind == "wordpiece":
        tokenizer = _without_added(tokenizer, set(pieces))
        cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
        tokenizer.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
        )
    else:
        # As RoBERTa: in "a <mask>" the mask token absorbs the space before it.
        tokenizer.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True)])
        tokenizer.post_processor = processors.RobertaProcessing(
            ("</s>", tokenizer.token_to_id("</s>")), ("<s>", tokenizer.token_to_id("<s>")), trim_offsets=True
        )
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, model_max_length=model_max_length, **specials)
    fast.save_pretrained(str(out_dir))
    return fast
