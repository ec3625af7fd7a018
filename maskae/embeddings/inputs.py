"""Texts into model inputs, shared by every backend: the checks on what users pass, the tokenizer (refused
when it is a vocabulary-less fallback), and batches in length order so that each carries almost no padding."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from ..errors import DataError, TokenizerError


def check_texts(texts: Sequence[str] | str) -> list[str]:
    """`texts` as a non-empty list of strings (one string is one text), or a DataError naming the bad row."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise DataError("no texts to embed: the input is empty; pass at least one string.")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise DataError(f"text {index} is a {type(text).__name__}, not a string; pass a list of strings.")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:  # a lone surrogate: tokenizers would fail with a TypeError
            raise DataError(f"text {index} holds {text[error.start]!r} at {error.start}, half of a surrogate pair "
                            "(not valid Unicode); decode the input with errors='replace' or remove it.") from None
    return texts


def tokenize(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int, lowercase: bool = False) -> list[list[int]]:
    """Token ids of each text, truncated to `max_length` (lower-cased first, as a sentence-transformers
    checkpoint with `do_lower_case` asks)."""
    if lowercase:
        texts = [text.lower() for text in texts]
    encoded = tokenizer(texts, truncation=True, max_length=max_length, return_attention_mask=False,
                        return_token_type_ids=False)
    return encoded["input_ids"]


def pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id that pads a batch: the tokenizer's own, else 0 (masked out by the attention mask anyway)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def in_length_order(
    token_ids: Sequence[Sequence[int]], batch_size: int, show_progress: bool = False
) -> Iterator[tuple[np.ndarray, list[Sequence[int]]]]:
    """(row indices, their token ids) batch by batch, longest texts first, with an optional progress bar."""
    order = np.argsort([-len(ids) for ids in token_ids], kind="stable")
    with tqdm(total=len(token_ids), unit="text", disable=not show_progress) as progress:
        for start in range(0, len(token_ids), batch_size):
            rows = order[start : start + batch_size]
            yield rows, [token_ids[i] for i in rows]
            progress.update(len(rows))


def pad_batch(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), int64 [len(rows), longest row], right-padded with `pad_id`."""
    width = max(len(row) for row in rows)
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    attention_mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = row
        attention_mask[i, : len(row)] = 1
    return torch.from_numpy(input_ids), torch.from_numpy(attention_mask)


def check_vocabulary(tokenizer: PreTrainedTokenizerBase, source: str | Path) -> None:
    """transformers builds a tokenizer of special tokens alone from a directory without vocabulary files,
    which would turn every word into [UNK]: plausible-looking vectors of nothing. Refused in one line."""
    if len(tokenizer) <= len(set(tokenizer.all_special_ids)):
        raise TokenizerError(
            f"the tokenizer in {str(source)!r} has only its {len(tokenizer)} special tokens: its vocabulary files "
            "(tokenizer.json, vocab.txt, ...) are missing; save the tokenizer beside the model or pass tokenizer=..."
        )


def load_tokenizer(source: PreTrainedTokenizerBase | str | Path) -> PreTrainedTokenizerBase:
    """A tokenizer object as it is, else loaded from a directory or Hub id and checked for a vocabulary."""
    if isinstance(source, PreTrainedTokenizerBase):
        return source
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source))
    except (OSError, ValueError) as error:
        raise TokenizerError(
            f"cannot load a tokenizer from {str(source)!r} ({error}); save the tokenizer beside the model or "
            "pass tokenizer=..."
        ) from None
    check_vocabulary(tokenizer, source)
    return tokenizer
