"""Rollout-training mismatch correction (TIS / MIS): hand-derived numbers, then the perturbed
sampler: tokens drawn from a perturbed categorical, the corrected REINFORCE gradient matches the
on-policy gradient in expectation and the uncorrected one does not."""

from __future__ import annotations

import math

import pytest
import torch

from ivr.rl import policy_loss
from ivr.rl.importance import mismatch_weights

LN = math.log


def floats(m: dict[str, torch.Tensor]) -> dict[str, float]:
    assert all(v.dim() == 0 and not v.requires_grad for v in m.values())
    return dict(zip(m, torch.stack(list(m.values())).tolist()))


def test_token_tis_hand_numbers() -> None:
    # log π_old − log μ = [ln 3, ln 0.5, 0] → ρ = [3, 0.5, 1]; cap C = 2 → w = [2, 0.5, 1].
    # |log ratio|: mean (1.098612 + 0.693147 + 0)/3 = 0.597253, max 1.098612;
    # ratio_mean (3 + 0.5 + 1)/3 = 1.5; weight_mean 3.5/3 = 1.166667; capped 1 token of 3.
    old = torch.tensor([[LN(3), LN(0.5), 0.0]])
    w, m = mismatch_weights(torch.zeros(1, 3), old, torch.ones(1, 3), mode="tis", cap=2.0)
    torch.testing.assert_close(w, torch.tensor([[2.0, 0.5, 1.0]]))
    m = floats(m)
    assert m["log_ratio_abs_mean"] == pytest.approx(0.597253, abs=1e-6)
    assert m["log_ratio_abs_max"] == pytest.approx(1.098612, abs=1e-6)
    assert m["ratio_mean"] == pytest.approx(1.5)
    assert m["weight_mean"] == pytest.approx(3.5 / 3)
    assert m["capped_share"] == pytest.approx(1 / 3) and m["masked_share"] == 0.0
    assert not w.requires_grad


def test_token_mis_hand_numbers() -> None:
    # Same ratios [3, 0.5, 1], C = 2: MIS keeps the IS weight but drops the token above C →
    # w = [0, 0.5, 1], masked 1/3. With IcePop's floor 0.6, 0.5 goes too → [0, 0, 1], masked 2/3.
    old = torch.tensor([[LN(3), LN(0.5), 0.0]])
    w, m = mismatch_weights(torch.zeros(1, 3), old, torch.ones(1, 3), mode="mis", cap=2.0)
    torch.testing.assert_close(w, torch.tensor([[0.0, 0.5, 1.0]]))
    assert floats(m)["masked_share"] == pytest.approx(1 / 3)
    assert floats(m)["capped_share"] == 0.0
    w, m = mismatch_weights(
        torch.zeros(1, 3), old, torch.ones(1, 3), mode="mis", cap=2.0, floor=0.6
    )
    torch.testing.assert_close(w, torch.tensor([[0.0, 0.0, 1.0]]))
    assert floats(m)["masked_share"] == pytest.approx(2 / 3)


def test_sequence_level_weights() -> None:
    # Row 0: log ratios [ln 2, ln 1.5] → ρ_seq = 2·1.5 = 3 > C = 2: TIS 2 on both tokens, MIS 0.
    # Row 1: [ln 2.5, ln 0.5] → ρ_seq = 1.25 ≤ 2: weight 1.25 on both tokens (token level would
    # give min(2.5, 2) = 2 and 0.5). Capped/masked share: row 0's 2 tokens of 4 = 0.5.
    old = torch.tensor([[LN(2), LN(1.5)], [LN(2.5), LN(0.5)]])
    beh, mask = torch.zeros(2, 2), torch.ones(2, 2)
    w, m = mismatch_weights(beh, old, mask, mode="tis", cap=2.0, level="sequence")
    torch.testing.assert_close(w, torch.tensor([[2.0, 2.0], [1.25, 1.25]]))
    assert floats(m)["capped_share"] == 0.5
    w, m = mismatch_weights(beh, old, mask, mode="mis", cap=2.0, level="sequence")
    torch.testing.assert_close(w, torch.tensor([[0.0, 0.0], [1.25, 1.25]]))
    assert floats(m)["masked_share"] == 0.5
    w, _ = mismatch_weights(beh, old, mask, mode="tis", cap=2.0, level="token")
    torch.testing.assert_close(w, torch.tensor([[2.0, 1.5], [2.0, 0.5]]))


def test_outside_the_mask_weight_one_and_not_counted() -> None:
    # Token 1 is padding (or a rectified row) holding NaN: weight 1, metrics from token 0 only
    # (ρ = e^0.5 = 1.648721 < C).
    beh = torch.tensor([[0.0, float("nan")]])
    old = torch.tensor([[0.5, 3.0]])
    w, m = mismatch_weights(beh, old, torch.tensor([[1, 0]]), cap=2.0)
    torch.testing.assert_close(w, torch.tensor([[math.exp(0.5), 1.0]]))
    m = floats(m)
    assert m["log_ratio_abs_max"] == pytest.approx(0.5) and m["capped_share"] == 0.0
    _, m = mismatch_weights(beh, old, torch.zeros(1, 2))  # empty mask: zeros, not NaN
    assert all(v == 0.0 for v in floats(m).values())


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"cap": 0.5}, "cap must be >= 1"),
        ({"mode": "clip"}, "mode must be"),
        ({"level": "batch"}, "level must be"),
        ({"floor": 0.5}, "floor is for mode='mis'"),
        ({"mode": "mis", "floor": 2.0}, "floor is for mode='mis'"),
    ],
)
def test_bad_inputs(kw: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        mismatch_weights(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2), **kw)  # type: ignore[arg-type]


def test_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="old_logprobs must have shape"):
        mismatch_weights(torch.zeros(1, 2), torch.zeros(2, 2), torch.ones(1, 2))


