"""COCO detection metrics for VLM outputs (mAP, AP50, AP75, AR100 …), via faster-coco-eval.

Input, one dict per image, boxes in absolute ``[x1, y1, x2, y2]`` pixels of the ORIGINAL image:

    prediction   {"boxes": [[x1, y1, x2, y2], …], "labels": ["cat", …], "scores": [0.9, …]}
    ground truth {"boxes": [[x1, y1, x2, y2], …], "labels": ["cat", …]}

VLMs emit boxes without confidences. ``scores`` is therefore optional: a missing score is 1.0,
and the boxes are ranked in the order the model emitted them (COCO's sort by score is stable,
so among equal scores the earlier box comes first; it is also the one kept under ``maxDets``).
``labels`` is optional too: a box without a label is of class "object", which is what grounding
/ REC data wants; ``class_agnostic=True`` ignores the labels on both sides (box-only AP). An
inverted box (x2 < x1 or y2 < y1) counts as a zero-area box: it matches nothing, and is not
silently repaired.

``per_subset`` names the subset of each image (ODinW-style: one name per dataset). The result then
also holds the metrics of each subset on its own and their unweighted ``macro`` mean — the number
ODinW papers report. Labels are scoped to their subset ("car" in two datasets are two classes).

Values are fractions in [0, 1]; ``None`` where COCO has nothing to average (e.g. no ground-truth
box of that size range), never a fake 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["COCO_METRIC_NAMES", "coco_metrics"]

#: The 12 numbers of ``COCOeval.summarize()``, in its order (maxDets 1/10/100; area all/S/M/L).
COCO_METRIC_NAMES: tuple[str, ...] = (
    "mAP",  # AP @ IoU 0.50:0.95, all areas, 100 dets
    "AP50",
    "AP75",
    "AP_small",
    "AP_medium",
    "AP_large",
    "AR1",
    "AR10",
    "AR100",
    "AR_small",
    "AR_medium",
    "AR_large",
)

_DEFAULT_LABEL = "object"


def _quiet(*_: Any, **__: Any) -> None:
    return None


def _boxes(entry: Mapping[str, Any], what: str, index: int) -> list[list[float]]:
    if not isinstance(entry, Mapping):
        raise TypeError(f"{what} {index}: expected a dict with 'boxes', got {type(entry).__name__}")
    boxes = entry.get("boxes") or []
    out = []
    for j, box in enumerate(boxes):
        if len(box) != 4:
            raise ValueError(f"{what} {index}, box {j}: expected [x1, y1, x2, y2], got {box!r}")
        vals = [float(v) for v in box]
        if not all(math.isfinite(v) for v in vals):
            raise ValueError(f"{what} {index}, box {j}: non-finite coordinate in {box!r}")
        out.append(vals)
    return out


def _column(entry: Mapping[str, Any], key: str, n: int, default: Any, what: str, i: int) -> list:
    values = entry.get(key)
    if values is None:
        return [default] * n
    values = list(values)
    if len(values) != n:
        raise ValueError(f"{what} {i}: {len(values)} {key} for {n} boxes")
    return values


def _xywh(box: list[float]) -> list[float]:
    x1, y1, x2, y2 = box
    return [x1, y1, max(0.0, x2 - x1), max(0.0, y2 - y1)]


def _evaluate(
    predictions: Sequence[Mapping[str, Any]],
    ground_truths: Sequence[Mapping[str, Any]],
    scopes: Sequence[str],
    class_agnostic: bool,
) -> dict[str, float | None]:
    """COCO bbox evaluation of aligned lists; ``scopes[i]`` prefixes image i's labels."""
    from faster_coco_eval import COCO, COCOeval_faster

    categories: dict[tuple[str, str], int] = {}

    def cat_id(scope: str, label: Any) -> int:
        key = (scope, _DEFAULT_LABEL if class_agnostic else str(label))
        if key not in categories:
            categories[key] = len(categories) + 1
        return categories[key]

    images, gt_anns, dt_anns = [], [], []
    for i, (pred, gt) in enumerate(zip(predictions, ground_truths)):
        image_id = i + 1
        images.append({"id": image_id, "width": 0, "height": 0})
        gt_boxes = _boxes(gt, "ground truth", i)
        gt_labels = _column(gt, "labels", len(gt_boxes), _DEFAULT_LABEL, "ground truth", i)
        for box, label in zip(gt_boxes, gt_labels):
            xywh = _xywh(box)
            gt_anns.append(
                {
                    "id": len(gt_anns) + 1,
                    "image_id": image_id,
                    "category_id": cat_id(scopes[i], label),
                    "bbox": xywh,
                    "area": xywh[2] * xywh[3],
                    "iscrowd": 0,
                }
            )
        dt_boxes = _boxes(pred, "prediction", i)
        dt_labels = _column(pred, "labels", len(dt_boxes), _DEFAULT_LABEL, "prediction", i)
        dt_scores = _column(pred, "scores", len(dt_boxes), 1.0, "prediction", i)
        for box, label, score in zip(dt_boxes, dt_labels, dt_scores):
            dt_anns.append(
                {
                    "image_id": image_id,
                    "category_id": cat_id(scopes[i], label),
                    "bbox": _xywh(box),
                    "score": float(score),
                }
            )
    if not gt_anns:
        return dict.fromkeys(COCO_METRIC_NAMES)

    gt_coco = COCO(print_function=_quiet)
    gt_coco.dataset = {
        "images": images,
        "annotations": gt_anns,
        "categories": [{"id": cid, "name": f"{s}/{lab}"} for (s, lab), cid in categories.items()],
    }
    gt_coco.createIndex()
    dt_coco = gt_coco.loadRes(dt_anns)
    evaluator = COCOeval_faster(gt_coco, dt_coco, "bbox", print_function=_quiet)
    evaluator.run()
    stats = np.asarray(evaluator.stats, dtype=float)[: len(COCO_METRIC_NAMES)]
    return {
        name: (None if value < 0 else float(value)) for name, value in zip(COCO_METRIC_NAMES, stats)
    }


