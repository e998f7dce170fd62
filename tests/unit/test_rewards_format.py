"""format_reward and the combined reward r = λ·format + (1−λ)·accuracy (IVR-R1 A.1)."""

from __future__ import annotations

import pytest

from ivr.rewards import (
    CombinedReward,
    combined_reward,
    format_reward,
    format_score,
    make_combined_reward,
    make_format_reward,
)

GOOD = "<desc>two red squares</desc>\n<think>count them: 2</think>\n\\boxed{2}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD, 1.0),
        ("<desc>a</desc><think>b</think>\\boxed{2}", 1.0),  # no whitespace needed
        ("  \n" + GOOD + "  \n", 1.0),  # surrounding whitespace
        ("<desc>a</desc><think>b</think>The answer is \\boxed{2}.", 1.0),  # lead-in text, period
        ("<desc>a</desc><think>b</think>$\\boxed{2}$", 1.0),  # math mode around the box
        ("<desc>a</desc><think>b</think>\\boxed{\\frac{1}{2}}", 1.0),  # nested braces
        ("<think>b</think><desc>a</desc>\\boxed{2}", 0.0),  # wrong order
        ("<desc>a</desc>\\boxed{2}", 0.0),  # no think block
        ("<think>b</think>\\boxed{2}", 0.0),  # no desc block
        ("<desc>a</desc><think>b</think>", 0.0),  # no box
        ("<desc>a</desc><think>b</think>\\boxed{}", 0.0),  # empty box
        ("<desc>a</desc><think>b</think>\\boxed{2", 0.0),  # unbalanced box
        ("<desc>a</desc><think>b</think>\\boxed{2} and more text", 0.0),  # box is not final
        ("<desc></desc><think>b</think>\\boxed{2}", 0.0),  # empty description
        ("<desc>a</desc><think>  </think>\\boxed{2}", 0.0),  # blank reasoning
        ("Sure! <desc>a</desc><think>b</think>\\boxed{2}", 0.0),  # text before the first block
        ("<desc>a</desc>x<think>b</think>\\boxed{2}", 0.0),  # text between blocks
        ("<desc>a</desc><think>b</think><think>c</think>\\boxed{2}", 0.0),  # repeated block
        ("<desc>a<think>b</think></desc>\\boxed{2}", 0.0),  # nested blocks
        ("<desc>a</desc><think>b \\boxed{1}</think>", 0.0),  # box only inside think
        ("<desc>a</desc><think>b \\boxed{1}</think> \\boxed{2}", 1.0),  # final box after think
        ("", 0.0),
    ],
)
def test_format_score(text: str, expected: float) -> None:
    assert format_score(text) == expected


def test_format_reward_contract() -> None:
    out = format_reward(
        [
            GOOD,
            [{"role": "assistant", "content": GOOD}],
            [{"role": "assistant", "content": [{"type": "text", "text": GOOD}]}],
            None,
            3,
        ],
        answer=["2"] * 5,  # columns are ignored
        progress=0.5,
    )
    assert out == [1.0, 1.0, 1.0, 0.0, 0.0]


def test_configurable_tags() -> None:
    think_only = make_format_reward(("think",))
    assert think_only(["<think>x</think>\\boxed{1}", GOOD]) == [1.0, 0.0]
    reasoning = make_format_reward(("reasoning", "answer_plan"))
    assert reasoning(["<reasoning>r</reasoning> <answer_plan>p</answer_plan> \\boxed{1}"]) == [1.0]
    only_box = make_format_reward(())
    assert only_box(["\\boxed{1}", "text \\boxed{1}", "1"]) == [1.0, 1.0, 0.0]
    assert make_format_reward().__name__ == "format_reward"
    with pytest.raises(ValueError, match="tags"):
        make_format_reward(("bad tag",))
    with pytest.raises(ValueError, match="tags"):
        make_format_reward(("think", "think"))


# --------------------------------------------------------------------------------------------
# Combined reward
# --------------------------------------------------------------------------------------------


def test_combined_reward_values_and_components() -> None:
    completions = [
        GOOD,  # format 1, right -> 0.1·1 + 0.9·1 = 1.0
        "\\boxed{2}",  # format 0, right -> 0.9
        GOOD.replace("{2}", "{3}"),  # format 1, wrong -> 0.1
        "nothing",  # format 0, wrong -> 0.0
        "[]",  # a localization row: accuracy None -> combined None
    ]
    cols = {"answer": ["2", "2", "2", "2", None], "answer_type": [None, None, None, None, "boxes"]}
    parts = combined_reward.components(completions, **cols)
    assert parts["format"] == [1.0, 0.0, 1.0, 0.0, 0.0]
    assert parts["accuracy"] == [1.0, 1.0, 0.0, 0.0, None]
    assert parts["reward"] == pytest.approx([1.0, 0.9, 0.1, 0.0, None])  # type: ignore[arg-type]
    assert combined_reward(completions, **cols) == parts["reward"]
    assert combined_reward.__name__ == "combined_reward"


@pytest.mark.parametrize(
    ("lam", "expected"), [(0.0, [1.0, 1.0, 0.0]), (0.5, [1.0, 0.5, 0.5]), (1.0, [1.0, 0.0, 1.0])]
)
def test_lambda(lam: float, expected: list[float]) -> None:
    # rows: (format 1, acc 1), (format 0, acc 1), (format 1, acc 0); r = lam·f + (1 − lam)·a
    r = make_combined_reward(lam=lam)
    out = r([GOOD, "\\boxed{2}", GOOD.replace("{2}", "{3}")], answer=["2"] * 3)
    assert out == pytest.approx(expected)


def test_combined_with_custom_tags_and_accuracy() -> None:
    def always_right(completions, **_):
        return [1.0] * len(completions)

    r = make_combined_reward(lam=0.2, tags=("think",), accuracy_fn=always_right, name="mine")
    assert r(["<think>t</think>\\boxed{x}", "x"]) == pytest.approx([1.0, 0.8])
    assert r.__name__ == "mine"
    with pytest.raises(ValueError, match="lam"):
        CombinedReward(lam=1.5)
