"""Policy-gradient loss for GRPO with mixed on-policy / rectified (off-policy) responses.

What is implemented, per completion token t of response i (advantage Â_i, logp = log π_θ):

    on-policy   ℓ = −min(ρ Â, clip(ρ, 1−ε_low, 1+ε_high) Â),   ρ = exp(logp − logp_old)
    off-policy  ℓ = −Â · p/(p+γ),                              p = exp(logp)
                ℓ = −Â · p                        (shaping off: LUFFY's plain weight)
    + KL        ℓ += β · (exp(ref − logp) − (ref − logp) − 1)   (k3, only if β > 0)

then the per-token losses are aggregated over the batch (``aggregate``).

Where each knob comes from:
- Clipped surrogate: PPO (Schulman et al. 2017, arXiv:1707.06347) as used by GRPO
  (DeepSeekMath, Shao et al. 2024, arXiv:2402.03300).
- ``clip_high`` > ``clip_low``, "clip-higher": DAPO (Yu et al. 2025, arXiv:2503.14476), ε_high 0.28.
- Off-policy shaping f(p) = p/(p+γ): LUFFY (Yan et al. 2025, arXiv:2504.14945), adopted by IVR-R1
  (eq. 3.7, DESIGN.md §1 step 7). Rectified responses were not sampled from π_θold, so their
  behaviour probability is taken as 1 (the importance ratio becomes p) and they are not clipped;
  f's gradient γp/(p+γ)² (w.r.t. logp) stays large for low-probability tokens, which are exactly
  the unfamiliar corrections the policy must learn, where the plain ratio's gradient p vanishes.
- KL to a frozen reference with the k3 estimator: Schulman, "Approximating KL divergence" (2020);
  non-negative, unbiased for KL(π_θ‖π_ref), as in GRPO.
- Aggregation: "sequence" (GRPO's 1/G Σ 1/|o_i| Σ_t), "token" (DAPO; IVR-R1 "normalised over all
  tokens of the batch"), "dr_grpo" (Dr.GRPO, Liu et al. 2025, arXiv:2503.20783: a constant
  normaliser removes the length bias).

Presets (a "loss type" is just parameters; see ``LOSS_PRESETS``, which is ``config.ALGO_PRESETS``
— what ``algo.name`` selects — as keyword arguments; ``scale`` is ``group_advantages``'s):

    grpo       clip 0.2/0.2,  aggregation="token",    kl_beta=0.0,  scale=True  (IVR-R1 A.1)
    ivr(_r1)   the same, plus shaping_gamma=0.1, off_policy=<rectified rows>
    dapo       clip 0.2/0.28, aggregation="token",    kl_beta=0.0,  scale=True
    dr_grpo    clip 0.2/0.2,  aggregation="dr_grpo",  kl_beta=0.0,  scale=False (pass max_len)
    deepseekmath clip 0.2/0.2, aggregation="sequence", kl_beta=0.04, scale=True
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Literal

import torch
from torch import Tensor

from ..config import ALGO_PRESETS, IVRConfig

__all__ = [
    "LOSS_PRESETS",
    "Aggregation",
    "aggregate",
    "clipped_surrogate",
    "k3_kl",
    "policy_loss",
    "shaped_surrogate",
]

Aggregation = Literal["token", "sequence", "dr_grpo"]
_AGGREGATIONS = ("token", "sequence", "dr_grpo")

# Log-ratios beyond ±20 nats are numerical accidents (e.g. a padded position); clamping keeps
# exp() finite so a single bad token cannot turn the whole loss into inf/NaN (as in verl).
_MAX_LOG_RATIO = 20.0

LOSS_PRESETS: MappingProxyType[str, MappingProxyType[str, Any]] = MappingProxyType(
    {
        name: MappingProxyType(
            {
                "clip_low": p["clip_low"],
                "clip_high": p["clip_high"],
                "aggregation": p["aggregation"],
                "kl_beta": p["beta"],
                **({"shaping_gamma": IVRConfig.gamma} if name.startswith("ivr") else {}),
            }
        )
        for name, p in ALGO_PRESETS.items()
    }
)
"""``policy_loss`` keyword arguments of the published recipes: ``policy_loss(..., **LOSS_PRESETS["dapo"])``."""


def clipped_surrogate(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, clip_low: float, clip_high: float
) -> tuple[Tensor, Tensor, Tensor]:
    """PPO/GRPO clipped surrogate, per token: −min(ρÂ, clip(ρ, 1−clip_low, 1+clip_high)Â).

    Args:
        logprobs: [B, T] log π_θ of the sampled tokens (carries the gradient).
        old_logprobs: [B, T] log π_θold (no gradient needed).
        advantages: [B, 1] (or [B, T]).
    Returns:
        loss [B, T], ratio ρ [B, T] (detached), clipped [B, T] bool: the clipped branch is the
        one min() chose and it is active (Â>0, ρ>1+clip_high or Â<0, ρ<1−clip_low): zero gradient.
    """
    log_ratio = (logprobs - old_logprobs).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    ratio = torch.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high) * advantages
    is_clipped = (clipped < unclipped).detach()
    return -torch.minimum(unclipped, clipped), ratio.detach(), is_clipped


def shaped_surrogate(logprobs: Tensor, advantages: Tensor, gamma: float | None) -> Tensor:
    """LUFFY / IVR-R1 eq. 3.7 policy shaping for off-policy tokens: −Â · p/(p+γ), p = exp(logp).

    Behaviour probability is 1 (so the importance ratio is p itself) and there is no clip;
    d/dlogp = −Â γp/(p+γ)². ``gamma=None`` turns shaping off: LUFFY's plain weight −Â · p,
    still unclipped, d/dlogp = −Â p (which vanishes on the low-probability tokens shaping boosts).

    Args:
        logprobs: [B, T] log π_θ of the off-policy tokens (carries the gradient).
        advantages: [B, 1] (or [B, T]).
    Returns:
        loss [B, T].
    """
    p = torch.exp(logprobs)
    if gamma is None:
        return -advantages * p
    return -advantages * p / (p + gamma)


def k3_kl(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k3 estimator of KL(π_θ‖π_ref) per token: exp(x) − x − 1, x = ref − logp; [B, T] → [B, T]."""
    x = (ref_logprobs - logprobs).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    return torch.exp(x) - x - 1.0


