"""Read training and evaluation data into ``Sample``s, failing loudly.

Inputs (``load_samples(path, split)``):

    DIR/{split}.jsonl                      one JSON object per line (``ivr synth`` writes these)
    DIR/{split}.parquet, DIR/{split}-*.parquet, DIR/data/{split}-*.parquet   (Hub layout)
    DIR saved by ``datasets`` ``save_to_disk``: a DatasetDict (its ``split``) or a Dataset
    FILE.jsonl / FILE.parquet              a single file (``split`` is ignored)

Columns map onto ``Sample`` fields, first alias present wins:

    id        id | idx | pid | question_id | uid          (default: "<file stem>-<line>")
    question  question | problem | prompt                  (a chat list: its last user text)
    answer    answer | solution | ground_truth | gt_answer (from ``solution``: the last \\boxed{}
              or <answer></answer> if present; box rows without one: the boxes as Qwen JSON)
    images    images | image | image_path | image_paths    (paths, HF Image dicts or PIL images)
    answer_type (common aliases such as ``multi_choice``, ``list``, ``bbox`` are mapped to the
    canonical names), choices, precision, unit, task, description, boxes, labels, image_size

Every other column is kept in ``Sample.extra`` (so reward functions receive it as a keyword).
Relative image paths are resolved against the data file's directory (``image_root`` overrides);
every image must exist, and with ``verify_images=True`` must also decode. Images stored inside
the data (bytes) are written once to a content-addressed cache (``$IVR_CACHE`` or
``~/.cache/ivr``/images) because ``Sample.images`` holds paths.

Errors name the file and the line (JSONL, 1-based, counting blank lines) or the row (parquet /
``datasets``, 1-based). ``on_error="skip"`` drops bad rows instead and issues one warning with the
count and the first reasons. Parquet is read with pyarrow directly (the reader ``datasets`` uses),
so nothing is written to the Hugging Face cache.

The same readers (files, embedded images, per-row errors) serve the SFT chat rows of
``sft_rows.py``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..rewards.answer import ANSWER_TYPE_ALIASES
from ..types import Sample

__all__ = ["DatasetError", "load_samples", "row_to_sample"]

ANSWER_TYPES = ("integer", "float", "expression", "choice", "text", "boxes")
_ALIASES = {
    "id": ("id", "idx", "pid", "question_id", "uid"),
    "question": ("question", "problem", "prompt"),
    "answer": ("answer", "solution", "ground_truth", "gt_answer"),
    "images": ("images", "image", "image_path", "image_paths"),
}
_FIELDS = (
    "answer_type",
    "choices",
    "precision",
    "unit",
    "task",
    "description",
    "boxes",
    "labels",
    "image_size",
)


class DatasetError(ValueError):
    """A malformed row or file; the message starts with ``file:line`` (or ``file row N``)."""


@dataclass(frozen=True)
class _Record:
    where: str  # "path:LINE" or "path row N", for messages
    index: int  # 1-based line / row number
    value: Any  # the decoded row, or an Exception if the line did not parse


# ----------------------------------------------------------------------------------- sources


def _parquet_files(d: Path, split: str) -> list[Path]:
    for pattern in (
        f"{split}.parquet",
        f"{split}-*.parquet",
        f"data/{split}.parquet",
        f"data/{split}-*.parquet",
    ):
        files = sorted(d.glob(pattern))
        if files:
            return files
    return []


def _records(path: str | Path, split: str, default_name: str) -> tuple[Path, Iterator[_Record]]:
    """The rows of a dataset path, lazily, with where each came from; and the base directory."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"dataset not found: {p}")
    if p.is_file():
        if p.suffix == ".parquet":
            return p.parent, _parquet_records([p])
        if p.suffix in (".jsonl", ".json", ".ndjson"):
            return p.parent, _json_records(p)
        raise DatasetError(f"{p}: unsupported file type {p.suffix!r} (use .jsonl or .parquet)")
    for name in (f"{split}.jsonl", default_name):
        if name and (p / name).is_file():
            return p, _json_records(p / name)
    files = _parquet_files(p, split)
    if files:
        return p, _parquet_records(files)
    if (p / "dataset_dict.json").is_file() or (p / "state.json").is_file():
        return p, _hf_records(p, split)
    looked = f"{split}.jsonl, {split}[-*].parquet, data/{split}[-*].parquet, a save_to_disk dir"
    raise FileNotFoundError(f"{p}: no split {split!r} found (looked for {looked})")


