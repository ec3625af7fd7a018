"""The noise a recipe asks for (`noise.*` keys), checked when it is built. Kept apart from the noise
functions in `noise` so that reading a recipe, and `maskae train --help` listing its keys, need no torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from ..errors import ConfigError


@dataclass
class NoiseConfig:
    """How to corrupt the input. Build it in code, or from a recipe's dict with `NoiseConfig.from_dict`.

    mask_prob: fraction of eligible tokens selected as targets.
    mask_token_frac / random_token_frac: of the selected tokens, the share replaced by the mask token
        and by a random token; the rest stay unchanged (BERT's 80/10/10).
    whole_word: select all pieces of a word together (WordPiece `##`, byte-level BPE `Ġ`, SentencePiece `▁`).
    span_lambda: when set, select contiguous spans whose lengths follow Poisson(span_lambda) (SpanBERT/BART).
    delete_prob / substitute_prob: share of the encoder's remaining tokens deleted or replaced by a random
        token (TSDAE-style noise for the sentence bottleneck; deletion needs `decoder_mask_prob`).
    decoder_mask_prob: sentence bottleneck only; the share of the decoder's clean copy replaced by the mask
        token. The labels then refer to that copy.
    """

    mask_prob: float = 0.15
    mask_token_frac: float = 0.8
    random_token_frac: float = 0.1
    whole_word: bool = False
    span_lambda: float | None = None
    delete_prob: float = 0.0
    substitute_prob: float = 0.0
    decoder_mask_prob: float | None = None

    def __post_init__(self) -> None:
        def check_unit(name: str, value: Any, low_open: bool) -> None:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not ok or not ((0 < value if low_open else 0 <= value) and value < 1):
                interval = "(0, 1)" if low_open else "[0, 1)"
                raise ConfigError(f"noise.{name}={value!r} is outside {interval}; set it to e.g. 0.15.")

        corrupts_otherwise = bool(self.delete_prob) or bool(self.substitute_prob)
        check_unit("mask_prob", self.mask_prob, low_open=not corrupts_otherwise)
        check_unit("delete_prob", self.delete_prob, low_open=False)
        check_unit("substitute_prob", self.substitute_prob, low_open=False)
        for name in ("mask_token_frac", "random_token_frac"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ConfigError(f"noise.{name}={value!r} is outside [0, 1]; BERT uses 0.8 and 0.1.")
        if self.mask_token_frac + self.random_token_frac > 1 + 1e-9:
            raise ConfigError(
                f"noise.mask_token_frac + noise.random_token_frac = "
                f"{self.mask_token_frac + self.random_token_frac:g} exceeds 1; lower one of them (BERT: 0.8 + 0.1)."
            )
        if self.span_lambda is not None and not (isinstance(self.span_lambda, (int, float)) and self.span_lambda > 0):
            raise ConfigError(f"noise.span_lambda={self.span_lambda!r} must be a positive number (SpanBERT-like: 3).")
        if self.decoder_mask_prob is not None:
            check_unit("decoder_mask_prob", self.decoder_mask_prob, low_open=True)
        elif self.delete_prob:
            raise ConfigError(
                "noise.delete_prob shifts positions, so labels can only refer to a separate decoder copy; "
                "set noise.decoder_mask_prob (e.g. 0.6) or set delete_prob to 0."
            )

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> NoiseConfig:
        """Build from a recipe's `noise:` mapping; unknown keys are errors, not silently ignored."""
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown noise key(s) {', '.join(unknown)}; valid keys are {', '.join(sorted(known))}.")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
