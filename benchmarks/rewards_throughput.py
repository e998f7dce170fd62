"""Reward throughput: accuracy-reward calls/s on a realistic answer mix, localization scores/s.

Why measure: rewards run on the training step's critical path (G = 8 samples × the prompt batch,
plus IVR's re-graded rectifications), so a slow grader shows up directly in steps per minute.

The mix imitates a MathVista/MathVerse-style batch: 40% multiple choice, 20% integer, 15% float,
20% LaTeX expression (math-verify), 5% free text, about half right; every completion has a
~600-character ``<desc>``/``<think>`` prefix and a distinct answer string (so math-verify's
parse cache does not flatter the figure). Localization: 10 predicted boxes against 10 GT boxes,
as a JSON list in a ```json fence, rescaled from the model's input size.

Usage::

    python benchmarks/rewards_throughput.py [--n 2000] [--seconds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from collections.abc import Callable
from typing import Any

from ivr.rewards import accuracy_reward, format_reward, localization_reward
from ivr.rewards.grader_worker import shared_worker

PREFIX = (
    "<desc>The image shows a right triangle ABC with the right angle at C; side AC is labelled "
    "6 cm and side BC is labelled 8 cm. A circle is inscribed in the triangle and touches all "
    "three sides. Below the figure there is a small table with two columns of numbers.</desc>\n"
    "<think>By Pythagoras the hypotenuse is sqrt(6^2 + 8^2) = 10. The inradius of a right "
    "triangle is (a + b - c) / 2 = (6 + 8 - 10) / 2 = 2. The question asks for the quantity in "
    "the box below, so I compute it carefully, checking units and the options given. After "
    "checking the table again the values agree with the figure, so the answer follows.</think>\n"
)


def _row(rng: random.Random, i: int) -> tuple[str, dict[str, Any]]:
    """One (completion, columns) pair: question ``i`` (its type and gold depend on ``i`` only,
    and differ for every ``i``), answered right or wrong in a form drawn from ``rng``."""
    q = random.Random(i)
    kind = q.choices(["choice", "integer", "float", "expression", "text"], [40, 20, 15, 20, 5])[0]
    right = rng.random() < 0.5
    if kind == "choice":
        opts = [f"{i + k * 7}" for k in range(4)]
        gold = opts[q.randrange(4)]
        guess = gold if right else opts[(opts.index(gold) + 1 + rng.randrange(3)) % 4]
        pred = rng.choice([f"({'ABCD'[opts.index(guess)]})", "ABCD"[opts.index(guess)], guess])
        cols = {"answer": gold, "choices": opts, "answer_type": None, "precision": None}
    elif kind == "integer":
        gold = str(i + 10)
        pred = rng.choice([gold, f"{gold} cm", f"x = {gold}"]) if right else str(i + 11)
        cols = {"answer": gold, "choices": None, "answer_type": "integer", "precision": None}
    elif kind == "float":
        gold = f"{i / 7:.2f}"
        pred = f"{i / 7:.4f}" if right else f"{i / 7 + 0.05:.3f}"
        cols = {"answer": gold, "choices": None, "answer_type": "float", "precision": 2}
    elif kind == "expression":
        a, b = i + 2, i + 3
        form = q.randrange(4)
        gold = [rf"\frac{{{a}}}{{{b}}}", rf"{a}\sqrt{{2}}", rf"\{{{a}, {b}\}}", f"[{a}, {b})"][form]
        if not right:
            pred = gold.replace(str(a), str(a + 1), 1)
        else:
            pred = [
                rf"\frac{{{2 * a}}}{{{2 * b}}}",
                rf"\sqrt{{{2 * a * a}}}",
                rf"\{{{b}, {a}\}}",
                f"[{a},{b})",
            ][form]
        cols = {"answer": gold, "choices": None, "answer_type": "expression", "precision": None}
    else:
        gold = q.choice(["blue", "the left one", "yes", "no"]) + f" {i}"
        pred = gold.upper() + "." if right else "red"
        cols = {"answer": gold, "choices": None, "answer_type": "text", "precision": None}
    return PREFIX + "\\boxed{" + pred + "}", cols


def _batch(n: int, seed: int) -> tuple[list[str], dict[str, list[Any]]]:
    rng = random.Random(seed)
    rows = [_row(rng, seed * 1_000_000 + i) for i in range(n)]
    keys = ("answer", "choices", "answer_type", "precision")
    return [c for c, _ in rows], {k: [r[k] for _, r in rows] for k in keys}


def _group_batch(
    n_prompts: int, seed: int, group: int = 8
) -> tuple[list[str], dict[str, list[Any]]]:
    """GRPO-shaped batch: ``group`` samples per prompt, drawn from 3 distinct answers per prompt.

    Training grades groups that share the gold and repeat answers, so parses are reused.
    """
    rng = random.Random(seed)
    comps: list[str] = []
    cols: dict[str, list[Any]] = {k: [] for k in ("answer", "choices", "answer_type", "precision")}
    for p in range(n_prompts):
        variants = [
            _row(random.Random(seed * 7919 + p * 31 + v), seed * 1_000_000 + p) for v in range(3)
        ]
        for _ in range(group):
            completion, row = variants[rng.randrange(3)]
            comps.append(completion)
            for k in cols:
                cols[k].append(row[k])
    return comps, cols


def _loc_batch(n: int, seed: int) -> tuple[list[str], dict[str, list[Any]]]:
    """10-box completions at the model's 448x448 input, GT in a 1000x800 image."""
    rng = random.Random(seed)
    comps, gts = [], []
    for _ in range(n):
        gt, pred = [], []
        for _ in range(10):
            x, y, w, h = (
                rng.uniform(0, 800),
                rng.uniform(0, 600),
                rng.uniform(20, 190),
                rng.uniform(20, 190),
            )
            gt.append([x, y, x + w, y + h])
            j = [rng.gauss(0, 8) for _ in range(4)]
            sx, sy = 448 / 1000, 448 / 800
            b = [(x + j[0]) * sx, (y + j[1]) * sy, (x + w + j[2]) * sx, (y + h + j[3]) * sy]
            b = [round(min(max(v, 0.0), 448.0)) for v in b]
            pred.append({"bbox_2d": b, "label": "object"})
        comps.append("```json\n" + json.dumps(pred) + "\n```")
        gts.append(gt)
    return comps, {"boxes": gts, "image_size": [(1000, 800)] * n, "input_size": [(448, 448)] * n}


