"""ivr.data.grounding on real synthetic rows with hand-corrupted responses."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ivr.data.demos import _corruptions, trace
from ivr.data.grounding import attribute_fidelity, grounding_summary, self_consistency
from ivr.data.render import COLOURS, SHAPES, Obj, _objs, describe, description_fidelity
from ivr.data.world import Filter, boxed_answer, make_row


def _row(task: str, level: int, ok: Any = lambda row: True) -> dict[str, Any]:
    """The first row (seed 0) of ``task``/``level`` that ``ok`` accepts."""
    for i in range(500):
        row, _ = make_row(i, task, level, seed=0)
        if ok(row):
            return row
    raise AssertionError(f"no {task}/l{level} row found")


def _respond(desc_scene: list[Obj], think: str, boxed: str) -> str:
    return f"<desc>{describe(desc_scene)}</desc> <think>{think}</think> \\boxed{{{boxed}}}"


def _split(row: dict[str, Any], f: Filter) -> tuple[list[Obj], list[Obj]]:
    objs = _objs(row["scene"])
    return [o for o in objs if f.match(o)], [o for o in objs if not f.match(o)]


def _swap(objs: list[Obj], old: Obj, new: Obj) -> list[Obj]:
    return [new if o == old else o for o in objs]


def _both(response: str, row: dict[str, Any]) -> tuple[float | None, float | None]:
    return attribute_fidelity(response, row), self_consistency(response, row)


# ------------------------------------------------------------------------------ sums


def _sum_row() -> dict[str, Any]:
    def ok(row: dict[str, Any]) -> bool:
        hit, miss = _split(row, Filter.from_json(row["query"]["filter"]))
        return bool(hit) and bool(miss)

    return _row("arith", 2, ok)


def test_perfect_trace_is_faithful_and_consistent() -> None:
    row = _sum_row()
    assert _both(trace(row["query"], row["scene"]), row) == (1.0, 1.0)


def test_wrong_digit_on_relevant_object_fails_fidelity() -> None:
    row = _sum_row()
    objs = _objs(row["scene"])
    hit, _ = _split(row, Filter.from_json(row["query"]["filter"]))
    o = hit[0]
    bad = _swap(objs, o, replace(o, digit=o.digit % 9 + 1))  # another digit in 1..9
    # The model misreads a digit it adds up but still boxes the true sum: unfaithful, and the
    # answer no longer follows from what it wrote.
    think = trace(row["query"], objs).split("<think>")[1].split("</think>")[0]
    assert _both(_respond(bad, think, row["answer"]), row) == (0.0, 0.0)
    # Reasoned consistently from the misread digit (the trace synth's critiques are built on).
    assert _both(trace(row["query"], bad), row) == (0.0, 1.0)


def test_wrong_digit_on_irrelevant_object_keeps_fidelity() -> None:
    row = _sum_row()
    objs = _objs(row["scene"])
    _, miss = _split(row, Filter.from_json(row["query"]["filter"]))
    o = miss[0]
    bad = _swap(objs, o, replace(o, digit=o.digit % 9 + 1))
    response = trace(row["query"], bad)
    assert boxed_answer(row["query"], bad) == row["answer"]  # the corruption is irrelevant…
    assert _both(response, row) == (1.0, 1.0)  # … so both metrics ignore it
    assert description_fidelity(response, row["scene"])["exact"] == 0.0  # desc_exact does not


def test_right_description_wrong_boxed_answer() -> None:
    row = _sum_row()
    good = trace(row["query"], row["scene"])
    wrong = good.replace(f"\\boxed{{{row['answer']}}}", f"\\boxed{{{int(row['answer']) + 1}}}")
    assert wrong != good
    assert _both(wrong, row) == (1.0, 0.0)


def test_sum_diff_checks_both_filters() -> None:
    row = _row("arith", 3)
    q, objs = row["query"], _objs(row["scene"])
    assert q["kind"] == "sum_diff"
    second = [o for o in objs if Filter.from_json(q["filter2"]).match(o)][0]
    bad = _swap(objs, second, replace(second, digit=second.digit % 9 + 1))
    assert _both(trace(q, bad), row) == (0.0, 1.0)


# ------------------------------------------------------------------------------ counts


def _count_row() -> dict[str, Any]:
    # A colour-only filter, at least one matching and one other object, and a free cell.
    def ok(row: dict[str, Any]) -> bool:
        f = Filter.from_json(row["query"]["filter"])
        hit, miss = _split(row, f)
        return f.colour is not None and f.shape is None and bool(hit) and bool(miss)

    return _row("count", 2, ok)


def test_count_depends_on_matching_cells_only() -> None:
    row = _count_row()
    q, objs = row["query"], _objs(row["scene"])
    f = Filter.from_json(q["filter"])
    hit, miss = _split(row, f)
    o = hit[0]
    other_shape = next(s for s in SHAPES if s != o.shape)
    other_colour = next(c for c in COLOURS if c != o.colour)
    taken = {(x.row, x.col) for x in objs}
    free = next((r, c) for r in range(4) for c in range(4) if (r, c) not in taken)
    # The shape of a matching object is never used by a colour count: still faithful.
    assert attribute_fidelity(trace(q, _swap(objs, o, replace(o, shape=other_shape))), row) == 1.0
    # Anything about a non-matching object, even dropping it: still faithful.
    assert attribute_fidelity(trace(q, [x for x in objs if x != miss[0]]), row) == 1.0
    # A matching object recoloured out of the filter, or described in the wrong cell: not.
    assert attribute_fidelity(trace(q, _swap(objs, o, replace(o, colour=other_colour))), row) == 0.0
    moved = _swap(objs, o, replace(o, row=free[0], col=free[1]))
    assert boxed_answer(q, moved) == row["answer"]  # the count is right by luck …
    assert _both(trace(q, moved), row) == (0.0, 1.0)  # … from the wrong cells


def test_no_desc_or_unparseable_desc_scores_zero() -> None:
    row = _count_row()
    good = trace(row["query"], row["scene"])
    no_desc = good.split("</desc>")[1]
    assert _both(no_desc, row) == (0.0, 0.0)
    garbled = good.replace("</desc>", "; a tiny dragon at the moon</desc>")
    assert _both(garbled, row) == (0.0, 0.0)
    assert _both("", row) == (0.0, 0.0)
    assert _both(None, row) == (0.0, 0.0)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ relations


def test_relation_checks_reference_chain_and_asked_attribute() -> None:
    row = _row("spatial", 3, lambda r: r["query"]["ask"] == "shape")
    q, objs = row["query"], _objs(row["scene"])
    ref = Filter.from_json(q["ref"])
    (start,) = [o for o in objs if ref.match(o)]
    cells, at = [(start.row, start.col)], {(o.row, o.col): o for o in objs}
    for d in q["path"]:
        dr, dc = {"left": (0, -1), "right": (0, 1), "above": (-1, 0), "below": (1, 0)}[d]
        cells.append((cells[-1][0] + dr, cells[-1][1] + dc))
    mid, end = at[cells[1]], at[cells[-1]]
    assert _both(trace(q, objs), row) == (1.0, 1.0)
    # The end's colour is not asked (ask == "shape"): still faithful.
    recoloured = next(
        replace(end, colour=c)
        for c in COLOURS
        if c != end.colour and not ref.match(replace(end, colour=c))
    )
    assert _both(trace(q, _swap(objs, end, recoloured)), row) == (1.0, 1.0)
    # The end's shape is what is asked: not faithful, though the trace follows its description.
    # (Not the reference's shape, so the reference stays unique.)
    other_shape = next(s for s in SHAPES if s not in (end.shape, start.shape))
    assert _both(trace(q, _swap(objs, end, replace(end, shape=other_shape))), row) == (0.0, 1.0)
    # The intermediate object left out: the chain breaks, no answer follows from the desc.
    assert _both(
        trace(q, objs).replace(describe(objs), describe([o for o in objs if o != mid])), row
    ) == (0.0, 0.0)
    # A second object matching the reference makes it ambiguous.
    taken = set(at)
    free = next((r, c) for r in range(4) for c in range(4) if (r, c) not in taken)
    twin = Obj(start.shape, start.colour, free[0], free[1])
    response = trace(q, objs).replace(describe(objs), describe([*objs, twin]))
    assert _both(response, row) == (0.0, 0.0)


# ------------------------------------------------------------------------------ choice, locate


@pytest.mark.parametrize("gold_as", ["letter", "text"])
def test_choice_letter_or_text_both_consistent(gold_as: str) -> None:
    row = _row("choice", 2, lambda r: r["query"]["gold_as"] == gold_as)
    q = row["query"]
    good = trace(q, row["scene"])  # answers with the option letter whatever gold_as is
    assert _both(good, row) == (1.0, 1.0)
    letter = boxed_answer(q, row["scene"])
    text = q["options"]["ABCD".index(letter)]
    assert self_consistency(good.replace(f"\\boxed{{{letter}}}", f"\\boxed{{{text}}}"), row) == 1.0
    wrong = next(x for x in "ABCD"[: len(q["options"])] if x != letter)
    assert self_consistency(good.replace(f"\\boxed{{{letter}}}", f"\\boxed{{{wrong}}}"), row) == 0.0


def test_locate_rows_are_not_applicable() -> None:
    row = _row("locate", 1)
    response = trace(row["query"], row["scene"])
    assert _both(response, row) == (None, None)
    assert _both("<desc>a red circle at top left</desc> \\boxed{1}", row) == (None, None)


# ------------------------------------------------------------------------------ invariants


def test_answer_changing_corruptions_are_unfaithful_but_consistent() -> None:
    # Every corruption synth's critique demos use that changes the answer must change something
    # the question depends on; a trace built on it follows from its own description.
    checked = 0
    for task, level in [
        ("count", 1),
        ("count", 3),
        ("arith", 2),
        ("arith", 3),
        ("spatial", 3),
        ("choice", 3),
    ]:
        for i in range(8):
            row, _ = make_row(i, task, level, seed=1)
            q, objs = row["query"], _objs(row["scene"])
            assert _both(trace(q, objs), row) == (1.0, 1.0)
            for _, bad, _ in list(_corruptions(random.Random(i), objs, 4))[:40]:
                wrong = boxed_answer(q, bad)
                if wrong is None or wrong == boxed_answer(q, objs):
                    continue
                assert _both(trace(q, bad), row) == (0.0, 1.0), (row["id"], describe(bad))
                checked += 1
    assert checked > 100


def test_grounding_summary_by_hand() -> None:
    row = _sum_row()
    objs = _objs(row["scene"])
    hit, miss = _split(row, Filter.from_json(row["query"]["filter"]))
    relevant_bad = _swap(objs, hit[0], replace(hit[0], digit=hit[0].digit % 9 + 1))
    irrelevant_bad = _swap(objs, miss[0], replace(miss[0], digit=miss[0].digit % 9 + 1))
    loc = _row("locate", 1)
    responses = [
        trace(row["query"], objs),  # fidelity 1, consistency 1, exact 1
        trace(row["query"], relevant_bad),  # 0, 1, exact 0
        trace(row["query"], irrelevant_bad),  # 1, 1, exact 0
        "no idea",  # 0, 0, exact 0
        trace(loc["query"], loc["scene"]),  # locate: left out
    ]
    s = grounding_summary(responses, [row, row, row, row, loc])
    assert s["n"] == 4
    assert s["attribute_fidelity"] == pytest.approx(2 / 4)
    assert s["self_consistency"] == pytest.approx(3 / 4)
    assert s["desc_exact"] == pytest.approx(1 / 4)
    # desc_f1 per row: 1; (n−1)/n twice (one of n objects wrong in a desc of n); 0.
    n = len(objs)
    assert s["desc_f1"] == pytest.approx((1 + 2 * (n - 1) / n + 0) / 4)
    assert grounding_summary([], []) == {
        "attribute_fidelity": None,
        "self_consistency": None,
        "desc_exact": None,
        "desc_f1": None,
        "n": 0,
    }
    with pytest.raises(ValueError, match="responses"):
        grounding_summary(["x"], [])


_ROWS = [
    make_row(i, t, 2, seed=0)[0] for i, t in enumerate(["count", "arith", "spatial", "choice"])
]
_ROWS.append(make_row(0, "arith", 3, seed=0)[0])
_FRAGMENTS = st.sampled_from(
    [
        "<desc>",
        "</desc>",
        "<think>",
        "</think>",
        "\\boxed{",
        "}",
        "{",
        "; ",
        "a red circle at top left",
        "a blue square with 3 at bottom right",
        "no shapes",
        "a green triangle with 12 at upper mid-left",
        " at ",
        "A",
        "7",
        "-3",
        "circle",
        ".",
        "\n",
    ]
)


@settings(max_examples=150, deadline=None)
@given(
    st.one_of(st.text(max_size=200), st.lists(_FRAGMENTS, max_size=14).map("".join)),
    st.sampled_from(range(len(_ROWS))),
)
def test_arbitrary_output_never_raises(response: str, k: int) -> None:
    row = _ROWS[k]
    assert attribute_fidelity(response, row) in (0.0, 1.0)
    assert self_consistency(response, row) in (0.0, 1.0)
    s = grounding_summary([response], [row])
    assert s["n"] == 1


def test_sum_ignores_cells_but_not_digits() -> None:
    # Row 5 of the seed-0 arith world: yellow shapes 2 (top left) and 8 (upper mid-right).
    from ivr.data.demos import trace
    from ivr.data.world import make_row

    row, _ = make_row(5, "arith", 1)
    good = trace(row["query"], row["scene"])
    moved = good.replace("8 at upper mid-right", "8 at bottom right")  # a cell misnamed
    assert attribute_fidelity(moved, row) == 1.0  # the sum reads 2 and 8 either way
    misread = good.replace("circle with 8", "circle with 9")
    assert attribute_fidelity(misread, row) == 0.0
