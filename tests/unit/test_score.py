"""score_file / format_score_table: offline grading of a JSONL of predictions (`ivr score`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ivr.rewards import format_score_table, score_file

FMT = "<desc>d</desc><think>t</think>"


def write(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


ROWS = [
    # choice (2 rows): 1 right -> 50%; both in format -> 100%
    {"completion": FMT + r"\boxed{B}", "answer": "Paris", "choices": ["London", "Paris"], "id": 1},
    {"completion": FMT + r"\boxed{A}", "answer": "Paris", "choices": ["London", "Paris"]},
    # integer (inferred, 2 rows): both right; one chat-formatted; neither in format
    {"completion": r"\boxed{12 cm}", "answer": "12", "unit": "cm"},
    {"completion": [{"role": "assistant", "content": r"\boxed{7}"}], "answer": 7},
    # float (1 row): round(3.14159, 2) = 3.14 -> right
    {
        "completion": FMT + r"\boxed{3.14159}",
        "answer": "3.14",
        "answer_type": "float",
        "precision": 2,
    },
    # expression (1 row): wrong
    {"completion": FMT + r"\boxed{\frac{1}{3}}", "answer": r"\frac{1}{2}"},
    # localization (2 rows): perfect (3.0) and a wrong template (0.0)
    {
        "completion": '[{"bbox_2d": [0, 0, 10, 10]}]',
        "boxes": [[0, 0, 10, 10]],
        "image_size": [100, 100],
    },
    {"completion": "a cat", "boxes": [[0, 0, 10, 10]], "image_size": [100, 100]},
]


def test_score_file_breakdown(tmp_path: Path) -> None:
    res = score_file(write(tmp_path / "p.jsonl", [*ROWS, ""]))  # blank lines are skipped
    assert res["n"] == 8 and res["n_answer"] == 6 and res["n_skipped"] == 0
    # accuracy: choice 1/2, integer 2/2, float 1/1, expression 0/1 -> 4/6
    assert res["accuracy"] == pytest.approx(4 / 6)
    assert res["by_type"] == {
        "choice": {"n": 2, "accuracy": 0.5, "format": 1.0},
        "expression": {"n": 1, "accuracy": 0.0, "format": 1.0},
        "float": {"n": 1, "accuracy": 1.0, "format": 1.0},
        "integer": {"n": 2, "accuracy": 1.0, "format": 0.0},
    }
    assert res["format"] == pytest.approx(4 / 6)
    # localization: format (1 + 0)/2, recall (1 + 0)/2, precision (1 + 0)/2, total (3 + 0)/2
    assert res["localization"] == {
        "n": 2,
        "format": 0.5,
        "recall": 0.5,
        "precision": 0.5,
        "total": 1.5,
    }


def test_format_score_table(tmp_path: Path) -> None:
    table = format_score_table(score_file(write(tmp_path / "p.jsonl", ROWS)))
    lines = table.splitlines()
    assert lines[0].endswith("p.jsonl: 8 rows")
    assert lines[1].split() == ["type", "n", "accuracy", "%", "format", "%"]
    assert lines[2].split() == ["choice", "2", "50.0", "100.0"]
    assert lines[-2].split() == ["all", "6", "66.7", "66.7"]
    assert "localization (2 rows" in lines[-1] and "total 1.500 / 3" in lines[-1]


def test_only_localization_rows(tmp_path: Path) -> None:
    res = score_file(write(tmp_path / "p.jsonl", ROWS[-2:]))
    assert res["accuracy"] is None and res["by_type"] == {}
    assert "accuracy" not in format_score_table(res)  # no QA table at all


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({"answer": "1"}), r"missing key 'completion' \(or 'response'"),
        (json.dumps({"completion": "x"}), "needs 'answer'"),
        (json.dumps({"completion": "x", "boxes": [[0, 0, 1, 1]]}), "image_size"),
        (json.dumps({"completion": "x", "answer": "1", "answer_type": "bogus"}), "answer_type"),
        (json.dumps({"completion": "x", "boxes": [[0, 0, 1]], "image_size": [9, 9]}), "boxes"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path: Path, bad_line: str, message: str) -> None:
    path = write(tmp_path / "bad.jsonl", [ROWS[0], "", bad_line])
    with pytest.raises(ValueError, match=message) as err:
        score_file(path)
    assert f"{path}:3:" in str(err.value)  # line 3: blank line 2 still counts


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        score_file(tmp_path / "nope.jsonl")


def test_skipped_rows_are_counted_and_explained(tmp_path: Path) -> None:
    rows = [
        ROWS[0],
        {"completion": r"\boxed{3}", "answer": None},  # line 2: nothing to grade against
        ROWS[2],
        {"completion": "x", "answer": "1", "answer_type": "boxes"},  # line 4: boxes, no boxes
        ROWS[3],
        ROWS[4],
    ]
    res = score_file(write(tmp_path / "p.jsonl", rows))
    assert res["n"] == 6 and res["n_answer"] == 4 and res["n_skipped"] == 2
    assert [s["line"] for s in res["skipped"]] == [2, 4]
    lines = format_score_table(res).splitlines()
    # 6 rows read, 4 graded: the header says so, and each skipped row is named with why
    assert lines[0].endswith("p.jsonl: 6 rows (4 scored, 2 skipped)")
    assert lines[-2] == "skipped line 2: 'answer' is null (and no 'boxes')"
    assert lines[-1].startswith("skipped line 4: answer_type 'boxes' is not graded")
    assert [x.split()[:2] for x in lines if x.startswith("all")] == [["all", "4"]]


def test_ivr_eval_predictions_are_graded_from_their_response(tmp_path: Path) -> None:
    """``ivr eval`` writes the model's output as ``response``: ``ivr score`` grades it as it is,
    the same as the same rows under ``completion`` (which wins where a row has both)."""
    as_completion = [r for r in ROWS if "boxes" not in r]
    as_response = [
        {("response" if k == "completion" else k): v for k, v in r.items()} for r in as_completion
    ]
    both = [{**r, "response": r"\boxed{nonsense}"} for r in as_completion]
    want = score_file(write(tmp_path / "c.jsonl", as_completion))
    for name, rows in (("r.jsonl", as_response), ("b.jsonl", both)):
        got = score_file(write(tmp_path / name, rows))
        assert {k: v for k, v in got.items() if k != "path"} == {
            k: v for k, v in want.items() if k != "path"
        }