def _rate(fn: Callable[[], list[Any]], n: int, seconds: float) -> float:
    """Completions per second over at least ``seconds`` of repeated calls on fresh data."""
    t0, done = time.perf_counter(), 0
    while True:
        fn()
        done += n
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return done / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="completions per accuracy batch")
    ap.add_argument("--seconds", type=float, default=3.0, help="minimum timing per figure")
    args = ap.parse_args()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs, load {load}"
    )

    # Warm up imports, sympy caches and the grader worker on data not used below.
    warm_c, warm_cols = _batch(200, seed=0)
    accuracy_reward(warm_c, **warm_cols)
    shared_worker().warm_up()

    comps, cols = _batch(args.n, seed=1)
    t0 = time.perf_counter()
    scores = accuracy_reward(comps, **cols)
    cold = args.n / (time.perf_counter() - t0)
    mean_acc = sum(s for s in scores if s is not None) / len(scores)
    print(
        f"accuracy_reward, realistic mix, first pass (fresh strings): {cold:,.0f} completions/s (mean acc {mean_acc:.2f})"
    )
    warm = _rate(lambda: accuracy_reward(comps, **cols), args.n, args.seconds)
    print(f"accuracy_reward, same strings again (parse cache warm):   {warm:,.0f} completions/s")

    comps2, cols2 = _batch(args.n, seed=2)
    g_comps, g_cols = _group_batch(args.n // 8, seed=4)
    t0 = time.perf_counter()
    accuracy_reward(g_comps, **g_cols)
    grp = len(g_comps) / (time.perf_counter() - t0)
    print(
        f"accuracy_reward, GRPO groups of 8 (shared gold, 3 answers per group): {grp:,.0f} completions/s"
    )

    by_type: dict[str, list[int]] = {}
    for i, kind in enumerate(cols2["answer_type"]):
        by_type.setdefault(kind or "choice", []).append(i)
    for kind, idx in sorted(by_type.items()):
        sub_c = [comps2[i] for i in idx]
        sub_cols = {k: [v[i] for i in idx] for k, v in cols2.items()}
        t0 = time.perf_counter()
        accuracy_reward(sub_c, **sub_cols)
        print(
            f"  {kind:<10} fresh: {len(idx) / (time.perf_counter() - t0):>10,.0f} completions/s  (n={len(idx)})"
        )

    fmt = _rate(lambda: format_reward(comps), args.n, args.seconds)
    print(f"format_reward: {fmt:,.0f} completions/s")

    loc_c, loc_cols = _loc_batch(500, seed=3)
    loc = _rate(lambda: localization_reward(loc_c, **loc_cols), len(loc_c), args.seconds)
    mean_loc = sum(localization_reward(loc_c, **loc_cols)) / len(loc_c)
    print(
        f"localization_reward, 10 boxes vs 10 GT: {loc:,.0f} completions/s (mean total {mean_loc:.2f} / 3)"
    )

    for label, pred in [
        ("power tower 2^2^2^2^2^2^2", "2^{2^{2^{2^{2^{2^{2}}}}}}"),
        ("sympy hang \\gcd(10^{10^{10}}, 6), bound 1 s", "\\gcd(10^{10^{10}}, 6)"),
    ]:
        shared_worker().warm_up()
        t0 = time.perf_counter()
        accuracy_reward(["\\boxed{" + pred + "}"], answer=["2"], answer_type=["expression"])
        print(f"one call, {label}: {time.perf_counter() - t0:.3f} s")


if __name__ == "__main__":
    main()
