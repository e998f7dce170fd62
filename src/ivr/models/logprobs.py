"""Per-token log π_T(token) and entropy from [b, L, V] logits without [b, T, V] float32 copies.

The distribution is the policy's (``ivr.models.policy``): z = mask(logits) / T in float32, the
``suppressed`` columns set to −inf, π_T = softmax(z). Done naively (``reference_logprobs``) that
is several fp32 [b, T, V] tensors alive at once and kept for the backward pass — with Qwen's
152k vocabulary, 0.6 GB each per 1,000 scored tokens. ``token_logprobs`` walks the positions in
chunks of about ``chunk_size`` (rows × tokens), upcasts one chunk at a time and, in a custom
autograd function, saves only the input logits (in their own dtype) plus [b, T] statistics; the
backward recomputes each chunk and writes its gradient straight into one tensor shaped like
the logits. Peak extra memory: ~3 fp32 chunks instead of ~5 fp32 copies of everything.

Gradients (per position, g = upstream grads, H = entropy, δ = one-hot of the target):
    ∂/∂z_k = g_lp (δ_k − p_k) − g_H p_k (log p_k + H),  ∂z/∂logits = 1/T, 0 on suppressed columns.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

__all__ = ["reference_logprobs", "token_logprobs"]


def _z(logits: Tensor, suppressed: Tensor | None, temperature: float) -> Tensor:
    """A fresh float32 (float64 stays) copy of ``logits`` [..., V], suppressed columns −inf, / T."""
    z = logits.to(torch.promote_types(logits.dtype, torch.float32), copy=True)
    if suppressed is not None and suppressed.numel():
        z.index_fill_(-1, suppressed, float("-inf"))
    return z.div_(temperature) if temperature != 1.0 else z


class _ChunkedLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, suppressed, temperature, blocks, with_entropy, ent_grad):
        b, T = targets.shape
        lp = logits.new_empty((b, T), dtype=torch.promote_types(logits.dtype, torch.float32))
        ent = lp.new_zeros((b, T)) if with_entropy else None
        for r, t in blocks:
            z = _z(logits[r, t], suppressed, temperature)  # [rows, tokens, V] fp32
            lse = z.logsumexp(-1)
            lp[r, t] = z.gather(-1, targets[r, t, None]).squeeze(-1) - lse
            if with_entropy:  # H = −Σ p·log p, with p = 0 (and log p := 0) on −inf columns
                logp = z.sub_(lse[..., None])
                p = logp.exp()
                ent[r, t] = p.mul_(logp.nan_to_num_(neginf=0.0)).sum(-1).neg_()
        ctx.save_for_backward(logits, targets, suppressed, ent if ent_grad else None)
        ctx.temperature, ctx.blocks = temperature, blocks
        ctx.set_materialize_grads(False)
        if with_entropy and not ent_grad:
            ctx.mark_non_differentiable(ent)
        return lp, ent

    @staticmethod
    def backward(ctx, g_lp, g_ent):
        logits, targets, suppressed, ent = ctx.saved_tensors
        g_ent = g_ent if ent is not None else None
        grad = logits.new_zeros(logits.shape)  # trailing positions past T keep a zero gradient
        if g_lp is None and g_ent is None:
            return grad, None, None, None, None, None, None
        g_lp = torch.zeros_like(targets, dtype=ent.dtype) if g_lp is None else g_lp
        for r, t in ctx.blocks:
            z = _z(logits[r, t], suppressed, ctx.temperature)
            logp = z.sub_(z.logsumexp(-1, keepdim=True))
            p = logp.exp()
            gl = g_lp[r, t, None]
            if g_ent is None:
                coef = gl.expand_as(p)
            else:  # g_lp + g_H (log p + H), −inf columns (p = 0) zeroed first
                coef = logp.nan_to_num_(neginf=0.0).add_(ent[r, t, None])
                coef = coef.mul_(g_ent[r, t, None]).add_(gl)
            g = p.mul_(coef).neg_().scatter_add_(-1, targets[r, t, None], gl)
            if suppressed is not None and suppressed.numel():
                g.index_fill_(-1, suppressed, 0.0)
            grad[r, t] = g.div_(ctx.temperature) if ctx.temperature != 1.0 else g
        return grad, None, None, None, None, None, None


def token_logprobs(
    logits: Tensor,
    targets: Tensor,
    *,
    suppressed: Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    entropy: bool = False,
    entropy_grad: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """log π_T(targets) and (optionally) the entropy of π_T, computed chunk by chunk.

    Args:
        logits: [b, L, V] any float dtype, L ≥ T; position j scores ``targets[:, j]`` and the
            trailing L − T positions are ignored (pass ``logits_to_keep=T+1`` output unsliced:
            no [b, T, V] copy in the backward).
        targets: [b, T] long token ids.
        suppressed: [S] long column ids set to −inf before the softmax (π_T = 0 there).
        temperature: T > 0 divides the logits (≤ 0 means 1, as in greedy scoring).
        chunk_size: positions (rows × tokens) upcast at once; ≤ 0 = ``reference_logprobs``.
        entropy / entropy_grad: also return H [b, T]; with or without a gradient.
    Returns:
        ([b, T] float32 logprobs, [b, T] float32 entropy or None).
    """
    temperature = float(temperature) if temperature > 0 else 1.0
    if suppressed is not None:
        suppressed = suppressed.to(logits.device)
    if chunk_size <= 0:
        return reference_logprobs(logits, targets, suppressed, temperature, entropy, entropy_grad)
    b, T = targets.shape
    if chunk_size <= T:  # one row at a time, token slices of chunk_size
        rows, cols = [slice(i, i + 1) for i in range(b)], range(0, T, chunk_size)
        blocks = [(r, slice(s, min(s + chunk_size, T))) for r in rows for s in cols]
    else:  # whole rows, chunk_size // T of them at a time
        n = chunk_size // T
        blocks = [(slice(i, i + n), slice(0, T)) for i in range(0, b, n)]
    return _ChunkedLogprobs.apply(
        logits, targets, suppressed, temperature, blocks, entropy, entropy_grad
    )


def reference_logprobs(
    logits: Tensor,
    targets: Tensor,
    suppressed: Tensor | None = None,
    temperature: float = 1.0,
    entropy: bool = False,
    entropy_grad: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """The plain-autograd formula (whole [b, T, V] in float32): the specification and the
    ``chunk_size=0`` path. Same arguments and returns as ``token_logprobs``."""
    T = targets.shape[1]
    z = _z(logits[:, :T], suppressed, temperature if temperature > 0 else 1.0)
    lse = z.logsumexp(-1)
    lp = z.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse
    if not entropy:
        return lp, None
    with contextlib.nullcontext() if entropy_grad else torch.no_grad():
        zz, ls = (z, lse) if entropy_grad else (z.detach(), lse.detach())
        finite = zz.masked_fill(torch.isinf(zz), 0.0)
        return lp, ls - (torch.softmax(zz, dim=-1) * finite).sum(-1)
