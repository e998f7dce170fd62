"""What enters a step's batch: the data position, DAPO's dynamic sampling and overlong handling.

DAPO (Yu et al. 2025, "DAPO: an open-source LLM reinforcement learning system at scale",
arXiv:2503.14476) adds two data-side switches to GRPO, both off by default here:

- Dynamic sampling (§3.2, ``algo.dynamic_sampling``). A group whose rewards are all equal (every
  answer right, or every answer wrong) has advantage exactly 0 on every row: it costs a forward
  and a backward, dilutes the token mean of the loss and teaches nothing. Such groups are dropped
  and more prompts are drawn, the next ones in the epoch order (never repeats), until the rank
  holds ``train.prompts_per_step`` informative groups, for at most ``algo.max_sampling_rounds``
  collections in all (DAPO's ``max_num_gen_batches``). When the bound is hit the step trains on
  the informative groups it has (``dynamic/bound_hit``); if no rank has any, it trains on its
  first collection as plain GRPO would (``dynamic/fallback``: zero advantages, the KL term only),
  rather than skip the update. Surplus informative groups of the last round are not trained on.
- Overlong handling (§3.4, ``algo.overlong``). ``filter``: a truncated response (no eos within
  ``rollout.max_new_tokens``) is masked out of the loss; it still counts in its group's mean and
  std. ``soft``: DAPO's soft overlong punishment is added to every row's reward before the
  advantages (``overlong_penalty``).

Order with IVR-R1 and the self-reward: the informative test runs AFTER the whole collection
(prompts → rollout → reward → rectify → self-reward) and after the soft penalty, on the reward
the advantages see. Rectification can turn an all-fail group into a useful one (a rectified
right answer among wrong ones); dropping the group before rectification would throw exactly
those away. The test is on the final reward, not DAPO's reference implementation's default of
accuracy alone, so that it drops exactly the groups whose advantages are all 0.

Data position and resume. The rows of a step are a pure function of (seed, step, what was drawn):
the step's own block of ``prompts_per_step × world`` positions starts after every position
drawn before it, ``extra`` (the prompts dynamic sampling drew beyond the blocks of the earlier
steps, all ranks together). ``extra`` is saved in each checkpoint's ``trainer_state.json``
(``extra_prompts``) and restored on resume, so a resumed run draws what an uninterrupted one
would. Without dynamic sampling ``extra`` stays 0 and positions are those of plain GRPO.

Multi-process. Every rank collects the same number of rounds and draws the same number of
prompts per round: the round's size is the largest deficit of any rank (``Collectives.max``), so
collective calls inside a collection (sharded generation, the update's loops) line up, and rank r
takes the r-th slice of the round's positions. A rank that is already full still collects (its
extra groups are surplus).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import training
from ..config import Config
from ..types import Group, Prompt, Sample
from .distributed import Collectives

__all__ = [
    "Batch",
    "Batches",
    "concat_batches",
    "informative",
    "mask_rows",
    "merge_round_metrics",
    "overlong_buffer",
    "overlong_penalty",
    "soft_overlong",
    "truncated",
]

#: One collection: groups (``Rollout.sample_index`` indexes ``prompts``), prompts, metrics.
Batch = tuple[list[Group], list[Prompt], dict[str, float]]


# ---------------------------------------------------------------------- pure parts
def informative(group: Group) -> bool:
    """True when the group's advantages are not all 0: its rewards are finite and not all equal
    (compared in float32, as ``group_advantages`` compares them).

    >>> from ivr.types import Rollout
    >>> g = lambda *r: Group(sample=None, rollouts=tuple(Rollout(0, "", (), reward=x) for x in r))
    >>> informative(g(0.0, 1.0, 0.0)), informative(g(0.1, 0.1, 0.1)), informative(g(0.0, float("nan")))
    (True, False, False)
    """
    rewards = np.asarray(group.rewards, dtype=np.float32)
    return bool(np.isfinite(rewards).all() and (rewards != rewards[0]).any())


def overlong_penalty(length: int, max_len: int, buffer: int) -> float:
    """DAPO's soft overlong punishment (arXiv:2503.14476 eq. 13), with L_max = ``max_len`` and
    L_cache = ``buffer``::

        r_len(y) = 0                                  |y| ≤ L_max − L_cache
                 = ((L_max − L_cache) − |y|) / L_cache   L_max − L_cache < |y| ≤ L_max
                 = −1                                 L_max < |y|

    >>> [overlong_penalty(n, 20, 5) for n in (15, 16, 20, 21)]
    [0.0, -0.2, -1.0, -1.0]
    """
    free = max_len - buffer
    if length <= free:
        return 0.0
    if length <= max_len:
        return (free - length) / buffer
    return -1.0


def overlong_buffer(cfg: Config) -> int:
    """L_cache: ``algo.overlong_buffer``, or (0) a fifth of ``rollout.max_new_tokens``, DAPO's
    4,096 of 20,480 tokens (at least 1)."""
    return cfg.algo.overlong_buffer or max(1, cfg.rollout.max_new_tokens // 5)


def truncated(token_ids: Sequence[int], eos_ids: Sequence[int]) -> bool:
    """A completion cut by ``max_new_tokens``: its token ids do not end with an eos (the rollout
    backends keep the eos that ends a finished completion: rollout/base.py)."""
    return not token_ids or token_ids[-1] not in eos_ids


def soft_overlong(groups: list[Group], max_len: int, buffer: int) -> list[Group]:
    """Every row's reward + ``overlong_penalty`` of its length (also kept as a component)."""
    out = []
    for g in groups:
        rows = []
        for r in g.rollouts:
            p = overlong_penalty(len(r.token_ids), max_len, buffer)
            rows.append(replace(r, reward=r.reward + p, components={**r.components, "overlong": p}))
        out.append(replace(g, rollouts=tuple(rows)))
    return out


