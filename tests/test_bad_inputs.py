"""Bad inputs through the command line, as a user with a messy disk makes them.

Each row of TABLE runs one `maskae` command in-process and asserts: a non-zero exit, no traceback, one
line on stderr that names the problem and the fix (`maskae CMD: error: ...; <what to do>`), and that
the files it must not touch (an earlier run, an existing output) are byte for byte as before. A few
rows run as real subprocesses too, to prove the process itself prints no traceback. The last tests
cover messy input that must simply work: Windows line endings, a UTF-8 byte-order mark, a very long line.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import onnx
import pytest
from conftest import RECIPES, SHRINK, tiny_stock, tiny_tokenizer
from onnx import TensorProto, helper
from safetensors.torch import load_file, save_file
import torch
from transformers import AutoTokenizer, BertConfig, BertModel, BertTokenizerFast

from maskae import MaskAEForMaskedLM
from maskae.cli import main
from maskae.data.corpus import default_corpus
from maskae.data.tokenization import train_tokenizer
from maskae.export.graphs import export_graphs
from maskae.training import checkpoints
from maskae.utils.run_lock import RunLock

pytestmark = pytest.mark.usefixtures("fresh_accelerator_state")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
ARGPARSE = "argparse"  # `expect` for rows that argparse itself rejects (its own usage line, then the error)


@dataclass
class Case:
    id: str
    argv: Callable[[Path], list[str]]
    expect: str  # a piece of the message that names the problem
    keep: tuple[str, ...] = ()  # workspace paths (files or directories) that must not change
    hold_lock: str | None = None  # a lock file another "process" holds during the run
    env: dict[str, str] = field(default_factory=dict)


def digest(path: Path) -> str:
    """A hash of a file, or of a directory's relative paths and contents."""
    h = hashlib.sha256()
    for item in sorted([path] if path.is_file() else path.rglob("*")):
        h.update(str(item.relative_to(path.parent)).encode())
        if item.is_file():
            h.update(item.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """The messy disk: models, a finished-looking run, corpora good and bad, tables, outputs to protect."""
    root = tmp_path_factory.mktemp("messy")
    model = root / "model"
    tiny_stock("bert").save_pretrained(model)
    tiny_tokenizer(model)
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # a tokenizer with nothing but its special tokens
    BertTokenizerFast(vocab={token: index for index, token in enumerate(special)}).save_pretrained(root / "special-only")
    bare = root / "no-vocabulary"  # a model saved without its tokenizer
    tiny_stock("bert").save_pretrained(bare)
    autoencoder = root / "maskae"
    MaskAEForMaskedLM.from_backbone(model, split_layer=2).save_pretrained(autoencoder)
    AutoTokenizer.from_pretrained(model).save_pretrained(autoencoder)
    train_tokenizer(default_corpus("train"), vocab_size=120, out_dir=root / "tokenizer")
    run = root / "run"  # what an earlier `maskae train` left: a complete checkpoint and a log
    (run / "checkpoint-4").mkdir(parents=True)
    (run / "checkpoint-4" / "model.safetensors").write_bytes(b"weights")
    (run / "checkpoint-4" / checkpoints.COMPLETE_MARKER).write_text(
        json.dumps({"step": 4, "files": {"model.safetensors": {"size": 99, "sha256": "0" * 64}}}))
    (run / "log.jsonl").write_text('{"step": 1, "loss": 5.0}\n')
    lines = default_corpus("train").read_text(encoding="utf-8").splitlines()[:300]
    (root / "corpus.txt").write_text("\n".join(lines) + "\n")
    (root / "empty.txt").write_bytes(b"")
    (root / "blank.txt").write_text("\n \n\t\n")
    (root / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    (root / "one-line.txt").write_text("just one short line\n")
    (root / "picture.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    (root / "picture.txt").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    (root / "broken.jsonl").write_text('{"text": "fine"}\n{"text": "cut sh\n')
    (root / "other-column.jsonl").write_text('{"sentence": "a b c"}\n')
    (root / "broken.parquet").write_bytes(b"not parquet at all")
    (root / "empty-dir").mkdir()
    (root / "a-file").write_text("I am a file, not a directory\n")
    (root / "bad.yaml").write_text("training:\n  lr: [1e-4\n")
    (root / "list.yaml").write_text("- training\n- model\n")
    (root / "latin1.yaml").write_bytes("training:\n  output_dir: caf\xe9\n".encode("latin-1"))
    (root / "sts.tsv").write_text("sentence1\tsentence2\tscore\nw1 w2\tw2 w3\t1.0\nw4\tw5 w6\t2.5\nw7\tw7\t5\n")
    (root / "sts-words.tsv").write_text("sentence1\tsentence2\tscore\nw1\tw2\thigh\n")
    (root / "sts-short-row.tsv").write_text("sentence1\tsentence2\tscore\nw1\tw2\t1\nw3 w4\n")
    (root / "sts-latin1.tsv").write_bytes("sentence1\tsentence2\tscore\ncaf\xe9\tw1\t1\n".encode("latin-1"))
    (root / "labels.tsv").write_text("sentence\tlabel\nw1 w2\t0\nw3\t1\nw4 w5 w6\t0\nw7\t1\n")
    (root / "vectors.npy").write_bytes(b"an earlier result")
    (root / "out.npy").mkdir()
    (root / "map.png").mkdir()
    (root / "metrics.json").write_text("{not json")
    (root / "export").mkdir()
    (root / "export" / "config.json").write_text("{}")
    (root / "export" / "pytorch_model.bin").write_bytes(b"pickle")
    encoder = root / "sentence-encoder"  # a stock encoder without a masked-LM head (as all-MiniLM-L6-v2 ships)
    tiny_stock("bert").bert.save_pretrained(encoder)
    tiny_tokenizer(encoder)
    renamed = root / "renamed-weights"  # weights saved under names the architecture does not have
    shutil.copytree(model, renamed)
    tensors = load_file(renamed / "model.safetensors")
    save_file({key.replace("bert.encoder.", "bert.body."): value for key, value in tensors.items()},
              renamed / "model.safetensors", metadata={"format": "pt"})
    export_graphs(str(model), root / "graphs", ("onnx", "openvino"), layer=1)  # what maskae export --onnx writes
    shutil.copytree(root / "graphs", root / "graphs-corrupt")
    (root / "graphs-corrupt" / "model.onnx").write_bytes(b"\x08\x07 not a protobuf")
    shutil.copytree(root / "graphs", root / "graphs-foreign")  # an ONNX file another tool wrote
    identity = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "other",
                                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
                                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])])
    onnx.save(helper.make_model(identity), str(root / "graphs-foreign" / "model.onnx"))
    damaged = root / "damaged-model"
    damaged.mkdir()
    for item in autoencoder.iterdir():
        (damaged / item.name).write_bytes(item.read_bytes())
    weights_file = damaged / "model.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[:64])
    torch.manual_seed(0)  # a model whose vectors are wider than the indexed ones
    BertModel(BertConfig(vocab_size=99, hidden_size=48, num_hidden_layers=1, num_attention_heads=4,
                         intermediate_size=37)).save_pretrained(root / "wide-model")
    tiny_tokenizer(root / "wide-model")
    assert main(["--quiet", "embed", str(model), "--input", str(root / "corpus.txt"), "--output",
                 str(root / "tiny-vectors.npy")]) == 0
    assert main(["--quiet", "index", str(root / "tiny-vectors.npy"), "--out", str(root / "index")]) == 0
    return root


