"""Benchmark loaders: local copies of the paper's benchmarks, in the formats they are published in.

One small adapter per benchmark turns its rows into :class:`EvalItem` — the question exactly as
the model will read it (choices rendered in), the gold answer, what the grader needs to know
(``answer_type``, ``choices``, ``precision``, ``unit``) and where the row sits in the
benchmark's own breakdown (``category`` / ``subcategory``). Images stay encoded (file path or
bytes) until :meth:`EvalItem.load_images`, so loading MMMU does not decode 900 images up front.

=============  =====================================================  ==========================
benchmark      files looked for under ``<data_root>/<dir>/``          category / subcategory
=============  =====================================================  ==========================
mathvista      ``data/testmini-*.parquet`` (AI4Math/MathVista)         task / skills
mathverse      ``testmini.parquet`` (AI4Math/MathVerse)                problem_version / subfield
mathvision     ``data/testmini-*.parquet`` (MathLLMs/MathVision)       subject / level
mmstar         ``mmstar.parquet`` or ``MMStar.tsv`` (Lin-Chen/MMStar)  category / l2_category
mmmu           ``<Subject>/validation-*.parquet`` (MMMU/MMMU)          discipline / subject
mmmu_pro       ``standard (10 options)/test-*.parquet`` and            setting / subject
               ``vision/test-*.parquet`` (MMMU/MMMU_Pro)
=============  =====================================================  ==========================

Besides these: any VLMEvalKit TSV (``index, image`` (base64), ``question, A, B, …, answer,
category``) given as a path or found as ``<data_root>/<NAME>.tsv``, and the project's own datasets
(JSONL/parquet in the project schema, the synthetic world) given as ``synth:PATH`` or a path.

Errors are meant to be acted on: a file without a required column, or a directory with none of
the expected files, raises :class:`BenchmarkFormatError` naming the file and the expected schema.
A single bad row (no answer, options that do not parse, base64 that is not base64) is not an
error: it is returned in ``Benchmark.skipped`` with its reason and never graded. An image that
does not decode is found when the runner decodes it (:class:`ImageDecodeError`) and is skipped
the same way.
"""

from __future__ import annotations

import ast
import base64
import binascii
import io
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from ivr.types import Sample

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "BenchmarkFormatError",
    "BenchmarkInfo",
    "EvalItem",
    "ImageDecodeError",
    "SkippedRow",
    "load_benchmark",
    "render_choices",
]

#: A still-encoded image: a file path, or the bytes of an image file (PNG, JPEG …).
ImageSource = str | bytes

LETTERS = "ABCDEFGHIJ"


class BenchmarkFormatError(ValueError):
    """A benchmark file or directory is not in the format it was published in."""


class ImageDecodeError(ValueError):
    """An item's image does not decode; the item is skipped, never graded."""


@dataclass(frozen=True)
class SkippedRow:
    """A row that was reported and left out of the score (never counted as right or wrong)."""

    benchmark: str
    source: str  # "file, row N"
    reason: str
    id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "source": self.source, "reason": self.reason}


@dataclass(frozen=True)
class EvalItem:
    """One benchmark question, ready to be prompted and graded.

    ``question`` is the full text the model reads before the answer-format instruction
    (``PromptSet.answer``): choices, hints and units are already in it. ``answer`` is the gold
    answer as the grader expects it (for MathVista multiple choice the choice text, elsewhere the
    letter); ``accepted`` lists further gold answers that also count (MMMU open questions).
    ``boxes``/``labels``/``image_size`` make a localization item, scored with the Vision-R1
    reward and COCO metrics. ``source`` ("file, row N") is what error messages cite.
    """

    id: str
    benchmark: str
    question: str
    answer: str
    images: tuple[ImageSource, ...] = ()
    answer_type: str | None = None
    choices: tuple[str, ...] | None = None
    precision: int | None = None
    unit: str | None = None
    category: str | None = None
    subcategory: str | tuple[str, ...] | None = None  # several (MathVista skills): counts in each
    accepted: tuple[str, ...] = ()
    task: str = "default"
    description: str | None = None
    boxes: tuple[tuple[float, float, float, float], ...] | None = None
    labels: tuple[str, ...] | None = None
    image_size: tuple[int, int] | None = None
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_localization(self) -> bool:
        return self.answer_type == "boxes"  # the trainer's rule (ivr.rewards.scorer)

    def load_images(self) -> list[Image.Image]:
        """Decode every image fully, as RGB; raise :class:`ImageDecodeError` naming the row."""
        out = []
        for k, src in enumerate(self.images):
            try:
                out.append(_decode(src))
            except (OSError, ValueError, SyntaxError, UnidentifiedImageError) as e:
                where = self.source or self.benchmark
                raise ImageDecodeError(
                    f"{where}: image {k + 1} of item {self.id!r} does not decode: {e}"
                ) from e
        return out

    def to_sample(self, **extra: Any) -> Sample:
        """The item as the trainer's :class:`~ivr.types.Sample` (what the shared scorer grades).

        Images are kept only when they are all file paths (``Sample.images`` holds paths);
        ``extra`` adds columns (e.g. ``input_size`` for the localization reward)."""
        paths = tuple(s for s in self.images if isinstance(s, str))
        return Sample(
            id=self.id,
            question=self.question,
            answer=self.answer,
            images=paths if len(paths) == len(self.images) else (),
            answer_type=self.answer_type,
            choices=self.choices,
            precision=self.precision,
            unit=self.unit,
            task=self.task,
            description=self.description,
            boxes=self.boxes,
            labels=self.labels,
            image_size=self.image_size,
            extra={**self.extra, **extra},
        )