def _json_records(path: Path) -> Iterator[_Record]:
    """JSON Lines; or, for a file whose first character is ``[``, one JSON array of rows."""
    with open(path, encoding="utf-8") as f:
        head = f.read(4096).lstrip()
    if head.startswith("["):
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DatasetError(
                f"{path}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno})"
            ) from e
        return iter([_Record(f"{path} row {i}", i, r) for i, r in enumerate(rows, 1)])
    return _jsonl_records(path)


def _jsonl_records(path: Path) -> Iterator[_Record]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                yield _Record(where, lineno, json.loads(line))
            except json.JSONDecodeError as e:
                yield _Record(
                    where,
                    lineno,
                    DatasetError(f"{where}: not valid JSON ({e.msg}, column {e.colno})"),
                )


def _parquet_records(files: list[Path]) -> Iterator[_Record]:
    import pyarrow.parquet as pq

    for path in files:
        try:
            pf = pq.ParquetFile(path)
        except Exception as e:  # pyarrow raises several types for a bad file
            raise DatasetError(f"{path}: cannot read parquet file: {e}") from e
        i = 0
        for batch in pf.iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                i += 1
                yield _Record(f"{path} row {i}", i, row)


def _hf_records(path: Path, split: str) -> Iterator[_Record]:
    import datasets

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise FileNotFoundError(f"{path}: no split {split!r} (has {sorted(ds)})")
        ds = ds[split]
    # Arrow rows: Image columns come back undecoded, as {"bytes", "path"} dicts.
    table = ds.with_format("arrow")

    def rows() -> Iterator[_Record]:
        for start in range(0, len(ds), 1024):
            for j, row in enumerate(table[start : start + 1024].to_pylist()):
                i = start + j + 1
                yield _Record(f"{path} row {i}", i, row)

    return rows()


# ----------------------------------------------------------------------------------- images


def _cache_dir() -> Path:
    return Path(os.environ.get("IVR_CACHE", Path.home() / ".cache" / "ivr")) / "images"


def _materialise(data: bytes, cache_dir: Path | None) -> Path:
    """Write image bytes once, named by their hash, and return the path."""
    from PIL import Image, UnidentifiedImageError

    try:
        fmt = (Image.open(io.BytesIO(data)).format or "img").lower()
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"embedded image bytes are not an image ({e})") from e
    d = cache_dir or _cache_dir()
    d.mkdir(parents=True, exist_ok=True)
    p = d / f"{hashlib.sha1(data).hexdigest()}.{fmt}"
    if not p.exists():
        tmp = p.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(data)
        tmp.replace(p)
    return p


def _image_paths(value: Any, base: Path, cache_dir: Path | None, verify: bool) -> tuple[str, ...]:
    """Resolved absolute paths of a row's image column value (str, list, HF dict or PIL image)."""
    from PIL import Image

    items = value if isinstance(value, (list, tuple)) else [value]
    out = []
    for item in items:
        if item is None:
            continue
        if isinstance(item, Image.Image):
            buf = io.BytesIO()
            item.save(buf, format="PNG")
            out.append(_materialise(buf.getvalue(), cache_dir))
            continue
        if isinstance(item, dict):
            path, data = item.get("path"), item.get("bytes")
            if data:
                out.append(_materialise(data, cache_dir))
                continue
            item = path
        if not isinstance(item, (str, os.PathLike)) or not str(item):
            raise ValueError(
                f"image entry must be a path, an HF image dict or a PIL image, got {item!r}"
            )
        p = Path(item).expanduser()
        p = p if p.is_absolute() else base / p
        if not p.is_file():
            raise ValueError(f"image {str(item)!r} not found (resolved to {p})")
        out.append(p.resolve())
    if verify:
        from .images import load_image

        for p in out:
            load_image(p)
    return tuple(str(p) for p in out)


# ----------------------------------------------------------------------------------- rows


def _first(row: dict[str, Any], key: str) -> tuple[str | None, Any]:
    for alias in _ALIASES[key]:
        if alias in row and row[alias] is not None:
            return alias, row[alias]
    return None, None


