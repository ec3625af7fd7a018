"""How good are the embeddings? STS Spearman, few-label linear probes, per-layer sweeps, and the
classic linear reductions of the same width (LSA, PCA) to compare a bottleneck of size d against.

The figures on arrays (`sts_spearman`, `probe_accuracy`, `lsa_embeddings`, `pca_embeddings`) are
separate from the model-facing functions (`evaluate_sts`, `evaluate_probe`, `evaluate_layers`) so
that they can be checked against independent computations on fixed arrays. `evaluate_mlm` scores
the decoder side: masked accuracy and pseudo-perplexity, computed by `maskae.mlm_metrics`.
"""

from __future__ import annotations

import csv
import functools
import logging
from collections.abc import Sequence
from pathlib import Path

import evaluate
import numpy as np
import torch
from sklearn.decomposition import PCA, TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics.pairwise import paired_cosine_distances
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from transformers import AutoConfig, AutoModelForMaskedLM, AutoModelForPreTraining, AutoTokenizer

from .collator import DataCollatorForDenoising
from .data import load_corpus, tokenize_and_pack
from .embeddings import Embedder
from .errors import CheckpointError, ConfigError, DataError, TokenizerError
from .mlm_metrics import masked_lm_metrics, pseudo_perplexity
from .noise import NoiseConfig
from .whitening import Whitening

logger = logging.getLogger(__name__)

STS_COLUMNS = ("sentence1", "sentence2", "score")
PROBE_COLUMNS = ("sentence", "label")
METRICS_DIR = Path(__file__).parent / "metrics"
DEFAULT_BUDGETS: tuple[int | None, ...] = (100, 1000, None)  # None = every label in the training pool
DEFAULT_SEEDS = (0, 1, 2, 3, 4)


# ---------------------------------------------------------------- data


def read_tsv(path: str | Path, columns: Sequence[str], limit: int | None = None) -> dict[str, list[str]]:
    """The named columns of a tab-separated file with a header, read with a CSV-aware reader
    (STS-B quotes fields that contain a double quote)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{str(path)!r} is not a file; pass a tab-separated file with a header row.")
    # utf-8-sig: a byte-order mark (as Windows tools write) is not part of the first column's name
    with path.open(encoding="utf-8-sig", newline="") as handle:
        try:
            reader = csv.DictReader(handle, delimiter="\t")
            missing = [c for c in columns if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(
                    f"{str(path)!r} lacks the column(s) {', '.join(missing)} (found: {', '.join(reader.fieldnames or [])}); "
                    f"give it a header row with {', '.join(columns)}, tab-separated."
                )
            table: dict[str, list[str]] = {c: [] for c in columns}
            for row in reader:
                if limit is not None and len(table[columns[0]]) >= limit:
                    break
                if any(row[c] is None for c in columns):
                    raise DataError(f"{str(path)!r}, line {reader.line_num}: the row has fewer fields than the header; "
                                    "give every row a value for each column, tab-separated.")
                for c in columns:
                    table[c].append(row[c])
        except UnicodeDecodeError:
            raise DataError(f"{str(path)!r} is not UTF-8 text; re-encode it as UTF-8 (e.g. `iconv -f latin1 -t utf-8`).") from None
    if not table[columns[0]]:
        raise DataError(f"{str(path)!r} has a header but no rows; give it at least one data row.")
    return table


def read_sts(path: str | Path, limit: int | None = None) -> tuple[list[str], list[str], np.ndarray]:
    """(sentence1, sentence2, gold scores) of an STS tsv."""
    table = read_tsv(path, STS_COLUMNS, limit)
    try:
        scores = np.array([float(s) for s in table["score"]])
    except ValueError as error:
        raise DataError(f"{str(path)!r} has a non-numeric score ({error}); the score column must hold numbers.") from None
    return table["sentence1"], table["sentence2"], scores


def read_labelled(path: str | Path, limit: int | None = None) -> tuple[list[str], list[str]]:
    """(sentences, labels) of a labelled tsv; labels are kept as strings (any label set works)."""
    table = read_tsv(path, PROBE_COLUMNS, limit)
    return table["sentence"], table["label"]


# ---------------------------------------------------------------- figures on arrays


@functools.cache
def load_metric(name: str) -> evaluate.EvaluationModule:
    """An `evaluate` module shipped in maskae/metrics/, loaded by path: no Hub access needed."""
    return evaluate.load(str(METRICS_DIR / name))


def sts_spearman(embeddings1: np.ndarray, embeddings2: np.ndarray, scores: Sequence[float]) -> float:
    """Spearman correlation (×1, in [-1, 1]) between the pairs' cosine similarities and the gold scores."""
    # float64, so that near-ties among the cosines rank the same way in any computation
    cosine = 1.0 - paired_cosine_distances(np.asarray(embeddings1, np.float64), np.asarray(embeddings2, np.float64))
    return load_metric("spearman").compute(predictions=cosine, references=scores)["spearmanr"]