@dataclass
class Benchmark:
    """A loaded benchmark: its items in file order, and the rows that were skipped."""

    name: str  # file-system safe; the run writes to <out>/<name>/
    title: str  # column header in tables ("MathVista")
    path: Path
    items: list[EvalItem]
    skipped: list[SkippedRow] = field(default_factory=list)
    #: score = unweighted mean over categories (MMMU-Pro: standard-10 and vision settings).
    macro_over_categories: bool = False


# --------------------------------------------------------------------------------------------
# small helpers shared by the adapters


def _decode(src: ImageSource) -> Image.Image:
    if isinstance(src, bytes | bytearray):
        with Image.open(io.BytesIO(src)) as im:
            im.load()
            return im.convert("RGB")
    from ivr.data.images import load_image

    return load_image(src)


def render_choices(choices: Sequence[str]) -> str:
    """The choices block appended to a question (one option per line, lettered).

    >>> print(render_choices(["3", "4"]))
    Choices:
    (A) 3
    (B) 4
    """
    return "Choices:\n" + "\n".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(choices))


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value != value:  # NaN from a TSV cell
        return ""
    return str(value).strip()


def _parse_list(value: Any, what: str) -> list[str]:
    """A list column that may be stored as a real list or as its Python repr (MMMU ``options``)."""
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    text = _text(value)
    if not text:
        return []
    try:
        parsed = ast.literal_eval(text)
    except (ValueError, SyntaxError) as e:
        raise _RowError(f"{what} {text[:80]!r} is not a list literal") from e
    if not isinstance(parsed, list | tuple):
        raise _RowError(f"{what} {text[:80]!r} is not a list")
    return [str(v) for v in parsed]


_OPTION_LINE = re.compile(r"^\s*\(?([A-J])[\):.]\s*(.*\S)?\s*$")


def _parse_inline_options(text: str) -> tuple[str, ...] | None:
    """Option texts written into a question ("Choices:\\nA:3\\nB:4", "Options: A: x, B: y").

    Returns None when no clean A, B, C … sequence is found; the grader then falls back to
    comparing letters.

    >>> _parse_inline_options("How many?\\nChoices:\\nA:3\\nB:4")
    ('3', '4')
    >>> _parse_inline_options("Which? Options: A: red, B: green, C: blue")
    ('red', 'green', 'blue')
    """
    marker = re.search(r"(Choices|Options)\s*:", text)
    if marker is None:
        return None
    block = text[marker.end() :]
    lines = [ln for ln in block.splitlines() if ln.strip()]
    found = [_OPTION_LINE.match(ln) for ln in lines]
    if len(lines) >= 2 and all(found):
        letters = "".join(m.group(1) for m in found)  # type: ignore[union-attr]
        if letters == LETTERS[: len(letters)]:
            return tuple((m.group(2) or "").strip() for m in found)  # type: ignore[union-attr]
    parts = re.split(r"(?:^|,\s*|\s+)\(?([A-J])[\):]\s*", block.strip())
    # parts = [prefix, "A", text, "B", text, …]
    letters = "".join(parts[1::2])
    if len(letters) >= 2 and letters == LETTERS[: len(letters)] and not parts[0].strip():
        return tuple(p.strip().rstrip(",").strip() for p in parts[2::2])
    return None


