"""Evaluate a policy on benchmarks: batched greedy generation, shared grading, resumable output.

For each benchmark, top to bottom:

    load      items from the local copy (ivr.eval.loaders); rows that cannot be used are
              reported in ``skipped.jsonl``, never graded
    resume    ``<out>/<bench>/predictions.jsonl`` is read back; ids already there are not redone
    generate  batches of ``batch_size`` items, in file order, greedy by default (the paper's
              setting), with the same prompt the trainer uses (``question_prompt``)
    grade     ``ivr.rewards.scorer.Scorer``: the very graders training rewards with, so an eval number
              and a training reward never disagree about what "correct" means
    write     one JSON line per item, flushed and fsync'ed after every batch: a run killed at any
              point loses at most the batch in flight
    summarize accuracy (percent) overall, per category and subcategory; format rate; for
              localization items the Vision-R1 reward and COCO mAP/AP50/AP75/AR100
              (ivr.eval.summary)

The summary is computed from the prediction file, not from the run's memory, so a resumed run and
an uninterrupted one produce the same tables. The settings a run was made with (prompt, decoding,
model) are kept in ``run.json``; resuming into the same directory with different settings is
refused rather than silently mixed.

``predict`` is the one generate-and-grade loop of the project: the benchmark runner above and
``evaluate_samples`` (in memory: the SFT eval, the demo) both run through it, so an answer is
prompted, decoded and graded the same way wherever it is evaluated.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from ivr.data.prompts import PromptSet, question_prompt
from ivr.eval.loaders import (
    Benchmark,
    EvalItem,
    ImageDecodeError,
    SkippedRow,
    load_benchmark,
)
from ivr.eval.summary import _sample_metrics, summarize
from ivr.types import Sample

__all__ = ["evaluate", "evaluate_benchmark", "evaluate_samples", "predict", "synth_grid"]

PREDICTIONS = "predictions.jsonl"
SKIPPED = "skipped.jsonl"
SUMMARY = "summary.json"
RUN = "run.json"


# --------------------------------------------------------------------------------------------
# prediction files


def read_predictions(path: Path) -> dict[str, dict[str, Any]]:
    """Records of a prediction file by id. A torn last line (the run was killed mid-write) is
    dropped and the file rewritten without it, so appending continues from a clean line."""
    if not path.is_file():
        return {}
    records: dict[str, dict[str, Any]] = {}
    lines = path.read_text().splitlines()
    torn = False
    for ln in lines:
        if not ln.strip():
            continue
        try:
            rec = json.loads(ln)
        except json.JSONDecodeError:
            torn = True
            continue
        records[str(rec["id"])] = rec
    if torn or (lines and not path.read_bytes().endswith(b"\n")):
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records.values()))
        tmp.replace(path)
    return records


def _check_run(bdir: Path, settings: dict[str, Any]) -> None:
    path = bdir / RUN
    if path.is_file() and (bdir / PREDICTIONS).is_file():
        before = json.loads(path.read_text())
        diff = {k: (before.get(k), v) for k, v in settings.items() if before.get(k) != v}
        if diff:
            detail = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
            raise ValueError(
                f"{bdir}: predictions there were made with other settings ({detail}); "
                "use another --out directory, or delete the directory to start over"
            )
    path.write_text(json.dumps(settings, indent=2) + "\n")


# --------------------------------------------------------------------------------------------
# the loop: batched generation + grading (every evaluation runs through ``predict``)


@dataclass
class _Timing:
    generate_s: float = 0.0
    samples: int = 0


def _model_name(policy: Any) -> str | None:
    model = getattr(policy, "model", None)
    name = getattr(model, "name_or_path", None) or getattr(policy, "name_or_path", None)
    return str(name) if name else None


def _input_size(policy: Any, image: Any) -> tuple[int, int] | None:
    """(width, height) of ``image`` as the model sees it after the processor's resize (Qwen-VL:
    grid × patch), for rescaling predicted boxes; None if the processor does not tell."""
    proc = getattr(getattr(policy, "processor", None), "image_processor", None)
    if proc is None:
        return None
    try:
        grid = proc(images=[image], return_tensors="np")["image_grid_thw"][0]
        patch = int(proc.patch_size)
    except Exception:  # not a Qwen-style processor
        return None
    return int(grid[2]) * patch, int(grid[1]) * patch


def _batch_seed(seed: int, items: Sequence[EvalItem]) -> int:
    """Per-batch seed from the batch's first id: a resumed run samples as an uninterrupted one."""
    return (seed * 1_000_003 + zlib.crc32(items[0].id.encode())) % (2**31)


