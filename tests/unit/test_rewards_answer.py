"""Answer grading and accuracy_reward: table tests, the TRL contract, and the per-call bound.

Every expected value is derived by hand in the comment next to it.
"""

from __future__ import annotations

import threading
import time

import pytest

from ivr.rewards import (
    accuracy_reward,
    completion_text,
    extract_boxed,
    grade_answer,
    grade_expression,
    infer_answer_type,
    parse_number,
)
from ivr.rewards.expression import _cheap_enough
from ivr.rewards.grader_worker import shared_worker

_WORKER = shared_worker()


def boxed(s: str) -> str:
    return "<desc>d</desc><think>t</think>\\boxed{" + s + "}"


# --------------------------------------------------------------------------------------------
# extract_boxed / completion_text
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"\boxed{5}", "5"),
        (r"\boxed{1} then \boxed{2}", "2"),  # the LAST box
        (r"\boxed {7}", "7"),  # space before the brace
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),  # nested braces
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),  # escaped braces do not count
        (r"\boxed{a{b}c}", "a{b}c"),
        (r"\boxed{\boxed{3}}", "3"),  # the last \boxed starts inside the first
        (r"\boxed{}", ""),
        (r"\boxed{3", None),  # unbalanced: truncated answer
        (r"\boxed{1} and \boxed{2", None),  # last one unbalanced -> None, not the earlier box
        ("no box here", None),
        (r"\boxed3", None),  # no brace: not a box
    ],
)
def test_extract_boxed(text: str, expected: str | None) -> None:
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("plain", "plain"),
        ([{"role": "assistant", "content": "a"}], "a"),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "a"),
        (
            [{"role": "assistant", "content": "a1"}, {"role": "assistant", "content": "a2"}],
            "a2",
        ),  # the last assistant message
        (
            [
                {
                    "role": "assistant",
                    "content": [{"type": "text", "text": "x"}, {"type": "text", "text": "y"}],
                }
            ],
            "xy",
        ),
        (
            [{"role": "assistant", "content": [{"type": "image"}, {"type": "text", "text": "z"}]}],
            "z",
        ),
        ([{"content": "no role"}], "no role"),
        ([], ""),
        (None, ""),
        (42, ""),
    ],
)
def test_completion_text(completion: object, expected: str) -> None:
    assert completion_text(completion) == expected


# --------------------------------------------------------------------------------------------
# Per-type tables: (prediction inside \boxed{}, gold, extra columns, expected)
# --------------------------------------------------------------------------------------------

INTEGER = [
    ("12", "12", {}, 1.0),
    ("12.0", "12", {}, 1.0),  # same value
    ("12.5", "12", {}, 0.0),
    ("13", "12", {}, 0.0),
    ("-3", "-3", {}, 1.0),
    ("1,000", "1000", {}, 1.0),  # thousands separator
    ("x = 12", "12", {}, 1.0),  # an assignment is its right-hand side
    ("12 cm", "12", {"unit": "cm"}, 1.0),  # unit given by the dataset
    (r"12\text{ cm}", "12", {}, 1.0),  # plain trailing unit, no unit column
    ("12 cm^2", "12", {}, 1.0),  # exponent of a unit is not a digit of the answer
    ("12 apples", "12", {}, 1.0),
    ("12%", "12", {}, 1.0),
    ("$12", "12", {}, 1.0),
    ("12 + 5", "12", {}, 0.0),  # not a number with a unit: an expression (= 17)
    ("2 pi", "2", {}, 0.0),  # pi is not a unit
    (r"\frac{24}{2}", "12", {}, 1.0),  # falls back to math-verify: 24/2 = 12
    ("twelve", "12", {}, 0.0),
    ("", "12", {}, 0.0),
]

FLOAT = [
    ("1.54", "1.5", {"precision": 1}, 1.0),  # round(1.54, 1) = 1.5
    ("1.56", "1.5", {"precision": 1}, 0.0),  # round(1.56, 1) = 1.6
    ("1.25", "1.3", {"precision": 1}, 1.0),  # half-up on the written digits: 1.25 -> 1.3
    ("1.2499", "1.25", {"precision": 2}, 1.0),  # 1.2499 -> 1.25
    ("3.14159", "3.14", {}, 1.0),  # no precision: gold has 2 decimals -> 3.14
    ("3.15", "3.14", {}, 0.0),
    ("0.5", "0.50", {"precision": 2.0}, 1.0),  # MathVista stores precision as a float
    (r"\frac{3}{2}", "1.5", {}, 1.0),  # 3/2 = 1.5 exactly
    ("3/4", "0.75", {}, 1.0),
    ("2.5 m", "2.5", {"unit": "m"}, 1.0),
    ("abc", "2.5", {}, 0.0),
]

