"""A split model must be the stock model, exactly, when its decoder is the stock model's remaining layers."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoModel, AutoModelForMaskedLM, BertConfig

import maskae
from maskae import (
    ConfigError,
    ExportError,
    MaskAEConfig,
    MaskAEForMaskedLM,
    MaskAEModel,
    export_stock,
)

ATOL = 1e-4


def tiny_layers(stock) -> torch.nn.ModuleList:
    """The layer list of a stock *ForMaskedLM, whatever the family calls it."""
    adapter = maskae.backbones.get_backbone(stock.config)
    return adapter.layers(getattr(stock, adapter.base_prefix))


def stock_outputs(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, output_hidden_states=True)


def real(x, mask):
    """Only positions that are real tokens: padded positions carry no meaning."""
    return x[mask.bool()]


@pytest.mark.parametrize("split", [1, 2, 3, 4])
def test_layers_decoder_reproduces_stock_logits(stock_dir, batch, split):
    family, path, stock = stock_dir
    ids, mask = batch
    model = MaskAEForMaskedLM.from_backbone(path, split_layer=split).eval()
    ref = stock_outputs(stock, ids, mask)
    with torch.no_grad():
        out = model(ids, attention_mask=mask)
    torch.testing.assert_close(real(out.logits, mask), real(ref.logits, mask), atol=ATOL, rtol=0)
    torch.testing.assert_close(real(out.code, mask), real(ref.hidden_states[split], mask), atol=ATOL, rtol=0)


def test_layer_chunks_reproduce_stock_logits_and_gradients(stock_dir, batch):
    """Each layer run one sequence at a time (the padding mask, ModernBERT's window masks and rotary
    tables cut or kept to match) is still the stock model, and trains with the same gradients."""
    family, path, stock = stock_dir
    ids, mask = batch
    chunked = MaskAEForMaskedLM.from_backbone(path, split_layer=2, layer_chunk_tokens=ids.shape[1]).eval()
    whole = MaskAEForMaskedLM.from_backbone(path, split_layer=2, layer_chunk_tokens=0).eval()
    calls = []
    chunked.decoder[0].register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        out = chunked(ids, attention_mask=mask)
    assert len(calls) == len(ids)  # really chunked: one call per sequence
    ref = stock_outputs(stock, ids, mask)
    torch.testing.assert_close(real(out.logits, mask), real(ref.logits, mask), atol=ATOL, rtol=0)
    labels = torch.where(mask.bool(), ids, -100)
    for model in (chunked, whole):  # eval mode: no dropout, whose masks would differ by chunk
        model(ids, attention_mask=mask, labels=labels).loss.backward()
    for (name, theirs), ours in zip(whole.named_parameters(), chunked.parameters()):
        torch.testing.assert_close(ours.grad, theirs.grad, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("split", [1, 3])
def test_linear_decoder_is_stock_head_on_hidden_state(stock_dir, batch, split):
    family, path, stock = stock_dir
    ids, mask = batch
    model = MaskAEForMaskedLM.from_backbone(path, split_layer=split, decoder="linear").eval()
    assert len(model.decoder) == 0
    ref = stock_outputs(stock, ids, mask)
    hidden = ref.hidden_states[split]
    with torch.no_grad():
        if family == "modernbert" and split < 4:  # the stock head reads the final norm's output
            hidden = stock.model.final_norm(hidden)
        expected = {
            "bert": lambda h: stock.cls(h),
            "roberta": lambda h: stock.lm_head(h),
            "distilbert": lambda h: stock.vocab_projector(
                stock.vocab_layer_norm(stock.activation(stock.vocab_transform(h)))
            ),
            "modernbert": lambda h: stock.decoder(stock.head(h)),
        }[family](hidden)
        out = model(ids, attention_mask=mask)
    torch.testing.assert_close(real(out.logits, mask), real(expected, mask), atol=ATOL, rtol=0)


def test_transformer_decoder_has_fresh_layers_and_trains(stock_dir, batch):
    family, path, stock = stock_dir
    ids, mask = batch
    model = MaskAEForMaskedLM.from_backbone(path, split_layer=2, decoder="transformer", decoder_layers=1)
    assert len(model.decoder) == 1
    # the encoder is pretrained, the decoder layer is fresh, not a copy of stock layer 2
    stock_layer2 = dict(tiny_layers(stock)[2].named_parameters())
    fresh = dict(model.decoder[0].named_parameters())
    assert fresh.keys() == stock_layer2.keys()
    assert any(not torch.equal(fresh[name], stock_layer2[name]) for name in fresh if name.endswith("weight"))
    ref = stock_outputs(stock.eval(), ids, mask)
    with torch.no_grad():
        out = model.eval()(ids, attention_mask=mask)
    torch.testing.assert_close(real(out.code, mask), real(ref.hidden_states[2], mask), atol=ATOL, rtol=0)
    labels = torch.where(mask.bool(), ids, torch.full_like(ids, -100))
    loss = model.train()(ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert model.decoder[0].parameters().__next__().grad is not None


def test_save_pretrained_round_trips_through_auto_classes(stock_dir, batch, tmp_path):
    family, path, _ = stock_dir
    ids, mask = batch
    model = MaskAEForMaskedLM.from_backbone(path, split_layer=2).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = AutoModelForMaskedLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is MaskAEForMaskedLM
    encoder = AutoModel.from_pretrained(tmp_path).eval()
    assert type(encoder) is MaskAEModel
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, mask).logits, model(ids, mask).logits, atol=0, rtol=0)
        torch.testing.assert_close(encoder(ids, mask).code, model(ids, mask).code, atol=0, rtol=0)


def run_without_maskae(code: str) -> str:
    """Run `code` in a fresh interpreter where `import maskae` fails."""
    guard = "import sys; sys.modules['maskae'] = None\n"
    result = subprocess.run(
        [sys.executable, "-c", guard + textwrap.dedent(code)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_export_stock_loads_without_maskae(stock_dir, batch, tmp_path, split=3):
    family, path, _ = stock_dir
    ids, mask = batch
    model = MaskAEForMaskedLM.from_backbone(path, split_layer=split, decoder="transformer", decoder_layers=2).eval()
    with torch.no_grad():
        out = model(ids, mask, output_hidden_states=True)
        top = out.code
        if family == "modernbert":  # a stock ModernBertModel normalises its last hidden state
            top = model.maskae.backbone.final_norm(top)
    export_stock(model, tmp_path / "full", part="full")
    export_stock(model, tmp_path / "encoder", part="encoder")
    torch.save({"ids": ids, "mask": mask, "logits": out.logits, "top": top}, tmp_path / "ref.pt")
    run_without_maskae(f"""
        import torch
        from transformers import AutoModel, AutoModelForMaskedLM
        ref = torch.load({str(tmp_path / 'ref.pt')!r})
        keep = ref["mask"].bool()
        full = AutoModelForMaskedLM.from_pretrained({str(tmp_path / 'full')!r}).eval()
        enc = AutoModel.from_pretrained({str(tmp_path / 'encoder')!r}).eval()
        assert "maskae" not in type(full).__module__
        assert full.config.model_type == {family!r}
        with torch.no_grad():
            logits = full(input_ids=ref["ids"], attention_mask=ref["mask"]).logits
            states = enc(input_ids=ref["ids"], attention_mask=ref["mask"], output_hidden_states=True).hidden_states
        assert len(states) == {split} + 1
        torch.testing.assert_close(logits[keep], ref["logits"][keep], atol=1e-4, rtol=0)
        torch.testing.assert_close(states[-1][keep], ref["top"][keep], atol=1e-4, rtol=0)
    """)


def test_real_minilm_split_matches_stock(minilm_path, tmp_path):
    """all-MiniLM-L6-v2 has no MLM head: maskae adds one tied to the word embeddings."""
    from transformers import AutoTokenizer, BertModel

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    batch = tokenizer(["A man is playing a guitar.", "Hello"], padding=True, return_tensors="pt")
    stock = BertModel.from_pretrained(minilm_path).eval()
    model = MaskAEForMaskedLM.from_backbone(minilm_path, split_layer=4).eval()
    head = model.get_output_embeddings()
    assert head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    with torch.no_grad():
        ref = stock(**batch, output_hidden_states=True)
        out = model(batch["input_ids"], batch["attention_mask"], output_hidden_states=True)
    keep = batch["attention_mask"].bool()
    torch.testing.assert_close(out.code[keep], ref.hidden_states[4][keep], atol=ATOL, rtol=0)
    torch.testing.assert_close(out.hidden_states[-1][keep], ref.last_hidden_state[keep], atol=ATOL, rtol=0)
    export_stock(model, tmp_path, part="full", tokenizer=tokenizer)
    run_without_maskae(f"""
        import torch
        from transformers import AutoTokenizer, BertForMaskedLM, BertModel
        tok = AutoTokenizer.from_pretrained({str(tmp_path)!r})
        mlm = BertForMaskedLM.from_pretrained({str(tmp_path)!r}).eval()
        ref = BertModel.from_pretrained({str(minilm_path)!r}).eval()
        b = tok(["A man is playing a guitar."], return_tensors="pt")
        with torch.no_grad():
            a = mlm.bert(**b).last_hidden_state
            r = ref(**b).last_hidden_state
        torch.testing.assert_close(a, r, atol=1e-4, rtol=0)
    """)


def test_config_errors_are_readable():
    base = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=37)
    with pytest.raises(ConfigError, match=r"split_layer=9 is out of range for a 4-layer backbone"):
        MaskAEConfig(base_config=base, split_layer=9)
    with pytest.raises(ConfigError, match="unknown decoder 'lstm'"):
        MaskAEConfig(base_config=base, split_layer=2, decoder="lstm")
    with pytest.raises(ConfigError, match="decoder_layers >= 1"):
        MaskAEConfig(base_config=base, split_layer=2, decoder="transformer")
    with pytest.raises(ConfigError, match="bottleneck_dim"):
        MaskAEConfig(base_config=base, split_layer=2, bottleneck="projection")
    with pytest.raises(ConfigError, match=r"layer_chunk_tokens=-1 must be >= 0"):
        MaskAEConfig(base_config=base, split_layer=2, layer_chunk_tokens=-1)
    assert issubclass(ConfigError, maskae.MaskAEError)


def test_from_backbone_errors(tmp_path, stock_dir):
    _, path, _ = stock_dir
    with pytest.raises(ConfigError, match="out of range"):
        MaskAEForMaskedLM.from_backbone(path, split_layer=-1)
    with pytest.raises(ConfigError, match="out of range"):
        MaskAEForMaskedLM.from_backbone(path, split_layer=0, decoder="linear")
    with pytest.raises(maskae.CheckpointError, match="cannot load a model config"):
        MaskAEForMaskedLM.from_backbone(tmp_path / "nowhere", split_layer=1)


def test_unsupported_family_is_named(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=2, n_embd=16, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(maskae.UnsupportedBackboneError, match="no adapter for model_type 'gpt2'"):
        MaskAEForMaskedLM.from_backbone(tmp_path, split_layer=1)


def test_export_rejects_bottleneck(tmp_path):
    base = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
    model = MaskAEForMaskedLM(MaskAEConfig(base_config=base, split_layer=1, bottleneck="projection", bottleneck_dim=8))
    with pytest.raises(ExportError, match="no stock"):
        export_stock(model, tmp_path, part="full")


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("shape", [{}, {"decoder": "transformer", "decoder_layers": 2, "bottleneck": "sentence"}])
def test_sparse_prediction_equals_dense(batch, shape, fused):
    """Computing the top layer and the vocabulary projection only at the targets (and, fused, the
    loss chunk by chunk) changes nothing about the loss or the gradients (padding in the batch; the
    sentence bottleneck's own decoder mask)."""
    ids, mask = batch
    base = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=37,
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    dense = MaskAEForMaskedLM(MaskAEConfig(base_config=base, split_layer=2, **shape))
    sparse = MaskAEForMaskedLM(MaskAEConfig(base_config=base, split_layer=2, sparse_prediction=True, fused_loss=fused,
                                            **shape))
    sparse.load_state_dict(dense.state_dict())
    assert sparse.backbone_adapter.run_layer_at_targets is not None
    labels = torch.full_like(ids, -100)
    labels[0, 1], labels[0, 4], labels[1, 2] = ids[0, 1], ids[0, 4], ids[1, 2]
    out_d = dense(ids, mask, labels=labels)
    out_s = sparse(ids, mask, labels=labels)
    assert out_s.logits is None if fused else out_s.logits.shape == (3, 99)
    with torch.no_grad():  # without gradients the fused path steps aside: logits at the targets
        assert sparse(ids, mask, labels=labels).logits.shape == (3, 99)
    out_d.loss.backward()
    out_s.loss.backward()
    torch.testing.assert_close(out_s.loss, out_d.loss, atol=1e-6, rtol=0)
    for (name, p_d), p_s in zip(dense.named_parameters(), sparse.parameters()):
        torch.testing.assert_close(p_s.grad, p_d.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_compile_layers_keeps_loss_gradients_and_state_dict_keys(batch):
    """The optional torch.compile switch compiles the layers in place: same numbers, same checkpoint keys."""
    from torch._dynamo.utils import counters

    ids, mask = batch
    base = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    model = MaskAEForMaskedLM(MaskAEConfig(base_config=base, split_layer=1, sparse_prediction=True)).train()
    labels = torch.full_like(ids, -100)
    labels[0, 3], labels[1, 5] = ids[0, 3], ids[1, 5]
    eager = model(ids, mask, labels=labels).loss
    eager.backward()
    eager_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    keys = list(model.state_dict())
    model.zero_grad()
    model.compile_layers()
    counters.clear()
    compiled = model(ids, mask, labels=labels).loss
    compiled.backward()
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo really compiled the layers
    assert list(model.state_dict()) == keys
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, eager_grads[name], rtol=1e-4, atol=1e-6, msg=name)
