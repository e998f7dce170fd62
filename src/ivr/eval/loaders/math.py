"""Math benchmarks: MathVista, MathVerse and MATH-Vision (testmini splits, Hugging Face parquet).

Open answers keep their ``answer_type``/``precision``/``unit`` for the grader; multiple-choice
questions get their choices rendered into the question (MathVista grades the choice text,
MATH-Vision the letter, MathVerse the letter with the options parsed from the question).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import (
    LETTERS,
    EvalItem,
    SkippedRow,
    _answer,
    _convert,
    _decoded_image,
    _files,
    _hf_image,
    _parse_inline_options,
    _parse_list,
    _precision,
    _RowError,
    _text,
    register_benchmark,
    render_choices,
)

# --------------------------------------------------------------------------------------------
# MathVista (AI4Math/MathVista, testmini)

_MATHVISTA_FMT = (
    "MathVista testmini parquet schema (pid, question, image, decoded_image, choices, unit, "
    "precision, answer, question_type, answer_type, metadata, query)"
)


def _mathvista_row(path: Path, i: int, row: dict[str, Any]) -> EvalItem:
    pid = _text(row.get("pid")) or str(i)
    question = _text(row.get("question"))
    answer = _answer(row)
    image = _decoded_image(row, path)
    meta = row.get("metadata") or {}
    choices = row.get("choices")
    unit = _text(row.get("unit")) or None
    precision = _precision(row.get("precision"))
    if _text(row.get("question_type")) == "multi_choice" or choices:
        choices_t = tuple(str(c) for c in (choices or ()))
        if not choices_t:
            raise _RowError("multi_choice question without choices")
        text = f"{question}\n{render_choices(choices_t)}"
        answer_type: str | None = "choice"
    else:
        choices_t = None
        kind = _text(row.get("answer_type"))
        answer_type = kind or None  # text | integer | float | list (graded as an expression)
        text = question + (f" (Unit: {unit})" if unit else "")
        if kind == "float" and precision is not None:
            text += f"\nGive the answer as a number with {precision} decimal place(s)."
        elif kind == "integer":
            text += "\nGive the answer as an integer."
    skills = meta.get("skills") or []
    return EvalItem(
        id=pid,
        benchmark="mathvista",
        question=text,
        answer=answer,
        images=(image,),
        answer_type=answer_type,
        choices=choices_t,
        precision=precision,
        unit=unit,
        category=_text(meta.get("task")) or None,
        subcategory=tuple(skills) or None,
        source=f"{path}, row {i}",
        extra={"question_type": _text(row.get("question_type")), "source": meta.get("source")},
    )


@register_benchmark(
    "mathvista",
    title="MathVista",
    dirnames=("MathVista", "mathvista"),
    layout="data/testmini-*.parquet (AI4Math/MathVista)",
)
def _load_mathvista(root: Path) -> tuple[list[EvalItem], list[SkippedRow]]:
    files = _files(root, "mathvista", ("data/testmini-*.parquet", "testmini*.parquet"))
    needed = ["pid", "question", ("decoded_image", "image"), "answer", "question_type"]
    return _convert("mathvista", files, needed, _MATHVISTA_FMT, _mathvista_row)


# --------------------------------------------------------------------------------------------
# MathVerse (AI4Math/MathVerse, testmini: 788 problems x 5 versions)

_MATHVERSE_FMT = (
    "MathVerse testmini parquet schema (sample_index, problem_index, problem_version, question, "
    "image, answer, question_type, metadata, query_wo, query_cot)"
)


def _mathverse_row(path: Path, i: int, row: dict[str, Any]) -> EvalItem:
    sid = _text(row.get("sample_index")) or str(i)
    answer = _answer(row)
    question = _text(row.get("question"))
    if not question:  # "Vision Only": the whole question is in the image
        question = _text(row.get("query_wo")) or "Answer the question shown in the image."
    image = _hf_image(row.get("image"), path.parent, "image")
    images = (image,) if image is not None else ()  # "Text Only" has no image
    meta = row.get("metadata") or {}
    multi = _text(row.get("question_type")) == "multi-choice"
    return EvalItem(
        id=sid,
        benchmark="mathverse",
        question=question,
        answer=answer,
        images=images,
        answer_type="choice" if multi else None,
        choices=_parse_inline_options(question) if multi else None,
        category=_text(row.get("problem_version")) or None,
        subcategory=_text(meta.get("subfield")) or _text(meta.get("subject")) or None,
        source=f"{path}, row {i}",
        extra={"problem_index": _text(row.get("problem_index"))},
    )


@register_benchmark(
    "mathverse",
    title="MathVerse",
    dirnames=("MathVerse", "mathverse"),
    layout="testmini.parquet (AI4Math/MathVerse)",
)
def _load_mathverse(root: Path) -> tuple[list[EvalItem], list[SkippedRow]]:
    files = _files(root, "mathverse", ("testmini.parquet", "data/testmini-*.parquet"))
    needed = ["sample_index", "problem_version", "question", "image", "answer", "question_type"]
    return _convert("mathverse", files, needed, _MATHVERSE_FMT, _mathverse_row)


# --------------------------------------------------------------------------------------------
# MATH-Vision (MathLLMs/MathVision, testmini)

_MATHVISION_FMT = (
    "MATH-Vision parquet schema (id, question, options, image, decoded_image, answer, solution, "
    "level, subject)"
)


def _mathvision_row(path: Path, i: int, row: dict[str, Any]) -> EvalItem:
    rid = _text(row.get("id")) or str(i)
    answer = _answer(row)
    image = _decoded_image(row, path)
    options = tuple(_parse_list(row.get("options"), "options"))
    question = _text(row.get("question"))
    if options:
        if answer not in LETTERS[: len(options)]:
            raise _RowError(f"answer {answer!r} is not one of the {len(options)} option letters")
        question = f"{question}\n{render_choices(options)}"
    level = row.get("level")
    return EvalItem(
        id=rid,
        benchmark="mathvision",
        question=question,
        answer=answer,
        images=(image,),
        answer_type="choice" if options else None,
        choices=options or None,
        category=_text(row.get("subject")) or None,
        subcategory=f"level {level}" if level not in (None, "") else None,
        source=f"{path}, row {i}",
    )


@register_benchmark(
    "mathvision",
    title="MathVision",
    dirnames=("MathVision", "MATH-Vision", "math_vision", "mathvision"),
    layout="data/testmini-*.parquet (MathLLMs/MathVision)",
)
def _load_mathvision(root: Path) -> tuple[list[EvalItem], list[SkippedRow]]:
    files = _files(root, "mathvision", ("data/testmini-*.parquet", "testmini*.parquet"))
    needed = ["id", "question", "options", ("decoded_image", "image"), "answer"]
    return _convert("mathvision", files, needed, _MATHVISION_FMT, _mathvision_row)
