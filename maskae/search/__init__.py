"""Search over embedded corpora: a FAISS index built from what `maskae embed` wrote, at its precision
(float, int8 or binary, each with the index type made for it), and queries embedded with the settings
that made the corpus vectors (`index`).

May import: embeddings, data, the model closure and `utils`; nothing of training, evaluation, export or
commands."""