def _last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{…}`` (balanced braces), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth = start + len("\\boxed{"), 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def _question_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # a chat: the last user turn's text
        for msg in reversed(value):
            if isinstance(msg, dict) and msg.get("role") == "user":
                content = msg.get("content")
                if isinstance(content, str):
                    return content.replace("<image>", "").strip()
                if isinstance(content, list):
                    texts = [
                        c.get("text", "")
                        for c in content
                        if isinstance(c, dict) and c.get("type") == "text"
                    ]
                    return "\n".join(texts).strip()
    raise ValueError(
        f"question must be a string (or a chat with a user turn), got {type(value).__name__}"
    )


def _answer_text(alias: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float, list)):
        raise ValueError(f"answer must be a string or a number, got {type(value).__name__}")
    if isinstance(value, list):
        value = value[0] if len(value) == 1 else json.dumps(value)
    text = str(value).strip()
    if alias == "solution":
        boxed = _last_boxed(text)
        if boxed is not None:
            return boxed.strip()
        m = re.search(r"<answer>(.*?)</answer>", text, re.S)
        if m:
            return m.group(1).strip()
    return text


def _boxes(value: Any) -> tuple[tuple[float, float, float, float], ...]:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"boxes must be a list of [x1, y1, x2, y2], got {type(value).__name__}")
    out = []
    for b in value:
        if (
            not isinstance(b, (list, tuple))
            or len(b) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in b)
        ):
            raise ValueError(f"each box must be 4 numbers [x1, y1, x2, y2], got {b!r}")
        out.append(tuple(float(v) for v in b))
    return tuple(out)  # type: ignore[return-value]


def _boxes_from_answer(answer: str) -> tuple[tuple, tuple[str, ...]]:
    text = answer.strip()
    m = re.search(r"```(?:json)?\s*(.*?)```", text, re.S)
    if m:
        text = m.group(1)
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"answer_type 'boxes' without a boxes column needs a JSON answer ({e.msg})"
        ) from e
    if not isinstance(items, list) or not all(
        isinstance(i, dict) and "bbox_2d" in i for i in items
    ):
        raise ValueError('a boxes answer must be a JSON list of {"bbox_2d": [...], "label": ...}')
    return _boxes([i["bbox_2d"] for i in items]), tuple(str(i.get("label", "")) for i in items)


def row_to_sample(
    row: dict[str, Any],
    *,
    base_dir: str | Path,
    default_id: str,
    cache_dir: Path | None = None,
    verify_images: bool = False,
) -> Sample:
    """Map one decoded row onto a ``Sample`` (raises ValueError with a plain reason)."""
    if not isinstance(row, dict):
        raise ValueError(f"a row must be a JSON object, got {type(row).__name__}")
    used: set[str] = set()

    id_key, id_val = _first(row, "id")
    q_key, q_val = _first(row, "question")
    a_key, a_val = _first(row, "answer")
    i_key, i_val = _first(row, "images")
    used.update(k for k in (id_key, q_key, a_key, i_key) if k)
    if q_key is None:
        raise ValueError(f"no question (looked for {', '.join(_ALIASES['question'])})")
    question = _question_text(q_val)

    f = {k: row.get(k) for k in _FIELDS}
    used.update(_FIELDS)
    answer_type = f["answer_type"]
    if answer_type is not None:
        key = str(answer_type).strip().lower()
        answer_type = ANSWER_TYPE_ALIASES.get(key, key)
        if answer_type not in ANSWER_TYPES:
            raise ValueError(
                f"answer_type {f['answer_type']!r} is not one of {', '.join(ANSWER_TYPES)}"
            )
    boxes = _boxes(f["boxes"]) if f["boxes"] is not None else None
    labels = tuple(str(v) for v in f["labels"]) if f["labels"] is not None else None
    if a_key is None:
        if boxes is None:
            raise ValueError(f"no answer (looked for {', '.join(_ALIASES['answer'])})")
        items = [
            {"bbox_2d": list(b), "label": (labels or ("",) * len(boxes))[k]}
            for k, b in enumerate(boxes)
        ]
        answer = json.dumps(items)
    else:
        answer = _answer_text(a_key, a_val)
    if answer_type == "boxes" and boxes is None:
        boxes, parsed_labels = _boxes_from_answer(answer)
        labels = labels if labels is not None else parsed_labels
    if boxes is not None and labels is not None and len(labels) != len(boxes):
        raise ValueError(f"{len(boxes)} boxes but {len(labels)} labels")

    choices = f["choices"]
    if isinstance(choices, str):
        try:
            choices = json.loads(choices)
        except json.JSONDecodeError:
            raise ValueError(f"choices must be a list, got the string {choices!r}") from None
    if choices is not None:
        if not isinstance(choices, (list, tuple)):
            raise ValueError(f"choices must be a list, got {type(choices).__name__}")
        choices = tuple(str(c) for c in choices)

    size = f["image_size"]
    if size is not None:
        if not isinstance(size, (list, tuple)) or len(size) != 2:
            raise ValueError(f"image_size must be [width, height], got {size!r}")
        size = (int(size[0]), int(size[1]))

    images = _image_paths(i_val, Path(base_dir), cache_dir, verify_images) if i_key else ()
    precision = f["precision"]
    if isinstance(precision, float) and precision != precision:  # NaN from a pandas-made file
        precision = None
    return Sample(
        id=str(id_val) if id_key else default_id,
        question=question,
        answer=answer,
        images=images,
        answer_type=answer_type,
        choices=choices,
        precision=int(precision) if precision is not None else None,
        unit=str(f["unit"]) if f["unit"] is not None else None,
        task=str(f["task"]) if f["task"] is not None else "default",
        description=str(f["description"]) if f["description"] is not None else None,
        boxes=boxes,
        labels=labels,
        image_size=size,  # type: ignore[arg-type]
        extra={k: v for k, v in row.items() if k not in used},
    )


