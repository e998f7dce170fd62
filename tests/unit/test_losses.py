"""policy_loss and its parts: expected values derived by hand in the comments (torchtune style).

Convention: a single token with old logprob 0 and current logprob log ρ has importance ratio ρ;
with one token and "token" aggregation the loss IS the per-token loss ℓ.
"""

from __future__ import annotations

import math

import pytest
import torch

from ivr.rl import policy_loss
from ivr.rl.losses import LOSS_PRESETS, aggregate, k3_kl, shaped_surrogate


def floats(metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    """policy_loss metrics are detached 0-d tensors (no host sync per micro-batch): one transfer."""
    assert all(v.dim() == 0 and not v.requires_grad for v in metrics.values())
    return dict(zip(metrics, torch.stack(list(metrics.values())).tolist()))


def one_token(ratio: float, adv: float, **kwargs: object) -> tuple[float, float, dict[str, float]]:
    """Loss, d loss / d logp and metrics for one on-policy token with importance ratio ``ratio``."""
    logp = torch.tensor([[math.log(ratio)]], requires_grad=True)
    loss, metrics = policy_loss(
        logp, torch.zeros(1, 1), torch.tensor([adv]), torch.ones(1, 1), **kwargs
    )
    loss.backward()
    assert logp.grad is not None
    return loss.item(), logp.grad.item(), floats(metrics)


# ---------------------------------------------------------------- on-policy clipped surrogate


@pytest.mark.parametrize(
    ("ratio", "adv", "want_loss", "want_grad", "want_clipped"),
    [
        # unclipped: ρ=1.1 ∈ [0.8, 1.2]; ℓ = −ρÂ = −1.1·2 = −2.2; dℓ/dlogp = −ρÂ = −2.2
        (1.1, 2.0, -2.2, -2.2, 0.0),
        # Â>0, ρ=1.5 > 1+ε: min(1.5·1, 1.2·1) = 1.2 → ℓ = −1.2, clipped: zero gradient
        (1.5, 1.0, -1.2, 0.0, 1.0),
        # Â<0, ρ=0.5 < 1−ε: min(0.5·−1, 0.8·−1) = −0.8 → ℓ = 0.8, clipped: zero gradient
        (0.5, -1.0, 0.8, 0.0, 1.0),
        # Â<0, ρ=1.5 > 1+ε: min(−1.5, −1.2) = −1.5 → ℓ = 1.5, NOT clipped (pessimistic bound),
        # dℓ/dlogp = −ρÂ = 1.5
        (1.5, -1.0, 1.5, 1.5, 0.0),
        # Â>0, ρ=0.5 < 1−ε: min(0.5, 0.8) = 0.5 → ℓ = −0.5, not clipped, grad −0.5
        (0.5, 1.0, -0.5, -0.5, 0.0),
    ],
)
def test_clipped_surrogate_single_token(
    ratio: float, adv: float, want_loss: float, want_grad: float, want_clipped: float
) -> None:
    loss, grad, m = one_token(ratio, adv)
    assert loss == pytest.approx(want_loss, abs=1e-6)
    assert grad == pytest.approx(want_grad, abs=1e-6)
    assert m["clip_frac"] == want_clipped
    assert m["ratio_mean"] == pytest.approx(ratio)


def test_clip_higher_dapo() -> None:
    # ρ=1.25, Â=1: symmetric ε=0.2 clips at 1.2 (ℓ = −1.2); DAPO's ε_high=0.28 does not (ℓ = −1.25)
    assert one_token(1.25, 1.0)[0] == pytest.approx(-1.2)
    loss, grad, m = one_token(1.25, 1.0, **LOSS_PRESETS["dapo"])
    assert loss == pytest.approx(-1.25)
    assert grad == pytest.approx(-1.25)
    assert m["clip_frac"] == 0.0


# ---------------------------------------------------------------- off-policy policy shaping


def test_off_policy_token_shaped() -> None:
    # p = 0.4, γ = 0.1: f(p) = 0.4 / 0.5 = 0.8; Â = 1 → ℓ = −0.8 (no clip, behaviour prob. 1)
    # dℓ/dlogp = −Â γ p / (p+γ)² = −0.1·0.4 / 0.25 = −0.16
    # old_logprobs are NaN on that row: they must be ignored.
    logp = torch.tensor([[math.log(0.4)]], requires_grad=True)
    loss, m = policy_loss(
        logp,
        torch.full((1, 1), float("nan")),
        torch.tensor([1.0]),
        torch.ones(1, 1),
        off_policy=torch.tensor([True]),
        shaping_gamma=0.1,
    )
    m = floats(m)
    loss.backward()
    assert loss.item() == pytest.approx(-0.8)
    assert logp.grad is not None and logp.grad.item() == pytest.approx(-0.16)
    assert m["off_policy_token_share"] == 1.0
    assert m["off_policy_prob_mean"] == pytest.approx(0.4)
    assert m["clip_frac"] == 0.0 and m["ratio_mean"] == 0.0  # no on-policy tokens


def test_off_policy_large_ratio_is_not_clipped() -> None:
    # p = 0.9 (a ratio of 0.9/0.1 = 9 had the old policy sampled it at 0.1): shaping ignores old,
    # ℓ = −Â · 0.9/(0.9+0.1) = −0.9 with Â = 1, gradient −0.1·0.9/1 = −0.09 ≠ 0.
    logp = torch.tensor([[math.log(0.9)]], requires_grad=True)
    loss, _ = policy_loss(
        logp,
        torch.tensor([[math.log(0.1)]]),
        torch.tensor([1.0]),
        torch.ones(1, 1),
        off_policy=torch.tensor([True]),
    )
    loss.backward()
    assert loss.item() == pytest.approx(-0.9)
    assert logp.grad is not None and logp.grad.item() == pytest.approx(-0.09)


def test_shaping_off_is_the_plain_probability() -> None:
    # shaping_gamma=None is LUFFY's "no shaping": ℓ = −Â·p on off-policy tokens, behaviour
    # probability 1, no clip. Row 0: p = 0.4, Â = 2 → ℓ = −0.8; dℓ/dlogp = −Â·p = −0.8
    # (dp/dlogp = p). Row 1: p = 0.9 with old logprob ln 0.1 — an on-policy ratio of 9 would be
    # clipped at 1.2 with zero gradient; here ℓ = −1·0.9 = −0.9 and dℓ/dlogp = −0.9.
    # Token mean over the 2 tokens: (−0.8 − 0.9) / 2 = −0.85; gradients halved: −0.4, −0.45.
    logp = torch.tensor([[math.log(0.4)], [math.log(0.9)]], requires_grad=True)
    loss, m = policy_loss(
        logp,
        torch.tensor([[0.0], [math.log(0.1)]]),
        torch.tensor([2.0, 1.0]),
        torch.ones(2, 1),
        off_policy=torch.tensor([True, True]),
        shaping_gamma=None,
    )
    loss.backward()
    assert loss.item() == pytest.approx(-0.85)
    assert logp.grad is not None
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.4], [-0.45]]))
    assert floats(m)["off_policy_prob_mean"] == pytest.approx(0.65)
    # the part on its own, per token: −Â·p
    torch.testing.assert_close(
        shaped_surrogate(torch.tensor([[math.log(0.4)]]), torch.tensor([[2.0]]), None),
        torch.tensor([[-0.8]]),
    )


