"""coco_metrics: equal to pycocotools on random data, and hand-derived cases."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from ivr.eval.coco import COCO_METRIC_NAMES, coco_metrics

GT = [{"boxes": [[0, 0, 10, 10]], "labels": ["cat"]}]


# ----------------------------------------------------------------------------- vs pycocotools


def _random_case(rng: np.random.Generator, n_images: int, tied: bool):
    def boxes(n: int) -> list[list[float]]:
        xy = rng.uniform(0, 300, (n, 2))
        wh = rng.uniform(2, 150, (n, 2))
        return np.concatenate([xy, xy + wh], 1).round(1).tolist()

    gts, preds = [], []
    for i in range(n_images):
        g = boxes(int(rng.integers(0, 6)))
        # near-misses of the ground truth (various IoUs) plus clutter; one crowded image > 100 dets
        p = [[c + rng.normal(0, 6) for c in b] for b in g if rng.random() < 0.8]
        p += boxes(120 if i == 0 else int(rng.integers(0, 5)))
        labels = ["a", "b", "c"]
        gts.append({"boxes": g, "labels": rng.choice(labels, len(g)).tolist()})
        scores = np.ones(len(p)) if tied else rng.uniform(0, 1, len(p)).round(2)
        preds.append(
            {"boxes": p, "labels": rng.choice(labels, len(p)).tolist(), "scores": scores.tolist()}
        )
    return preds, gts


def _pycocotools(preds, gts) -> list[float | None]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    cats = {"a": 1, "b": 2, "c": 3}
    ds = {
        "images": [{"id": i + 1} for i in range(len(gts))],
        "categories": [{"id": v, "name": k} for k, v in cats.items()],
        "annotations": [],
    }
    dts = []
    for i, (g, p) in enumerate(zip(gts, preds)):
        for (x1, y1, x2, y2), lab in zip(g["boxes"], g["labels"]):
            w, h = x2 - x1, y2 - y1
            ann = {"image_id": i + 1, "category_id": cats[lab], "bbox": [x1, y1, w, h]}
            ds["annotations"].append(
                {**ann, "id": len(ds["annotations"]) + 1, "area": w * h, "iscrowd": 0}
            )
        for (x1, y1, x2, y2), lab, s in zip(p["boxes"], p["labels"], p["scores"]):
            bbox = [x1, y1, max(0.0, x2 - x1), max(0.0, y2 - y1)]
            dts.append({"image_id": i + 1, "category_id": cats[lab], "bbox": bbox, "score": s})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = ds
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(dts), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [None if v < 0 else float(v) for v in ev.stats]


@pytest.mark.parametrize("seed", range(4))
def test_equals_pycocotools_on_random_data(seed: int) -> None:
    pytest.importorskip("pycocotools")
    rng = np.random.default_rng(seed)
    preds, gts = _random_case(rng, n_images=25, tied=seed % 2 == 1)  # odd seeds: no scores given
    if seed % 2:
        preds = [{k: v for k, v in p.items() if k != "scores"} for p in preds]
        ref_preds = [{**p, "scores": [1.0] * len(p["boxes"])} for p in preds]
    else:
        ref_preds = preds
    ours = coco_metrics(preds, gts)
    ref = _pycocotools(ref_preds, gts)
    for name, want in zip(COCO_METRIC_NAMES, ref):
        got = ours[name]
        assert (got is None) == (want is None), name
        if want is not None:
            assert got == pytest.approx(want, abs=1e-9), name
    assert ours["mAP"] not in (None, 0.0, 1.0)  # a non-degenerate case


# ----------------------------------------------------------------------------- hand cases


def test_perfect_and_empty() -> None:
    m = coco_metrics([{"boxes": [[0, 0, 10, 10]], "labels": ["cat"]}], GT)
    assert (m["mAP"], m["AP50"], m["AP75"], m["AR100"]) == (1.0, 1.0, 1.0, 1.0)
    # a 10x10 box is "small" (< 32²): no medium/large ground truth → None, not a fake 0
    assert m["AP_small"] == 1.0 and m["AP_medium"] is None and m["AP_large"] is None
    m = coco_metrics([{"boxes": []}], GT)
    assert (m["mAP"], m["AR100"]) == (0.0, 0.0)
    m = coco_metrics([{"boxes": [[0, 0, 1, 1]]}], [{"boxes": []}])
    assert all(m[k] is None for k in COCO_METRIC_NAMES)  # nothing to recall


def test_iou_thresholds() -> None:
    # GT [0,0,10,10] (area 100) vs [0,0,10,6.2]: IoU = 62/100 = 0.62, a match at the IoU
    # thresholds 0.50, 0.55, 0.60 and a miss at 0.65 … 0.95 → mAP = 3/10, AP50 = 1, AP75 = 0.
    m = coco_metrics([{"boxes": [[0, 0, 10, 6.2]], "labels": ["cat"]}], GT)
    assert m["AP50"] == 1.0 and m["AP75"] == 0.0
    assert m["mAP"] == pytest.approx(0.3)
    assert m["AR100"] == pytest.approx(0.3)


def test_without_scores_emission_order_ranks() -> None:
    miss, hit = [50, 50, 60, 60], [0, 0, 10, 10]
    # Miss first: ranked [FP, TP] → precision 1/2 at recall 1 → AP = 0.5; with maxDets 1 only the
    # miss is kept → AR1 = 0.
    m = coco_metrics([{"boxes": [miss, hit], "labels": ["cat", "cat"]}], GT)
    assert (m["AP50"], m["AR1"], m["AR100"]) == (0.5, 0.0, 1.0)
    # Hit first: ranked [TP, FP] → AP = 1, AR1 = 1.
    m = coco_metrics([{"boxes": [hit, miss], "labels": ["cat", "cat"]}], GT)
    assert (m["AP50"], m["AR1"]) == (1.0, 1.0)
    # Explicit scores override emission order.
    m = coco_metrics([{"boxes": [miss, hit], "labels": ["cat"] * 2, "scores": [0.1, 0.9]}], GT)
    assert m["AP50"] == 1.0


def test_labels_and_class_agnostic() -> None:
    pred = [{"boxes": [[0, 0, 10, 10]], "labels": ["dog"]}]
    assert coco_metrics(pred, GT)["AP50"] == 0.0
    assert coco_metrics(pred, GT, class_agnostic=True)["AP50"] == 1.0
    # no labels at all on either side: one class "object" (grounding / REC)
    assert coco_metrics([{"boxes": [[0, 0, 10, 10]]}], [{"boxes": [[0, 0, 10, 10]]}])["mAP"] == 1.0


def test_inverted_box_is_zero_area() -> None:
    m = coco_metrics([{"boxes": [[10, 10, 0, 0]], "labels": ["cat"]}], GT)
    assert m["AP50"] == 0.0


def test_per_subset_macro_odinw() -> None:
    preds = [
        {"boxes": [[0, 0, 10, 10]], "labels": ["car"]},  # aerial: right
        {"boxes": [[0, 0, 10, 10]], "labels": ["car"]},  # aerial: right
        {"boxes": [], "labels": []},  # pothole: missed
    ]
    gts = [
        {"boxes": [[0, 0, 10, 10]], "labels": ["car"]},
        {"boxes": [[0, 0, 10, 10]], "labels": ["car"]},
        {"boxes": [[0, 0, 10, 10]], "labels": ["car"]},
    ]
    m = coco_metrics(preds, gts, per_subset=["aerial", "aerial", "pothole"])
    assert m["subsets"]["aerial"]["mAP"] == 1.0 and m["subsets"]["pothole"]["mAP"] == 0.0
    assert m["subsets"]["aerial"]["num_images"] == 2
    # macro = mean over datasets (ODinW), not over images
    assert m["macro"]["mAP"] == 0.5
    # pooled: "car" is a different class in each subset, so pooled mAP is also a class mean here
    assert m["mAP"] == pytest.approx(0.5)


def test_bad_input_messages() -> None:
    with pytest.raises(ValueError, match="2 predictions for 1 ground truths"):
        coco_metrics([{"boxes": []}] * 2, GT)
    with pytest.raises(ValueError, match=r"prediction 0, box 0: expected \[x1, y1, x2, y2\]"):
        coco_metrics([{"boxes": [[0, 0, 1]]}], GT)
    with pytest.raises(ValueError, match="2 labels for 1 boxes"):
        coco_metrics([{"boxes": [[0, 0, 1, 1]], "labels": ["a", "b"]}], GT)
    with pytest.raises(ValueError, match="per_subset has 2 names for 1 images"):
        coco_metrics([{"boxes": []}], GT, per_subset=["a", "b"])
