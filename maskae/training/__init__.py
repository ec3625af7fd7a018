"""Pre-training a MaskAE model from a recipe: the recipe's keys (`recipe`), what it builds before the
first step (`builders`), the one optimizer builder that fine-tuning shares (`optimization`), the loop
(`trainer`), checkpoints on disk (`checkpoints`), progressive growth (`growth`), the run logs and
their curves (`logs`, `curves`), and `run.train`, which picks the trainer and holds the run lock.

May import: `data`, `embeddings` (the whitening fitted at the end), `metrics`, `utils` and the model
closure; nothing of evaluation, export or commands."""
