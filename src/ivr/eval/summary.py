"""The numbers of an evaluation, computed from its prediction records (never from a run's memory).

``summarize`` scores a benchmark's prediction file (percentages, per-category breakdowns, COCO
metrics for localization items), so a resumed run and an uninterrupted one produce the same
tables; ``_sample_metrics`` gives the fractions ``evaluate_samples`` reports for samples in memory
(the SFT eval, the demo).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ivr.eval.coco import coco_metrics
from ivr.eval.loaders import Benchmark, SkippedRow

__all__ = ["summarize"]


def _sample_metrics(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    import numpy as np

    graded = [r for r in records if r["correct"] is not None]
    metrics: dict[str, float] = {"n": float(len(records))}
    if graded:
        metrics["accuracy"] = float(np.mean([r["correct"] for r in graded]))
        metrics["format"] = float(np.mean([r.get("format", 0.0) for r in graded]))
        tasks = sorted({r["task"] for r in graded})
        if len(tasks) > 1:
            for t in tasks:
                metrics[f"accuracy/{t}"] = float(
                    np.mean([r["correct"] for r in graded if r["task"] == t])
                )
    boxes = [r for r in records if r["correct"] is None and "loc_total" in r]
    if boxes:
        metrics["loc_reward"] = float(np.mean([r["loc_total"] for r in boxes]))
    described = [r for r in records if "desc_exact" in r]
    for key in ("desc_exact", "desc_f1", "desc_attr_f1") if described else ():
        metrics[key] = float(np.mean([r[key] for r in described]))
    metrics["finished"] = float(np.mean([r["finished"] for r in records])) if records else 0.0
    return metrics


# --------------------------------------------------------------------------------------------
# scoring a prediction file


def _pct(correct: int, n: int) -> float | None:
    return round(100.0 * correct / n, 2) if n else None


def _breakdown(records: Iterable[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[bool]] = {}
    for r in records:
        value = r.get(key) or "—"
        for v in value if isinstance(value, list | tuple) else [value]:  # MathVista: per skill
            groups.setdefault(str(v), []).append(bool(r["correct"]))
    return {
        k: {"n": len(v), "correct": sum(v), "accuracy": _pct(sum(v), len(v))}
        for k, v in sorted(groups.items())
    }


def summarize(
    bench: Benchmark, predictions: dict[str, dict[str, Any]], skipped: Sequence[SkippedRow] = ()
) -> dict[str, Any]:
    """The benchmark's numbers from its prediction records (only ids of ``bench.items`` count).

    ``accuracy`` is a percentage over graded text items; for MMMU-Pro (``macro_over_categories``)
    it is the unweighted mean of its two settings. ``score`` — the number that enters the Table 1
    average — is ``accuracy``, or ``100 × mAP`` for a benchmark made only of localization items.
    """
    records = [predictions[it.id] for it in bench.items if it.id in predictions]
    items = {it.id: it for it in bench.items}
    text = [r for r in records if r.get("correct") is not None]
    loc = [r for r in records if r.get("correct") is None]
    correct = sum(bool(r["correct"]) for r in text)
    categories = _breakdown(text, "category")
    if bench.macro_over_categories and categories:
        accs = [c["accuracy"] for c in categories.values()]
        accuracy = round(sum(accs) / len(accs), 2)
    else:
        accuracy = _pct(correct, len(text))
    fmt = [r["components"]["format"] for r in text if "format" in r.get("components", {})]
    desc = [r["description"] for r in records if r.get("description")]
    summary: dict[str, Any] = {
        "name": bench.name,
        "title": bench.title,
        "path": str(bench.path),
        "items": len(bench.items),
        "graded": len(records),
        "skipped": len(skipped),
        "pending": len(bench.items) - len(records) - len({s.id for s in skipped if s.id in items}),
        "correct": correct,
        "accuracy": accuracy,
        "format_rate": _pct(int(sum(fmt)), len(fmt)),
        "categories": categories,
        "subcategories": _breakdown(text, "subcategory"),
    }
    if desc:  # description fidelity against the true scene (synthetic world), in percent
        keys = [k for k in ("exact", "f1", "attr_f1") if all(k in d for d in desc)]
        summary["description"] = {
            k: round(100 * sum(d[k] for d in desc) / len(desc), 2) for k in keys
        }
    if loc:
        preds, gts, subsets = [], [], []
        for r in loc:
            it = items[r["id"]]
            preds.append({"boxes": r.get("pred_boxes") or [], "labels": r.get("pred_labels")})
            gts.append({"boxes": [list(b) for b in it.boxes or ()], "labels": it.labels})
            subsets.append(it.category or "—")
        rewards = [float(r["reward"]) for r in loc]
        summary["localization"] = {
            "n": len(loc),
            "reward": round(sum(rewards) / len(rewards), 4),
            **coco_metrics(preds, gts, class_agnostic=not any(it.labels for it in items.values())),
        }
    summary["score"] = (
        accuracy
        if text or not loc
        else (
            None if summary["localization"]["mAP"] is None else 100 * summary["localization"]["mAP"]
        )
    )
    return summary
