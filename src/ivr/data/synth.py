"""A procedural visual-reasoning world with exact ground truth, and its cold-start demonstrations.

Why it exists: no weights or benchmarks can be downloaded here, yet SFT → GRPO → IVR-R1 must be
compared on a model that *learns*. DESIGN.md §3 measured what a tiny VLM trained from scratch picks
up on a CPU: 112 px images made of a 4×4 grid of 28 px cells (Qwen2.5-VL: patch 14 × merge 2 = one
visual token per cell), 1–3 coloured shapes, counting questions. That is level 1 here; higher levels
add objects and two-step reasoning for GRPO and IVR-R1 to climb.

The world:

    scene     1–8 objects in distinct cells; object = shape (circle | square | triangle) × colour
              (red | green | blue | yellow | purple), optionally a 7-segment digit drawn inside
    tasks     count    "How many red triangles are there?"                    integer
              arith    "What is the sum of the digits inside the blue shapes?" integer
              spatial  "What colour is the shape directly left of the circle?" text
              choice   a count/arith/spatial question with 3–4 options         choice
              locate   "Locate every circle ..." → Qwen2.5-VL JSON boxes      boxes
    levels    1: 1–3 objects, one step · 2: 3–5 objects, conjunctions · 3: 5–8 objects, two steps
              (negation, disjunction, difference of sums, chained relations)

Every row carries the exact scene and its description in the wording of the demonstrations'
``<desc>`` block ("a red circle at top left; a blue square with 3 at upper mid-right"), so the
trainer can measure how far a policy's own description drifts from the image — the paper's "visual
grounding erosion" (``description_fidelity``) — and the §5.2 ablation can replace the image by it.

Answers are *constructed*, not sampled-then-asked: the target count, sum or relation is chosen first
and the scene is built around it, so answers are spread out and a model that ignores the image is
held near the image-blind baseline (majority answer per question string), which ``meta.json``
records per task and level.

Demonstrations (``sft.jsonl``) teach the three skills the IVR-R1 loop asks of the policy:

    answer    image + PromptSet.answer    → "<desc>…</desc> <think>…</think> \\boxed{…}"
    critique  image + PromptSet.critique  with a corrupted trace (an object dropped, recoloured,
              reshaped, re-digited or invented in <desc>, then reasoned *consistently* to a wrong
              answer) → "The description says …, but the image shows …. So the answer is X, not Y."
    rectify   image + PromptSet.rectify   with the corrupted trace and its critique → the correct
              full trace

Locate rows use the bare question (it carries its own output instruction, Vision-R1 style) and are
answered with a ```json fenced list; they only get ``answer`` demonstrations.

Everything is a pure function of ``seed`` and the parameters: row ``i`` uses its own RNG seeded from
``(seed, i)``, PNGs are written by PIL with fixed settings and no metadata, JSON keys are in a fixed
order and ``meta.json`` holds no timestamp, so the same call writes byte-identical files.

Where each piece lives:

    render.py   the vocabulary, ``Geometry``, ``Obj``; pixels (``render_scene``) and words
                (``describe``, ``parse_description``, ``description_fidelity``)
    world.py    queries (``Filter``, ``solve``, ``boxed_answer``), scenes built around an
                answer, one row (``make_row``)
    demos.py    demonstrations (``trace``, ``make_demo``: answer, critique, rectify)
    synth.py    this file: the image-blind baseline, ``generate_dataset`` (splits, ``sft.jsonl``,
                ``meta.json``) and the ``ivr synth`` flags
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .demos import make_demo
from .prompts import PromptSet
from .render import COLOURS, SHAPES, Geometry, _norm, position_name
from .world import LETTERS, LEVEL_OBJECTS, TASKS, make_row

__all__ = ["add_synth_arguments", "generate_dataset", "image_blind_baseline", "run_synth"]

PNG_SETTINGS = {"format": "PNG", "compress_level": 1, "optimize": False}


# ----------------------------------------------------------------------------------- baseline


def _blind_key(row: dict[str, Any]) -> tuple[str, str]:
    """(question without its options block, answer as option text for multiple choice)."""
    q, a = str(row["question"]), _norm(str(row["answer"]))
    opts = row.get("choices")
    if not opts:
        return q, a
    opts = [_norm(str(o)) for o in opts]
    if a.upper() in LETTERS[: len(opts)] and len(a) == 1:
        a = opts[LETTERS.index(a.upper())]
    return q.split("\nOptions:")[0], a


def image_blind_baseline(
    train_rows: Iterable[dict[str, Any]], test_rows: Iterable[dict[str, Any]], *, by: str = "task"
) -> dict[str, float]:
    """Accuracy on ``test_rows`` of answering without the image: the majority train answer for
    the same task and question string, falling back to the majority answer of the task (then of
    all rows) for unseen questions. Multiple choice is scored on option *text* (letter or text
    gold alike): the question is keyed without its "Options:" block, and a majority answer that
    is not among the row's options falls back to the option at the most frequent gold letter, so
    the figure is at least as good as a blind letter guess. ``by="task"`` keys results by task,
    ``by="task_level"`` by ``"task/l{level}"``; ``"all"`` is the overall figure. Exact string
    match otherwise, so box rows only score when both lists are equal (in practice: empty).

    >>> train = [{"question": "q", "answer": "2", "task": "count", "level": 1}] * 2
    >>> image_blind_baseline(train, [{"question": "q", "answer": "2", "task": "count", "level": 1},
    ...                             {"question": "q", "answer": "1", "task": "count", "level": 1}])
    {'count': 0.5, 'all': 0.5}
    """
    if by not in ("task", "task_level"):
        raise ValueError(f"by must be 'task' or 'task_level', got {by!r}")
    per_q: dict[tuple[str, str], Counter] = defaultdict(Counter)  # (task, question) → answers
    per_task: dict[str, Counter] = defaultdict(Counter)
    overall: Counter = Counter()
    letters: Counter = Counter()  # gold option positions of multiple-choice rows
    for r in train_rows:
        q, a = _blind_key(r)
        per_q[r.get("task", "default"), q][a] += 1
        per_task[r.get("task", "default")][a] += 1
        overall[a] += 1
        if r.get("choices"):
            opts = [_norm(str(o)) for o in r["choices"]]
            if a in opts:
                letters[opts.index(a)] += 1

    def majority(c: Counter) -> Any:
        # Most common; ties broken by the smallest key so the figure is deterministic.
        return min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] if c else None

    hits: dict[str, list[int]] = defaultdict(list)
    for r in test_rows:
        task = r.get("task", "default")
        q, gold = _blind_key(r)
        guess = majority(per_q.get((task, q), Counter()))
        guess = guess if guess is not None else majority(per_task.get(task, Counter()))
        guess = guess if guess is not None else majority(overall)
        if r.get("choices"):
            opts = [_norm(str(o)) for o in r["choices"]]
            if guess not in opts:
                pos = majority(letters) or 0
                guess = opts[pos] if pos < len(opts) else opts[0]
        ok = int(guess == gold)
        key = task if by == "task" else f"{task}/l{r.get('level', 0)}"
        hits[key].append(ok)
        hits["all"].append(ok)
    keys = sorted(k for k in hits if k != "all") + ["all"]
    return {k: round(sum(hits[k]) / len(hits[k]), 4) for k in keys}


# ----------------------------------------------------------------------------------- the dataset


def _as_list(value: Any, cast: type) -> list | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [v for v in value.replace(",", " ").split() if v]
    return [cast(v) for v in value]


def generate_dataset(
    out_dir: str | Path,
    *,
    n: int = 20000,
    seed: int = 0,
    tasks: Sequence[str] | str | None = None,
    levels: Sequence[int] | str | None = None,
    test_fraction: float = 0.1,
    n_test: int | None = None,
    image_size: int = 112,
    grid: int = 4,
    jitter: int = 0,
    sft_mix: Sequence[float] = (0.7, 0.15, 0.15),
    parquet: bool = False,
    prompts: PromptSet | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a dataset directory and return its path.

    Layout: ``train.jsonl``, ``test.jsonl`` (rows, schema in docs/synth.md), ``sft.jsonl`` (one
    demonstration per train row, kinds drawn with probabilities ``sft_mix`` = (answer, critique,
    rectify)), ``images/NNNNNN.png``, ``meta.json`` (parameters, counts, image-blind baselines),
    and with ``parquet=True`` also ``train.parquet``/``test.parquet``.

    ``n`` rows in all; the (task, level) combinations of ``tasks`` × ``levels`` (default: all
    five tasks, levels 1–3) are spread evenly over them. ``n_test`` (default
    ``round(n * test_fraction)``) rows go to the test split. ``out_dir`` must be empty or absent
    unless ``overwrite`` (which replaces the files this function writes).
    """
    tasks = _as_list(tasks, str) or list(TASKS)
    levels = _as_list(levels, int) or sorted(LEVEL_OBJECTS)
    unknown = [t for t in tasks if t not in TASKS] + [
        lv for lv in levels if lv not in LEVEL_OBJECTS
    ]
    if unknown:
        raise ValueError(
            f"unknown tasks/levels {unknown}; tasks: {list(TASKS)}, levels: {sorted(LEVEL_OBJECTS)}"
        )
    if n < 1:
        raise ValueError(f"n must be ≥ 1, got {n}")
    n_test = round(n * test_fraction) if n_test is None else n_test
    if not 0 <= n_test <= n:
        raise ValueError(f"n_test must be in [0, n={n}], got {n_test}")
    mix = [float(x) for x in sft_mix]
    if len(mix) != 3 or min(mix) < 0 or sum(mix) <= 0:
        raise ValueError(
            f"sft_mix must be three non-negative weights (answer, critique, rectify), got {sft_mix}"
        )
    geo = Geometry(image_size, grid, jitter)
    ps = prompts or PromptSet()

    out = Path(out_dir)
    ours = [
        "train.jsonl",
        "test.jsonl",
        "sft.jsonl",
        "meta.json",
        "train.parquet",
        "test.parquet",
        "images",
    ]
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"{out} is not empty; pass overwrite=True (--overwrite) to replace it"
            )
        for name in ours:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    (out / "images").mkdir(parents=True, exist_ok=True)

    combos = [(t, lv) for t in tasks for lv in levels]
    specs = [combos[i % len(combos)] for i in range(n)]
    random.Random(f"ivr-synth/{seed}/order").shuffle(specs)

    train_rows: list[dict[str, Any]] = []
    test_rows: list[dict[str, Any]] = []
    sft_kinds: Counter = Counter()
    with (
        open(out / "train.jsonl", "w", encoding="utf-8") as f_train,
        open(out / "test.jsonl", "w", encoding="utf-8") as f_test,
        open(out / "sft.jsonl", "w", encoding="utf-8") as f_sft,
    ):
        for i, (task, level) in enumerate(specs):
            row, img = make_row(i, task, level, seed=seed, geometry=geo)
            img.save(out / row["image"], **PNG_SETTINGS)
            line = json.dumps(row, ensure_ascii=False) + "\n"
            if i < n_test:
                test_rows.append(row)
                f_test.write(line)
                continue
            train_rows.append(row)
            f_train.write(line)
            rng = random.Random(f"ivr-synth/{seed}/{i}/demo")
            kind = rng.choices(("answer", "critique", "rectify"), weights=mix)[0]
            demo = make_demo(row, kind=kind, rng=rng, prompts=ps, grid=grid)
            sft_kinds[demo["kind"]] += 1
            f_sft.write(json.dumps(demo, ensure_ascii=False) + "\n")

    if parquet:
        _write_parquet(out / "train.parquet", train_rows)
        _write_parquet(out / "test.parquet", test_rows)

    counts: dict[str, Any] = {
        "train": len(train_rows),
        "test": len(test_rows),
        "sft": dict(sorted(sft_kinds.items())),
    }
    per: Counter = Counter(f"{r['task']}/l{r['level']}" for r in train_rows)
    counts["train_by_task_level"] = dict(sorted(per.items()))
    meta = {
        "generator": "ivr.data.synth",
        "format_version": 1,
        "seed": seed,
        "params": {
            "n": n,
            "n_test": n_test,
            "tasks": tasks,
            "levels": levels,
            "image_size": image_size,
            "grid": grid,
            "jitter": jitter,
            "sft_mix": mix,
            "level_objects": {str(k): list(v) for k, v in LEVEL_OBJECTS.items()},
        },
        "counts": counts,
        "image_blind_baseline": image_blind_baseline(train_rows, test_rows) if test_rows else {},
        "image_blind_baseline_by_level": (
            image_blind_baseline(train_rows, test_rows, by="task_level") if test_rows else {}
        ),
        "colours": {k: list(v) for k, v in COLOURS.items()},
        "shapes": list(SHAPES),
        "positions": [position_name(r, c, grid) for r in range(grid) for c in range(grid)],
    }
    (out / "meta.json").write_text(
        json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return out


def _write_parquet(path: Path, rows: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # The query is a nested union of shapes (kinds differ): keep it as a JSON string in parquet.
    flat = [{**r, "query": json.dumps(r["query"])} for r in rows]
    table = pa.Table.from_pylist(flat)
    pq.write_table(table, path, compression="zstd")


# ----------------------------------------------------------------------------------- CLI


def add_synth_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of ``ivr synth`` (one per keyword of ``generate_dataset``)."""
    parser.add_argument("--out", required=True, help="output dataset directory")
    parser.add_argument("--n", type=int, default=20000, help="rows in all (train + test)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--tasks", default=None, help=f"comma list of {','.join(TASKS)} (default: all)"
    )
    parser.add_argument("--levels", default=None, help="comma list of levels 1,2,3 (default: all)")
    parser.add_argument("--test-fraction", type=float, default=0.1)
    parser.add_argument(
        "--n-test", type=int, default=None, help="test rows (overrides --test-fraction)"
    )
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--grid", type=int, default=4)
    parser.add_argument(
        "--jitter", type=int, default=0, help="max shift of a shape in its cell, px"
    )
    parser.add_argument(
        "--sft-mix", default="0.7,0.15,0.15", help="answer,critique,rectify weights of the demos"
    )
    parser.add_argument("--parquet", action="store_true", help="also write train/test .parquet")
    parser.add_argument("--prompts", default=None, help="YAML overriding data/prompts.py")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    return parser


def run_synth(args: argparse.Namespace) -> Path:
    """Run ``generate_dataset`` from parsed ``add_synth_arguments`` flags; prints a summary."""
    out = generate_dataset(
        args.out,
        n=args.n,
        seed=args.seed,
        tasks=args.tasks,
        levels=args.levels,
        test_fraction=args.test_fraction,
        n_test=args.n_test,
        image_size=args.image_size,
        grid=args.grid,
        jitter=args.jitter,
        sft_mix=[float(x) for x in str(args.sft_mix).split(",")],
        parquet=args.parquet,
        prompts=PromptSet.load(args.prompts),
        overwrite=args.overwrite,
    )
    meta = json.loads((out / "meta.json").read_text())
    c = meta["counts"]
    print(f"wrote {out}: {c['train']} train, {c['test']} test, sft {c['sft']}")
    if meta["image_blind_baseline"]:
        print(f"image-blind baseline (test accuracy): {meta['image_blind_baseline']}")
    return out


if __name__ == "__main__":  # python -m ivr.data.synth --out DIR
    run_synth(add_synth_arguments(argparse.ArgumentParser(prog="ivr synth")).parse_args())
