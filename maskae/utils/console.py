"""Console output of a long run that reads the same on a terminal and in a captured log.

On a terminal: a tqdm bar, with every other line (evaluation summaries, log records, warnings) written
above it, and the bar closed with a newline before an error is printed, so the error starts on its own
line. Captured to a file or a pipe, a bar's carriage-return redraws would leave fragments glued to
whatever is printed next; there the bar is replaced by a plain status line every `interval` seconds.
"""

from __future__ import annotations

import logging
import sys
import time
from types import TracebackType

from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

PLAIN_INTERVAL_S = 30.0


def is_terminal() -> bool:
    return sys.stderr.isatty()


def quiet_library_bars() -> None:
    """Turn off the datasets and transformers progress bars when the output is not a terminal (their
    redraws are what makes a captured log unreadable); on a terminal they stay."""
    if is_terminal():
        return
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


def write(line: str) -> None:
    """Print `line` on stdout above any live progress bar, flushed so that a log capturing stdout and stderr
    together keeps it in order with the bar's status lines."""
    tqdm.write(line, file=sys.stdout)
    sys.stdout.flush()


class Progress:
    """`with Progress(total) as progress: progress.update(1); progress.set_postfix(loss="6.5")`; print other
    lines with `write`."""

    def __init__(self, total: int, initial: int = 0, desc: str = "training", enabled: bool = True,
                 interval: float = PLAIN_INTERVAL_S) -> None:
        self.total, self.initial, self.n = total, initial, initial
        self.desc, self.enabled, self.interval = desc, enabled, interval
        self.postfix: dict[str, str] = {}
        self.bar: tqdm | None = None

    def __enter__(self) -> "Progress":
        self.started = self.last_printed = time.perf_counter()
        if self.enabled and is_terminal():
            self.bar = tqdm(total=self.total, initial=self.n, desc=self.desc, dynamic_ncols=True, file=sys.stderr)
            self._redirect = logging_redirect_tqdm()
            self._redirect.__enter__()  # log records go through tqdm.write, above the bar
            logging.captureWarnings(True)  # and so do Python warnings
        return self

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and time.perf_counter() - self.last_printed >= self.interval:
            self._print_status()

    def set_postfix(self, **values: str) -> None:
        self.postfix = {key: str(value) for key, value in values.items()}
        if self.bar is not None:
            self.bar.set_postfix(self.postfix)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self.bar is not None:
            self.bar.close()  # ends the bar's line, so an error printed next starts on its own
            logging.captureWarnings(False)
            self._redirect.__exit__(kind, error, traceback)
        elif self.enabled and self.n > self.initial:
            self._print_status()  # where the run ended or stopped

    def _print_status(self) -> None:
        now = time.perf_counter()
        elapsed = now - self.started
        rate = (self.n - self.initial) / elapsed if elapsed > 0 else 0.0
        left = tqdm.format_interval((self.total - self.n) / rate) if rate else "?"
        fields = [f"{self.desc} {self.n}/{self.total} ({self.n / max(self.total, 1):.0%})",
                  f"{tqdm.format_interval(elapsed)} elapsed, {left} left", f"{rate:.2f} it/s",
                  *(f"{key} {value}" for key, value in self.postfix.items())]
        print(" | ".join(fields), file=sys.stderr, flush=True)
        self.last_printed = now