def train(ws: Path, *extra: str) -> list[str]:
    """`maskae train` on the tiny shape with a ready tokenizer."""
    sets = [*SHRINK, f"tokenizer.path={ws / 'tokenizer'}", "tokenizer.train=null", *extra]
    return ["train", str(RECIPES / "tiny-wikitext2.yaml"), "--output-dir", str(ws / "out"),
            *[a for s in sets for a in ("--set", s)]]


def embed(ws: Path, *extra: str) -> list[str]:
    return ["embed", str(ws / "model"), "--input", str(ws / "corpus.txt"), *extra]


def tokenizer(ws: Path, corpus: str, *extra: str) -> list[str]:
    return ["tokenizer", "train", "--corpus", str(ws / corpus), "--vocab-size", "60", "--out", str(ws / "tok"), *extra]


TABLE = [
    # ---- train: the recipe
    Case("train: recipe missing", lambda ws: ["train", str(ws / "nope.yaml")], "does not exist"),
    Case("train: recipe is a directory", lambda ws: ["train", str(ws / "empty-dir")], "does not exist"),
    Case("train: recipe not YAML", lambda ws: ["train", str(ws / "bad.yaml")], "is not valid YAML"),
    Case("train: recipe is a YAML list", lambda ws: ["train", str(ws / "list.yaml")], "must be a YAML mapping"),
    Case("train: recipe is not UTF-8", lambda ws: ["train", str(ws / "latin1.yaml")], "not UTF-8"),
    Case("train: recipe is an image", lambda ws: ["train", str(ws / "picture.png")], "not UTF-8"),
    Case("train: --set without =", lambda ws: train(ws, "training.lr"), "is not of the form"),
    Case("train: --set text for a number", lambda ws: train(ws, "training.lr=fast"), "training.lr must be"),
    Case("train: --set float for an int", lambda ws: train(ws, "training.max_steps=1.5"), "training.max_steps must be"),
    Case("train: --set list for an int", lambda ws: train(ws, "training.batch_size=[8]"), "training.batch_size must be"),
    Case("train: --set negative steps", lambda ws: train(ws, "training.max_steps=-3"), "at least 1"),
    Case("train: --set unknown key", lambda ws: train(ws, "training.learning_rate=1e-3"), "did you mean"),
    Case("train: --set bad choice", lambda ws: train(ws, "model.decoder=lstm"), "use one of"),
    # ---- train: the disk
    Case("train: --output-dir is a file", lambda ws: [*train(ws), "--output-dir", str(ws / "a-file")],
         "is a file, not a directory", keep=("a-file",)),
    Case("train: --output-dir below a file", lambda ws: [*train(ws), "--output-dir", str(ws / "a-file" / "run")],
         "a-file is a file, not a directory", keep=("a-file",)),
    Case("train: earlier run without --resume", lambda ws: [*train(ws), "--output-dir", str(ws / "run")],
         "already holds checkpoints", keep=("run",)),
    Case("train: --resume, every checkpoint damaged", lambda ws: [*train(ws), "--output-dir", str(ws / "run"), "--resume"],
         "is intact", keep=("run/checkpoint-4/model.safetensors",)),
    Case("train: output directory in use", lambda ws: [*train(ws), "--output-dir", str(ws / "busy")],
         "is in use by maskae train", hold_lock="busy/maskae.lock"),
    Case("train: zero-byte corpus", lambda ws: train(ws, f"data.train={ws / 'empty.txt'}"), "contains no text (it is empty, 0 bytes)"),
    Case("train: corpus of blank lines", lambda ws: train(ws, f"data.train={ws / 'blank.txt'}"), "contains no text"),
    Case("train: corpus not UTF-8", lambda ws: train(ws, f"data.train={ws / 'latin1.txt'}"), "are not UTF-8"),
    Case("train: corpus is an image", lambda ws: train(ws, f"data.train={ws / 'picture.png'}"), "unsupported file types"),
    Case("train: image named .txt", lambda ws: train(ws, f"data.train={ws / 'picture.txt'}"), "are not UTF-8"),
    Case("train: corpus of one line", lambda ws: train(ws, f"data.train={ws / 'one-line.txt'}"), "too few to hold out"),
    Case("train: corpus dir without corpora", lambda ws: train(ws, f"data.train={ws / 'empty-dir'}"), "no corpus files"),
    Case("train: tokenizer of special tokens only", lambda ws: train(ws, f"tokenizer.path={ws / 'special-only'}"),
         "has only its 5 special tokens"),
    Case("train: tokenizer path missing", lambda ws: train(ws, f"tokenizer.path={ws / 'nope'}"), "cannot load a tokenizer"),
    Case("train: backbone is a file", lambda ws: train(ws, f"model.backbone={ws / 'a-file'}"), "a-file"),
    # ---- tokenizer
    Case("tokenizer: corpus missing", lambda ws: tokenizer(ws, "nope.txt"), "does not exist"),
    Case("tokenizer: zero-byte corpus", lambda ws: tokenizer(ws, "empty.txt"), "contains no text (it is empty, 0 bytes)"),
    Case("tokenizer: broken JSON lines", lambda ws: tokenizer(ws, "broken.jsonl"), "cannot read"),
    Case("tokenizer: broken parquet", lambda ws: tokenizer(ws, "broken.parquet"), "cannot read"),
    Case("tokenizer: wrong column", lambda ws: tokenizer(ws, "other-column.jsonl"), "no column 'text'"),
    Case("tokenizer: vocabulary too small", lambda ws: [*tokenizer(ws, "corpus.txt")[:-2], "--vocab-size", "3", "--out",
                                                        str(ws / "tok")], "too small"),
    Case("tokenizer: vocabulary not a number", lambda ws: [*tokenizer(ws, "corpus.txt")[:-2], "--vocab-size", "many",
                                                           "--out", str(ws / "tok")], ARGPARSE),
    Case("tokenizer: --out is a file", lambda ws: [*tokenizer(ws, "corpus.txt")[:-2], "--vocab-size", "60", "--out",
                                                   str(ws / "a-file")], "is an existing file", keep=("a-file",)),
    # ---- embed
    Case("embed: model missing", lambda ws: ["embed", str(ws / "nope"), "--input", str(ws / "corpus.txt"), "--output",
                                             str(ws / "v.npy")], "cannot load a model"),
    Case("embed: model is a file", lambda ws: ["embed", str(ws / "a-file"), "--input", str(ws / "corpus.txt"),
                                               "--output", str(ws / "v.npy")], "cannot load a model", keep=("a-file",)),
    Case("embed: damaged weights", lambda ws: ["embed", str(ws / "damaged-model"), "--input", str(ws / "corpus.txt"),
                                               "--output", str(ws / "v.npy")], "cannot load a model"),
    Case("embed: output exists", lambda ws: embed(ws, "--output", str(ws / "vectors.npy")), "already exists",
         keep=("vectors.npy",)),
    Case("embed: .npy output is a directory", lambda ws: embed(ws, "--output", str(ws / "out.npy")), "is a directory",
         keep=("out.npy",)),
    Case("embed: output in use", lambda ws: embed(ws, "--output", str(ws / "busy.npy")), "is in use by",
         hold_lock="busy.npy.lock"),
    Case("embed: input not UTF-8", lambda ws: ["embed", str(ws / "model"), "--input", str(ws / "latin1.txt"),
                                               "--output", str(ws / "v.npy")], "are not UTF-8"),
    Case("embed: layer out of range", lambda ws: embed(ws, "--output", str(ws / "v.npy"), "--layer", "40"), "out of range"),
    Case("embed: per-token vectors into .npy", lambda ws: embed(ws, "--output", str(ws / "v.npy"), "--pooling", "none"),
         ".npy cannot hold"),
    Case("embed: chunk size 0", lambda ws: embed(ws, "--output", str(ws / "v.npy"), "--chunk-size", "0"), "at least 1"),
    Case("embed: model without its vocabulary", lambda ws: ["embed", str(ws / "no-vocabulary"), "--input",
                                                             str(ws / "corpus.txt"), "--output", str(ws / "v.npy")],
         "vocabulary files"),
    Case("embed: --backend onnx on a model never exported", lambda ws: embed(ws, "--output", str(ws / "v.npy"),
                                                                            "--backend", "onnx"), "export one first"),
    Case("embed: --backend torch on exported graphs", lambda ws: ["embed", str(ws / "graphs"), "--input",
                                                                 str(ws / "corpus.txt"), "--output", str(ws / "v.npy"),
                                                                 "--backend", "torch"], "not PyTorch weights"),
    Case("embed: a layer the graph does not hold", lambda ws: ["embed", str(ws / "graphs"), "--input",
                                                              str(ws / "corpus.txt"), "--output", str(ws / "v.npy"),
                                                              "--layer", "2"], "exported at layer 1"),
    Case("embed: bf16 on ONNX Runtime", lambda ws: ["embed", str(ws / "graphs"), "--input", str(ws / "corpus.txt"),
                                                   "--output", str(ws / "v.npy"), "--backend", "onnx", "--dtype",
                                                   "bf16"], "no bf16 path"),
    Case("embed: a corrupt .onnx file", lambda ws: ["embed", str(ws / "graphs-corrupt"), "--input",
                                                   str(ws / "corpus.txt"), "--output", str(ws / "v.npy"), "--backend",
                                                   "onnx"], "not a loadable ONNX graph", keep=("graphs-corrupt",)),
    Case("evaluate: exported graphs", lambda ws: ["evaluate", str(ws / "graphs"), "--task", "sts", "--data",
                                                 str(ws / "sts.tsv")], "holds exported graphs"),
    Case("evaluate: --dtype on a training task", lambda ws: ["evaluate", str(ws / "model"), "--task", "mlm", "--data",
                                                            str(ws / "corpus.txt"), "--dtype", "bf16"],
         "applies to the embedding tasks"),
    Case("embed: a foreign .onnx file", lambda ws: ["embed", str(ws / "graphs-foreign"), "--input",
                                                   str(ws / "corpus.txt"), "--output", str(ws / "v.npy"), "--backend",
                                                   "onnx"], "not a maskae sentence graph", keep=("graphs-foreign",)),
    Case("embed: an unknown precision", lambda ws: embed(ws, "--output", str(ws / "v.npy"), "--precision", "int4"),
         ARGPARSE),
    Case("embed: --dim without a whitening", lambda ws: embed(ws, "--output", str(ws / "v.npy"), "--dim", "8"),
         "none applies"),
    Case("embed: int8 per-token vectors", lambda ws: embed(ws, "--output", str(ws / "v.parquet"), "--pooling", "none",
                                                           "--precision", "int8"), "one vector per text"),
    Case("embed: --num-workers without Ray", lambda ws: embed(ws, "--output", str(ws / "v.npy"), "--num-workers", "2"),
         "counts Ray actors"),
    Case("embed: --resume with the Ray engine", lambda ws: embed(ws, "--output", str(ws / "ray-out"), "--engine", "ray",
                                                                 "--resume"), "in one pass"),
    # ---- index and search
    Case("index: vectors without their record", lambda ws: ["index", str(ws / "vectors.npy"), "--out",
                                                            str(ws / "new-index")], "no readable record"),
    Case("index: vectors missing", lambda ws: ["index", str(ws / "nope.npy"), "--out", str(ws / "new-index")],
         "does not exist"),
    Case("index: an unknown kind", lambda ws: ["index", str(ws / "tiny-vectors.npy"), "--out", str(ws / "new-index"),
                                               "--kind", "lsh"], ARGPARSE),
    Case("index: output exists", lambda ws: ["index", str(ws / "tiny-vectors.npy"), "--out", str(ws / "index")],
         "already exists", keep=("index",)),
    Case("index: the corpus changed since embedding", lambda ws: ["index", str(ws / "tiny-vectors.npy"), "--out",
                                                                  str(ws / "new-index"), "--texts",
                                                                  str(ws / "one-line.txt")], "now holds"),
    Case("search: a missing index", lambda ws: ["search", str(ws / "no-index"), "w1 w2"], "is not an index"),
    Case("search: a model of another width", lambda ws: ["search", str(ws / "index"), "w1 w2", "--model",
                                                         str(ws / "wide-model")], "48-wide", keep=("index",)),
    Case("search: k of 0", lambda ws: ["search", str(ws / "index"), "w1 w2", "--k", "0"], "at least 1"),
    # ---- evaluate
    Case("evaluate: data missing", lambda ws: ["evaluate", str(ws / "model"), "--task", "sts", "--data",
                                               str(ws / "nope.tsv")], "is not a file"),
    Case("evaluate: data is a directory", lambda ws: ["evaluate", str(ws / "model"), "--task", "sts", "--data",
                                                      str(ws / "empty-dir")], "is not a file"),
    Case("evaluate: wrong columns", lambda ws: ["evaluate", str(ws / "model"), "--task", "sts", "--data",
                                                str(ws / "labels.tsv")], "lacks the column"),
    Case("evaluate: words as scores", lambda ws: ["evaluate", str(ws / "model"), "--task", "sts", "--data",
                                                  str(ws / "sts-words.tsv")], "non-numeric score"),
    Case("evaluate: a row cut short", lambda ws: ["evaluate", str(ws / "model"), "--task", "sts", "--data",
                                                  str(ws / "sts-short-row.tsv")], "line 3"),
    Case("evaluate: table not UTF-8", lambda ws: ["evaluate", str(ws / "model"), "--task", "sts", "--data",
                                                  str(ws / "sts-latin1.tsv")], "not UTF-8"),
    Case("evaluate: probe without eval data", lambda ws: ["evaluate", str(ws / "model"), "--task", "probe", "--data",
                                                          str(ws / "labels.tsv")], "needs --eval-data"),
    # ---- export
    Case("export: not a model directory", lambda ws: ["export", str(ws / "empty-dir"), "--out", str(ws / "hub")],
         "has no config.json"),
    Case("export: a stock checkpoint, not a run", lambda ws: ["export", str(ws / "model"), "--out", str(ws / "hub")],
         "not a maskae run"),
    Case("export: damaged weights", lambda ws: ["export", str(ws / "damaged-model"), "--out", str(ws / "hub")],
         "cannot load"),
    Case("export: metrics not JSON", lambda ws: ["export", str(ws / "maskae"), "--out", str(ws / "hub"), "--metrics",
                                                 str(ws / "metrics.json")], "is not valid JSON"),
    Case("export: recipe not YAML", lambda ws: ["export", str(ws / "maskae"), "--out", str(ws / "hub"), "--recipe",
                                                str(ws / "bad.yaml")], "is not valid YAML"),
    Case("export: --out is a file", lambda ws: ["export", str(ws / "maskae"), "--out", str(ws / "a-file")], "a-file",
         keep=("a-file",)),
    Case("export: --out holds an earlier run", lambda ws: ["export", str(ws / "maskae"), "--out", str(ws / "run")],
         "is not empty", keep=("run",)),
    Case("export: --onnx at a layer beyond the depth", lambda ws: ["export", str(ws / "model"), "--out",
                                                                  str(ws / "g"), "--onnx", "--layer", "9"],
         "out of range"),
    Case("export: --pooling none for a graph", lambda ws: ["export", str(ws / "model"), "--out", str(ws / "g"),
                                                          "--onnx", "--pooling", "none"], ARGPARSE),
    Case("export: empty calibration text", lambda ws: ["export", str(ws / "model"), "--out", str(ws / "g"),
                                                      "--openvino", "--quantize", "int8", "--calibrate",
                                                      str(ws / "blank.txt")], "no text"),
    Case("export: --calibrate for ONNX", lambda ws: ["export", str(ws / "model"), "--out", str(ws / "g"), "--onnx",
                                                    "--quantize", "int8", "--calibrate", str(ws / "corpus.txt")],
         "OpenVINO's static int8"),
    Case("export: --quantize without a graph", lambda ws: ["export", str(ws / "maskae"), "--out", str(ws / "g"),
                                                          "--quantize", "int8"], "pass --onnx or --openvino"),
    Case("export: --onnx with --stock", lambda ws: ["export", str(ws / "maskae"), "--out", str(ws / "g"), "--onnx",
                                                   "--stock"], "not a --stock"),
    # ---- what transformers would quietly fill in: weights under other names, no head, no vocabulary
    *[Case(f"{name}: weights under other names", (lambda argv: lambda ws: argv(ws, "renamed-weights"))(argv),
           "has no trained weights for encoder.layer") for name, argv in (
        ("embed", lambda ws, m: ["embed", str(ws / m), "--input", str(ws / "corpus.txt"), "--output", str(ws / "v.npy")]),
        ("evaluate", lambda ws, m: ["evaluate", str(ws / m), "--task", "sts", "--data", str(ws / "sts.tsv")]),
        ("whiten", lambda ws, m: ["whiten", str(ws / m), "--corpus", str(ws / "corpus.txt")]),
        ("export", lambda ws, m: ["export", str(ws / m), "--out", str(ws / "g"), "--onnx"]),
        ("adapt", lambda ws, m: ["adapt", str(ws / m), "--corpus", str(ws / "corpus.txt"), "--out", str(ws / "a"),
                                 "--objective", "distill", "--layer", "1", "--steps", "1"]),
    )],
    *[Case(f"{name}: a model without its vocabulary", (lambda argv: lambda ws: argv(ws, "no-vocabulary"))(argv),
           "vocabulary files") for name, argv in (
        ("evaluate", lambda ws, m: ["evaluate", str(ws / m), "--task", "sts", "--data", str(ws / "sts.tsv")]),
        ("whiten", lambda ws, m: ["whiten", str(ws / m), "--corpus", str(ws / "corpus.txt")]),
        ("export", lambda ws, m: ["export", str(ws / m), "--out", str(ws / "g"), "--sentence-transformers"]),
        ("adapt", lambda ws, m: ["adapt", str(ws / m), "--corpus", str(ws / "corpus.txt"), "--out", str(ws / "a"),
                                 "--objective", "distill", "--layer", "1", "--steps", "1"]),
    )],
    Case("evaluate: masked-LM figures of a sentence encoder", lambda ws: [
        "evaluate", str(ws / "sentence-encoder"), "--task", "mlm", "--data", str(ws / "corpus.txt")],
        "has no trained weights for cls.predictions"),
    # ---- push (no network: HF_HUB_OFFLINE=1)
    Case("push: directory missing", lambda ws: ["push", str(ws / "nope"), "--repo-id", "me/model"], "has no config.json"),
    Case("push: pickle weights", lambda ws: ["push", str(ws / "export"), "--repo-id", "me/model"], "pickle"),
    Case("push: bad repo id", lambda ws: ["push", str(ws / "maskae"), "--repo-id", "me/my/model"], "not a valid Hub repo id"),
    Case("push: offline", lambda ws: ["push", str(ws / "maskae"), "--repo-id", "me/model"], "offline mode",
         env={"HF_TOKEN": "hf_not_a_real_token"}),
    # ---- plot
    Case("plot: data missing", lambda ws: ["plot", str(ws / "model"), "--data", str(ws / "nope.tsv"), "--output",
                                           str(ws / "map.png")], "is not a file"),
    Case("plot: wrong columns", lambda ws: ["plot", str(ws / "model"), "--data", str(ws / "sts.tsv"), "--output",
                                            str(ws / "map.png")], "lacks the column"),
    Case("plot: output is a directory", lambda ws: ["plot", str(ws / "model"), "--data", str(ws / "labels.tsv"),
                                                    "--output", str(ws / "map.png")], "Is a directory", keep=("map.png",)),
    Case("plot: unknown method", lambda ws: ["plot", str(ws / "model"), "--data", str(ws / "labels.tsv"), "--method",
                                             "umap", "--output", str(ws / "map.png")], ARGPARSE),
]


