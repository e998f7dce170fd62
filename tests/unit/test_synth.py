"""The synthetic world: determinism, pixels ↔ ground truth, descriptions, demonstrations."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ivr.data.prompts import PromptSet, extract_description
from ivr.data.render import (
    BACKGROUND,
    COLOURS,
    DIGIT_COLOUR,
    SHAPES,
    Geometry,
    describe,
    description_fidelity,
    parse_description,
)
from ivr.data.synth import add_synth_arguments, generate_dataset, image_blind_baseline, run_synth
from ivr.data.world import TASKS, solve

N = 150  # 5 tasks × 3 levels × 10 rows


@pytest.fixture(scope="module")
def ds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("synth") / "d", n=N, seed=3, n_test=30)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------- determinism


def test_same_seed_gives_byte_identical_files(tmp_path, ds):
    again = generate_dataset(tmp_path / "again", n=N, seed=3, n_test=30)
    a, b = _files(ds), _files(again)
    assert a.keys() == b.keys()
    assert len([k for k in a if k.endswith(".png")]) == N
    assert [k for k in a if a[k] != b[k]] == []


def test_different_seed_differs(tmp_path, ds):
    other = generate_dataset(tmp_path / "other", n=N, seed=4, n_test=30)
    assert (other / "train.jsonl").read_bytes() != (ds / "train.jsonl").read_bytes()
    same_png = sum(
        (other / "images" / p.name).read_bytes() == p.read_bytes()
        for p in (ds / "images").iterdir()
    )
    assert same_png < N // 2


def test_layout_counts_and_schema(ds):
    train, test = _rows(ds / "train.jsonl"), _rows(ds / "test.jsonl")
    assert (len(train), len(test)) == (N - 30, 30)
    keys = ["id", "image", "question", "answer", "answer_type", "choices", "task", "level"]
    keys += ["description", "scene", "boxes", "labels", "image_size", "query"]
    for r in train + test:
        assert list(r) == keys  # fixed key order
        assert (ds / r["image"]).is_file()
    assert {r["task"] for r in train} == set(TASKS)
    assert {r["level"] for r in train} == {1, 2, 3}
    assert len({r["id"] for r in train + test}) == N
    meta = json.loads((ds / "meta.json").read_text())
    assert meta["seed"] == 3 and meta["counts"]["train"] == N - 30
    assert set(meta["image_blind_baseline"]) == {*TASKS, "all"}
    assert all(0.0 <= v <= 1.0 for v in meta["image_blind_baseline_by_level"].values())


def test_level_one_scenes_have_one_to_three_objects(ds):
    for r in _rows(ds / "train.jsonl"):
        lo, hi = {1: (1, 3), 2: (3, 5), 3: (5, 8)}[r["level"]]
        assert lo <= len(r["scene"]) <= hi, r["id"]


# ----------------------------------------------------------------------------------- pixels


# Standard 7-segment table, written out independently of the generator's.
SEVEN = {
    frozenset("abcdef"): 0,
    frozenset("bc"): 1,
    frozenset("abged"): 2,
    frozenset("abgcd"): 3,
    frozenset("fgbc"): 4,
    frozenset("afgcd"): 5,
    frozenset("afgedc"): 6,
    frozenset("abc"): 7,
    frozenset("abcdefg"): 8,
    frozenset("abcdfg"): 9,
}


def _decode(img: Image.Image, geo: Geometry) -> list[dict]:
    """Read the scene back from the pixels: colour by palette vote, shape by fill ratio of the
    tight box (square ≈ 1, circle ≈ 0.78, triangle ≈ 0.52), digit by probing 7 segments."""
    a = np.asarray(img.convert("RGB")).astype(int)
    cs = geo.cell
    objs = []
    for r in range(geo.grid):
        for c in range(geo.grid):
            cell = a[r * cs : (r + 1) * cs, c * cs : (c + 1) * cs]
            ink = (cell != BACKGROUND).any(-1)
            if not ink.any():
                continue
            ys, xs = np.nonzero(ink)
            box = [
                c * cs + xs.min(),
                r * cs + ys.min(),
                c * cs + xs.max() + 1,
                r * cs + ys.max() + 1,
            ]
            votes = {k: int((cell == v).all(-1).sum()) for k, v in COLOURS.items()}
            colour = max(votes, key=votes.get)
            fill = ink.sum() / ((box[2] - box[0]) * (box[3] - box[1]))
            shape = "square" if fill > 0.9 else "circle" if fill > 0.65 else "triangle"
            digit = None
            if (cell == DIGIT_COLOUR).all(-1).any():
                x, y, w, h, t = geo.digit_box(box, shape)
                probes = {
                    "a": (x + w // 2, y),
                    "g": (x + w // 2, y + (h - t) // 2),
                    "d": (x + w // 2, y + h - 1),
                    "f": (x, y + h // 4),
                    "b": (x + w - 1, y + h // 4),
                    "e": (x, y + 3 * h // 4),
                    "c": (x + w - 1, y + 3 * h // 4),
                }
                on = frozenset(
                    s for s, (px, py) in probes.items() if (a[py, px] == DIGIT_COLOUR).all()
                )
                digit = SEVEN[on]
            objs.append(
                {
                    "shape": shape,
                    "colour": colour,
                    "digit": digit,
                    "row": r,
                    "col": c,
                    "bbox": [int(v) for v in box],
                }
            )
    return objs


def _matches(f: dict, o: dict) -> bool:
    return (
        f.get("colour", o["colour"]) == o["colour"]
        and f.get("shape", o["shape"]) == o["shape"]
        and f.get("not_colour") != o["colour"]
        and o["colour"] in f.get("any_colour", [o["colour"]])
    )


def test_answers_rederived_from_rendered_pixels(ds):
    geo = Geometry()
    rows = _rows(ds / "train.jsonl") + _rows(ds / "test.jsonl")
    checked_counts = checked_boxes = checked_digits = 0
    for r in rows:
        seen = _decode(Image.open(ds / r["image"]), geo)
        assert seen == r["scene"], r["id"]  # shape, colour, digit, cell and exact pixel box
        assert solve(r["query"], seen) == r["answer"], r["id"]
        q = r["query"]
        if q["kind"] == "count":  # independently of the generator's solver
            assert sum(_matches(q["filter"], o) for o in seen) == int(r["answer"])
            checked_counts += 1
        if q["kind"] == "locate":
            assert r["boxes"] == [o["bbox"] for o in seen if _matches(q["filter"], o)]
            checked_boxes += 1
        checked_digits += sum(o["digit"] is not None for o in seen)
    assert checked_counts >= 20 and checked_boxes >= 20 and checked_digits >= 50


def test_jitter_moves_boxes_and_pixels_agree(tmp_path):
    geo = Geometry(jitter=3)
    d = generate_dataset(tmp_path / "j", n=30, seed=0, tasks=["locate"], jitter=3, n_test=0)
    rows = _rows(d / "train.jsonl")
    off_grid = 0
    for r in rows:
        assert _decode(Image.open(d / r["image"]), geo) == r["scene"]
        off_grid += sum(o["bbox"][0] % geo.cell != geo.margin for o in r["scene"])
    assert off_grid > 0


# ----------------------------------------------------------------------------------- answers


def test_every_answer_type_is_gradeable(ds):
    for r in _rows(ds / "train.jsonl") + _rows(ds / "test.jsonl"):
        t, a = r["answer_type"], r["answer"]
        if t == "integer":
            assert str(int(a)) == a
        elif t == "text":
            assert a in COLOURS or a in SHAPES
        elif t == "choice":
            opts = r["choices"]
            assert 3 <= len(opts) <= 4 and len(set(opts)) == len(opts)
            assert a in "ABCD"[: len(opts)] or a in opts
            assert all(f"\n{'ABCD'[i]}. {o}\n" in r["question"] for i, o in enumerate(opts))
        elif t == "boxes":
            items = json.loads(a)
            assert [i["bbox_2d"] for i in items] == r["boxes"]
            assert [i["label"] for i in items] == r["labels"]
            w, h = r["image_size"]
            for x1, y1, x2, y2 in r["boxes"]:
                assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
        else:
            pytest.fail(f"unexpected answer_type {t}")
    choice_golds = {
        r["answer"] in "ABCD" for r in _rows(ds / "train.jsonl") if r["task"] == "choice"
    }
    assert choice_golds == {True, False}  # both letter and option-text (MathVista) golds occur


def test_spatial_questions_are_unambiguous(ds):
    for r in _rows(ds / "train.jsonl"):
        if r["query"]["kind"] != "relation":
            continue
        ref = r["query"]["ref"]
        assert sum(_matches(ref, o) for o in r["scene"]) == 1
        assert r["question"].startswith(f"What {r['query']['ask']} is the shape directly ")


def test_image_blind_baseline_hand_case():
    train = [
        {"question": "how many red?", "answer": "1", "task": "count", "level": 1},
        {"question": "how many red?", "answer": "1", "task": "count", "level": 1},
        {"question": "how many red?", "answer": "2", "task": "count", "level": 1},
        {"question": "colour left?", "answer": "red", "task": "spatial", "level": 2},
    ]
    test = [
        {
            "question": "how many red?",
            "answer": "1",
            "task": "count",
            "level": 1,
        },  # majority 1: hit
        {"question": "how many red?", "answer": "2", "task": "count", "level": 1},  # miss
        {
            "question": "how many blue?",
            "answer": "1",
            "task": "count",
            "level": 1,
        },  # unseen: task majority 1
        {"question": "colour right?", "answer": "blue", "task": "spatial", "level": 2},  # miss
    ]
    assert image_blind_baseline(train, test) == {"count": 0.6667, "spatial": 0.0, "all": 0.5}
    by_level = image_blind_baseline(train, test, by="task_level")
    assert by_level == {"count/l1": 0.6667, "spatial/l2": 0.0, "all": 0.5}


def test_image_blind_baseline_scores_choice_by_option_text():
    def row(answer, choices, q="How many?"):
        opts = "\n".join(f"{'ABCD'[i]}. {o}" for i, o in enumerate(choices))
        return {
            "question": f"{q}\nOptions:\n{opts}",
            "answer": answer,
            "choices": choices,
            "task": "choice",
        }

    # Train: the base question's answer is "2" (as a letter once, as text once).
    train = [
        row("B", ["1", "2", "3"]),
        row("2", ["2", "3", "4"]),
        row("A", ["red", "blue"], "Colour?"),
    ]
    test = [
        row("C", ["0", "1", "2", "3"]),  # majority "2" is option C: hit, though keyed by letter
        row(
            "3", ["3", "4", "5", "6"]
        ),  # "2" not offered: most frequent gold position (A = "3"): hit
        row("blue", ["red", "blue"], "Colour?"),  # majority "red": miss
    ]
    assert image_blind_baseline(train, test) == {"choice": 0.6667, "all": 0.6667}


# ----------------------------------------------------------------------------------- descriptions


def test_description_round_trips(ds):
    for r in _rows(ds / "train.jsonl"):
        parsed = parse_description(r["description"])
        assert parsed == [
            {k: o[k] for k in ("shape", "colour", "digit", "row", "col")} for o in r["scene"]
        ]
        assert describe(parsed) == r["description"]
        assert description_fidelity(r["description"], r["scene"])["exact"] == 1.0


def test_parse_description_rejects_garbage():
    assert parse_description("a red circle at top left; a pink blob at nowhere") is None
    assert parse_description("") is None
    assert parse_description("no shapes") == []
    assert parse_description("A Red Circle at TOP LEFT.") == [
        {"shape": "circle", "colour": "red", "digit": None, "row": 0, "col": 0}
    ]


SCENE = [
    {"shape": "circle", "colour": "red", "digit": None, "row": 0, "col": 0},
    {"shape": "square", "colour": "blue", "digit": 3, "row": 1, "col": 2},
]


@pytest.mark.parametrize(
    "pred, expected",
    [
        # exact
        ("a red circle at top left; a blue square with 3 at upper mid-right", (1.0, 1.0, 1.0, 1.0)),
        # one of two objects recoloured: tp = 1, 2 predicted, 2 true → P = R = F1 = 1/2
        (
            "a red circle at top left; a green square with 3 at upper mid-right",
            (0.0, 0.5, 0.5, 0.5),
        ),
        # one dropped: tp = 1, 1 predicted, 2 true → P = 1, R = 1/2, F1 = 2·1/(1+2) = 2/3
        ("a red circle at top left", (0.0, 1.0, 0.5, 2 / 3)),
        # wrong digit counts as a wrong object
        ("a red circle at top left; a blue square with 8 at upper mid-right", (0.0, 0.5, 0.5, 0.5)),
        # an unparseable extra item is a false positive: tp = 2, 3 predicted → P = 2/3, F1 = 4/5
        (
            "a red circle at top left; a blue square with 3 at upper mid-right; something else",
            (0.0, 2 / 3, 1.0, 0.8),
        ),
        # a whole response: its <desc> block is scored
        (
            "<desc>a blue square with 3 at upper mid-right; a red circle at top left</desc> "
            "<think>x</think> \\boxed{1}",
            (1.0, 1.0, 1.0, 1.0),
        ),
        (None, (0.0, 0.0, 0.0, 0.0)),
        # a response with no <desc> block at all
        ("<think>two things</think> \\boxed{2}", (0.0, 0.0, 0.0, 0.0)),
        ('```json\n[{"bbox_2d": [1, 2, 3, 4], "label": "circle"}]\n```', (0.0, 0.0, 0.0, 0.0)),
        ("no shapes", (0.0, 0.0, 0.0, 0.0)),
    ],
)
def test_description_fidelity_hand_cases(pred, expected):
    got = description_fidelity(pred, SCENE)
    assert got["exact"] == expected[0]
    assert got["precision"] == pytest.approx(expected[1])
    assert got["recall"] == pytest.approx(expected[2])
    assert got["f1"] == pytest.approx(expected[3])


def test_fidelity_of_empty_scenes():
    assert description_fidelity("no shapes", [])["exact"] == 1.0
    assert description_fidelity("a red circle at top left", []) == {
        "exact": 0.0,
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
    }


def test_extract_description():
    assert extract_description("<desc> a b </desc><think>") == "a b"
    assert extract_description("<desc>cut off") == "cut off"
    assert extract_description("\\boxed{2}") is None


# ----------------------------------------------------------------------------------- demos

BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
TRACE = re.compile(r"^<desc>(.*)</desc> <think>(.*)</think> \\boxed\{([^{}]*)\}$", re.S)


def _right(row: dict, boxed: str) -> bool:
    """Grade a boxed answer like the rewards will: letters map to their option text."""
    if row["answer_type"] == "choice":
        letter_of = {o: "ABCD"[i] for i, o in enumerate(row["choices"])}
        return boxed == row["answer"] or letter_of.get(row["answer"]) == boxed
    return boxed == row["answer"]


def test_demonstrations(ds):
    rows = {r["id"]: r for r in _rows(ds / "train.jsonl")}
    demos = _rows(ds / "sft.jsonl")
    ps = PromptSet()
    assert len(demos) == len(rows)
    kinds = {d["kind"] for d in demos}
    assert kinds == {"answer", "critique", "rectify"}
    for d in demos:
        row = rows[d["source"]]
        assert d["images"] == [row["image"]]
        user, assistant = d["messages"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        assert user["content"][0] == {"type": "image"}
        text = user["content"][1]["text"]
        reply = assistant["content"]
        if d["kind"] == "answer":
            if row["answer_type"] == "boxes":
                assert text == row["question"]  # Vision-R1: the question carries the instruction
                fenced = re.fullmatch(r"```json\n(.*)\n```", reply, re.S)
                assert fenced and json.loads(fenced.group(1)) == json.loads(row["answer"])
                continue
            assert text == ps.answer.format(question=row["question"])
            m = TRACE.match(reply)
            assert m, reply
            assert m.group(1) == row["description"]
            assert _right(row, m.group(3))
            continue
        assert row["answer_type"] != "boxes"
        # The corrupted trace inside the prompt: well-formed, its description wrong, its answer
        # consistent with that description but wrong about the image.
        bad = re.search(
            r"A previous answer was:\n(.*?)\n(?:This answer is wrong|Critique:)", text, re.S
        )
        assert bad, text
        m = TRACE.match(bad.group(1))
        assert m, bad.group(1)
        bad_scene = parse_description(m.group(1))
        assert bad_scene is not None and m.group(1) != row["description"]
        assert solve(row["query"], bad_scene) is not None
        assert not _right(row, m.group(3))
        if d["kind"] == "critique":
            assert text == ps.critique.format(question=row["question"], response=bad.group(1))
            assert reply.startswith("The description ") and "the image shows" in reply
            wrong = m.group(3)
            assert reply.endswith(f"not {wrong}.")
            right = re.search(r"So the answer is (\S+), not", reply).group(1)
            assert _right(row, right)
        else:
            crit = re.search(r"\nCritique: (.*?)\n", text).group(1)
            assert text == ps.rectify.format(
                question=row["question"], response=bad.group(1), critique=crit
            )
            fixed = TRACE.match(reply)
            assert fixed and fixed.group(1) == row["description"] and _right(row, fixed.group(3))


def test_sft_mix_is_configurable(tmp_path):
    d = generate_dataset(tmp_path / "a", n=40, seed=0, sft_mix=(1, 0, 0), tasks="count,arith")
    assert {r["kind"] for r in _rows(d / "sft.jsonl")} == {"answer"}
    d = generate_dataset(tmp_path / "b", n=40, seed=0, sft_mix=(0, 0, 1), tasks="count,arith")
    assert {r["kind"] for r in _rows(d / "sft.jsonl")} == {"rectify"}


# ----------------------------------------------------------------------------------- API / CLI


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown tasks"):
        generate_dataset(tmp_path / "x", n=5, tasks=["colouring"])
    with pytest.raises(ValueError, match="levels"):
        generate_dataset(tmp_path / "x", n=5, levels=[7])
    with pytest.raises(ValueError, match="multiple of grid"):
        generate_dataset(tmp_path / "x", n=5, image_size=100, grid=3)
    d = generate_dataset(tmp_path / "y", n=5)
    with pytest.raises(FileExistsError, match="overwrite"):
        generate_dataset(d, n=5)
    generate_dataset(d, n=3, n_test=1, overwrite=True)
    assert len(list((d / "images").iterdir())) == 3  # stale images from the larger run are gone


def test_cli_flags_map_to_the_function(tmp_path, capsys):
    parser = add_synth_arguments(argparse.ArgumentParser())
    args = parser.parse_args(
        [
            "--out",
            str(tmp_path / "c"),
            "--n",
            "12",
            "--seed",
            "5",
            "--tasks",
            "count,locate",
            "--levels",
            "1",
        ]
    )
    out = run_synth(args)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["params"]["tasks"] == ["count", "locate"] and meta["params"]["levels"] == [1]
    assert meta["counts"]["train"] + meta["counts"]["test"] == 12
    assert "image-blind baseline" in capsys.readouterr().out


def test_other_grid_sizes(tmp_path):
    d = generate_dataset(tmp_path / "g", n=20, seed=1, image_size=96, grid=3, tasks="count,spatial")
    geo = Geometry(96, 3)
    for r in _rows(d / "train.jsonl"):
        assert Image.open(d / r["image"]).size == (96, 96)
        assert _decode(Image.open(d / r["image"]), geo) == r["scene"]
        assert parse_description(r["description"], grid=3) is not None
