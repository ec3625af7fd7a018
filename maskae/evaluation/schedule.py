"""The fixed fine-tuning schedule: a few hyper-parameters per budget size, the same for every model (not
tuned per model, so a comparison can only differ in the weights). Kept apart from the loop so that
`maskae evaluate --help` can print it without loading torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HyperParameters:
    """One row of the fixed schedule: used for budgets of up to `max_labels` labels."""

    max_labels: int | None  # None: any larger budget
    epochs: int  # the epoch that scores best on the selection slice is kept
    batch_size: int


# Small budgets get more epochs so that they still take a hundred or more optimizer steps.
HYPERPARAMETERS = (
    HyperParameters(max_labels=500, epochs=20, batch_size=16),
    HyperParameters(max_labels=5_000, epochs=8, batch_size=32),
    HyperParameters(max_labels=None, epochs=3, batch_size=32),
)
# Peak learning rate: inversely proportional to the width, 3e-4 at 128 (a 128-wide random init learns
# nothing in 8 epochs at 1e-4), 1e-4 at 384 (MiniLM), 5e-5 at 768 (BERT-base's usual value).
BASE_LR, BASE_WIDTH = 3e-4, 128
WARMUP_FRACTION = 0.1  # linear warm-up over this share of the steps, then linear decay to zero
WEIGHT_DECAY = 0.01  # AdamW
MAX_GRAD_NORM = 1.0
MAX_LENGTH = 128  # tokens per example (a pair counts both sentences), as run_glue.py's default
SELECTION_FRACTION = 0.15  # share of each budget held out to pick the best epoch
MIN_BUDGET = 20
EVAL_BATCH_SIZE = 64


def hyperparameters(labels: int) -> HyperParameters:
    """The schedule row for a budget of `labels` labels."""
    return next(h for h in HYPERPARAMETERS if h.max_labels is None or labels <= h.max_labels)


def learning_rate(hidden_size: int) -> float:
    """The peak learning rate for an encoder of this width (see BASE_LR)."""
    return BASE_LR * BASE_WIDTH / hidden_size


def describe_hyperparameters() -> str:
    """The schedule as text, for `--help` and the README."""
    lines = []
    for h in HYPERPARAMETERS:
        size = f"<= {h.max_labels} labels" if h.max_labels else "more labels"
        lines.append(f"{size:<16} {h.epochs:>2} epochs, batch {h.batch_size}")
    lines += [
        f"every budget:    AdamW, peak lr {BASE_LR:g} x {BASE_WIDTH} / hidden size (1e-4 for a 384-wide encoder),",
        f"                 weight decay {WEIGHT_DECAY}, {WARMUP_FRACTION:.0%} linear warm-up, then linear decay;",
        f"                 gradient norm clipped at {MAX_GRAD_NORM}; {MAX_LENGTH} tokens; the epoch that scores best on",
        f"                 a {SELECTION_FRACTION:.0%} slice of the budget (never the validation split) is kept",
    ]
    return "\n".join(lines)
