"""The IVR-R1 reward r = λ·r_format + (1−λ)·r_acc (paper, appendix A.1; λ = 0.1 by default).

``make_combined_reward`` returns a ``CombinedReward``: a TRL-style callable (so it can be handed
to our trainer or to ``trl.GRPOTrainer`` as is) whose ``components`` method returns the per-sample
format, accuracy and combined values, which is what one wants to log: a rising reward can be
format alone, and IVR-R1's screening threshold τ is about the answer being right.

A row the accuracy reward does not apply to (e.g. answer_type ``boxes`` in a multi-task batch)
gets None from the combined reward too: the localization reward scores it instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ivr.rewards.answer import accuracy_reward
from ivr.rewards.format import DEFAULT_TAGS, make_format_reward

#: λ of the paper's appendix A.1: weight of the format term.
DEFAULT_LAMBDA: float = 0.1

#: The reward contract: ``fn(completions, **columns) -> list[float | None]`` (TRL's).
RewardFn = Callable[..., list[float | None]]


def weighted_reward(lam: float, fmt: float, acc: float) -> float:
    """r = λ·r_format + (1−λ)·r_acc: the one place the IVR-R1 weighting is written (used by
    ``CombinedReward`` and by ``scorer.Scorer``).

    >>> weighted_reward(0.1, 1.0, 0.0), weighted_reward(0.1, 1.0, 1.0)
    (0.1, 1.0)
    """
    return lam * fmt + (1.0 - lam) * acc


class CombinedReward:
    r"""r = lam·format + (1 − lam)·accuracy, per completion; None where accuracy is None.

    >>> reward = make_combined_reward(lam=0.1)
    >>> good = "<desc>3 dots</desc><think>count</think>\\boxed{3}"
    >>> reward([good, "\\boxed{3}", good], answer=["3", "3", "4"])
    [1.0, 0.9, 0.1]
    >>> reward.components(["\\boxed{3}"], answer=["3"])
    {'format': [0.0], 'accuracy': [1.0], 'reward': [0.9]}
    >>> reward.__name__
    'combined_reward'
    """

    def __init__(
        self,
        lam: float = DEFAULT_LAMBDA,
        *,
        format_fn: RewardFn | None = None,
        accuracy_fn: RewardFn = accuracy_reward,
        name: str = "combined_reward",
    ) -> None:
        if not 0.0 <= float(lam) <= 1.0:
            raise ValueError(f"lam={lam!r} must lie in [0, 1] (paper A.1 uses 0.1)")
        self.lam = float(lam)
        self.format_fn = format_fn if format_fn is not None else make_format_reward(DEFAULT_TAGS)
        self.accuracy_fn = accuracy_fn
        self.__name__ = name

    def components(
        self, completions: Sequence[Any], **columns: Any
    ) -> dict[str, list[float | None]]:
        """Per-completion ``format``, ``accuracy`` and combined ``reward`` lists, for logging."""
        fmt = self.format_fn(completions, **columns)
        acc = self.accuracy_fn(completions, **columns)
        total: list[float | None] = [
            None if a is None or f is None else weighted_reward(self.lam, f, a)
            for f, a in zip(fmt, acc)
        ]
        return {"format": fmt, "accuracy": acc, "reward": total}

    def __call__(self, completions: Sequence[Any], **columns: Any) -> list[float | None]:
        return self.components(completions, **columns)["reward"]

    def __repr__(self) -> str:
        return f"CombinedReward(lam={self.lam}, format_fn={self.format_fn.__name__})"


def make_combined_reward(
    lam: float = DEFAULT_LAMBDA,
    tags: Sequence[str] = DEFAULT_TAGS,
    *,
    accuracy_fn: RewardFn = accuracy_reward,
    name: str = "combined_reward",
) -> CombinedReward:
    r"""Build the IVR-R1 reward for a given λ and template tags (ablation: λ, template).

    ``accuracy_fn`` lets a user swap in their own grader with the same contract.

    >>> r = make_combined_reward(lam=0.5, tags=("think",))
    >>> r(["<think>2+2</think>\\boxed{4}"], answer=["4"]), r.components(["x"], answer=["4"])
    ([1.0], {'format': [0.0], 'accuracy': [0.0], 'reward': [0.0]})
    """
    return CombinedReward(
        lam, format_fn=make_format_reward(tags), accuracy_fn=accuracy_fn, name=name
    )


#: The paper's default: λ = 0.1, ``<desc>`` then ``<think>`` then ``\\boxed{}``.
combined_reward: CombinedReward = make_combined_reward()
