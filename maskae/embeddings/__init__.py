"""Sentence vectors from any layer of any encoder: the `Embedder` (layer k runs only the first k
layers), exported ONNX Runtime and OpenVINO graphs run the same way (`graphs`), the inputs every backend
shares (`inputs`) and the names of their choices (`choices`), `whitening` fitted without labels (a leaf:
it fits on vectors, whoever made them), and the resumable, checksummed writer of embedding datasets
(`writer`). Many-process engines go here too.

May import: the model closure and `utils`; nothing of data, training, evaluation, export or commands."""
