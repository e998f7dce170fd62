"""Policy-gradient loss for GRPO with mixed on-policy / rectified (off-policy) responses.

What is implemented, per completion token t of response i (advantage Â_i, logp = log π_θ):

    on-policy   ℓ = −min(ρ Â, clip(ρ, 1−ε_low, 1+ε_high) Â),   ρ = exp(logp − logp_old)
    off-policy  ℓ = −Â · p/(p+γ),                              p = exp(logp)
                ℓ = −Â · p                        (shaping off: LUFFY's plain weight)
    + KL        ℓ += β · (exp(ref − logp) − (ref − logp) − 1)   (k3, only if β > 0)

then the per-token losses are aggregated over the batch (``aggregate``).

``loss=`` swaps the on-policy surrogate (off-policy rows keep the shaping above under every one):

    "grpo"   the clipped surrogate above (default)
    "gspo"   ℓ = −min(s Â, clip(s, 1−ε_low, 1+ε_high) Â), s_i = exp(masked mean_t(logp − logp_old)),
             one ratio per sequence; gradient through every token (GSPO-token)   ``gspo_surrogate``
    "cispo"  ℓ = −sg(clip(ρ, 1−ε_low, 1+ε_high)) Â logp: REINFORCE on every token ``cispo_surrogate``
    "sapo"   ℓ = −(4/τ) σ(τ(ρ−1)) Â, τ = τ_pos if Â > 0 else τ_neg: a soft gate ``sapo_surrogate``

Two multipliers of the policy-gradient term (the KL term is never multiplied):
``entropy_mask`` [B, T] (train on the high-entropy tokens only, ``rl/entropy.py``) on every row, and
``is_weights`` [B, T] (rollout-training mismatch correction, TIS/MIS, ``rl/importance.py``) on the
on-policy rows only (rectified rows have behaviour probability 1 by definition).

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
- GSPO: Zheng et al. 2025, "Group Sequence Policy Optimization", arXiv:2507.18071
  (sequence ratio, clipped per sequence; their ε is ~3e-4/4e-4) and its GSPO-token form
  (s_{i,t} = sg(s_i)·π_θ(y_t)/sg(π_θ(y_t))). Checked against verl ``compute_policy_loss_gspo``.
- CISPO: MiniMax 2025, "MiniMax-M1", arXiv:2506.13585 (the IS weight clipped and detached,
  ε_low^IS effectively unbounded: pass ``clip_low >= 1`` for no lower bound). verl
  ``compute_policy_loss_cispo`` and TRL ``loss_type="cispo"`` compute the same thing.
- SAPO: Gao et al. 2025 (Qwen), "Soft Adaptive Policy Optimization", arXiv:2511.20347: the gate
  f(r) = (4/τ)·σ(τ(r−1)) on the token ratio, τ by the sign of Â (defaults τ_pos 1.0, τ_neg 1.05);
  d/dlogp = −Â·4σ(1−σ)·ρ, = −Â at ρ = 1 like the other variants. Pinned to verl
  ``compute_policy_loss_sapo`` (and TRL ``loss_type="sapo"``, ms-swift's SAPO page), which agree.
- Aggregation: "sequence" (GRPO's 1/G Σ 1/|o_i| Σ_t), "token" (DAPO; IVR-R1 "normalised over all
  tokens of the batch"), "dr_grpo" (Dr.GRPO, Liu et al. 2025, arXiv:2503.20783: a constant
  normaliser removes the length bias).

Presets (a "loss type" is just parameters; see ``LOSS_PRESETS``, which is ``presets.ALGO_PRESETS``
— what ``algo.name`` selects — as keyword arguments; ``scale`` is ``group_advantages``'s):

    grpo       clip 0.2/0.2,  aggregation="token",    kl_beta=0.0,  scale=True  (IVR-R1 A.1)
    ivr(_r1)   the same, plus shaping_gamma=0.1, off_policy=<rectified rows>
    dapo       clip 0.2/0.28, aggregation="token",    kl_beta=0.0,  scale=True
    dr_grpo    clip 0.2/0.2,  aggregation="dr_grpo",  kl_beta=0.0,  scale=False (pass max_len)
    deepseekmath clip 0.2/0.2, aggregation="sequence", kl_beta=0.04, scale=True
    gspo       loss="gspo",  clip 3e-4/4e-4, aggregation="sequence", kl_beta=0.0
    cispo      loss="cispo", clip 1.0/4.0 (no lower bound, weight ≤ 5), aggregation="token"
    sapo       loss="sapo",  τ 1.0/1.05, aggregation="sequence" (clips unused)
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Literal

import torch
from torch import Tensor

from ..config import IVRConfig
from ..presets import ALGO_PRESETS

__all__ = [
    "LOSS_PRESETS",
    "Aggregation",
    "LossVariant",
    "aggregate",
    "cispo_surrogate",
    "clipped_surrogate",
    "gspo_surrogate",
    "k3_kl",
    "policy_loss",
    "sapo_surrogate",
    "shaped_surrogate",
]

Aggregation = Literal["token", "sequence", "dr_grpo"]
_AGGREGATIONS = ("token", "sequence", "dr_grpo")
LossVariant = Literal["grpo", "gspo", "cispo", "sapo"]
_VARIANTS = ("grpo", "gspo", "cispo", "sapo")

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
                **{k: p[k] for k in ("loss", "sapo_tau_pos", "sapo_tau_neg") if k in p},
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


def gspo_surrogate(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float,
    clip_high: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """GSPO-token surrogate (Zheng et al. 2025, arXiv:2507.18071; its GSPO-token form), per token.

    s_i = exp(Σ_t m_t (logp − logp_old) / Σ_t m_t) is the length-normalised sequence ratio
    (π_θ(y_i)/π_θold(y_i))^(1/|y_i|); s_{i,t} = sg(s_i) · exp(logp − sg(logp)) has the value s_i
    and the gradient s_i ∇logp_t, and ℓ_t = −min(s_{i,t} Â, clip(s_{i,t}, 1−ε_low, 1+ε_high) Â).
    Every token of a row shares s_i and Â, so the clip decision is per sequence; with the
    "sequence" aggregation the row's gradient is −Â s_i (1/|y_i|) Σ_t ∇logp_t = −Â ∇s_i, GSPO's.

    Args:
        logprobs: [B, T] log π_θ (carries the gradient); padding must be finite.
        old_logprobs: [B, T] log π_θold.
        advantages: [B, 1] (or [B, T], constant along T).
        mask: [B, T] 1 on completion tokens (the mean runs over these only).
        clip_low, clip_high: GSPO's ε (their paper: 3e-4 and 4e-4).
    Returns:
        loss [B, T], ratio s_i broadcast to [B, T] (detached), clipped [B, T] bool (the clipped
        branch is active: zero gradient on the whole sequence).
    """
    mask = mask.to(logprobs.dtype)
    diff = torch.where(mask > 0, logprobs.detach() - old_logprobs, 0.0)
    seq_log_ratio = diff.sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)  # [B]
    seq_log_ratio = seq_log_ratio.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    ratio = torch.exp(logprobs - logprobs.detach() + seq_log_ratio[:, None])  # value s_i
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high) * advantages
    is_clipped = (clipped < unclipped).detach()
    return -torch.minimum(unclipped, clipped), ratio.detach(), is_clipped


def cispo_surrogate(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, clip_low: float, clip_high: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """CISPO (MiniMax-M1, arXiv:2506.13585), per token: −sg(clip(ρ, 1−ε_low, 1+ε_high))·Â·logp.

    The importance weight is clipped and detached, so every token keeps a REINFORCE gradient
    −w Â (no token is dropped as in PPO's clip). ``clip_low >= 1`` means no lower bound (the
    paper's "large ε_low^IS"); TRL's ``epsilon_high=5.0`` for CISPO is ``clip_high=4.0`` here.

    Args:
        logprobs: [B, T] log π_θ (carries the gradient).
        old_logprobs: [B, T] log π_θold.
        advantages: [B, 1] (or [B, T]).
        clip_low, clip_high: ε_low^IS, ε_high^IS.
    Returns:
        loss [B, T], ratio ρ [B, T] (detached), clipped [B, T] bool (the weight was truncated;
        the gradient is NOT zero there), weight w = clip(ρ) [B, T] (detached).
    """
    log_ratio = (logprobs.detach() - old_logprobs).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    ratio = torch.exp(log_ratio)
    weight = ratio.clamp(max(1.0 - clip_low, 0.0), 1.0 + clip_high)
    return -(weight * advantages) * logprobs, ratio, weight != ratio, weight


def sapo_surrogate(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, tau_pos: float, tau_neg: float
) -> tuple[Tensor, Tensor, Tensor]:
    """SAPO (Gao et al. 2025, arXiv:2511.20347), per token: −(4/τ)·σ(τ(ρ−1))·Â.

    τ = τ_pos where Â > 0, else τ_neg (τ_neg > τ_pos damps negative updates faster). The
    gradient w.r.t. logp is −Â·4σ(1−σ)·ρ, σ = σ(τ(ρ−1)): exactly −Â at ρ = 1 (as GRPO's), decaying
    smoothly as ρ leaves 1 instead of GRPO's hard cut to zero.

    Args:
        logprobs: [B, T] log π_θ (carries the gradient).
        old_logprobs: [B, T] log π_θold.
        advantages: [B, 1] (or [B, T]).
        tau_pos, tau_neg: the gate temperatures (paper and verl/TRL defaults 1.0, 1.05).
    Returns:
        loss [B, T], ratio ρ [B, T] (detached), gradient weight |∂ℓ/∂logp|/|Â| [B, T] (detached).
    """
    log_ratio = (logprobs - old_logprobs).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    ratio = torch.exp(log_ratio)
    tau = torch.where(advantages > 0, tau_pos, tau_neg).to(ratio.dtype)
    gate = torch.sigmoid(tau * (ratio - 1.0))
    with torch.no_grad():
        grad_weight = 4.0 * gate * (1.0 - gate) * ratio
    return -(4.0 / tau) * gate * advantages, ratio.detach(), grad_weight


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
    loss: LossVariant = "grpo",
    sapo_tau_pos: float = 1.0,
    sapo_tau_neg: float = 1.05,
    entropy_mask: Tensor | None = None,
    is_weights: Tensor | None = None,
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
        loss: on-policy surrogate, "grpo" | "gspo" | "cispo" | "sapo" (module docstring). GSPO and
            CISPO take their clip range from ``clip_low``/``clip_high`` (GSPO's paper: 3e-4/4e-4;
            CISPO: ``clip_low >= 1`` = no lower bound); SAPO ignores them.
        sapo_tau_pos, sapo_tau_neg: SAPO's gate temperatures for Â > 0 and Â <= 0.
        entropy_mask: [B, T] bool/0-1, multiplies the policy-gradient term of every row (the
            normaliser is unchanged, so kept tokens weigh what they weighed unmasked; KL is not
            masked). ``rl.entropy.top_entropy_mask``.
        is_weights: [B, T] detached rollout-training correction weights, multiply the
            policy-gradient term of on-policy rows only. ``rl.importance.mismatch_weights``.

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
        batch into micro-batches can pool the share exactly), the token counts behind the means
        ``tokens``, ``on_tokens`` and ``off_tokens`` (same reason), and ``entropy`` when given.
        Means over an empty set of tokens are 0. Per variant: ``clip_frac`` is the share of
        on-policy tokens whose gradient the clip zeroes (GSPO: tokens of clipped sequences; CISPO:
        tokens whose weight was truncated, which keep a gradient; SAPO: 0, it has no hard clip),
        ``ratio_mean`` the mean of the ratio the variant uses (GSPO: s_i on each token).
    """
    b, t = _check_inputs(
        logprobs, old_logprobs, advantages, mask, off_policy, ref_logprobs, entropy
    )
    _check_extra(b, t, entropy_mask, is_weights)
    if aggregation not in _AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {_AGGREGATIONS}, got {aggregation!r}")
    if loss not in _VARIANTS:
        raise ValueError(f"loss must be one of {_VARIANTS}, got {loss!r}")
    if loss == "cispo":  # clip_low >= 1: no lower bound on the weight (the paper's setting)
        if clip_low < 0.0 or clip_high < 0.0:
            raise ValueError(f"need clip_low >= 0 and clip_high >= 0, got {clip_low}, {clip_high}")
    elif not 0.0 <= clip_low < 1.0 or clip_high < 0.0:
        raise ValueError(f"need 0 <= clip_low < 1 and clip_high >= 0, got {clip_low}, {clip_high}")
    if loss == "sapo" and not (sapo_tau_pos > 0 and sapo_tau_neg > 0):
        raise ValueError(f"SAPO temperatures must be > 0, got {sapo_tau_pos}, {sapo_tau_neg}")
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

    # on_w: |∂ℓ/∂logp| / |Â| on on-policy tokens, for the gradient-share metrics
    if loss == "grpo":
        on_loss, ratio, clipped = clipped_surrogate(logp, old, adv, clip_low, clip_high)
        on_w = ratio * (~clipped).to(ratio.dtype)
    elif loss == "gspo":
        on_loss, ratio, clipped = gspo_surrogate(logp, old, adv, mask, clip_low, clip_high)
        on_w = ratio * (~clipped).to(ratio.dtype)
    elif loss == "cispo":
        on_loss, ratio, clipped, on_w = cispo_surrogate(logp, old, adv, clip_low, clip_high)
    else:
        on_loss, ratio, on_w = sapo_surrogate(logp, old, adv, sapo_tau_pos, sapo_tau_neg)
        clipped = torch.zeros_like(off_tok)
    token_loss = torch.where(off_tok, shaped_surrogate(logp, adv, shaping_gamma), on_loss)
    scale = _pg_scale(off_tok, mask, entropy_mask, is_weights, dtype)  # None when neither is given
    if scale is not None:
        token_loss = token_loss * scale
    ref = None if ref_logprobs is None else torch.where(mask > 0, ref_logprobs.to(dtype), 0.0)
    kl = None if ref is None else k3_kl(logp, ref)
    if kl is not None and kl_beta > 0:
        token_loss = token_loss + kl_beta * kl
    total = aggregate(token_loss, mask, aggregation, max_len)

    with torch.no_grad():
        on_mask, off_mask = mask * ~off_tok, mask * off_tok
        off_grad, grad = _off_policy_grad(
            logp.detach(), adv, on_w, off_tok, mask, shaping_gamma, scale
        )
        metrics = {
            "loss": total.detach(),
            "clip_frac": _mean(clipped.to(dtype), on_mask),
            "ratio_mean": _mean(ratio, on_mask),
            "kl": total.new_zeros(()) if kl is None else _mean(kl, mask),
            "off_policy_token_share": _mean(off_tok.to(dtype), mask),
            "off_policy_prob_mean": _mean(logp.detach().exp(), off_mask),
            "off_policy_grad_share": _grad_share(off_grad, grad),
            "off_policy_grad": off_grad,
            "policy_grad": grad,
            "tokens": mask.sum(),
            "on_tokens": on_mask.sum(),
            "off_tokens": off_mask.sum(),
        }
        if entropy is not None:
            metrics["entropy"] = _mean(entropy.to(dtype), mask)
        if entropy_mask is not None:
            metrics["entropy_mask_share"] = _mean(entropy_mask.to(dtype), mask)
        if is_weights is not None:
            metrics["is_weight_mean"] = _mean(is_weights.to(dtype), on_mask)
    return total, metrics


def _pg_scale(
    off_tok: Tensor,
    mask: Tensor,
    entropy_mask: Tensor | None,
    is_weights: Tensor | None,
    dtype: torch.dtype,
) -> Tensor | None:
    """[B, T] detached multiplier of the policy-gradient term: entropy mask on every row, IS
    weights on on-policy rows only (rectified rows: behaviour probability 1, weight 1); padding 0
    (so NaN weights there cannot leak). None when neither is given (today's path, untouched)."""
    if entropy_mask is None and is_weights is None:
        return None
    scale = mask.clone()
    if entropy_mask is not None:
        scale = scale * torch.where(mask > 0, entropy_mask.detach().to(dtype), 0.0)
    if is_weights is not None:
        scale = scale * torch.where(off_tok | (mask == 0), 1.0, is_weights.detach().to(dtype))
    return scale


def _off_policy_grad(
    logp: Tensor,
    adv: Tensor,
    on_w: Tensor,
    off_tok: Tensor,
    mask: Tensor,
    gamma: float | None,
    scale: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """(Σ over off-policy tokens of |∂ℓ/∂log p|, Σ over all tokens), 0-d and detached.

    Per token: on-policy |Â|·``on_w`` (GRPO/GSPO: the ratio where the unclipped branch is active,
    else 0; CISPO: the clipped weight; SAPO: 4σ(1−σ)ρ); off-policy |Â|·γp/(p+γ)² with shaping,
    |Â|·p without (``shaped_surrogate``); times ``scale`` (entropy mask, IS weights) if given.
    """
    p = logp.exp()
    shaped = p if gamma is None else gamma * p / (p + gamma) ** 2
    w = adv.abs() * torch.where(off_tok, shaped, on_w) * mask
    if scale is not None:
        w = w * scale
    return (w * off_tok).sum(), w.sum()


def _grad_share(off_grad: Tensor, grad: Tensor) -> Tensor:
    """``off_policy_grad_share`` from its sums: ``off_grad / grad``, 0 when nothing pushes."""
    return torch.where(grad > 0, off_grad / grad.clamp(min=1e-30), 0.0)


def _mean(x: Tensor, mask: Tensor) -> Tensor:
    """Masked mean as a detached 0-d tensor; 0 when the mask is empty."""
    return (torch.where(mask > 0, x * mask, 0.0).sum() / mask.sum().clamp(min=1.0)).detach()


def _check_extra(b: int, t: int, entropy_mask: Tensor | None, is_weights: Tensor | None) -> None:
    """Shapes of the optional multipliers: both [B, T]."""
    for name, x in (("entropy_mask", entropy_mask), ("is_weights", is_weights)):
        if x is not None and tuple(x.shape) != (b, t):
            raise ValueError(
                f"{name} must have shape [B, T] = {[b, t]} (from logprobs), got {list(x.shape)}"
            )


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
