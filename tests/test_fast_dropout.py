"""Cheap CPU dropout (`maskae.training.dropout`): it drops p of the elements, keeps the expectation, sends
gradients through the same mask, repeats under a seed, leaves attention equal to SDPA where nothing is
dropped, and changes nothing that is saved."""

from __future__ import annotations

import json

import torch
from conftest import tiny_stock
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from maskae import MaskAEForMaskedLM
from maskae.training.cpu_attention import ATTENTION, cpu_training_attention, use_cpu_attention
from maskae.training.dropout import FastDropout, fast_dropout, use_fast_dropout


def test_drops_p_keeps_the_expectation_and_masks_the_gradient():
    torch.manual_seed(0)
    x = torch.full((1000, 1000), 2.0, requires_grad=True)
    y = fast_dropout(x, 0.1)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.9) < 0.002
    assert torch.allclose(y[kept], torch.tensor(2.0 * 65536 / (65536 - 6554)))
    assert abs(y.mean().item() - 2.0) < 0.01
    y.sum().backward()
    assert torch.equal(x.grad != 0, kept)
    torch.manual_seed(0)
    assert torch.equal(fast_dropout(x.detach(), 0.1), y.detach())  # the seed decides the mask


def test_eval_mode_and_p_zero_are_the_identity():
    x = torch.randn(4, 5)
    assert torch.equal(FastDropout(0.3).eval()(x), x) and fast_dropout(x, 0.0) is x


def test_attention_equals_sdpa_when_nothing_is_dropped():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 9, 8) for _ in range(3))
    mask = torch.ones(2, 1, 9, 9, dtype=torch.bool)
    mask[1, :, :, 6:] = False
    module = torch.nn.Module()
    module.is_causal = False
    expected, _ = sdpa_attention_forward(module, q, k, v, mask, dropout=0.0, scaling=0.3)
    # p = 1e-6 rounds to 0 / 65536: the dropout path runs, keeps every weight and scales by exactly 1
    got, _ = cpu_training_attention(module, q, k, v, mask, dropout=1e-6, scaling=0.3)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


def test_bf16_attention_runs_in_fp32_on_a_cpu_without_amx_and_in_bf16_with_it(monkeypatch):
    from maskae.utils import host

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 9, 8).to(torch.bfloat16) for _ in range(3))
    module = torch.nn.Module()
    module.is_causal = False
    in_fp32, _ = sdpa_attention_forward(module, q.float(), k.float(), v.float(), None, dropout=0.0)
    in_bf16, _ = sdpa_attention_forward(module, q, k, v, None, dropout=0.0)
    assert not torch.equal(in_fp32.to(torch.bfloat16), in_bf16)  # the two ways tell apart
    for amx, expected in ((False, in_fp32.to(torch.bfloat16)), (True, in_bf16)):
        monkeypatch.setattr(host, "has_amx", lambda amx=amx: amx)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got, _ = cpu_training_attention(module, q, k, v, None, dropout=0.0)
        assert got.dtype == torch.bfloat16 and torch.equal(got, expected)


def test_cpu_attention_is_switched_on_only_where_it_can_matter(tmp_path):
    """No attention dropout and fp32: transformers' own SDPA call stays; bf16 switches every layer."""
    stock = tiny_stock("bert")
    stock.config.attention_probs_dropout_prob = 0.0
    stock.save_pretrained(tmp_path / "stock")
    model = MaskAEForMaskedLM.from_backbone(str(tmp_path / "stock"), 2)
    assert use_cpu_attention(model) == 0 and model.config._attn_implementation == "sdpa"
    assert use_cpu_attention(model, bf16=True) > 0 and model.config._attn_implementation == ATTENTION


def test_a_model_with_fast_dropout_trains_reproducibly_and_saves_as_before(tmp_path):
    tiny_stock("bert").save_pretrained(tmp_path / "stock")
    losses = []
    for run in range(2):
        model = MaskAEForMaskedLM.from_backbone(str(tmp_path / "stock"), 2).train()
        assert use_fast_dropout(model) > 0 and use_cpu_attention(model) > 0
        assert any(getattr(m, "config", None) is not None and m.config._attn_implementation == ATTENTION
                   for m in model.modules())
        torch.manual_seed(1)
        ids = torch.randint(5, 99, (4, 12))
        labels = torch.where(torch.rand(4, 12) < 0.3, ids, -100)
        out = model(input_ids=ids, labels=labels)
        out.loss.backward()
        losses.append((out.loss.item(), sum(p.grad.abs().sum().item() for p in model.parameters()
                                            if p.grad is not None)))
    assert losses[0] == losses[1]
    model.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert ATTENTION not in json.dumps(saved)
    assert set(model.state_dict()) == set(MaskAEForMaskedLM.from_backbone(str(tmp_path / "stock"), 2).state_dict())
    model.eval()  # in evaluation the swapped model is the stock one
    reference = MaskAEForMaskedLM.from_backbone(str(tmp_path / "stock"), 2).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, reference(input_ids=ids).logits)
