"""Vocabulary projection + cross-entropy, fused and chunked, for training with sparse prediction.

The plain way materialises [targets, vocab] logits (75 MB for 600 targets of a 30k vocabulary),
then reads and writes that tensor about six more times: bias, log-softmax forward and backward,
the gradient's zero fill, and the allocator's fresh pages for each. Here the targets are taken a
chunk at a time into one reused buffer, where the logits become, in place, the gradient of the
summed loss, which feeds both matmuls of the backward pass. Only the FLOPs of the three matmuls
that any implementation needs are done (as in Liger-Kernel's fused linear cross-entropy and Apple's
Cut Cross-Entropy, here for CPUs and any device without custom kernels).

Logits are kept as [vocab, chunk], so that the sums over the vocabulary are cheap outer reductions,
and every step runs a block of vocabulary rows at a time: a matmul with a short inner dimension
(the hidden size) and a tall output ran at ~60% of the CPU's matmul peak as one call and at ~95% in
blocks of 512 rows, and the exp, the scaling and both gradient matmuls then find the block in cache.

Under bf16 autocast (`compute_dtype=torch.bfloat16`) the three matmuls take bf16 operands while the
logits buffer, the exp, the sums, the loss and every gradient accumulator stay fp32: the bf16 unit
does the FLOPs, and the [targets, vocab] logits are never cast, stored or log-softmaxed in bf16 (the
unfused way under autocast spent more time on those than on its matmuls).
"""

from __future__ import annotations

import torch

# Logits per chunk of targets: up to 12 Mi fp32 values (48 MB; ~400 targets of a 30k vocabulary).
# Fewer chunks mean fewer passes over the weight and its gradient. On the benchmark (609 targets, 30k
# vocabulary, 2 cores) two chunks of 305 measured fastest, ahead of 3 x 203 and 1 x 609.
CHUNK_ELEMENTS = 12 * 2**20
MIN_CHUNK_ROWS = 32
# Vocabulary rows per block: 512 x 305 logits (625 kB) stay in a core's L2; 256 and 1024 measured slower.
VOCAB_BLOCK = 512


def _add_product(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, overwrite: bool = False) -> None:
    """out = a @ b (overwrite) or out += a @ b. In place when the dtypes match; bf16 operands give a bf16
    product that is cast into the fp32 `out` (a block at a time, so the temporary stays small)."""
    if a.dtype == out.dtype:
        if overwrite:
            torch.mm(a, b, out=out)
        else:
            out.addmm_(a, b)
    elif overwrite:
        out.copy_(torch.mm(a, b))
    else:
        out.add_(torch.mm(a, b))


def _project(weight: torch.Tensor, bias: torch.Tensor | None, chunk: torch.Tensor, logits: torch.Tensor,
             start: int, block: int) -> torch.Tensor:
    """Vocabulary rows start:start+block of the [vocab, chunk] logits, written into `logits`."""
    rows = logits[start:start + block]
    _add_product(rows, weight[start:start + block], chunk.t(), overwrite=True)
    if bias is not None:
        rows.add_(bias[start:start + block].unsqueeze(1))
    return rows


def _exp_logits(weight: torch.Tensor, bias: torch.Tensor | None, chunk: torch.Tensor, logits: torch.Tensor,
                block: int, shift: torch.Tensor | None = None) -> torch.Tensor:
    """Fill `logits` with exp(logits - shift), block by block; return the sums over the vocabulary."""
    total = chunk.new_zeros(chunk.shape[0])
    for start in range(0, weight.shape[0], block):
        rows = _project(weight, bias, chunk, logits, start, block)
        if shift is not None:
            rows.sub_(shift)
        total += rows.exp_().sum(dim=0)
    return total


def _logits_max(weight: torch.Tensor, bias: torch.Tensor | None, chunk: torch.Tensor, logits: torch.Tensor,
                block: int) -> torch.Tensor:
    shift = chunk.new_full((chunk.shape[0],), -torch.inf)
    for start in range(0, weight.shape[0], block):
        shift = torch.maximum(shift, _project(weight, bias, chunk, logits, start, block).amax(dim=0))
    return shift


class LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of `hidden @ weight.T + bias` against `labels`; gradients are computed in
    the forward pass (the logits are never stored) and scaled by the incoming gradient in backward."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                labels: torch.Tensor, chunk_rows: int, vocab_block: int,
                compute_dtype: torch.dtype | None) -> torch.Tensor:
        rows, vocab = hidden.shape[0], weight.shape[0]
        accumulate = torch.float32 if compute_dtype is not None else hidden.dtype
        # The matmuls' operands: the weights and rows themselves, or their bf16 copies (made once).
        weight_mm = weight if compute_dtype is None else weight.to(compute_dtype)
        hidden_mm = hidden if compute_dtype is None else hidden.to(compute_dtype)
        grad_hidden = torch.zeros_like(hidden, dtype=accumulate)
        grad_weight = torch.zeros_like(weight) if rows == 0 else torch.empty_like(weight)
        grad_bias = None if bias is None else torch.zeros_like(bias)
        loss = hidden.new_zeros((), dtype=torch.float32)
        # One logits buffer for all chunks: fresh pages for each would cost as much as the softmax.
        buffer = hidden.new_empty(vocab * min(chunk_rows, rows), dtype=accumulate)
        for start in range(0, rows, chunk_rows):
            chunk = hidden_mm[start:start + chunk_rows]
            targets = labels[start:start + chunk_rows]
            columns = torch.arange(chunk.shape[0], device=hidden.device)
            logits = buffer[: vocab * chunk.shape[0]].view(vocab, chunk.shape[0])
            # the picked logit from the same operands as the matmul's (exact bf16 products, fp32 sum)
            picked = (chunk.to(accumulate) * weight_mm[targets].to(accumulate)).sum(dim=1)
            if bias is not None:
                picked += bias[targets]
            # exp without the usual max shift (a pass fewer over the chunk); if a logit is beyond fp32's
            # exp range the sum shows it, and the chunk is redone with the shift.
            shift = None
            total = _exp_logits(weight_mm, bias, chunk, logits, vocab_block)
            if not bool((torch.isfinite(total) & (total > 0)).all()):
                shift = _logits_max(weight_mm, bias, chunk, logits, vocab_block)
                total = _exp_logits(weight_mm, bias, chunk, logits, vocab_block, shift)
            loss += ((0 if shift is None else shift) + total.log() - picked).sum(dtype=torch.float32)
            # d(summed loss)/d(logits) = softmax - one_hot(targets): the one-hot is taken off before the
            # scaling, (e - total) / total, as precise as e / total - 1. (Folding the scaling and the
            # one-hot into the matmuls' small operands would save a pass but lose precision when the
            # model is confident: p - 1 becomes a difference of two O(1) sums.)
            logits[targets, columns] -= total
            scale = total.reciprocal()
            grad_rows = grad_hidden[start:start + chunk_rows]
            for first in range(0, vocab, vocab_block):
                grad = logits[first:first + vocab_block].mul_(scale)
                if grad_bias is not None:
                    grad_bias[first:first + vocab_block] += grad.sum(dim=1)
                grad = grad if compute_dtype is None else grad.to(compute_dtype)
                _add_product(grad_weight[first:first + vocab_block], grad, chunk, overwrite=start == 0)
                _add_product(grad_rows, grad.t(), weight_mm[first:first + vocab_block])
        grad_hidden = grad_hidden.to(hidden.dtype)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.used = False
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        if ctx.used:
            raise RuntimeError("the fused linear cross-entropy supports one backward pass; set "
                               "config.fused_loss=False to backpropagate through the same graph twice.")
        ctx.used = True
        # Scaled in place: the saved gradients are not needed again, and no 30k x dim copy is allocated.
        grads = [None if g is None else g.mul_(grad_loss) for g in ctx.saved_tensors]
        return grads[0], grads[1], grads[2], None, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         labels: torch.Tensor, chunk_rows: int | None = None,
                         vocab_block: int = VOCAB_BLOCK, compute_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Summed cross-entropy over rows of `hidden` [n, dim] projected by `weight` [vocab, dim] (+ `bias`);
    equal to `F.cross_entropy(F.linear(hidden, weight, bias), labels, reduction="sum")`, gradients included.
    Every label must be a real class (no ignore index): pass only the target rows. `compute_dtype`
    (bf16) runs the matmuls on copies of that dtype and everything else in fp32 (the weight's own dtype, or
    None, runs them on the tensors themselves); autocast is off inside."""
    if chunk_rows is None:
        chunk_rows = max(MIN_CHUNK_ROWS, CHUNK_ELEMENTS // weight.shape[0])
    chunks = max(1, -(-hidden.shape[0] // chunk_rows))
    chunk_rows = max(1, -(-hidden.shape[0] // chunks))  # equal chunks: a thin last one would run far from peak
    if compute_dtype == weight.dtype:
        compute_dtype = None  # the matmuls run on the tensors themselves
    with torch.autocast(hidden.device.type, enabled=False):
        return LinearCrossEntropy.apply(hidden, weight, bias, labels, chunk_rows, vocab_block, compute_dtype)
