"""The fused, chunked vocabulary projection + cross-entropy equals the plain computation."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from maskae import MaskAEForMaskedLM
from maskae.linear_cross_entropy import linear_cross_entropy


def both_ways(hidden, weight, bias, labels, chunk_rows, vocab_block=64, scale=0.37):
    """(loss, grads) of the fused function and of F.cross_entropy, for the same upstream gradient."""
    results = []
    for fused in (True, False):
        leaves = [t.detach().clone().requires_grad_() for t in (hidden, weight, bias) if t is not None]
        h, w, b = leaves if bias is not None else (*leaves, None)
        if fused:
            loss = linear_cross_entropy(h, w, b, labels, chunk_rows=chunk_rows, vocab_block=vocab_block)
        else:
            loss = F.cross_entropy(F.linear(h, w, b), labels, reduction="sum")
        (loss * scale).backward()
        results.append((loss.detach(), [t.grad for t in leaves]))
    return results


@pytest.mark.parametrize("rows,chunk_rows,vocab_block,bias",
                         [(50, 16, 64, True), (50, 50, 100, False), (7, 64, 512, True)])
def test_equals_cross_entropy(rows, chunk_rows, vocab_block, bias):
    """Uneven chunks of targets and uneven vocabulary blocks (301 = 4 x 64 + 45), or one of each."""
    g = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(rows, 24, generator=g), torch.randn(301, 24, generator=g)
    labels = torch.randint(0, 301, (rows,), generator=g)
    (fused, fused_grads), (plain, plain_grads) = both_ways(
        hidden, weight, torch.randn(301, generator=g) if bias else None, labels, chunk_rows, vocab_block
    )
    torch.testing.assert_close(fused, plain, rtol=1e-6, atol=1e-4)
    for ours, theirs in zip(fused_grads, plain_grads, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_logits_beyond_exp_range_take_the_shifted_path():
    """Logits of several hundred overflow exp() in fp32; the chunk is redone with the max shift."""
    g = torch.Generator().manual_seed(1)
    hidden, weight, bias = torch.randn(20, 16, generator=g) * 60, torch.randn(101, 16, generator=g), torch.zeros(101)
    labels = torch.randint(0, 101, (20,), generator=g)
    assert F.linear(hidden, weight).abs().max() > 200
    (fused, fused_grads), (plain, plain_grads) = both_ways(hidden, weight, bias, labels, chunk_rows=8, vocab_block=32)
    assert torch.isfinite(fused)
    torch.testing.assert_close(fused, plain, rtol=1e-6, atol=1e-2)
    for ours, theirs in zip(fused_grads, plain_grads, strict=True):
        # Terms of size |hidden| ~ 60 cancel: fp32 agreement is relative to the gradient's scale.
        assert (ours - theirs).abs().max() <= 1e-5 * theirs.abs().max()


def test_no_rows_gives_zero_loss_and_zero_gradients():
    weight = torch.randn(11, 4, requires_grad=True)
    loss = linear_cross_entropy(torch.zeros(0, 4, requires_grad=True), weight, None, torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and weight.grad.abs().sum().item() == 0.0


def test_second_backward_is_refused_readably():
    hidden = torch.randn(3, 4, requires_grad=True)
    loss = linear_cross_entropy(hidden, torch.randn(11, 4), None, torch.tensor([1, 2, 3]))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward pass; set config.fused_loss=False"):
        loss.backward()


def test_each_family_fuses_to_the_same_loss_and_gradients(stock_dir, batch):
    """The head's `features` + its vocabulary projection is the stock head, for every family: the
    fused training loss and gradients equal the unfused ones (same dropout masks, by seed)."""
    _, path, _ = stock_dir
    ids, mask = batch
    labels = torch.full_like(ids, -100)
    labels[0, 2], labels[0, 5], labels[1, 1] = ids[0, 2], ids[0, 5], ids[1, 1]
    runs = []
    for fused in (True, False):
        model = MaskAEForMaskedLM.from_backbone(path, split_layer=2, sparse_prediction=True, fused_loss=fused).train()
        torch.manual_seed(0)
        output = model(ids, mask, labels=labels)
        assert (output.logits is None) == fused
        output.loss.backward()
        runs.append((output.loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (fused_loss, fused_grads), (plain_loss, plain_grads) = runs
    torch.testing.assert_close(fused_loss, plain_loss, rtol=1e-6, atol=1e-6)
    assert fused_grads.keys() == plain_grads.keys()
    for name, grad in fused_grads.items():
        torch.testing.assert_close(grad, plain_grads[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("hidden_dtype", [torch.float32, torch.bfloat16])
def test_bf16_matmuls_with_fp32_sums_match_the_rounded_operands(hidden_dtype):
    """compute_dtype=bf16: the matmuls see bf16 copies, the loss and gradients are fp32 sums. The reference
    is the exact computation on the same bf16-rounded operands; what remains is the logits' bf16 rounding."""
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(90, 32, generator=g).to(hidden_dtype).requires_grad_()
    weight, bias = (torch.randn(301, 32, generator=g) * 0.3).requires_grad_(), torch.randn(301, generator=g).requires_grad_()
    labels = torch.randint(0, 301, (90,), generator=g)
    loss = linear_cross_entropy(hidden, weight, bias, labels, chunk_rows=40, vocab_block=64,
                                compute_dtype=torch.bfloat16)
    loss.backward()
    assert loss.dtype == weight.grad.dtype == bias.grad.dtype == torch.float32 and hidden.grad.dtype == hidden_dtype
    leaves = [hidden.detach().to(torch.bfloat16).float().requires_grad_(),
              weight.detach().to(torch.bfloat16).float().requires_grad_(), bias.detach().clone().requires_grad_()]
    reference = F.cross_entropy(F.linear(*leaves), labels, reduction="sum")
    reference.backward()
    torch.testing.assert_close(loss, reference, rtol=2e-3, atol=0)
    for ours, theirs in zip((hidden.grad, weight.grad, bias.grad), (leaf.grad for leaf in leaves)):
        assert (ours.float() - theirs).norm() < 1e-2 * theirs.norm()
    # and the matmuls really ran in bf16: the same call without compute_dtype gives another loss
    in_fp32 = linear_cross_entropy(hidden.detach().float(), weight.detach(), bias.detach(), labels, chunk_rows=40,
                                   vocab_block=64)
    assert not torch.equal(loss.detach(), in_fp32)


def test_the_model_takes_the_fused_loss_under_cpu_bf16_autocast(stock_dir, batch):
    _, path, _ = stock_dir
    ids, mask = batch
    labels = torch.full_like(ids, -100)
    labels[0, 2], labels[1, 1] = ids[0, 2], ids[1, 1]
    model = MaskAEForMaskedLM.from_backbone(path, split_layer=2, sparse_prediction=True).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, mask, labels=labels)
    out.loss.backward()
    assert out.logits is None and out.loss.dtype == torch.float32  # fused: no logits were made
    assert model.get_output_embeddings().weight.grad.dtype == torch.float32
