"""The project's own datasets as benchmarks (JSONL/parquet in the ``ivr.data.dataset`` schema).

The synthetic world's test split is evaluated this way (``synth:PATH``): its level becomes the
subcategory, and its true ``scene`` rides along in ``extra`` for description fidelity.
"""

from __future__ import annotations

from pathlib import Path

from .base import BenchmarkFormatError, EvalItem, SkippedRow

# --------------------------------------------------------------------------------------------
# the project's own datasets (ivr.data.dataset schema; the synthetic world)


def _load_project(path: Path, split: str, name: str) -> tuple[list[EvalItem], list[SkippedRow]]:
    from ivr.data.dataset import load_samples

    reasons: list[str] = []
    try:
        samples = load_samples(path, split, on_error="skip", skipped=reasons)
    except (KeyError, ValueError, TypeError) as e:
        raise BenchmarkFormatError(
            f"{path}: not a dataset in the project schema (JSONL/parquet rows with id, "
            f"question, answer, images …; see ivr.data.dataset): {e}"
        ) from e
    skipped = [SkippedRow(name, str(path), reason) for reason in reasons]
    items = []
    for s in samples:
        extra = dict(s.extra)
        category = extra.pop("category", None) or s.task
        subcategory = extra.pop("subcategory", None) or extra.pop("l2_category", None)
        if subcategory is None and extra.get("level") is not None:  # the synthetic world
            subcategory = f"level {extra['level']}"
        items.append(
            EvalItem(
                id=s.id,
                benchmark=name,
                question=s.question,
                answer=s.answer,
                images=tuple(s.images),
                answer_type=s.answer_type,
                choices=s.choices,
                precision=s.precision,
                unit=s.unit,
                category=None if category is None else str(category),
                subcategory=None if subcategory is None else str(subcategory),
                task=s.task,
                description=s.description,
                boxes=s.boxes,
                labels=s.labels,
                image_size=s.image_size,
                source=f"{path}, id {s.id}",
                extra=extra,
            )
        )
    return items, skipped
