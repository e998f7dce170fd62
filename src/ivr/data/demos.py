"""The cold-start demonstrations of the synthetic world: the three skills the IVR-R1 loop asks for.

    answer    ``trace``: "<desc>…</desc> <think>…</think> \\boxed{…}", written for ANY scene, so a
              corrupted scene gives a trace consistent with itself but wrong about the image
    critique  ``_critique``: names the first contradiction between a corrupted description
              (``_corruptions``: an object dropped, recoloured, reshaped, re-digited or invented)
              and the image, then its consequence for the answer
    rectify   the correct full trace, answering the corrupted trace and its critique

``make_demo`` writes one chat row of ``sft.jsonl`` from a dataset row (``world.make_row``).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import Any

from .prompts import PromptSet, question_text
from .render import COLOURS, SHAPES, Obj, _objs, describe, position_name
from .world import _REL, LETTERS, _f, _relation_target, _value, boxed_answer

__all__ = ["make_demo", "trace"]

# ----------------------------------------------------------------------------------- traces


def _think(q: dict[str, Any], objs: Sequence[Obj], grid: int) -> str:
    kind = q["kind"]
    pos = lambda o: position_name(o.row, o.col, grid)  # noqa: E731
    if kind == "count":
        f = _f(q)
        hits = [pos(o) for o in objs if f.match(o)]
        return f"{f.plural()}: {', '.join(hits) or 'none'}. count = {len(hits)}."
    if kind == "sum":
        f = _f(q)
        hits = [o for o in objs if f.match(o)]
        listing = ", ".join(f"{o.digit} at {pos(o)}" for o in hits) or "none"
        ds = [str(o.digit) for o in hits]
        total = sum(o.digit for o in hits)  # type: ignore[misc]
        calc = f"{' + '.join(ds)} = {total}" if len(ds) > 1 else str(total)
        return f"{f.plural()}: {listing}. sum = {calc}."
    if kind == "sum_diff":
        a = _value({"kind": "sum", "filter": q["filter"]}, objs, grid)
        b = _value({"kind": "sum", "filter": q["filter2"]}, objs, grid)
        first = _think({"kind": "sum", "filter": q["filter"]}, objs, grid)
        second = _think({"kind": "sum", "filter": q["filter2"]}, objs, grid)
        return f"{first} {second} {a} - {b} = {a - b}."
    if kind == "relation":
        chain = _relation_target(q, objs, grid)
        assert chain is not None, "relation trace on a scene without an answer"
        parts = [f"the {_f(q, 'ref').singular()} is at {pos(chain[0])}."]
        for d, o in zip(q["path"], chain[1:]):
            parts.append(f"directly {_REL[d]} it is {pos(o)}: a {o.colour} {o.shape}.")
        parts.append(f"answer: {getattr(chain[-1], q['ask'])}.")
        return " ".join(parts)
    if kind == "choice":
        v = _value(q, objs, grid)
        return f"{_think(q['base'], objs, grid)} {v} is option {LETTERS[q['options'].index(v)]}."
    raise ValueError(f"no reasoning trace for query kind {kind!r}")


def trace(query: dict[str, Any], scene: Iterable[Obj | dict[str, Any]], grid: int = 4) -> str:
    """The demonstration answer for ``query`` on ``scene``: ``<desc>…</desc> <think>…</think>
    \\boxed{…}``, or a ```json fenced box list for locate queries. Written for any scene, so a
    corrupted scene gives a trace that is consistent with itself but wrong about the image."""
    objs = _objs(scene)
    if query["kind"] == "locate":
        return f"```json\n{boxed_answer(query, objs, grid)}\n```"
    return (
        f"<desc>{describe(objs, grid)}</desc> <think>{_think(query, objs, grid)}</think> "
        f"\\boxed{{{boxed_answer(query, objs, grid)}}}"
    )


# ----------------------------------------------------------------------------------- demonstrations


def _corruptions(
    rng: random.Random, objs: list[Obj], grid: int
) -> Iterable[tuple[str, list[Obj], tuple]]:
    """Candidate corrupted scenes, kinds in random order weighted towards drop/recolour."""
    has_digits = any(o.digit is not None for o in objs)
    weights = {
        "drop": 0.35,
        "recolour": 0.35,
        "reshape": 0.1,
        "redigit": 0.1 if has_digits else 0.0,
        "add": 0.1,
    }
    kinds = [k for k, w in weights.items() if w > 0]
    order = []
    while kinds:
        k = rng.choices(kinds, weights=[weights[k] for k in kinds])[0]
        order.append(k)
        kinds.remove(k)
    for kind in order:
        cands: list[tuple[str, list[Obj], tuple]] = []
        for i, o in enumerate(objs):
            rest = objs[:i] + objs[i + 1 :]
            if kind == "drop":
                cands.append((kind, rest, (o,)))
            elif kind == "recolour":
                cands += [
                    (kind, [*rest, Obj(o.shape, c, o.row, o.col, o.digit)], (o, c))
                    for c in COLOURS
                    if c != o.colour
                ]
            elif kind == "reshape":
                cands += [
                    (kind, [*rest, Obj(s, o.colour, o.row, o.col, o.digit)], (o, s))
                    for s in SHAPES
                    if s != o.shape
                ]
            elif kind == "redigit" and o.digit is not None:
                cands += [
                    (kind, [*rest, Obj(o.shape, o.colour, o.row, o.col, d)], (o, d))
                    for d in range(1, 10)
                    if d != o.digit
                ]
        if kind == "add":
            taken = {(o.row, o.col) for o in objs}
            free = [(r, c) for r in range(grid) for c in range(grid) if (r, c) not in taken]
            for r, c in rng.sample(free, min(len(free), 12)):
                s, col = rng.choice(SHAPES), rng.choice(list(COLOURS))
                new = Obj(s, col, r, c, rng.randint(1, 9) if has_digits else None)
                cands.append((kind, [*objs, new], (new,)))
        rng.shuffle(cands)
        yield from cands


def _critique(kind: str, info: tuple, grid: int, right: str, wrong: str) -> str:
    """Name the first contradiction between the corrupted description and the image (the
    description is the first step of a trace), then the consequence for the answer."""
    o = info[0]  # the object as the image shows it (for "add": the invented one)
    at = position_name(o.row, o.col, grid)
    digit = f" with {o.digit}" if o.digit is not None else ""
    seen = f"the image shows a {o.colour} {o.shape} there"
    claim = {
        "drop": f"misses the {o.colour} {o.shape}{digit} at {at}, but the image shows it there",
        "recolour": f"says the {o.shape} at {at} is {info[-1]}, but {seen}",
        "reshape": f"says the {o.colour} shape at {at} is a {info[-1]}, but {seen}",
        "redigit": f"says the digit in the {o.colour} {o.shape} at {at} is {info[-1]}, "
        f"but the image shows {o.digit}",
        "add": f"lists a {o.colour} {o.shape}{digit} at {at}, but the image shows no shape there",
    }[kind]
    return f"The description {claim}. So the answer is {right}, not {wrong}."


def make_demo(
    row: dict[str, Any],
    *,
    kind: str,
    rng: random.Random,
    prompts: PromptSet | None = None,
    grid: int = 4,
) -> dict[str, Any]:
    """One chat row for ``sft.jsonl``: an ``answer``, ``critique`` or ``rectify`` demonstration of
    a dataset row. Falls back to ``answer`` when no corruption changes the answer (or for locate
    rows, which the re-reasoning loop does not handle)."""
    ps = prompts or PromptSet()
    q, objs = row["query"], _objs(row["scene"])
    good = trace(q, objs, grid)
    if kind != "answer" and row["answer_type"] != "boxes":
        right = boxed_answer(q, objs, grid)
        for ckind, bad_objs, info in _corruptions(rng, objs, grid):
            wrong = boxed_answer(q, bad_objs, grid)
            if wrong is None or wrong == right:
                continue
            bad = trace(q, bad_objs, grid)
            crit = _critique(ckind, info, grid, str(right), wrong)
            if kind == "critique":
                user, reply = ps.critique.format(question=row["question"], response=bad), crit
            else:
                user = ps.rectify.format(question=row["question"], response=bad, critique=crit)
                reply = good
            return _chat(row, kind, user, reply, corruption=ckind)
        kind = "answer"
    return _chat(row, "answer", question_text(row["question"], row["answer_type"], ps), good)


def _chat(
    row: dict[str, Any], kind: str, user: str, reply: str, corruption: str | None = None
) -> dict[str, Any]:
    return {
        "id": f"{row['id']}-{kind}",
        "images": [row["image"]],
        "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": user}]},
            {"role": "assistant", "content": reply},
        ],
        "kind": kind,
        "source": row["id"],
        "corruption": corruption,
    }