def synth_grid(path: str | Path | None) -> int:
    """The cell grid of a synthetic-world dataset (``meta.json`` next to it or in it, as
    ``ivr synth`` writes it), which positions in ``<desc>`` blocks refer to; 4 when there is none."""
    if not path:
        return 4
    p = Path(path)
    meta = (p if p.is_dir() else p.parent) / "meta.json"
    try:
        return int(json.loads(meta.read_text()).get("params", {}).get("grid", 4))
    except (OSError, ValueError, AttributeError):
        return 4


def _attribute_f1(response: str, scene: Sequence[dict[str, Any]], grid: int) -> float:
    """Object-level F1 of a response's ``<desc>`` on (shape, colour, digit), positions ignored:
    does the model see *what* is there, even when it misplaces it? (Synthetic world only.)"""
    from ivr.data.prompts import extract_description
    from ivr.data.render import parse_description

    desc = extract_description(response)
    if desc is None:
        return 0.0
    truth = Counter((o["shape"], o["colour"], o.get("digit")) for o in scene)
    parts = [] if desc.strip().rstrip(".").lower() in ("", "no shapes") else desc.split(";")
    pred: Counter = Counter()
    for part in parts:
        items = parse_description(part, grid)
        if items:
            pred[(items[0]["shape"], items[0]["colour"], items[0]["digit"])] += 1
    n_true = sum(truth.values())
    if not parts and not n_true:
        return 1.0
    return 2 * sum((pred & truth).values()) / (len(parts) + n_true)


def _description(text: str, scene: Sequence[dict[str, Any]], grid: int) -> dict[str, float]:
    """How faithfully the response's ``<desc>`` block describes the true scene (the synthetic
    world): ``exact`` and ``f1`` with positions (``render.description_fidelity``), ``attr_f1``
    without them."""
    from ivr.data.render import description_fidelity

    fid = description_fidelity(text, scene, grid)
    return {"exact": fid["exact"], "f1": fid["f1"], "attr_f1": _attribute_f1(text, scene, grid)}


def _grade(
    scorer: Any,
    items: Sequence[EvalItem],
    texts: Sequence[str],
    input_sizes: Sequence[Any],
    grid: int = 4,
) -> list[dict[str, Any]]:
    from ivr.rewards import extract_boxed

    samples = [
        it.to_sample(input_size=size) if size else it.to_sample()
        for it, size in zip(items, input_sizes)
    ]
    scores = scorer(samples, texts)
    records = []
    for it, sample, text, score in zip(items, samples, texts, scores):
        correct = score.correct
        if correct is False and it.accepted:  # MMMU open questions: any accepted answer counts
            alts = [replace(sample, answer=a) for a in it.accepted]
            correct = any(s.correct for s in scorer(alts, [text] * len(alts)))
        rec: dict[str, Any] = {
            "id": it.id,
            "category": it.category,
            "subcategory": it.subcategory,
            "answer": it.answer,
            "prediction": None if it.is_localization else extract_boxed(text),
            "correct": correct,
            "reward": score.reward,
            "components": score.components,
            "response": text,
        }
        if it.is_localization:
            rec.update(_predicted_boxes(text, sample))
        scene = it.extra.get("scene")
        if scene is not None and not it.is_localization:  # the synthetic world knows the scene
            rec["description"] = _description(text, scene, grid)
        records.append(rec)
    return records


def _predicted_boxes(text: str, sample: Any) -> dict[str, Any]:
    """The boxes of a localization answer in original-image pixels (what COCO scores)."""
    import numpy as np

    from ivr.rewards.localization import parse_boxes, rescale_boxes

    parsed = parse_boxes(text) or []
    boxes = np.array([o["bbox_2d"] for o in parsed], dtype=float).reshape(-1, 4)
    input_size = sample.extra.get("input_size")
    if sample.image_size is not None and len(boxes):
        boxes = rescale_boxes(boxes, input_size, sample.image_size)
    return {
        "pred_boxes": [[round(float(v), 2) for v in b] for b in boxes],
        "pred_labels": [o.get("label") for o in parsed],
    }