def coco_metrics(
    predictions: Sequence[Mapping[str, Any]],
    ground_truths: Sequence[Mapping[str, Any]],
    *,
    per_subset: Sequence[str] | None = None,
    class_agnostic: bool = False,
) -> dict[str, Any]:
    """COCO box metrics of ``predictions`` against ``ground_truths`` (aligned, one dict per image).

    Returns the 12 COCO numbers (:data:`COCO_METRIC_NAMES`; ``mAP`` is AP@[.50:.95]) and
    ``num_images``; with ``per_subset`` also ``subsets`` (name → the same dict) and ``macro`` (the
    unweighted mean over subsets of each metric, subsets where it is ``None`` left out).
    ``class_agnostic`` ignores all labels (every box one class).

    >>> gt = [{"boxes": [[0, 0, 10, 10]], "labels": ["cat"]}]
    >>> coco_metrics([{"boxes": [[0, 0, 10, 10]], "labels": ["cat"]}], gt)["mAP"]
    1.0
    >>> coco_metrics([{"boxes": []}], gt)["AR100"]
    0.0
    """
    if len(predictions) != len(ground_truths):
        raise ValueError(
            f"coco_metrics: {len(predictions)} predictions for {len(ground_truths)} ground truths; "
            "pass one dict per image, in the same order"
        )
    if per_subset is None:
        scopes = [""] * len(predictions)
        result: dict[str, Any] = _evaluate(predictions, ground_truths, scopes, class_agnostic)
        result["num_images"] = len(predictions)
        return result

    subsets = [str(s) for s in per_subset]
    if len(subsets) != len(predictions):
        raise ValueError(
            f"coco_metrics: per_subset has {len(subsets)} names for {len(predictions)} images"
        )
    result = _evaluate(predictions, ground_truths, subsets, class_agnostic)
    result["num_images"] = len(predictions)
    per: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(subsets):  # first-seen order
        idx = [i for i, s in enumerate(subsets) if s == name]
        sub = _evaluate(
            [predictions[i] for i in idx],
            [ground_truths[i] for i in idx],
            [name] * len(idx),
            class_agnostic,
        )
        sub["num_images"] = len(idx)
        per[name] = sub
    macro: dict[str, float | None] = {}
    for metric in COCO_METRIC_NAMES:
        values = [m[metric] for m in per.values() if m[metric] is not None]
        macro[metric] = float(np.mean(values)) if values else None
    result["subsets"] = per
    result["macro"] = macro
    return result