EXPRESSION = [
    (r"\frac{1}{2}", "0.5", 1.0),
    ("1/2", r"\frac{1}{2}", 1.0),
    (r"\sqrt{8}", r"2\sqrt{2}", 1.0),  # sqrt(8) = 2 sqrt(2)
    (r"\frac{\sqrt{3}}{2}", r"\frac{\sqrt3}{2}", 1.0),
    (r"\{2, 1\}", r"\{1, 2\}", 1.0),  # sets are unordered
    ("(1, 2)", "(1,2)", 1.0),
    ("[0, 1)", "[0,1)", 1.0),  # half-open interval
    ("[0, 1]", "[0,1)", 0.0),  # closed is not half-open
    (r"30^\circ", "30", 1.0),  # degrees
    (r"50\%", "0.5", 1.0),  # percent
    ("x=3", "3", 1.0),  # equation vs value
    ("3", "x=3", 1.0),
    ("x^2+2x+1", "(x+1)^2", 1.0),  # symbolic equality
    (r"\frac{1}{3}", "0.5", 0.0),
    (r"\binom{5}{2}", "10", 1.0),  # \binom is graded in the worker process: C(5,2) = 10
    ("+".join(["1"] * 120), "120", 1.0),  # long (> 200 chars): worker process too
]

CHOICE = [
    # (prediction, gold, choices, expected)
    ("B", "B", None, 1.0),
    ("(B)", "B", None, 1.0),
    (r"\text{B}", "B", None, 1.0),
    (r"\textbf{(B)}", "B", None, 1.0),
    ("B.", "B", None, 1.0),
    ("B)", "B", None, 1.0),
    ("B. Paris", "B", None, 1.0),
    ("Option B", "B", None, 1.0),
    ("b", "B", None, 1.0),  # a lone lower-case letter
    ("A", "B", None, 0.0),
    ("Bob", "B", None, 0.0),  # a word starting with B is not option B
    ("B", "Paris", ["London", "Paris"], 1.0),  # gold is the option text (MathVista): Paris = B
    ("paris", "Paris", ["London", "Paris"], 1.0),  # the option text itself
    ("A", "Paris", ["London", "Paris"], 0.0),
    ("C", "B", ["x", "y"], 0.0),  # only 2 options: C is not a valid letter
    ("(B) 4", "4", ["3", "4", "5"], 1.0),
    ("4.0", "4", ["3", "4", "5"], 1.0),  # numeric option text compared by value
    ("B", "b", ["3", "4"], 1.0),  # gold letter in lower case
]

TEXT = [
    ("Yes", "yes", 1.0),
    ("yes.", "Yes", 1.0),  # punctuation
    ("  New   York ", "new york", 1.0),  # whitespace
    ("New-York", "New York", 1.0),  # punctuation between words becomes a space
    (r"\text{blue}", "blue", 1.0),
    ("2.50", "2.5", 1.0),  # numbers compare by value (the '.' is not dropped)
    ("no", "yes", 0.0),
    ("the red one", "red", 0.0),
]


def _acc(pred: str, gold: object, **cols: object) -> float | None:
    return accuracy_reward([boxed(pred)], answer=[gold], **{k: [v] for k, v in cols.items()})[0]


@pytest.mark.parametrize(("pred", "gold", "cols", "expected"), INTEGER)
def test_integer(pred: str, gold: str, cols: dict, expected: float) -> None:
    assert _acc(pred, gold, answer_type="integer", **cols) == expected


@pytest.mark.parametrize(("pred", "gold", "cols", "expected"), FLOAT)
def test_float(pred: str, gold: str, cols: dict, expected: float) -> None:
    assert _acc(pred, gold, answer_type="float", **cols) == expected


@pytest.mark.parametrize(("pred", "gold", "expected"), EXPRESSION)
def test_expression(pred: str, gold: str, expected: float) -> None:
    assert _acc(pred, gold, answer_type="expression") == expected


@pytest.mark.parametrize(("pred", "gold", "choices", "expected"), CHOICE)
def test_choice(pred: str, gold: str, choices: list[str] | None, expected: float) -> None:
    assert _acc(pred, gold, answer_type="choice", choices=choices) == expected


@pytest.mark.parametrize(("pred", "gold", "expected"), TEXT)
def test_text(pred: str, gold: str, expected: float) -> None:
    assert _acc(pred, gold, answer_type="text") == expected


