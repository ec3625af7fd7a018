#!/usr/bin/env bash
# Create .venv and install maskae with its test extras, the graph backends (ONNX Runtime, OpenVINO) and the
# engines its tests cover (FAISS, Ray Data, MTEB).
# PyTorch comes first so that pip never pulls a multi-GB CUDA build onto a CPU-only machine:
# a GPU machine gets the default (CUDA) wheel, a CPU machine the CPU wheel (from pip's local find-links folder
# when it holds one, from PyTorch's CPU index otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
if python -c "import torch" 2>/dev/null; then
    echo "torch $(python -c 'import torch; print(torch.__version__)') already installed"
elif command -v nvidia-smi >/dev/null 2>&1; then
    python -m pip install --quiet torch
elif python -m pip install --quiet --no-index --no-deps torch 2>/dev/null; then
    echo "installed torch from the local wheel folder (pip's find-links)"
else
    python -m pip install --quiet torch --index-url https://download.pytorch.org/whl/cpu
fi
python -m pip install --quiet -e ".[dev,onnx,openvino,search,ray,mteb]"
