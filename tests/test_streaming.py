"""PackedBatchStream: the same blocks as `iter_packed`, exact resume from any item's state with at most one
text batch re-tokenised, disjoint ranks, the same items through a DataLoader worker, and its errors."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoTokenizer

from maskae import CheckpointError, ConfigError, DataError
from maskae.data.corpus import iter_packed, load_corpus, tokenize_and_pack
from maskae.data.streaming import PackedBatchStream

BLOCK, ROWS, TEXTS = 128, 4, 40  # block_size, rows_per_batch, text_batch_size: ~50 items and 6 text batches a pass

pytestmark = pytest.mark.usefixtures("private_datasets_cache")


@pytest.fixture(scope="module")
def tokenizer(small_tokenizer):
    return AutoTokenizer.from_pretrained(small_tokenizer)


@pytest.fixture(scope="module")
def lines(shared_data) -> list[str]:
    """240 distinct non-blank WikiText-2 lines (headings included), so a text names its place in the corpus."""
    raw = (shared_data / "wikitext2" / "train.txt").read_text(encoding="utf-8").splitlines()
    return list(dict.fromkeys(line.strip() for line in raw if line.strip()))[:240]


def write_corpus(folder, lines: list[str], kind: str, files: int):
    """`lines` in `files` files of one kind; returns the folder (or the one file)."""
    folder.mkdir()
    size = -(-len(lines) // files)
    for i in range(files):
        part, path = lines[i * size:(i + 1) * size], folder / f"part{i}.{kind}"
        if kind == "txt":
            path.write_text("\n".join(part) + "\n", encoding="utf-8")
        elif kind == "jsonl":
            path.write_text("".join(json.dumps({"text": line}) + "\n" for line in part), encoding="utf-8")
        else:
            pq.write_table(pa.table({"text": part}), path, row_group_size=50)
    return str(folder if files > 1 else path)


def take(stream: PackedBatchStream, count: int) -> list[dict]:
    return list(itertools.islice(iter(stream), count))


def one_sentence(message: str) -> bool:
    return message.endswith(".") and ". " not in message


def test_first_pass_is_iter_packed_and_starts_as_map_style_packing(tmp_path, tokenizer, lines):
    """Streaming packs like `iter_packed`: each text batch's ids continue the previous batch's leftover.
    Map-style `tokenize_and_pack` packs each map batch's full blocks on their own and all leftovers at the end,
    so the two agree only on the blocks of the first text batch."""
    source = write_corpus(tmp_path / "c", lines, "txt", 1)
    texts = load_corpus(source, streaming=True)
    expected = [row["input_ids"] for row in iter_packed(texts, tokenizer, BLOCK, batch_size=TEXTS)]
    stream = PackedBatchStream(source, tokenizer, BLOCK, ROWS, text_batch_size=TEXTS)
    rows = [row for item in take(stream, len(expected) // ROWS + 2) for row in item["rows"]]
    got = [row["input_ids"] for row in rows]
    assert got[:len(expected)] == expected
    assert [(row["noise_epoch"], row["noise_index"]) for row in rows[:len(expected)]] == [
        (0, i) for i in range(len(expected))]
    assert (got[len(expected)], rows[len(expected)]["noise_epoch"]) == (expected[0], 1)  # the next pass

    first_batch = len(list(iter_packed(list(texts.take(TEXTS)), tokenizer, BLOCK, batch_size=TEXTS)))
    map_style = tokenize_and_pack(load_corpus(source), tokenizer, BLOCK, batch_size=TEXTS)["input_ids"]
    assert 0 < first_batch < len(expected)
    assert got[:first_batch] == map_style[:first_batch]
    assert got[first_batch] != map_style[first_batch]


class CountingTokenizer:
    """The tokenizer, counting the texts each call tokenises."""

    def __init__(self, tokenizer):
        self.tokenizer, self.calls = tokenizer, []

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)

    def __call__(self, texts, **options):
        self.calls.append(len(texts))
        return self.tokenizer(texts, **options)


@pytest.mark.parametrize("kind,files,rows", [("txt", 4, 1), ("txt", 4, 3), ("jsonl", 1, 3), ("parquet", 2, 1)])
def test_resume_from_any_item_continues_exactly(tmp_path, tokenizer, lines, kind, files, rows):
    """One row per item puts item ends on text-batch ends; three rows make items straddle text batches and passes."""
    source = write_corpus(tmp_path / "c", lines, kind, files)
    stream = PackedBatchStream(source, tokenizer, BLOCK, rows, text_batch_size=TEXTS)
    first = stream.state_dict()["texts"]
    stream.tokenizer = counting = CountingTokenizer(tokenizer)
    count, items, calls_after = 25, [], []  # calls_after[k]: tokenizer calls made once item k was produced
    for item in iter(stream):
        items.append(item)
        calls_after.append(len(counting.calls))
        if sum(item["rows"][0]["noise_epoch"] == 1 for item in items) > count:
            break
    states = [item["state"] for item in items]
    last = max(k for k, item in enumerate(items) if item["rows"][0]["noise_epoch"] == 0)  # it ends pass 0
    cuts = {
        "inside a later text batch": next(k for k, s in enumerate(states) if s["skip"] > 0 and s["texts"] != first),
        "before the item ending pass 0": last - 1,
        "after the item ending pass 0": last,
    }
    if rows == 1:
        cuts["at a text-batch boundary"] = next(k for k, s in enumerate(states[:last]) if s["skip"] == 0)
    else:
        assert len({row["noise_epoch"] for row in items[last]["rows"]}) == 2
        cuts["before an item straddling text batches"] = next(
            k - 1 for k, s in enumerate(states) if 0 < s["skip"] < rows and s["texts"] != first)
    for where, k in cuts.items():
        state = json.loads(json.dumps(items[k]["state"]))
        assert len(json.dumps(state)) < 8 * BLOCK + 1000, "the state is small"
        resumed = PackedBatchStream(source, tokenizer, BLOCK, rows, text_batch_size=TEXTS)
        resumed.load_state_dict(state)
        assert resumed.state_dict() == state
        resumed.tokenizer = recount = CountingTokenizer(tokenizer)
        assert take(resumed, count) == items[k + 1:k + 1 + count], where
        assert len(recount.calls) <= calls_after[k + count] - calls_after[k] + 1, f"{where}: re-tokenised too much"


@pytest.mark.parametrize("files", [4, 1], ids=["shards", "one file"])
def test_two_ranks_split_the_corpus(tmp_path, tokenizer, lines, files):
    source = write_corpus(tmp_path / "c", lines, "txt", files)
    corpus = [row["text"] for row in load_corpus(source, streaming=True)]
    assert len(set(corpus)) == len(corpus)
    seen, indices = [], []
    for rank in (0, 1):
        stream = PackedBatchStream(source, tokenizer, BLOCK, ROWS, rank=rank, world_size=2, text_batch_size=TEXTS)
        texts = [row["text"] for row in stream.texts]
        packed = [row["input_ids"] for row in iter_packed(texts, tokenizer, BLOCK, batch_size=TEXTS)]
        rows = [row for item in take(stream, len(packed) // ROWS) for row in item["rows"]]
        assert [row["input_ids"] for row in rows] == packed[:len(rows)]
        assert [row["noise_index"] for row in rows] == [2 * i + rank for i in range(len(rows))]
        seen.append(texts)
        indices.append({row["noise_index"] for row in rows})
    assert set(seen[0]).isdisjoint(seen[1]) and Counter(seen[0]) + Counter(seen[1]) == Counter(corpus)
    assert indices[0].isdisjoint(indices[1])


def test_a_dataloader_worker_gives_the_same_items(tmp_path, tokenizer, lines, monkeypatch):
    source = write_corpus(tmp_path / "c", lines, "txt", 2)
    stream = PackedBatchStream(source, tokenizer, BLOCK, ROWS, text_batch_size=TEXTS)
    plain = take(stream, 70)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=1)
    through_worker = list(itertools.islice(loader, 70))
    assert through_worker == plain
    resumed = PackedBatchStream(source, tokenizer, BLOCK, ROWS, text_batch_size=TEXTS)
    resumed.load_state_dict(through_worker[30]["state"])
    assert take(resumed, 10) == plain[31:41]
    # Two workers would each pack half of the shards into a stream of their own; checked without spawning them,
    # as a DataLoader whose worker raised takes 5 s per worker to shut down.
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: SimpleNamespace(id=0, num_workers=2))
    with pytest.raises(ConfigError, match="num_workers=0 or 1, not 2"):
        next(iter(stream))


def test_errors_say_what_to_do(tmp_path, tokenizer, lines):
    source = write_corpus(tmp_path / "c", lines, "txt", 2)
    state = take(PackedBatchStream(source, tokenizer, BLOCK, ROWS, rank=1, world_size=2), 1)[0]["state"]
    with pytest.raises(CheckpointError) as caught:
        PackedBatchStream(source, tokenizer, BLOCK, ROWS).load_state_dict(state)
    assert "2 processes" in str(caught.value) and "--num_processes 2" in str(caught.value)
    assert one_sentence(str(caught.value))
    with pytest.raises(CheckpointError) as caught:
        PackedBatchStream(source, tokenizer, 64, ROWS, rank=1, world_size=2).load_state_dict(state)
    assert "blocks of 128" in str(caught.value) and one_sentence(str(caught.value))
    with pytest.raises(CheckpointError, match="process 1, not process 0"):
        PackedBatchStream(source, tokenizer, BLOCK, ROWS, rank=0, world_size=2).load_state_dict(state)

    short = tmp_path / "short.txt"
    short.write_text(lines[0][:40] + "\n", encoding="utf-8")
    with pytest.raises(DataError) as caught:
        take(PackedBatchStream(str(short), tokenizer, BLOCK, ROWS), 1)
    assert "fewer tokens than one block of 128" in str(caught.value) and "smaller block_size" in str(caught.value)
    assert one_sentence(str(caught.value))
