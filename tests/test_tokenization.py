"""Training WordPiece and BPE tokenizers on the packaged corpus; the `maskae tokenizer train` command."""

from __future__ import annotations

import datasets
import pytest
import torch
from transformers import AutoTokenizer

from maskae import ConfigError, DataCollatorForDenoising, NoiseConfig
from maskae.cli import main
from maskae.data.corpus import default_corpus
from maskae.data.noise import IGNORE_INDEX
from maskae.data.tokenization import train_tokenizer

TEXT = "The European lobster lives in the eastern Atlantic Ocean."


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One small tokenizer of each kind, trained once for the module."""
    cache = tmp_path_factory.mktemp("hf-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
        out = {}
        for kind in ("wordpiece", "bpe"):
            path = tmp_path_factory.mktemp(kind)
            train_tokenizer(default_corpus("validation"), 1500, path, kind=kind)
            out[kind] = path
    return out


def test_wordpiece_loads_with_auto_tokenizer(trained):
    tokenizer = AutoTokenizer.from_pretrained(trained["wordpiece"])
    assert tokenizer.is_fast and len(tokenizer) == 1500
    assert tokenizer.convert_ids_to_tokens(list(range(5))) == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert (tokenizer.pad_token, tokenizer.mask_token, tokenizer.model_max_length) == ("[PAD]", "[MASK]", 512)
    encoded = tokenizer(TEXT, "Second sentence .")
    tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"])
    assert tokens[0] == "[CLS]" and tokens.count("[SEP]") == 2 and tokens[-1] == "[SEP]"
    assert any(t.startswith("##") for t in tokens)
    assert tokenizer.decode(tokenizer(TEXT)["input_ids"], skip_special_tokens=True) == TEXT.lower()


def test_bpe_is_roberta_style(trained):
    tokenizer = AutoTokenizer.from_pretrained(trained["bpe"])
    assert tokenizer.convert_ids_to_tokens(list(range(5))) == ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    assert (tokenizer.cls_token, tokenizer.sep_token, tokenizer.mask_token) == ("<s>", "</s>", "<mask>")
    ids = tokenizer(TEXT)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == TEXT.lower()
    assert tokenizer.convert_ids_to_tokens(tokenizer("the <mask> lives")["input_ids"])[1:3] == ["the", "<mask>"]


def test_cased_training_keeps_case(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    tokenizer = train_tokenizer(default_corpus("validation"), 800, tmp_path / "cased", lowercase=False)
    assert tokenizer.decode(tokenizer("Atlantic")["input_ids"], skip_special_tokens=True) == "Atlantic"


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_whole_word_masking_with_trained_tokenizers(trained, kind):
    tokenizer = AutoTokenizer.from_pretrained(trained[kind])
    lines = [line.strip() for line in default_corpus("validation").read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line and not line.startswith("=")][:64]
    encodings = tokenizer(lines, truncation=True, max_length=96)
    batch = DataCollatorForDenoising(tokenizer, NoiseConfig(whole_word=True, mask_prob=0.3), seed=0)(
        [{"input_ids": ids} for ids in encodings["input_ids"]]
    )
    selected = batch["labels"] != IGNORE_INDEX
    split_words = 0
    for row in range(len(lines)):
        words = encodings.word_ids(row)
        for word in set(w for w in words if w is not None):
            flags = {bool(selected[row, p]) for p, w in enumerate(words) if w == word}
            split_words += len(flags) > 1
    assert split_words == 0
    assert selected.any()


def test_cli_trains_a_loadable_tokenizer(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(default_corpus("validation").read_text(encoding="utf-8").splitlines()[:300]))
    out = tmp_path / "tok"
    args = ["tokenizer", "train", "--corpus", str(corpus), "--vocab-size", "600", "--out", str(out), "--kind", "bpe"]
    assert main(args) == 0
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.mask_token == "<mask>" and len(tokenizer) == 600

    assert main(["tokenizer", "train", "--corpus", str(corpus), "--vocab-size", "3", "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after the first run's progress bars
    assert error.startswith("maskae tokenizer: error: vocab_size=3 is too small")
    with pytest.raises(SystemExit):
        main(["tokenizer", "train", "--corpus", str(corpus), "--vocab-size", "600", "--out", str(out), "--kind", "x"])


def test_unknown_kind():
    with pytest.raises(ConfigError, match="unknown tokenizer kind 'unigram'"):
        train_tokenizer(default_corpus("validation"), 1000, "unused", kind="unigram")


def test_trained_tokenizer_feeds_a_model(trained, tmp_path):
    """A tokenizer trained here, a fresh tiny BERT of its vocabulary, and a sentence-bottleneck batch."""
    from transformers import BertConfig, BertForMaskedLM

    from maskae import MaskAEForMaskedLM

    tokenizer = AutoTokenizer.from_pretrained(trained["wordpiece"])
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37, pad_token_id=tokenizer.pad_token_id)
    BertForMaskedLM(config).save_pretrained(tmp_path)
    model = MaskAEForMaskedLM.from_backbone(
        str(tmp_path), split_layer=1, decoder="transformer", decoder_layers=1, bottleneck="sentence"
    )
    noise = NoiseConfig(mask_prob=0.15, delete_prob=0.1, decoder_mask_prob=0.6)
    collator = DataCollatorForDenoising(tokenizer, noise, seed=0)
    batch = collator([{"input_ids": tokenizer(text)["input_ids"]} for text in (TEXT, "A short one .")])
    loss = model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss)
