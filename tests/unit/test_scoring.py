"""Scorer: user rewards that return the wrong thing are named, not silently coerced."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ivr.rewards.scorer import Scorer
from ivr.types import Sample

SAMPLES = [Sample(id=str(i), question="q", answer="2", answer_type="integer") for i in range(3)]
COMPLETIONS = [r"\boxed{2}", r"\boxed{3}", "no box"]


def test_user_reward_values_are_added_with_their_weight() -> None:
    def bonus(completions, **_):
        return [np.float32(0.5), None, 1]

    out = Scorer(format_weight=0.0, extra=((bonus, 2.0),))(SAMPLES, COMPLETIONS)
    # accuracy 1, 0, 0 (λ = 0) plus 2 × (0.5, —, 1)
    assert [s.reward for s in out] == [2.0, 0.0, 2.0]
    assert out[0].components["bonus"] == 0.5 and "bonus" not in out[1].components


@pytest.mark.parametrize(
    ("returned", "match"),
    [
        (0.5, r"reward my_reward returned float 0\.5; it must return a list"),
        ("0.5", r"reward my_reward returned str '0\.5'; it must return a list"),
        (["1", "0", "1"], r"reward my_reward returned '1' \(str\) for completion 0"),
        ([1.0, {"a": 1}, 0.0], r"reward my_reward returned \{'a': 1\} \(dict\) for completion 1"),
        ([1.0, 0.0], r"reward my_reward returned 2 values for 3 completions"),
    ],
)
def test_a_bad_return_value_names_the_reward(returned, match) -> None:
    def my_reward(completions, **_):
        return returned

    with pytest.raises(ValueError, match=match) as err:  # today: TypeError, or coerced silently
        Scorer(extra=((my_reward, 1.0),))(SAMPLES, COMPLETIONS)
    assert type(err.value).__name__ == "RewardError"


def test_nan_passes_through_for_the_trainer_to_drop() -> None:
    def nan_reward(completions, **_):
        return [float("nan")] * len(completions)

    out = Scorer(extra=((nan_reward, 1.0),))(SAMPLES, COMPLETIONS)
    assert all(math.isnan(s.reward) and math.isnan(s.components["nan_reward"]) for s in out)
