"""Pretraining batches packed on the fly from a streamed corpus, split over processes and resumable.

A corpus too large to tokenize ahead of time is read `text_batch_size` texts at a time and packed as
`maskae.data.iter_packed` packs it. Every item carries the stream state right after it, small and
JSON-serialisable, so a checkpoint can store the state of the last batch trained on. The state points
at the start of the text batch being packed (datasets' own stream state), the ids carried into it and
the blocks of it already used: a resume re-tokenises that one text batch, never the corpus before it.

Datasets resumes its stream by row, exactly for streamed .txt, .jsonl and .parquet corpora split over
processes by shards or by rows: it re-reads, without yielding, the shard in which `load_corpus`'s current
cleaning batch (1000 raw rows) began, from the shard's start, and cleans that batch again.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator

import numpy as np
import torch
from datasets.distributed import split_dataset_by_node
from transformers import PreTrainedTokenizerBase

from ..errors import CheckpointError, ConfigError, DataError
from .corpus import _blocks, _check_block_size, _concatenate, _special_ids, load_corpus


class PackedBatchStream(torch.utils.data.IterableDataset):
    """Local training batches packed on the fly from a streamed corpus, each with the stream state after it.

    Each item is `{"rows": [...], "state": ...}`: `rows_per_batch` rows `{"input_ids", "noise_epoch",
    "noise_index"}`, where `noise_epoch` is the pass over the corpus and `noise_index` numbers the
    blocks of a pass across processes (`local block * world_size + rank`), so noise keys never collide.
    The stream is endless: after the last full block of a pass the next pass starts from the first text.
    Use one iterator at a time: the datasets stream underneath keeps a single position.
    """

    def __init__(
        self,
        source: str,
        tokenizer: PreTrainedTokenizerBase,
        block_size: int,
        rows_per_batch: int,
        *,
        text_column: str = "text",
        rank: int = 0,
        world_size: int = 1,
        text_batch_size: int = 1000,
    ) -> None:
        _check_block_size(tokenizer, block_size, None)
        for name, value in (("rows_per_batch", rows_per_batch), ("text_batch_size", text_batch_size)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}={value!r} must be a positive integer.")
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank={rank} must lie in 0..{world_size - 1} for world_size={world_size}.")
        corpus = load_corpus(source, text_column=text_column, streaming=True)
        self.texts = split_dataset_by_node(corpus, rank=rank, world_size=world_size)
        self.tokenizer, self.block_size, self.rows_per_batch = tokenizer, block_size, rows_per_batch
        self.rank, self.world_size, self.text_batch_size = rank, world_size, text_batch_size
        # A pass starts from the datasets state of a stream not yet read.
        self._first = {"pass": 0, "texts": self.texts.state_dict(), "leftover": [], "skip": 0, "local_block": 0,
                       "rank": rank, "world_size": world_size, "block_size": block_size}
        self._state = self._first

    def state_dict(self) -> dict:
        """Where iteration starts: the initial state, or the one loaded."""
        return copy.deepcopy(self._state)

    def load_state_dict(self, state: dict) -> None:
        """Start the next iteration right after the item that `state` came with."""
        if not isinstance(state, dict) or set(state) != set(self._first):
            raise CheckpointError("the saved data stream state is not a PackedBatchStream state; resume from a "
                                  "checkpoint written by a streaming run, or restart without --resume.")
        if state["world_size"] != self.world_size:
            n = state["world_size"]
            raise CheckpointError(f"this checkpoint streams its corpus split over {n} processes; resume it with {n} "
                                  f"processes (accelerate launch --num_processes {n}), or restart without --resume.")
        if state["block_size"] != self.block_size:
            raise CheckpointError(f"this checkpoint packs its corpus into blocks of {state['block_size']} tokens; "
                                  f"resume it with data.block_size={state['block_size']}, or restart without --resume.")
        if state["rank"] != self.rank:
            raise CheckpointError(f"this stream state belongs to process {state['rank']}, not process {self.rank}; "
                                  "give each process the state that its own stream saved.")
        self._state = copy.deepcopy(state)

    def __iter__(self) -> Iterator[dict]:
        worker = torch.utils.data.get_worker_info()
        if worker is not None and worker.num_workers > 1:
            raise ConfigError(f"a PackedBatchStream is one ordered stream per process; load it with num_workers=0 "
                              f"or 1, not {worker.num_workers}.")
        rows = []
        for ids, noise_epoch, noise_index, state in self._packed():
            rows.append({"input_ids": ids, "noise_epoch": noise_epoch, "noise_index": noise_index})
            if len(rows) == self.rows_per_batch:
                yield {"rows": rows, "state": copy.deepcopy(state)}
                rows = []

    def _packed(self) -> Iterator[tuple[list[int], int, int, dict]]:
        """This process's blocks, endlessly, each with its pass, its global index and the state after it.

        States are rebuilt, never changed in place, so one already handed out stays true."""
        start, separator = _special_ids(self.tokenizer)
        state = self._state
        while True:
            self.texts.load_state_dict(state["texts"])
            rows = iter(self.texts)
            while batch := [row["text"] for row in itertools.islice(rows, self.text_batch_size)]:
                encoded = self.tokenizer(batch, add_special_tokens=False, return_attention_mask=False,
                                         return_token_type_ids=False, verbose=False)["input_ids"]
                carried = np.asarray(state["leftover"], dtype=np.int32)
                blocks, tail = _blocks(np.concatenate([carried, _concatenate(encoded, separator)]), start,
                                       self.block_size)
                # islice read exactly this batch, so datasets' state is where the next batch starts.
                following = {"texts": self.texts.state_dict(), "leftover": tail.tolist(), "skip": 0}
                for index in range(state["skip"], len(blocks)):
                    local = state["local_block"]
                    state = {**state, "skip": index + 1, "local_block": local + 1}
                    if index + 1 == len(blocks):
                        state = {**state, **following}
                    yield blocks[index].tolist(), state["pass"], local * self.world_size + self.rank, state
                state = {**state, **following}
            if state["local_block"] == 0:
                raise DataError(
                    f"the corpus has fewer tokens than one block of {self.block_size} on this process (rank "
                    f"{self.rank} of {self.world_size}); use a smaller block_size or more text."
                )
            state = {**self._first, "pass": state["pass"] + 1}
