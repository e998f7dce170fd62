"""Benchmark loaders on fixtures written here, in each benchmark's published schema.

The ``write_*`` functions write small copies of the benchmarks exactly as their publishers lay
them out (Hugging Face parquet with ``Image`` features, per-subject directories, VLMEvalKit TSV
with base64 images); ``tests/integration/test_eval_runner.py`` reuses them end to end. Every image
has its own colour, so a test can tell items apart by their pixels.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from PIL import Image

from ivr.eval.loaders import (
    BENCHMARKS,
    BenchmarkFormatError,
    ImageDecodeError,
    load_benchmark,
)

datasets = pytest.importorskip("datasets")
Features, Value, HFImage, Seq = datasets.Features, datasets.Value, datasets.Image, datasets.Sequence

_colour = iter(range(1, 10_000))


def png(size: int = 56) -> bytes:
    """A solid-colour PNG, a different colour on every call."""
    k = next(_colour)
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (k * 37 % 256, k * 91 % 256, k * 53 % 256)).save(buf, "PNG")
    return buf.getvalue()


def hf_image(data: bytes | None, name: str = "x.png") -> dict | None:
    return None if data is None else {"bytes": data, "path": name}


def _parquet(path: Path, rows: list[dict], features) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(path))
    return path


# ----------------------------------------------------------------------------------- MathVista

MATHVISTA_FEATURES = Features(
    {
        "pid": Value("string"),
        "question": Value("string"),
        "image": Value("string"),
        "decoded_image": HFImage(),
        "choices": Seq(Value("string")),
        "unit": Value("string"),
        "precision": Value("float64"),
        "answer": Value("string"),
        "question_type": Value("string"),
        "answer_type": Value("string"),
        "metadata": {
            "category": Value("string"),
            "context": Value("string"),
            "grade": Value("string"),
            "img_height": Value("int64"),
            "img_width": Value("int64"),
            "language": Value("string"),
            "skills": Seq(Value("string")),
            "source": Value("string"),
            "split": Value("string"),
            "task": Value("string"),
        },
        "query": Value("string"),
    }
)


def _mv_meta(task: str, skills: list[str]) -> dict:
    return {
        "category": "math-targeted-vqa",
        "context": "synthetic scene",
        "grade": "elementary school",
        "img_height": 56,
        "img_width": 56,
        "language": "english",
        "skills": skills,
        "source": "fixture",
        "split": "testmini",
        "task": task,
    }


def mathvista_rows() -> list[dict]:
    base = {"unit": None, "precision": None, "choices": None, "query": "…"}
    return [
        {
            **base,
            "pid": "1",
            "question": "Is the number of red cubes greater than the number of blue spheres?",
            "image": "images/1.jpg",
            "decoded_image": hf_image(png()),
            "choices": ["Yes", "No"],
            "answer": "Yes",
            "question_type": "multi_choice",
            "answer_type": "text",
            "metadata": _mv_meta("visual question answering", ["arithmetic reasoning"]),
        },
        {
            **base,
            "pid": "2",
            "question": "How many objects are in the image?",
            "image": "images/2.jpg",
            "decoded_image": hf_image(png()),
            "answer": "7",
            "question_type": "free_form",
            "answer_type": "integer",
            "metadata": _mv_meta("figure question answering", ["arithmetic reasoning"]),
        },
        {
            **base,
            "pid": "3",
            "question": "What is the slope of the line?",
            "image": "images/3.jpg",
            "decoded_image": hf_image(png()),
            "answer": "1.25",
            "precision": 2.0,
            "question_type": "free_form",
            "answer_type": "float",
            "metadata": _mv_meta("figure question answering", ["algebraic reasoning"]),
        },
        {
            **base,
            "pid": "4",
            "question": "What is the perimeter of the rectangle?",
            "image": "images/4.jpg",
            "decoded_image": hf_image(png()),
            "answer": "12",
            "unit": "cm",
            "question_type": "free_form",
            "answer_type": "integer",
            "metadata": _mv_meta(
                "geometry problem solving", ["geometry reasoning", "arithmetic reasoning"]
            ),
        },
    ]


def write_mathvista(root: Path, rows: list[dict] | None = None) -> Path:
    rows = mathvista_rows() if rows is None else rows
    path = root / "MathVista" / "data" / "testmini-00000-of-00001-725687bf7a18d64b.parquet"
    _parquet(path, rows, MATHVISTA_FEATURES)
    return root / "MathVista"


# ----------------------------------------------------------------------------------- MathVerse

MATHVERSE_FEATURES = Features(
    {
        "sample_index": Value("string"),
        "problem_index": Value("string"),
        "problem_version": Value("string"),
        "question": Value("string"),
        "image": HFImage(),
        "answer": Value("string"),
        "question_type": Value("string"),
        "metadata": {
            "split": Value("string"),
            "source": Value("string"),
            "subject": Value("string"),
            "subfield": Value("string"),
        },
        "query_wo": Value("string"),
        "query_cot": Value("string"),
    }
)


def mathverse_rows() -> list[dict]:
    meta = {
        "split": "testmini",
        "source": "GeoQA",
        "subject": "Plane Geometry",
        "subfield": "Angle",
    }
    q = (
        "As shown in the figure, AB is parallel to CD and angle 1 = 50°. What is angle 2?\n"
        "Choices:\nA:40°\nB:50°\nC:130°\nD:140°"
    )
    wo = "According to the question shown in the image, please directly answer the question."
    return [
        {
            "sample_index": "1",
            "problem_index": "1",
            "problem_version": "Text Dominant",
            "question": q,
            "image": hf_image(png()),
            "answer": "C",
            "question_type": "multi-choice",
            "metadata": meta,
            "query_wo": wo,
            "query_cot": wo,
        },
        {
            "sample_index": "2",
            "problem_index": "1",
            "problem_version": "Vision Only",
            "question": "",
            "image": hf_image(png()),
            "answer": "C",
            "question_type": "multi-choice",
            "metadata": meta,
            "query_wo": wo,
            "query_cot": wo,
        },
        {
            "sample_index": "3",
            "problem_index": "2",
            "problem_version": "Text Lite",
            "question": "Find the area of the right triangle with legs 3 and 4.",
            "image": hf_image(png()),
            "answer": "6",
            "question_type": "free-form",
            "metadata": {**meta, "subfield": "Area"},
            "query_wo": wo,
            "query_cot": wo,
        },
    ]


def write_mathverse(root: Path) -> Path:
    _parquet(root / "MathVerse" / "testmini.parquet", mathverse_rows(), MATHVERSE_FEATURES)
    return root / "MathVerse"


# ----------------------------------------------------------------------------------- MATH-Vision

MATHVISION_FEATURES = Features(
    {
        "id": Value("string"),
        "question": Value("string"),
        "options": Seq(Value("string")),
        "image": Value("string"),
        "decoded_image": HFImage(),
        "answer": Value("string"),
        "solution": Value("string"),
        "level": Value("int64"),
        "subject": Value("string"),
    }
)


def write_mathvision(root: Path) -> Path:
    rows = [
        {
            "id": "1",
            "question": "<image1>\nHow many squares are shaded?",
            "options": ["1", "2", "3", "4", "5"],
            "image": "images/1.jpg",
            "decoded_image": hf_image(png()),
            "answer": "C",
            "solution": None,
            "level": 2,
            "subject": "counting",
        },
        {
            "id": "2",
            "question": "<image1>\nWhat is the length of x?",
            "options": [],
            "image": "images/2.jpg",
            "decoded_image": hf_image(png()),
            "answer": "12",
            "solution": None,
            "level": 3,
            "subject": "metric geometry - length",
        },
    ]
    path = root / "MathVision" / "data" / "testmini-00000-of-00001-f8ff70fcb2f29b1d.parquet"
    _parquet(path, rows, MATHVISION_FEATURES)
    return root / "MathVision"


# ----------------------------------------------------------------------------------- MMStar

MMSTAR_FEATURES = Features(
    {
        "index": Value("int64"),
        "question": Value("string"),
        "image": HFImage(),
        "answer": Value("string"),
        "category": Value("string"),
        "l2_category": Value("string"),
        "meta_info": {
            "source": Value("string"),
            "split": Value("string"),
            "image_path": Value("string"),
        },
    }
)


def write_mmstar(root: Path) -> Path:
    meta = {"source": "MMBench", "split": "val", "image_path": "images/0.jpg"}
    rows = [
        {
            "index": 0,
            "question": "Which colour dominates the image?\nOptions: A: red, B: green, C: blue, "
            "D: yellow",
            "image": hf_image(png()),
            "answer": "A",
            "category": "coarse perception",
            "l2_category": "image scene and topic",
            "meta_info": meta,
        },
        {
            "index": 1,
            "question": "How many circles are there?\nOptions: A: 1, B: 2, C: 3, D: 4",
            "image": hf_image(png()),
            "answer": "D",
            "category": "fine-grained perception",
            "l2_category": "object counting",
            "meta_info": meta,
        },
    ]
    _parquet(root / "MMStar" / "mmstar.parquet", rows, MMSTAR_FEATURES)
    return root / "MMStar"


# ----------------------------------------------------------------------------------- MMMU

MMMU_FEATURES = Features(
    {
        "id": Value("string"),
        "question": Value("string"),
        "options": Value("string"),
        "explanation": Value("string"),
        **{f"image_{k}": HFImage() for k in range(1, 8)},
        "img_type": Value("string"),
        "answer": Value("string"),
        "topic_difficulty": Value("string"),
        "question_type": Value("string"),
        "subfield": Value("string"),
    }
)


def _mmmu_row(rid: str, question: str, options: str, answer: str, qtype: str, n_images: int):
    row = {
        "id": rid,
        "question": question,
        "options": options,
        "explanation": "",
        "img_type": "['Diagrams']",
        "answer": answer,
        "topic_difficulty": "Easy",
        "question_type": qtype,
        "subfield": "Fixture",
    }
    for k in range(1, 8):
        row[f"image_{k}"] = hf_image(png()) if k <= n_images else None
    return row


def write_mmmu(root: Path, extra_rows: list[dict] | None = None) -> Path:
    accounting = [
        _mmmu_row(
            "validation_Accounting_1",
            "<image 1> What is the net income?",
            "['$10', '$20', '$30', '$40']",
            "B",
            "multiple-choice",
            1,
        )
    ]
    math = [
        _mmmu_row(
            "validation_Math_1",
            "Compare <image 1> and <image 2>. How many more edges does the second polygon have?",
            "[]",
            "2",
            "open",
            2,
        ),
        _mmmu_row(
            "validation_Math_2",
            "<image 1> What is the probability?",
            "[]",
            "['0.5', '1/2']",
            "open",
            1,
        ),
        *(extra_rows or []),
    ]
    _parquet(
        root / "MMMU" / "Accounting" / "validation-00000-of-00001.parquet",
        accounting,
        MMMU_FEATURES,
    )
    _parquet(root / "MMMU" / "Math" / "validation-00000-of-00001.parquet", math, MMMU_FEATURES)
    return root / "MMMU"


# ----------------------------------------------------------------------------------- MMMU-Pro

# MMMU-Pro standard: MMMU's columns, with ``subject`` instead of question_type / subfield
MMMU_PRO_STANDARD = Features(
    {
        **{k: v for k, v in MMMU_FEATURES.items() if k not in ("question_type", "subfield")},
        "subject": Value("string"),
    }
)
MMMU_PRO_VISION = Features(
    {
        "id": Value("string"),
        "image": HFImage(),
        "options": Value("string"),
        "answer": Value("string"),
        "subject": Value("string"),
    }
)
TEN = str([f"option {c}" for c in "ABCDEFGHIJ"])


def write_mmmu_pro(root: Path) -> Path:
    std = []
    for rid, answer, subject in (("test_History_1", "E", "History"), ("test_Art_2", "J", "Art")):
        row = {
            "id": rid,
            "question": "<image 1> Which option matches the picture?",
            "options": TEN,
            "explanation": "",
            "img_type": "['Photographs']",
            "answer": answer,
            "topic_difficulty": "Medium",
            "subject": subject,
        }
        for k in range(1, 8):
            row[f"image_{k}"] = hf_image(png()) if k == 1 else None
        std.append(row)
    vision = [
        {
            "id": "test_History_1",
            "image": hf_image(png()),
            "options": TEN,
            "answer": "E",
            "subject": "History",
        },
        {
            "id": "test_Art_2",
            "image": hf_image(png()),
            "options": TEN,
            "answer": "J",
            "subject": "Art",
        },
    ]
    base = root / "MMMU_Pro"
    _parquet(base / "standard (10 options)" / "test-00000-of-00001.parquet", std, MMMU_PRO_STANDARD)
    _parquet(base / "vision" / "test-00000-of-00001.parquet", vision, MMMU_PRO_VISION)
    return base


# ----------------------------------------------------------------------------------- VLMEvalKit


def write_vlmevalkit_tsv(path: Path, bad_base64: bool = False) -> Path:
    import pandas as pd

    b64 = base64.b64encode(png()).decode()
    rows = [
        {
            "index": 0,
            "question": "What colour is the square?",
            "hint": "Look at the largest shape.",
            "A": "red",
            "B": "green",
            "C": "blue",
            "D": None,
            "answer": "B",
            "category": "attribute_recognition",
            "l2-category": "finegrained_perception (instance-level)",
            "split": "dev",
            "image": b64,
        },
        {  # VLMEvalKit writes another row's index instead of repeating an image
            "index": 1,
            "question": "Is the shape a square?",
            "hint": None,
            "A": "yes",
            "B": "no",
            "C": None,
            "D": None,
            "answer": "A",
            "category": "attribute_recognition",
            "l2-category": "finegrained_perception (instance-level)",
            "split": "dev",
            "image": "0",
        },
    ]
    if bad_base64:
        rows.append({**rows[0], "index": 2, "image": "@@@ this is not base64 @@@" * 4})
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
    return path


def write_all(root: Path) -> dict[str, Path]:
    """Every published format under ``root`` (the ``--data-root``), plus a VLMEvalKit TSV."""
    return {
        "mathvista": write_mathvista(root),
        "mathverse": write_mathverse(root),
        "mathvision": write_mathvision(root),
        "mmstar": write_mmstar(root),
        "mmmu": write_mmmu(root),
        "mmmu_pro": write_mmmu_pro(root),
        "tsv": write_vlmevalkit_tsv(root / "MMBench_DEV_EN.tsv"),
    }


# =============================================================================================
# tests


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bench")
    write_all(root)
    return root


def _by_id(bench):
    return {it.id: it for it in bench.items}


def test_mathvista(data_root: Path) -> None:
    b = load_benchmark("mathvista", data_root)
    assert (b.name, b.title, len(b.items), b.skipped) == ("mathvista", "MathVista", 4, [])
    items = _by_id(b)
    mc = items["1"]
    assert mc.answer_type == "choice" and mc.choices == ("Yes", "No")
    assert mc.answer == "Yes"  # MathVista multiple-choice gold is the choice text
    assert mc.question.endswith("Choices:\n(A) Yes\n(B) No")
    assert mc.category == "visual question answering"
    assert mc.subcategory == ("arithmetic reasoning",)
    assert items["2"].answer_type == "integer" and items["2"].choices is None
    assert items["3"].answer_type == "float" and items["3"].precision == 2
    assert "2 decimal place" in items["3"].question
    assert items["4"].unit == "cm" and "(Unit: cm)" in items["4"].question
    assert items["4"].category == "geometry problem solving"
    (im,) = mc.load_images()
    assert im.mode == "RGB" and im.size == (56, 56)


def test_mathverse(data_root: Path) -> None:
    b = load_benchmark("mathverse", data_root)
    items = _by_id(b)
    td, vo, free = items["1"], items["2"], items["3"]
    assert td.answer_type == "choice" and td.answer == "C"
    assert td.choices == ("40°", "50°", "130°", "140°")  # parsed from the question text
    assert (td.category, td.subcategory) == ("Text Dominant", "Angle")
    assert vo.category == "Vision Only" and vo.question.startswith("According to the question")
    assert vo.choices is None  # the options are in the image
    assert free.answer_type is None and free.answer == "6"  # the grader infers the type


def test_mathverse_text_only_rows_have_no_image(tmp_path: Path) -> None:
    # MathVerse's Text Only version (testmini_text_only.parquet) publishes `image` as a string
    # column holding "": that is no image, not a path. It used to resolve to the benchmark
    # directory, which does not decode, so every Text Only row was skipped.
    features = Features({**MATHVERSE_FEATURES, "image": Value("string")})
    rows = [
        {**r, "image": image, "sample_index": str(k), "problem_version": "Text Only"}
        for k, (r, image) in enumerate(zip(mathverse_rows()[::2], ["", None]), start=1)
    ]
    _parquet(tmp_path / "testmini.parquet", rows, features)
    b = load_benchmark(f"mathverse:{tmp_path}", limit=None)
    assert b.skipped == []
    items = _by_id(b)
    assert set(items) == {"1", "2"}
    mc, free = items["1"], items["2"]
    assert mc.images == () and free.images == ()
    assert mc.load_images() == []  # nothing to decode: the runner prompts with text only
    assert mc.question.startswith("As shown in the figure") and mc.answer == "C"
    assert mc.choices == ("40°", "50°", "130°", "140°") and mc.category == "Text Only"
    assert free.question.startswith("Find the area") and free.answer == "6"


def test_mathvision(data_root: Path) -> None:
    items = _by_id(load_benchmark("mathvision", data_root))
    assert items["1"].answer_type == "choice" and items["1"].choices == ("1", "2", "3", "4", "5")
    assert "(E) 5" in items["1"].question
    assert (items["1"].category, items["1"].subcategory) == ("counting", "level 2")
    assert items["2"].answer_type is None and items["2"].answer == "12"


def test_mmstar_parquet_and_tsv(data_root: Path, tmp_path: Path) -> None:
    items = _by_id(load_benchmark("mmstar", data_root))
    assert items["0"].choices == ("red", "green", "blue", "yellow")
    assert (items["1"].answer, items["1"].category, items["1"].subcategory) == (
        "D",
        "fine-grained perception",
        "object counting",
    )
    # the VLMEvalKit MMStar.tsv in an MMStar directory is read as such
    write_vlmevalkit_tsv(tmp_path / "MMStar" / "MMStar.tsv")
    tsv = load_benchmark("mmstar", tmp_path)
    assert tsv.name == "mmstar" and len(tsv.items) == 2


def test_mmmu(data_root: Path) -> None:
    b = load_benchmark("mmmu", data_root)
    items = _by_id(b)
    acc = items["validation_Accounting_1"]
    assert acc.choices == ("$10", "$20", "$30", "$40") and acc.answer == "B"
    assert (acc.category, acc.subcategory) == ("Business", "Accounting")
    two = items["validation_Math_1"]
    assert len(two.images) == 2 and "<image 2>" in two.question
    assert len(two.load_images()) == 2
    assert two.answer_type is None and two.category == "Science"
    alt = items["validation_Math_2"]
    assert (alt.answer, alt.accepted) == ("0.5", ("1/2",))


def test_mmmu_pro_interleaves_settings(data_root: Path) -> None:
    b = load_benchmark("mmmu_pro", data_root)
    assert b.macro_over_categories
    assert [it.id for it in b.items] == [
        "standard-10/test_History_1",
        "vision/test_History_1",
        "standard-10/test_Art_2",
        "vision/test_Art_2",
    ]
    std, vis = b.items[0], b.items[1]
    assert std.choices is not None and len(std.choices) == 10 and "(J) option J" in std.question
    assert "(A)" not in vis.question  # vision setting: question and options are in the image
    assert (vis.category, vis.subcategory, vis.answer) == ("vision", "History", "E")
    limited = load_benchmark("mmmu_pro", data_root, limit=2)
    assert {it.category for it in limited.items} == {"standard-10", "vision"}


def test_vlmevalkit_tsv(data_root: Path) -> None:
    for spec in ("MMBench_DEV_EN", str(data_root / "MMBench_DEV_EN.tsv")):
        b = load_benchmark(spec, data_root)
        assert b.name == "MMBench_DEV_EN"
        first, second = b.items
        assert first.choices == ("red", "green", "blue")  # empty option D dropped
        assert first.question.startswith("Hint: Look at the largest shape.\n")
        assert second.images == first.images  # image given as another row's index
        assert (first.category, first.subcategory) == (
            "attribute_recognition",
            "finegrained_perception (instance-level)",
        )


def test_explicit_directory_and_limit(data_root: Path) -> None:
    b = load_benchmark(f"mathvista:{data_root / 'MathVista'}", limit=2)
    assert [it.id for it in b.items] == ["1", "2"]


def test_registry_lists_the_paper_benchmarks() -> None:
    assert set(BENCHMARKS) == {"mathvista", "mathverse", "mathvision", "mmstar", "mmmu", "mmmu_pro"}


# ----------------------------------------------------------------------------------- bad input


def test_missing_column_names_file_and_schema(tmp_path: Path) -> None:
    rows = [{k: v for k, v in r.items() if k != "answer"} for r in mathvista_rows()]
    feats = Features({k: v for k, v in MATHVISTA_FEATURES.items() if k != "answer"})
    path = tmp_path / "MathVista" / "data" / "testmini-00000-of-00001.parquet"
    _parquet(path, rows, feats)
    with pytest.raises(BenchmarkFormatError) as e:
        load_benchmark("mathvista", tmp_path)
    msg = str(e.value)
    assert str(path) in msg and "'answer'" in msg and "MathVista testmini parquet schema" in msg


def test_image_that_does_not_decode_is_reported_with_its_row(tmp_path: Path) -> None:
    rows = mathvista_rows()
    rows[1]["decoded_image"] = {"bytes": b"\x89PNG but not really", "path": "2.png"}
    write_mathvista(tmp_path, rows)
    b = load_benchmark("mathvista", tmp_path)
    assert len(b.items) == 4  # found when decoded, not at load time
    with pytest.raises(ImageDecodeError) as e:
        b.items[1].load_images()
    assert "testmini-00000-of-00001" in str(e.value) and "row 1" in str(e.value)
    assert "'2'" in str(e.value)


def test_wrong_directory_layout(tmp_path: Path) -> None:
    (tmp_path / "MMMU").mkdir()
    (tmp_path / "MMMU" / "notes.json").write_text("{}")
    with pytest.raises(BenchmarkFormatError) as e:
        load_benchmark("mmmu", tmp_path)
    msg = str(e.value)
    assert "not a MMMU directory" in msg and "validation-*.parquet" in msg and "notes.json" in msg


def test_missing_benchmark_directory_and_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(BenchmarkFormatError, match="no directory MMStar"):
        load_benchmark("mmstar", tmp_path)
    with pytest.raises(BenchmarkFormatError, match="unknown benchmark 'chartqa'"):
        load_benchmark("chartqa", tmp_path)
    with pytest.raises(BenchmarkFormatError, match="no --data-root"):
        load_benchmark("mmmu")


def test_bad_rows_are_skipped_with_reason(tmp_path: Path) -> None:
    bad = _mmmu_row("validation_Math_3", "<image 1> ?", "['a', 'b'", "A", "multiple-choice", 1)
    wrong_letter = _mmmu_row(
        "validation_Math_4", "<image 1> ?", "['a', 'b']", "F", "multiple-choice", 1
    )
    write_mmmu(tmp_path, extra_rows=[bad, wrong_letter])
    b = load_benchmark("mmmu", tmp_path)
    assert len(b.items) == 3
    reasons = {s.id: s.reason for s in b.skipped}
    assert set(reasons) == {"validation_Math_3", "validation_Math_4"}
    assert "not a list literal" in reasons["validation_Math_3"]
    assert "option letters" in reasons["validation_Math_4"]
    assert all("Math/validation-00000-of-00001.parquet, row" in s.source for s in b.skipped)

    tsv = write_vlmevalkit_tsv(tmp_path / "Bad.tsv", bad_base64=True)
    t = load_benchmark(str(tsv))
    assert len(t.items) == 2
    ((skip,),) = [t.skipped]
    assert (skip.id, skip.source) == ("2", f"{tsv}, row 2")
    assert skip.reason.startswith("image: not valid base64")


def test_unreadable_file(tmp_path: Path) -> None:
    (tmp_path / "MMStar").mkdir()
    (tmp_path / "MMStar" / "mmstar.parquet").write_bytes(b"not parquet")
    with pytest.raises(BenchmarkFormatError, match="cannot be read as parquet"):
        load_benchmark("mmstar", tmp_path)


def test_project_dataset_and_its_bad_rows(tmp_path: Path) -> None:
    import json

    (tmp_path / "img.png").write_bytes(png())
    rows = [
        {"id": "a", "question": "How many?", "answer": "3", "image": "img.png", "task": "count"},
        {"id": "b", "answer": "4", "image": "img.png"},  # no question
        {"id": "c", "question": "Colour?", "answer": "red", "image": "img.png", "level": 2},
    ]
    path = tmp_path / "test.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for spec in (f"synth:{tmp_path}", str(path), f"dataset:{tmp_path}@test"):
        b = load_benchmark(spec)
        assert [it.id for it in b.items] == ["a", "c"], spec
        ((skip,),) = [b.skipped]
        assert "no question" in skip.reason and "test.jsonl" in skip.reason
    a, c = b.items
    assert (a.category, c.category, c.subcategory) == ("count", "default", "level 2")
    assert load_benchmark(f"synth:{tmp_path}").name == "synth"
    assert load_benchmark(str(path)).name == "test"
    with pytest.raises(BenchmarkFormatError, match="no such file"):
        load_benchmark(f"synth:{tmp_path / 'nope'}")