def budget_name(budget: int | None) -> str:
    return "all" if budget is None else str(budget)


def parse_budgets(text: str) -> tuple[int | None, ...]:
    """'100,1000,all' -> (100, 1000, None)."""
    budgets: list[int | None] = []
    for item in text.split(","):
        item = item.strip().lower()
        if item == "all":
            budgets.append(None)
        elif item.isdigit() and int(item) > 0:
            budgets.append(int(item))
        else:
            raise ConfigError(f"label budget {item!r} is not a positive integer or 'all'; write e.g. 100,1000,all.")
    return tuple(budgets)


def probe_accuracy(
    train_x: np.ndarray,
    train_labels: Sequence,
    eval_x: np.ndarray,
    eval_labels: Sequence,
    budgets: Sequence[int | None] = DEFAULT_BUDGETS,
    seeds: Sequence[int] = DEFAULT_SEEDS,
) -> list[dict]:
    """Accuracy of a logistic-regression probe on standardised frozen features, for each label budget.

    A budget of n labels is a stratified sample of the training pool, drawn once per seed; the
    figure is the mean (and standard deviation) over seeds. `None` means the whole pool, which
    involves no sampling, so it is fitted once. Budgets that are not smaller than the pool are the
    same as the whole pool and are dropped.
    """
    classes, train_y = np.unique(np.asarray(train_labels), return_inverse=True)
    lookup = {label: i for i, label in enumerate(classes)}
    unseen = sorted({str(label) for label in eval_labels if label not in lookup})
    if unseen:
        raise DataError(f"the evaluation labels {', '.join(unseen[:5])} never occur in the training data; use matching label sets.")
    eval_y = np.array([lookup[label] for label in eval_labels])
    if not seeds:
        raise ConfigError("the probe needs at least one seed; pass e.g. seeds=(0, 1, 2, 3, 4).")
    if len(classes) < 2:
        raise DataError("the training data has a single label; a probe needs at least two classes.")
    accuracy = load_metric("probe_accuracy")
    pool = len(train_y)
    results = []
    for budget in budgets:
        if budget is not None and budget >= pool:
            logger.warning("label budget %d is not smaller than the training pool (%d); it equals 'all'", budget, pool)
            continue
        if budget is not None and budget < len(classes):
            raise ConfigError(f"label budget {budget} is smaller than the number of classes ({len(classes)}); raise it.")
        scores = []
        for seed in seeds if budget is not None else seeds[:1]:
            if budget is None:
                x, y = train_x, train_y
            else:
                x, _, y, _ = train_test_split(train_x, train_y, train_size=budget, stratify=train_y, random_state=seed)
            probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
            probe.fit(x, y)
            scores.append(accuracy.compute(predictions=probe.predict(eval_x), references=eval_y)["accuracy"])
        results.append(
            {
                "budget": budget_name(budget),
                "labels": pool if budget is None else budget,
                "seeds": len(scores),
                "accuracy_x100": 100 * float(np.mean(scores)),
                "std_x100": 100 * float(np.std(scores)),
            }
        )
    return results


