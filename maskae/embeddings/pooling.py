"""The names of the ways token vectors become an embedding, defined once for the embedder, the
exports and every command's choices (torch-free, so `--help` stays fast)."""

SENTENCE_POOLINGS = ("mean", "cls", "max")  # one vector per text
POOLINGS = (*SENTENCE_POOLINGS, "none")  # "none": every token's vector
LAYER_COMBINES = ("mean", "concat")  # how several layers' vectors become one
