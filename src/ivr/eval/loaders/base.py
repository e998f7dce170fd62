"""What every benchmark loader shares: the item and benchmark types, the registry, row helpers.

:class:`EvalItem` is one question ready to be prompted and graded, :class:`Benchmark` a loaded
benchmark, :class:`SkippedRow` a row reported and left out of the score. The helpers below turn
the cells benchmarks publish (Hugging Face ``Image`` cells, list literals, base64, inline
"Choices:" blocks) into those fields, and raise :class:`_RowError` for one bad row (skipped with
its reason) or :class:`BenchmarkFormatError` for a file that is not in the expected schema.

:func:`register_benchmark` is the one place a benchmark is named: the family modules
(``math.py``, ``mcq.py``) decorate their loader with it, and :data:`BENCHMARKS` — what
``load_benchmark``, the runner and ``ivr eval --help`` read — is filled from those decorators.
"""

from __future__ import annotations

import ast
import base64
import binascii
import io
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from ivr.types import Sample

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
# the registry: one entry per benchmark known by name

#: A loader: the benchmark's directory -> (items in file order, skipped rows).
Loader = Callable[[Path], tuple[list[EvalItem], list[SkippedRow]]]


@dataclass(frozen=True)
class BenchmarkInfo:
    name: str
    title: str
    dirnames: tuple[str, ...]  # looked up under --data-root, case-insensitively
    layout: str  # what is expected inside, for error messages and docs
    loader: Loader
    macro_over_categories: bool = False


#: Every benchmark known by name, in registration order (filled by :func:`register_benchmark`).
BENCHMARKS: dict[str, BenchmarkInfo] = {}


def register_benchmark(
    name: str,
    *,
    title: str,
    dirnames: Sequence[str],
    layout: str,
    macro_over_categories: bool = False,
) -> Callable[[Loader], Loader]:
    """Register the decorated loader as benchmark ``name`` (its spec on the command line).

    ``title`` heads its table column; ``dirnames`` are the directory names looked for under
    ``--data-root`` (case-insensitively; each, lower-cased with ``-`` as ``_``, is also accepted
    as a spelling of ``name``); ``layout`` says what the directory holds, for error messages;
    ``macro_over_categories`` scores the benchmark as the unweighted mean of its categories.
    """

    def register(loader: Loader) -> Loader:
        if name in BENCHMARKS:
            raise ValueError(f"benchmark {name!r} is registered twice")
        BENCHMARKS[name] = BenchmarkInfo(
            name, title, tuple(dirnames), layout, loader, macro_over_categories
        )
        return loader

    return register


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
