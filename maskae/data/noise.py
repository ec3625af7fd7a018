"""Seeded, vectorised noise on padded batches of token ids.

Every function is pure: it reads id tensors and a `torch.Generator` and returns new tensors, with
no Python loop over tokens. `eligible` marks the positions that may be corrupted (real tokens
that are not special tokens), so special tokens and padding can never become targets.

Randomness comes from a `torch.Generator` (a stream: the n-th batch depends on the ones before it) or
from `KeyedRandom`, which is counter-based: every draw for a row depends only on (seed, epoch, the
row's global index), so any process count, worker count or resume point gives each sequence the same
noise, and a process noises only its own rows.

Selection follows BERT's `create_pretraining_data.py`: a row with n eligible tokens gets a budget
of `mask_prob * n` tokens (rounded stochastically, so the expected fraction is exact, and at least
one token per non-empty row so that no row is without a target).
"""

from __future__ import annotations

import math

import torch

from ..modeling_maskae import IGNORE_INDEX
from .noise_config import NoiseConfig

_MASK64 = (1 << 64) - 1


def _signed(value: int) -> int:
    """A 64-bit constant as torch's int64 holds it."""
    value &= _MASK64
    return value - (1 << 64) if value >> 63 else value


_GOLDEN, _MIX1, _MIX2 = _signed(0x9E3779B97F4A7C15), _signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB)


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical (unsigned) right shift of int64 values."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _mix(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finaliser: a bijection of 64-bit integers that scatters nearby inputs (int64 wraps)."""
    x = (x ^ _shift_right(x, 30)) * _MIX1
    x = (x ^ _shift_right(x, 27)) * _MIX2
    return x ^ _shift_right(x, 31)


class KeyedRandom:
    """Counter-based uniforms for a batch of rows: element (i, j) of the n-th draw is a hash of
    (seed, epochs[i], indices[i], n, j), so a row's noise never depends on the other rows, on the
    batch's width or on what was drawn before; torch's generators cannot be keyed per row like this
    without a Python loop over rows."""

    def __init__(self, seed: int, epochs: torch.Tensor, indices: torch.Tensor) -> None:
        key = _mix(torch.full_like(indices, _signed(seed)) + _GOLDEN)
        key = _mix(key ^ epochs.to(torch.int64))
        self.row_keys = _mix(key ^ indices.to(torch.int64))
        self.draws = 0

    def uniform(self, shape: tuple[int, ...], device: torch.device | None = None) -> torch.Tensor:
        """float32 uniforms in [0, 1) of `shape`, whose first dimension is the rows (a 1-d shape gives one per row)."""
        self.draws += 1
        width = shape[1] if len(shape) > 1 else 1
        counters = (torch.arange(width, dtype=torch.int64) + (self.draws << 32)) * _GOLDEN
        bits = _shift_right(_mix(self.row_keys[:, None] + counters[None, :]), 40)  # the top 24 bits
        values = bits.to(torch.float32) * 2.0**-24
        return values.reshape(shape).to(device) if device is not None else values.reshape(shape)


RandomSource = torch.Generator | KeyedRandom


def uniform(source: RandomSource, shape: tuple[int, ...], device: torch.device | None = None) -> torch.Tensor:
    """Uniforms in [0, 1) from a generator or a `KeyedRandom`."""
    if isinstance(source, KeyedRandom):
        return source.uniform(tuple(shape), device)
    return torch.rand(shape, generator=source, device=device)


def poisson(rate: float, shape: tuple[int, int], source: RandomSource) -> torch.Tensor:
    """Poisson(rate) counts by inverting the CDF (so a `KeyedRandom` can drive it too)."""
    upper = int(rate + 12 * math.sqrt(rate) + 12)
    k = torch.arange(upper + 1, dtype=torch.float64)
    cdf = torch.exp(k * math.log(rate) - rate - torch.lgamma(k + 1)).cumsum(0)
    return torch.searchsorted(cdf.float(), uniform(source, shape), right=True).clamp(max=upper)


def _budget(count: torch.Tensor, prob: float, generator: RandomSource) -> torch.Tensor:
    """Stochastically rounded `prob * count` per row, at least 1 where count > 0 (as BERT does)."""
    jitter = uniform(generator, tuple(count.shape), count.device)
    budget = torch.floor(count * prob + jitter)
    return torch.minimum(torch.clamp(budget, min=1), count.to(budget.dtype))


def _random_order(valid: torch.Tensor, generator: RandomSource) -> torch.Tensor:
    """Rank of each valid unit in a uniformly random order per row; invalid units rank last."""
    scores = uniform(generator, tuple(valid.shape), valid.device).masked_fill(~valid, 2.0)
    return scores.argsort(dim=1, stable=True).argsort(dim=1, stable=True)


