"""Vision-R1 criteria-driven localization reward (Zhan et al., §3.2–3.3; DESIGN.md §1).

For detection / grounding / REC the policy answers with Qwen2.5-VL's JSON boxes::

    [{"bbox_2d": [x1, y1, x2, y2], "label": "cat"}, ...]      (optionally in a ```json fence)

in pixel coordinates of the image as the model saw it (``input_size``, e.g. after Qwen's
smart_resize); they are rescaled to ``image_size`` before scoring. The reward of one completion:

- dual format (eq. 4): 1 iff the template parses (a list of objects, each with a 4-number
  ``bbox_2d``) AND the content is valid (finite, x1 < x2, y1 < y2, inside the image up to
  ``bounds_tolerance`` pixels after rescaling); if 0, recall and precision are 0 too;
- box-prioritized matching (eq. 3, Table 3): Hungarian assignment on 1 − IoU, labels ignored
  (``label_aware`` adds ``label_cost`` for a label mismatch);
- recall (eq. 5): #(matched pairs with IoU ≥ ξ0) / #GT, then differentiated as a whole;
- precision (eq. 6): mean over the M matched pairs of f(IoU·[IoU ≥ ξ0])
  (``precision_over_predictions``: divide by #predictions instead, to punish extra boxes);
- differentiation (eq. 8): f(x) = 1 if x ≥ ξ2, 0 if x < ξ1, else x;
- staged progression (§3.3, Table 5): (ξ0, ξ1, ξ2) = (0.5, 0.5, 0.75) while
  progress < ``switch_at`` (STEP, default 1/2), then (0.75, 0.75, 0.9); ``switch_at = 1`` never
  switches;
- negative sample (no GT): recall = precision = 1 iff no box is predicted, else 0;
- total (eq. 7) = format + recall + precision, in [0, 3].

IoU by default; ``use_giou`` swaps in generalized IoU for both matching and thresholds.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ivr.rewards.extract import column, completion_text

Box = tuple[float, float, float, float]
Thresholds = tuple[float, float, float]


@dataclass(frozen=True)
class LocalizationConfig:
    """Knobs of the Vision-R1 reward; every default is the paper's.

    >>> LocalizationConfig().thresholds(0.2), LocalizationConfig().thresholds(0.5)
    ((0.5, 0.5, 0.75), (0.75, 0.75, 0.9))
    >>> LocalizationConfig(switch_at=1.0).thresholds(1.0)  # STEP = 1: never switch
    (0.5, 0.5, 0.75)
    """

    #: (ξ0, ξ1, ξ2) of the initial phase: COCO's 0.5 TP threshold and an intermediate 0.75 (§3.3).
    xi_initial: Thresholds = (0.5, 0.5, 0.75)
    #: (ξ0, ξ1, ξ2) of the advanced phase: the previous upper bounds; ξ2 < 1 on purpose (§3.3).
    xi_advanced: Thresholds = (0.75, 0.75, 0.9)
    #: STEP: fraction of training after which the advanced thresholds apply (Table 5: 1/2 best).
    switch_at: float = 0.5
    #: Generalized IoU instead of IoU, for matching and thresholds (not in the paper).
    use_giou: bool = False
    #: Add a label-mismatch cost to the matching (Table 3 "Box & Label"; box-only is better).
    label_aware: bool = False
    #: The cost added per label mismatch when ``label_aware``; 1.0 outweighs any IoU difference.
    label_cost: float = 1.0
    #: Divide precision by #predictions instead of #matched pairs (punishes extra boxes).
    precision_over_predictions: bool = False
    #: Pixels a box may exceed the image by and still count as inside (rounding after rescale).
    bounds_tolerance: float = 1.0

    def __post_init__(self) -> None:
        for name in ("xi_initial", "xi_advanced"):
            xi = tuple(float(x) for x in getattr(self, name))
            if len(xi) != 3 or not all(0.0 <= x <= 1.0 for x in xi) or xi[1] > xi[2]:
                raise ValueError(f"{name}={xi!r} must be (ξ0, ξ1, ξ2) in [0, 1] with ξ1 ≤ ξ2")
            object.__setattr__(self, name, xi)
        if not 0.0 <= self.switch_at <= 1.0:
            raise ValueError(f"switch_at={self.switch_at!r} must lie in [0, 1]")
        if self.label_cost < 0 or self.bounds_tolerance < 0:
            raise ValueError("label_cost and bounds_tolerance must be >= 0")

    def thresholds(self, progress: float) -> Thresholds:
        """(ξ0, ξ1, ξ2) at training progress ``progress`` in [0, 1]."""
        advanced = self.switch_at < 1.0 and progress >= self.switch_at
        return self.xi_advanced if advanced else self.xi_initial


# --------------------------------------------------------------------------------------------
# Parsing the completion (template check) and validating content
# --------------------------------------------------------------------------------------------

_FENCE_RE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)
_MAX_SCAN = 64  # '[' positions tried when the list is embedded in prose


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _template_ok(obj: Any) -> bool:
    return isinstance(obj, list) and all(
        isinstance(o, dict)
        and isinstance(o.get("bbox_2d"), list)
        and len(o["bbox_2d"]) == 4
        and all(_is_number(v) for v in o["bbox_2d"])
        for o in obj
    )


def _to_float(v: float) -> float:
    try:
        return float(v)
    except OverflowError:  # a 400-digit integer: not a coordinate
        return math.inf


def parse_boxes(text: str) -> list[dict[str, Any]] | None:
    r"""The JSON box list of a completion, or None when the template does not parse (f_tem = 0).

    Looks in the last ```json fence if any, else in the whole text, for the first JSON list
    of objects (lists of plain values, as in prose "[1, 2]", are skipped); the answer is that
    list, and it must be a list of objects each with a 4-number ``bbox_2d``. Each returned
    object has float ``bbox_2d`` and ``label`` (None when absent).

    >>> parse_boxes('Here: ```json\n[{"bbox_2d": [1, 2, 30, 40], "label": "cat"}]\n```')
    [{'bbox_2d': [1.0, 2.0, 30.0, 40.0], 'label': 'cat'}]
    >>> parse_boxes('[{"bbox_2d": [1, 2, 30]}]') is None, parse_boxes("[]")
    (True, [])
    """
    if not isinstance(text, str):
        return None
    fences = _FENCE_RE.findall(text)
    candidates = [fences[-1], text] if fences else [text]
    decoder = json.JSONDecoder()
    for cand in candidates:
        for m in itertools.islice(re.finditer(r"\[", cand), _MAX_SCAN):
            try:
                obj, _ = decoder.raw_decode(cand, m.start())
            except (ValueError, RecursionError):
                continue
            if not isinstance(obj, list) or not all(isinstance(o, dict) for o in obj):
                continue
            if not _template_ok(obj):
                return None  # the answer list is malformed: f_tem = 0
            return [
                {"bbox_2d": [_to_float(v) for v in o["bbox_2d"]], "label": o.get("label")}
                for o in obj
            ]
    return None


def _size(value: Any, field: str) -> tuple[float, float]:
    """(w, h) from ``(w, h)`` or ``{"width": w, "height": h}``; ValueError naming the field."""
    if isinstance(value, dict):
        value = (value.get("width"), value.get("height"))
    try:
        w, h = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{field}={value!r} must be (width, height)") from None
    if not (math.isfinite(w) and math.isfinite(h) and w > 0 and h > 0):
        raise ValueError(f"{field}={value!r} must be positive and finite")
    return w, h


def rescale_boxes(boxes: np.ndarray, input_size: Any, image_size: Any) -> np.ndarray:
    """Map ``(N, 4)`` boxes from the model's input resolution to the original image's.

    >>> rescale_boxes(np.array([[14.0, 28.0, 28.0, 56.0]]), (28, 56), (100, 200)).tolist()
    [[50.0, 100.0, 100.0, 200.0]]
    """
    if input_size is None:
        return boxes
    (wi, hi), (wo, ho) = _size(input_size, "input_size"), _size(image_size, "image_size")
    return boxes * np.array([wo / wi, ho / hi, wo / wi, ho / hi])


def _content_ok(boxes: np.ndarray, image_size: tuple[float, float] | None, tol: float) -> bool:
    """f_cont: finite, x1 < x2, y1 < y2, inside the image up to ``tol`` pixels (if known)."""
    if boxes.size == 0:
        return True
    x1, y1, x2, y2 = boxes.T
    ok = np.isfinite(boxes).all() and (x1 < x2).all() and (y1 < y2).all()
    if ok and image_size is not None:
        w, h = image_size
        ok = (
            (x1 >= -tol).all()
            and (y1 >= -tol).all()
            and (x2 <= w + tol).all()
            and (y2 <= h + tol).all()
        )
    return bool(ok)


# --------------------------------------------------------------------------------------------
# Geometry, matching, and the reward terms
# --------------------------------------------------------------------------------------------


def iou_matrix(a: np.ndarray, b: np.ndarray, *, giou: bool = False) -> np.ndarray:
    """Pairwise IoU (or GIoU) of ``a`` (N, 4) and ``b`` (M, 4) xyxy boxes -> (N, M).

    >>> iou_matrix(np.array([[0, 0, 2, 2]]), np.array([[1, 1, 3, 3]])).round(4).tolist()
    [[0.1429]]
    >>> iou_matrix(np.array([[0, 0, 1, 1]]), np.array([[2, 0, 3, 1]]), giou=True).tolist()
    [[-0.3333333333333333]]
    """
    a = np.asarray(a, dtype=float).reshape(-1, 4)[:, None, :]
    b = np.asarray(b, dtype=float).reshape(-1, 4)[None, :, :]
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    union = area_a + area_b - inter
    iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    if not giou:
        return iou
    cw = np.maximum(a[..., 2], b[..., 2]) - np.minimum(a[..., 0], b[..., 0])
    ch = np.maximum(a[..., 3], b[..., 3]) - np.minimum(a[..., 1], b[..., 1])
    hull = cw * ch
    return iou - np.where(hull > 0, (hull - union) / np.where(hull > 0, hull, 1.0), 0.0)


def iou(a: Sequence[float], b: Sequence[float], *, giou: bool = False) -> float:
    """IoU (or GIoU) of two xyxy boxes.

    >>> iou([0, 0, 10, 10], [5, 0, 15, 10])  # 50 / (100 + 100 - 50)
    0.3333333333333333
    """
    return float(iou_matrix(np.array([a]), np.array([b]), giou=giou)[0, 0])


def giou(a: Sequence[float], b: Sequence[float]) -> float:
    """Generalized IoU (Rezatofighi et al. 2019): IoU − (hull − union) / hull, in [−1, 1].

    Unlike IoU it still ranks disjoint boxes by distance, which gives a signal to a policy whose
    boxes miss entirely.

    >>> giou([0, 0, 10, 10], [20, 0, 30, 10])  # hull 30x10 = 300, union 200: 0 − 100/300
    -0.3333333333333333
    """
    return iou(a, b, giou=True)


def match_boxes(
    pred: np.ndarray,
    gt: np.ndarray,
    *,
    giou: bool = False,
    pred_labels: Sequence[Any] | None = None,
    gt_labels: Sequence[Any] | None = None,
    label_cost: float = 1.0,
) -> list[tuple[int, int, float]]:
    """Box-prioritized Hungarian matching: ``(pred_index, gt_index, iou)`` for min(N, M) pairs.

    The cost is 1 − IoU; with both label lists given, ``label_cost`` is added to each pair whose
    labels differ (case- and whitespace-insensitive).
    """
    if len(pred) == 0 or len(gt) == 0:
        return []
    from scipy.optimize import linear_sum_assignment  # lazy: keeps `import ivr.rewards` light

    overlap = iou_matrix(pred, gt, giou=giou)
    cost = 1.0 - overlap
    if pred_labels is not None and gt_labels is not None:
        norm = [" ".join(str(x).lower().split()) for x in pred_labels]
        gnorm = [" ".join(str(x).lower().split()) for x in gt_labels]
        cost = cost + label_cost * np.array([[p != g for g in gnorm] for p in norm], dtype=float)
    rows, cols = linear_sum_assignment(cost)
    return [(int(r), int(c), float(overlap[r, c])) for r, c in zip(rows, cols)]


def differentiate(x: float, xi1: float, xi2: float) -> float:
    """Vision-R1 eq. 8: 1 above ξ2, 0 below ξ1, x in between (sharper contrast in a group).

    >>> differentiate(0.8, 0.5, 0.75), differentiate(0.6, 0.5, 0.75), differentiate(0.4, 0.5, 0.75)
    (1.0, 0.6, 0.0)
    """
    if x >= xi2:
        return 1.0
    if x < xi1:
        return 0.0
    return float(x)


def _gt_array(gt_boxes: Any) -> tuple[np.ndarray, list[Any] | None]:
    """GT as (M, 4) floats, plus labels when GT came as ``{"bbox_2d", "label"}`` objects."""
    labels: list[Any] | None = None
    if gt_boxes is None or isinstance(gt_boxes, (str, bytes, dict)):
        raise ValueError(f"boxes={gt_boxes!r} must be a list of [x1, y1, x2, y2] ([] = no object)")
    items = list(gt_boxes)
    if items and all(isinstance(g, dict) for g in items):
        labels = [g.get("label") for g in items]
        items = [g.get("bbox_2d") for g in items]
    try:
        arr = np.array([[float(v) for v in g] for g in items], dtype=float).reshape(-1, 4)
    except (TypeError, ValueError):
        raise ValueError(f"boxes={gt_boxes!r} must be a list of [x1, y1, x2, y2]") from None
    if len(arr) != len(items) or not np.isfinite(arr).all():
        raise ValueError(f"boxes={gt_boxes!r} must be a list of finite [x1, y1, x2, y2]")
    if ((arr[:, 2] <= arr[:, 0]) | (arr[:, 3] <= arr[:, 1])).any():
        raise ValueError(f"boxes={gt_boxes!r} has a box with x2 <= x1 or y2 <= y1")
    return arr, labels


def _progress(value: Any) -> float:
    try:
        p = float(value if value is not None else 0.0)
    except (TypeError, ValueError):
        raise ValueError(f"progress={value!r} must be a number in [0, 1]") from None
    if math.isnan(p):
        raise ValueError("progress is NaN; it must be a number in [0, 1]")
    return min(max(p, 0.0), 1.0)


def score_localization(
    completion: Any,
    gt_boxes: Sequence[Any],
    *,
    image_size: Any,
    input_size: Any = None,
    progress: float = 0.0,
    gt_labels: Sequence[Any] | None = None,
    config: LocalizationConfig | None = None,
) -> dict[str, Any]:
    """Vision-R1 reward of one completion, with its parts.

    Returns ``format``, ``recall``, ``precision``, ``total`` (= their sum, in [0, 3]) and, for
    inspection, ``n_pred``, ``n_gt``, ``ious`` (of the matched pairs) and ``thresholds``.
    Malformed model output scores 0; malformed ground truth or sizes raise ValueError.
    ``image_size=None`` (size unknown) skips the inside-the-image check; it cannot be combined
    with ``input_size``, since rescaling needs both.

    Two GT boxes, two predictions: IoU 1 and IoU 0.6 (= 60/100: [0, 0, 10, 6] in [0, 0, 10, 10]).
    Initial stage: recall 2/2 -> f(1) = 1; precision mean(f(1), f(0.6)) = (1 + 0.6) / 2 = 0.8.

    >>> out = score_localization(
    ...     '[{"bbox_2d": [20, 20, 40, 40]}, {"bbox_2d": [0, 0, 10, 6]}]',
    ...     [[0, 0, 10, 10], [20, 20, 40, 40]], image_size=(100, 100))
    >>> {k: out[k] for k in ("format", "recall", "precision", "total")}
    {'format': 1.0, 'recall': 1.0, 'precision': 0.8, 'total': 2.8}
    """
    cfg = config or LocalizationConfig()
    img = None if image_size is None else _size(image_size, "image_size")
    if input_size is not None:
        _size(input_size, "input_size")
        if img is None:
            raise ValueError("image_size is needed to rescale boxes from input_size")
    gt, labels_from_boxes = _gt_array(gt_boxes)
    gt_labels = list(gt_labels) if gt_labels is not None else labels_from_boxes
    if gt_labels is not None and len(gt_labels) != len(gt):
        raise ValueError(f"gt_labels has {len(gt_labels)} labels for {len(gt)} boxes")
    xi0, xi1, xi2 = cfg.thresholds(_progress(progress))
    out: dict[str, Any] = {
        "format": 0.0,
        "recall": 0.0,
        "precision": 0.0,
        "total": 0.0,
        "n_pred": 0,
        "n_gt": len(gt),
        "ious": [],
        "thresholds": (xi0, xi1, xi2),
    }
    parsed = parse_boxes(completion_text(completion))
    if parsed is None:
        return out
    pred = rescale_boxes(
        np.array([o["bbox_2d"] for o in parsed], dtype=float).reshape(-1, 4), input_size, image_size
    )
    out["n_pred"] = len(pred)
    if not _content_ok(pred, img, cfg.bounds_tolerance):
        return out
    out["format"] = 1.0
    if len(gt) == 0:  # negative sample: the right answer is no box at all
        out["recall"] = out["precision"] = 1.0 if len(pred) == 0 else 0.0
    elif len(pred) > 0:
        use_labels = cfg.label_aware and gt_labels is not None
        pairs = match_boxes(
            pred,
            gt,
            giou=cfg.use_giou,
            pred_labels=[o["label"] for o in parsed] if use_labels else None,
            gt_labels=gt_labels if use_labels else None,
            label_cost=cfg.label_cost,
        )
        ious = [v for _, _, v in pairs]
        out["ious"] = ious
        hits = sum(v >= xi0 for v in ious)
        out["recall"] = differentiate(hits / len(gt), xi1, xi2)
        per_pair = [differentiate(v if v >= xi0 else 0.0, xi1, xi2) for v in ious]
        denom = len(pred) if cfg.precision_over_predictions else len(pairs)
        out["precision"] = sum(per_pair) / denom
    out["total"] = out["format"] + out["recall"] + out["precision"]
    return out


class LocalizationReward:
    """TRL-style Vision-R1 reward: ``fn(completions, boxes, image_size, ...) -> list``.

    ``boxes`` rows are lists of ``[x1, y1, x2, y2]`` (or of ``{"bbox_2d", "label"}`` objects,
    the model's own format); a row whose ``boxes`` is None is not a localization sample and
    gets None. ``progress`` may be a scalar or a per-row list.
    """

    def __init__(
        self, config: LocalizationConfig | None = None, name: str = "localization_reward"
    ) -> None:
        self.config = config or LocalizationConfig()
        self.__name__ = name

    def components(
        self,
        completions: Sequence[Any],
        boxes: Any = None,
        image_size: Any = None,
        input_size: Any = None,
        progress: Any = 0.0,
        labels: Any = None,
        **_: Any,
    ) -> dict[str, list[float | None]]:
        """Per-completion ``format``, ``recall``, ``precision`` and ``reward`` (the total)."""
        n = len(completions)
        keys = ("format", "recall", "precision", "reward")
        out: dict[str, list[float | None]] = {k: [] for k in keys}
        rows = zip(
            completions,
            column(boxes, n, "boxes") if boxes is not None else [None] * n,
            _size_column(image_size, n, "image_size"),
            _size_column(input_size, n, "input_size"),
            column(progress, n, "progress"),
            column(labels, n, "labels"),
        )
        for completion, gt, img, inp, prog, lab in rows:
            if gt is None:
                for k in keys:
                    out[k].append(None)
                continue
            s = score_localization(
                completion,
                gt,
                image_size=img,
                input_size=inp,
                progress=prog,
                gt_labels=lab,
                config=self.config,
            )
            for k, src in zip(keys, ("format", "recall", "precision", "total")):
                out[k].append(s[src])
        return out

    def __call__(self, completions: Sequence[Any], **columns: Any) -> list[float | None]:
        return self.components(completions, **columns)["reward"]

    def __repr__(self) -> str:
        return f"LocalizationReward({self.config!r})"


def _size_column(value: Any, n: int, name: str) -> list[Any]:
    """A (w, h) pair or a dict is one size for every row; otherwise one size per row."""
    if value is None or isinstance(value, dict):
        return [value] * n
    values = list(value.tolist() if hasattr(value, "tolist") else value)
    if len(values) == 2 and all(isinstance(v, (int, float)) for v in values):
        return [tuple(values)] * n
    return column(values, n, name)


def make_localization_reward(
    config: LocalizationConfig | None = None, **overrides: Any
) -> LocalizationReward:
    """A Vision-R1 reward with another configuration (ablations: GIoU, STEP, label-aware...).

    >>> strict = make_localization_reward(switch_at=0.0)  # advanced thresholds from the start
    >>> strict(['[{"bbox_2d": [0, 0, 10, 8]}]'], boxes=[[[0, 0, 10, 10]]], image_size=[(10, 10)])
    [2.8]
    """
    cfg = config or LocalizationConfig()
    if overrides:
        cfg = LocalizationConfig(**{**cfg.__dict__, **overrides})
    return LocalizationReward(cfg)


def localization_reward(
    completions: Sequence[Any],
    boxes: Any = None,
    image_size: Any = None,
    input_size: Any = None,
    progress: Any = 0.0,
    **columns: Any,
) -> list[float | None]:
    r"""Vision-R1 reward (format + recall + precision, in [0, 3]) with the paper's settings.

    >>> localization_reward(
    ...     ['```json\n[{"bbox_2d": [0, 0, 50, 50], "label": "dog"}]\n```', "no boxes", "[]", "x"],
    ...     boxes=[[[0, 0, 100, 100]], [[0, 0, 100, 100]], [], None],
    ...     image_size=[(100, 100)] * 4,
    ...     input_size=[(50, 50)] * 4,
    ... )
    [3.0, 0.0, 3.0, None]
    """
    return _DEFAULT(
        completions,
        boxes=boxes,
        image_size=image_size,
        input_size=input_size,
        progress=progress,
        **columns,
    )


_DEFAULT = LocalizationReward()
