#!/usr/bin/env bash
# From a fresh clone to a trained, evaluated and exported masked autoencoder, on the WikiText-2
# excerpt packaged with maskae: set up .venv, train recipes/tiny-wikitext2.yaml (it evaluates on the
# held-out excerpt as it goes), export it twice (maskae's format with a model card, and a plain
# BertForMaskedLM), then fill in a [MASK] with stock transformers alone.
# Extra arguments go to `maskae train`, e.g. --set training.max_steps=100 for a quick look.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate
out=runs/tiny-wikitext2
rm -rf "$out" "$out-hub" "$out-bert"
time maskae train recipes/tiny-wikitext2.yaml --output-dir "$out" "$@"
maskae export "$out" --out "$out-hub"
maskae export "$out" --out "$out-bert" --stock
python - "$out-bert" <<'PY'
import sys
from transformers import pipeline

fill = pipeline("fill-mask", model=sys.argv[1])  # a plain BertForMaskedLM: no maskae, no remote code
for text in ["the game was released in [MASK] .", "he was born in the [MASK] of new york ."]:
    print(text, "->", ", ".join(f"{p['token_str']} ({p['score']:.2f})" for p in fill(text, top_k=3)))
PY
