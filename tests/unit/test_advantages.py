"""group_advantages: expected values derived by hand in the comments."""

from __future__ import annotations

import math

import pytest
import torch

from ivr.rl import group_advantages


def test_one_right_answer_in_four_unbiased_std() -> None:
    # r = [1, 0, 0, 0]: mean = 0.25; deviations [.75, -.25, -.25, -.25]
    # unbiased std = sqrt((.75² + 3·.25²) / (4 − 1)) = sqrt((.5625 + .1875) / 3) = sqrt(.25) = 0.5
    # Â = deviations / 0.5 = [1.5, -0.5, -0.5, -0.5]   (the biased std, 0.433, would give 1.732)
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), 4, eps=0.0)
    torch.testing.assert_close(adv, torch.tensor([1.5, -0.5, -0.5, -0.5]))


def test_eps_is_added_to_std() -> None:
    # Â_0 = 0.75 / (0.5 + 0.25) = 1.0 with eps = 0.25
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), 4, eps=0.25)
    assert adv[0].item() == pytest.approx(1.0)


def test_groups_are_normalised_independently() -> None:
    # group 0 = [1, 0]: mean .5, unbiased std = sqrt((.25 + .25) / 1) = 1/√2 → Â = ±.5·√2 = ±0.7071
    # group 1 = [0, 3, 3, 0] (G=2 → [0, 3], [3, 0]): mean 1.5, std = sqrt(2·2.25/1) = 1.5·√2
    #   → Â = ∓1.5 / (1.5·√2) = ∓0.7071: the scale of a group's rewards does not matter.
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 3.0, 3.0, 0.0]), 2, eps=0.0)
    h = 1 / math.sqrt(2)
    torch.testing.assert_close(adv, torch.tensor([h, -h, -h, h, h, -h]))


def test_dr_grpo_no_scaling() -> None:
    # scale=False: Â = r − mean = [1, 0, 0, 0] − 0.25 = [.75, -.25, -.25, -.25]
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), 4, scale=False)
    torch.testing.assert_close(adv, torch.tensor([0.75, -0.25, -0.25, -0.25]))


@pytest.mark.parametrize("scale", [True, False])
def test_zero_variance_group_is_exactly_zero(scale: bool) -> None:
    # 0.1 is not representable: float32 mean of [0.1]*3 can differ from 0.1 by an ulp, which
    # divided by eps would give a spurious ±0.x advantage. The contract is exactly 0.
    rewards = torch.tensor([0.1, 0.1, 0.1, 1.0, 0.0, 1.0])
    adv = group_advantages(rewards, 3, scale=scale)
    assert torch.equal(adv[:3], torch.zeros(3))
    assert adv[3:].abs().sum() > 0


def test_group_size_one_gives_zeros() -> None:
    # unbiased std of one value is undefined (NaN in torch); no peers, no signal → 0.
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.5]), 1)
    assert torch.equal(adv, torch.zeros(3))


def test_integer_rewards_become_float() -> None:
    adv = group_advantages(torch.tensor([1, 0]), 2)
    assert adv.dtype == torch.float32
    assert adv[0].item() == pytest.approx(1 / math.sqrt(2), abs=1e-5)


def test_group_size_must_divide_n() -> None:
    with pytest.raises(ValueError, match=r"\(6\).*group_size \(4\)"):
        group_advantages(torch.zeros(6), 4)


def test_nan_reward_names_its_index() -> None:
    rewards = torch.tensor([0.0, 1.0, 1.0, float("nan")])
    with pytest.raises(ValueError, match=r"index 3 \(group 1\) is nan"):
        group_advantages(rewards, 2)


@pytest.mark.parametrize(
    ("rewards", "group_size", "match"),
    [
        (torch.zeros(2, 2), 2, "1-D"),
        (torch.zeros(4), 0, "group_size must be >= 1"),
        (torch.tensor([0.0, float("inf")]), 2, "index 1"),
    ],
)
def test_bad_inputs(rewards: torch.Tensor, group_size: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        group_advantages(rewards, group_size)
