"""Text in, noised token batches out: corpus loading (files, folders, Hub datasets; `corpus`), packing
and streaming (`streaming`), the keyed noise (`noise`) and the collator that applies it (`collator`),
which rows each step trains on (`sampling`), and tokenizer training (`tokenization`), with the small
corpora maskae ships in `resources/`.

May import: the model closure at the package root (`errors`, `modeling_maskae`) and `utils`; nothing
of training, evaluation, embeddings or export."""
