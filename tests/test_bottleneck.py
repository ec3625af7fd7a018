"""Bottlenecks: the projection narrows every token's code; the sentence bottleneck lets the decoder see
the encoder only through one pooled vector."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig

from maskae import MaskAEConfig, MaskAEForMaskedLM

BASE = dict(vocab_size=99, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=37,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def sentence_model(pooling: str) -> MaskAEForMaskedLM:
    torch.manual_seed(0)
    config = MaskAEConfig(base_config=BertConfig(**BASE), split_layer=2, decoder="transformer", decoder_layers=1,
                          bottleneck="sentence", pooling=pooling)
    return MaskAEForMaskedLM(config).eval()


def perturb_encoder_output(model: MaskAEForMaskedLM, change):
    """Add `change(hidden)` to the top encoder layer's output, through a forward hook."""
    top = model.maskae.layers()[-1]
    return top.register_forward_hook(lambda module, args, output: output + change(output))


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_sentence_decoder_sees_only_the_pooled_vector(batch, pooling):
    ids, mask = batch
    model = sentence_model(pooling)
    decoder_ids = ids.clone()
    decoder_ids[:, 2::2] = 4  # the decoder's own, heavily masked copy
    with torch.no_grad():
        reference = model(ids, mask, decoder_input_ids=decoder_ids, decoder_attention_mask=mask)
    assert reference.code.shape == (2, 32)

    g = torch.Generator().manual_seed(1)
    noise = torch.randn(ids.shape + (32,), generator=g)
    if pooling == "cls":
        noise[:, 0] = 0  # every token but the pooled one
    else:
        real = mask.unsqueeze(-1).float()
        noise = noise * real
        noise = noise - real * noise.sum(1, keepdim=True) / real.sum(1, keepdim=True)  # zero mean over real tokens
    handle = perturb_encoder_output(model, lambda hidden: noise)
    with torch.no_grad():
        perturbed = model(ids, mask, decoder_input_ids=decoder_ids, decoder_attention_mask=mask)
    handle.remove()
    assert (noise.abs().sum() > 1).item()
    torch.testing.assert_close(perturbed.code, reference.code, atol=1e-5, rtol=0)
    torch.testing.assert_close(perturbed.logits, reference.logits, atol=1e-5, rtol=0)

    # ...while moving the pooled vector itself does change the reconstruction.
    direction = torch.randn(32, generator=g) * 3
    shift = torch.zeros_like(noise)
    if pooling == "cls":
        shift[:, 0] = direction
    else:
        shift = mask.unsqueeze(-1).float() * direction
    handle = perturb_encoder_output(model, lambda hidden: shift)
    with torch.no_grad():
        moved = model(ids, mask, decoder_input_ids=decoder_ids, decoder_attention_mask=mask)
    handle.remove()
    assert (moved.code - reference.code).abs().max() > 0.1
    assert (moved.logits - reference.logits).abs().max() > 1e-3


def test_sentence_decoder_follows_the_encoder_input(batch):
    """A different encoder input moves the pooled vector, and with it the reconstruction."""
    ids, mask = batch
    model = sentence_model("cls")
    decoder_ids = torch.full_like(ids, 4)
    decoder_ids[:, 0] = ids[:, 0]
    with torch.no_grad():
        a = model(ids, mask, decoder_input_ids=decoder_ids, decoder_attention_mask=mask)
        other = ids.clone()
        other[:, 3] = (other[:, 3] + 1) % 99
        b = model(other, mask, decoder_input_ids=decoder_ids, decoder_attention_mask=mask)
    # a different encoder input changes the pooled vector, hence the logits
    assert (a.code - b.code).abs().max() > 1e-4
    assert (a.logits - b.logits).abs().max() > 1e-4


def test_projection_bottleneck_shapes_and_training(batch):
    ids, mask = batch
    torch.manual_seed(0)
    model = MaskAEForMaskedLM(MaskAEConfig(base_config=BertConfig(**BASE), split_layer=2, bottleneck="projection",
                                           bottleneck_dim=8))
    labels = torch.where(mask.bool(), ids, torch.full_like(ids, -100))
    out = model(ids, mask, labels=labels)
    assert out.code.shape == (2, 9, 8)
    assert out.logits.shape == (2, 9, 99)
    out.loss.backward()
    assert model.maskae.down.weight.grad.abs().sum() > 0 and model.up.weight.grad.abs().sum() > 0
    assert model.config.code_dim == 8


def test_sentence_bottleneck_with_the_denoising_collator_trains(tmp_path):
    """The collator's decoder copy drives the model: a few steps lower the reconstruction loss."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from maskae import DataCollatorForDenoising, NoiseConfig

    words = "the a cat dog sat ran on under mat log big small red blue".split()
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]",
                                        cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    g = torch.Generator().manual_seed(0)
    texts = [" ".join(words[int(i)] for i in torch.randint(0, len(words), (8,), generator=g)) for _ in range(8)]
    features = [{"input_ids": tokenizer(t)["input_ids"]} for t in texts]
    collator = DataCollatorForDenoising(tokenizer, NoiseConfig(mask_prob=0.15, delete_prob=0.1, decoder_mask_prob=0.5),
                                        seed=0)
    torch.manual_seed(0)
    config = MaskAEConfig(base_config=BertConfig(**{**BASE, "vocab_size": len(tokenizer)}), split_layer=2,
                          decoder="transformer", decoder_layers=1, bottleneck="sentence", pooling="cls")
    model = MaskAEForMaskedLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(80):
        batch = collator(features)
        assert set(batch) >= {"decoder_input_ids", "decoder_attention_mask"}
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5