def predict(
    policy: Any,
    items: Sequence[EvalItem],
    *,
    scorer: Any = None,
    prompts: PromptSet | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 1024,
    temperature: float = 0.0,
    seed: int = 0,
    grid: int = 4,
    skipped: list[SkippedRow] | None = None,
    timing: _Timing | None = None,
) -> Iterator[list[dict[str, Any]]]:
    """Generate and grade ``items``: one list of prediction records per batch, in item order.

    Per batch of ``batch_size`` items: decode the images; prompt with the trainer's original
    prompt (``question_text`` with the images); ``policy.generate`` (greedy at
    ``temperature=0``, the paper's setting; a per-batch seed otherwise) with the model in eval
    mode; grade with ``scorer`` (default: the training ``Scorer``). A record is ``id``,
    ``category``, ``subcategory``, ``answer``, ``prediction`` (boxed content), ``correct``
    (None for localization), ``reward``, ``components``, ``response``, ``finished``,
    ``num_tokens``; localization items add ``pred_boxes``/``pred_labels`` (original-image
    pixels), items with a true ``scene`` (the synthetic world) add ``description`` (``exact``,
    ``f1``, ``attr_f1``; positions on a ``grid``). An item whose images do not decode goes to ``skipped`` (never graded), or raises
    :class:`ImageDecodeError` when ``skipped`` is None.
    """
    from ivr.rewards.scorer import Scorer

    scorer = scorer or Scorer()
    prompts = prompts or PromptSet()
    model = getattr(policy, "model", None)
    for start in range(0, len(items), batch_size):
        ready, chats, sizes = [], [], []
        for it in items[start : start + batch_size]:
            try:
                images = it.load_images()
            except ImageDecodeError as e:
                if skipped is None:
                    raise
                skipped.append(SkippedRow(it.benchmark, it.source, str(e), it.id))
                continue
            size = None
            if it.is_localization:
                size = _input_size(policy, images[0])
                if it.image_size is None:  # boxes are in the pixels of the image as stored
                    it = replace(it, image_size=images[0].size)
            ready.append(it)
            chats.append(question_prompt(it, images, prompts))  # the trainer's prompt
            sizes.append(size)
        if not ready:
            continue
        t0 = time.perf_counter()
        was_training = getattr(model, "training", False)
        if model is not None:
            model.eval()
        try:
            gens = policy.generate(
                chats,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=1.0,
                num_return_sequences=1,
                seed=_batch_seed(seed, ready),
            )
        finally:
            if model is not None:
                model.train(was_training)
        if timing is not None:
            timing.generate_s += time.perf_counter() - t0
            timing.samples += len(ready)
        texts = [g[0].text for g in gens]
        records = _grade(scorer, ready, texts, sizes, grid)
        for rec, g in zip(records, gens):
            rec["finished"] = g[0].finished
            rec["num_tokens"] = len(g[0].token_ids)
        yield records


# --------------------------------------------------------------------------------------------
# one benchmark, to files (resumable)


