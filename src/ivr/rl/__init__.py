"""RL core: group-relative advantages and the policy-gradient loss (pure tensor functions)."""

from ivr.rl.advantages import group_advantages
from ivr.rl.losses import policy_loss

__all__ = ["group_advantages", "policy_loss"]
