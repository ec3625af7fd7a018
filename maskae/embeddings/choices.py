"""The names of the choices embedding offers (poolings, layer combines, backends, precisions, quantizations),
defined once for the embedder, the exports and every command's choices (torch-free, so `--help` stays fast)."""

SENTENCE_POOLINGS = ("mean", "cls", "max")  # one vector per text
POOLINGS = (*SENTENCE_POOLINGS, "none")  # "none": every token's vector
LAYER_COMBINES = ("mean", "concat")  # how several layers' vectors become one
BACKENDS = ("torch", "onnx", "openvino")  # what runs the encoder
GRAPH_BACKENDS = ("onnx", "openvino")  # the ones that run an exported graph
DTYPES = ("fp32", "bf16")  # matmul precision at run time
QUANTIZATIONS = ("int8",)  # exported graphs: int8, or fp32 when none is asked for
CALIBRATION_SIZE = 300  # sentences that calibrate a static int8 graph
PRECISIONS = ("float32", "float16", "int8", "binary")  # how stored vectors are kept (embeddings.precision)
ENGINES = ("maskae", "ray")  # what drives a corpus: maskae's chunked writer, or a Ray Data pipeline