def lsa_embeddings(fit_texts: Sequence[str], texts: Sequence[Sequence[str]], dim: int) -> list[np.ndarray]:
    """TF-IDF + truncated SVD (latent semantic analysis) at width `dim`, fitted on `fit_texts` and
    applied to each list in `texts`: the classic linear text embedding of the same size."""
    tfidf = TfidfVectorizer().fit(fit_texts)
    vocabulary = len(tfidf.vocabulary_)
    if dim >= vocabulary:
        raise ConfigError(f"the LSA baseline needs dim < the TF-IDF vocabulary ({vocabulary} words); lower --dim.")
    svd = TruncatedSVD(n_components=dim, random_state=0).fit(tfidf.transform(fit_texts))
    return [svd.transform(tfidf.transform(t)) for t in texts]


def pca_embeddings(fit_x: np.ndarray, xs: Sequence[np.ndarray], dim: int) -> list[np.ndarray]:
    """PCA of full-width embeddings down to `dim`, fitted on `fit_x` and applied to each array of `xs`:
    the linear reduction that a bottleneck of width `dim` has to beat."""
    if dim > min(fit_x.shape):
        raise ConfigError(
            f"the PCA baseline needs dim <= min(examples, width) = {min(fit_x.shape)}; lower --dim or use more data."
        )
    pca = PCA(n_components=dim, random_state=0).fit(fit_x)
    return [pca.transform(x) for x in xs]


# ---------------------------------------------------------------- models


def load_embedder(model: str | Path | Embedder) -> Embedder:
    """Load a checkpoint once: sweeps and baselines embed the same texts at several layers."""
    return model if isinstance(model, Embedder) else Embedder.from_pretrained(model)


def code_width(embedder: Embedder) -> int:
    """Width of the default embeddings: the bottleneck's for a MaskAE model, the hidden size otherwise."""
    config = embedder.model.config
    if embedder.is_maskae:
        return config.code_dim
    return int(getattr(config, "hidden_size", None) or config.dim)


def full_width(
    embedder: Embedder, texts: list[str], vectors: np.ndarray, layer: int | None, pooling: str, embed_kwargs: dict
) -> np.ndarray:
    """The un-reduced embeddings that the PCA baseline starts from: the hidden state at `layer`, or at
    the top of the encoder (before any bottleneck) by default; `vectors` when they already are that."""
    full_layer = embedder.resolve_layers(embedder.num_layers if layer is None else layer)
    if embedder.resolve_layers(layer) == full_layer:
        return vectors
    return embedder.embed(texts, layer=full_layer[0], pooling=pooling, whiten=False, **embed_kwargs)


def chosen_whitening(embedder: Embedder, whiten: bool | Whitening, layer: int | None, pooling: str) -> Whitening | None:
    """The whitening to report beside the raw figures: one fitted for this request, or (`whiten=True`)
    the one stored with the model when it was fitted on this layer and pooling."""
    if isinstance(whiten, Whitening):
        return whiten
    return embedder.whitening_for(layer, pooling) if whiten else None


