"""Group-relative advantages (GRPO, DeepSeekMath: Shao et al. 2024, arXiv:2402.03300).

GRPO needs no value model: each response is scored against the other responses sampled for the
same prompt. For a group of G rewards r_1..r_G,

    Â_i = (r_i − mean(r)) / (std(r) + eps)      (GRPO; std is torch's default, unbiased)
    Â_i =  r_i − mean(r)                        (Dr.GRPO, Liu et al. 2025, arXiv:2503.20783:
                                                  dividing by std up-weights easy/hard prompts)

and every token of response i receives Â_i. IVR-R1 (DESIGN.md §1, step 6) computes these over the
*mixed* group: rectified, off-policy responses take part in the mean and the std like any other.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["group_advantages"]


def group_advantages(
    rewards: Tensor, group_size: int, *, scale: bool = True, eps: float = 1e-6
) -> Tensor:
    """Per-response advantages, normalised within each group of ``group_size`` responses.

    Args:
        rewards: [N] scalar rewards, laid out group after group
            (``rewards[g * group_size : (g + 1) * group_size]`` belong to prompt g).
        group_size: G, responses per prompt; must divide N.
        scale: divide by the group's std (GRPO). ``False`` keeps only the mean baseline
            (Dr.GRPO).
        eps: added to the std so that near-constant groups do not blow up.

    Returns:
        [N] advantages, float32 (float64 if ``rewards`` is float64).

    Groups whose rewards are all equal (every answer right, or every answer wrong) carry no
    learning signal; their advantages are *exactly* 0, not a rounding residue divided by eps.
    With ``group_size == 1`` the std is undefined (unbiased std of one value is NaN) and there is
    nothing to compare against, so every advantage is 0 too.

    Raises:
        ValueError: if ``rewards`` is not 1-D, ``group_size < 1``, N is not a multiple of
            ``group_size``, or a reward is NaN/inf (the index is named: a NaN would otherwise
            silently poison its whole group).

    >>> group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), 4)
    tensor([ 1.5000, -0.5000, -0.5000, -0.5000])
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [N], got shape {tuple(rewards.shape)}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    n = rewards.shape[0]
    if n % group_size != 0:
        raise ValueError(
            f"number of rewards ({n}) is not a multiple of group_size ({group_size}): "
            "rewards must be laid out as whole groups"
        )
    r = rewards.detach().to(torch.promote_types(rewards.dtype, torch.float32))
    bad = (~torch.isfinite(r)).nonzero().flatten()
    if bad.numel() > 0:
        i = int(bad[0])
        raise ValueError(
            f"reward at index {i} (group {i // group_size}) is {r[i].item()}; "
            f"{bad.numel()} non-finite reward(s) in total"
        )
    if group_size == 1 or n == 0:
        return torch.zeros_like(r)

    groups = r.view(-1, group_size)  # [N/G, G]
    centred = groups - groups.mean(dim=1, keepdim=True)
    adv = centred / (groups.std(dim=1, keepdim=True) + eps) if scale else centred
    constant = (groups == groups[:, :1]).all(dim=1, keepdim=True)
    return adv.masked_fill(constant, 0.0).view(-1)
