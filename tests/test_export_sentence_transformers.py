"""The sentence-transformers export: it loads with sentence-transformers in a process where `import maskae`
fails, encodes what `maskae.embed` returns at the same layer and pooling (the real all-MiniLM-L6-v2 cut at
layers 3 and 6, a trained tiny MaskAE, a whitening as a Dense module), its card reads back through
huggingface_hub, and it holds no pickle file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_stock
from huggingface_hub import ModelCard
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import BertConfig, PreTrainedTokenizerFast

import maskae
from maskae import ExportError, MaskAEConfig, MaskAEForMaskedLM, Whitening
from maskae.cli import main
from maskae.export.push import upload_operations
from maskae.export.sentence_transformers import save_sentence_transformer

TEXTS = [
    "the cat sat on the mat",
    "A man is playing a guitar on the stage while the crowd sings along.",
    "dogs",
    "the bird flew over the house and the dog sat on the log",
    "a fish swam in the pond",
]
WORDS = sorted({w for t in TEXTS for w in t.lower().replace(".", " ").split()})
PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"PK\x03\x04")
METRICS = [{"metric": "sts_spearman", "value": 41.25, "dataset": "sentence-transformers/stsb", "split": "test"}]


def word_tokenizer() -> PreTrainedTokenizerFast:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {token: i for i, token in enumerate(specials + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=32)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A 4-layer MaskAE split 2 + 2, trained 5 full-batch steps to fill masks, saved with its tokenizer."""
    tokenizer = word_tokenizer()
    torch.manual_seed(0)
    base = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=32)
    model = MaskAEForMaskedLM(MaskAEConfig(base_config=base, split_layer=2))
    batch = tokenizer([t.lower().replace(".", "") for t in TEXTS], padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    masked = batch["input_ids"].clone()
    masked[:, 1] = tokenizer.mask_token_id
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(5):
        loss = model(masked, attention_mask=batch["attention_mask"], labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    path = tmp_path_factory.mktemp("tiny-run")
    model.eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def whitening() -> Whitening:
    """Of a real whitening's scale (outputs of about unit variance), but random: the export must not care."""
    rng = np.random.default_rng(0)
    return Whitening(mean=rng.normal(scale=0.1, size=384), matrix=rng.normal(scale=1 / 30, size=(384, 8)),
                     layer=3, pooling="mean")


@pytest.fixture(scope="module")
def exports(tmp_path_factory, minilm_path, tiny_run, whitening) -> dict[str, tuple[Path, np.ndarray]]:
    """name -> (exported directory, what maskae.embed returns for TEXTS at the same layer and pooling)."""
    root = tmp_path_factory.mktemp("exports")
    assert main(["--quiet", "export", str(minilm_path), "--sentence-transformers", "--layer", "3",
                 "--out", str(root / "minilm-3")]) == 0
    save_sentence_transformer(minilm_path, root / "minilm-6", normalize=True)
    save_sentence_transformer(minilm_path, root / "minilm-3-white", layer=3, whitening=whitening)
    save_sentence_transformer(tiny_run, root / "tiny", metrics=METRICS, datasets=["Salesforce/wikitext"])
    save_sentence_transformer(tiny_run, root / "tiny-cls-1", layer=1, pooling="cls")
    save_sentence_transformer(tiny_run, root / "tiny-max", pooling="max", normalize=True)
    minilm = maskae.Embedder.from_pretrained(minilm_path, device="cpu")
    tiny = maskae.Embedder.from_pretrained(tiny_run, device="cpu")
    expected = {
        "minilm-3": minilm.embed(TEXTS, layer=3),
        "minilm-6": minilm.embed(TEXTS, layer=6, normalize=True),
        "minilm-3-white": whitening.apply(minilm.embed(TEXTS, layer=3)),
        "tiny": tiny.embed(TEXTS),
        "tiny-cls-1": tiny.embed(TEXTS, layer=1, pooling="cls"),
        "tiny-max": tiny.embed(TEXTS, pooling="max", normalize=True),
    }
    return {name: (root / name, vectors) for name, vectors in expected.items()}


def encode_without_maskae(directories: list[Path], out: Path) -> dict[str, np.ndarray]:
    """SentenceTransformer(dir).encode(TEXTS) for each directory, in a fresh interpreter that cannot import maskae."""
    code = f"""
    import sys
    sys.modules["maskae"] = None  # `import maskae` raises ImportError from here on
    import numpy as np
    from sentence_transformers import SentenceTransformer
    texts = {TEXTS!r}
    vectors = {{}}
    for path in sys.argv[1:]:
        model = SentenceTransformer(path, device="cpu")
        vectors[path] = model.encode(texts, batch_size=2, convert_to_numpy=True)
    np.savez({str(out)!r}, **{{str(i): vectors[p] for i, p in enumerate(sys.argv[1:])}})
    try:
        import maskae
    except ImportError:
        print("maskae is not importable")
    """
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, directories)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "maskae is not importable" in done.stdout
    saved = np.load(out)
    return {directory.name: saved[str(i)] for i, directory in enumerate(directories)}


def test_sentence_transformers_encode_equals_maskae_embed_without_maskae(exports, tmp_path):
    encoded = encode_without_maskae([path for path, _ in exports.values()], tmp_path / "vectors.npz")
    for name, (_, expected) in exports.items():
        assert encoded[name].shape == expected.shape, name
        assert np.abs(encoded[name] - expected).max() < 1e-5, name
    assert encoded["minilm-3-white"].shape == (len(TEXTS), 8)
    assert np.allclose(np.linalg.norm(encoded["tiny-max"], axis=1), 1.0, atol=1e-6)


def test_export_layout(exports, minilm_path):
    path = exports["minilm-3"][0]
    assert json.loads((path / "config.json").read_text())["num_hidden_layers"] == 3
    assert [m["type"].rsplit(".", 1)[-1] for m in json.loads((path / "modules.json").read_text())] == [
        "Transformer", "Pooling"]
    assert json.loads((path / "sentence_bert_config.json").read_text()) == json.loads(
        (minilm_path / "sentence_bert_config.json").read_text())  # max_seq_length 256, as MiniLM's own
    modules = json.loads((exports["minilm-3-white"][0] / "modules.json").read_text())
    assert [(m["path"], m["type"].rsplit(".", 1)[-1]) for m in modules] == [
        ("", "Transformer"), ("1_Pooling", "Pooling"), ("2_Dense", "Dense")]
    dense = json.loads((exports["minilm-3-white"][0] / "2_Dense" / "config.json").read_text())
    assert dense["activation_function"] == "torch.nn.modules.linear.Identity"
    assert [m["path"] for m in json.loads((exports["minilm-6"][0] / "modules.json").read_text())][-1] == "2_Normalize"
    tiny = json.loads((exports["tiny"][0] / "config.json").read_text())
    assert tiny["model_type"] == "bert" and tiny["num_hidden_layers"] == 2  # the code: layers 0-1 of the split


def test_no_pickle_files_and_push_accepts_it(exports):
    for path, _ in exports.values():
        files = [p for p in path.rglob("*") if p.is_file()]
        assert not [p for p in files if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".pickle")], path
        assert not [p for p in files if p.read_bytes()[:4].startswith(PICKLE_MAGIC)], path
        assert {op.path_in_repo for op in upload_operations(path)} == {
            p.relative_to(path).as_posix() for p in files}