def evaluate_sts(
    model: str | Path | Embedder,
    data: str | Path,
    *,
    layer: int | None = None,
    pooling: str = "mean",
    baseline: bool = False,
    dim: int | None = None,
    limit: int | None = None,
    whiten: bool | Whitening = True,
    **embed_kwargs,
) -> dict:
    """Spearman ×100 of cosine similarities against the gold scores of an STS tsv.

    With `baseline`, also LSA and PCA of the full-width embeddings at width `dim` (default: the
    code width), both fitted on the file's own sentences (no scores are used). The figure is for the
    raw embeddings; a whitening (`whiten`: a fitted one, or True for the model's stored one when it
    matches `layer` and `pooling`) adds the whitened figure under "whitened".
    """
    first, second, scores = read_sts(data, limit)
    embedder = load_embedder(model)
    texts = first + second
    vectors = embedder.embed(texts, layer=layer, pooling=pooling, whiten=False, **embed_kwargs)
    n = len(first)
    result = {
        "task": "sts",
        "pairs": n,
        "layer": layer,
        "pooling": pooling,
        "dim": int(vectors.shape[1]),
        "spearman_x100": 100 * sts_spearman(vectors[:n], vectors[n:], scores),
    }
    whitening = chosen_whitening(embedder, whiten, layer, pooling)
    if whitening is not None:
        white = whitening.apply(vectors)
        result["whitened"] = {"dim": whitening.dim, "fitted_on": whitening.num_texts,
                              "spearman_x100": 100 * sts_spearman(white[:n], white[n:], scores)}
    if baseline:
        dim = dim or code_width(embedder)
        (lsa,) = lsa_embeddings(texts, [texts], dim)
        full = full_width(embedder, texts, vectors, layer, pooling, embed_kwargs)
        (pca,) = pca_embeddings(full, [full], dim)
        result["baselines"] = {
            "lsa": {"dim": dim, "spearman_x100": 100 * sts_spearman(lsa[:n], lsa[n:], scores)},
            "pca": {"dim": dim, "from_dim": int(full.shape[1]), "spearman_x100": 100 * sts_spearman(pca[:n], pca[n:], scores)},
        }
    return result


def probe_pool(texts: list[str], labels: list[str], max_train: int | None) -> tuple[list[str], list[str]]:
    """A stratified random subset (seed 0) of at most `max_train` training examples: the "all" pool."""
    if max_train is None or max_train >= len(texts):
        return texts, labels
    texts, _, labels, _ = train_test_split(texts, labels, train_size=max_train, stratify=labels, random_state=0)
    return list(texts), list(labels)


def evaluate_probe(
    model: str | Path | Embedder,
    train: str | Path,
    eval: str | Path,
    *,
    layer: int | None = None,
    pooling: str = "mean",
    budgets: Sequence[int | None] = DEFAULT_BUDGETS,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    max_train: int | None = None,
    baseline: bool = False,
    dim: int | None = None,
    limit: int | None = None,
    whiten: bool | Whitening = True,
    **embed_kwargs,
) -> dict:
    """Linear-probe accuracy ×100 on the `eval` tsv for each label budget drawn from the `train` tsv.

    `max_train` caps the training pool ("all"); `limit` caps the evaluation rows. With `baseline`,
    also LSA and PCA at width `dim` (default: the code width), fitted on the pool's texts. A
    whitening (`whiten`, as in `evaluate_sts`) adds the probe on whitened embeddings under "whitened".
    """
    train_texts, train_labels = probe_pool(*read_labelled(train), max_train)
    eval_texts, eval_labels = read_labelled(eval, limit)
    embedder = load_embedder(model)
    train_x = embedder.embed(train_texts, layer=layer, pooling=pooling, whiten=False, **embed_kwargs)
    eval_x = embedder.embed(eval_texts, layer=layer, pooling=pooling, whiten=False, **embed_kwargs)
    result = {
        "task": "probe",
        "train_pool": len(train_texts),
        "eval_examples": len(eval_texts),
        "layer": layer,
        "pooling": pooling,
        "dim": int(train_x.shape[1]),
        "budgets": probe_accuracy(train_x, train_labels, eval_x, eval_labels, budgets, seeds),
    }
    whitening = chosen_whitening(embedder, whiten, layer, pooling)
    if whitening is not None:
        white_train, white_eval = whitening.apply(train_x), whitening.apply(eval_x)
        result["whitened"] = {"dim": whitening.dim, "fitted_on": whitening.num_texts,
                              "budgets": probe_accuracy(white_train, train_labels, white_eval, eval_labels, budgets, seeds)}
    if baseline:
        dim = dim or code_width(embedder)
        lsa_train, lsa_eval = lsa_embeddings(train_texts, [train_texts, eval_texts], dim)
        full_train = full_width(embedder, train_texts, train_x, layer, pooling, embed_kwargs)
        full_eval = full_width(embedder, eval_texts, eval_x, layer, pooling, embed_kwargs)
        pca_train, pca_eval = pca_embeddings(full_train, [full_train, full_eval], dim)
        result["baselines"] = {
            "lsa": {"dim": dim, "budgets": probe_accuracy(lsa_train, train_labels, lsa_eval, eval_labels, budgets, seeds)},
            "pca": {
                "dim": dim,
                "from_dim": int(full_train.shape[1]),
                "budgets": probe_accuracy(pca_train, train_labels, pca_eval, eval_labels, budgets, seeds),
            },
        }
    return result


