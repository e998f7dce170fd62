"""VLMEvalKit TSV files: any benchmark VLMEvalKit publishes, given as a path or by name.

Rows hold ``index``, ``image`` (base64, a list of base64, or the index of another row whose
image it repeats), ``question``, options ``A``, ``B`` …, ``answer`` and ``category``.
"""

from __future__ import annotations

from pathlib import Path

from .base import (
    LETTERS,
    EvalItem,
    ImageSource,
    SkippedRow,
    _answer,
    _b64,
    _hf_image,
    _parse_list,
    _precision,
    _read_table,
    _require,
    _RowError,
    _text,
    render_choices,
)

# --------------------------------------------------------------------------------------------
# VLMEvalKit TSV (index, image (base64 or the index of another row), question, A, B, …, answer)

_VLMEVAL_FMT = (
    "VLMEvalKit TSV schema (index, image (base64), question, A, B, C, D …, answer, category)"
)


def _load_vlmevalkit_file(path: Path, name: str) -> tuple[list[EvalItem], list[SkippedRow]]:
    columns, rows = _read_table(path)
    _require(path, columns, ["index", "question", "answer", ("image", "image_path")], _VLMEVAL_FMT)
    option_cols = [c for c in LETTERS if c in columns]
    # VLMEvalKit saves space by writing another row's index in place of a repeated image.
    by_index = {_text(r.get("index")): _text(r.get("image")) for r in rows}
    items, skipped = [], []
    for i, row in enumerate(rows):
        source = f"{path}, row {i}"
        rid = _text(row.get("index")) or str(i)
        try:
            items.append(_vlmevalkit_row(path, i, row, rid, name, option_cols, by_index))
        except _RowError as e:
            skipped.append(SkippedRow(name, source, str(e), rid))
    return items, skipped


def _vlmevalkit_row(path, i, row, rid, name, option_cols, by_index) -> EvalItem:
    answer = _answer(row)
    raw = _text(row.get("image"))
    if raw and len(raw) <= 64:  # a reference to another row's image
        ref = by_index.get(raw, "")
        if len(ref) <= 64:
            raise _RowError(f"image refers to index {raw!r}, which has no image")
        raw = ref
    images: list[ImageSource] = []
    if raw:
        encoded = _parse_list(raw, "image") if raw.startswith("[") else [raw]
        images = [_b64(b, "image") for b in encoded]
    elif _text(row.get("image_path")):
        paths = _text(row["image_path"])
        for p in _parse_list(paths, "image_path") if paths.startswith("[") else [paths]:
            images.append(_hf_image(p, path.parent, "image_path"))  # type: ignore[arg-type]
    if not images:
        raise _RowError("no image")
    options = tuple(_text(row.get(c)) for c in option_cols if _text(row.get(c)))
    question = _text(row.get("question"))
    hint = _text(row.get("hint"))
    if hint:
        question = f"Hint: {hint}\n{question}"
    answer_type = None
    choices: tuple[str, ...] | None = None
    if options:
        if answer not in LETTERS[: len(options)]:
            raise _RowError(f"answer {answer!r} is not one of the {len(options)} option letters")
        question = f"{question}\n{render_choices(options)}"
        answer_type, choices = "choice", options
    elif _text(row.get("choices")):  # VQA-style TSVs (e.g. MathVista_MINI) list choices inline
        choices = tuple(_parse_list(row.get("choices"), "choices")) or None
        if choices:
            question = f"{question}\n{render_choices(choices)}"
            answer_type = "choice"
    if answer_type is None:
        answer_type = _text(row.get("answer_type")) or None
    l2 = _text(row.get("l2-category")) or _text(row.get("l2_category"))
    return EvalItem(
        id=rid,
        benchmark=name,
        question=question,
        answer=answer,
        images=tuple(images),
        answer_type=answer_type,
        choices=choices,
        precision=_precision(row.get("precision")),
        unit=_text(row.get("unit")) or None,
        category=_text(row.get("category")) or None,
        subcategory=l2 or None,
        source=f"{path}, row {i}",
    )
