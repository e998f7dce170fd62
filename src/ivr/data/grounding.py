r"""Grounding metrics for ``<desc>…</desc> <think>…</think> \boxed{…}`` answers in the synthetic world.

Why: IVR-R1's claim is that re-reasoning keeps the policy's answers *grounded* in what it sees.
Accuracy cannot show that (a right answer can rest on a wrong description), and ``desc_exact``
(``render.description_fidelity``: every object with its position) is the wrong yardstick for it:
it fails a counting answer whose description misnames a shape the question never asks about, so
it mostly measures how much of the scene the model bothers to list. Two narrower questions:

    attribute_fidelity   is the model's own <desc> right about what the *question* depends on?
    self_consistency     does the boxed answer follow from the model's own <desc>?

Both are computed with the world's own parser (``parse_description``), filters (``Filter``) and
solver (``solve``), so they agree with how the world defines its answers. Together they split a
wrong answer into "saw wrong" (fidelity 0, consistency 1: the model reasoned correctly from a
wrong description — the grounding erosion the paper describes) and "reasoned wrong" (fidelity 1,
consistency 0). Both are None for locate rows (no ``<desc>``) and 0.0 for any malformed output:
they never raise on what a model writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ivr.rewards import extract_boxed, grade_answer

from .prompts import extract_description
from .render import Obj, _objs, description_fidelity, parse_description
from .world import Filter, _relation_target, solve

__all__ = ["attribute_fidelity", "grounding_summary", "self_consistency"]


def _own_scene(response: Any, grid: int) -> list[Obj] | None:
    """The scene the response's own ``<desc>`` block describes, or None (no block, or an item
    that does not parse: an unreadable description is not evidence of seeing anything)."""
    if not isinstance(response, str):
        return None
    desc = extract_description(response)
    if desc is None:
        return None
    items = parse_description(desc, grid)
    return None if items is None else _objs(items)


def _relevant(q: dict[str, Any], objs: Sequence[Obj], truth: Sequence[Obj], grid: int) -> Any:
    """What the answer to ``q`` reads from ``objs``, as a comparable value. ``truth`` (the real
    scene) fixes which cells a relation question walks through, so a description is compared on
    the true chain, not on wherever its own reading of the question would lead."""
    kind = q["kind"]
    if kind == "count":  # which cells hold a matching object; nothing else about them
        f = Filter.from_json(q["filter"])
        return sorted((o.row, o.col) for o in objs if f.match(o))
    if kind == "sum":  # the digits of the matching objects, wherever they are placed
        f = Filter.from_json(q["filter"])
        return sorted(o.digit if o.digit is not None else -1 for o in objs if f.match(o))
    if kind == "sum_diff":
        return tuple(
            _relevant({"kind": "sum", "filter": q[k]}, objs, truth, grid)
            for k in ("filter", "filter2")
        )
    if kind == "relation":
        # The one object matching the reference, something at every intermediate cell of the
        # true chain, and the asked attribute (colour or shape) of the object at its end.
        chain = _relation_target(q, truth, grid) or []
        ref = Filter.from_json(q["ref"])
        at = {(o.row, o.col): o for o in objs}
        cells = [(o.row, o.col) for o in chain[1:]]
        end = at.get(cells[-1]) if cells else None
        return (
            sorted((o.row, o.col) for o in objs if ref.match(o)),
            [c in at for c in cells],
            None if end is None else getattr(end, q["ask"]),
        )
    if kind == "choice":
        return _relevant(q["base"], objs, truth, grid)
    raise ValueError(f"no grounding metric for query kind {kind!r}")


def attribute_fidelity(response: str, row: dict[str, Any], *, grid: int = 4) -> float | None:
    r"""1.0 iff the response's own ``<desc>`` is exactly right about what the question depends on.

    What is compared, description against the true ``row["scene"]``, per query kind:

    - count: the cells of the objects that match the filter (a matching object described with
      the wrong colour, or a non-matching one described as matching, fails; its other attributes
      do not matter);
    - sum: the digits of the objects that match the filter, as a multiset (a misread digit, a
      missing matching object or a wrongly matching one fails; cells do not matter);
      sum_diff: that, for both filters;
    - relation: the object(s) matching the reference (must be the true one, at its cell), some
      object at each intermediate cell of the true chain, and the asked attribute (colour or
      shape) of the object at its end;
    - choice: whatever its base question depends on.

    Objects the question does not depend on are ignored. Cells of count objects are compared
    (which objects match is only visible through where they are), cells of sum objects are not:
    a sum never depends on where a digit is, and the demo's tiny models misname cells far more
    often than they misread what is in them.

    Why not ``desc_exact``: it requires every object of the scene with its position, so it is
    mostly a measure of exhaustive listing; a count answer never depends on the shape of an
    object outside the filter, so a description wrong only there should not count as ungrounded.

    None for locate rows (their answers have no ``<desc>``); 0.0 when the response has no
    ``<desc>`` or one with an item that does not parse (a missing description is not faithful).

    >>> from ivr.data.demos import trace
    >>> from ivr.data.world import make_row
    >>> row, _ = make_row(0, "count", 2, seed=0)
    >>> attribute_fidelity(trace(row["query"], row["scene"]), row)
    1.0
    >>> attribute_fidelity("\\boxed{3}", row), attribute_fidelity("<desc>a cat</desc>", row)
    (0.0, 0.0)
    """
    q = row["query"]
    if q["kind"] == "locate":
        return None
    truth = _objs(row["scene"])
    own = _own_scene(response, grid)
    if own is None:
        return 0.0
    return float(_relevant(q, own, truth, grid) == _relevant(q, truth, truth, grid))


def self_consistency(response: str, row: dict[str, Any], *, grid: int = 4) -> float | None:
    r"""1.0 iff the boxed answer is what the response's own ``<desc>`` implies.

    The answer implied by the description is ``world.solve(row["query"], <scene parsed from the
    response's <desc>>)``; the boxed answer is compared to it with the reward's grader
    (``grade_answer`` with the row's answer type and options), so ``\boxed{B}`` matches an implied
    option text and ``\boxed{ 3 }`` matches ``3`` exactly as accuracy would. Why: a trace whose
    answer does not follow from its own description is reasoning badly (or not using its
    description at all), whatever the image shows; one that does follow shows that errors come
    from seeing, not reasoning.

    None for locate rows; 0.0 when there is no ``<desc>``, it does not parse, it leaves the
    question undefined (e.g. no object matches a relation's reference), there is no boxed answer,
    or the boxed answer differs.

    >>> from ivr.data.demos import trace
    >>> from ivr.data.world import make_row
    >>> row, _ = make_row(0, "count", 2, seed=0)
    >>> good = trace(row["query"], row["scene"])
    >>> self_consistency(good, row), self_consistency(good.replace("\\boxed{", "\\boxed{1"), row)
    (1.0, 0.0)
    """
    q = row["query"]
    if q["kind"] == "locate":
        return None
    own = _own_scene(response, grid)
    if own is None:
        return 0.0
    implied = solve(q, own, grid)
    boxed = extract_boxed(response)
    if implied is None or boxed is None:
        return 0.0
    try:
        ok = grade_answer(boxed, implied, row.get("answer_type"), choices=q.get("options"))
    except ValueError:  # an implied answer outside the options: the description is incoherent
        return 0.0
    return float(bool(ok))


def grounding_summary(
    responses: Sequence[str], rows: Sequence[dict[str, Any]], *, grid: int = 4
) -> dict[str, float | int | None]:
    """Mean ``attribute_fidelity`` and ``self_consistency`` over the rows they apply to (not locate),
    with ``desc_exact``/``desc_f1`` (``render.description_fidelity``) over the same rows for
    comparison, and ``n`` the number of those rows. Means are None when ``n`` is 0.

    >>> from ivr.data.demos import trace
    >>> from ivr.data.world import make_row
    >>> rows = [make_row(i, t, 2, seed=0)[0] for i, t in enumerate(["count", "arith", "locate"])]
    >>> grounding_summary([trace(r["query"], r["scene"]) for r in rows], rows)
    {'attribute_fidelity': 1.0, 'self_consistency': 1.0, 'desc_exact': 1.0, 'desc_f1': 1.0, 'n': 2}
    """
    if len(responses) != len(rows):
        raise ValueError(f"{len(responses)} responses for {len(rows)} rows")
    sums = {"attribute_fidelity": 0.0, "self_consistency": 0.0, "desc_exact": 0.0, "desc_f1": 0.0}
    n = 0
    for response, row in zip(responses, rows):
        fid = attribute_fidelity(response, row, grid=grid)
        if fid is None:
            continue
        n += 1
        sums["attribute_fidelity"] += fid
        sums["self_consistency"] += self_consistency(response, row, grid=grid) or 0.0
        # The same <desc> block the other two read (None when absent: scored 0).
        desc = extract_description(response) if isinstance(response, str) else None
        full = description_fidelity(desc, row["scene"], grid)
        sums["desc_exact"] += full["exact"]
        sums["desc_f1"] += full["f1"]
    out: dict[str, float | int | None] = {k: (v / n if n else None) for k, v in sums.items()}
    out["n"] = n
    return out