def mask_rows(groups: list[Group], advantages: Tensor, keep: Sequence[bool]) -> tuple:
    """``(groups, advantages)`` without the rows (in group order) whose ``keep`` is False; a
    group left without rows goes. The advantages of the kept rows are unchanged."""
    out, k = [], 0
    for g in groups:
        rows = tuple(r for i, r in enumerate(g.rollouts) if keep[k + i])
        k += len(g.rollouts)
        if rows:
            out.append(replace(g, rollouts=rows))
    return out, advantages[torch.tensor(list(keep), dtype=torch.bool)]


def concat_batches(a: Batch, b: Batch) -> tuple[list[Group], list[Prompt]]:
    """``a``'s groups and prompts followed by ``b``'s, ``b``'s sample indexes shifted past
    ``a``'s prompts (metrics are merged by ``merge_round_metrics``)."""
    shift = len(a[1])
    moved = [
        replace(
            g, rollouts=tuple(replace(r, sample_index=r.sample_index + shift) for r in g.rollouts)
        )
        for g in b[0]
    ]
    return [*a[0], *moved], [*a[1], *b[1]]


def merge_round_metrics(rounds: Sequence[dict[str, float]], weights: Sequence[int]) -> dict:
    """One step's metrics from those of its collection rounds: the ``ivr/`` counts are summed
    (``ivr/success_rate`` recomputed from them), every other metric is the mean over the rounds
    that report it weighted by the round's number of groups (``reward/std`` is therefore the
    weighted mean of the rounds' stds, not the std of the pooled rewards)."""
    out: dict[str, float] = {}
    for key in dict.fromkeys(k for m in rounds for k in m):
        pairs = [(m[key], w) for m, w in zip(rounds, weights) if key in m]
        if key.startswith("ivr/") and key != "ivr/success_rate":
            out[key] = float(sum(v for v, _ in pairs))
        else:
            total = sum(w for _, w in pairs)
            out[key] = sum(v * w for v, w in pairs) / total if total else pairs[0][0]
    if "ivr/critiqued" in out:
        crit = out["ivr/critiqued"]
        out["ivr/success_rate"] = out.get("ivr/accepted", 0.0) / crit if crit else 0.0
    return out