def test_shaping_gradient_matches_closed_form() -> None:
    # d/dlogp [−Â p/(p+γ)] = −Â γ p/(p+γ)², checked for p across (0, 1) and both signs of Â.
    gamma = 0.1
    p = torch.tensor([[1e-4, 0.01, 0.1, 0.5, 0.99], [0.2, 0.3, 0.6, 0.8, 1.0]], dtype=torch.float64)
    adv = torch.tensor([1.5, -0.7], dtype=torch.float64)
    logp = p.log().requires_grad_(True)
    loss, _ = policy_loss(
        logp,
        torch.zeros_like(p),
        adv,
        torch.ones_like(p),
        off_policy=torch.tensor([True, True]),
        shaping_gamma=gamma,
    )
    (loss * p.numel()).backward()  # undo the token mean
    closed = -adv[:, None] * gamma * p / (p + gamma) ** 2
    torch.testing.assert_close(logp.grad, closed)

    # ...and autograd of the closed-form loss, written independently of the library
    logp2 = p.log().requires_grad_(True)
    q = logp2.exp()
    (-adv[:, None] * q / (q + gamma)).sum().backward()
    torch.testing.assert_close(logp.grad, logp2.grad)
    # the public part on its own: f(0.4) = 0.4 / 0.5 = 0.8 → ℓ = −0.8
    torch.testing.assert_close(
        shaped_surrogate(torch.tensor([[math.log(0.4)]]), torch.tensor([[1.0]]), 0.1),
        torch.tensor([[-0.8]]),
    )


