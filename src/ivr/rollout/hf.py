"""The default rollout backend (``rollout.backend: hf``): the training model samples its own
rollouts with ``Policy.generate``.

Nothing to sync (the sampler *is* the training model), and its ``Generation.logprobs`` equal the
training forward's to ~1e-5 (tested), so they serve as ``old_logprobs`` with no extra forward.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ..config import Config
    from ..models.policy import Policy

__all__ = ["HFBackend"]


class HFBackend:
    """The training model samples its own rollouts (``Policy.generate``); nothing to sync."""

    shares_policy_weights = True
    logprobs_match_training = True

    def __init__(self, policy: Policy):
        self.policy = policy
        self.generate = policy.generate  # the Protocol's signature, by construction

    @classmethod
    def from_config(cls, cfg: Config, policy: Policy) -> HFBackend:
        """Nothing in ``cfg`` to read: the policy samples as it is."""
        return cls(policy)

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Nothing to do: the sampler *is* the training model."""

    def close(self) -> None:
        pass