@pytest.mark.parametrize(
    ("answer", "choices", "expected"),
    [
        ("12", None, "integer"),
        (12, None, "integer"),
        ("1,000", None, "integer"),
        ("-4", None, "integer"),
        ("0.5", None, "float"),
        (2.5, None, "float"),
        (r"\frac{1}{2}", None, "expression"),
        ("3/4", None, "expression"),
        ("x=3", None, "expression"),
        ("[1, 2]", None, "expression"),
        ("B", None, "choice"),
        ("(C)", None, "choice"),
        ("Paris", ["London", "Paris"], "choice"),  # choices given -> choice
        ("Paris", None, "text"),
        ("yes", None, "text"),
    ],
)
def test_infer_answer_type(answer: object, choices: list[str] | None, expected: str) -> None:
    assert infer_answer_type(answer, choices) == expected


def test_inferred_types_grade_like_declared_ones() -> None:
    # No answer_type column at all: 12 (integer), 0.5 (float), 1/2 (expression), B (choice).
    out = accuracy_reward(
        [boxed("12 cm"), boxed("0.50"), boxed("0.5"), boxed("(B)"), boxed("Paris.")],
        answer=["12", "0.5", r"\frac{1}{2}", "B", "paris"],
    )
    assert out == [1.0, 1.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("12", "12"),
        ("-0.5", "-0.5"),
        ("1,234.5", "1234.5"),
        (r"30^\circ", "30"),
        ("x = 7", "7"),
        ("3 x 4", None),
    ],
)
def test_parse_number(text: str, expected: str | None) -> None:
    value = parse_number(text)
    assert (None if value is None else str(value)) == expected


# --------------------------------------------------------------------------------------------
# The TRL contract
# --------------------------------------------------------------------------------------------


def test_contract_shapes_none_and_extra_kwargs() -> None:
    completions = [
        boxed("4"),  # string
        [{"role": "assistant", "content": boxed("4")}],  # chat messages
        [{"role": "assistant", "content": [{"type": "text", "text": boxed("4")}]}],  # content parts
        "[{'bbox_2d': [0, 0, 1, 1]}]",  # a localization row in a multi-task batch
        "no box",  # no box -> 0
        boxed("4"),  # no answer in this row -> not applicable
    ]
    out = accuracy_reward(
        completions,
        answer=["4", "4", "4", None, "4", None],
        answer_type=["integer", None, "integer", "boxes", "integer", None],
        prompts=["p"] * 6,  # extra TRL kwargs are ignored
        progress=0.3,
        trainer_state=object(),
    )
    assert out == [1.0, 1.0, 1.0, None, 0.0, None]


def test_scalar_columns_broadcast_and_flat_choices() -> None:
    # One flat list of option strings is the same options for every row.
    out = accuracy_reward([boxed("A"), boxed("B")], answer=["3", "3"], choices=["3", "4"])
    assert out == [1.0, 0.0]


def test_options_make_a_row_multiple_choice_whatever_its_declared_type() -> None:
    # MathVista: answer_type describes the option's content ("text", "integer"); the model
    # answers with a letter. (B) is "4" -> right; "5" is option C -> wrong.
    out = accuracy_reward(
        [boxed("(B)"), boxed("5"), boxed("B")],
        answer=["4", "4", "blue"],
        answer_type=["integer", "integer", "text"],
        choices=[["3", "4", "5"], ["3", "4", "5"], ["red", "blue"]],
    )
    assert out == [1.0, 0.0, 1.0]


def test_json_string_choices_per_row() -> None:
    out = accuracy_reward(
        [boxed("B"), boxed("A")], answer=["4", "x"], choices=['["3", "4"]', '["x", "y"]']
    )
    assert out == [1.0, 1.0]


def test_ground_truth_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match="answer_type"):
        accuracy_reward([boxed("1")], answer=["1"], answer_type=["bogus"])
    with pytest.raises(ValueError, match="answer"):
        accuracy_reward([boxed("1")], answer=["one"], answer_type=["integer"])
    with pytest.raises(ValueError, match="answer="):
        accuracy_reward([boxed("A")], answer=["Rome"], choices=[["London", "Paris"]])
    with pytest.raises(ValueError, match="precision"):
        accuracy_reward([boxed("1")], answer=["1.0"], answer_type=["float"], precision=[1.5])
    with pytest.raises(ValueError, match="'answer'"):
        accuracy_reward([boxed("1"), boxed("2")], answer=["1"])


