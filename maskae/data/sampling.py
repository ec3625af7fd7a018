"""Which sequences each process trains on at each step, tagged for counter-based noise.

Step s of a run is global batch s. Epoch e = s // steps_per_epoch shuffles all sequences with seed + e,
and global batch b of that epoch is rows [b * B, (b + 1) * B) of the shuffled order; process r of P takes
rows [r * B / P, (r + 1) * B / P) of it. Everything is a function of (seed, step, rank, P), so the step is
the only data position a checkpoint needs, and a run resumed on another process count continues with
the same global batches. Each row is tagged with its (epoch, index), which the collator turns into the
row's noise (`noise.KeyedRandom`): each process noises only its own rows, in DataLoader workers if asked.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torch.utils.data import Dataset, Sampler

Key = tuple[int, int]  # (epoch, index of the sequence in the training set)


class TaggedRows(Dataset):
    """A `datasets.Dataset` of `input_ids` rows, read by (epoch, index) keys and tagged with them."""

    def __init__(self, rows: Any) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: Key) -> dict[str, Any]:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list[Key]) -> list[dict[str, Any]]:
        """One read for the whole batch (a datasets `Dataset` reads a list of indices at once)."""
        ids = self.rows[[index for _, index in keys]]["input_ids"]
        return [{"input_ids": row, "noise_epoch": epoch, "noise_index": index} for row, (epoch, index) in zip(ids, keys)]


class StepBatchSampler(Sampler[list[Key]]):
    """This process's share of every global batch from `start_step` on (endless: the loop decides when to stop)."""

    def __init__(self, num_rows: int, batch_size: int, seed: int, rank: int = 0, num_processes: int = 1,
                 start_step: int = 0) -> None:
        self.num_rows, self.batch_size, self.seed = num_rows, batch_size, seed
        self.rank, self.num_processes, self.start_step = rank, num_processes, start_step
        self.steps_per_epoch = num_rows // batch_size
        self.local_rows = batch_size // num_processes

    def __iter__(self) -> Iterator[list[Key]]:
        epoch, position = divmod(self.start_step, self.steps_per_epoch)
        while True:
            order = torch.randperm(self.num_rows, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
            for batch in range(position, self.steps_per_epoch):
                first = batch * self.batch_size + self.rank * self.local_rows
                yield [(epoch, index) for index in order[first : first + self.local_rows]]
            epoch, position = epoch + 1, 0
