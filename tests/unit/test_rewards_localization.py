"""Vision-R1 localization reward: hand-computed IoUs, matching, stages, negatives, rescaling.

Boxes are xyxy pixels. Arithmetic for every expected value is in the comments.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from ivr.rewards import (
    LocalizationConfig,
    differentiate,
    giou,
    iou,
    iou_matrix,
    localization_reward,
    make_localization_reward,
    match_boxes,
    parse_boxes,
    score_localization,
)


def js(*boxes: list[float], labels: list[str] | None = None) -> str:
    objs = [
        {"bbox_2d": list(b), **({"label": labels[i]} if labels else {})}
        for i, b in enumerate(boxes)
    ]
    return json.dumps(objs)


IMG = (100, 100)


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ([0, 0, 10, 10], [0, 0, 10, 10], 1.0),  # identical
        ([0, 0, 10, 10], [5, 0, 15, 10], 1 / 3),  # inter 5·10 = 50, union 100 + 100 − 50 = 150
        ([0, 0, 2, 2], [1, 1, 3, 3], 1 / 7),  # inter 1, union 4 + 4 − 1 = 7
        ([0, 0, 10, 10], [0, 0, 10, 8], 0.8),  # nested: 80 / 100
        ([0, 0, 10, 10], [10, 0, 20, 10], 0.0),  # touching edges: no area in common
        ([0, 0, 10, 10], [20, 20, 30, 30], 0.0),  # disjoint
    ],
)
def test_iou(a: list[float], b: list[float], expected: float) -> None:
    assert iou(a, b) == pytest.approx(expected)
    assert iou(b, a) == pytest.approx(expected)  # symmetric


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ([0, 0, 10, 10], [0, 0, 10, 10], 1.0),
        ([0, 0, 10, 10], [20, 0, 30, 10], -1 / 3),  # IoU 0; hull 30·10 = 300, union 200: −100/300
        ([0, 0, 10, 10], [5, 5, 15, 15], 1 / 7 - 50 / 225),  # IoU 25/175; hull 225, union 175
        ([0, 0, 10, 10], [0, 0, 10, 8], 0.8),  # nested: hull = the big box, GIoU = IoU
    ],
)
def test_giou(a: list[float], b: list[float], expected: float) -> None:
    assert giou(a, b) == pytest.approx(expected)


def test_iou_matches_pycocotools() -> None:
    """Cross-check against an independent implementation (pycocotools takes xywh boxes)."""
    mask = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 80, size=(20, 2))
    wh = rng.uniform(1, 40, size=(20, 2))
    a = np.concatenate([xy[:10], xy[:10] + wh[:10]], axis=1)
    b = np.concatenate([xy[10:], xy[10:] + wh[10:]], axis=1)
    to_xywh = lambda x: np.concatenate([x[:, :2], x[:, 2:] - x[:, :2]], axis=1)  # noqa: E731
    ref = mask.iou(to_xywh(a).tolist(), to_xywh(b).tolist(), [0] * 10)
    np.testing.assert_allclose(iou_matrix(a, b), ref, atol=1e-9)


@pytest.mark.parametrize(
    ("x", "expected"), [(0.0, 0.0), (0.49, 0.0), (0.5, 0.5), (0.6, 0.6), (0.75, 1.0), (1.0, 1.0)]
)
def test_differentiate_initial_stage(x: float, expected: float) -> None:
    # ξ1 = 0.5, ξ2 = 0.75: below 0.5 -> 0, from 0.75 -> 1, linear in between
    assert differentiate(x, 0.5, 0.75) == expected


def test_hungarian_beats_greedy() -> None:
    # Heights all 0..10, so IoU is the 1-D interval IoU in x.
    # G1 = [0, 10], G2 = [3, 13]; P1 = [1, 11], P2 = [0, 8].
    # IoU(P1,G1) = 9/11 = 0.818   IoU(P1,G2) = 8/12 = 0.667
    # IoU(P2,G1) = 8/10 = 0.8     IoU(P2,G2) = 5/13 = 0.385
    # Greedy takes P1-G1 (0.818) then P2-G2 (0.385): 1.203. Hungarian: P1-G2 + P2-G1 = 1.467.
    pred = np.array([[1, 0, 11, 10], [0, 0, 8, 10]], dtype=float)
    gt = np.array([[0, 0, 10, 10], [3, 0, 13, 10]], dtype=float)
    pairs = sorted(match_boxes(pred, gt))
    assert [(p, g) for p, g, _ in pairs] == [(0, 1), (1, 0)]
    assert [v for _, _, v in pairs] == pytest.approx([8 / 12, 0.8])
    # Reward (initial stage): recall 2/2 -> 1; precision (f(0.667) + f(0.8)) / 2 = (0.667 + 1) / 2
    out = score_localization(js(*pred.tolist()), gt.tolist(), image_size=IMG)
    assert out["precision"] == pytest.approx((8 / 12 + 1) / 2)
    assert out["total"] == pytest.approx(1 + 1 + (8 / 12 + 1) / 2)


# --------------------------------------------------------------------------------------------
# Parsing and the dual format reward
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "n_boxes"),
    [
        ('[{"bbox_2d": [1, 2, 3, 4], "label": "a"}]', 1),
        ('```json\n[{"bbox_2d": [1, 2, 3, 4]}, {"bbox_2d": [5, 6, 7, 8]}]\n```', 2),
        ('The objects are: ```json\n[{"bbox_2d": [1, 2, 3, 4]}]\n``` as requested.', 1),
        ('Range [1, 2] then [{"bbox_2d": [1, 2, 3, 4]}]', 1),  # a plain list in prose is skipped
        ('sure: [{"bbox_2d": [1.5, 2, 3, 4.25]}]', 1),
        ("[]", 0),
        ('[{"bbox_2d": [1, 2, 3]}]', None),  # 3 numbers
        ('[{"bbox_2d": [1, 2, 3, "4"]}]', None),  # a string coordinate
        ('[{"bbox_2d": [1, 2, 3, true]}]', None),  # a boolean is not a number
        ('[{"box": [1, 2, 3, 4]}]', None),  # wrong key
        ('{"bbox_2d": [1, 2, 3, 4]}', None),  # an object, not a list
        ("[{'bbox_2d': [1, 2, 3, 4]}]", None),  # Python repr, not JSON
        ('[{"bbox_2d": [1, 2, 3, 4]}', None),  # truncated
        ("no boxes", None),
    ],
)
def test_parse_boxes(text: str, n_boxes: int | None) -> None:
    out = parse_boxes(text)
    assert (None if out is None else len(out)) == n_boxes


@pytest.mark.parametrize(
    ("text", "fmt"),
    [
        (js([0, 0, 100, 100]), 1.0),  # the whole image
        (js([0, 0, 101, 100]), 1.0),  # 1 px over: within bounds_tolerance
        (js([0, 0, 102, 100]), 0.0),  # 2 px over: outside the image
        (js([-2, 0, 10, 10]), 0.0),
        (js([10, 0, 10, 10]), 0.0),  # x1 == x2
        (js([20, 0, 10, 10]), 0.0),  # x1 > x2
        (js([0, 10, 10, 5]), 0.0),  # y1 > y2
        ('[{"bbox_2d": [0, 0, NaN, 10]}]', 0.0),
        ('[{"bbox_2d": [0, 0, Infinity, 10]}]', 0.0),
        (js([0, 0, 10, 10], [0, 0, 150, 10]), 0.0),  # one bad box spoils the completion
    ],
)
def test_dual_format(text: str, fmt: float) -> None:
    out = score_localization(text, [[0, 0, 10, 10]], image_size=IMG)
    assert out["format"] == fmt
    if fmt == 0.0:  # format 0 -> recall and precision 0
        assert out["recall"] == out["precision"] == out["total"] == 0.0


# --------------------------------------------------------------------------------------------
# Recall, precision, stages
# --------------------------------------------------------------------------------------------

GT3 = [[0, 0, 10, 10], [20, 20, 40, 40], [50, 50, 60, 60]]
# P1 vs GT A: [0,0,10,8] in [0,0,10,10]         -> 80/100 = 0.8
# P2 vs GT B: [20,20,40,30] in [20,20,40,40]     -> 200/400 = 0.5
# P3 = [70,70,80,80] overlaps nothing            -> 0
PRED3 = js([0, 0, 10, 8], [20, 20, 40, 30], [70, 70, 80, 80])


def test_initial_stage() -> None:
    out = score_localization(PRED3, GT3, image_size=IMG, progress=0.0)
    assert out["thresholds"] == (0.5, 0.5, 0.75)
    assert sorted(out["ious"]) == pytest.approx([0.0, 0.5, 0.8])
    # recall: IoU ≥ ξ0 = 0.5 for 0.8 and 0.5 -> 2/3; f(2/3) with (0.5, 0.75) = 2/3
    assert out["recall"] == pytest.approx(2 / 3)
    # precision: f(0.8) = 1, f(0.5) = 0.5, f(0) = 0 -> (1 + 0.5 + 0) / 3 = 0.5
    assert out["precision"] == pytest.approx(0.5)
    assert out["total"] == pytest.approx(1 + 2 / 3 + 0.5)
    assert (out["n_pred"], out["n_gt"]) == (3, 3)


def test_advanced_stage_after_switch() -> None:
    out = score_localization(PRED3, GT3, image_size=IMG, progress=0.5)  # progress ≥ switch_at
    assert out["thresholds"] == (0.75, 0.75, 0.9)
    # recall: only 0.8 ≥ 0.75 -> 1/3; f(1/3) < ξ1 = 0.75 -> 0
    assert out["recall"] == 0.0
    # precision: f(0.8) = 0.8 (between 0.75 and 0.9), 0.5 and 0 gated by ξ0 -> 0.8 / 3
    assert out["precision"] == pytest.approx(0.8 / 3)
    assert out["total"] == pytest.approx(1 + 0.8 / 3)


@pytest.mark.parametrize(
    ("progress", "switch_at", "xi"),
    [
        (0.0, 0.5, (0.5, 0.5, 0.75)),
        (0.49, 0.5, (0.5, 0.5, 0.75)),
        (0.5, 0.5, (0.75, 0.75, 0.9)),
        (0.9, 1 / 3, (0.75, 0.75, 0.9)),
        (0.3, 1 / 3, (0.5, 0.5, 0.75)),
        (1.0, 1.0, (0.5, 0.5, 0.75)),  # STEP = 1: never switch
    ],
)
def test_stage_switch(progress: float, switch_at: float, xi: tuple[float, float, float]) -> None:
    cfg = LocalizationConfig(switch_at=switch_at)
    assert (
        score_localization("[]", [[0, 0, 1, 1]], image_size=IMG, progress=progress, config=cfg)[
            "thresholds"
        ]
        == xi
    )


def test_precision_over_predictions_punishes_extra_boxes() -> None:
    gt = [[0, 0, 10, 10], [20, 20, 40, 40]]
    pred = js([0, 0, 10, 8], [20, 20, 40, 40], [70, 70, 80, 80])  # IoUs 0.8, 1.0 and an extra box
    # matched pairs: 2 (the extra box is unmatched); recall 2/2 = 1 -> f = 1
    base = score_localization(pred, gt, image_size=IMG)
    assert base["recall"] == 1.0
    assert base["precision"] == pytest.approx((1 + 1) / 2)  # f(0.8) = f(1) = 1, over M = 2
    cfg = LocalizationConfig(precision_over_predictions=True)
    strict = score_localization(pred, gt, image_size=IMG, config=cfg)
    assert strict["precision"] == pytest.approx((1 + 1) / 3)  # over 3 predictions


def test_missing_predictions_lower_recall() -> None:
    # one perfect box of 3 GT: recall 1/3 -> f = 0 (< 0.5); precision over M = 1 pair: f(1) = 1
    out = score_localization(js([0, 0, 10, 10]), GT3, image_size=IMG)
    assert (out["recall"], out["precision"], out["total"]) == (0.0, 1.0, 2.0)
    # 2 of 3: recall 2/3 ≈ 0.667 stays (between 0.5 and 0.75)
    out = score_localization(js([0, 0, 10, 10], [20, 20, 40, 40]), GT3, image_size=IMG)
    assert out["recall"] == pytest.approx(2 / 3)


def test_empty_prediction_on_positive_sample() -> None:
    out = score_localization("[]", GT3, image_size=IMG)
    assert (out["format"], out["recall"], out["precision"], out["total"]) == (1.0, 0.0, 0.0, 1.0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[]", (1.0, 1.0, 1.0, 3.0)),  # nothing to find, nothing predicted: full reward
        (js([0, 0, 10, 10]), (1.0, 0.0, 0.0, 1.0)),  # a hallucinated box: format only
        ("none", (0.0, 0.0, 0.0, 0.0)),  # no template at all
    ],
)
def test_negative_sample(text: str, expected: tuple[float, ...]) -> None:
    out = score_localization(text, [], image_size=IMG)
    assert (out["format"], out["recall"], out["precision"], out["total"]) == expected


def test_rescale_from_model_input_size() -> None:
    # The model saw a 50x50 resize of a 100x200 image: x·2, y·4.
    # [5, 10, 25, 50] -> [10, 40, 50, 200] = the GT exactly -> 3.0.
    gt = [[10, 40, 50, 200]]
    out = score_localization(js([5, 10, 25, 50]), gt, image_size=(100, 200), input_size=(50, 50))
    assert out["total"] == 3.0
    # Without the rescale: inter x [10, 25]·y [40, 50] = 15·10 = 150; areas 20·40 = 800 and
    # 40·160 = 6400; IoU = 150 / (7200 − 150) = 0.0213 < 0.5 -> format only.
    out = score_localization(js([5, 10, 25, 50]), gt, image_size=(100, 200))
    assert out["ious"] == pytest.approx([150 / 7050])
    assert out["total"] == 1.0
    # Bounds are checked after rescaling: x2 = 60 on a 50-wide input is 120 on the 100-wide image.
    assert (
        score_localization(js([0, 0, 60, 10]), gt, image_size=(100, 200), input_size=(50, 50))[
            "format"
        ]
        == 0.0
    )


def test_unknown_image_size_skips_the_bounds_check() -> None:
    # A box beyond any image is still well-formed when the image size is unknown.
    out = score_localization(js([0, 0, 500, 500]), [[0, 0, 500, 500]], image_size=None)
    assert out["total"] == 3.0
    assert score_localization(js([5, 0, 1, 1]), [[0, 0, 1, 1]], image_size=None)["format"] == 0.0


def test_giou_option_changes_the_matching() -> None:
    # G1 = [0,0,10,10], G2 = [100,0,110,10]; P1 = [12,0,22,10] near G1, P2 = [88,0,98,10] near G2.
    # All IoUs are 0, so IoU matching is arbitrary. GIoU: P1-G1 hull 22·10 = 220, union 200
    # -> −20/220 = −0.0909; P1-G2 hull 98·10 = 980 -> −780/980 = −0.796; symmetric for P2.
    # GIoU matching pairs P1-G1 and P2-G2.
    gt = [[0, 0, 10, 10], [100, 0, 110, 10]]
    pred = np.array([[12, 0, 22, 10], [88, 0, 98, 10]], dtype=float)
    pairs = sorted(match_boxes(pred, np.array(gt, dtype=float), giou=True))
    assert [(p, g) for p, g, _ in pairs] == [(0, 0), (1, 1)]
    assert [v for _, _, v in pairs] == pytest.approx([-20 / 220, -20 / 220])
    out = score_localization(
        js(*pred.tolist()), gt, image_size=(200, 100), config=LocalizationConfig(use_giou=True)
    )
    assert out["ious"] == pytest.approx([-20 / 220, -20 / 220])
    assert out["total"] == 1.0  # negative GIoU is gated by ξ0


def test_label_aware_matching() -> None:
    # G1 = [0,0,10,10] "cat", G2 = [2,0,12,10] "dog"; P1 = [2,0,12,10] "cat", P2 = [0,0,10,10] "dog".
    # Box-only: P1-G2 and P2-G1 are perfect (IoU 1) -> total 3.
    # IoU(P1, G1) = 8·10 / (100 + 100 − 80) = 80/120 = 2/3 (same for P2-G2).
    # Label-aware (+1 per mismatch): {P1-G2, P2-G1} costs 0 + 1 + 0 + 1 = 2;
    # {P1-G1, P2-G2} costs 1/3 + 1/3 = 2/3 -> chosen; IoUs 2/3 each.
    # recall 2/2 = 1 -> 1; precision f(2/3) = 2/3 per pair -> 2/3; total 1 + 1 + 2/3.
    gt = [[0, 0, 10, 10], [2, 0, 12, 10]]
    pred = js([2, 0, 12, 10], [0, 0, 10, 10], labels=["cat", "dog"])
    box_only = score_localization(pred, gt, image_size=IMG, gt_labels=["cat", "dog"])
    assert box_only["total"] == 3.0
    cfg = LocalizationConfig(label_aware=True)
    aware = score_localization(pred, gt, image_size=IMG, gt_labels=["Cat", " dog "], config=cfg)
    assert aware["ious"] == pytest.approx([2 / 3, 2 / 3])
    assert aware["total"] == pytest.approx(1 + 1 + 2 / 3)
    # GT given as the model's own objects carries the labels too.
    gt_objs = [{"bbox_2d": b, "label": lab} for b, lab in zip(gt, ["cat", "dog"])]
    assert score_localization(pred, gt_objs, image_size=IMG, config=cfg)["total"] == pytest.approx(
        1 + 1 + 2 / 3
    )


# --------------------------------------------------------------------------------------------
# The TRL-style wrapper and configuration errors
# --------------------------------------------------------------------------------------------


def test_localization_reward_contract() -> None:
    perfect = "```json\n" + js([0, 0, 10, 10]) + "\n```"
    out = localization_reward(
        [perfect, [{"role": "assistant", "content": perfect}], "garbage", perfect, "[]"],
        boxes=[[[0, 0, 10, 10]], [[0, 0, 10, 10]], [[0, 0, 10, 10]], None, []],
        image_size=[IMG] * 5,
        answer=[None] * 5,  # other columns are ignored
        prompts=["p"] * 5,
    )
    assert out == [3.0, 3.0, 0.0, None, 3.0]


def test_progress_scalar_or_per_row() -> None:
    # IoU 0.8: initial stage precision f(0.8) = 1 -> total 3; advanced f(0.8) = 0.8 -> 2.8
    comp, gt = [js([0, 0, 10, 8])] * 2, [[[0, 0, 10, 10]]] * 2
    assert localization_reward(comp, boxes=gt, image_size=IMG, progress=0.1) == [3.0, 3.0]
    assert localization_reward(
        comp, boxes=gt, image_size=IMG, progress=[0.1, 0.7]
    ) == pytest.approx([3.0, 2.8])


def test_components_and_factory() -> None:
    r = make_localization_reward(switch_at=1.0, use_giou=True)
    assert r.config.switch_at == 1.0 and r.config.use_giou
    parts = r.components(
        [js([0, 0, 10, 8])], boxes=[[[0, 0, 10, 10]]], image_size=[IMG], progress=[0.9]
    )
    assert parts == {"format": [1.0], "recall": [1.0], "precision": [1.0], "reward": [3.0]}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"gt_boxes": [[0, 0, 1]], "image_size": IMG}, "boxes"),
        ({"gt_boxes": None, "image_size": IMG}, "boxes"),
        ({"gt_boxes": [[5, 0, 1, 1]], "image_size": IMG}, "boxes"),
        ({"gt_boxes": [[0, 0, 1, 1]], "image_size": (0, 10)}, "image_size"),
        ({"gt_boxes": [[0, 0, 1, 1]], "image_size": "big"}, "image_size"),
        ({"gt_boxes": [[0, 0, 1, 1]], "image_size": IMG, "input_size": (10,)}, "input_size"),
        ({"gt_boxes": [[0, 0, 1, 1]], "image_size": IMG, "gt_labels": ["a", "b"]}, "gt_labels"),
        ({"gt_boxes": [[0, 0, 1, 1]], "image_size": None, "input_size": (10, 10)}, "image_size"),
    ],
)
def test_ground_truth_errors_name_the_field(kwargs: dict, field: str) -> None:
    gt = kwargs.pop("gt_boxes")
    with pytest.raises(ValueError, match=field):
        score_localization("[]", gt, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"switch_at": 1.5}, "switch_at"),
        ({"xi_initial": (0.5, 0.8, 0.7)}, "xi_initial"),
        ({"xi_advanced": (0.5, 0.5)}, "xi_advanced"),
    ],
)
def test_config_validation(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        LocalizationConfig(**kwargs)