def _check_on_error(on_error: str) -> None:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")


def _warn_skipped(source: Any, skipped: list[str], total: int) -> None:
    if skipped:
        first = "; ".join(skipped[:5]) + (" …" if len(skipped) > 5 else "")
        warnings.warn(f"{source}: skipped {len(skipped)} of {total} rows: {first}", stacklevel=3)


def _convert_records(
    records: Iterable[_Record], convert: Any, *, limit: int | None, on_error: str
) -> tuple[list[Any], list[str], int]:
    """``convert`` every record: (converted rows, reasons of the skipped ones, rows read).

    A bad row raises ``DatasetError`` naming its file and line, or with ``on_error="skip"`` is
    left out and its reason kept; ``limit`` stops after that many good rows."""
    out: list[Any] = []
    skipped: list[str] = []
    total = 0
    for rec in records:
        if limit is not None and len(out) >= limit:
            break
        total += 1
        try:
            if isinstance(rec.value, Exception):
                raise rec.value
            out.append(convert(rec))
        except (ValueError, TypeError, FileNotFoundError) as e:
            msg = str(e) if isinstance(e, DatasetError) else f"{rec.where}: {e}"
            if on_error == "raise":
                raise DatasetError(msg) from e
            skipped.append(msg)
    return out, skipped, total


def load_samples(
    path_or_dir: str | Path,
    split: str = "train",
    *,
    limit: int | None = None,
    on_error: str = "raise",
    image_root: str | Path | None = None,
    verify_images: bool = False,
    cache_dir: str | Path | None = None,
    skipped: list[str] | None = None,
) -> list[Sample]:
    """The rows of a dataset (see the module docstring for inputs and columns) as ``Sample``s.

    ``limit`` stops after that many good rows. ``on_error="raise"`` (default) raises
    ``DatasetError`` at the first bad row, naming file and line; ``"skip"`` drops bad rows with one
    warning carrying their count — or, when a ``skipped`` list is passed, appends every bad row's
    reason ("file:line: why") to it instead, for callers that report them themselves (eval).
    Duplicate ids are errors (eval resumes by id).
    """
    _check_on_error(on_error)
    base, records = _records(path_or_dir, split, default_name="")
    base = Path(image_root) if image_root is not None else base
    stem = Path(path_or_dir).stem if Path(path_or_dir).is_file() else split
    cache = Path(cache_dir) if cache_dir is not None else None
    seen: set[str] = set()

    def convert(rec: _Record) -> Sample:
        s = row_to_sample(
            rec.value,
            base_dir=base,
            default_id=f"{stem}-{rec.index}",
            cache_dir=cache,
            verify_images=verify_images,
        )
        if s.id in seen:
            raise ValueError(f"duplicate id {s.id!r}")
        seen.add(s.id)
        return s

    out, bad, total = _convert_records(records, convert, limit=limit, on_error=on_error)
    if skipped is not None:
        skipped.extend(bad)
    else:
        _warn_skipped(path_or_dir, bad, total)
    if not out and total:
        raise DatasetError(f"{path_or_dir}: all {total} rows are bad (first: {bad[0]})")
    return out