def test_card_metadata_reads_back(exports):
    card = ModelCard.load(exports["tiny"][0] / "README.md")
    assert card.data.library_name == "sentence-transformers"
    assert card.data.pipeline_tag == "sentence-similarity"
    assert {"sentence-transformers", "sentence-similarity", "feature-extraction", "maskae"} <= set(card.data.tags)
    assert card.data.datasets == ["Salesforce/wikitext"]
    [result] = card.data.eval_results
    assert (result.task_type, result.metric_type, result.metric_value) == ("sentence-similarity", "spearmanr", 41.25)
    assert "SentenceTransformer(\"tiny\")" in card.text
    stock = ModelCard.load(exports["minilm-3"][0] / "README.md")
    assert stock.data.eval_results is None and "maskae" not in stock.data.tags
    assert "3 of 6 layers" in stock.text


def test_a_saved_whitening_is_applied_when_it_matches(tiny_run, tmp_path):
    model_dir = tmp_path / "whitened-run"
    MaskAEForMaskedLM.from_pretrained(tiny_run).save_pretrained(model_dir)
    word_tokenizer().save_pretrained(model_dir)
    vectors = maskae.embed(model_dir, TEXTS)
    rng = np.random.default_rng(1)
    Whitening(mean=vectors.mean(0), matrix=rng.normal(size=(32, 4)), layer=None, pooling="mean").save(model_dir)
    save_sentence_transformer(model_dir, tmp_path / "matching")
    save_sentence_transformer(model_dir, tmp_path / "other-pooling", pooling="cls")
    assert (tmp_path / "matching" / "2_Dense").is_dir()
    assert not (tmp_path / "other-pooling" / "2_Dense").exists()
    assert "whitening" not in json.loads((tmp_path / "matching" / "config.json").read_text())
    from sentence_transformers import SentenceTransformer

    encoded = SentenceTransformer(str(tmp_path / "matching"), device="cpu").encode(TEXTS)
    assert np.abs(encoded - maskae.embed(model_dir, TEXTS)).max() < 1e-5


def test_errors_are_one_sentence(tmp_path, tiny_run, minilm_path, capsys):
    bottleneck = MaskAEForMaskedLM(MaskAEConfig(base_config=BertConfig(**{
        "vocab_size": 99, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 37}), split_layer=1, bottleneck="projection", bottleneck_dim=8))
    with pytest.raises(ExportError, match="bottleneck has no stock equivalent"):
        save_sentence_transformer(bottleneck, tmp_path / "a", tokenizer=word_tokenizer())
    with pytest.raises(ExportError, match="unknown pooling"):
        save_sentence_transformer(tiny_run, tmp_path / "b", pooling="weightedmean")
    with pytest.raises(ExportError, match="one int"):
        save_sentence_transformer(tiny_run, tmp_path / "c", layer=[1, 2])
    with pytest.raises(maskae.ConfigError, match="out of range"):
        save_sentence_transformer(tiny_run, tmp_path / "d", layer=3)  # above the code: not the encoder's
    modernbert = tiny_stock("modernbert").model
    with pytest.raises(ExportError, match="final norm"):
        save_sentence_transformer(modernbert, tmp_path / "e", layer=2, tokenizer=word_tokenizer())
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ExportError, match="not empty"):
        save_sentence_transformer(tiny_run, tmp_path / "full")
    assert main(["export", str(tiny_run), "--out", str(tmp_path / "f"), "--layer", "1"]) == 2
    assert "add --sentence-transformers" in capsys.readouterr().err


def test_a_whitening_for_another_layer_is_refused(minilm_path, whitening, tmp_path):
    with pytest.raises(ExportError, match="fitted at layer 3 with mean pooling"):
        save_sentence_transformer(minilm_path, tmp_path / "x", layer=4, whitening=whitening)