def evaluate_benchmark(
    policy: Any,
    bench: Benchmark,
    out_dir: Path,
    *,
    batch_size: int = 16,
    max_new_tokens: int = 1024,
    temperature: float = 0.0,
    prompts: PromptSet | None = None,
    seed: int = 0,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Run (or resume) one loaded benchmark into ``out_dir/<bench.name>/``; return its summary."""
    prompts = prompts or PromptSet()
    bdir = Path(out_dir) / bench.name
    bdir.mkdir(parents=True, exist_ok=True)
    settings = {
        "benchmark": bench.name,
        "model": _model_name(policy),
        "prompt": prompts.answer,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "seed": seed,
    }
    _check_run(bdir, settings)
    pred_path = bdir / PREDICTIONS
    done = read_predictions(pred_path)
    todo = [it for it in bench.items if it.id not in done]
    skipped = list(bench.skipped)
    timing = _Timing()
    if log and done:
        log(f"{bench.name}: resuming, {len(done)} predictions already in {pred_path}")
    batches = predict(
        policy,
        todo,
        prompts=prompts,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        grid=synth_grid(bench.path),
        skipped=skipped,
        timing=timing,
    )
    with pred_path.open("a") as f:
        for records in batches:
            for rec in records:
                line = json.dumps(rec)
                f.write(line + "\n")
                done[rec["id"]] = json.loads(line)  # exactly what a resumed run reads back
            f.flush()
            os.fsync(f.fileno())
            if log:
                rate = timing.samples / max(timing.generate_s, 1e-9)
                log(
                    f"{bench.name}: {len(done)}/{len(bench.items)} done "
                    f"({rate:.2f} samples/s generating)"
                )
    with (bdir / SKIPPED).open("w") as f:
        for s in skipped:
            f.write(json.dumps(s.to_json()) + "\n")
    if log and skipped:
        log(f"{bench.name}: {len(skipped)} rows skipped (not graded), see {bdir / SKIPPED}")
    summary = summarize(bench, done, skipped)
    summary["timing"] = {
        "generate_s": round(timing.generate_s, 3),
        "samples": timing.samples,
        "samples_per_s": round(timing.samples / timing.generate_s, 3) if timing.samples else None,
    }
    (bdir / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# --------------------------------------------------------------------------------------------
# samples in memory (the SFT eval, the demo)


def _as_item(sample: Sample) -> EvalItem:
    """A trainer ``Sample`` as an eval item (every field carried over: ``to_sample`` gives the
    same sample back)."""
    columns = {f.name: getattr(sample, f.name) for f in fields(sample)}
    return EvalItem(**columns, benchmark="", category=sample.task, source=f"sample {sample.id!r}")


def _sample_record(sample: Sample, rec: dict[str, Any]) -> dict[str, Any]:
    """A prediction record in the flat layout of ``evaluate_samples`` (components inlined)."""
    out: dict[str, Any] = {
        "id": sample.id,
        "task": sample.task,
        "question": sample.question,
        "answer": sample.answer,
        "completion": rec["response"],
        "reward": rec["reward"],
        "correct": rec["correct"],
        "finished": rec["finished"],
        **rec["components"],
    }
    if "description" in rec:
        d = rec["description"]
        out.update(desc_exact=d["exact"], desc_f1=d["f1"], desc_attr_f1=d["attr_f1"])
    return out


def evaluate_samples(
    policy: Any,
    samples: Sequence[Sample],
    *,
    scorer: Any = None,
    prompts: PromptSet | None = None,
    max_new_tokens: int = 256,
    batch_size: int = 32,
    grid: int = 4,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Greedy answers to the trainer's prompt for samples in memory (no files), graded by
    ``scorer`` (default: the training ``Scorer``), through :func:`predict`.

    Returns (metrics, per-sample records). A record: ``id``, ``task``, ``question``, ``answer``,
    ``completion``, ``reward``, ``correct``, ``finished``, the reward components inlined, and
    ``desc_exact``/``desc_f1``/``desc_attr_f1`` for samples with a true ``scene``. Metrics (as
    fractions): ``n``; ``accuracy`` and ``format`` over text-graded samples, ``accuracy/<task>``
    when several tasks; ``loc_reward`` over box samples; ``desc_exact``/``desc_f1``
    (``render.description_fidelity``: objects with their positions) and ``desc_attr_f1``
    (positions ignored) over non-box samples carrying the true ``scene`` (synthetic world; box
    answers have no ``<desc>`` block); ``finished``.
    """
    batches = predict(
        policy,
        [_as_item(s) for s in samples],
        scorer=scorer,
        prompts=prompts,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        grid=grid,
    )
    preds = [rec for records in batches for rec in records]
    records = [_sample_record(s, rec) for s, rec in zip(samples, preds)]
    return _sample_metrics(records), records


# --------------------------------------------------------------------------------------------
# many benchmarks


def _specs(benchmarks: str | Sequence[str | Benchmark]) -> list[str | Benchmark]:
    if isinstance(benchmarks, str):
        return [b.strip() for b in benchmarks.split(",") if b.strip()]
    return list(benchmarks)


def evaluate(
    policy: Any,
    benchmarks: str | Sequence[str | Benchmark],
    *,
    data_root: str | Path | None = None,
    out_dir: str | Path,
    limit: int | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 1024,
    temperature: float = 0.0,
    prompts: PromptSet | None = None,
    seed: int = 0,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Evaluate ``policy`` on ``benchmarks`` (a comma list of specs, specs, or loaded
    :class:`Benchmark`) and write per-benchmark predictions and summaries plus ``results.json``,
    ``results.md`` and ``results.png`` to ``out_dir``. Rerunning the same command resumes.

    Returns ``{"benchmarks": {name: summary}, "average": …, "settings": …}``; ``average`` is the
    unweighted mean of the benchmarks' scores (the "avg" column of the paper's Table 1).
    """
    from ivr.eval import tables

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    loaded: list[Benchmark] = []
    for spec in _specs(benchmarks):
        bench = (
            spec if isinstance(spec, Benchmark) else load_benchmark(spec, data_root, limit=limit)
        )
        if isinstance(spec, Benchmark) and limit is not None:
            bench.items = bench.items[:limit]
        names = {b.name for b in loaded}
        base, k = bench.name, 2
        while bench.name in names:  # two datasets with the same file name
            bench.name = f"{base}_{k}"
            k += 1
        if log:
            extra = f", {len(bench.skipped)} rows skipped" if bench.skipped else ""
            log(f"{bench.name}: {len(bench.items)} items from {bench.path}{extra}")
        loaded.append(bench)
    summaries = {
        b.name: evaluate_benchmark(
            policy,
            b,
            out,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            prompts=prompts,
            seed=seed,
            log=log,
        )
        for b in loaded
    }
    results = tables.make_results(
        summaries,
        settings={
            "model": _model_name(policy),
            "limit": limit,
            "batch_size": batch_size,
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "seed": seed,
        },
    )
    tables.write_results(results, out)
    return results
