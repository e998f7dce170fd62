"""The true diagnosis of a failed answer (data/diagnose.py) and the demonstrations built from it.

Row 5 of the seed-0 arith world (level 1) is, by construction of ``make_row``:
  "What is the sum of the digits inside the yellow shapes?"
  scene: a yellow triangle with 2 at top left; a yellow circle with 8 at upper mid-right
  trace: "<desc>…</desc> <think>yellow shapes: 2 at top left, 8 at upper mid-right.
          sum = 2 + 8 = 10.</think> \\boxed{10}"
Each case below corrupts one step of that trace by hand; the expected critique names exactly that
step, in the words of the module's templates.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ivr.data.demos import trace
from ivr.data.diagnose import diagnose, own_failure_demos
from ivr.data.synth import generate_dataset
from ivr.data.world import make_row
from ivr.demo.coldstart import stage2_rows, summarise_mined


@pytest.fixture(scope="module")
def row5():
    row, _ = make_row(5, "arith", 1)
    good = trace(row["query"], row["scene"])
    assert "sum = 2 + 8 = 10." in good and good.endswith("\\boxed{10}")  # the docstring's row
    return row, good


def _wrong(good: str, *pairs: tuple[str, str]) -> str:
    for a, b in pairs:
        assert a in good, a
        good = good.replace(a, b)
    return good


CASES = [
    (  # arithmetic slip, description and listing right
        [("2 + 8 = 10", "2 + 8 = 11"), ("{10}", "{11}")],
        "reasoning",
        "The reasoning adds 2 + 8 = 11, but 2 + 8 = 10.",
    ),
    (  # a yellow shape of the description left out of the sum
        [("2 at top left, 8 at upper mid-right", "8 at upper mid-right"), ("2 + 8 = 10", "8")]
        + [("{10}", "{8}")],
        "reasoning",
        "The reasoning misses the 2 at top left, a yellow shape in the description.",
    ),
    (  # the description says 2, the reasoning copies 3
        [("2 at top left,", "3 at top left,"), ("2 + 8 = 10", "3 + 8 = 11"), ("{10}", "{11}")],
        "reasoning",
        "The reasoning reads the digit at top left as 3, but the description says 2.",
    ),
    (  # a perception error reasoned consistently: the first wrong step is the description
        [
            ("yellow triangle with 2", "yellow triangle with 3"),
            ("2 at top left,", "3 at top left,"),
            ("2 + 8 = 10", "3 + 8 = 11"),
            ("{10}", "{11}"),
        ],
        "perception",
        "The description says the digit in the yellow triangle at top left is 3, but the image "
        "shows 2.",
    ),
    (  # an object missing from the description
        [
            ("a yellow triangle with 2 at top left; ", ""),
            ("2 at top left, ", ""),
            ("2 + 8 = 10", "8"),
            ("{10}", "{8}"),
        ],
        "perception",
        "The description misses the yellow triangle with 2 at top left, which the image shows.",
    ),
    (  # right reasoning, wrong box
        [("{10}", "{12}")],
        "answer",
        "The final answer 12 does not match the reasoning, which gives 10.",
    ),
]


@pytest.mark.parametrize("edits,kind,critique", CASES)
def test_first_wrong_step_is_named(row5, edits, kind, critique) -> None:
    row, good = row5
    dx = diagnose(_wrong(good, *edits), row)
    assert dx is not None and (dx.kind, dx.critique) == (kind, critique)


def test_right_answer_has_no_diagnosis_and_critiques_never_announce_one(row5) -> None:
    row, good = row5
    assert diagnose(good, row) is None
    for edits, _, _ in CASES:
        crit = diagnose(_wrong(good, *edits), row).critique
        assert "answer is" not in crit  # localises the error; never states the gold answer


def test_irrelevant_description_error_is_not_blamed() -> None:
    # Row 4: "sum of the digits inside the blue shapes"; a yellow 1 and a green 7 are irrelevant.
    row, _ = make_row(4, "arith", 1)
    good = trace(row["query"], row["scene"])
    assert "a yellow triangle with 1 at top left" in good and good.endswith("\\boxed{2}")
    bad = good.replace("yellow triangle with 1", "yellow triangle with 4").replace("{2}", "{3}")
    assert diagnose(bad, row).kind == "answer"  # the box is what is wrong, not the yellow digit
    extra = good.replace(
        "blue shapes: 2 at lower right. sum = 2.",
        "blue shapes: 2 at lower right, 1 at top left. sum = 2 + 1 = 3.",
    ).replace("{2}", "{3}")
    assert diagnose(extra, row).critique == (
        "The reasoning includes the 1 at top left, but the description says that shape is a "
        "yellow triangle, not a blue shape."
    )


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_never_raises_on_model_output(text) -> None:
    row, _ = make_row(5, "arith", 1)
    dx = diagnose(text, row)
    assert dx is None or dx.kind in ("perception", "reasoning", "answer", "format")


def test_demonstrations_from_own_failures(row5) -> None:
    row, good = row5
    bad = _wrong(good, ("2 + 8 = 10", "2 + 8 = 11"), ("{10}", "{11}"))
    demos = own_failure_demos([row, row], [bad, good], description_share=1.0)
    # one failure (the right answer is skipped) → critique + rectify, in image AND description
    # context (a reasoning error is diagnosable from one's own description)
    assert [(d["kind"], d["context"]) for d in demos] == [
        ("critique", "image"),
        ("rectify", "image"),
        ("critique", "description"),
        ("rectify", "description"),
    ]
    crit, rect = demos[0], demos[1]
    assert crit["messages"][1]["content"] == "The reasoning adds 2 + 8 = 11, but 2 + 8 = 10."
    assert rect["messages"][1]["content"] == good  # the rectification is the TRUE trace
    assert "Critique: The reasoning adds" in rect["messages"][0]["content"][1]["text"]
    desc_user = demos[2]["messages"][0]["content"][0]["text"]
    assert demos[2]["images"] == [] and desc_user.startswith("Scene: a yellow triangle with 2")
    # a perception error is never written in description context (not diagnosable there)
    perc = _wrong(good, ("yellow triangle with 2", "yellow triangle with 3"), ("{10}", "{11}"))
    assert {d["context"] for d in own_failure_demos([row], [perc], description_share=1.0)} == {
        "image"
    }


def test_stage2_mix_and_mined_summary(tmp_path) -> None:
    data = generate_dataset(tmp_path / "w", n=40, n_test=8, seed=0, tasks=["arith"], levels=[1])
    rows = [json.loads(x) for x in (data / "train.jsonl").read_text().splitlines()][:4]
    good = [trace(r["query"], r["scene"]) for r in rows]
    wrong = [g.replace("\\boxed{", "\\boxed{9") for g in good]  # every box becomes wrong
    mined = [
        {"row": rows[0], "responses": [good[0], good[0]]},  # solved
        {"row": rows[1], "responses": [good[1], wrong[1]]},  # one failure
        {"row": rows[2], "responses": [wrong[2], wrong[2]]},  # all fail
        {"row": rows[3], "responses": [wrong[3], "garbage"]},  # all fail, one is format
    ]
    s = summarise_mined(mined)
    # 3 right of 8 samples; prompts 2 and 3 have no right sample; failures: 4 answer, 1 format
    assert s["sampled_accuracy"] == 3 / 8 and s["all_fail_share"] == 2 / 4
    assert s["failure_kinds"] == {"answer": 4 / 5, "format": 1 / 5}
    out = stage2_rows(data, mined, seed=0)
    kinds = [r["kind"] for r in out]
    # 3 prompts with a failure, 1 failure each → 3 critiques + 3 rectifications (+ description
    # copies drawn at random for reasoning/answer errors), as many answers, a quarter desc-only
    own = kinds.count("critique") + kinds.count("rectify")
    assert kinds.count("critique") >= 3 and kinds.count("answer") == own
    assert kinds.count("desc_only") == int(0.25 * own)
    assert out == stage2_rows(data, mined, seed=0)  # seeded


def test_a_misplaced_digit_is_not_a_perception_error_for_a_sum(row5) -> None:
    # The 8 is put at the wrong cell in <desc> and <think> but read right; the slip is 2 + 8 = 11.
    row, good = row5
    bad = _wrong(
        good,
        ("8 at upper mid-right</desc>", "8 at bottom right</desc>"),
        ("8 at upper mid-right.", "8 at bottom right."),
        ("2 + 8 = 10", "2 + 8 = 11"),
        ("{10}", "{11}"),
    )
    assert diagnose(bad, row).critique == "The reasoning adds 2 + 8 = 11, but 2 + 8 = 10."


def test_right_answers_in_another_spelling_are_right(row5) -> None:
    # The reward's grader reads 010 and 10.0 as 10: no critique may be written for them.
    row, good = row5
    for box in ("010", "10.0", " 10 "):
        assert diagnose(good.replace("\\boxed{10}", f"\\boxed{{{box}}}"), row) is None


def test_swapped_digits_of_two_matching_shapes_are_not_a_perception_error(row5) -> None:
    # The desc puts 8 in the triangle and 2 in the circle (both yellow): the sum reads {2, 8}
    # either way, so the first wrong step is the arithmetic, not the description.
    row, good = row5
    bad = _wrong(
        good,
        ("triangle with 2", "triangle with 8"),
        ("circle with 8", "circle with 2"),
        ("2 at top left, 8 at upper mid-right", "8 at top left, 2 at upper mid-right"),
        ("2 + 8 = 10", "8 + 2 = 11"),
        ("{10}", "{11}"),
    )
    assert diagnose(bad, row).critique == "The reasoning adds 8 + 2 = 11, but 8 + 2 = 10."


def test_description_context_rectification_reasons_from_the_own_description() -> None:
    # Row 4 asks for the blue shapes; its yellow triangle (1 at top left) is irrelevant. The
    # failure misreads that yellow digit (irrelevant) and slips the box: in description context
    # the target must keep the OWN (wrong, irrelevant) yellow digit — the policy cannot know the
    # true one without the image — while the image-context target is the true trace.
    row, _ = make_row(4, "arith", 1)
    good = trace(row["query"], row["scene"])
    bad = good.replace("yellow triangle with 1", "yellow triangle with 4").replace("{2}", "{3}")
    demos = own_failure_demos([row], [bad], description_share=1.0)
    rect = {d["context"]: d["messages"][1]["content"] for d in demos if d["kind"] == "rectify"}
    assert rect["image"] == good
    assert rect["description"] == good.replace("yellow triangle with 1", "yellow triangle with 4")
