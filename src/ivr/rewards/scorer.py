"""One reward for a (sample, completion) pair, shared by the trainer, the IVR loop, SFT and eval.

It lives with the rewards (not in ``rl/``) because everything that grades uses it: evaluation and
SFT must not import the trainer's package to score an answer.

Text tasks (IVR-R1 A.1): r = λ·r_format + (1−λ)·r_acc, in [0, 1] (``composite.weighted_reward``,
the formula ``CombinedReward`` uses too).
Localization tasks (rows with ``answer_type == "boxes"``; Vision-R1 §3.2–3.3): r = dual format +
recall + precision, in [0, 3], with the staged thresholds driven by training progress.
User rewards (TRL-style callables) are added with their weights; ``None`` from one of them means
"not applicable" and adds nothing. A user reward must return a list (or tuple / 1-D array) of
numbers or None, one per completion; anything else (a scalar, strings, the wrong length) raises
``RewardError`` naming the function. NaN is allowed through: the trainer drops the group, and
stops after ``train.max_skipped_steps`` steps in a row without an update, naming the reward.

``correct`` is what IVR-R1 screens on (r < τ = "the answer is wrong"): for text tasks it is the
answer being right; localization rows are never sent to the re-reasoning loop (the paper's loop is
defined for reasoning traces, not box lists) and their ``correct`` is None.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ivr.rewards.answer import accuracy_reward
from ivr.rewards.composite import RewardFn, weighted_reward
from ivr.rewards.format import format_reward
from ivr.rewards.localization import LocalizationConfig, score_localization
from ivr.types import Sample


class RewardError(ValueError):
    """A reward function returned something that is not one number (or None) per completion, or
    produced no usable reward for several steps; the message names the function."""


@dataclass(frozen=True)
class Score:
    reward: float
    components: dict[str, float]
    correct: bool | None  # None: not a graded text task (localization)


@dataclass(frozen=True)
class Scorer:
    """Callable ``scorer(samples, completions, progress) -> list[Score]`` (one Score per pair)."""

    format_weight: float = 0.1
    localization: LocalizationConfig | None = None
    extra: tuple[tuple[RewardFn, float], ...] = field(default_factory=tuple)

    def __call__(
        self, samples: Sequence[Sample], completions: Sequence[str], progress: float = 0.0
    ) -> list[Score]:
        if len(samples) != len(completions):
            raise ValueError(f"{len(samples)} samples but {len(completions)} completions")
        scores = [self._one(s, c, progress) for s, c in zip(samples, completions)]
        if not self.extra:
            return scores
        columns = _columns(samples)
        for fn, weight in self.extra:
            name = getattr(fn, "__name__", "extra")
            values = _check_values(name, fn(list(completions), progress=progress, **columns),
                                   len(scores))  # fmt: skip
            for i, v in enumerate(values):
                if v is None:
                    continue
                comps = {**scores[i].components, name: v}
                # NaN propagates on purpose: the trainer drops the group and counts it.
                scores[i] = Score(scores[i].reward + weight * float(v), comps, scores[i].correct)
        return scores

    def _one(self, sample: Sample, completion: str, progress: float) -> Score:
        if sample.answer_type == "boxes":
            size = sample.image_size
            result = score_localization(
                completion,
                [list(b) for b in sample.boxes or ()],
                image_size=tuple(size) if size else None,
                input_size=sample.extra.get("input_size"),
                progress=progress,
                gt_labels=list(sample.labels) if sample.labels else None,
                config=self.localization,
            )
            comps = {
                f"loc_{k}": float(result[k]) for k in ("format", "recall", "precision", "total")
            }
            return Score(float(result["total"]), comps, None)
        cols = sample.columns()
        acc = accuracy_reward(
            [completion],
            [cols["answer"]],
            choices=[cols["choices"]],
            answer_type=[cols["answer_type"]],
            precision=[cols["precision"]],
            unit=[cols["unit"]],
        )[0]
        acc = 0.0 if acc is None else float(acc)
        fmt = float(format_reward([completion])[0] or 0.0)
        reward = weighted_reward(self.format_weight, fmt, acc)
        return Score(reward, {"accuracy": acc, "format": fmt}, acc >= 1.0)


def _check_values(name: str, values: Any, n: int) -> list[float | None]:
    """A user reward's return value as floats (None kept), or ``RewardError`` naming it."""
    if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__len__"):
        raise RewardError(
            f"reward {name} returned {type(values).__name__} {values!r:.60}; it must return a "
            f"list with one float (or None) per completion, here {n}"
        )
    values = list(values)
    if len(values) != n:
        raise RewardError(f"reward {name} returned {len(values)} values for {n} completions")
    out: list[float | None] = []
    for i, v in enumerate(values):
        if v is not None and getattr(v, "ndim", None) == 0 and hasattr(v, "item"):
            v = v.item()  # a 0-d numpy array or torch tensor
        if v is not None and not isinstance(v, numbers.Real):
            raise RewardError(
                f"reward {name} returned {v!r} ({type(v).__name__}) for completion {i}; "
                "expected a float (or None where the reward does not apply)"
            )
        out.append(None if v is None else float(v))
    return out


def _columns(samples: Sequence[Sample]) -> dict[str, list[Any]]:
    rows = [s.columns() for s in samples]
    keys = sorted({k for r in rows for k in r})
    return {k: [r.get(k) for r in rows] for k in keys}
