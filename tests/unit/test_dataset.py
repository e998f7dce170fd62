"""Dataset readers: every input format, column aliases, and errors that name file and line."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import pytest
from PIL import Image

from ivr.data.dataset import DatasetError, load_samples
from ivr.data.sft_rows import load_sft_rows
from ivr.data.synth import generate_dataset


@pytest.fixture(scope="module")
def ds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_dataset(
        tmp_path_factory.mktemp("ds") / "d", n=45, seed=0, n_test=15, parquet=True
    )


def _png(path: Path, colour: str = "red") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)
    return path


def _write_jsonl(path: Path, rows: list) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ----------------------------------------------------------------------------------- synth dirs


def test_loads_a_synth_dir(ds):
    train = load_samples(ds)
    test = load_samples(ds, "test")
    assert (len(train), len(test)) == (30, 15)
    raw = {r["id"]: r for r in _rows(ds / "train.jsonl")}
    for s in train:
        r = raw[s.id]
        assert s.question == r["question"] and s.answer == r["answer"]
        assert s.answer_type == r["answer_type"] and s.task == r["task"]
        assert s.description == r["description"]
        assert (
            len(s.images) == 1 and Path(s.images[0]).is_absolute() and Path(s.images[0]).is_file()
        )
        assert s.images[0] == str((ds / r["image"]).resolve())
        assert s.extra["level"] == r["level"] and s.extra["scene"] == r["scene"]
        assert s.image_size == (112, 112)
        if r["task"] == "choice":
            assert s.choices == tuple(r["choices"])
        if r["task"] == "locate":
            assert s.boxes == tuple(tuple(float(v) for v in b) for b in r["boxes"])
            assert s.labels == tuple(r["labels"])
            assert s.columns()["boxes"] == [[float(v) for v in b] for b in r["boxes"]]
        else:
            assert s.boxes is None and s.labels is None


def test_single_file_and_limit(ds):
    assert [s.id for s in load_samples(ds / "test.jsonl")] == [
        r["id"] for r in _rows(ds / "test.jsonl")
    ]
    assert len(load_samples(ds, limit=7)) == 7


def test_parquet_matches_jsonl(ds):
    from_jsonl = load_samples(ds / "train.jsonl")
    from_parquet = load_samples(ds / "train.parquet")
    assert len(from_jsonl) == len(from_parquet)
    for a, b in zip(from_jsonl, from_parquet):
        # parquet keeps the nested query as a JSON string
        assert json.loads(b.extra.pop("query")) == a.extra.pop("query")
        assert a == b


def test_parquet_dir_is_found_without_jsonl(ds, tmp_path):
    d = tmp_path / "pq"
    (d / "data").mkdir(parents=True)
    (d / "data" / "test-00000-of-00001.parquet").write_bytes((ds / "test.parquet").read_bytes())
    samples = load_samples(d, "test", image_root=ds)
    assert len(samples) == 15 and all(Path(p).is_file() for s in samples for p in s.images)


def test_hf_save_to_disk_dir_with_paths_and_embedded_images(ds, tmp_path):
    import datasets

    rows = _rows(ds / "train.jsonl")[:4]
    flat = [
        {
            "id": r["id"],
            "problem": r["question"],
            "solution": r["answer"],
            "image": str(ds / r["image"]),
        }
        for r in rows
    ]
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(flat)})
    dd.save_to_disk(str(tmp_path / "hf"))
    got = load_samples(tmp_path / "hf", "train")
    assert [s.question for s in got] == [r["question"] for r in rows]
    assert [s.images[0] for s in got] == [str((ds / r["image"]).resolve()) for r in rows]

    # An Image feature holding the bytes: materialised once into a content-addressed cache.
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "blue").save(buf, format="PNG")
    emb = datasets.Dataset.from_dict(
        {"question": ["q"], "answer": ["1"], "image": [{"bytes": buf.getvalue(), "path": None}]},
        features=datasets.Features(
            {
                "question": datasets.Value("string"),
                "answer": datasets.Value("string"),
                "image": datasets.Image(),
            }
        ),
    )
    emb.save_to_disk(str(tmp_path / "emb"))
    (s,) = load_samples(tmp_path / "emb", cache_dir=tmp_path / "cache")
    assert Path(s.images[0]).parent == tmp_path / "cache"
    assert Image.open(s.images[0]).getpixel((0, 0)) == (0, 0, 255)
    with pytest.raises(FileNotFoundError, match="no split 'test'"):
        load_samples(tmp_path / "hf", "test")


# ----------------------------------------------------------------------------------- columns


def test_column_aliases(tmp_path):
    _png(tmp_path / "img" / "a.png")
    rows = [
        {
            "pid": 7,
            "problem": "What is 1+1?",
            "solution": "so \\boxed{\\frac{4}{2}} done",
            "images": ["img/a.png"],
        },
        {"question": "Q", "ground_truth": 3, "image_path": "img/a.png", "category": "math"},
        {
            "prompt": [{"role": "user", "content": "<image>How many?"}],
            "solution": "<answer> 5 </answer>",
        },
        {"question": "Q", "answer": "B", "choices": '["x", "y"]', "answer_type": "multi_choice"},
        {"question": "Q", "answer": "[1, 2]", "answer_type": "list", "precision": float("nan")},
    ]
    s = load_samples(_write_jsonl(tmp_path / "rows.jsonl", rows))
    assert s[0].id == "7" and s[0].answer == "\\frac{4}{2}" and len(s[0].images) == 1
    assert s[1].answer == "3" and s[1].extra == {"category": "math"} and s[1].id == "rows-2"
    assert s[2].question == "How many?" and s[2].answer == "5" and s[2].images == ()
    assert s[3].choices == ("x", "y") and s[3].answer_type == "choice"
    assert s[4].answer_type == "expression" and s[4].precision is None


def test_boxes_from_answer_json(tmp_path):
    ans = '```json\n[{"bbox_2d": [1, 2, 3, 4], "label": "cat"}]\n```'
    (s,) = load_samples(
        _write_jsonl(
            tmp_path / "b.jsonl", [{"question": "q", "answer": ans, "answer_type": "boxes"}]
        )
    )
    assert s.boxes == ((1.0, 2.0, 3.0, 4.0),) and s.labels == ("cat",)
    (s,) = load_samples(
        _write_jsonl(
            tmp_path / "c.jsonl", [{"question": "q", "boxes": [[0, 0, 5, 5]], "labels": ["x"]}]
        )
    )
    assert json.loads(s.answer) == [{"bbox_2d": [0.0, 0.0, 5.0, 5.0], "label": "x"}]


# ----------------------------------------------------------------------------------- errors


GOOD = {"question": "q", "answer": "1"}


@pytest.mark.parametrize(
    "bad, message",
    [
        ('{"question": "q", "answer": ', "not valid JSON"),
        ({"answer": "1"}, "no question"),
        ({"question": "q"}, "no answer"),
        ({"question": "q", "answer": "1", "image": "missing.png"}, "image 'missing.png' not found"),
        ({"question": "q", "answer": "1", "answer_type": "essay"}, "answer_type 'essay'"),
        ({"question": "q", "answer": "1", "boxes": [[1, 2, 3]]}, "4 numbers"),
        ({"question": "q", "answer": "1", "choices": 5}, "choices must be a list"),
        ('["not", "an", "object"]', "JSON object"),
    ],
)
def test_bad_row_names_file_and_line(tmp_path, bad, message):
    # line 1 good, line 2 blank, line 3 bad: the error points at line 3 of the file.
    path = tmp_path / "train.jsonl"
    path.write_text(
        json.dumps(GOOD) + "\n\n" + (bad if isinstance(bad, str) else json.dumps(bad)) + "\n"
    )
    with pytest.raises(DatasetError) as info:
        load_samples(tmp_path)
    assert f"{path}:3" in str(info.value) and message in str(info.value)


def test_skip_mode_warns_with_count(tmp_path):
    rows = [
        GOOD,
        "{oops",
        {"answer": "2"},
        {**GOOD, "id": "x"},
        {"question": "q", "answer": "1", "image": "nope.png"},
    ]
    path = _write_jsonl(tmp_path / "t.jsonl", rows)
    with pytest.warns(UserWarning, match=r"skipped 3 of 5 rows") as rec:
        samples = load_samples(path, on_error="skip")
    assert [s.id for s in samples] == ["t-1", "x"]
    msg = str(rec[0].message)
    assert f"{path}:2" in msg and f"{path}:3" in msg and f"{path}:5" in msg
    with pytest.raises(DatasetError, match="all 1 rows are bad"), pytest.warns(UserWarning):
        load_samples(_write_jsonl(tmp_path / "u.jsonl", ["{oops"]), on_error="skip")
    # A caller that reports bad rows itself gets every reason, and no warning.
    reasons: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(load_samples(path, on_error="skip", skipped=reasons)) == 2
    assert [r.split(": ", 1)[0] for r in reasons] == [f"{path}:2", f"{path}:3", f"{path}:5"]


def test_duplicate_ids(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", [{**GOOD, "id": "a"}, {**GOOD, "id": "a"}])
    with pytest.raises(DatasetError, match=f"{path}:2: duplicate id 'a'"):
        load_samples(path)


def test_corrupt_image_is_caught_with_verify(tmp_path):
    png = _png(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(png.read_bytes()[:40])  # truncated
    path = _write_jsonl(
        tmp_path / "v.jsonl", [{**GOOD, "image": "ok.png"}, {**GOOD, "image": "bad.png"}]
    )
    assert len(load_samples(path)) == 2  # existence only by default
    with pytest.raises(DatasetError, match=f"{path}:2: .*bad.png"):
        load_samples(path, verify_images=True)


def test_parquet_errors_name_the_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.Table.from_pylist([GOOD, {"question": "q", "answer": None}]), tmp_path / "p.parquet"
    )
    with pytest.raises(DatasetError, match=r"p.parquet row 2: no answer"):
        load_samples(tmp_path / "p.parquet")


def test_json_array_and_missing_inputs(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([GOOD, {"question": "q"}]))
    with pytest.raises(DatasetError, match=r"a.json row 2: no answer"):
        load_samples(tmp_path / "a.json")
    with pytest.raises(FileNotFoundError, match="dataset not found"):
        load_samples(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="no split 'train'"):
        load_samples(tmp_path)
    with pytest.raises(ValueError, match="on_error"):
        load_samples(tmp_path / "a.json", on_error="ignore")


# ----------------------------------------------------------------------------------- SFT rows


def test_sft_rows_from_synth(ds):
    rows = load_sft_rows(ds)
    assert len(rows) == 30 and {r["kind"] for r in rows} <= {"answer", "critique", "rectify"}
    for r in rows:
        assert Path(r["images"][0]).is_file()
        user, assistant = r["messages"]
        assert user["content"][0] == {"type": "image"} and isinstance(assistant["content"], str)
    assert load_sft_rows(ds / "sft.jsonl", limit=3) == rows[:3]


def test_sft_formats_are_normalised(tmp_path):
    _png(tmp_path / "a.png")
    rows = [
        {  # LLaMA-Factory: <image> placeholder in a string
            "messages": [
                {"role": "user", "content": "<image>How many?"},
                {"role": "assistant", "content": " 2 "},
            ],
            "images": ["a.png"],
        },
        {  # ShareGPT
            "conversations": [
                {"from": "human", "value": "Hi <image>"},
                {"from": "gpt", "value": "ok"},
            ],
            "image": "a.png",
        },
        {  # HF parts with the path inline
            "messages": [
                {"role": "system", "content": "be brief"},
                {
                    "role": "user",
                    "content": [{"type": "image", "image": "a.png"}, {"type": "text", "text": "q"}],
                },
                {"role": "assistant", "content": [{"type": "text", "text": "a"}]},
            ]
        },
    ]
    a, b, c = load_sft_rows(_write_jsonl(tmp_path / "sft.jsonl", rows))
    img = str((tmp_path / "a.png").resolve())
    assert a["messages"] == [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many?"}]},
        {"role": "assistant", "content": " 2 "},  # the target is kept verbatim
    ]
    assert a["images"] == b["images"] == c["images"] == [img]
    assert b["messages"][0]["content"] == [{"type": "text", "text": "Hi"}, {"type": "image"}]
    assert c["messages"][0] == {"role": "system", "content": [{"type": "text", "text": "be brief"}]}
    assert c["messages"][2] == {"role": "assistant", "content": "a"}


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"messages": [{"role": "user", "content": "q"}]}, "no assistant turn"),
        (
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "  "},
                ]
            },
            "no assistant turn",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "<image>q"},
                    {"role": "assistant", "content": "a"},
                ]
            },
            "1 image placeholders",
        ),
        ({"messages": [{"role": "robot", "content": "q"}]}, "unknown role"),
        ({"text": "no messages"}, "no 'messages'"),
    ],
)
def test_bad_sft_rows_fail_early_with_line(tmp_path, bad, message):
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    path = _write_jsonl(tmp_path / "sft.jsonl", [good, good, bad])
    with pytest.raises(DatasetError) as info:
        load_sft_rows(path)
    assert f"{path}:3" in str(info.value) and message in str(info.value)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        assert len(load_sft_rows(path, on_error="skip")) == 2
    assert "skipped 1 of 3" in str(rec[0].message)


def test_sft_file_without_any_assistant_turn(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "q"}]}] * 3
    with (
        pytest.raises(DatasetError, match="no usable SFT rows.*no assistant turn"),
        pytest.warns(UserWarning, match="skipped 3 of 3"),
    ):
        load_sft_rows(_write_jsonl(tmp_path / "sft.jsonl", rows), on_error="skip")
