"""Rollout-training mismatch correction: truncated (TIS) or masked (MIS) importance sampling.

The sampler (vLLM, bf16 sampling, a stale weight copy) draws tokens from a behaviour policy μ
whose log-probabilities differ from the training forward's π_old even at the same weights. The
policy gradient then estimates E_μ[...] instead of E_π_old[...]; the per-token weight
ρ_t = π_old(y_t)/μ(y_t) changes the measure back, and a cap keeps its variance bounded:

    tis  w = min(ρ, C)            truncated IS (Yao et al. 2025, "Your efficient RL framework
                                  secretly brings you off-policy RL training", fengyao.notion.site;
                                  Ionides 2008 for truncated IS); biased by the truncation only
    mis  w = ρ · 1[floor ≤ ρ ≤ C] masked IS (IcePop, Ling team 2025; Liu, Li et al. 2025, "When
                                  speed kills stability", verl's rollout_is + rollout_rs): tokens
                                  (or sequences) with an extreme ratio are dropped, not clipped

``level="token"`` uses ρ_t per token (lower variance, biased for long sequences);
``level="sequence"`` uses ρ_i = Π_t ρ_t = exp(Σ_t log ρ_t), broadcast to the row's tokens (the
unbiased estimator for a sequence-level reward, at a higher variance). The weights are detached
and multiply the per-token policy-gradient loss (``policy_loss(..., is_weights=w)``), as in TRL
(``vllm_importance_sampling_mode`` token/sequence × truncate/mask) and verl
(``rollout_corr_helper``).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = ["MismatchLevel", "MismatchMode", "mismatch_weights"]

MismatchMode = Literal["tis", "mis"]
MismatchLevel = Literal["token", "sequence"]

# Log-ratios clamped to ±20 nats before exp(), as in losses.py and verl.
_MAX_LOG_RATIO = 20.0


def mismatch_weights(
    behaviour_logprobs: Tensor,
    old_logprobs: Tensor,
    mask: Tensor,
    *,
    mode: MismatchMode = "tis",
    cap: float = 2.0,
    level: MismatchLevel = "token",
    floor: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-token importance weights correcting the sampler/trainer mismatch, and their metrics.

    Args:
        behaviour_logprobs: [B, T] log μ(y_t), returned by the sampler with the tokens.
        old_logprobs: [B, T] log π_old(y_t) from the training forward (same weights, the
            trainer's numerics); no gradient is taken.
        mask: [B, T] 1/True on the tokens to correct (completion tokens of on-policy rows).
            Outside it the weight is 1 and nothing is counted, so padding and rectified rows
            (behaviour probability 1 by definition) may hold anything, NaN included.
        mode: "tis" (w = min(ρ, cap)) or "mis" (w = ρ where floor ≤ ρ ≤ cap, else 0).
        cap: C ≥ 1 (TRL's default 2.0; Yao et al. use C = 2).
        level: "token" (ρ_t) or "sequence" (ρ_i = exp Σ_t log ρ_t, on every token of the row).
        floor: MIS only: also mask ratios below it (IcePop's two-sided band); None = no floor.

    Returns:
        (weights [B, T] detached float32 (or float64), metrics): 0-d detached tensors
        ``log_ratio_abs_mean`` / ``log_ratio_abs_max`` (|log π_old − log μ| over the masked
        tokens: the size of the mismatch), ``ratio_mean`` (mean ρ at the chosen level, over
        tokens), ``weight_mean``, ``capped_share`` (TIS: share of tokens whose weight was
        truncated) and ``masked_share`` (MIS: share of tokens zeroed). Means over an empty mask
        are 0. Pool micro-batches with the mean (``*_mean``, ``*_share``) or max (``*_max``).
    """
    if behaviour_logprobs.dim() != 2:
        raise ValueError(
            f"behaviour_logprobs must be [B, T], got {tuple(behaviour_logprobs.shape)}"
        )
    shape = tuple(behaviour_logprobs.shape)
    for name, x in (("old_logprobs", old_logprobs), ("mask", mask)):
        if tuple(x.shape) != shape:
            raise ValueError(f"{name} must have shape {list(shape)}, got {list(x.shape)}")
    if mode not in ("tis", "mis"):
        raise ValueError(f"mode must be 'tis' or 'mis', got {mode!r}")
    if level not in ("token", "sequence"):
        raise ValueError(f"level must be 'token' or 'sequence', got {level!r}")
    if not cap >= 1.0:
        raise ValueError(f"cap must be >= 1, got {cap}")
    if floor is not None and (mode != "mis" or not 0.0 <= floor <= 1.0):
        raise ValueError(f"floor is for mode='mis', in [0, 1]; got {floor} with mode={mode!r}")

    with torch.no_grad():
        dtype = torch.promote_types(behaviour_logprobs.dtype, torch.float32)
        valid = mask > 0
        m = valid.to(dtype)
        log_ratio = torch.where(valid, old_logprobs.to(dtype) - behaviour_logprobs.to(dtype), 0.0)
        if level == "sequence":
            log_ratio_used = log_ratio.sum(dim=1, keepdim=True).expand_as(log_ratio)
        else:
            log_ratio_used = log_ratio
        ratio = torch.exp(log_ratio_used.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO))
        above = valid & (ratio > cap)
        if mode == "tis":
            weights, masked = ratio.clamp(max=cap), torch.zeros_like(valid)
        else:
            masked = above if floor is None else above | (valid & (ratio < floor))
            weights = torch.where(masked, 0.0, ratio)
        weights = torch.where(valid, weights, 1.0)
        n = m.sum().clamp(min=1.0)
        abs_lr = log_ratio.abs()
        metrics = {
            "log_ratio_abs_mean": (abs_lr * m).sum() / n,
            "log_ratio_abs_max": abs_lr.max() if abs_lr.numel() else abs_lr.new_zeros(()),
            "ratio_mean": torch.where(valid, ratio, 0.0).sum() / n,
            "weight_mean": (weights * m).sum() / n,
            "capped_share": (above.to(dtype).sum() / n) if mode == "tis" else m.new_zeros(()),
            "masked_share": masked.to(dtype).sum() / n,
        }
    return weights, metrics
