"""Vocabulary projection + cross-entropy, fused and chunked, for training with sparse prediction.

The plain way materialises [targets, vocab] logits (75 MB for 600 targets of a 30k vocabulary),
then reads and writes that tensor about six more times: bias, log-softmax forward and backward,
the gradient's zero fill, and the allocator's fresh pages for each. Here the targets are taken a
chunk at a time into one reused buffer, where the logits become, in place, the gradient of the
summed loss, which feeds both matmuls of the backward pass at once. Only the FLOPs of the three
matmuls that any implementation needs are done (as in Liger-Kernel's fused linear cross-entropy and
Apple's Cut Cross-Entropy, here for CPUs and any device without custom kernels).

Logits are kept as [vocab, chunk], not [chunk, vocab]: with a hidden size of a few hundred, the
matmul that writes a tall, narrow output ran 1.6-1.9x faster on the benchmark's CPU, and the sums
over dim 0 are then cheap outer reductions.
"""

from __future__ import annotations

import torch

# Logits per chunk: up to 12 Mi fp32 values (48 MB; ~400 targets of a 30k vocabulary). Fewer chunks
# mean fewer passes over the weight and its gradient; a chunk too large stops fitting in cache. On the
# benchmark (609 targets, 30k vocabulary, 2 cores, 32 MB L3) two chunks of 305 measured fastest, ahead
# of 4 x 153, 3 x 203 and 1 x 609.
CHUNK_ELEMENTS = 12 * 2**20
MIN_CHUNK_ROWS = 32


def _project(weight: torch.Tensor, bias: torch.Tensor | None, chunk: torch.Tensor, out: torch.Tensor) -> None:
    torch.mm(weight, chunk.t(), out=out)
    if bias is not None:
        out.add_(bias.unsqueeze(1))


class LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of `hidden @ weight.T + bias` against `labels`; gradients are computed in
    the forward pass (the logits are never stored) and scaled by the incoming gradient in backward."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                labels: torch.Tensor, chunk_rows: int) -> torch.Tensor:
        rows = hidden.shape[0]
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(weight) if rows == 0 else None
        grad_bias = None if bias is None else torch.zeros_like(bias)
        loss = hidden.new_zeros((), dtype=torch.float32)
        # One logits buffer for all chunks: fresh pages for each would cost as much as the softmax.
        buffer = hidden.new_empty(weight.shape[0] * min(chunk_rows, rows))
        for start in range(0, rows, chunk_rows):
            chunk = hidden[start:start + chunk_rows]
            targets = labels[start:start + chunk_rows]
            columns = torch.arange(chunk.shape[0], device=hidden.device)
            logits = buffer[: weight.shape[0] * chunk.shape[0]].view(weight.shape[0], chunk.shape[0])
            _project(weight, bias, chunk, logits)  # [vocab, chunk]
            picked = logits[targets, columns]
            # exp without the usual max shift (two passes fewer over the chunk); if a logit is beyond
            # fp32's exp range the sum shows it, and the chunk is redone with the shift.
            shift = 0.0
            exps = logits.exp_()
            total = exps.sum(dim=0)
            if not bool((torch.isfinite(total) & (total > 0)).all()):
                _project(weight, bias, chunk, logits)
                shift = logits.amax(dim=0)
                exps = logits.sub_(shift).exp_()
                total = exps.sum(dim=0)
            loss += (shift + total.log() - picked).sum(dtype=torch.float32)
            # d(summed loss)/d(logits) = softmax - one_hot(targets), in place of the exponentials. (Folding
            # the division and the one-hot into the matmuls' small operands saves this pass but loses
            # precision when the model is confident: p - 1 becomes a difference of two O(1) sums.)
            grad = exps.div_(total)
            grad[targets, columns] -= 1
            torch.mm(grad.t(), weight, out=grad_hidden[start:start + chunk_rows])
            if grad_weight is None:
                grad_weight = torch.mm(grad, chunk)
            else:
                grad_weight.addmm_(grad, chunk)
            if grad_bias is not None:
                grad_bias += grad.sum(dim=1)
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
        return grads[0], grads[1], grads[2], None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         labels: torch.Tensor, chunk_rows: int | None = None) -> torch.Tensor:
    """Summed cross-entropy over rows of `hidden` [n, dim] projected by `weight` [vocab, dim] (+ `bias`);
    equal to `F.cross_entropy(F.linear(hidden, weight, bias), labels, reduction="sum")`, gradients included.
    Every label must be a real class (no ignore index): pass only the target rows."""
    if chunk_rows is None:
        chunk_rows = max(MIN_CHUNK_ROWS, CHUNK_ELEMENTS // weight.shape[0])
    chunks = max(1, -(-hidden.shape[0] // chunk_rows))
    chunk_rows = max(1, -(-hidden.shape[0] // chunks))  # equal chunks: a thin last one would run far from peak
    return LinearCrossEntropy.apply(hidden, weight, bias, labels, chunk_rows)
