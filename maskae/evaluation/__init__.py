"""How good is a model? Task readers (`tasks`), STS (`sts`), linear probes and layer sweeps (`probes`),
the classic baselines of the same width (`baselines`), masked-LM scoring (`mlm`), GLUE-style
fine-tuning with few labels (`finetuning`), any model at any layer as an MTEB model (`mteb`), and the result
objects that print themselves (`results`).

May import: `training` (fine-tuning shares its optimizer), `export` (a classifier starts from the
stock export of the encoder), `embeddings`, `data`, `metrics`, `utils` and the model closure; nothing
of commands."""
