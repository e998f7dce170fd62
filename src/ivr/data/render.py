"""How a scene of the synthetic world looks: as pixels (``render_scene``) and as words (``describe``).

The vocabulary of the world (colours, shapes, cell names), its pixel layout (``Geometry``) and the
object type (``Obj``) live here, with the one wording of a scene that the demonstrations' ``<desc>``
block, the dataset's ``description`` column and the description metrics all share:
``describe`` writes it, ``parse_description`` reads it back, ``description_fidelity`` scores a
policy's description against the true scene (the paper's "visual grounding erosion").
The world's questions and answers are in ``world.py``; see ``synth.py`` for the whole picture.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageDraw

from .prompts import extract_description

__all__ = [
    "BACKGROUND",
    "COLOURS",
    "DIGIT_COLOUR",
    "SHAPES",
    "Geometry",
    "Obj",
    "describe",
    "description_fidelity",
    "parse_description",
    "position_name",
    "render_scene",
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
BACKGROUND = (255, 255, 255)
DIGIT_COLOUR = (0, 0, 0)
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
