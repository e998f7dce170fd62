"""Test-time re-reasoning (IVR-R1 paper, Fig. 5) on a finished evaluation run.

Every wrong initial answer (an oracle screen: the gold is known) goes through the same
critique → rectify loop as training (``rl/rectify.py``), greedily, for up to N rounds; accuracy is
reported after the initial answer and after each round, with the image or with a description of
the scene in the rectification context.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..config import IVRConfig
from ..data.prompts import PromptSet
from ..rewards.scorer import Scorer
from ..rl.rectify import rereason_eval
from .loaders import Benchmark
from .runner import PREDICTIONS, read_predictions


def rereason_benchmark(
    policy: Any,
    bench: Benchmark,
    out_dir: str | Path,
    *,
    rounds: int = 3,
    context: str = "image",
    max_new_tokens: int = 1024,
    prompts: PromptSet | None = None,
) -> dict[str, Any]:
    """Accuracy by round for ``bench``, from the predictions already in ``out_dir/<bench>/``."""
    bdir = Path(out_dir) / bench.name
    preds = read_predictions(bdir / PREDICTIONS)
    items = [it for it in bench.items if it.id in preds and not it.is_localization]
    if not items:
        raise ValueError(f"{bdir / PREDICTIONS}: no graded text predictions to re-reason from")
    samples = [it.to_sample() for it in items]
    images = [tuple(it.load_images()) for it in items]
    cfg = replace(
        IVRConfig(), rounds=rounds, context=context, critique_max_new_tokens=max_new_tokens
    )
    res = rereason_eval(
        policy.generate,
        samples,
        images,
        [preds[it.id]["response"] for it in items],
        Scorer(),
        cfg,
        prompts or PromptSet(),
        max_new_tokens=max_new_tokens,
    )
    (bdir / f"rereason_{context}.json").write_text(json.dumps(res, indent=1))
    return res


def rereason_markdown(curves: dict[str, dict[str, list[float]]]) -> str:
    """``{bench: {context: accuracy_by_round}}`` as a table (rows: benchmark × context)."""
    n = max(len(c) for per in curves.values() for c in per.values())
    head = ["benchmark", "context", "initial", *[f"round {t}" for t in range(1, n)]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for bench, per in curves.items():
        for ctx, curve in per.items():
            lines.append("| " + " | ".join([bench, ctx, *[f"{100 * a:.1f}" for a in curve]]) + " |")
    return "\n".join(lines)