class _RowError(Exception):
    """Raised by an adapter for one bad row: the row is skipped with this reason."""


def _answer(row: dict[str, Any]) -> str:
    answer = _text(row.get("answer"))
    if not answer:
        raise _RowError("empty answer")
    return answer


def _decoded_image(row: dict[str, Any], path: Path) -> ImageSource:
    """MathVista / MATH-Vision: the embedded ``decoded_image``, else the ``image`` path."""
    image = _hf_image(row.get("decoded_image"), path.parent, "decoded_image")
    if image is None:
        image = _hf_image(row.get("image"), path.parent, "image")
    if image is None:
        raise _RowError("no image (decoded_image and image both empty)")
    return image


def _hf_image(value: Any, base: Path, what: str) -> ImageSource | None:
    """A Hugging Face ``Image`` cell ({"bytes", "path"}), raw bytes, or a relative path.

    None for no image: a null cell, or an empty path (MathVerse's Text Only version publishes
    ``image: ""``; as a path, "" would name the benchmark directory and fail to decode).
    """
    if value is None:
        return None
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        value = value.get("path")
        if not value:
            return None
    if isinstance(value, bytes | bytearray):
        return bytes(value) if value else None
    if isinstance(value, str):
        if not value.strip():
            return None
        p = Path(value)
        for cand in (p, base / p, base.parent / p):
            if cand.is_file():
                return str(cand.resolve())
        return str(base / p)  # does not exist: reported when decoded, as a skipped row
    raise _RowError(f"{what}: unsupported image cell of type {type(value).__name__}")


