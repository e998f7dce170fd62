"""Token-entropy masking: train only on the highest-entropy share ρ of the tokens.

Wang et al. 2025, "Beyond the 80/20 Rule: High-Entropy Minority Tokens Drive Effective
Reinforcement Learning for LLM Reasoning", arXiv:2506.01939: the policy gradient restricted to
the top 20% of tokens by entropy (the "forking" tokens) matches or beats the full gradient on
Qwen3-32B/14B. ``policy_loss(..., entropy_mask=top_entropy_mask(H, mask, rho))``; TRL's
``top_entropy_quantile`` is the same ρ.

The entropy H_t = −Σ_v π(v) log π(v) of the (temperature-scaled) policy at each completion
position is a by-product of the training forward: the trainer gets it from
``models.logprobs.token_logprobs(..., entropy=True, entropy_grad=False)`` in the same chunked pass
as the log-probabilities. ``token_entropy`` computes it from logits alone for other callers.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["entropy_threshold", "token_entropy", "top_entropy_mask"]


def token_entropy(
    logits: Tensor, mask: Tensor | None = None, *, temperature: float = 1.0, chunk_size: int = 256
) -> Tensor:
    """Entropy of softmax(logits / temperature) per position, detached, chunk by chunk.

    Only ``chunk_size`` positions (over B·T) are upcast to float32 at a time, so the extra memory
    is chunk_size × V floats, not B × T × V. −inf logits (suppressed tokens) contribute 0.

    Args:
        logits: [B, T, V] any float dtype.
        mask: [B, T] optional; positions outside it get entropy 0.
        temperature: > 0, divides the logits (the sampling temperature, as in the training forward).
        chunk_size: positions per chunk (≥ 1).
    Returns:
        [B, T] float32 entropy in nats, no gradient.
    """
    if logits.dim() != 3:
        raise ValueError(f"logits must be [B, T, V], got shape {tuple(logits.shape)}")
    if temperature <= 0 or chunk_size < 1:
        raise ValueError(
            f"need temperature > 0 and chunk_size >= 1, got {temperature}, {chunk_size}"
        )
    b, t, v = logits.shape
    flat = logits.detach().reshape(b * t, v)
    out = torch.empty(b * t, dtype=torch.float32, device=logits.device)
    with torch.no_grad():
        for s in range(0, b * t, chunk_size):
            z = flat[s : s + chunk_size].float() / temperature
            logp = torch.log_softmax(z, dim=-1)
            p = logp.exp()
            out[s : s + chunk_size] = -torch.where(p > 0, p * logp, 0.0).sum(-1)
    ent = out.reshape(b, t)
    return ent if mask is None else torch.where(mask > 0, ent, 0.0)


def entropy_threshold(entropy: Tensor, mask: Tensor, rho: float) -> Tensor:
    """The entropy of the k-th highest valid token, k = ⌈ρ·n⌉ (n valid tokens): a 0-d tensor.

    Tokens at or above it are the top-ρ share. An empty mask gives +inf (nothing kept).
    """
    if not 0.0 < rho <= 1.0:
        raise ValueError(f"rho must be in (0, 1], got {rho}")
    values = entropy.detach()[mask > 0].float()
    n = values.numel()
    if n == 0:
        return entropy.new_tensor(float("inf"), dtype=torch.float32)
    k = max(1, math.ceil(rho * n - 1e-9))  # 1e-9: 0.7·10 = 7.000000000000001 must give 7, not 8
    return torch.topk(values, k).values[-1]


def top_entropy_mask(
    entropy: Tensor, mask: Tensor, rho: float, *, threshold: Tensor | None = None
) -> Tensor:
    """Keep the top-ρ share of the valid tokens by entropy; [B, T] bool.

    Args:
        entropy: [B, T] per-token entropy (detached or not; no gradient flows through the mask).
        mask: [B, T] 1/True on the tokens that compete (the batch's completion tokens).
        rho: the share kept, in (0, 1]. ρ = 1 keeps every valid token (the mask is ``mask``).
        threshold: a precomputed ``entropy_threshold`` (e.g. over the whole step's batch, or
            gathered across ranks) instead of this call's own.
    Returns:
        [B, T] bool: valid tokens whose entropy ≥ the entropy of the k-th highest valid token,
        k = ⌈ρ·n⌉ (a quantile over the batch's valid tokens, not per sequence). Ties at the
        threshold are all kept, so the kept share is ≥ ρ (equal entropies are not split at random).
    """
    if tuple(entropy.shape) != tuple(mask.shape) or entropy.dim() != 2:
        raise ValueError(
            f"entropy and mask must both be [B, T], got {list(entropy.shape)}, {list(mask.shape)}"
        )
    if not 0.0 < rho <= 1.0:
        raise ValueError(f"rho must be in (0, 1], got {rho}")
    valid = mask > 0
    if rho == 1.0 and threshold is None:
        return valid
    thr = entropy_threshold(entropy, mask, rho) if threshold is None else threshold
    return valid & (entropy.detach() >= thr)