def evaluate_mlm(
    model: str | Path,
    corpus: str | Path,
    *,
    block_size: int = 128,
    limit: int | None = None,
    pseudo_blocks: int = 4,
    batch_size: int = 32,
    seed: int = 0,
) -> dict:
    """Masked accuracy (15% BERT noise, seeded) and pseudo-perplexity of a masked-LM checkpoint on a
    corpus packed into blocks of `block_size` tokens. `limit` caps the blocks scored for masked
    accuracy; pseudo-perplexity masks every token of the first `pseudo_blocks` blocks one at a time
    (one forward pass per token, hence the smaller count)."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model))
    except (OSError, ValueError) as error:
        raise TokenizerError(f"cannot load a tokenizer from {str(model)!r} ({error}); save it beside the model.") from None
    blocks = tokenize_and_pack(load_corpus(corpus), tokenizer, block_size)
    if limit is not None:
        blocks = blocks.select(range(min(limit, len(blocks))))
    try:
        # An RTD model scores its generator (masked figures) and its detector (replaced_accuracy).
        rtd = getattr(AutoConfig.from_pretrained(str(model)), "objective", "mlm") == "rtd"
        lm = (AutoModelForPreTraining if rtd else AutoModelForMaskedLM).from_pretrained(str(model))
    except (OSError, ValueError) as error:
        raise CheckpointError(f"cannot load a masked-LM model from {str(model)!r} ({error}); pass a model directory.") from None
    config = lm.config
    sentence = getattr(config, "bottleneck", None) == "sentence"
    noise = NoiseConfig(decoder_mask_prob=config.decoder_mask_prob) if sentence else NoiseConfig()
    collator = DataCollatorForDenoising(tokenizer, noise=noise, seed=seed)
    rows = [blocks[i] for i in range(len(blocks))]
    batches = [collator(rows[start : start + batch_size]) for start in range(0, len(rows), batch_size)]
    result = {"task": "mlm", "blocks": len(rows), "block_size": block_size, **masked_lm_metrics(lm, batches)}
    if pseudo_blocks:
        ids = torch.tensor([row["input_ids"] for row in rows[:pseudo_blocks]])
        result["pseudo_blocks"] = len(ids)
        result.update(
            pseudo_perplexity(lm, ids, torch.ones_like(ids), tokenizer.mask_token_id, tokenizer.all_special_ids, batch_size)
        )
    return result


def evaluate_layers(model: str | Path | Embedder, task: str, **kwargs) -> dict:
    """The `sts` or `probe` figure at every layer (0 = embeddings) of the encoder, and the best one.
    `kwargs` go to `evaluate_sts` (data=...) or `evaluate_probe` (train=..., eval=...)."""
    runners = {"sts": evaluate_sts, "probe": evaluate_probe}
    if task not in runners:
        raise ConfigError(f"cannot sweep layers for task {task!r}; use one of {', '.join(runners)}.")
    embedder = load_embedder(model)
    kwargs.pop("layer", None)
    kwargs["whiten"] = False  # a whitening is fitted on one layer; the sweep compares raw layers
    rows = [runners[task](embedder, layer=k, **kwargs) for k in range(embedder.num_layers + 1)]

    def headline(row: dict) -> float:
        return row["spearman_x100"] if task == "sts" else row["budgets"][-1]["accuracy_x100"]

    best = max(rows, key=headline)
    return {"task": "layers", "of": task, "layers": rows, "best_layer": best["layer"], "best": headline(best)}