def test_malformed_predictions_score_zero() -> None:
    junk = [
        r"\boxed{",
        r"\boxed{}}}",
        r"\boxed{\frac{}{",
        r"\boxed{" + "{" * 500 + "}" * 500 + "}",
        "\x00",
    ]
    for kind, gold in [
        ("integer", "3"),
        ("float", "0.5"),
        ("expression", "x"),
        ("choice", "A"),
        ("text", "a"),
    ]:
        assert accuracy_reward(junk, answer=[gold] * 5, answer_type=[kind] * 5) == [0.0] * 5


def test_grade_answer_returns_none_when_not_applicable() -> None:
    assert grade_answer("3", None) is None
    assert grade_answer("3", "3", "boxes") is None
    assert grade_answer(None, "3") is False


# --------------------------------------------------------------------------------------------
# The per-call bound: pathological LaTeX cannot hang a training step, on any thread
# --------------------------------------------------------------------------------------------

TOWER = "2^{2^{2^{2^{2^{2^{2}}}}}}"  # 2↑↑7: evaluating it would never finish


@pytest.fixture
def warm_worker() -> None:
    """One-off costs are not what the bound is about: the worker's start (~0.5-1 s) and the first
    in-process math-verify call (imports, parser tables) happen here, untimed."""
    assert _WORKER.warm_up()
    assert grade_expression("x + 1/2", "0.5 + x")


def _timed(fn, *, in_thread: bool) -> tuple[object, float]:
    result: dict[str, object] = {}
    t0 = time.perf_counter()
    if in_thread:
        th = threading.Thread(target=lambda: result.setdefault("v", fn()))
        th.start()
        th.join(30)
    else:
        result["v"] = fn()
    return result.get("v"), time.perf_counter() - t0


@pytest.mark.parametrize("in_thread", [False, True], ids=["main-thread", "worker-thread"])
@pytest.mark.parametrize(
    "pred",
    [
        TOWER,
        "10^{10^{10}}",  # 10^10 digits
        "(10^{9999})^{9999}",  # passes the string screen, refused by the magnitude bound
        "2**2**2**2**2**2**2",  # plain-text tower
        "(10^{9})!",  # a factorial with 10^9 in it
        r"x = " + TOWER,
    ],
)
def test_power_towers_return_fast(warm_worker: None, pred: str, in_thread: bool) -> None:
    value, seconds = _timed(
        lambda: accuracy_reward([boxed(pred)], answer=["5"], answer_type=["expression"]),
        in_thread=in_thread,
    )
    assert value == [0.0]
    assert seconds < 2.0


@pytest.mark.parametrize("in_thread", [False, True], ids=["main-thread", "worker-thread"])
def test_a_hang_inside_sympy_is_cut_at_the_timeout(warm_worker: None, in_thread: bool) -> None:
    # \gcd makes latex2sympy evaluate gcd(10^(10^10), 6) while *parsing*: a genuine hang. The
    # screen sends it to the worker, which is killed after timeout_s and restarted.
    pred = r"\gcd(10^{10^{10}}, 6)"
    assert not _cheap_enough(pred)
    value, seconds = _timed(lambda: grade_expression(pred, "2", timeout_s=0.3), in_thread=in_thread)
    assert value is False
    assert seconds < 2.0  # the 0.3 s bound + killing the worker and launching a new one
    # The pre-launched replacement grades the next risky answer correctly.
    assert grade_expression(r"\binom{6}{3}", "20") is True  # C(6,3) = 20


def test_common_answers_never_leave_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker is for the rare risky string; everyday LaTeX is graded in-process."""

    def no_worker(*args: object) -> None:
        raise AssertionError("the common path must not use the worker process")

    monkeypatch.setattr(_WORKER, "grade", no_worker)
    common = [(p, g) for p, g, _ in EXPRESSION if "binom" not in p and len(p) < 200]
    assert all(isinstance(grade_expression(p, g), bool) for p, g in common)


def test_grading_from_many_threads_matches_sequential() -> None:
    preds = [
        boxed(p) for p in ["12", r"\frac{1}{2}", "B", "0.5", "x=3", "13", r"\binom{4}{2}", "no"]
    ]
    golds = ["12", "0.5", "B", r"\frac12", "3", "12", "6", "yes"]
    expected = accuracy_reward(preds, answer=golds)
    assert expected == [1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0]
    results: list[list[float | None]] = []
    threads = [
        threading.Thread(target=lambda: results.append(accuracy_reward(preds, answer=golds)))
        for _ in range(6)
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert results == [expected] * 6
