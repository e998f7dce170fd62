"""The update's loss metrics are pooled exactly over micro-batches and ranks.

The trainer splits a minibatch into micro-batches and accumulates ``policy_loss``'s metrics over
them (``accumulate``). The off-policy gradient share, a ratio of two sums, is Σ off-policy push /
Σ push over every micro-batch (and rank); a token mean such as ``clip_frac`` is Σ mean × count /
Σ count, the mean over all the update's tokens. Every expected value is derived by hand in the
comment next to it.
"""

from __future__ import annotations

import math

import pytest
import torch

from ivr.rl import policy_loss
from ivr.rl.metrics import _POOLED_RATIOS, _TOKEN_MEANS, accumulate, loss_metrics


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
    """What ``Trainer.update`` hands ``loss_metrics``: the micro-batches ``accumulate``d."""
    sums: dict[str, torch.Tensor] = {}
    for m in micros:
        accumulate(sums, m)
    return {k: float(v) for k, v in sums.items()}


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
    # Token means pool too: off_policy_token_share is 1/2 in both, so 2/4 pooled.
    assert out["loss/off_policy_token_share"] == pytest.approx(0.5, abs=1e-6)
    # The sums and the token counts themselves are not logged.
    assert not {"loss/off_policy_grad", "loss/policy_grad", "loss/tokens", "loss/on_tokens"} & set(
        out
    )


def test_pooled_over_ranks_with_one_collective() -> None:
    # This rank: micro-batches A and B above, sums 0.75 / 4.75. Another rank: its one micro-batch
    # has Â_on = 2, Â_off = 0 -> pushes 2 and 0, sums 0 / 2. Global: 0.75 / 6.75 = 1/9.
    other = _micro(2.0, 0.0)
    calls = []

    def two_ranks(*xs: float):
        calls.append(xs)
        theirs = (other["off_policy_grad"], other["policy_grad"], 1.0)  # + 0 for the rest
        return tuple(x + (theirs[i] if i < 3 else 0.0) for i, x in enumerate(xs))

    out = loss_metrics(_summed(_micro(1.0, 1.0), _micro(3.0, 2.0)), 2, two_ranks)
    assert out["loss/off_policy_grad_share"] == pytest.approx(1 / 9, abs=1e-6)
    assert len(calls) == 1 and calls[0][:2] == pytest.approx((0.75, 4.75), abs=1e-6)


def test_a_rank_without_micro_batches_still_joins_the_collective() -> None:
    # No rows on this rank: nothing summed, but the collective is made (with 0, 0) and the
    # share is the others': 1 / 4 = 0.25.
    calls = []

    # the others' sums, by metric (3 slots each: numerator, denominator, reported):
    # share 1 / 4; clip_frac 3 clipped of 12 on-policy tokens; nothing else reported
    theirs = {"off_policy_grad_share": (1.0, 4.0, 1.0), "clip_frac": (3.0, 12.0, 1.0)}
    names = [*_POOLED_RATIOS, *_TOKEN_MEANS]

    def others(*xs: float):
        calls.append(xs)
        return tuple(
            x + theirs.get(names[i // 3], (0.0, 0.0, 0.0))[i % 3] for i, x in enumerate(xs)
        )

    out = loss_metrics({}, 0, others)
    assert len(calls[0]) == 3 * len(names)
    assert calls[0][:3] == (0.0, 0.0, 1.0) and not any(calls[0][3:])  # nothing of its own
    assert out == {"loss/off_policy_grad_share": 0.25, "loss/clip_frac": 0.25}


def test_nothing_pushes_gives_zero() -> None:
    # Â = 0 everywhere: no push at all -> share 0 (not NaN), as policy_loss reports it.
    out = loss_metrics(_summed(_micro(0.0, 0.0)), 1, _one_process)
    assert out["loss/off_policy_grad_share"] == 0.0


def _clip_micro(ratios: list[float]) -> dict[str, torch.Tensor]:
    """policy_loss metrics of one on-policy row whose tokens have the given ratios π/π_old,
    Â = 1, ε = 0.2: a token is clipped when its ratio is above 1.2."""
    old = torch.zeros(1, len(ratios))
    logp = torch.log(torch.tensor([ratios]))
    _, m = policy_loss(logp, old, torch.tensor([1.0]), torch.ones(1, len(ratios)))
    return m


def test_clip_frac_and_ratio_mean_are_means_over_all_on_policy_tokens() -> None:
    # Micro-batch A: 2 tokens, ratios 1.5 (clipped) and 1.0 -> clip_frac 1/2, ratio_mean 1.25.
    # Micro-batch B: 6 tokens, all ratio 1.0 -> clip_frac 0, ratio_mean 1.
    # Over the update's 8 on-policy tokens: 1 clipped -> 1/8 = 0.125 (the mean of the two
    # micro-batches' shares would say 0.25); ratio_mean (1.5 + 7 × 1) / 8 = 8.5 / 8 = 1.0625.
    a, b = _clip_micro([1.5, 1.0]), _clip_micro([1.0] * 6)
    assert (a["clip_frac"].item(), b["clip_frac"].item()) == (0.5, 0.0)
    assert (a["on_tokens"].item(), b["on_tokens"].item()) == (2.0, 6.0)
    out = loss_metrics(_summed(a, b), 2, _one_process)
    assert out["loss/clip_frac"] == pytest.approx(0.125, abs=1e-6)
    assert out["loss/ratio_mean"] == pytest.approx(1.0625, abs=1e-6)
    # No off-policy tokens anywhere: their mean is 0 (an empty set), not NaN.
    assert out["loss/off_policy_prob_mean"] == 0.0
    # A metric policy_loss did not report (no entropy given) is not logged.
    assert "loss/entropy" not in out


def test_the_logged_loss_is_the_minibatch_loss_that_was_optimised() -> None:
    # Micro-batch A: loss 2.0 over 2 tokens; B: loss -1.0 over 6 tokens (token aggregation: the
    # backward weighs them 2/8 and 6/8). Logged: (2 × 2 + 6 × -1) / 8 = -2 / 8 = -0.25, not the
    # mean of the two, 0.5.
    a = {"loss": torch.tensor(2.0), "loss_weight": torch.tensor(2.0)}
    b = {"loss": torch.tensor(-1.0), "loss_weight": torch.tensor(6.0)}
    out = loss_metrics(_summed(a, b), 2, _one_process)
    assert out["loss/loss"] == pytest.approx(-0.25, abs=1e-6)
    assert "loss/loss_weight" not in out


def test_a_mean_without_its_count_falls_back_to_the_micro_batch_mean() -> None:
    # Two micro-batches' losses 2.0 and -1.0 summed by a caller that kept no loss_weight:
    # nothing to pool by, so the mean over the 2 micro-batches, (2 - 1) / 2 = 0.5 (not 0).
    out = loss_metrics({"loss": 1.0}, 2, _one_process)
    assert out["loss/loss"] == pytest.approx(0.5)
