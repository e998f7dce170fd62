"""Multiple-choice benchmarks: MMStar, MMMU (validation) and MMMU-Pro (standard-10 and vision).

Every answer is an option letter (MMMU's open questions excepted: their gold answer, or a list
of accepted ones, is graded as text). MMMU subjects are grouped into the paper's six
disciplines; MMMU-Pro is scored as the mean of its two settings.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .base import (
    LETTERS,
    EvalItem,
    ImageSource,
    SkippedRow,
    _answer,
    _convert,
    _files,
    _find,
    _hf_image,
    _parse_inline_options,
    _parse_list,
    _RowError,
    _text,
    register_benchmark,
    render_choices,
)
from .tsv import _load_vlmevalkit_file

# --------------------------------------------------------------------------------------------
# MMStar (Lin-Chen/MMStar: mmstar.parquet, or the VLMEvalKit MMStar.tsv)

_MMSTAR_FMT = "MMStar parquet schema (index, question, image, answer, category, l2_category)"


def _mmstar_row(path: Path, i: int, row: dict[str, Any]) -> EvalItem:
    rid = _text(row.get("index")) or str(i)
    answer = _text(row.get("answer")).upper()
    if answer not in LETTERS:
        raise _RowError(f"answer {answer!r} is not an option letter")
    image = _hf_image(row.get("image"), path.parent, "image")
    if image is None:
        raise _RowError("no image")
    question = _text(row.get("question"))
    return EvalItem(
        id=rid,
        benchmark="mmstar",
        question=question,
        answer=answer,
        images=(image,),
        answer_type="choice",
        choices=_parse_inline_options(question),
        category=_text(row.get("category")) or None,
        subcategory=_text(row.get("l2_category")) or None,
        source=f"{path}, row {i}",
    )


@register_benchmark(
    "mmstar",
    title="MMStar",
    dirnames=("MMStar", "mmstar"),
    layout="mmstar.parquet or MMStar.tsv (Lin-Chen/MMStar)",
)
def _load_mmstar(root: Path) -> tuple[list[EvalItem], list[SkippedRow]]:
    files = _files(root, "mmstar", ("mmstar.parquet", "data/val-*.parquet", "*.tsv"))
    if files[0].suffix.lower() == ".tsv":
        return _load_vlmevalkit_file(files[0], "mmstar")
    needed = ["index", "question", "image", "answer", "category"]
    return _convert("mmstar", files, needed, _MMSTAR_FMT, _mmstar_row)


# --------------------------------------------------------------------------------------------
# MMMU (MMMU/MMMU validation, one directory per subject) and MMMU-Pro

_MMMU_FMT = (
    "MMMU parquet schema (id, question, options, explanation, image_1 … image_7, img_type, "
    "answer, topic_difficulty, question_type, subfield)"
)
_MMMU_PRO_FMT = (
    "MMMU-Pro parquet schema (standard: id, question, options, image_1 … image_7, answer, "
    "subject; vision: id, image, options, answer, subject)"
)

#: MMMU's 30 subjects in its 6 disciplines (the paper's Table 2 grouping).
MMMU_DISCIPLINES: dict[str, tuple[str, ...]] = {
    "Art & Design": ("Art", "Art_Theory", "Design", "Music"),
    "Business": ("Accounting", "Economics", "Finance", "Manage", "Marketing"),
    "Science": ("Biology", "Chemistry", "Geography", "Math", "Physics"),
    "Health & Medicine": (
        "Basic_Medical_Science",
        "Clinical_Medicine",
        "Diagnostics_and_Laboratory_Medicine",
        "Pharmacy",
        "Public_Health",
    ),
    "Humanities & Social Science": ("History", "Literature", "Psychology", "Sociology"),
    "Tech & Engineering": (
        "Agriculture",
        "Architecture_and_Engineering",
        "Computer_Science",
        "Electronics",
        "Energy_and_Power",
        "Materials",
        "Mechanical_Engineering",
    ),
}
_SUBJECT_TO_DISCIPLINE = {
    s.lower(): d for d, subjects in MMMU_DISCIPLINES.items() for s in subjects
}
_MMMU_ID = re.compile(r"^(?:dev|validation|test)_(.+)_\d+$")


def _mmmu_subject(row: dict[str, Any], path: Path) -> str:
    subject = _text(row.get("subject"))
    if not subject:
        m = _MMMU_ID.match(_text(row.get("id")))
        subject = m.group(1) if m else path.parent.name
    return subject.replace(" ", "_")


def _mmmu_images(row: dict[str, Any], path: Path) -> tuple[ImageSource, ...]:
    images = []
    for k in range(1, 8):
        img = _hf_image(row.get(f"image_{k}"), path.parent, f"image_{k}")
        if img is not None:
            images.append(img)
    return tuple(images)


def _mmmu_row(path: Path, i: int, row: dict[str, Any]) -> EvalItem:
    rid = _text(row.get("id")) or str(i)
    answer = _answer(row)
    images = _mmmu_images(row, path)
    if not images:
        raise _RowError("no image in image_1 … image_7")
    options = tuple(_parse_list(row.get("options"), "options"))
    question = _text(row.get("question"))
    subject = _mmmu_subject(row, path)
    accepted: tuple[str, ...] = ()
    if options and _text(row.get("question_type")) != "open":
        if answer not in LETTERS[: len(options)]:
            raise _RowError(f"answer {answer!r} is not one of the {len(options)} option letters")
        question = f"{question}\n{render_choices(options)}"
        answer_type: str | None = "choice"
    else:
        options = ()
        answer_type = None
        if answer.startswith("["):  # open questions may list several accepted answers
            alts = _parse_list(answer, "answer")
            if not alts:
                raise _RowError(f"answer {answer!r} is an empty list")
            answer, accepted = alts[0], tuple(alts[1:])
    return EvalItem(
        id=rid,
        benchmark="mmmu",
        question=question,
        answer=answer,
        images=images,
        answer_type=answer_type,
        choices=options or None,
        accepted=accepted,
        category=_SUBJECT_TO_DISCIPLINE.get(subject.lower(), "Other"),
        subcategory=subject,
        source=f"{path}, row {i}",
        extra={"img_type": _text(row.get("img_type")), "subfield": _text(row.get("subfield"))},
    )


def _mmmu_pro_row(setting: str) -> Callable[[Path, int, dict[str, Any]], EvalItem]:
    def convert(path: Path, i: int, row: dict[str, Any]) -> EvalItem:
        rid = _text(row.get("id")) or str(i)
        answer = _text(row.get("answer"))
        options = tuple(_parse_list(row.get("options"), "options"))
        if setting == "vision":
            image = _hf_image(row.get("image"), path.parent, "image")
            images: tuple[ImageSource, ...] = (image,) if image is not None else ()
            question = "Answer the multiple-choice question shown in the image."
        else:
            images = _mmmu_images(row, path)
            question = f"{_text(row.get('question'))}\n{render_choices(options)}"
        if not images:
            raise _RowError("no image")
        n = len(options) or 10
        if answer not in LETTERS[:n]:
            raise _RowError(f"answer {answer!r} is not one of the {n} option letters")
        return EvalItem(
            id=f"{setting}/{rid}",
            benchmark="mmmu_pro",
            question=question,
            answer=answer,
            images=images,
            answer_type="choice",
            choices=options or None,
            category=setting,
            subcategory=_mmmu_subject(row, path),
            source=f"{path}, row {i}",
        )

    return convert


@register_benchmark(
    "mmmu_pro",
    title="MMMU-Pro",
    dirnames=("MMMU_Pro", "MMMU-Pro", "mmmu_pro", "mmmupro"),
    layout="'standard (10 options)/test-*.parquet' and 'vision/test-*.parquet' (MMMU/MMMU_Pro)",
    macro_over_categories=True,
)
def _load_mmmu_pro(root: Path) -> tuple[list[EvalItem], list[SkippedRow]]:
    settings = {
        "standard-10": ("standard (10 options)/test-*.parquet", "standard_10_options/*.parquet"),
        "vision": ("vision/test-*.parquet", "vision/*.parquet"),
    }
    found = {s: _find(root, pats) for s, pats in settings.items()}
    if not any(found.values()):
        _files(root, "mmmu_pro", [p for pats in settings.values() for p in pats])  # raises
    per_setting = []
    skipped: list[SkippedRow] = []
    for setting, files in found.items():
        needed = ["id", "answer", "options", "image" if setting == "vision" else "image_1"]
        items, skip = _convert("mmmu_pro", files, needed, _MMMU_PRO_FMT, _mmmu_pro_row(setting))
        per_setting.append(items)
        skipped += skip
    # Interleave the settings so that --limit N samples both of them.
    items = []
    longest = max(len(s) for s in per_setting)
    for k in range(longest):
        items += [s[k] for s in per_setting if k < len(s)]
    return items, skipped


@register_benchmark(
    "mmmu",
    title="MMMU",
    dirnames=("MMMU", "mmmu"),
    layout="<Subject>/validation-*.parquet, one directory per subject (MMMU/MMMU)",
)
def _load_mmmu(root: Path) -> tuple[list[EvalItem], list[SkippedRow]]:
    files = _files(
        root, "mmmu", ("*/validation-*.parquet", "data/validation-*.parquet", "validation*.parquet")
    )
    needed = ["id", "question", "options", "image_1", "answer"]
    return _convert("mmmu", files, needed, _MMMU_FMT, _mmmu_row)