def check_message(stderr: str, case: Case) -> None:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if "error:" in line]
    assert lines, stderr
    message = lines[-1]
    if case.expect == ARGPARSE:
        assert message.startswith("maskae") and "error: argument" in message, message
        return
    assert message.startswith(f"maskae {case.argv(Path('x'))[0]}: error: "), message
    assert case.expect in message, message
    # names the problem, then says what to do: a clause after a semicolon, or "pass"/"use"/"choose"... advice
    advice = message.split(";", 1)[-1] if ";" in message else message
    assert any(verb in advice for verb in ("pass", "use", "choose", "give", "fix", "check", "set", "remove", "rerun",
                                           "re-encode", "wait", "lower", "free", "point", "convert", "move", "log in",
                                           "create", "re-export", "run", "make", "must", "did you mean", "write",
                                           "export")), message


@pytest.mark.parametrize("case", TABLE, ids=[case.id for case in TABLE])
def test_bad_input(case: Case, ws: Path, capsys, monkeypatch):
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    before = {name: digest(ws / name) for name in case.keep}
    lock = RunLock(ws / case.hold_lock, "maskae train") if case.hold_lock else None
    if lock:
        lock.acquire()  # flock conflicts between two opens of the file, even within one process
    try:
        status = main(case.argv(ws))
    except SystemExit as exit:  # argparse
        status = exit.code
    finally:
        if lock:
            lock.release()
    assert status not in (0, None)
    check_message(capsys.readouterr().err, case)
    assert {name: digest(ws / name) for name in case.keep} == before


