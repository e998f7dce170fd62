"""What one training step logs: phase timings, reward statistics, the update's ``loss/*``
metrics, and a few sample rows.

Pure functions of a step's groups and ``policy_loss`` sums, apart from ``loss_metrics``' one
collective (passed in), so the trainer's loop keeps only the phases themselves.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from ..types import Group

__all__ = ["Timer", "accumulate", "loss_metrics", "nan_components", "reward_metrics", "sample_rows"]


class Timer(dict):
    """``with timer("rollout"): …`` adds the phase's wall time to ``timer["time/rollout"]``."""

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self[f"time/{name}"] = self.get(f"time/{name}", 0.0) + time.perf_counter() - t0


#: ``policy_loss`` metrics that are a ratio of two of its sums: name -> (numerator,
#: denominator). ``loss_metrics`` pools them; the sums themselves are not logged.
_POOLED_RATIOS: dict[str, tuple[str, str]] = {
    "off_policy_grad_share": ("off_policy_grad", "policy_grad"),
}

#: ``policy_loss`` metrics that are means over a set of tokens: name -> the count of that set
#: (also a ``policy_loss`` metric). ``accumulate`` sums mean × count, ``loss_metrics`` divides by
#: Σ count: the mean over every token of the update, however it was split into micro-batches.
#: ``loss`` is weighted by what the trainer weighs each micro-batch's loss by in the backward
#: (``loss_weight``: its tokens, or its sequences), so it is the minibatch loss that was optimised.
_TOKEN_MEANS: dict[str, str] = {
    "loss": "loss_weight",
    "clip_frac": "on_tokens",
    "ratio_mean": "on_tokens",
    "is_weight_mean": "on_tokens",
    "kl": "tokens",
    "entropy": "tokens",
    "off_policy_token_share": "tokens",
    "entropy_masked_share": "tokens",
    "off_policy_prob_mean": "off_tokens",
}
_COUNTS = frozenset(_TOKEN_MEANS.values())


def accumulate(sums: dict[str, Any], metrics: dict[str, Any]) -> None:
    """Add one micro-batch's ``policy_loss`` metrics to ``sums`` in place: token means weighted
    by their token count (``_TOKEN_MEANS``), everything else as it is."""
    for k, v in metrics.items():
        count = metrics.get(_TOKEN_MEANS.get(k, ""))
        sums[k] = sums.get(k, 0.0) + (v * count if count is not None else v)


def loss_metrics(
    sums: dict[str, float], count: int, global_sum: Callable[..., Any]
) -> dict[str, float]:
    """The update's ``loss/*`` metrics from ``accumulate``'s sums over its ``count``
    micro-batches (this rank's), pooled over ranks with one collective (``global_sum``, which
    every rank makes whatever its data).

    - A token mean (``_TOKEN_MEANS``: ``clip_frac``, ``ratio_mean``, ``kl``, ``entropy``, …) is
      Σ mean × count / Σ count over every micro-batch on every rank: the share of all on-policy
      tokens clipped, not the mean of the micro-batches' shares (which would weigh a 2-token
      micro-batch like a 2,000-token one). TRL and verl log the mean of the shares.
    - A ratio in ``_POOLED_RATIOS`` is Σ numerator / Σ denominator likewise: the mean of the
      micro-batches' ratios would weigh a micro-batch that barely pushes like one that pushes
      hard.
    - ``loss`` likewise, weighted as the backward weighs the micro-batches: the loss optimised.
    - The rest, if any, is the mean over micro-batches (``Trainer._reduce`` averages ranks).

    0 when a denominator is 0; a metric no rank reported is left out; a token mean reported
    without its count (a caller that did not ``accumulate``) falls back to the micro-batch mean.
    """
    sums = dict(sums)
    slots: list[float] = []
    for name, (num, den) in _POOLED_RATIOS.items():
        sums.pop(name, None)
        slots += [sums.pop(num, 0.0), sums.pop(den, 0.0), 1.0]
    counts = {c: sums.pop(c) for c in _COUNTS if c in sums}
    for name, c in _TOKEN_MEANS.items():
        present = name in sums and c in counts  # without its count: the mean of the micro-batches
        num = sums.pop(name) if present else 0.0
        slots += [num, counts[c] if present else 0.0, float(present)]
    out = {f"loss/{k}": v / max(count, 1) for k, v in sums.items()}
    pooled = global_sum(*slots)
    pooled = list(pooled) if isinstance(pooled, (tuple, list)) else [pooled]
    for i, name in enumerate([*_POOLED_RATIOS, *_TOKEN_MEANS]):
        num, den, present = pooled[3 * i : 3 * i + 3]
        if present > 0:
            out[f"loss/{name}"] = num / den if den > 0 else 0.0
    return out


def nan_components(groups: list[Group]) -> list[str]:
    """Names of the reward components that are NaN/inf somewhere in ``groups`` (a user reward's
    component is its function's name); "reward" when the total alone is not finite."""
    names = {
        k
        for g in groups
        for r in g.rollouts
        if not math.isfinite(r.reward)
        for k, v in r.components.items()
        if not math.isfinite(v)
    }
    bad = any(not math.isfinite(r.reward) for g in groups for r in g.rollouts)
    return sorted(names) or (["reward"] if bad else [])


def reward_metrics(groups: list[Group], prefix: str) -> dict[str, float]:
    """Mean/std of the reward, the mean of each component, and the share of groups with at
    least one correct rollout, under ``<prefix>/``."""
    rollouts = [r for g in groups for r in g.rollouts]
    if not rollouts:
        return {}
    rewards = np.array([r.reward for r in rollouts], dtype=float)
    out = {f"{prefix}/mean": float(np.nanmean(rewards)), f"{prefix}/std": float(np.nanstd(rewards))}
    keys = sorted({k for r in rollouts for k in r.components})
    for k in keys:
        vals = [r.components[k] for r in rollouts if k in r.components]
        out[f"{prefix}/{k}"] = float(np.mean(vals))
    solved = [max(r.components.get("correct", 0.0) for r in g.rollouts) for g in groups]
    out[f"{prefix}/group_solved"] = float(np.mean(solved))
    return out


def sample_rows(groups: list[Group], n: int) -> list[dict[str, Any]]:
    """The first ``n`` rollouts as rows of the run's ``samples`` log."""
    rows = []
    for g in groups:
        for r in g.rollouts:
            if len(rows) >= n:
                return rows
            rows.append(
                {
                    "id": g.sample.id,
                    "question": g.sample.question,
                    "answer": g.sample.answer,
                    "completion": r.text,
                    "reward": r.reward,
                    "off_policy": r.off_policy,
                }
            )
    return rows