def _b64(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise _RowError(f"{what}: not valid base64 ({e})") from e


def _precision(value: Any) -> int | None:
    if value is None or value == "":
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return None if f != f else int(f)


# --------------------------------------------------------------------------------------------
# reading tables


def _read_table(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """Columns and rows of a parquet or (VLMEvalKit) TSV file."""
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".tsv"):
        raise BenchmarkFormatError(f"{path}: unsupported file type {suffix!r} (parquet or tsv)")
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            return list(table.column_names), table.to_pylist()
        import pandas as pd

        df = pd.read_csv(path, sep="\t", dtype=str)
        df = df.astype(object).where(df.notna(), None)
        return [str(c) for c in df.columns], df.to_dict("records")
    except Exception as e:  # pyarrow and pandas raise many types for a corrupt file
        raise BenchmarkFormatError(f"{path}: cannot be read as {suffix[1:]}: {e}") from e


def _require(path: Path, columns: Sequence[str], needed: Sequence[str | tuple[str, ...]], fmt: str):
    """Raise a BenchmarkFormatError naming the file if a required column is absent."""
    present = set(columns)
    for need in needed:
        options = (need,) if isinstance(need, str) else need
        if not present & set(options):
            wanted = " or ".join(repr(o) for o in options)
            raise BenchmarkFormatError(
                f"{path}: no column {wanted}; expected the {fmt} (columns found: "
                f"{', '.join(sorted(present)) or 'none'})"
            )


def _rows(
    path: Path, needed: Sequence[str | tuple[str, ...]], fmt: str
) -> Iterator[tuple[int, dict[str, Any]]]:
    columns, rows = _read_table(path)
    _require(path, columns, needed, fmt)
    yield from enumerate(rows)


def _find(root: Path, patterns: Sequence[str]) -> list[Path]:
    for pattern in patterns:
        found = sorted(p for p in root.glob(pattern) if p.is_file())
        if found:
            return found
    return []


def _convert(
    name: str,
    files: Sequence[Path],
    needed: Sequence[str | tuple[str, ...]],
    fmt: str,
    convert: Callable[[Path, int, dict[str, Any]], EvalItem],
) -> tuple[list[EvalItem], list[SkippedRow]]:
    items, skipped = [], []
    for path in files:
        for i, row in _rows(path, needed, fmt):
            source = f"{path}, row {i}"
            try:
                items.append(convert(path, i, row))
            except _RowError as e:
                rid = row.get("id") or row.get("pid") or row.get("index") or row.get("sample_index")
                skipped.append(SkippedRow(name, source, str(e), None if rid is None else str(rid)))
    return items, skipped


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


def _load_mathvision(root: Path) -> tuple[list[EvalItem], list[SkippedRow]]:
    files = _files(root, "mathvision", ("data/testmini-*.parquet", "testmini*.parquet"))
    needed = ["id", "question", "options", ("decoded_image", "image"), "answer"]
    return _convert("mathvision", files, needed, _MATHVISION_FMT, _mathvision_row)


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


def _load_mmmu(root: Path) -> tuple[list[EvalItem], list[SkippedRow]]:
    files = _files(
        root, "mmmu", ("*/validation-*.parquet", "data/validation-*.parquet", "validation*.parquet")
    )
    needed = ["id", "question", "options", "image_1", "answer"]
    return _convert("mmmu", files, needed, _MMMU_FMT, _mmmu_row)


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


# --------------------------------------------------------------------------------------------
# registry and resolution


@dataclass(frozen=True)
class BenchmarkInfo:
    name: str
    title: str
    dirnames: tuple[str, ...]  # looked up under --data-root, case-insensitively
    layout: str  # what is expected inside, for error messages and docs
    loader: Callable[[Path], tuple[list[EvalItem], list[SkippedRow]]]
    macro_over_categories: bool = False


BENCHMARKS: dict[str, BenchmarkInfo] = {
    b.name: b
    for b in (
        BenchmarkInfo(
            "mathvista",
            "MathVista",
            ("MathVista", "mathvista"),
            "data/testmini-*.parquet (AI4Math/MathVista)",
            _load_mathvista,
        ),
        BenchmarkInfo(
            "mathverse",
            "MathVerse",
            ("MathVerse", "mathverse"),
            "testmini.parquet (AI4Math/MathVerse)",
            _load_mathverse,
        ),
        BenchmarkInfo(
            "mathvision",
            "MathVision",
            ("MathVision", "MATH-Vision", "math_vision", "mathvision"),
            "data/testmini-*.parquet (MathLLMs/MathVision)",
            _load_mathvision,
        ),
        BenchmarkInfo(
            "mmstar",
            "MMStar",
            ("MMStar", "mmstar"),
            "mmstar.parquet or MMStar.tsv (Lin-Chen/MMStar)",
            _load_mmstar,
        ),
        BenchmarkInfo(
            "mmmu_pro",
            "MMMU-Pro",
            ("MMMU_Pro", "MMMU-Pro", "mmmu_pro", "mmmupro"),
            "'standard (10 options)/test-*.parquet' and 'vision/test-*.parquet' (MMMU/MMMU_Pro)",
            _load_mmmu_pro,
            macro_over_categories=True,
        ),
        BenchmarkInfo(
            "mmmu",
            "MMMU",
            ("MMMU", "mmmu"),
            "<Subject>/validation-*.parquet, one directory per subject (MMMU/MMMU)",
            _load_mmmu,
        ),
    )
}


def _files(root: Path, name: str, patterns: Sequence[str]) -> list[Path]:
    found = _find(root, patterns)
    if found:
        return found
    listing = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())[:20]
    raise BenchmarkFormatError(
        f"{root}: not a {BENCHMARKS[name].title} directory: expected "
        f"{' or '.join(repr(p) for p in patterns)} ({BENCHMARKS[name].layout}); "
        f"found {', '.join(listing) if listing else 'no files'}"
    )


def _canonical(name: str) -> str:
    key = name.strip().lower().replace("-", "_")
    aliases = {"math_vision": "mathvision", "mmmupro": "mmmu_pro"}
    return aliases.get(key, key)


def _benchmark_dir(info: BenchmarkInfo, data_root: Path | None) -> Path:
    if data_root is None:
        raise BenchmarkFormatError(
            f"{info.name}: no --data-root given; expected <data_root>/{info.dirnames[0]}/ "
            f"holding {info.layout}"
        )
    if not data_root.is_dir():
        raise BenchmarkFormatError(f"--data-root {data_root} is not a directory")
    wanted = {d.lower() for d in info.dirnames}
    for child in sorted(data_root.iterdir()):
        if child.is_dir() and child.name.lower() in wanted:
            return child
    raise BenchmarkFormatError(
        f"{info.title}: no directory {' / '.join(info.dirnames)} under {data_root}; expected "
        f"{data_root / info.dirnames[0]}/ holding {info.layout}"
    )


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "benchmark"


