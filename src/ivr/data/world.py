"""The synthetic world's questions: what is asked of a scene, its exact answer, and the scene.

A query is a small JSON dict (``{"kind": "count", "filter": {"colour": "red"}}``); ``solve``
gives its gold answer on any scene and ``boxed_answer`` what a demonstration puts in
``\\boxed{}``. Scenes are built *around* a chosen answer (the target count, sum or relation first),
so answers are spread out and the image-blind baseline stays low; ``make_row`` turns one
(index, task, level) into a dataset row and its image, a pure function of its arguments.
See ``synth.py`` for the tasks and levels, and for how the rows are written to disk.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from .render import COLOURS, SHAPES, Geometry, Obj, _objs, describe, render_scene

__all__ = ["LEVEL_OBJECTS", "TASKS", "Filter", "boxed_answer", "make_row", "solve"]

TASKS: tuple[str, ...] = ("count", "arith", "spatial", "choice", "locate")
#: Objects per scene, inclusive range, per difficulty level.
LEVEL_OBJECTS: dict[int, tuple[int, int]] = {1: (1, 3), 2: (3, 5), 3: (5, 8)}
LETTERS = "ABCDEFGHIJ"
_DIRS = {"left": (0, -1), "right": (0, 1), "above": (-1, 0), "below": (1, 0)}
_OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}
_REL = {"left": "left of", "right": "right of", "above": "above", "below": "below"}


# ----------------------------------------------------------------------------------- queries


@dataclass(frozen=True)
class Filter:
    """Which objects a question is about. Empty = every shape."""

    colour: str | None = None
    shape: str | None = None
    not_colour: str | None = None
    any_colour: tuple[str, ...] | None = None

    def match(self, o: Obj) -> bool:
        return (
            (self.colour is None or o.colour == self.colour)
            and (self.shape is None or o.shape == self.shape)
            and (self.not_colour is None or o.colour != self.not_colour)
            and (self.any_colour is None or o.colour in self.any_colour)
        )

    def _noun(self, plural: bool) -> str:
        noun = self.shape or "shape"
        noun = noun + "s" if plural else noun
        if self.colour:
            noun = f"{self.colour} {noun}"
        if self.any_colour:
            noun = f"{' or '.join(self.any_colour)} {noun}"
        if self.not_colour:
            noun = f"{noun} that {'are' if plural else 'is'} not {self.not_colour}"
        return noun

    def plural(self) -> str:
        return self._noun(True)

    def singular(self) -> str:
        return self._noun(False)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        for k in ("colour", "shape", "not_colour", "any_colour"):
            v = getattr(self, k)
            if v is not None:
                d[k] = list(v) if isinstance(v, tuple) else v
        return d

    @staticmethod
    def from_json(d: dict[str, Any]) -> Filter:
        ac = d.get("any_colour")
        return Filter(
            d.get("colour"), d.get("shape"), d.get("not_colour"), tuple(ac) if ac else None
        )


def _f(q: dict[str, Any], key: str = "filter") -> Filter:
    return Filter.from_json(q[key])


def _question(q: dict[str, Any]) -> str:
    kind = q["kind"]
    if kind == "count":
        return f"How many {_f(q).plural()} are there?"
    if kind == "sum":
        return f"What is the sum of the digits inside the {_f(q).plural()}?"
    if kind == "sum_diff":
        return (
            f"What is the sum of the digits inside the {_f(q).plural()} minus the sum of the "
            f"digits inside the {_f(q, 'filter2').plural()}?"
        )
    if kind == "relation":
        phrase = f"the {_f(q, 'ref').singular()}"
        for d in q["path"]:
            phrase = f"the shape directly {_REL[d]} {phrase}"
        return f"What {q['ask']} is {phrase}?"
    if kind == "choice":
        opts = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(q["options"]))
        return f"{_question(q['base'])}\nOptions:\n{opts}\nAnswer with the option's letter."
    if kind == "locate":
        label = _f(q).singular()
        return (
            f"Locate every {label} in the image. Output a JSON list of "
            f'{{"bbox_2d": [x1, y1, x2, y2], "label": "{label}"}}, one per object.'
        )
    raise ValueError(f"unknown query kind {kind!r}")


def _relation_target(q: dict[str, Any], objs: Sequence[Obj], grid: int) -> list[Obj] | None:
    """[ref, step1, step2, …] objects of a relation query, or None if it has no unique answer."""
    ref = _f(q, "ref")
    refs = [o for o in objs if ref.match(o)]
    if len(refs) != 1:
        return None
    at = {(o.row, o.col): o for o in objs}
    chain = [refs[0]]
    for d in q["path"]:
        dr, dc = _DIRS[d]
        nxt = at.get((chain[-1].row + dr, chain[-1].col + dc))
        if nxt is None:
            return None
        chain.append(nxt)
    return chain


def _value(q: dict[str, Any], objs: Sequence[Obj], grid: int) -> Any:
    """The answer as a Python value (int, str, list of boxes), or None when undefined."""
    kind = q["kind"]
    if kind == "count":
        return sum(_f(q).match(o) for o in objs)
    if kind == "sum":
        ds = [o.digit for o in objs if _f(q).match(o)]
        return None if any(d is None for d in ds) else sum(ds)  # type: ignore[arg-type]
    if kind == "sum_diff":
        a = _value({"kind": "sum", "filter": q["filter"]}, objs, grid)
        b = _value({"kind": "sum", "filter": q["filter2"]}, objs, grid)
        return None if a is None or b is None else a - b
    if kind == "relation":
        chain = _relation_target(q, objs, grid)
        return None if chain is None else getattr(chain[-1], q["ask"])
    if kind == "choice":
        v = _value(q["base"], objs, grid)
        return None if v is None or str(v) not in q["options"] else str(v)
    if kind == "locate":
        return [(list(o.bbox), _f(q).singular()) for o in objs if _f(q).match(o)]
    raise ValueError(f"unknown query kind {kind!r}")


def _boxes_json(value: list[tuple[list[int], str]]) -> str:
    return json.dumps([{"bbox_2d": b, "label": lab} for b, lab in value])


def solve(
    query: dict[str, Any], scene: Iterable[Obj | dict[str, Any]], grid: int = 4
) -> str | None:
    """The gold ``answer`` string of ``query`` on ``scene`` (None if the scene leaves it undefined,
    e.g. a relation whose reference object is missing). Choice queries answer with the letter or
    the option text, as the row's ``gold_as`` says; locate queries with the boxes' JSON.

    >>> solve({"kind": "count", "filter": {"colour": "red"}},
    ...       [{"shape": "circle", "colour": "red", "row": 0, "col": 0}])
    '1'
    """
    objs = _objs(scene)
    v = _value(query, objs, grid)
    if v is None:
        return None
    if query["kind"] == "locate":
        return _boxes_json(v)
    if query["kind"] == "choice" and query["gold_as"] == "letter":
        return LETTERS[query["options"].index(v)]
    return str(v)


def boxed_answer(
    query: dict[str, Any], scene: Iterable[Obj | dict[str, Any]], grid: int = 4
) -> str | None:
    """What a demonstration puts in ``\\boxed{}``: the gold answer, except that multiple choice
    is always answered with the option letter (also when the gold is the option text, MathVista
    style: graders map the letter to its option)."""
    objs = _objs(scene)
    v = _value(query, objs, grid)
    if v is None:
        return None
    if query["kind"] == "choice":
        return LETTERS[query["options"].index(v)]
    if query["kind"] == "locate":
        return _boxes_json(v)
    return str(v)


# ----------------------------------------------------------------------------------- scene building


def _attrs(
    rng: random.Random, f: Filter | None, want: bool, digit: bool
) -> tuple[str, str, int | None]:
    """Random (shape, colour, digit) matching ``f`` (want=True) or not matching it."""
    for _ in range(1000):
        shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
        d = rng.randint(1, 9) if digit else None
        if f is None or f.match(Obj(shape, colour, 0, 0)) == want:
            return shape, colour, d
    raise RuntimeError(f"cannot sample an object {'matching' if want else 'not matching'} {f}")


def _place(
    rng: random.Random,
    attrs: Sequence[tuple[str, str, int | None]],
    geo: Geometry,
    cells: Sequence[tuple[int, int]] | None = None,
) -> list[Obj]:
    """Objects with the given attributes in distinct cells (``cells`` fixes the first ones)."""
    fixed = list(cells or [])
    free = [(r, c) for r in range(geo.grid) for c in range(geo.grid) if (r, c) not in fixed]
    chosen = fixed + rng.sample(free, len(attrs) - len(fixed))
    out = []
    for (shape, colour, digit), (r, c) in zip(attrs, chosen):
        dx = rng.randint(-geo.jitter, geo.jitter) if geo.jitter else 0
        dy = rng.randint(-geo.jitter, geo.jitter) if geo.jitter else 0
        out.append(Obj(shape, colour, r, c, digit, geo.bbox(r, c, dx, dy)))
    return sorted(out, key=lambda o: (o.row, o.col))


def _n_objects(rng: random.Random, level: int, geo: Geometry, at_least: int = 1) -> int:
    lo, hi = LEVEL_OBJECTS[level]
    hi = min(hi, geo.grid * geo.grid)
    return rng.randint(min(max(lo, at_least), hi), hi)


def _random_filter(rng: random.Random, kind: str) -> Filter:
    colours = list(COLOURS)
    if kind == "all":
        return Filter()
    if kind == "colour":
        return Filter(colour=rng.choice(colours))
    if kind == "shape":
        return Filter(shape=rng.choice(SHAPES))
    if kind == "colour_shape":
        return Filter(colour=rng.choice(colours), shape=rng.choice(SHAPES))
    if kind == "not_colour":
        return Filter(not_colour=rng.choice(colours))
    if kind == "shape_not_colour":
        return Filter(shape=rng.choice(SHAPES), not_colour=rng.choice(colours))
    if kind == "any_colour":
        return Filter(any_colour=tuple(rng.sample(colours, 2)))
    raise ValueError(kind)


def _filtered_scene(
    rng: random.Random, f: Filter, n: int, k: int, geo: Geometry, digit: bool
) -> list[Obj]:
    attrs = [_attrs(rng, f, True, digit) for _ in range(k)] + [
        _attrs(rng, f, False, digit) for _ in range(n - k)
    ]
    return _place(rng, attrs, geo)


def _k(rng: random.Random, n: int, zero: float) -> int:
    """How many objects match: 0 with probability ``zero``, else uniform in 1..n."""
    return 0 if rng.random() < zero else rng.randint(1, n)


_COUNT_FILTERS = {
    1: ("all", "colour", "shape", "colour_shape"),
    2: ("colour", "shape", "colour_shape"),
    3: ("not_colour", "shape_not_colour", "any_colour"),
}
_SUM_FILTERS = {1: ("colour",), 2: ("colour", "shape", "colour_shape")}
_LOCATE_FILTERS = {
    1: ("shape",),
    2: ("colour", "colour_shape"),
    3: ("colour_shape", "any_colour", "shape_not_colour"),
}


def _make_count(rng: random.Random, level: int, geo: Geometry) -> tuple[list[Obj], dict[str, Any]]:
    f = _random_filter(rng, rng.choice(_COUNT_FILTERS[level]))
    n = _n_objects(rng, level, geo)
    k = n if f == Filter() else rng.randint(0, n)
    return _filtered_scene(rng, f, n, k, geo, digit=False), {"kind": "count", "filter": f.to_json()}


def _make_arith(rng: random.Random, level: int, geo: Geometry) -> tuple[list[Obj], dict[str, Any]]:
    if level in _SUM_FILTERS:
        f = _random_filter(rng, rng.choice(_SUM_FILTERS[level]))
        n = _n_objects(rng, level, geo)
        return _filtered_scene(rng, f, n, _k(rng, n, 0.1), geo, digit=True), {
            "kind": "sum",
            "filter": f.to_json(),
        }
    # Two steps: a difference of two sums over disjoint sets (two colours or two shapes).
    if rng.random() < 0.5:
        c1, c2 = rng.sample(list(COLOURS), 2)
        f1, f2 = Filter(colour=c1), Filter(colour=c2)
    else:
        s1, s2 = rng.sample(SHAPES, 2)
        f1, f2 = Filter(shape=s1), Filter(shape=s2)
    n = _n_objects(rng, level, geo, at_least=2)
    k1 = rng.randint(1, n - 1)
    k2 = rng.randint(1, n - k1)
    attrs = [_attrs(rng, f1, True, True) for _ in range(k1)]
    attrs += [_attrs(rng, f2, True, True) for _ in range(k2)]
    for _ in range(n - k1 - k2):
        while True:
            a = _attrs(rng, None, True, True)
            o = Obj(a[0], a[1], 0, 0)
            if not f1.match(o) and not f2.match(o):
                attrs.append(a)
                break
    q = {"kind": "sum_diff", "filter": f1.to_json(), "filter2": f2.to_json()}
    return _place(rng, attrs, geo), q


def _make_spatial(
    rng: random.Random, level: int, geo: Geometry
) -> tuple[list[Obj], dict[str, Any]]:
    steps = 2 if level >= 3 else 1
    first = rng.choice(list(_DIRS))
    path = [first]
    if steps == 2:
        path.append(rng.choice([d for d in _DIRS if d != _OPPOSITE[first]]))
    g = geo.grid
    starts = []
    for r in range(g):
        for c in range(g):
            cells, ok = [(r, c)], True
            for d in path:
                dr, dc = _DIRS[d]
                nr, nc = cells[-1][0] + dr, cells[-1][1] + dc
                ok = ok and 0 <= nr < g and 0 <= nc < g and (nr, nc) not in cells
                cells.append((nr, nc))
            if ok:
                starts.append(cells)
    cells = rng.choice(starts)
    ref_shape, ref_colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
    by_colour = level >= 2 and rng.random() < 0.5
    ref = Filter(colour=ref_colour if by_colour else None, shape=ref_shape)
    n = _n_objects(rng, level, geo, at_least=len(cells))
    attrs = [(ref_shape, ref_colour, None)] + [_attrs(rng, ref, False, False) for _ in range(n - 1)]
    ask = "colour" if level == 1 or rng.random() < 0.5 else "shape"
    q = {"kind": "relation", "ref": ref.to_json(), "path": path, "ask": ask}
    return _place(rng, attrs, geo, cells), q


def _make_choice(rng: random.Random, level: int, geo: Geometry) -> tuple[list[Obj], dict[str, Any]]:
    base_task = rng.choice(("count", "arith", "spatial"))
    objs, base = _MAKERS[base_task](rng, level, geo)
    gold = _value(base, objs, geo.grid)
    if isinstance(gold, int):
        lo = gold - 3 if base["kind"] == "sum_diff" else max(0, gold - 3)
        start = rng.randint(lo, gold)
        options = [str(v) for v in range(start, start + 4)]
    elif gold in COLOURS:
        options = [gold, *rng.sample([c for c in COLOURS if c != gold], 3)]
    else:
        options = list(SHAPES)
    rng.shuffle(options)
    gold_as = "letter" if rng.random() < 0.6 else "text"
    return objs, {"kind": "choice", "base": base, "options": options, "gold_as": gold_as}


def _make_locate(rng: random.Random, level: int, geo: Geometry) -> tuple[list[Obj], dict[str, Any]]:
    f = _random_filter(rng, rng.choice(_LOCATE_FILTERS[level]))
    n = _n_objects(rng, level, geo)
    return _filtered_scene(rng, f, n, _k(rng, n, 0.1), geo, digit=False), {
        "kind": "locate",
        "filter": f.to_json(),
    }


_MAKERS = {
    "count": _make_count,
    "arith": _make_arith,
    "spatial": _make_spatial,
    "choice": _make_choice,
    "locate": _make_locate,
}
_ANSWER_TYPES = {
    "count": "integer",
    "arith": "integer",
    "spatial": "text",
    "choice": "choice",
    "locate": "boxes",
}


def make_row(
    index: int, task: str, level: int, *, seed: int = 0, geometry: Geometry | None = None
) -> tuple[dict[str, Any], Image.Image]:
    """Row ``index`` of a dataset and its image; a pure function of its arguments."""
    geo = geometry or Geometry()
    rng = random.Random(f"ivr-synth/{seed}/{index}")
    objs, q = _MAKERS[task](rng, level, geo)
    answer = solve(q, objs, geo.grid)
    assert answer is not None, (task, level, q)
    locate = task == "locate"
    value = _value(q, objs, geo.grid) if locate else None
    row = {
        "id": f"s{seed}-{index:06d}",
        "image": f"images/{index:06d}.png",
        "question": _question(q),
        "answer": answer,
        "answer_type": _ANSWER_TYPES[task],
        "choices": q["options"] if task == "choice" else None,
        "task": task,
        "level": level,
        "description": describe(objs, geo.grid),
        "scene": [o.to_json() for o in objs],
        "boxes": [b for b, _ in value] if locate else None,
        "labels": [lab for _, lab in value] if locate else None,
        "image_size": [geo.image_size, geo.image_size],
        "query": q,
    }
    return row, render_scene(objs, geo)
