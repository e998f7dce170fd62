"""The TRUE diagnosis of a failed answer in the synthetic world, and the critique / rectify
demonstrations built from a model's own failures (issue 16, item 2).

Why: a policy that has only seen critiques of *invented* errors (an object dropped from ``<desc>``
and reasoned consistently, ``demos._corruptions``) learns to invent a description error and to
announce an answer, while most real failures of a cold-started model have a right ``<desc>`` and a
``<think>`` that drifts from it (DESIGN.md §3: ~3/4 of failures). Because the world's scene is
known, the first step where a model's OWN response goes wrong can be named exactly:

    perception   the ``<desc>`` is wrong about an object the question depends on
                 "The description says the digit in the blue square at top left is 3, but the
                 image shows 8."
    reasoning    the ``<desc>`` is right, the ``<think>`` is not faithful to it
                 "The reasoning misses the 7 at lower right, a blue shape in the description."
                 "The reasoning adds 4 + 7 = 12, but 4 + 7 = 11."
    answer       the ``\\boxed{}`` does not follow the reasoning
    format       no parseable ``<desc>`` / ``<think>``

The critique LOCALISES the error; it never announces an answer the critic has not derived (the
old demonstrations ended with "So the answer is X, not Y", which the policy learnt as a guess).
Count and single-sum questions are diagnosed step by step; other kinds get the first description
error or a generic reasoning critique.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .demos import trace
from .prompts import PromptSet, extract_description
from .render import Obj, _objs, parse_description, position_name
from .world import Filter, boxed_answer

__all__ = ["Diagnosis", "diagnose", "own_failure_demos"]

_THINK = re.compile(r"<think>(.*?)</think>", re.S)
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_SUM = re.compile(r"^(.*?):\s*(.*?)\.\s*sum\s*=\s*(.*?)\.?$")
_COUNT = re.compile(r"^(.*?):\s*(.*?)\.\s*count\s*=\s*(\d+)\.?$")
_LISTED_DIGIT = re.compile(r"^(\d)\s+at\s+(.+)$")


@dataclass(frozen=True)
class Diagnosis:
    """``kind`` ∈ perception | reasoning | answer | format; ``critique`` is the demonstration text."""

    kind: str
    critique: str


def _pos(o: Obj | dict[str, Any], grid: int) -> str:
    r, c = (o.row, o.col) if isinstance(o, Obj) else (o["row"], o["col"])
    return position_name(r, c, grid)


def _with(o: Obj) -> str:
    return f" with {o.digit}" if o.digit is not None else ""


def _perception(
    truth: list[Obj], said: list[Obj], relevant: Filter, grid: int, placed: bool = True
) -> str | None:
    """The first described object (reading order) that the image contradicts, among those the
    question depends on (matching the filter in the image or in the description).

    ``placed=False`` (sums): a matching object described with the right colour, shape and digit
    is right wherever the description puts it, since a sum never depends on a cell."""
    if not placed:
        truth, said = list(truth), list(said)

        def key(o: Obj) -> tuple:  # what the question reads: the filter's attributes and the digit
            return (relevant.match(o), o.digit)

        for o in [o for o in truth if relevant.match(o)]:
            twin = next((s for s in said if key(s) == key(o)), None)
            if twin is not None:
                truth.remove(o)
                said.remove(twin)
    at_t = {(o.row, o.col): o for o in truth}
    at_s = {(o.row, o.col): o for o in said}
    for cell in sorted(set(at_t) | set(at_s)):
        t, s = at_t.get(cell), at_s.get(cell)
        if not ((t and relevant.match(t)) or (s and relevant.match(s))):
            continue
        where = position_name(*cell, grid)
        if s is None:
            return (
                f"The description misses the {t.colour} {t.shape}{_with(t)} at {where}, "
                "which the image shows."
            )
        if t is None:
            return (
                f"The description lists a {s.colour} {s.shape}{_with(s)} at {where}, but the "
                "image shows no shape there."
            )
        if s.colour != t.colour:
            return (
                f"The description says the {s.shape} at {where} is {s.colour}, but the image "
                f"shows a {t.colour} {t.shape} there."
            )
        if s.shape != t.shape:
            return (
                f"The description says the {s.colour} shape at {where} is a {s.shape}, but the "
                f"image shows a {t.colour} {t.shape} there."
            )
        if s.digit != t.digit and t.digit is not None:
            return (
                f"The description says the digit in the {t.colour} {t.shape} at {where} is "
                f"{s.digit}, but the image shows {t.digit}."
            )
    return None


def _reasoning_sum(think: str, said: list[Obj], f: Filter, grid: int) -> str | None:
    m = _SUM.match(" ".join(think.split()))
    if not m:
        return f"The reasoning does not list the {f.plural()} of the description and their digits."
    listing, calc = m.group(2).strip(), m.group(3).strip()
    by_pos = {_pos(o, grid): o for o in said}
    listed: list[tuple[int, str]] = []
    if listing != "none":
        for item in listing.split(","):
            im = _LISTED_DIGIT.match(item.strip())
            if not im:
                return f"The reasoning lists '{item.strip()}', which is not a digit at a place."
            listed.append((int(im.group(1)), im.group(2).strip()))
    for d, where in listed:
        o = by_pos.get(where)
        if o is None:
            return f"The reasoning lists {d} at {where}, but the description has no shape there."
        if not f.match(o):
            return (
                f"The reasoning includes the {d} at {where}, but the description says that "
                f"shape is a {o.colour} {o.shape}, not a {f.singular()}."
            )
        if o.digit is not None and o.digit != d:
            return f"The reasoning reads the digit at {where} as {d}, but the description says {o.digit}."
    seen = {where for _, where in listed}
    for o in said:
        if f.match(o) and _pos(o, grid) not in seen:
            return (
                f"The reasoning misses the {o.digit} at {_pos(o, grid)}, a {f.singular()} in the "
                "description."
            )
    digits = [d for d, _ in listed]
    total = sum(digits)
    result = re.findall(r"-?\d+", calc)
    if not result or int(result[-1]) != total:
        expr = " + ".join(map(str, digits)) if len(digits) > 1 else str(total)
        got = result[-1] if result else calc
        return f"The reasoning adds {expr} = {got}, but {expr} = {total}."
    return None


def _reasoning_count(think: str, said: list[Obj], f: Filter, grid: int) -> str | None:
    m = _COUNT.match(" ".join(think.split()))
    if not m:
        return f"The reasoning does not list where the {f.plural()} of the description are."
    listing, n = m.group(2).strip(), int(m.group(3))
    places = [] if listing == "none" else [p.strip() for p in listing.split(",")]
    by_pos = {_pos(o, grid): o for o in said}
    for where in places:
        o = by_pos.get(where)
        if o is None:
            return f"The reasoning lists {where}, but the description has no shape there."
        if not f.match(o):
            return (
                f"The reasoning counts the {o.colour} {o.shape} at {where}, which is not a "
                f"{f.singular()}."
            )
    for o in said:
        if f.match(o) and _pos(o, grid) not in places:
            return (
                f"The reasoning misses the {o.colour} {o.shape} at {_pos(o, grid)}, a "
                f"{f.singular()} in the description."
            )
    if n != len(places):
        return f"The reasoning lists {len(places)} places but counts {n}."
    return None


def diagnose(response: str, row: dict[str, Any], grid: int = 4) -> Diagnosis | None:
    """The first wrong step of ``response`` to the synthetic ``row`` (None if the answer is right).

    >>> from ivr.data.demos import trace
    >>> from ivr.data.world import make_row
    >>> row, _ = make_row(3, "arith", 1)
    >>> good = trace(row["query"], row["scene"])
    >>> diagnose(good, row) is None
    True
    >>> diagnose(good.replace("\\\\boxed{", "\\\\boxed{1"), row).kind
    'answer'
    """
    from ..rewards import extract_boxed, grade_answer

    q, truth = row["query"], _objs(row["scene"])
    boxed = extract_boxed(response or "")
    if boxed is not None and grade_answer(boxed, row["answer"], row["answer_type"]):
        return None  # right by the reward's own grader ("07", "7.0" … included)
    boxes = _BOXED.findall(response or "")
    desc = extract_description(response or "")
    parsed = parse_description(desc, grid) if desc is not None else None
    if parsed is None:
        return Diagnosis(
            "format",
            "The answer does not describe the image as a list of shapes; describe every shape "
            "with its colour, digit and place first.",
        )
    said = _objs(parsed)
    kind = q["kind"]
    relevant = Filter.from_json(q["filter"]) if "filter" in q else Filter()
    bad = _perception(truth, said, relevant, grid, placed=kind != "sum")
    if bad:
        return Diagnosis("perception", bad)
    tm = _THINK.search(response)
    think = tm.group(1).strip() if tm else ""
    if kind in ("sum", "count") and tm:
        step = (_reasoning_sum if kind == "sum" else _reasoning_count)(think, said, relevant, grid)
        if step:
            return Diagnosis("reasoning", step)
        implied = boxed_answer(q, said, grid)
        got = boxes[-1].strip() if boxes else "nothing"
        return Diagnosis(
            "answer",
            f"The final answer {got} does not match the reasoning, which gives {implied}.",
        )
    return Diagnosis(
        "reasoning" if tm else "format",
        "The description is right, but the reasoning does not follow it; redo the reasoning "
        "step by step from the description.",
    )


def _own_trace(row: dict[str, Any], own_desc: str, grid: int) -> str | None:
    parsed = parse_description(own_desc, grid)
    return None if parsed is None else trace(row["query"], parsed, grid)


def own_failure_demos(
    rows: Sequence[dict[str, Any]],
    responses: Sequence[str],
    *,
    prompts: PromptSet | None = None,
    description_share: float = 0.25,
    seed: int = 0,
    grid: int = 4,
) -> list[dict[str, Any]]:
    """Critique and rectify demonstrations from a model's OWN failed ``responses`` to ``rows``.

    For each wrong response: a ``critique`` row (image + critique prompt → the true diagnosis)
    and a ``rectify`` row (image + rectify prompt with that diagnosis → the correct trace). A
    ``description_share`` of the *reasoning* failures is also written in the paper's §5.2
    description context (the image replaced by the response's own ``<desc>``): only reasoning
    errors are diagnosable from one's own description, so perception errors never are.
    """
    ps = prompts or PromptSet()
    rng = random.Random(f"own-failures/{seed}")
    out: list[dict[str, Any]] = []
    for row, resp in zip(rows, responses):
        dx = diagnose(resp, row, grid)
        if dx is None or row["answer_type"] == "boxes":
            continue
        good = trace(row["query"], row["scene"], grid)
        own_desc = extract_description(resp) or ""
        contexts = ["image"]
        if dx.kind in ("reasoning", "answer") and rng.random() < description_share:
            contexts.append("description")
        for ctx in contexts:
            scene = ps.description_context.format(description=own_desc) if ctx != "image" else ""
            # With only its own description in front of it the policy cannot know the true scene:
            # the target re-reasons from that description (right on what the question reads,
            # since only reasoning/answer failures get this context), never from the image.
            target = good if ctx == "image" else _own_trace(row, own_desc, grid) or good
            crit_user = scene + ps.critique.format(question=row["question"], response=resp)
            rect_user = scene + ps.rectify.format(
                question=row["question"], response=resp, critique=dx.critique
            )
            for kind, user, reply in (
                ("critique", crit_user, dx.critique),
                ("rectify", rect_user, target),
            ):
                content = [{"type": "text", "text": user}]
                if ctx == "image":
                    content.insert(0, {"type": "image"})
                out.append(
                    {
                        "id": f"{row['id']}-own-{kind}-{ctx}",
                        "images": [row["image"]] if ctx == "image" else [],
                        "messages": [
                            {"role": "user", "content": content},
                            {"role": "assistant", "content": reply},
                        ],
                        "kind": kind,
                        "source": row["id"],
                        "corruption": f"own:{dx.kind}",
                        "context": ctx,
                    }
                )
    return out