# ---------------------------------------------------------------------- the step's batch
class Batches:
    """Draws each step's prompts for one rank and, with DAPO's switches on, fills the batch.

    ``collect(collect_fn, step, timer)`` returns what ``collect_fn(step, samples, timer)`` returns
    for the step's prompts (plain GRPO), or, with ``algo.dynamic_sampling`` / ``algo.overlong``,
    the filtered batch of several such collections. ``advantages(adv_fn, groups)`` applies the
    overlong mask after the advantages.
    """

    def __init__(
        self, cfg: Config, samples: Sequence[Sample], comm: Collectives, rank: int, policy: Any
    ) -> None:
        self.cfg, self.samples, self.comm, self.rank = cfg, samples, comm, rank
        self.per, self.world = cfg.train.prompts_per_step, comm.world
        self.policy = policy  # its eos token ids tell a finished completion from a truncated one
        self._extra = {0: 0}  # step -> prompts drawn beyond the blocks of steps 1..step

    # -------------------------------------------------------------- data position
    def restore(self, meta: dict[str, Any]) -> int:
        """Take the data position of a checkpoint's ``trainer_state.json``; return its step."""
        step = int(meta["step"])
        self._extra = {step: int(meta.get("extra_prompts", 0))}
        return step

    def state(self, step: int) -> dict[str, int]:
        """What a checkpoint after ``step`` records of the data position."""
        return {"extra_prompts": self.extra_before(step + 1)}

    def extra_before(self, step: int) -> int:
        """Prompts drawn beyond the blocks of the steps before ``step`` (all ranks): the latest
        known count (a step not yet collected drew nothing extra)."""
        return self._extra[max(s for s in self._extra if s < step)]

    def _rows(self, start: int, count: int) -> list[Sample]:
        n = len(self.samples)
        return [self.samples[i] for i in training.epoch_order(self.cfg.train.seed, n, start, count)]

    def draw(self, step: int) -> list[Sample]:
        """This rank's ``prompts_per_step`` prompts of ``step``: positions
        ``((step − 1)·world + rank)·per + extra`` onwards of the seeded per-epoch shuffle."""
        start = ((step - 1) * self.world + self.rank) * self.per + self.extra_before(step)
        return self._rows(start, self.per)

    # -------------------------------------------------------------- the phases
    def collect(self, collect_fn: Callable[..., Batch], step: int, timer: Any) -> Batch:
        """collect (prompts → rollout → reward → rectify → self-reward), repeated until full
        under dynamic sampling; then filter."""
        a = self.cfg.algo
        batch = collect_fn(step, self.draw(step), timer)
        if not a.dynamic_sampling and a.overlong == "none":
            return batch
        with timer("filter"):
            batch = self._overlong(batch)
        if not a.dynamic_sampling:
            return batch
        rounds, weights = [batch[2]], [len(batch[0])]
        groups, prompts = batch[0], batch[1]
        keep = [i for i, g in enumerate(groups) if informative(g)]
        drawn, used = self.per, 1
        cursor = step * self.world * self.per + self.extra_before(step)  # the next free position
        while True:
            more = int(self.comm.max(max(self.per - len(keep), 0)))  # same on every rank
            if more == 0 or used >= a.max_sampling_rounds:
                break
            start = cursor + self.rank * more
            cursor += self.world * more
            extra = collect_fn(step, self._rows(start, more), timer)
            with timer("filter"):
                extra = self._overlong(extra)
            keep += [len(groups) + i for i, g in enumerate(extra[0]) if informative(g)]
            groups, prompts = concat_batches((groups, prompts, {}), extra)
            rounds.append(extra[2])
            weights.append(len(extra[0]))
            drawn, used = drawn + more, used + 1
        base = max(s for s in self._extra if s < step)  # keep two entries: before and after
        self._extra = {base: self._extra[base], step: cursor - step * self.world * self.per}
        metrics = merge_round_metrics(rounds, weights)
        with timer("filter"):
            bad = [g for g in groups if not all(math.isfinite(r) for r in g.rewards)]
            kept = [groups[i] for i in keep[: self.per]]
            any_kept = int(self.comm.max(len(kept))) > 0  # on any rank
            metrics.update(
                {
                    "dynamic/prompts_drawn": float(drawn),
                    "dynamic/rounds": float(used),
                    "dynamic/groups_kept": float(len(kept)),
                    "dynamic/groups_dropped": float(len(groups) - len(kept) - len(bad)),
                    "dynamic/bound_hit": float(len(keep) < self.per),
                    "dynamic/fallback": float(not any_kept),
                }
            )
            # NaN groups go on to the advantages, which drop and report them (reward/nan_groups)
            chosen = kept + bad if any_kept else batch[0]
        return chosen, prompts, metrics

    def _overlong(self, batch: Batch) -> Batch:
        """The share of truncated rows (a metric) and the soft penalty (``algo.overlong=soft``)."""
        groups, prompts, metrics = batch
        eos = self.policy.eos_token_ids
        rows = [r for g in groups for r in g.rollouts]
        metrics = dict(metrics)
        if rows:
            cut = sum(truncated(r.token_ids, eos) for r in rows)
            metrics["overlong/truncated_share"] = cut / len(rows)
        if self.cfg.algo.overlong == "soft":
            max_len = self.cfg.rollout.max_new_tokens
            groups = soft_overlong(groups, max_len, overlong_buffer(self.cfg))
            if rows:
                pen = [r.components["overlong"] for g in groups for r in g.rollouts]
                metrics["overlong/penalty_mean"] = float(np.mean(pen))
        return groups, prompts, metrics

    def advantages(self, adv_fn: Callable[[list[Group]], tuple], groups: list[Group]) -> tuple:
        """``adv_fn(groups)`` (the advantages over whole groups), then, with
        ``algo.overlong=filter``, the truncated rows masked out of the loss (dropped)."""
        groups, adv, dropped = adv_fn(groups)
        if self.cfg.algo.overlong != "filter" or not groups:
            return groups, adv, dropped
        eos = self.policy.eos_token_ids
        keep = [not truncated(r.token_ids, eos) for g in groups for r in g.rollouts]
        groups, adv = mask_rows(groups, adv, keep)
        return groups, adv, dropped
