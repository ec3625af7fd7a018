"""Models that leave maskae: stock transformers checkpoints (`stock`), maskae's own Hub layout with a
model card (`hub`), sentence-transformers folders (`sentence_transformers`), ONNX and OpenVINO graphs of any layer (`graphs`), uploads (`push`), and the
checks every export shares (`guards`). Card templates live in the repository's `model_cards/`, shipped
as `maskae.model_cards`.

May import: `embeddings`, `utils` and the model closure; nothing of data, training, evaluation or
commands."""
