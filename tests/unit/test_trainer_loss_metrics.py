"""The update's loss metrics: ``loss/off_policy_grad_share`` is pooled exactly over micro-batches.

The trainer splits a minibatch into micro-batches and sums ``policy_loss``'s metrics over them.
Most are then averaged over micro-batches; the off-policy gradient share, a ratio of two sums, is
Σ off-policy push / Σ push over every micro-batch (and rank) instead. Every expected value is
derived by hand in the comment next to it.
"""

from __future__ import annotations

import math

import pytest
import torch

from ivr.rl import policy_loss
from ivr.rl.metrics import loss_metrics


def _one_process(*xs: float):
    """``Collectives.sum`` (rl/distributed.py) with one rank: the values themselves."""
    return xs[0] if len(xs) == 1 else tuple(xs)


def _micro(on_adv: float, off_adv: float) -> dict[str, torch.Tensor]:
    """policy_loss metrics of a micro-batch of two one-token rows, γ = 0.1:
    row 0 on-policy with logp = old (ρ = 1, unclipped): push |Â_on|·ρ = |Â_on|;
    row 1 rectified with p = 0.1 = γ: push |Â_off|·γp/(p+γ)² = |Â_off|·0.01/0.04 = |Â_off|/4."""
    logp = torch.tensor([[math.log(0.5)], [math.log(0.1)]])
    old = torch.tensor([[math.log(0.5)], [0.0]])
    _, m = policy_loss(
        logp,
        old,
        torch.tensor([on_adv, off_adv]),
        torch.ones(2, 1),
        off_policy=torch.tensor([False, True]),
        shaping_gamma=0.1,
    )
    return m


def _summed(*micros: dict[str, torch.Tensor]) -> dict[str, float]:
    """What ``Trainer.update`` hands ``loss_metrics``: each metric summed over micro-batches."""
    keys = micros[0]
    return {k: float(sum(m[k] for m in micros)) for k in keys}


def test_policy_loss_reports_the_shares_numerator_and_denominator() -> None:
    # Â_on = 1, Â_off = 1: pushes 1 and 1/4 -> off-policy 0.25 of a total 1.25, share 0.2.
    m = _micro(1.0, 1.0)
    assert m["off_policy_grad"].item() == pytest.approx(0.25, abs=1e-6)
    assert m["policy_grad"].item() == pytest.approx(1.25, abs=1e-6)
    assert m["off_policy_grad_share"].item() == pytest.approx(0.2, abs=1e-6)
    assert all(v.dim() == 0 and not v.requires_grad for v in m.values())


def test_two_micro_batches_with_different_totals_pool_exactly() -> None:
    # Micro-batch A: Â_on = 1, Â_off = 1 -> pushes 1 and 0.25: share 0.25 / 1.25 = 0.2.
    # Micro-batch B: Â_on = 3, Â_off = 2 -> pushes 3 and 0.5:  share 0.5 / 3.5 = 1/7.
    # Pooled over the minibatch: (0.25 + 0.5) / (1.25 + 3.5) = 0.75 / 4.75 = 3/19 ≈ 0.1579,
    # not the mean of the two shares, (0.2 + 1/7) / 2 = 12/70 ≈ 0.1714.
    a, b = _micro(1.0, 1.0), _micro(3.0, 2.0)
    assert a["off_policy_grad_share"].item() == pytest.approx(0.2, abs=1e-6)
    assert b["off_policy_grad_share"].item() == pytest.approx(1 / 7, abs=1e-6)
    out = loss_metrics(_summed(a, b), 2, _one_process)
    assert out["loss/off_policy_grad_share"] == pytest.approx(3 / 19, abs=1e-6)
    assert out["loss/off_policy_grad_share"] != pytest.approx(12 / 70, abs=1e-3)
    # The other metrics stay the mean over micro-batches: off_policy_token_share is 1/2 in both.
    assert out["loss/off_policy_token_share"] == pytest.approx(0.5, abs=1e-6)
    # The sums themselves are not logged.
    assert "loss/off_policy_grad" not in out and "loss/policy_grad" not in out


def test_pooled_over_ranks_with_one_collective() -> None:
    # This rank: micro-batches A and B above, sums 0.75 / 4.75. Another rank: its one micro-batch
    # has Â_on = 2, Â_off = 0 -> pushes 2 and 0, sums 0 / 2. Global: 0.75 / 6.75 = 1/9.
    other = _micro(2.0, 0.0)
    calls = []

    def two_ranks(*xs: float):
        calls.append(xs)
        return tuple(x + y for x, y in zip(xs, (other["off_policy_grad"], other["policy_grad"])))

    out = loss_metrics(_summed(_micro(1.0, 1.0), _micro(3.0, 2.0)), 2, two_ranks)
    assert out["loss/off_policy_grad_share"] == pytest.approx(1 / 9, abs=1e-6)
    assert len(calls) == 1 and calls[0] == pytest.approx((0.75, 4.75), abs=1e-6)


def test_a_rank_without_micro_batches_still_joins_the_collective() -> None:
    # No rows on this rank: nothing summed, but the collective is made (with 0, 0) and the
    # share is the others': 1 / 4 = 0.25.
    calls = []

    def others(*xs: float):
        calls.append(xs)
        return (1.0 + xs[0], 4.0 + xs[1])

    out = loss_metrics({}, 0, others)
    assert calls == [(0.0, 0.0)]
    assert out == {"loss/off_policy_grad_share": 0.25}


def test_nothing_pushes_gives_zero() -> None:
    # Â = 0 everywhere: no push at all -> share 0 (not NaN), as policy_loss reports it.
    out = loss_metrics(_summed(_micro(0.0, 0.0)), 1, _one_process)
    assert out["loss/off_policy_grad_share"] == 0.0
