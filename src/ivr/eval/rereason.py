"""Test-time re-reasoning (IVR-R1 paper, Fig. 5) on a finished evaluation run.

Every wrong initial answer (an oracle screen: the gold is known) goes through the same
critique → rectify loop as training (``rl/rectify.py``), for up to N rounds; accuracy is
reported after the initial answer and after each round, with the image or with a description of
the scene in the rectification context.

One function runs the loop (``rereason_responses``); two read the initial answers for it:

    rereason_benchmark   ``ivr eval --rereason``: a benchmark's saved predictions, greedy loop
    rereason_heldout     ``ivr demo``: a synthetic world's held-out eval JSON (eval/protocol.py),
                         at T = 1, with the resample control as a third mode
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..config import IVRConfig
from ..data.prompts import PromptSet
from ..rewards.scorer import Scorer
from ..rl.rectify import GenerateFn, rereason_eval
from ..types import Prompt, Sample
from .loaders import Benchmark
from .runner import PREDICTIONS, read_predictions

__all__ = ["rereason_benchmark", "rereason_heldout", "rereason_markdown", "rereason_responses"]


def rereason_responses(
    generate: GenerateFn,
    samples: Sequence[Sample],
    images: Sequence[tuple[Any, ...]],
    responses: Sequence[str],
    *,
    rounds: int = 3,
    context: str = "image",
    strategy: str = "rectify",
    max_new_tokens: int,
    critique_max_new_tokens: int,
    temperature: float = 0.0,
    original_prompts: Sequence[Prompt] | None = None,
    prompts: PromptSet | None = None,
) -> dict[str, Any]:
    """Accuracy by round of the loop run on ``responses`` (the initial answers to ``samples``),
    graded by the default ``Scorer``. ``strategy="resample"`` is the control (fresh answers to
    ``original_prompts`` at ``temperature`` > 0); see ``rl.rectify.rereason_eval``."""
    cfg = replace(
        IVRConfig(),
        rounds=rounds,
        context=context,
        strategy=strategy,
        critique_max_new_tokens=critique_max_new_tokens,
    )
    return rereason_eval(
        generate,
        samples,
        images,
        responses,
        Scorer(),
        cfg,
        prompts or PromptSet(),
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        original_prompts=original_prompts,
    )


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
    """Accuracy by round for ``bench``, from the predictions already in ``out_dir/<bench>/``
    (greedy: every generation at temperature 0)."""
    bdir = Path(out_dir) / bench.name
    preds = read_predictions(bdir / PREDICTIONS)
    items = [it for it in bench.items if it.id in preds and not it.is_localization]
    if not items:
        raise ValueError(f"{bdir / PREDICTIONS}: no graded text predictions to re-reason from")
    samples = [it.to_sample() for it in items]
    images = [tuple(it.load_images()) for it in items]
    reuse = getattr(policy, "reuse_prompt_kv", None)  # a Policy: the loop's calls extend each
    if reuse is not None:  # other's prompts (models/prompt_cache.py)
        policy.reuse_prompt_kv = True
    try:
        res = rereason_responses(
            policy.generate,
            samples,
            images,
            [preds[it.id]["response"] for it in items],
            rounds=rounds,
            context=context,
            max_new_tokens=max_new_tokens,
            critique_max_new_tokens=max_new_tokens,
            prompts=prompts,
        )
    finally:
        if reuse is not None:
            policy.release_sampling_caches()
            policy.reuse_prompt_kv = reuse
    (bdir / f"rereason_{context}.json").write_text(json.dumps(res, indent=1))
    return res


def rereason_heldout(
    model_dir: str | Path,
    data_dir: str | Path,
    eval_json: str | Path,
    out_json: str | Path,
    *,
    limit: int,
    mode: str,
    max_new_tokens: int,
    rounds: int = 3,
    critique_max_new_tokens: int = 64,
    seed: int = 0,
) -> dict[str, Any]:
    """The loop at T = 1 on the first ``limit`` greedy answers of a held-out eval
    (``eval_json``, written by ``evaluate_heldout`` for ``data_dir``'s test split). ``mode``:
    ``image`` or ``description`` (critique + rectify with that context) or ``resample`` (the same
    two generations per round spent on fresh answers to the original prompt). The full result,
    traces included, goes to ``out_json``; the accuracy curve and generations are returned.

    Sampling is seeded (``seed``, the torch RNG of this process, set before the first draw), so
    a rerun gives the same traces whatever ran in the process before."""
    import torch

    from ..data.dataset import load_samples
    from ..data.images import load_image
    from ..models.policy import Policy
    from .protocol import read_jsonl, row_prompts

    data = Path(data_dir)
    ev = json.loads(Path(eval_json).read_text())
    ids, responses = ev["ids"][:limit], ev["responses"][:limit]
    by_id = {s.id: s for s in load_samples(data, split="test", limit=limit)}
    rows = {r["id"]: r for r in read_jsonl(data / "test.jsonl")[:limit]}
    samples = [by_id[i] for i in ids]
    images = [tuple(load_image(p) for p in s.images) for s in samples]
    strategy, context = ("resample", "image") if mode == "resample" else ("rectify", mode)
    policy = Policy.from_pretrained(model_dir)
    policy.model.eval()
    policy.reuse_prompt_kv = True  # the loop's calls extend each other (models/prompt_cache.py)
    torch.manual_seed(seed)
    res = rereason_responses(
        policy.generate,
        samples,
        images,
        responses,
        rounds=rounds,
        context=context,
        strategy=strategy,
        max_new_tokens=max_new_tokens,
        critique_max_new_tokens=critique_max_new_tokens,
        temperature=1.0,
        original_prompts=row_prompts([rows[i] for i in ids], data),
    )
    res["mode"] = mode
    Path(out_json).write_text(json.dumps(res))
    return {"accuracy_by_round": res["accuracy_by_round"], "generations": res["generations"]}


def rereason_markdown(curves: dict[str, dict[str, list[float]]]) -> str:
    """``{bench: {context: accuracy_by_round}}`` as a table (rows: benchmark × context)."""
    n = max(len(c) for per in curves.values() for c in per.values())
    head = ["benchmark", "context", "initial", *[f"round {t}" for t in range(1, n)]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for bench, per in curves.items():
        for ctx, curve in per.items():
            lines.append("| " + " | ".join([bench, ctx, *[f"{100 * a:.1f}" for a in curve]]) + " |")
    return "\n".join(lines)
