"""The teacher's sentence embeddings of a distillation corpus, computed once and cached on disk.

On a CPU, embedding the corpus with the whole teacher costs as much as minutes of student training, and
every run that distils another layer from the same text needs the same vectors. So they are stored as
safetensors (written to a temporary name, then renamed) under a key made of the teacher, its settings
and the text itself: a changed corpus or setting computes afresh, never reuses stale vectors.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..embeddings.embedder import Embedder


def cache_key(teacher: str, settings: dict, texts: Sequence[str] = ()) -> str:
    """A digest of what the vectors depend on: the teacher (a local directory by its resolved path and
    weights' size and time), the settings that shape them, and every text in order."""
    identity = {"teacher": teacher, **settings}
    path = Path(teacher)
    if path.is_dir():
        identity["teacher"] = str(path.resolve())
        identity["weights"] = sorted(
            (f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in path.glob("*.safetensors")
        )
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode())
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass") + b"\0")
    return digest.hexdigest()[:24]


def _cached(path: Path, rows: int | None = None) -> torch.Tensor | None:
    """The vectors stored at `path` (with `rows` rows, when given), or None."""
    if not path.is_file():
        return None
    vectors = load_file(path)["embeddings"]
    return vectors if rows is None or vectors.shape[0] == rows else None


def _store(path: Path, vectors: torch.Tensor, metadata: dict[str, str]) -> torch.Tensor:
    """Write `vectors` under a temporary name and rename it into place: never half-visible."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    save_file({"embeddings": vectors.contiguous()}, partial, metadata=metadata)
    os.replace(partial, path)
    return vectors


def teacher_embeddings(
    teacher: str,
    texts: Sequence[str],
    cache_dir: str | Path,
    pooling: str = "mean",
    max_length: int = 128,
    batch_size: int = 64,
    show_progress: bool = True,
) -> torch.Tensor:
    """[len(texts), dim] float32: the teacher's pooled last layer for each text (no whitening, not
    normalised), read from `cache_dir` when an earlier run computed it."""
    key = cache_key(teacher, {"pooling": pooling, "max_length": max_length}, texts)
    path = Path(cache_dir) / f"teacher-{key}.safetensors"
    cached = _cached(path, len(texts))
    if cached is not None:
        return cached
    embedder = Embedder.from_pretrained(teacher)
    vectors = embedder.embed(list(texts), pooling=pooling, max_length=min(max_length, embedder.max_length),
                             batch_size=batch_size, whiten=False, show_progress=show_progress)
    return _store(path, torch.from_numpy(vectors), {"teacher": teacher, "pooling": pooling,
                                                    "max_length": str(max_length)})


@torch.inference_mode()
def token_embeddings(teacher: str, cache_dir: str | Path, pooling: str = "mean", batch_size: int = 512) -> torch.Tensor:
    """[vocab, dim]: the teacher's sentence embedding of every vocabulary entry on its own (`[CLS] t [SEP]`),
    the vectors model2vec distils a static model from; cached like `teacher_embeddings`."""
    path = Path(cache_dir) / f"tokens-{cache_key(teacher, {'pooling': pooling, 'of': 'vocabulary'})}.safetensors"
    cached = _cached(path)
    if cached is not None:
        return cached
    embedder = Embedder.from_pretrained(teacher)
    tokenizer, model = embedder.tokenizer, embedder.model
    vocab = int(model.get_input_embeddings().num_embeddings)
    first = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    last = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    ids = torch.arange(vocab).unsqueeze(1)
    ends = [torch.full_like(ids, token) for token in (first, last) if token is not None]
    ids = torch.cat([ends[0], ids, *ends[1:]] if len(ends) == 2 else [ids, *ends], dim=1).to(embedder.device)
    vectors = []
    for start in range(0, vocab, batch_size):
        chunk = ids[start:start + batch_size]
        hidden = model(input_ids=chunk, attention_mask=torch.ones_like(chunk)).last_hidden_state
        vectors.append((hidden[:, 0] if pooling == "cls" else hidden.mean(dim=1)).float().cpu())
    return _store(path, torch.cat(vectors), {"teacher": teacher, "pooling": pooling})