SUBPROCESS = ["train: zero-byte corpus", "tokenizer: --out is a file", "train: --output-dir is a file"]


@pytest.mark.parametrize("name", SUBPROCESS)
def test_bad_input_in_a_real_process(name: str, ws: Path):
    case = next(case for case in TABLE if case.id == name)
    result = subprocess.run([sys.executable, "-m", "maskae", *case.argv(ws)], env=ENV, capture_output=True, text=True,
                            cwd=ws)
    assert result.returncode == 2
    check_message(result.stderr, case)


def test_table_size():
    assert len(TABLE) >= 30


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_corpus(ws: Path, capsys):
    locked = ws / "locked.txt"
    locked.write_text("some text\n")
    locked.chmod(0)
    try:
        assert main(tokenizer(ws, "locked.txt")) == 2
    finally:
        locked.chmod(0o644)
    check_message(capsys.readouterr().err, Case("unreadable", lambda ws: ["tokenizer"], "locked.txt"))


# ---------------------------------------------------------------- messy input that must work

MESSY = "The first line ends like Windows.\r\nCafé au lait, twice: café.\r\n" * 40


def test_crlf_and_bom_corpus_tokenizes_like_a_clean_one(ws: Path):
    clean, messy = ws / "clean.txt", ws / "messy.txt"
    clean.write_bytes(MESSY.replace("\r\n", "\n").encode("utf-8"))
    messy.write_bytes(b"\xef\xbb\xbf" + MESSY.encode("utf-8"))
    for name in ("clean", "messy"):
        assert main(["tokenizer", "train", "--corpus", str(ws / f"{name}.txt"), "--vocab-size", "80", "--out",
                     str(ws / f"tok-{name}")]) == 0
    vocab = json.loads((ws / "tok-messy" / "tokenizer.json").read_text())["model"]["vocab"]
    assert not any("\r" in piece or "\ufeff" in piece for piece in vocab)
    assert (ws / "tok-messy" / "tokenizer.json").read_bytes() == (ws / "tok-clean" / "tokenizer.json").read_bytes()