def _random_subset(valid: torch.Tensor, count: torch.Tensor, generator: RandomSource) -> torch.Tensor:
    """`count[i]` valid units of row i, chosen uniformly: those whose random score is among the row's smallest."""
    scores = uniform(generator, tuple(valid.shape), valid.device).masked_fill(~valid, 2.0)
    cutoff = scores.sort(dim=1).values.gather(1, (count.long() - 1).clamp(min=0)[:, None])
    return valid & (scores <= cutoff) & (count[:, None] > 0)


def select_tokens(eligible: torch.Tensor, prob: float, generator: RandomSource) -> torch.Tensor:
    """Select `prob` of each row's eligible tokens uniformly at random (exact budget per row)."""
    return _random_subset(eligible, _budget(eligible.sum(1), prob, generator), generator)


def word_ids_from_starts(word_start: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor:
    """Number words along each row: a word starts at a start piece or after a non-eligible token; -1 off words."""
    previous_eligible = torch.nn.functional.pad(eligible[:, :-1], (1, 0), value=False)
    starts = eligible & (word_start | ~previous_eligible)
    ids = starts.long().cumsum(1) - 1
    return ids.masked_fill(~eligible, -1)


def word_ids_from_continuation(
    input_ids: torch.Tensor, is_continuation: torch.Tensor, eligible: torch.Tensor
) -> torch.Tensor:
    """Word ids from a per-vocabulary table saying which pieces continue the previous word (`##x`, not `Ġx`)."""
    return word_ids_from_starts(~is_continuation[input_ids], eligible)


def _units_to_tokens(word_ids: torch.Tensor, chosen_units: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-word choice [batch, words] back onto the tokens of each word."""
    safe = word_ids.clamp(min=0)
    return chosen_units.gather(1, safe) & (word_ids >= 0)


def _word_lengths(word_ids: torch.Tensor) -> torch.Tensor:
    num_words = int(word_ids.max().item()) + 1 if word_ids.numel() else 0
    lengths = torch.zeros(word_ids.shape[0], max(num_words, 1), dtype=torch.long, device=word_ids.device)
    lengths.scatter_add_(1, word_ids.clamp(min=0), (word_ids >= 0).long())
    return lengths


def select_whole_words(word_ids: torch.Tensor, prob: float, generator: RandomSource) -> torch.Tensor:
    """Select whole words until `prob` of the eligible tokens is covered.

    Words are taken in random order; a word is kept while the budget reaches past its middle, so the
    covered count is unbiased instead of always stopping short (or long) of the budget.
    """
    lengths = _word_lengths(word_ids).float()
    valid = lengths > 0
    budget = _budget(lengths.sum(1), prob, generator)
    order = _random_order(valid, generator)
    length_in_order = torch.zeros_like(lengths).scatter_(1, order, lengths)
    before_in_order = length_in_order.cumsum(1) - length_in_order
    before = before_in_order.gather(1, order)
    chosen = valid & (before + lengths / 2 < budget[:, None])
    # At least one word per non-empty row, like the token-level budget.
    first = valid & (order == 0)
    return _units_to_tokens(word_ids, chosen | first)


def select_spans(
    eligible: torch.Tensor,
    prob: float,
    span_lambda: float,
    generator: RandomSource,
    word_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Select non-overlapping spans with Poisson(`span_lambda`) lengths covering `prob` of each row.

    Spans are laid out over the eligible units (tokens, or whole words when `word_ids` is given) in
    the order they come: m spans of lengths l_i and the n - sum(l) untouched units are arranged
    uniformly at random, with at least one untouched unit after each span so that spans never merge
    and each masked run is one span. Zero-length draws are skipped, so span lengths follow the
    zero-truncated Poisson, mean `span_lambda / (1 - exp(-span_lambda))` (runs come out slightly
    shorter: special tokens cut them, and the last span of a row is kept more often when it is short).
    """
    if word_ids is None:
        unit_ids = (eligible.long().cumsum(1) - 1).masked_fill(~eligible, -1)
    else:
        unit_ids = word_ids
    batch, device = eligible.shape[0], eligible.device
    units = (unit_ids.amax(1, keepdim=False) + 1).clamp(min=0) if unit_ids.shape[1] else eligible.sum(1)
    target = units.float() * prob
    most = int(units.max()) if batch else 0
    max_spans = int(math.ceil(prob * most / (1 - math.exp(-span_lambda)))) * 2 + 8
    lengths = torch.minimum(poisson(float(span_lambda), (batch, max_spans), generator).to(device), units[:, None])
    positive = lengths > 0
    covered_before = lengths.cumsum(1) - lengths
    spans_before = positive.long().cumsum(1) - positive.long()
    # Keep spans while the budget reaches past the span's middle (the first one always, as BERT keeps
    # at least one target) and while the span and its trailing gap still fit in the row plus one
    # virtual unit at its end.
    wanted = (covered_before + lengths / 2 < target[:, None]) | (spans_before == 0)
    fits = covered_before + lengths + spans_before + 1 <= units[:, None] + 1
    keep = positive & ((wanted & fits) | ~positive).long().cumprod(1).bool()
    num_spans = keep.sum(1)
    # Kept spans moved to the front, in order.
    compact_lengths = (lengths * keep).gather(1, (~keep).long().argsort(dim=1, stable=True))
    # Arrange the items uniformly: each span with its trailing gap is one item, and so is every other
    # untouched unit (counting the virtual one).
    items = units + 1 - compact_lengths.sum(1)
    max_items = int(items.max()) if batch else 1
    index = torch.arange(max_items, device=device).expand(batch, -1)
    item_valid = index < items[:, None]
    is_span_item = _random_subset(item_valid, num_spans, generator)
    span_item_index = index.masked_fill(~is_span_item, max_items).sort(1).values
    span_item_index = torch.nn.functional.pad(span_item_index, (0, max(max_spans - max_items, 0)))[:, :max_spans]
    in_use = torch.arange(max_spans, device=device)[None, :] < num_spans[:, None]
    starts = (span_item_index + compact_lengths.cumsum(1) - compact_lengths) * in_use
    change = torch.zeros(batch, most + 2, dtype=torch.long, device=device)
    change.scatter_add_(1, starts, in_use.long())
    change.scatter_add_(1, (starts + compact_lengths) * in_use, -in_use.long())
    covered_units = change.cumsum(1)[:, : most + 1] > 0
    return _units_to_tokens(unit_ids, covered_units)


def apply_mask(
    input_ids: torch.Tensor,
    selected: torch.Tensor,
    mask_token_id: int,
    random_ids: torch.Tensor,
    generator: RandomSource,
    mask_token_frac: float = 0.8,
    random_token_frac: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's corruption of the selected positions; returns (corrupted ids, labels).

    Labels hold the original id at selected positions and -100 elsewhere; `random_ids` is the pool
    random replacements are drawn from (the vocabulary without special tokens).
    """
    labels = input_ids.masked_fill(~selected, IGNORE_INDEX)
    draw = uniform(generator, tuple(input_ids.shape), input_ids.device)
    to_mask = selected & (draw < mask_token_frac)
    to_random = selected & (draw >= mask_token_frac) & (draw < mask_token_frac + random_token_frac)
    corrupted = input_ids.masked_fill(to_mask, mask_token_id)
    return substitute(corrupted, to_random, random_ids, generator), labels


def substitute(
    input_ids: torch.Tensor, positions: torch.Tensor, random_ids: torch.Tensor, generator: RandomSource
) -> torch.Tensor:
    """Replace `positions` with ids drawn uniformly from `random_ids` (one draw per position, so that a
    row's replacements do not depend on the other rows)."""
    draw = uniform(generator, tuple(input_ids.shape), input_ids.device)
    picks = (draw * len(random_ids)).long().clamp(max=len(random_ids) - 1)
    substituted = input_ids.clone()
    substituted[positions] = random_ids.to(input_ids.device)[picks[positions]]
    return substituted


def delete_tokens(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor, pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop `positions` from each row, shift the rest left and re-pad to the longest remaining row."""
    keep = attention_mask.bool() & ~positions
    lengths = keep.sum(1)
    width = max(int(lengths.max()) if lengths.numel() else 0, 1)
    # A stable sort on "not kept" moves kept tokens to the front in their original order.
    order = (~keep).long().argsort(dim=1, stable=True)[:, :width]
    shifted = input_ids.gather(1, order)
    new_mask = (torch.arange(width, device=input_ids.device)[None, :] < lengths[:, None]).long()
    return shifted.masked_fill(new_mask == 0, pad_token_id), new_mask


def select(
    config: NoiseConfig,
    eligible: torch.Tensor,
    generator: RandomSource,
    word_ids: torch.Tensor | None = None,
    prob: float | None = None,
) -> torch.Tensor:
    """The positions `config` selects: tokens, whole words (when `word_ids` is given) or Poisson spans."""
    prob = config.mask_prob if prob is None else prob
    if config.span_lambda is not None:
        return select_spans(eligible, prob, config.span_lambda, generator, word_ids=word_ids)
    if word_ids is not None:
        return select_whole_words(word_ids, prob, generator)
    return select_tokens(eligible, prob, generator)
