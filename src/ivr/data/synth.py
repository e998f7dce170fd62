"""A procedural visual-reasoning world with exact ground truth, and its cold-start demonstrations.

Why it exists: no weights or benchmarks can be downloaded here, yet SFT → GRPO → IVR-R1 must be
compared on a model that *learns*. DESIGN.md §3 measured what a tiny VLM trained from scratch picks
up on a CPU: 112 px images made of a 4×4 grid of 28 px cells (Qwen2.5-VL: patch 14 × merge 2 = one
visual token per cell), 1–3 coloured shapes, counting questions. That is level 1 here; higher levels
add objects and two-step reasoning for GRPO and IVR-R1 to climb.

The world:

    scene     1–8 objects in distinct cells; object = shape (circle | square | triangle) × colour
              (red | green | blue | yellow | purple), optionally a 7-segment digit drawn inside
    tasks     count    "How many red triangles are there?"                    integer
              arith    "What is the sum of the digits inside the blue shapes?" integer
              spatial  "What colour is the shape directly left of the circle?" text
              choice   a count/arith/spatial question with 3–4 options         choice
              locate   "Locate every circle ..." → Qwen2.5-VL JSON boxes      boxes
    levels    1: 1–3 objects, one step · 2: 3–5 objects, conjunctions · 3: 5–8 objects, two steps
              (negation, disjunction, difference of sums, chained relations)

Every row carries the exact scene and its description in the wording of the demonstrations'
``<desc>`` block ("a red circle at top left; a blue square with 3 at upper mid-right"), so the
trainer can measure how far a policy's own description drifts from the image — the paper's "visual
grounding erosion" (``description_fidelity``) — and the §5.2 ablation can replace the image by it.

Answers are *constructed*, not sampled-then-asked: the target count, sum or relation is chosen first
and the scene is built around it, so answers are spread out and a model that ignores the image is
held near the image-blind baseline (majority answer per question string), which ``meta.json``
records per task and level.

Demonstrations (``sft.jsonl``) teach the three skills the IVR-R1 loop asks of the policy:

    answer    image + PromptSet.answer    → "<desc>…</desc> <think>…</think> \\boxed{…}"
    critique  image + PromptSet.critique  with a corrupted trace (an object dropped, recoloured,
              reshaped, re-digited or invented in <desc>, then reasoned *consistently* to a wrong
              answer) → "The description says …, but the image shows …. So the answer is X, not Y."
    rectify   image + PromptSet.rectify   with the corrupted trace and its critique → the correct
              full trace

Locate rows use the bare question (it carries its own output instruction, Vision-R1 style) and are
answered with a ```json fenced list; they only get ``answer`` demonstrations.

Everything is a pure function of ``seed`` and the parameters: row ``i`` uses its own RNG seeded from
``(seed, i)``, PNGs are written by PIL with fixed settings and no metadata, JSON keys are in a fixed
order and ``meta.json`` holds no timestamp, so the same call writes byte-identical files.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from .prompts import PromptSet, question_text

__all__ = [
    "BACKGROUND",
    "COLOURS",
    "DIGIT_COLOUR",
    "LEVEL_OBJECTS",
    "SHAPES",
    "TASKS",
    "Geometry",
    "add_synth_arguments",
    "boxed_answer",
    "describe",
    "description_fidelity",
    "extract_description",
    "generate_dataset",
    "image_blind_baseline",
    "make_demo",
    "make_row",
    "parse_description",
    "position_name",
    "question_prompt",
    "render_scene",
    "run_synth",
    "solve",
    "trace",
]

# ----------------------------------------------------------------------------------- the world

#: Well separated in RGB (pairwise distance ≥ 90); a vision tower separates them untrained (§3).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 50, 50),
    "green": (40, 160, 60),
    "blue": (50, 90, 230),
    "yellow": (240, 200, 30),
    "purple": (150, 70, 200),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
TASKS: tuple[str, ...] = ("count", "arith", "spatial", "choice", "locate")
#: Objects per scene, inclusive range, per difficulty level.
LEVEL_OBJECTS: dict[int, tuple[int, int]] = {1: (1, 3), 2: (3, 5), 3: (5, 8)}
BACKGROUND = (255, 255, 255)
DIGIT_COLOUR = (0, 0, 0)
LETTERS = "ABCDEFGHIJ"
PNG_SETTINGS = {"format": "PNG", "compress_level": 1, "optimize": False}
#: 7-segment encoding: a top, b upper right, c lower right, d bottom, e lower left, f upper left,
#: g middle.
SEGMENTS: dict[int, str] = {
    0: "abcdef",
    1: "bc",
    2: "abdeg",
    3: "abcdg",
    4: "bcfg",
    5: "acdfg",
    6: "acdefg",
    7: "abc",
    8: "abcdefg",
    9: "abcdfg",
}
_ROW_NAMES = {
    2: ("top", "bottom"),
    3: ("top", "middle", "bottom"),
    4: ("top", "upper", "lower", "bottom"),
}
_COL_NAMES = {
    2: ("left", "right"),
    3: ("left", "center", "right"),
    4: ("left", "mid-left", "mid-right", "right"),
}
_DIRS = {"left": (0, -1), "right": (0, 1), "above": (-1, 0), "below": (1, 0)}
_OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}
_REL = {"left": "left of", "right": "right of", "above": "above", "below": "below"}


def position_name(row: int, col: int, grid: int = 4) -> str:
    """The words for a cell: ``position_name(0, 0) == "top left"``; "row r column c" beyond 4×4.

    >>> position_name(1, 2)
    'upper mid-right'
    >>> position_name(4, 0, grid=5)
    'row 5 column 1'
    """
    if grid in _ROW_NAMES:
        return f"{_ROW_NAMES[grid][row]} {_COL_NAMES[grid][col]}"
    return f"row {row + 1} column {col + 1}"


def _positions(grid: int) -> dict[str, tuple[int, int]]:
    return {position_name(r, c, grid): (r, c) for r in range(grid) for c in range(grid)}


@dataclass(frozen=True)
class Geometry:
    """Pixel layout: ``grid``×``grid`` cells of ``image_size // grid`` px; a shape fills its cell
    minus a margin (3 px of 28) and is shifted by up to ``jitter`` px. Boxes are
    ``[x1, y1, x2, y2]`` with exclusive ends: the shape covers x1 ≤ x < x2 exactly."""

    image_size: int = 112
    grid: int = 4
    jitter: int = 0

    def __post_init__(self) -> None:
        if self.grid < 2 or self.image_size % self.grid:
            raise ValueError(
                f"image_size {self.image_size} must be a multiple of grid {self.grid} ≥ 2"
            )
        if self.cell < 12:
            raise ValueError(f"cells of {self.cell} px are too small to draw digits (need ≥ 12)")
        if not 0 <= self.jitter <= self.margin:
            raise ValueError(
                f"jitter must be in [0, {self.margin}] (the cell margin), got {self.jitter}"
            )

    @property
    def cell(self) -> int:
        return self.image_size // self.grid

    @property
    def margin(self) -> int:
        return max(1, round(self.cell * 3 / 28))

    @property
    def size(self) -> int:
        return self.cell - 2 * self.margin

    def bbox(self, row: int, col: int, dx: int = 0, dy: int = 0) -> tuple[int, int, int, int]:
        x0 = col * self.cell + self.margin + dx
        y0 = row * self.cell + self.margin + dy
        return (x0, y0, x0 + self.size, y0 + self.size)

    def digit_box(self, bbox: Sequence[int], shape: str) -> tuple[int, int, int, int, int]:
        """``(x0, y0, width, height, stroke)`` of the 7-segment glyph inside a shape's box; in a
        triangle it sits low, where the triangle is wide enough."""
        s = self.size
        w, h, t = max(3, round(s * 8 / 22)), max(5, round(s * 12 / 22)), max(1, round(s * 2 / 22))
        x0 = bbox[0] + (s - w) // 2
        y0 = bbox[1] + (round(s * 9 / 22) if shape == "triangle" else (s - h) // 2)
        return (x0, y0, w, h, t)


@dataclass(frozen=True)
class Obj:
    """One object of a scene. ``bbox`` is derived from the layout and excluded from equality."""

    shape: str
    colour: str
    row: int
    col: int
    digit: int | None = None
    bbox: tuple[int, int, int, int] = field(default=(0, 0, 0, 0), compare=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "shape": self.shape,
            "colour": self.colour,
            "digit": self.digit,
            "row": self.row,
            "col": self.col,
            "bbox": list(self.bbox),
        }

    @staticmethod
    def from_json(d: dict[str, Any]) -> Obj:
        x0, y0, x1, y1 = (int(v) for v in d.get("bbox") or (0, 0, 0, 0))
        digit = None if d.get("digit") is None else int(d["digit"])
        return Obj(d["shape"], d["colour"], int(d["row"]), int(d["col"]), digit, (x0, y0, x1, y1))


def _objs(scene: Iterable[Obj | dict[str, Any]]) -> list[Obj]:
    out = [o if isinstance(o, Obj) else Obj.from_json(o) for o in scene]
    return sorted(out, key=lambda o: (o.row, o.col))


# ----------------------------------------------------------------------------------- rendering


def render_scene(
    scene: Iterable[Obj | dict[str, Any]], geometry: Geometry | None = None
) -> Image.Image:
    """Draw a scene (no anti-aliasing: every pixel is the background, a palette colour or the digit
    colour, so tests can read the scene back from the pixels)."""
    geo = geometry or Geometry()
    img = Image.new("RGB", (geo.image_size, geo.image_size), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for o in _objs(scene):
        x0, y0, x1, y1 = o.bbox
        fill = COLOURS[o.colour]
        if o.shape == "square":
            draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=fill)
        elif o.shape == "circle":
            draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=fill)
        elif o.shape == "triangle":
            draw.polygon([(x0, y1 - 1), (x1 - 1, y1 - 1), ((x0 + x1 - 1) / 2, y0)], fill=fill)
        else:
            raise ValueError(f"unknown shape {o.shape!r}")
        if o.digit is not None:
            _draw_digit(draw, o.digit, geo.digit_box(o.bbox, o.shape))
    return img


def _draw_digit(draw: ImageDraw.ImageDraw, digit: int, box: tuple[int, int, int, int, int]) -> None:
    x, y, w, h, t = box
    mid = y + (h - t) // 2
    rects = {
        "a": (x, y, x + w - 1, y + t - 1),
        "g": (x, mid, x + w - 1, mid + t - 1),
        "d": (x, y + h - t, x + w - 1, y + h - 1),
        "f": (x, y, x + t - 1, mid + t - 1),
        "b": (x + w - t, y, x + w - 1, mid + t - 1),
        "e": (x, mid, x + t - 1, y + h - 1),
        "c": (x + w - t, mid, x + w - 1, y + h - 1),
    }
    for seg in SEGMENTS[digit]:
        draw.rectangle(rects[seg], fill=DIGIT_COLOUR)


# ----------------------------------------------------------------------------------- descriptions


def _obj_phrase(o: Obj, grid: int) -> str:
    digit = f" with {o.digit}" if o.digit is not None else ""
    return f"a {o.colour} {o.shape}{digit} at {position_name(o.row, o.col, grid)}"


def describe(scene: Iterable[Obj | dict[str, Any]], grid: int = 4) -> str:
    """The scene in the exact wording of the demonstrations' ``<desc>`` block, objects in reading
    order; ``"no shapes"`` for an empty scene.

    >>> describe([{"shape": "square", "colour": "blue", "digit": 3, "row": 0, "col": 1},
    ...           {"shape": "circle", "colour": "red", "digit": None, "row": 0, "col": 0}])
    'a red circle at top left; a blue square with 3 at top mid-left'
    """
    objs = _objs(scene)
    return "; ".join(_obj_phrase(o, grid) for o in objs) if objs else "no shapes"


_ITEM = re.compile(r"^an? (\w+) (\w+)(?: with (\d))? at (.+)$")


def _norm(text: str) -> str:
    return " ".join(text.lower().split()).strip().rstrip(".").strip()


def _parse_item(item: str, grid: int) -> dict[str, Any] | None:
    m = _ITEM.match(_norm(item))
    if not m:
        return None
    colour, shape, digit, pos = m.groups()
    cell = _positions(grid).get(pos.strip())
    if colour not in COLOURS or shape not in SHAPES or cell is None:
        return None
    d = int(digit) if digit is not None else None
    return {"shape": shape, "colour": colour, "digit": d, "row": cell[0], "col": cell[1]}


def parse_description(text: str, grid: int = 4) -> list[dict[str, Any]] | None:
    """Invert ``describe``: objects as ``{shape, colour, digit, row, col}`` dicts, or None if any
    item does not parse. Case, spacing and a trailing period are forgiven.

    >>> parse_description("a red circle at top left; a blue square with 3 at bottom right.")
    ... # doctest: +NORMALIZE_WHITESPACE
    [{'shape': 'circle', 'colour': 'red', 'digit': None, 'row': 0, 'col': 0},
     {'shape': 'square', 'colour': 'blue', 'digit': 3, 'row': 3, 'col': 3}]
    """
    t = _norm(text)
    if t in ("no shapes", ""):
        return [] if t == "no shapes" else None
    items = [_parse_item(s, grid) for s in t.split(";")]
    return None if any(i is None for i in items) else items  # type: ignore[return-value]


_DESC = re.compile(r"<desc>(.*?)(?:</desc>|$)", re.S)


def extract_description(response: str) -> str | None:
    """The text of the first ``<desc>`` block of a response (to its end if unclosed), or None."""
    m = _DESC.search(response)
    return m.group(1).strip() if m else None


def description_fidelity(
    pred_desc: str | None, scene: Iterable[Obj | dict[str, Any]], grid: int = 4
) -> dict[str, float]:
    """How well a description matches the true scene: ``exact`` (1.0 iff every object is right
    and nothing else is said) and object-level ``precision``/``recall``/``f1`` on
    (shape, colour, row, col, digit) tuples, as multisets. An item that does not parse counts as a
    wrong prediction. ``pred_desc`` may be a whole response: its ``<desc>`` block is used, and a
    response without one (it has ``<think>``, ``\\boxed`` or a code fence but no ``<desc>``)
    scores 0 like None. Two empty scenes agree perfectly.

    >>> scene = [{"shape": "circle", "colour": "red", "digit": None, "row": 0, "col": 0},
    ...          {"shape": "square", "colour": "blue", "digit": None, "row": 3, "col": 3}]
    >>> description_fidelity("a red circle at top left; a green square at bottom right", scene)
    {'exact': 0.0, 'precision': 0.5, 'recall': 0.5, 'f1': 0.5}
    """
    if pred_desc is not None and any(
        m in pred_desc for m in ("<desc>", "<think>", "\\boxed", "```")
    ):
        pred_desc = extract_description(pred_desc)
    truth = Counter((o.shape, o.colour, o.row, o.col, o.digit) for o in _objs(scene))
    n_true = sum(truth.values())
    if pred_desc is None:
        return {"exact": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0}
    t = _norm(pred_desc)
    raw = [] if t in ("no shapes", "") else t.split(";")
    items = [_parse_item(s, grid) for s in raw]
    pred = Counter((i["shape"], i["colour"], i["row"], i["col"], i["digit"]) for i in items if i)
    n_pred = len(items)
    tp = sum((pred & truth).values())
    if n_pred == 0 and n_true == 0:
        return {"exact": float(t == "no shapes"), "precision": 1.0, "recall": 1.0, "f1": 1.0}
    exact = float(tp == n_pred == n_true)
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_true if n_true else 0.0
    f1 = 2 * tp / (n_pred + n_true)
    return {"exact": exact, "precision": precision, "recall": recall, "f1": f1}


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


def question_prompt(
    question: str, answer_type: str | None, prompts: PromptSet | None = None
) -> str:
    """The user text for a row (``prompts.question_text``: the trainer uses the same)."""
    return question_text(question, answer_type, prompts)


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
    return _chat(row, "answer", question_prompt(row["question"], row["answer_type"], ps), good)


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


# ----------------------------------------------------------------------------------- baseline


def _blind_key(row: dict[str, Any]) -> tuple[str, str]:
    """(question without its options block, answer as option text for multiple choice)."""
    q, a = str(row["question"]), _norm(str(row["answer"]))
    opts = row.get("choices")
    if not opts:
        return q, a
    opts = [_norm(str(o)) for o in opts]
    if a.upper() in LETTERS[: len(opts)] and len(a) == 1:
        a = opts[LETTERS.index(a.upper())]
    return q.split("\nOptions:")[0], a


def image_blind_baseline(
    train_rows: Iterable[dict[str, Any]], test_rows: Iterable[dict[str, Any]], *, by: str = "task"
) -> dict[str, float]:
    """Accuracy on ``test_rows`` of answering without the image: the majority train answer for
    the same task and question string, falling back to the majority answer of the task (then of
    all rows) for unseen questions. Multiple choice is scored on option *text* (letter or text
    gold alike): the question is keyed without its "Options:" block, and a majority answer that
    is not among the row's options falls back to the option at the most frequent gold letter, so
    the figure is at least as good as a blind letter guess. ``by="task"`` keys results by task,
    ``by="task_level"`` by ``"task/l{level}"``; ``"all"`` is the overall figure. Exact string
    match otherwise, so box rows only score when both lists are equal (in practice: empty).

    >>> train = [{"question": "q", "answer": "2", "task": "count", "level": 1}] * 2
    >>> image_blind_baseline(train, [{"question": "q", "answer": "2", "task": "count", "level": 1},
    ...                             {"question": "q", "answer": "1", "task": "count", "level": 1}])
    {'count': 0.5, 'all': 0.5}
    """
    if by not in ("task", "task_level"):
        raise ValueError(f"by must be 'task' or 'task_level', got {by!r}")
    per_q: dict[tuple[str, str], Counter] = defaultdict(Counter)  # (task, question) → answers
    per_task: dict[str, Counter] = defaultdict(Counter)
    overall: Counter = Counter()
    letters: Counter = Counter()  # gold option positions of multiple-choice rows
    for r in train_rows:
        q, a = _blind_key(r)
        per_q[r.get("task", "default"), q][a] += 1
        per_task[r.get("task", "default")][a] += 1
        overall[a] += 1
        if r.get("choices"):
            opts = [_norm(str(o)) for o in r["choices"]]
            if a in opts:
                letters[opts.index(a)] += 1

    def majority(c: Counter) -> Any:
        # Most common; ties broken by the smallest key so the figure is deterministic.
        return min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] if c else None

    hits: dict[str, list[int]] = defaultdict(list)
    for r in test_rows:
        task = r.get("task", "default")
        q, gold = _blind_key(r)
        guess = majority(per_q.get((task, q), Counter()))
        guess = guess if guess is not None else majority(per_task.get(task, Counter()))
        guess = guess if guess is not None else majority(overall)
        if r.get("choices"):
            opts = [_norm(str(o)) for o in r["choices"]]
            if guess not in opts:
                pos = majority(letters) or 0
                guess = opts[pos] if pos < len(opts) else opts[0]
        ok = int(guess == gold)
        key = task if by == "task" else f"{task}/l{r.get('level', 0)}"
        hits[key].append(ok)
        hits["all"].append(ok)
    keys = sorted(k for k in hits if k != "all") + ["all"]
    return {k: round(sum(hits[k]) / len(hits[k]), 4) for k in keys}


# ----------------------------------------------------------------------------------- the dataset


def _as_list(value: Any, cast: type) -> list | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [v for v in value.replace(",", " ").split() if v]
    return [cast(v) for v in value]


def generate_dataset(
    out_dir: str | Path,
    *,
    n: int = 20000,
    seed: int = 0,
    tasks: Sequence[str] | str | None = None,
    levels: Sequence[int] | str | None = None,
    test_fraction: float = 0.1,
    n_test: int | None = None,
    image_size: int = 112,
    grid: int = 4,
    jitter: int = 0,
    sft_mix: Sequence[float] = (0.7, 0.15, 0.15),
    parquet: bool = False,
    prompts: PromptSet | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a dataset directory and return its path.

    Layout: ``train.jsonl``, ``test.jsonl`` (rows, schema in docs/synth.md), ``sft.jsonl`` (one
    demonstration per train row, kinds drawn with probabilities ``sft_mix`` = (answer, critique,
    rectify)), ``images/NNNNNN.png``, ``meta.json`` (parameters, counts, image-blind baselines),
    and with ``parquet=True`` also ``train.parquet``/``test.parquet``.

    ``n`` rows in all; the (task, level) combinations of ``tasks`` × ``levels`` (default: all
    five tasks, levels 1–3) are spread evenly over them. ``n_test`` (default
    ``round(n * test_fraction)``) rows go to the test split. ``out_dir`` must be empty or absent
    unless ``overwrite`` (which replaces the files this function writes).
    """
    tasks = _as_list(tasks, str) or list(TASKS)
    levels = _as_list(levels, int) or sorted(LEVEL_OBJECTS)
    unknown = [t for t in tasks if t not in TASKS] + [
        lv for lv in levels if lv not in LEVEL_OBJECTS
    ]
    if unknown:
        raise ValueError(
            f"unknown tasks/levels {unknown}; tasks: {list(TASKS)}, levels: {sorted(LEVEL_OBJECTS)}"
        )
    if n < 1:
        raise ValueError(f"n must be ≥ 1, got {n}")
    n_test = round(n * test_fraction) if n_test is None else n_test
    if not 0 <= n_test <= n:
        raise ValueError(f"n_test must be in [0, n={n}], got {n_test}")
    mix = [float(x) for x in sft_mix]
    if len(mix) != 3 or min(mix) < 0 or sum(mix) <= 0:
        raise ValueError(
            f"sft_mix must be three non-negative weights (answer, critique, rectify), got {sft_mix}"
        )
    geo = Geometry(image_size, grid, jitter)
    ps = prompts or PromptSet()

    out = Path(out_dir)
    ours = [
        "train.jsonl",
        "test.jsonl",
        "sft.jsonl",
        "meta.json",
        "train.parquet",
        "test.parquet",
        "images",
    ]
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"{out} is not empty; pass overwrite=True (--overwrite) to replace it"
            )
        for name in ours:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    (out / "images").mkdir(parents=True, exist_ok=True)

    combos = [(t, lv) for t in tasks for lv in levels]
    specs = [combos[i % len(combos)] for i in range(n)]
    random.Random(f"ivr-synth/{seed}/order").shuffle(specs)

    train_rows: list[dict[str, Any]] = []
    test_rows: list[dict[str, Any]] = []
    sft_kinds: Counter = Counter()
    with (
        open(out / "train.jsonl", "w", encoding="utf-8") as f_train,
        open(out / "test.jsonl", "w", encoding="utf-8") as f_test,
        open(out / "sft.jsonl", "w", encoding="utf-8") as f_sft,
    ):
        for i, (task, level) in enumerate(specs):
            row, img = make_row(i, task, level, seed=seed, geometry=geo)
            img.save(out / row["image"], **PNG_SETTINGS)
            line = json.dumps(row, ensure_ascii=False) + "\n"
            if i < n_test:
                test_rows.append(row)
                f_test.write(line)
                continue
            train_rows.append(row)
            f_train.write(line)
            rng = random.Random(f"ivr-synth/{seed}/{i}/demo")
            kind = rng.choices(("answer", "critique", "rectify"), weights=mix)[0]
            demo = make_demo(row, kind=kind, rng=rng, prompts=ps, grid=grid)
            sft_kinds[demo["kind"]] += 1
            f_sft.write(json.dumps(demo, ensure_ascii=False) + "\n")

    if parquet:
        _write_parquet(out / "train.parquet", train_rows)
        _write_parquet(out / "test.parquet", test_rows)

    counts: dict[str, Any] = {
        "train": len(train_rows),
        "test": len(test_rows),
        "sft": dict(sorted(sft_kinds.items())),
    }
    per: Counter = Counter(f"{r['task']}/l{r['level']}" for r in train_rows)
    counts["train_by_task_level"] = dict(sorted(per.items()))
    meta = {
        "generator": "ivr.data.synth",
        "format_version": 1,
        "seed": seed,
        "params": {
            "n": n,
            "n_test": n_test,
            "tasks": tasks,
            "levels": levels,
            "image_size": image_size,
            "grid": grid,
            "jitter": jitter,
            "sft_mix": mix,
            "level_objects": {str(k): list(v) for k, v in LEVEL_OBJECTS.items()},
        },
        "counts": counts,
        "image_blind_baseline": image_blind_baseline(train_rows, test_rows) if test_rows else {},
        "image_blind_baseline_by_level": (
            image_blind_baseline(train_rows, test_rows, by="task_level") if test_rows else {}
        ),
        "colours": {k: list(v) for k, v in COLOURS.items()},
        "shapes": list(SHAPES),
        "positions": [position_name(r, c, grid) for r in range(grid) for c in range(grid)],
    }
    (out / "meta.json").write_text(
        json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return out


def _write_parquet(path: Path, rows: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # The query is a nested union of shapes (kinds differ): keep it as a JSON string in parquet.
    flat = [{**r, "query": json.dumps(r["query"])} for r in rows]
    table = pa.Table.from_pylist(flat)
    pq.write_table(table, path, compression="zstd")


# ----------------------------------------------------------------------------------- CLI


def add_synth_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of ``ivr synth`` (one per keyword of ``generate_dataset``)."""
    parser.add_argument("--out", required=True, help="output dataset directory")
    parser.add_argument("--n", type=int, default=20000, help="rows in all (train + test)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--tasks", default=None, help=f"comma list of {','.join(TASKS)} (default: all)"
    )
    parser.add_argument("--levels", default=None, help="comma list of levels 1,2,3 (default: all)")
    parser.add_argument("--test-fraction", type=float, default=0.1)
    parser.add_argument(
        "--n-test", type=int, default=None, help="test rows (overrides --test-fraction)"
    )
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--grid", type=int, default=4)
    parser.add_argument(
        "--jitter", type=int, default=0, help="max shift of a shape in its cell, px"
    )
    parser.add_argument(
        "--sft-mix", default="0.7,0.15,0.15", help="answer,critique,rectify weights of the demos"
    )
    parser.add_argument("--parquet", action="store_true", help="also write train/test .parquet")
    parser.add_argument("--prompts", default=None, help="YAML overriding data/prompts.py")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    return parser


def run_synth(args: argparse.Namespace) -> Path:
    """Run ``generate_dataset`` from parsed ``add_synth_arguments`` flags; prints a summary."""
    out = generate_dataset(
        args.out,
        n=args.n,
        seed=args.seed,
        tasks=args.tasks,
        levels=args.levels,
        test_fraction=args.test_fraction,
        n_test=args.n_test,
        image_size=args.image_size,
        grid=args.grid,
        jitter=args.jitter,
        sft_mix=[float(x) for x in str(args.sft_mix).split(",")],
        parquet=args.parquet,
        prompts=PromptSet.load(args.prompts),
        overwrite=args.overwrite,
    )
    meta = json.loads((out / "meta.json").read_text())
    c = meta["counts"]
    print(f"wrote {out}: {c['train']} train, {c['test']} test, sft {c['sft']}")
    if meta["image_blind_baseline"]:
        print(f"image-blind baseline (test accuracy): {meta['image_blind_baseline']}")
    return out


if __name__ == "__main__":  # python -m ivr.data.synth --out DIR
    run_synth(add_synth_arguments(argparse.ArgumentParser(prog="ivr synth")).parse_args())