def test_crlf_and_bom_table_evaluates_like_a_clean_one(ws: Path, capsys):
    messy = ws / "sts-messy.tsv"
    messy.write_bytes(b"\xef\xbb\xbf" + (ws / "sts.tsv").read_text().replace("\n", "\r\n").encode())
    figures = []
    for table in ("sts.tsv", "sts-messy.tsv"):
        assert main(["evaluate", str(ws / "model"), "--task", "sts", "--data", str(ws / table), "--json"]) == 0
        figures.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["spearman_x100"])
    assert figures[0] == figures[1]


def test_a_very_long_line_tokenizes(ws: Path):
    long_line = ws / "long.txt"
    long_line.write_text(" ".join(f"word{i % 500}" for i in range(200_000)) + "\n")  # one 1.8 MB line
    assert main(["tokenizer", "train", "--corpus", str(long_line), "--vocab-size", "100", "--out",
                 str(ws / "tok-long")]) == 0
    assert AutoTokenizer.from_pretrained(ws / "tok-long").tokenize("word1 word2") != []


def test_crlf_bom_recipe_and_corpus_train(ws: Path, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    text = "training:\n  max_steps: 2\n  save_steps: 2\ndata:\n  block_size: 32\n"
    recipe.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"\xef\xbb\xbf" + (ws / "corpus.txt").read_text().replace("\n", "\r\n").encode())
    sets = [s for s in SHRINK if not s.startswith(("training.max_steps", "training.save_steps", "data.block_size"))]
    argv = ["train", str(recipe), "--output-dir", str(tmp_path / "run"),
            *[a for s in [*sets, f"tokenizer.path={ws / 'tokenizer'}", f"data.train={corpus}"] for a in ("--set", s)]]
    assert main(argv) == 0
    assert checkpoints.latest_checkpoint(tmp_path / "run").name == "checkpoint-2"
    assert (tmp_path / "run" / "model.safetensors").is_file()