# ---------------------------------------------------------------- the perturbed sampler
#
# A one-step "policy" over K = 5 tokens: π = softmax(θ). The sampler draws from a perturbed
# copy μ = softmax(θ + δ) (a stand-in for vLLM / bf16 numerics / stale weights); the ratios
# π/μ are [2.150, 0.530, 0.716, 0.393, 1.593]. Rewards r per token.
# On-policy gradient of J(θ) = E_π[r]:  g* = Σ_a π(a) r(a) ∇logπ(a),  ∇_θ logπ(a) = e_a − π.
# The estimate runs through the library: N one-token rows, old_logprobs = logp (π_old = π_θ,
# the first pass: GRPO's ratio is 1, so the loss gradient is REINFORCE's), Â = r(a), weights from
# ``mismatch_weights(log μ(a), log π(a))``, token mean → −∇loss = (1/N) Σ_n w_n r_n ∇logπ(a_n).
# Expectations under μ, by hand:
#   uncorrected   Σ_a μ(a) r(a) (e_a − π)                    ≠ g*  (the bias to detect)
#   TIS, cap C    Σ_a μ(a) min(π(a)/μ(a), C) r(a) (e_a − π)  = g* when C ≥ max π/μ = 2.150
#   MIS, cap C    Σ_{a: π/μ ≤ C} π(a) r(a) (e_a − π)          = g* when nothing is masked
# Tolerance: 4 standard errors of the sample mean, per component (SE from the samples; N = 200k,
# SE ≈ 1e-3); the uncorrected estimate must miss g* by more than 10 SE.

THETA = torch.tensor([0.5, -0.3, 0.2, -1.0, 0.8], dtype=torch.float64)
DELTA = torch.tensor([-0.8, 0.6, 0.3, 0.9, -0.5], dtype=torch.float64)
REWARD = torch.tensor([1.0, 0.0, 0.5, 0.0, 1.0], dtype=torch.float64)
N = 200_000


def _estimate(mode: str | None, cap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(gradient estimate of J [K], its standard error [K]) from N samples of μ."""
    gen = torch.Generator().manual_seed(0)
    mu = (THETA + DELTA).softmax(0)
    a = torch.multinomial(mu, N, replacement=True, generator=gen)  # the same draws for every mode
    theta = THETA.clone().requires_grad_(True)
    logp = theta.log_softmax(0)[a][:, None]  # [N, 1]
    adv = REWARD[a]
    if mode is None:
        w = None
    else:
        w, _ = mismatch_weights(
            mu.log()[a][:, None], logp.detach(), torch.ones(N, 1), mode=mode, cap=cap
        )  # type: ignore[arg-type]
    loss, _ = policy_loss(
        logp, logp.detach(), adv, torch.ones(N, 1), is_weights=w, aggregation="token"
    )
    loss.backward()
    assert theta.grad is not None
    # per-sample contributions w_n r_n (e_a − π) for the standard error
    pi = THETA.softmax(0)
    per = (
        (torch.ones(N, 1, dtype=torch.float64) if w is None else w)
        * adv[:, None]
        * (torch.nn.functional.one_hot(a, 5).to(torch.float64) - pi)
    )
    torch.testing.assert_close(-theta.grad, per.mean(0))  # the loss computes exactly this mean
    return -theta.grad, per.std(0) / math.sqrt(N)


def _expected(weight: torch.Tensor) -> torch.Tensor:
    """Σ_a μ(a) weight(a) r(a) (e_a − π): the expectation of the estimate under μ."""
    pi, mu = THETA.softmax(0), (THETA + DELTA).softmax(0)
    return ((mu * weight * REWARD)[:, None] * (torch.eye(5, dtype=torch.float64) - pi)).sum(0)


def test_perturbed_sampler_tis_recovers_the_on_policy_gradient() -> None:
    pi, mu = THETA.softmax(0), (THETA + DELTA).softmax(0)
    g_star = pi * (REWARD - (pi * REWARD).sum())  # ∇ E_π[r] for a softmax, closed form
    torch.testing.assert_close(_expected(pi / mu), g_star)  # IS is unbiased (sanity)

    g_tis, se = _estimate("tis", cap=3.0)  # C = 3 ≥ max π/μ: no truncation, unbiased
    assert ((g_tis - g_star).abs() <= 4 * se).all(), (g_tis, g_star, se)
    g_mis, se_mis = _estimate("mis", cap=3.0)  # nothing above 3: nothing masked
    assert ((g_mis - g_star).abs() <= 4 * se_mis).all()

    g_raw, se_raw = _estimate(None, cap=1.0)
    assert ((g_raw - _expected(torch.ones(5, dtype=torch.float64))).abs() <= 4 * se_raw).all()
    assert (g_raw - g_star).abs().max() > 10 * se_raw.max(), (g_raw, g_star)  # the bias is seen


def test_perturbed_sampler_truncation_is_the_predicted_bias() -> None:
    # C = 1.5 truncates tokens 0 (ratio 2.150) and 4 (1.593): the estimate then matches
    # Σ μ min(π/μ, 1.5) r ∇logπ, not g*. MIS with C = 2 drops token 0 only: Σ_{a≠0} π r ∇logπ.
    pi, mu = THETA.softmax(0), (THETA + DELTA).softmax(0)
    g_tis, se = _estimate("tis", cap=1.5)
    assert ((g_tis - _expected((pi / mu).clamp(max=1.5))).abs() <= 4 * se).all()
    g_mis, se = _estimate("mis", cap=2.0)
    keep = (pi / mu <= 2.0).to(torch.float64)
    assert keep.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0]
    assert ((g_mis - _expected(pi / mu * keep)).abs() <= 4 * se).all()
