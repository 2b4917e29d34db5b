"""The next-token loss, with its gradient written in the same pass.

Why: at 64 px the vocabulary head is about a quarter of a mini training step's FLOPs, and around it
PyTorch's cross-entropy runs log_softmax, then in the backward pass a zero-filled (N, V) gradient
for the picked log-probabilities and log_softmax's own backward: passes over the (N, V) logits
that do no arithmetic worth their memory traffic (about 14% of a mini step at 64 px, profiled).
The gradient of softmax cross-entropy is known in closed form, softmax(z) - onehot(y), so the
forward pass turns its log_softmax into it in place, and the backward pass hands it on.
"""
from __future__ import annotations

import torch


class _WeightedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(logits, -1)  # (N, V): one fused pass
        loss = -(logp.gather(1, targets[:, None]).squeeze(1) * weights).sum()
        if ctx.needs_input_grad[0]:
            grad = logp.exp_().mul_(weights[:, None])  # weighted softmax, in place, (N, V)
            grad.scatter_add_(1, targets[:, None], -weights[:, None].to(grad.dtype))  # minus the one-hot
            ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return (grad if bool(g == 1) else grad * g), None, None  # loss.backward() passes 1: no pass over (N, V)


def weighted_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_i weights[i] * -log softmax(logits[i])[targets[i]] over (N, V) float logits, (N,) targets,
    (N,) weights: F.cross_entropy(logits, targets, reduction="none") @ weights, in fewer passes."""
    return _WeightedCrossEntropy.apply(logits, targets, weights.to(logits.dtype))
