"""Numeric answers (integer, float) are the value the box states, never a number picked out of it.

Found in review: ``\\boxed{ second at bottom left. sum = 1 + 6 + 6}`` graded right for gold 6,
because math-verify, failing to parse the whole box as LaTeX, falls back to the last number in it.
A numeric box is now right only when its answer (the whole box, or with an ``=`` the right-hand
side of the LAST ``=``; units and ``\\text{}`` tolerated as before) is a number, or an expression
whose value is the gold. Every expected value is derived by hand in the comment next to it.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ivr.rewards import accuracy_reward, grade_float, grade_integer
from ivr.rewards.expression import _grade_math
from ivr.rewards.grader_worker import shared_worker

_WORKER = shared_worker()


def boxed(s: str) -> str:
    return "<desc>d</desc><think>t</think>\\boxed{" + s + "}"


def _acc(pred: str, gold: str, kind: str = "integer", **cols: object) -> float | None:
    columns = {k: [v] for k, v in cols.items()}
    return accuracy_reward([boxed(pred)], answer=[gold], answer_type=[kind], **columns)[0]


INTEGER = [
    # The review's cases.
    ("foo. sum = 2 + 3", "3", 0.0),  # answer 2 + 3 = 5 ≠ 3 (was 1: math-verify took the last "3")
    ("foo. bar = 2 + 3", "3", 0.0),  # the same, whatever the left-hand side is called
    ("foo. sum = 2 + 3", "5", 1.0),  # 2 + 3 = 5: the left of the last "=" is not the answer
    (" second at bottom left. sum = 1 + 6 + 6", "6", 0.0),  # 1 + 6 + 6 = 13 ≠ 6 (was 1)
    (" second at bottom left. sum = 1 + 6 + 6", "13", 1.0),  # 13 = 13 (was 0)
    ("sum = 1 + 6 + 6", "6", 0.0),  # 13 ≠ 6
    ("sum = 1 + 6 + 6", "13", 1.0),
    ("x = 5", "5", 1.0),  # an assignment is its right-hand side
    ("2 + 3", "5", 1.0),  # an expression is its value (as before)
    ("2 + 3", "3", 0.0),
    # Units and \text{} keep today's verdicts.
    ("5 apples", "5", 1.0),  # a number with a trailing unit word (as before)
    (r"5 \text{ apples}", "5", 1.0),  # the same in \text{} (as before)
    (r"2 \times 6 \text{ cm}", "12", 1.0),  # an expression with a trailing unit (as before)
    ("x = 2 + 3 \\text{ apples}", "5", 1.0),  # 2 + 3 = 5, unit dropped (as before)
    # The last "=" decides, and only its right-hand side.
    ("x = y = 5", "5", 1.0),
    (r"5 \text{ cm} = 50 \text{ mm}", "50", 1.0),  # the box states 50 mm (was 0)
    (r"5 \text{ cm} = 50 \text{ mm}", "5", 0.0),  # ... not 5 (was 1: math-verify's first number)
    ("a = 3, b = 5", "3", 0.0),  # the answer is 5: an earlier value neither helps nor hurts
    ("a = 3, b = 5", "5", 1.0),
    (r"\text{sum} = 2+3", "5", 1.0),
    (r"sum \approx 2 + 3", "5", 1.0),  # \approx reads like "=" (as x \approx 5 already did)
    ("x <= 5", "5", 0.0),  # a relation, not an assignment: no value (as before)
    ("5 = x", "5", 0.0),  # the right-hand side x has no value
    # Words around the numbers: no expression, whatever number could be picked out of them.
    ("a. 2 + 3", "3", 0.0),  # was 1: math-verify took the last "3"
    ("a. 3", "3", 0.0),  # was 1
    ("ab. 12", "12", 0.0),  # was 1
    (r"0 \text{ apples} + 3", "3", 0.0),  # was 1: sympy read 0·apples + 3 = 3
    ("foo bar 5", "5", 0.0),  # as before
    (r"\text{answer: } 5", "5", 0.0),  # as before
    # Trailing periods are punctuation, not part of the expression.
    ("2 + 3.", "5", 1.0),  # 2 + 3 = 5 (was 0: math-verify could not parse "3." and took 3)
    ("2 + 3.", "3", 0.0),  # was 1
]


@pytest.mark.parametrize(("pred", "gold", "expected"), INTEGER)
def test_integer_box_is_its_stated_value(pred: str, gold: str, expected: float) -> None:
    assert _acc(pred, gold) == expected
    assert grade_integer(pred, gold) is bool(expected)


def test_the_review_cases_through_grade_integer() -> None:
    assert grade_integer("foo. sum = 2 + 3", "3") is False  # 2 + 3 = 5 ≠ 3
    assert grade_integer("foo. bar = 2 + 3", "3") is False
    assert grade_integer(r" second at bottom left. sum = 1 + 6 + 6", "6") is False  # 13 ≠ 6


@pytest.mark.parametrize(
    ("pred", "gold", "cols", "expected"),
    [
        ("foo. sum = 2 + 3", "3.0", {}, 0.0),  # 5 ≠ 3
        ("foo. sum = 2 + 3", "5.0", {}, 1.0),
        ("sum = 0.5 + 1", "1.5", {}, 1.0),  # 1.5 = 1.5
        ("y = 3/2", "1.5", {}, 1.0),  # a fraction after "=": 3/2 = 1.5
        ("6/4 = 1.5", "1.5", {}, 1.0),
        ("a. 3", "3.0", {}, 0.0),  # was 1
        ("1.5 m", "1.5", {"unit": "m"}, 1.0),  # as before
        (r"2 \times 0.75 \text{ m}", "1.5", {}, 1.0),  # 2 × 0.75 = 1.5, unit dropped
    ],
)
def test_float_box_is_its_stated_value(pred: str, gold: str, cols: dict, expected: float) -> None:
    assert _acc(pred, gold, "float", **cols) == expected
    assert grade_float(pred, gold, unit=cols.get("unit")) is bool(expected)


def test_unit_column_is_dropped_after_an_expression() -> None:
    # unit "cm": 2 × 6 cm is 12; without the column "cm" is a word, so no value.
    assert _acc(r"2 \times 6 cm", "12", unit="cm") == 1.0
    assert _acc(r"2 \times 6 cm", "12") == 0.0


def test_risky_answers_are_valued_whole_in_the_worker_too() -> None:
    # \binom goes to the worker process; it must parse the box whole there as well.
    assert _WORKER.warm_up()
    assert _acc(r"n = \binom{4}{2}", "6") == 1.0  # C(4, 2) = 6
    assert _acc(r"n = \binom{4}{2}", "4") == 0.0
    # The worker's default (expression) parse takes the last number of a box it cannot parse;
    # the numeric graders' strict parse does not: "a. 3" has no value.
    assert _WORKER.grade("3", "a. 3", 5.0) is True
    assert _WORKER.grade("3", "a. 3", 5.0, latex_only=True) is False
    assert _grade_math(r"\binom{4}{2}", "6", timeout_s=5.0, latex_only=True) is True


def test_expression_answers_are_unchanged() -> None:
    # The expression grader keeps math-verify's own reading (x=3 ≡ 3, sets, ...).
    assert _acc("x=3", "3", "expression") == 1.0
    assert _acc(r"\{2, 1\}", r"\{1, 2\}", "expression") == 1.0


# Property: with an "=" in the box, whatever precedes the last "=" does not change the verdict.
PREFIX = st.text(alphabet="abcdefxyz0123456789 .,;:", max_size=24)
ANSWERS = ["5", "2 + 3", "1 + 6 + 6", r"\frac{10}{2}", "13 apples", "a. 3", "3", "foo 3"]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(PREFIX, st.sampled_from(ANSWERS), st.sampled_from(["3", "5", "6", "13"]))
def test_only_the_last_right_hand_side_counts(prefix: str, answer: str, gold: str) -> None:
    assert grade_integer(prefix + " = " + answer, gold) is grade_integer("x = " + answer, gold)


# Property: words (two letters or more) before a number, with no "=", never make it right.
WORDS = st.from_regex(r"[a-z]{2,6}([ .,;:]{1,2}[a-z]{0,6}){0,3}[ .,;:]{1,2}", fullmatch=True)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(WORDS, st.sampled_from(["3", "12", "2 + 3", r"\frac{10}{2}"]))
def test_words_then_a_number_is_never_right(words: str, tail: str) -> None:
    for gold in ("3", "5", "12"):
        assert grade_integer(words + tail, gold) is False
        assert grade_float(words + tail, gold + ".0") is False