# ---------------------------------------------------------------- KL (k3)


def test_k3_values() -> None:
    # x = ref − logp = ln 2: e^x − x − 1 = 2 − 0.693147 − 1 = 0.306853
    # x = −ln 2:             0.5 + 0.693147 − 1 = 0.193147;   x = 0: 0
    logp = torch.tensor([[0.0, 0.0, -1.0]])
    ref = torch.tensor([[math.log(2), -math.log(2), -1.0]])
    torch.testing.assert_close(k3_kl(logp, ref), torch.tensor([[0.306853, 0.193147, 0.0]]))


def test_kl_penalty_in_loss() -> None:
    # Â = 0 → surrogate 0; tokens with x = ln 2 and x = −ln 2, β = 0.5:
    # loss = 0.5 · (0.306853 + 0.193147) / 2 = 0.125; metric kl = mean k3 = 0.25
    # dℓ/dlogp per token (token mean ½): ½·β·(1 − e^x) → ½·.5·(1−2) = −0.25, ½·.5·(1−.5) = 0.125
    logp = torch.zeros(1, 2, requires_grad=True)
    ref = torch.tensor([[math.log(2), -math.log(2)]])
    loss, m = policy_loss(
        logp, torch.zeros(1, 2), torch.zeros(1), torch.ones(1, 2), ref_logprobs=ref, kl_beta=0.5
    )
    m = floats(m)
    loss.backward()
    assert loss.item() == pytest.approx(0.125)
    assert m["kl"] == pytest.approx(0.25)
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.25, 0.125]]))


def test_kl_reported_but_not_added_when_beta_zero() -> None:
    ref = torch.tensor([[math.log(2)]])
    loss, m = policy_loss(
        torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1), torch.ones(1, 1), ref_logprobs=ref
    )
    m = floats(m)
    assert loss.item() == 0.0
    assert m["kl"] == pytest.approx(0.306853)


# ---------------------------------------------------------------- aggregation


def _two_rows(aggregation: str, **kwargs: object) -> float:
    # ρ = 1 everywhere, so ℓ = −Â per token: row 0 (Â=1) → −1 on 3 tokens; row 1 (Â=−1) → +1 on
    # 1 token; row 1's padding holds garbage (NaN / 5.0) that must not leak.
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, float("nan"), 5.0]], requires_grad=True)
    old = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, 3.0, float("nan")]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    loss, _ = policy_loss(
        logp, old, torch.tensor([1.0, -1.0]), mask, aggregation=aggregation, **kwargs
    )
    loss.backward()
    assert logp.grad is not None and torch.isfinite(logp.grad).all()
    assert (logp.grad[1, 1:] == 0).all()
    return loss.item()


def test_aggregation_token() -> None:
    # Σ mask·ℓ / Σ mask = (−3 + 1) / 4 = −0.5
    assert _two_rows("token") == pytest.approx(-0.5)


def test_aggregation_sequence() -> None:
    # mean over rows of row means = (−1 + 1) / 2 = 0
    assert _two_rows("sequence") == pytest.approx(0.0)


def test_aggregation_dr_grpo() -> None:
    # Σ mask·ℓ / (B·T) = −2 / (2·3) = −1/3; with max_len = 4: −2 / 8 = −0.25
    assert _two_rows("dr_grpo") == pytest.approx(-1 / 3)
    assert _two_rows("dr_grpo", max_len=4) == pytest.approx(-0.25)


