"""Loss only where labels are: the LM head runs on the supervised (answer) positions alone, in chunks.

```
hidden [T, d] ── index_select(answer positions) ──▶ h [n, d]      n ≪ T: prompts get no LM head at all
h, W_lm [V, d] ── per chunk of rows: logits = h·Wᵀ (fp32 softmax) ──▶ loss sum, correct count, ∂h, ∂W
```
The full-vocabulary logits of a chunk live only inside the forward: the gradient is computed there (as Liger's
fused linear cross-entropy does), so backward is two multiplications by the incoming scale and no [T, V] tensor is
ever kept. Token accuracy comes from the argmax of the same chunks: no second pass over the vocabulary.
On a CUDA GPU with liger-kernel installed, its fused kernel does the same in Triton and is used instead.
"""

from __future__ import annotations

import math

import torch

# logits held at once: big chunks feed the GPU, small ones stay in CPU cache; Liger's (bf16) chunks measured in
# docs/benchmarks.md ("engine": Liger's own 32-row chunks against these)
LOGIT_BYTES_PER_CHUNK = {"cuda": 2**30, "cpu": 2**26, "liger": 2**28}
IGNORE = -100


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk):  # noqa: D102 - autograd protocol
        grad_hidden = torch.empty_like(hidden)
        wide = torch.promote_types(hidden.dtype, torch.float32)
        grad_weight = torch.zeros(weight.shape, dtype=wide, device=weight.device) if ctx.needs_input_grad[1] else None
        loss = torch.zeros((), dtype=wide, device=hidden.device)
        correct = torch.zeros((), dtype=torch.int64, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            h, t = hidden[start:start + chunk], targets[start:start + chunk]
            logits = h @ weight.t()
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # softmax in fp32 at least
            lse = torch.logsumexp(logits, dim=-1)
            loss += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            correct += (logits.argmax(dim=-1) == t).sum()
            # ∂loss/∂logits = softmax − one-hot, built in place over the logits buffer
            logits.sub_(lse[:, None]).exp_()
            logits[torch.arange(t.shape[0], device=t.device), t] -= 1.0
            grad_logits = logits.to(h.dtype)
            grad_hidden[start:start + chunk] = grad_logits @ weight
            if grad_weight is not None:
                if h.dtype == grad_weight.dtype:
                    grad_weight.addmm_(grad_logits.t(), h)
                else:  # bf16 product on the matrix units, summed over chunks in fp32
                    grad_weight.add_(grad_logits.t() @ h)
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype) if grad_weight is not None else None)
        ctx.mark_non_differentiable(correct)
        return loss, correct

    @staticmethod
    def backward(ctx, grad_loss, _grad_correct):  # noqa: D102
        grad_hidden, grad_weight = ctx.saved_tensors
        scale = grad_loss.to(grad_hidden.dtype)
        return grad_hidden * scale, (grad_weight * scale if grad_weight is not None else None), None, None


def chunk_rows(vocab: int, device: torch.device) -> int:
    return max(64, LOGIT_BYTES_PER_CHUNK.get(device.type, 2**26) // (4 * vocab))


class LigerHead:
    """Liger's fused linear cross-entropy (summed, with token accuracy) with chunks of about `logit_bytes`.

    Liger sizes its chunks so the transient logits stay about as large as the hidden states (rows ≈ n·d/V): for
    a 152k vocabulary over a 896-wide model that is 32-row chunks, each re-reading the whole LM head. The chunk
    budget here (its `chunk_mem_const`) keeps the transient bounded and the head read a few times per micro-step.
    """

    def __init__(self, logit_bytes: int):
        from liger_kernel.ops.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyFunction

        self.function, self.logit_bytes = LigerFusedLinearCrossEntropyFunction, logit_bytes

    def __call__(self, weight, hidden, targets):
        const = liger_chunk_const(hidden.shape[0], hidden.shape[1], weight.shape[0], self.logit_bytes)
        loss, _, accuracy, _ = self.function.apply(hidden, weight, targets, None, None, IGNORE, 0.0, 0.0, "sum",
                                                   None, False, None, False, True, False, None, None, const)
        return loss, (accuracy * targets.shape[0]).round().long()


def liger_chunk_const(rows: int, hidden: int, vocab: int, logit_bytes: int) -> int:
    """Liger's `chunk_mem_const` for chunks of about `logit_bytes` of bf16 logits (at least 64 rows).

    Liger cuts `rows` into chunks of next_pow2(ceil(rows / ceil(vocab / (const·hidden)))) rows; 0 bytes keeps
    its own sizing (const 1).
    """
    if logit_bytes <= 0:
        return 1
    wanted = max(64, logit_bytes // (2 * vocab))
    return max(1, math.ceil(vocab * wanted / (max(1, rows) * hidden)))


def liger_loss(logit_bytes: int = LOGIT_BYTES_PER_CHUNK["liger"]):
    """Liger's fused linear cross-entropy, or None where it is not installed."""
    try:
        return LigerHead(logit_bytes)
    except ImportError:
        return None


def answer_loss(hidden: torch.Tensor, lm_head: torch.nn.Module, targets: torch.Tensor, fused=None):
    """(summed cross-entropy, correct-token count) of `hidden` [n, d] against `targets` [n] through `lm_head`."""
    weight, bias = getattr(lm_head, "weight", None), getattr(lm_head, "bias", None)
    if not isinstance(lm_head, torch.nn.Linear) or bias is not None:
        # an adapted or biased head: plain autograd on the answer rows (still never the prompt rows)
        logits = lm_head(hidden).float()
        loss = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
        return loss, (logits.detach().argmax(-1) == targets).sum()
    if not torch.is_grad_enabled():  # evaluation: chunks with no gradient work at all, as small as Liger's on a GPU
        vocab = weight.shape[0]
        rows = min(chunk_rows(vocab, hidden.device), max(64, LOGIT_BYTES_PER_CHUNK["liger"] // (4 * vocab)))
        return _chunked_cross_entropy(hidden, weight, targets, rows)
    if fused is not None and hidden.is_cuda:
        return fused(weight, hidden, targets)
    return _ChunkedLinearCrossEntropy.apply(hidden, weight, targets, chunk_rows(weight.shape[0], hidden.device))


def _chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int):
    """(summed cross-entropy, correct count) chunk by chunk, softmax in fp32: the forward half of the function above."""
    loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
    correct = torch.zeros((), dtype=torch.int64, device=hidden.device)
    for start in range(0, hidden.shape[0], chunk):
        t = targets[start:start + chunk]
        logits = (hidden[start:start + chunk] @ weight.t()).float()
        loss += (torch.logsumexp(logits, dim=-1) - logits.gather(1, t[:, None]).squeeze(1)).sum()
        correct += (logits.argmax(dim=-1) == t).sum()
    return loss, correct