def aggregate(
    token_loss: Tensor, mask: Tensor, aggregation: Aggregation, max_len: int | None = None
) -> Tensor:
    """Reduce per-token losses [B, T] to a scalar; ``mask`` [B, T] (1 = completion token).

    "token":    Σ mask·ℓ / Σ mask — every token of the batch weighs the same (DAPO, IVR-R1).
    "sequence": mean over sequences of their token mean (GRPO); empty sequences are skipped.
    "dr_grpo":  Σ mask·ℓ / (B · max_len), max_len a constant (default T) — no length bias.
    An all-zero mask gives 0 (not NaN).
    """
    masked = torch.where(mask > 0, token_loss * mask, torch.zeros_like(token_loss))
    if aggregation == "token":
        return masked.sum() / mask.sum().clamp(min=1.0)
    if aggregation == "sequence":
        n_tok = mask.sum(dim=1)
        per_seq = masked.sum(dim=1) / n_tok.clamp(min=1.0)
        return per_seq.sum() / (n_tok > 0).sum().clamp(min=1)
    if aggregation == "dr_grpo":
        return masked.sum() / (mask.shape[0] * (mask.shape[1] if max_len is None else max_len))
    raise ValueError(f"aggregation must be one of {_AGGREGATIONS}, got {aggregation!r}")


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    off_policy: Tensor | None = None,
    ref_logprobs: Tensor | None = None,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    shaping_gamma: float | None = 0.1,
    kl_beta: float = 0.0,
    aggregation: Aggregation = "token",
    max_len: int | None = None,
    entropy: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GRPO loss over a batch mixing sampled and rectified responses (see the module docstring).

    Args:
        logprobs: [B, T] log π_θ of the completion tokens (carries the gradient).
        old_logprobs: [B, T] log π_θold; ignored on off-policy rows (behaviour probability 1).
        advantages: [B] one advantage per response (``group_advantages``).
        mask: [B, T] 1/True on completion tokens, 0 on padding.
        off_policy: [B] bool, True for rectified responses; None = all on-policy.
        ref_logprobs: [B, T] log π_ref; needed when ``kl_beta > 0``, else only reported.
        clip_low, clip_high: ε_low, ε_high of the clip range (DAPO: 0.2, 0.28).
        shaping_gamma: γ of f(p) = p/(p+γ) on off-policy tokens; None = shaping off (plain −Â·p).
        kl_beta: β, weight of the k3 KL penalty.
        aggregation: "token" | "sequence" | "dr_grpo" (see ``aggregate``).
        max_len: Dr.GRPO's constant normaliser (the generation budget); default T.
        entropy: [B, T] per-token policy entropy, only reported.

    Returns:
        (loss, metrics): a scalar tensor with gradient, and detached 0-d tensors on its device
        (no host sync here: the caller moves them all at once, e.g. ``torch.stack(...).tolist()``
        once per step) ``loss``,
        ``clip_frac`` (on-policy tokens whose clipped branch is active), ``ratio_mean``
        (on-policy), ``kl`` (mean k3; 0 without ``ref_logprobs``), ``off_policy_token_share``,
        ``off_policy_prob_mean`` (mean p on off-policy tokens), ``off_policy_grad_share`` (the
        share of Σ|∂ℓ/∂log p| over the batch's tokens that falls on off-policy tokens: how much
        of the policy-gradient push rectified traces carry; KL excluded), its numerator and
        denominator ``off_policy_grad`` and ``policy_grad`` (sums, so that a caller splitting a
        batch into micro-batches can pool the share exactly) and ``entropy`` when given.
        Means over an empty set of tokens are 0.
    """
    b, t = _check_inputs(
        logprobs, old_logprobs, advantages, mask, off_policy, ref_logprobs, entropy
    )
    if aggregation not in _AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {_AGGREGATIONS}, got {aggregation!r}")
    if not 0.0 <= clip_low < 1.0 or clip_high < 0.0:
        raise ValueError(f"need 0 <= clip_low < 1 and clip_high >= 0, got {clip_low}, {clip_high}")
    if shaping_gamma is not None and shaping_gamma <= 0:
        raise ValueError(f"shaping_gamma must be > 0 (or None = off), got {shaping_gamma}")
    if kl_beta < 0:
        raise ValueError(f"kl_beta must be >= 0, got {kl_beta}")
    if kl_beta > 0 and ref_logprobs is None:
        raise ValueError("kl_beta > 0 needs ref_logprobs [B, T]")
    if max_len is not None and max_len < t:
        raise ValueError(f"max_len ({max_len}) is smaller than the completion length T ({t})")

    dtype = torch.promote_types(logprobs.dtype, torch.float32)  # ratios in >= fp32
    mask = mask.to(dtype)
    # Padding may hold anything (even NaN): zero it so neither the loss nor its gradient sees it.
    logp = torch.where(mask > 0, logprobs.to(dtype), 0.0)
    adv = advantages.detach().to(dtype)[:, None]  # [B, 1]
    off = torch.zeros(b, dtype=torch.bool, device=logp.device) if off_policy is None else off_policy
    off_tok = off[:, None].expand(b, t)  # [B, T]
    # Off-policy rows (behaviour prob. 1) and padding: old = current, so the unused branch is finite.
    old = torch.where(off_tok | (mask == 0), logp.detach(), old_logprobs.to(dtype))

    on_loss, ratio, clipped = clipped_surrogate(logp, old, adv, clip_low, clip_high)
    token_loss = torch.where(off_tok, shaped_surrogate(logp, adv, shaping_gamma), on_loss)
    ref = None if ref_logprobs is None else torch.where(mask > 0, ref_logprobs.to(dtype), 0.0)
    kl = None if ref is None else k3_kl(logp, ref)
    if kl is not None and kl_beta > 0:
        token_loss = token_loss + kl_beta * kl
    loss = aggregate(token_loss, mask, aggregation, max_len)

    with torch.no_grad():
        on_mask, off_mask = mask * ~off_tok, mask * off_tok
        off_grad, grad = _off_policy_grad(
            logp.detach(), adv, ratio, clipped, off_tok, mask, shaping_gamma
        )
        metrics = {
            "loss": loss.detach(),
            "clip_frac": _mean(clipped.to(dtype), on_mask),
            "ratio_mean": _mean(ratio, on_mask),
            "kl": loss.new_zeros(()) if kl is None else _mean(kl, mask),
            "off_policy_token_share": _mean(off_tok.to(dtype), mask),
            "off_policy_prob_mean": _mean(logp.detach().exp(), off_mask),
            "off_policy_grad_share": _grad_share(off_grad, grad),
            "off_policy_grad": off_grad,
            "policy_grad": grad,
        }
        if entropy is not None:
            metrics["entropy"] = _mean(entropy.to(dtype), mask)
    return loss, metrics


def _off_policy_grad(
    logp: Tensor,
    adv: Tensor,
    ratio: Tensor,
    clipped: Tensor,
    off_tok: Tensor,
    mask: Tensor,
    gamma: float | None,
) -> tuple[Tensor, Tensor]:
    """(Σ over off-policy tokens of |∂ℓ/∂log p|, Σ over all tokens), 0-d and detached.

    Per token: on-policy |Â|·ρ where the unclipped branch is active, else 0; off-policy
    |Â|·γp/(p+γ)² with shaping, |Â|·p without (``shaped_surrogate``).
    """
    p = logp.exp()
    shaped = p if gamma is None else gamma * p / (p + gamma) ** 2
    w = adv.abs() * torch.where(off_tok, shaped, ratio * (~clipped).to(ratio.dtype)) * mask
    return (w * off_tok).sum(), w.sum()


def _grad_share(off_grad: Tensor, grad: Tensor) -> Tensor:
    """``off_policy_grad_share`` from its sums: ``off_grad / grad``, 0 when nothing pushes."""
    return torch.where(grad > 0, off_grad / grad.clamp(min=1e-30), 0.0)


def _mean(x: Tensor, mask: Tensor) -> Tensor:
    """Masked mean as a detached 0-d tensor; 0 when the mask is empty."""
    return (torch.where(mask > 0, x * mask, 0.0).sum() / mask.sum().clamp(min=1.0)).detach()


def _check_inputs(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    off_policy: Tensor | None,
    ref_logprobs: Tensor | None,
    entropy: Tensor | None,
) -> tuple[int, int]:
    """Validate every shape once, naming the argument and the expected shape; returns (B, T)."""
    if logprobs.dim() != 2:
        raise ValueError(f"logprobs must be [B, T], got shape {tuple(logprobs.shape)}")
    b, t = logprobs.shape
    expected = {
        "old_logprobs": (old_logprobs, (b, t)),
        "advantages": (advantages, (b,)),
        "mask": (mask, (b, t)),
        "off_policy": (off_policy, (b,)),
        "ref_logprobs": (ref_logprobs, (b, t)),
        "entropy": (entropy, (b, t)),
    }
    for name, (x, shape) in expected.items():
        if x is not None and tuple(x.shape) != shape:
            dims = "[B]" if len(shape) == 1 else "[B, T]"
            raise ValueError(
                f"{name} must have shape {dims} = {list(shape)} (from logprobs), "
                f"got {list(x.shape)}"
            )
    if off_policy is not None and off_policy.dtype != torch.bool:
        raise ValueError(f"off_policy must be a bool tensor [B], got dtype {off_policy.dtype}")
    return b, t