def test_aggregate_empty_mask_and_empty_sequence() -> None:
    loss = torch.tensor([[2.0, 4.0], [7.0, 7.0]])
    assert aggregate(loss, torch.zeros(2, 2), "token").item() == 0.0
    # row 1 has no tokens: "sequence" averages the non-empty rows only → (2+4)/2 = 3
    assert aggregate(loss, torch.tensor([[1.0, 1.0], [0.0, 0.0]]), "sequence").item() == 3.0


# ---------------------------------------------------------------- mixed batch and metrics


def test_mixed_batch_metrics() -> None:
    # row 0 on-policy, ratios [1.5, 1.0] with Â=1: token 0 clipped (ℓ=−1.2), token 1 ℓ=−1
    # row 1 off-policy, p = 0.4 on both tokens, Â=1: ℓ = −0.8 each
    # token mean: (−1.2 − 1 − 0.8 − 0.8) / 4 = −0.95
    # clip_frac = 1/2 (on-policy tokens only); ratio_mean = (1.5 + 1) / 2 = 1.25
    # off share = 2/4; entropy mean = (1 + 2 + 3 + 4) / 4 = 2.5
    logp = torch.tensor([[math.log(1.5), 0.0], [math.log(0.4), math.log(0.4)]])
    loss, m = policy_loss(
        logp,
        torch.zeros(2, 2),
        torch.tensor([1.0, 1.0]),
        torch.ones(2, 2),
        off_policy=torch.tensor([False, True]),
        entropy=torch.tensor([[1.0, 2.0], [3.0, 4.0]]),
    )
    m = floats(m)
    assert loss.item() == pytest.approx(-0.95)
    assert m["loss"] == pytest.approx(-0.95)
    assert m["clip_frac"] == pytest.approx(0.5)
    assert m["ratio_mean"] == pytest.approx(1.25)
    assert m["off_policy_token_share"] == pytest.approx(0.5)
    assert m["entropy"] == pytest.approx(2.5)
    assert m["kl"] == 0.0
    assert all(isinstance(v, float) for v in m.values())  # after the one transfer


def test_bf16_inputs_are_computed_in_fp32() -> None:
    logp = torch.tensor([[math.log(1.1)]], dtype=torch.bfloat16)
    loss, _ = policy_loss(logp, torch.zeros(1, 1), torch.tensor([2.0]), torch.ones(1, 1))
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(-2.2, abs=0.02)


# ---------------------------------------------------------------- bad inputs


