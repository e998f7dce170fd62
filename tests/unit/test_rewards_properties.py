"""Property tests: no reward ever raises on model output, and every value stays in range."""

from __future__ import annotations

import json
import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ivr.rewards import (
    accuracy_reward,
    combined_reward,
    extract_boxed,
    format_reward,
    iou_matrix,
    localization_reward,
    score_localization,
)

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text that looks like model output: LaTeX, braces, tags, JSON punctuation, digits, letters.
ALPHABET = st.sampled_from(
    list("0123456789abcxyzABCJ .,;:!?-+*/^_=()[]{}<>\\$%'\"\n")
    + [
        "\\boxed{",
        "\\frac",
        "\\sqrt",
        "\\text{",
        "<desc>",
        "</desc>",
        "<think>",
        "</think>",
        "\\{",
        "\\}",
        "^{",
        "```json",
        "bbox_2d",
    ]
)
junk = st.lists(ALPHABET, max_size=40).map("".join)
boxed_junk = junk.map(lambda s: "\\boxed{" + s + "}")
any_text = st.one_of(st.text(max_size=200), junk, boxed_junk)
chat = any_text.map(lambda s: [{"role": "assistant", "content": s}])
completion = st.one_of(any_text, chat, st.none(), st.integers())

GOLDS = [
    ("integer", "12", None),
    ("float", "0.25", None),
    ("expression", r"\frac{1}{2}", None),
    ("choice", "B", None),
    ("choice", "Paris", ["London", "Paris", "Rome"]),
    ("text", "blue", None),
    (None, "x^2", None),
]


@SETTINGS
@given(st.lists(completion, min_size=1, max_size=len(GOLDS)))
def test_accuracy_never_raises_and_is_binary(comps: list) -> None:
    n = len(comps)
    kinds, golds, choices = zip(*GOLDS[:n])
    out = accuracy_reward(comps, answer=list(golds), answer_type=list(kinds), choices=list(choices))
    assert len(out) == n and all(v in (0.0, 1.0) for v in out)


# Mathematical answers against mathematical options: unicode radicals, degree spellings,
# fractions, unbalanced groups (the normalisations and the match by value must never raise).
MATH_ALPHABET = st.sampled_from(
    list("0123456789xy .+-*/^=(){}\\") + ["√", "°", "\\sqrt{", "\\frac{", "\\circ", "\\degree", "π"]
)
math_junk = st.lists(MATH_ALPHABET, max_size=30).map("".join)
MATH_OPTIONS = [r"\frac{2}{3}", "√3", "2√(x+1)", "30°", r"3(\sqrt{2}-1)", "0.25"]


@SETTINGS
@given(st.lists(math_junk, min_size=1, max_size=len(MATH_OPTIONS)))
def test_math_options_never_raise(preds: list) -> None:
    comps = ["\\boxed{" + p + "}" for p in preds]
    n = len(comps)
    for kind, choices in (("choice", [MATH_OPTIONS] * n), ("expression", None), ("text", None)):
        out = accuracy_reward(
            comps, answer=MATH_OPTIONS[:n], answer_type=[kind] * n, choices=choices
        )
        assert all(v in (0.0, 1.0) for v in out)


@SETTINGS
@given(st.lists(completion, min_size=1, max_size=5))
def test_format_and_combined_in_range(comps: list) -> None:
    assert all(v in (0.0, 1.0) for v in format_reward(comps))
    out = combined_reward(comps, answer=["3"] * len(comps))
    assert all(v is not None and 0.0 <= v <= 1.0 for v in out)


@SETTINGS
@given(any_text)
def test_extract_boxed_never_raises(text: str) -> None:
    out = extract_boxed(text)
    assert out is None or out in text


@SETTINGS
@given(st.lists(st.sampled_from(list("ab{}")), max_size=20).map("".join))
def test_extract_boxed_roundtrip_on_balanced_content(s: str) -> None:
    depth, ok = 0, True
    for ch in s:
        depth += 1 if ch == "{" else -1 if ch == "}" else 0
        ok &= depth >= 0
    if ok and depth == 0:
        assert extract_boxed("pre \\boxed{" + s + "} post") == s


# Box lists the model might emit: numbers of any kind (nan, inf, huge, negative), wrong arity.
numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(10**30), 10**30))
bbox = st.lists(numbers, min_size=3, max_size=5)
obj = st.fixed_dictionaries({"bbox_2d": bbox}, optional={"label": st.text(max_size=5)})
json_values = st.recursive(
    st.none() | st.booleans() | numbers | st.text(max_size=5),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c, max_size=3),
    max_leaves=10,
)


def _dump(x: object) -> str:
    return json.dumps(x)  # emits NaN / Infinity, which Python's json parser accepts back


box_text = st.one_of(
    any_text,
    st.lists(obj, max_size=6).map(_dump),
    st.lists(obj, max_size=6).map(lambda o: "```json\n" + _dump(o) + "\n```"),
    json_values.map(_dump),
)
gt_box = st.tuples(st.floats(0, 90), st.floats(0, 90), st.floats(1, 10), st.floats(1, 10)).map(
    lambda t: [t[0], t[1], t[0] + t[2], t[1] + t[3]]
)


@SETTINGS
@given(box_text, st.lists(gt_box, max_size=4), st.floats(0, 1), st.booleans())
def test_localization_never_raises_and_is_in_range(
    text: str, gt: list, progress: float, rescale: bool
) -> None:
    out = score_localization(
        text, gt, image_size=(100, 100), input_size=(50, 50) if rescale else None, progress=progress
    )
    assert out["format"] in (0.0, 1.0)
    assert 0.0 <= out["recall"] <= 1.0 and 0.0 <= out["precision"] <= 1.0
    assert math.isclose(out["total"], out["format"] + out["recall"] + out["precision"])
    assert 0.0 <= out["total"] <= 3.0
    if out["format"] == 0.0:
        assert out["total"] == 0.0
    [value] = localization_reward([text], boxes=[gt], image_size=[(100, 100)], progress=progress)
    assert value is not None and 0.0 <= value <= 3.0


valid_box = st.tuples(
    st.floats(0, 50), st.floats(0, 50), st.floats(0.1, 50), st.floats(0.1, 50)
).map(lambda t: [t[0], t[1], t[0] + t[2], t[1] + t[3]])


@SETTINGS
@given(st.lists(valid_box, min_size=1, max_size=6), st.lists(valid_box, min_size=1, max_size=6))
def test_iou_giou_bounds_and_symmetry(a: list, b: list) -> None:
    A, B = np.array(a), np.array(b)
    iou = iou_matrix(A, B)
    g = iou_matrix(A, B, giou=True)
    assert ((iou >= 0) & (iou <= 1 + 1e-12)).all()
    assert ((g >= -1 - 1e-12) & (g <= iou + 1e-12)).all()  # GIoU ≤ IoU, in [-1, 1]
    np.testing.assert_allclose(iou, iou_matrix(B, A).T)
    np.testing.assert_allclose(np.diag(iou_matrix(A, A)), 1.0)


@SETTINGS
@given(st.lists(valid_box, min_size=1, max_size=5))
def test_predicting_the_ground_truth_scores_three(gt: list) -> None:
    # Exactly the GT (any order) is perfect at any stage: IoU 1 ≥ every ξ.
    text = json.dumps([{"bbox_2d": b} for b in reversed(gt)])
    for progress in (0.0, 1.0):
        assert (
            score_localization(text, gt, image_size=(100, 100), progress=progress)["total"] == 3.0
        )