def load_benchmark(
    spec: str, data_root: str | Path | None = None, *, limit: int | None = None
) -> Benchmark:
    """Load one benchmark from a spec.

    ``spec`` is one of: a known name (``mathvista``, ``mathverse``, ``mathvision``, ``mmstar``,
    ``mmmu``, ``mmmu_pro``) found under ``data_root``; ``NAME:DIR`` for a known benchmark in an
    explicit directory; ``synth:PATH[@split]`` or a path to a project dataset (JSONL, parquet or a
    dataset directory; split ``test`` by default); a path to a VLMEvalKit ``.tsv``; or the name
    of a VLMEvalKit TSV in ``data_root`` (``MMBench_DEV_EN`` → ``<data_root>/MMBench_DEV_EN.tsv``).
    ``limit`` keeps the first N items (file order; MMMU-Pro alternates its two settings).
    """
    root = Path(data_root).expanduser() if data_root is not None else None
    head, sep, tail = spec.partition(":")
    if sep and len(head) > 1:  # NAME:PATH (a one-letter head is a Windows drive)
        kind = _canonical(head)
        if kind in ("synth", "project", "dataset"):
            path_s, _, split = tail.partition("@")
            path = _resolve_path(path_s, root)
            bench = _project_benchmark(path, split or "test", "synth" if kind == "synth" else None)
        elif kind in BENCHMARKS:
            info = BENCHMARKS[kind]
            path = _resolve_path(tail, root)
            bench = _known_benchmark(info, path)
        elif kind in ("tsv", "vlmevalkit"):
            path = _resolve_path(tail, root)
            bench = _tsv_benchmark(path)
        else:
            raise BenchmarkFormatError(f"unknown benchmark kind {head!r} in {spec!r}; {_HELP}")
    elif _canonical(spec) in BENCHMARKS:
        info = BENCHMARKS[_canonical(spec)]
        bench = _known_benchmark(info, _benchmark_dir(info, root))
    else:
        path_s, _, split = spec.partition("@")
        candidates = [Path(path_s).expanduser()]
        if root is not None:
            candidates += [root / path_s, root / f"{path_s}.tsv"]
        path = next((c for c in candidates if c.exists()), None)
        if path is None:
            raise BenchmarkFormatError(
                f"unknown benchmark {spec!r}: not a known name or path; {_HELP}"
            )
        if path.suffix.lower() == ".tsv":
            bench = _tsv_benchmark(path)
        else:
            bench = _project_benchmark(path, split or "test", None)
    if limit is not None:
        bench.items = bench.items[: max(0, limit)]
    return bench


_HELP = (
    "expected one of " + ", ".join(BENCHMARKS) + ", NAME:DIR, synth:PATH[@split], a dataset path, "
    "or a VLMEvalKit .tsv"
)


def _resolve_path(text: str, root: Path | None) -> Path:
    p = Path(text).expanduser()
    if not p.exists() and root is not None and (root / text).exists():
        p = root / text
    if not p.exists():
        raise BenchmarkFormatError(f"{p}: no such file or directory")
    return p


def _known_benchmark(info: BenchmarkInfo, path: Path) -> Benchmark:
    if not path.is_dir():
        raise BenchmarkFormatError(f"{path}: expected a directory holding {info.layout}")
    items, skipped = info.loader(path)
    return Benchmark(
        info.name,
        info.title,
        path,
        _unique(items),
        skipped,
        macro_over_categories=info.macro_over_categories,
    )


def _tsv_benchmark(path: Path) -> Benchmark:
    name = _safe_name(path.stem)
    items, skipped = _load_vlmevalkit_file(path, name)
    return Benchmark(name, path.stem, path, _unique(items), skipped)


def _project_benchmark(path: Path, split: str, name: str | None) -> Benchmark:
    name = name or _safe_name(path.stem if path.is_file() else path.name)
    items, skipped = _load_project(path, split, name)
    return Benchmark(name, name, path, _unique(items), skipped)


def _unique(items: list[EvalItem]) -> list[EvalItem]:
    """Ids key the resumable prediction file, so they must be unique: suffix repeats (#2, #3…)."""
    seen: dict[str, int] = {}
    out = []
    for it in items:
        n = seen.get(it.id, 0) + 1
        seen[it.id] = n
        out.append(it if n == 1 else replace(it, id=f"{it.id}#{n}"))
    return out