def _call(**over: object) -> None:
    args: dict[str, object] = {
        "logprobs": torch.zeros(2, 3),
        "old_logprobs": torch.zeros(2, 3),
        "advantages": torch.zeros(2),
        "mask": torch.ones(2, 3),
    }
    args.update(over)
    policy_loss(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"logprobs": torch.zeros(6)}, r"logprobs must be \[B, T\]"),
        ({"old_logprobs": torch.zeros(2, 4)}, r"old_logprobs must have shape \[B, T\] = \[2, 3\]"),
        ({"advantages": torch.zeros(2, 3)}, r"advantages must have shape \[B\] = \[2\]"),
        ({"mask": torch.ones(3, 3)}, r"mask must have shape \[B, T\]"),
        ({"off_policy": torch.zeros(3, dtype=torch.bool)}, r"off_policy must have shape \[B\]"),
        ({"off_policy": torch.zeros(2)}, "off_policy must be a bool tensor"),
        ({"ref_logprobs": torch.zeros(2, 2)}, "ref_logprobs must have shape"),
        ({"entropy": torch.zeros(2)}, "entropy must have shape"),
        ({"kl_beta": 0.1}, "kl_beta > 0 needs ref_logprobs"),
        ({"kl_beta": -1.0}, "kl_beta must be >= 0"),
        ({"aggregation": "mean"}, "aggregation must be one of"),
        ({"shaping_gamma": 0.0}, "shaping_gamma must be > 0"),
        ({"clip_low": 1.0}, "clip_low"),
        ({"aggregation": "dr_grpo", "max_len": 2}, r"max_len \(2\) is smaller than .* T \(3\)"),
    ],
)
def test_bad_inputs(over: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _call(**over)


@pytest.mark.parametrize("preset", sorted(LOSS_PRESETS))
def test_presets_are_valid_kwargs(preset: str) -> None:
    kwargs = dict(LOSS_PRESETS[preset])
    ref = torch.zeros(2, 3) if kwargs.get("kl_beta", 0.0) > 0 else None
    _call(ref_logprobs=ref, **kwargs)


def test_off_policy_grad_share_matches_autograd_and_hand_numbers() -> None:
    # Two rows of one token each. Row 0 on-policy: logp = old (ρ = 1), Â = 1 → |∂ℓ/∂logp| = 1.
    # Row 1 off-policy (rectified): p = 0.1 = γ, Â = 1 → γp/(p+γ)² = 0.01/0.04 = 0.25.
    # Share of the push carried by the rectified token: 0.25 / (1 + 0.25) = 0.2.
    logp = torch.tensor([[math.log(0.5)], [math.log(0.1)]], requires_grad=True)
    old = torch.tensor([[math.log(0.5)], [0.0]])
    adv, mask = torch.tensor([1.0, 1.0]), torch.ones(2, 1)
    off = torch.tensor([False, True])
    loss, m = policy_loss(logp, old, adv, mask, off_policy=off, shaping_gamma=0.1)
    assert m["off_policy_grad_share"].item() == pytest.approx(0.2, abs=1e-6)
    # Autograd agrees: token-mean aggregation scales both gradients by 1/2 alike.
    (g,) = torch.autograd.grad(loss, logp)
    assert (g[1].abs() / g.abs().sum()).item() == pytest.approx(0.2, abs=1e-6)
    # Shaping off: plain p → weight 0.1; share 0.1 / 1.1.
    _, m = policy_loss(logp, old, adv, mask, off_policy=off, shaping_gamma=None)
    assert m["off_policy_grad_share"].item() == pytest.approx(0.1 / 1.1, abs=1e-6)


# ---------------------------------------------------------------- loss variants (loss=...)


def _grad(logp0: list[list[float]], old: list[list[float]], adv: list[float], **kw: object):
    """(loss, d loss / d logp, metrics) for on-policy rows, full mask unless ``mask`` is given."""
    logp = torch.tensor(logp0, dtype=torch.float64, requires_grad=True)
    mask = kw.pop("mask", torch.ones_like(logp))
    loss, m = policy_loss(
        logp,
        torch.tensor(old, dtype=torch.float64),
        torch.tensor(adv, dtype=torch.float64),
        mask,
        **kw,  # type: ignore[arg-type]
    )
    loss.backward()
    assert logp.grad is not None
    return loss.item(), logp.grad, floats(m)


def test_gspo_sequence_ratio_and_gradient() -> None:
    # Two tokens, log ratios 0.1 and −0.3: s = exp((0.1 − 0.3)/2) = e^−0.1 = 0.904837, inside
    # [0.8, 1.2], Â = 1. ℓ_t = −s on both tokens; "sequence" aggregation → loss = −0.904837.
    # d/dlogp_t = −Â s · ½ = −0.452419 on each token, which is GSPO's −Â ∇s_i with
    # s_i = exp(mean_t(logp_t − old_t)) (checked by autograd of that closed form below).
    lp, old = [[0.1, -0.3]], [[0.0, 0.0]]
    loss, g, m = _grad(lp, old, [1.0], loss="gspo", aggregation="sequence")
    assert loss == pytest.approx(-0.904837, abs=1e-6)
    torch.testing.assert_close(
        g, torch.full((1, 2), -0.452419, dtype=torch.float64), atol=1e-6, rtol=0
    )
    assert m["ratio_mean"] == pytest.approx(0.904837, abs=1e-6) and m["clip_frac"] == 0.0
    x = torch.tensor(lp, dtype=torch.float64, requires_grad=True)
    (-(x - torch.tensor(old, dtype=torch.float64)).mean().exp()).backward()
    torch.testing.assert_close(g, x.grad)


def test_gspo_clips_per_sequence_with_small_epsilon() -> None:
    # GSPO's ε: 3e-4 / 4e-4. Log ratios 0.002 and 0: s = e^0.001 = 1.0010005 > 1 + 4e-4.
    # Â = 1: min(1.0010005, 1.0004) = 1.0004 → ℓ = −1.0004 on both tokens, clipped, zero gradient.
    eps = {"clip_low": 3e-4, "clip_high": 4e-4, "aggregation": "sequence"}
    loss, g, m = _grad([[0.002, 0.0]], [[0.0, 0.0]], [1.0], loss="gspo", **eps)
    assert loss == pytest.approx(-1.0004, abs=1e-9)
    assert (g == 0).all() and m["clip_frac"] == 1.0
    # Â = −1: min(−1.0010005, −1.0004) = −1.0010005 → ℓ = 1.0010005, not clipped (the pessimistic
    # branch), gradient −Â s · ½ = 0.50050025 on each token.
    loss, g, m = _grad([[0.002, 0.0]], [[0.0, 0.0]], [-1.0], loss="gspo", **eps)
    assert loss == pytest.approx(1.0010005, abs=1e-7)
    torch.testing.assert_close(g, torch.full((1, 2), 0.50050025, dtype=torch.float64))
    assert m["clip_frac"] == 0.0


def test_gspo_keeps_a_sequence_whose_mean_is_in_range_where_grpo_drops_a_token() -> None:
    # Log ratios +6e-4 and −6e-4: mean 0 → s = 1, inside [1 − 3e-4, 1 + 4e-4]: both tokens keep
    # the gradient −Â·1·½ = −0.5. Token-level GRPO with the same ε sees ρ_0 = e^6e-4 = 1.0006 >
    # 1.0004 with Â > 0: token 0 clipped (gradient 0), token 1 (ρ = 0.9994 < 1, Â > 0: the
    # unclipped branch is the min) keeps −ρ·½ = −0.4997.
    eps = {"clip_low": 3e-4, "clip_high": 4e-4, "aggregation": "sequence"}
    lp, old = [[6e-4, -6e-4]], [[0.0, 0.0]]
    _, g, _ = _grad(lp, old, [1.0], loss="gspo", **eps)
    torch.testing.assert_close(g, torch.full((1, 2), -0.5, dtype=torch.float64))
    _, g, m = _grad(lp, old, [1.0], loss="grpo", **eps)
    assert g[0, 0].item() == 0.0 and g[0, 1].item() == pytest.approx(-0.5 * math.exp(-6e-4))
    assert m["clip_frac"] == 0.5


def test_gspo_mean_ignores_padding() -> None:
    # Row 0: one valid token, log ratio ln 1.1, then padding holding NaN: s = 1.1 (not a mean
    # with the padding). Â = 2 → ℓ = −2.2 on the valid token; "sequence" → −2.2; gradient −2.2.
    logp = torch.tensor([[math.log(1.1), float("nan")]], requires_grad=True)
    loss, _ = policy_loss(
        logp,
        torch.tensor([[0.0, 7.0]]),
        torch.tensor([2.0]),
        torch.tensor([[1.0, 0.0]]),
        loss="gspo",
        aggregation="sequence",
    )
    loss.backward()
    assert loss.item() == pytest.approx(-2.2, abs=1e-6)
    assert logp.grad is not None
    torch.testing.assert_close(logp.grad, torch.tensor([[-2.2, 0.0]]))


def test_cispo_weight_clipped_detached_gradient_kept() -> None:
    # ρ = 1.5 (old = ln 0.5, logp = ln 0.75 = −0.287682), Â = 1, ε_high = 0.2, no lower bound
    # (clip_low = 1): w = sg(clip(1.5, 0, 1.2)) = 1.2; ℓ = −w Â logp = −1.2·(−0.287682) = 0.345218.
    # dℓ/dlogp = −w Â = −1.2 — where GRPO's clip gives 0 (test_clipped_surrogate_single_token).
    loss, g, m = _grad([[math.log(0.75)]], [[math.log(0.5)]], [1.0], loss="cispo", clip_low=1.0)
    assert loss == pytest.approx(0.345218, abs=1e-6)
    assert g.item() == pytest.approx(-1.2)
    assert m["clip_frac"] == 1.0 and m["ratio_mean"] == pytest.approx(1.5)
    # ρ = 0.5, Â = −1: no lower bound → w = 0.5, gradient −w Â = +0.5 (GRPO: clipped, 0);
    # with ε_low = 0.2 the weight is clipped up to 0.8 → gradient +0.8.
    _, g, m = _grad([[math.log(0.5)]], [[0.0]], [-1.0], loss="cispo", clip_low=1.0)
    assert g.item() == pytest.approx(0.5) and m["clip_frac"] == 0.0
    _, g, m = _grad([[math.log(0.5)]], [[0.0]], [-1.0], loss="cispo", clip_low=0.2)
    assert g.item() == pytest.approx(0.8) and m["clip_frac"] == 1.0


@pytest.mark.parametrize(
    ("ratio", "adv", "kw", "want_loss", "want_grad"),
    [
        # ρ = 1: σ(0) = ½. Â = 1, τ_pos = 1: ℓ = −(4/1)·½·1 = −2; dℓ/dlogp = −Â·4·¼·1 = −1
        (1.0, 1.0, {}, -2.0, -1.0),
        # Â = −1 uses τ_neg = 1.05: ℓ = −(4/1.05)·½·(−1) = 1.904762; gradient −Â·4·¼ = +1
        (1.0, -1.0, {}, 1.904762, 1.0),
        # ρ = 2, τ = 1: σ(1) = 0.731059; ℓ = −4·0.731059 = −2.924234;
        # gradient −4·σ(1)·(1 − σ(1))·ρ = −4·0.731059·0.268941·2 = −1.572895
        (2.0, 1.0, {}, -2.924234, -1.572895),
        # τ_pos = 10, ρ = 1.2: σ(2) = 0.880797; ℓ = −(4/10)·0.880797 = −0.352319;
        # gradient −4·0.880797·0.119203·1.2 = −0.503969 (damped; GRPO's clip would give 0)
        (1.2, 1.0, {"sapo_tau_pos": 10.0}, -0.352319, -0.503969),
    ],
)
def test_sapo_soft_gate(
    ratio: float, adv: float, kw: dict[str, float], want_loss: float, want_grad: float
) -> None:
    loss, g, m = _grad([[math.log(ratio)]], [[0.0]], [adv], loss="sapo", **kw)
    assert loss == pytest.approx(want_loss, abs=1e-6)
    assert g.item() == pytest.approx(want_grad, abs=1e-6)
    assert m["clip_frac"] == 0.0 and m["ratio_mean"] == pytest.approx(ratio)
    assert m["policy_grad"] == pytest.approx(abs(want_grad), abs=1e-6)  # = |Â|·4σ(1−σ)ρ


@pytest.mark.parametrize("variant", ["grpo", "gspo", "cispo", "sapo"])
def test_off_policy_rows_keep_shaping_under_every_variant(variant: str) -> None:
    # Rectified row: p = 0.4, γ = 0.1, Â = 1 → ℓ = −0.8, dℓ/dlogp = −0.16 (as
    # test_off_policy_token_shaped), whatever the on-policy surrogate; NaN old_logprobs ignored.
    logp = torch.tensor([[math.log(0.4)]], requires_grad=True)
    loss, m = policy_loss(
        logp,
        torch.full((1, 1), float("nan")),
        torch.tensor([1.0]),
        torch.ones(1, 1),
        off_policy=torch.tensor([True]),
        loss=variant,
        clip_low=1.0 if variant == "cispo" else 0.2,
    )
    loss.backward()
    assert loss.item() == pytest.approx(-0.8)
    assert logp.grad is not None and logp.grad.item() == pytest.approx(-0.16)
    assert floats(m)["off_policy_grad_share"] == 1.0


@pytest.mark.parametrize("variant", ["grpo", "gspo", "cispo", "sapo"])
def test_every_variant_is_reinforce_at_ratio_one(variant: str) -> None:
    # On the first pass (π_θ = π_old, ρ = 1 on every token) each variant's gradient is the
    # REINFORCE gradient −Â per token (SAPO: 4σ(0)(1−σ(0)) = 1; CISPO: w = 1; GSPO: s = 1).
    # Rows Â = 1.5 and −0.5, two tokens each, token mean over 4 tokens → −Â/4.
    lp = [[-1.0, -2.0], [-0.3, -0.7]]
    _, g, _ = _grad(lp, lp, [1.5, -0.5], loss=variant, clip_low=1.0 if variant == "cispo" else 0.2)
    torch.testing.assert_close(g, torch.tensor([[-0.375] * 2, [0.125] * 2], dtype=torch.float64))


# ---------------------------------------------------------------- entropy mask and IS weights


def test_entropy_mask_multiplies_the_policy_gradient_not_kl() -> None:
    # One row, ρ = 1 on two tokens, Â = 1; entropy_mask [1, 0]; KL with x = ref − logp = ln 2 on
    # both, β = 0.5 (k3 = 0.306853). Token mean over the 2 tokens (normaliser unchanged):
    # loss = (−1 + 0.5·0.306853 + 0.5·0.306853) / 2 = −0.346574.
    # Gradients: KL ½·β·(1 − e^x) = −0.25 on both; the kept token adds ½·(−Â) = −0.5 → −0.75.
    logp = torch.zeros(1, 2, requires_grad=True)
    loss, m = policy_loss(
        logp,
        torch.zeros(1, 2),
        torch.tensor([1.0]),
        torch.ones(1, 2),
        ref_logprobs=torch.full((1, 2), math.log(2)),
        kl_beta=0.5,
        entropy_mask=torch.tensor([[True, False]]),
    )
    loss.backward()
    assert loss.item() == pytest.approx(-0.346574, abs=1e-6)
    assert logp.grad is not None
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.75, -0.25]]))
    m = floats(m)
    assert m["entropy_mask_share"] == 0.5
    assert m["policy_grad"] == pytest.approx(1.0)  # only the kept token pushes (KL excluded)