STOCK_COMMANDS = {  # command -> argv for a stock encoder directory M (not a maskae run); None: must work
    "embed": (lambda ws, m: ["embed", m, "--input", str(ws / "corpus.txt"), "--output", str(ws / "stock.npy")], None),
    "evaluate": (lambda ws, m: ["evaluate", m, "--task", "sts", "--data", str(ws / "sts.tsv")], None),
    # the tiny tokenizer knows none of the corpus's English: every token is [UNK], so nothing can be scored
    "evaluate mlm": (lambda ws, m: ["evaluate", m, "--task", "mlm", "--data", str(ws / "corpus.txt")],
                     "no masked position to score"),
    "whiten": (lambda ws, m: ["whiten", m, "--corpus", str(ws / "corpus.txt"), "--dim", "4"], None),
    "plot": (lambda ws, m: ["plot", m, "--data", str(ws / "labels.tsv"), "--output", str(ws / "stock.png")], None),
    "adapt": (lambda ws, m: ["adapt", m, "--corpus", str(ws / "corpus.txt"), "--out", str(ws / "stock-run"),
                             "--objective", "distill", "--layer", "1", "--steps", "2"], None),
    "export": (lambda ws, m: ["export", m, "--out", str(ws / "stock-hub")], "not a maskae run"),
    "export --sentence-transformers": (lambda ws, m: ["export", m, "--out", str(ws / "stock-st"),
                                                      "--sentence-transformers", "--layer", "2"], None),
    "export --onnx": (lambda ws, m: ["export", m, "--out", str(ws / "stock-onnx"), "--onnx", "--layer", "2"], None),
    "push": (lambda ws, m: ["push", m, "--repo-id", "me/model"], "no Hugging Face token found"),
}


@pytest.mark.parametrize("command", STOCK_COMMANDS)
def test_a_stock_checkpoint_works_or_is_refused_in_one_line(command, ws, tmp_path, capsys):
    """Every command given a stock checkpoint (a BertForMaskedLM directory, not a maskae run) either works or
    names the problem and the fix in one line; none ends in a traceback."""
    model = tmp_path / "stock"
    shutil.copytree(ws / "model", model)  # whiten writes into the model directory
    argv, refusal = STOCK_COMMANDS[command]
    code = main(["--quiet", *argv(ws, str(model))])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    if refusal is None:
        assert code == 0, err
    else:
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and lines[-1].startswith(f"maskae {command.split()[0]}: error: ") and refusal in lines[-1], err