def test_is_weights_on_policy_rows_only() -> None:
    # Row 0 on-policy, ρ = 1, Â = 1, weight 0.5 → ℓ = −0.5. Row 1 rectified, p = 0.4 → ℓ = −0.8
    # whatever its weight (NaN here: behaviour probability 1 by definition). Token mean:
    # (−0.5 − 0.8)/2 = −0.65; gradients −0.5·½ = −0.25 and −0.16·½ = −0.08.
    logp = torch.tensor([[-1.0], [math.log(0.4)]], requires_grad=True)
    loss, m = policy_loss(
        logp,
        torch.tensor([[-1.0], [0.0]]),
        torch.tensor([1.0, 1.0]),
        torch.ones(2, 1),
        off_policy=torch.tensor([False, True]),
        is_weights=torch.tensor([[0.5], [float("nan")]]),
    )
    loss.backward()
    assert loss.item() == pytest.approx(-0.65)
    assert logp.grad is not None
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.25], [-0.08]]))
    m = floats(m)
    assert m["is_weight_mean"] == 0.5
    assert m["off_policy_grad_share"] == pytest.approx(0.16 / (0.5 + 0.16))


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"loss": "ppo"}, "loss must be one of"),
        ({"entropy_mask": torch.ones(2, 2)}, r"entropy_mask must have shape \[B, T\]"),
        ({"is_weights": torch.ones(3)}, r"is_weights must have shape \[B, T\]"),
        ({"loss": "sapo", "sapo_tau_neg": 0.0}, "SAPO temperatures must be > 0"),
        ({"loss": "cispo", "clip_high": -0.1}, "clip_high >= 0"),
        ({"loss": "gspo", "clip_low": 1.0}, "clip_low < 1"),
    ],
)
def test_bad_variant_inputs(over: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _call(**over)


def test_cispo_accepts_no_lower_bound() -> None:
    _call(loss="cispo", clip_low=1.0, clip_high=4.0)  # TRL's CISPO epsilon_high=5 is 1 + 4
