"""Benchmark loaders: local copies of the paper's benchmarks, in the formats they are published in.

One small adapter per benchmark turns its rows into :class:`EvalItem` — the question exactly as
the model will read it (choices rendered in), the gold answer, what the grader needs to know
(``answer_type``, ``choices``, ``precision``, ``unit``) and where the row sits in the
benchmark's own breakdown (``category`` / ``subcategory``). Images stay encoded (file path or
bytes) until :meth:`EvalItem.load_images`, so loading MMMU does not decode 900 images up front.

=============  =====================================================  ==========================
benchmark      files looked for under ``<data_root>/<dir>/``          category / subcategory
=============  =====================================================  ==========================
mathvista      ``data/testmini-*.parquet`` (AI4Math/MathVista)         task / skills
mathverse      ``testmini.parquet`` (AI4Math/MathVerse)                problem_version / subfield
mathvision     ``data/testmini-*.parquet`` (MathLLMs/MathVision)       subject / level
mmstar         ``mmstar.parquet`` or ``MMStar.tsv`` (Lin-Chen/MMStar)  category / l2_category
mmmu           ``<Subject>/validation-*.parquet`` (MMMU/MMMU)          discipline / subject
mmmu_pro       ``standard (10 options)/test-*.parquet`` and            setting / subject
               ``vision/test-*.parquet`` (MMMU/MMMU_Pro)
=============  =====================================================  ==========================

Besides these: any VLMEvalKit TSV (``index, image`` (base64), ``question, A, B, …, answer,
category``) given as a path or found as ``<data_root>/<NAME>.tsv``, and the project's own datasets
(JSONL/parquet in the project schema, the synthetic world) given as ``synth:PATH`` or a path.

Errors are meant to be acted on: a file without a required column, or a directory with none of
the expected files, raises :class:`BenchmarkFormatError` naming the file and the expected schema.
A single bad row (no answer, options that do not parse, base64 that is not base64) is not an
error: it is returned in ``Benchmark.skipped`` with its reason and never graded. An image that
does not decode is found when the runner decodes it (:class:`ImageDecodeError`) and is skipped
the same way.

Layout of this package: ``base.py`` (the item types, the registry, row helpers), one module per
benchmark family — ``math.py`` (MathVista, MathVerse, MATH-Vision), ``mcq.py`` (MMStar, MMMU,
MMMU-Pro) — and the two file formats given by path, ``tsv.py`` (VLMEvalKit) and ``project.py``.
This module resolves a spec (``load_benchmark``).

Adding a benchmark is one decorated function, in its family's module (a new family module is
also named in this file's ``from . import math, mcq`` line, which runs the decorators)::

    @register_benchmark("chartqa", title="ChartQA", dirnames=("ChartQA",),
                        layout="test.parquet (HuggingFaceM4/ChartQA)")
    def _load_chartqa(root: Path) -> tuple[list[EvalItem], list[SkippedRow]]:
        files = _files(root, "chartqa", ("test.parquet",))
        return _convert("chartqa", files, ["query", "image", "label"], _FMT, _chartqa_row)

``_chartqa_row(path, i, row)`` returns an :class:`EvalItem` or raises ``_RowError`` to skip the
row. The name is then a valid ``--benchmarks`` spec, listed in ``ivr eval --help`` and in
:data:`BENCHMARKS`; nothing else needs editing.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from . import math, mcq  # noqa: F401  (their @register_benchmark decorators fill BENCHMARKS)
from .base import (
    BENCHMARKS,
    Benchmark,
    BenchmarkFormatError,
    BenchmarkInfo,
    EvalItem,
    ImageDecodeError,
    SkippedRow,
    register_benchmark,
    render_choices,
)
from .project import _load_project
from .tsv import _load_vlmevalkit_file

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "BenchmarkFormatError",
    "BenchmarkInfo",
    "EvalItem",
    "ImageDecodeError",
    "SkippedRow",
    "load_benchmark",
    "register_benchmark",
    "render_choices",
]


def _canonical(name: str) -> str:
    """The registered name a spec spells (``MATH-Vision`` → ``mathvision``), else the spec's key."""
    key = name.strip().lower().replace("-", "_")
    if key in BENCHMARKS:
        return key
    for info in BENCHMARKS.values():  # a registered directory name is an accepted spelling
        if key in {d.lower().replace("-", "_") for d in info.dirnames}:
            return info.name
    return key


def _benchmark_dir(info: BenchmarkInfo, data_root: Path | None) -> Path:
    if data_root is None:
        raise BenchmarkFormatError(
            f"{info.name}: no --data-root given; expected <data_root>/{info.dirnames[0]}/ "
            f"holding {info.layout}"
        )
    if not data_root.is_dir():
        raise BenchmarkFormatError(f"--data-root {data_root} is not a directory")
    wanted = {d.lower() for d in info.dirnames}
    for child in sorted(data_root.iterdir()):
        if child.is_dir() and child.name.lower() in wanted:
            return child
    raise BenchmarkFormatError(
        f"{info.title}: no directory {' / '.join(info.dirnames)} under {data_root}; expected "
        f"{data_root / info.dirnames[0]}/ holding {info.layout}"
    )


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "benchmark"


def load_benchmark(
    spec: str, data_root: str | Path | None = None, *, limit: int | None = None
) -> Benchmark:
    """Load one benchmark from a spec.

    ``spec`` is one of: a known name (``mathvista``, ``mathverse``, ``mathvision``, ``mmstar``,
    ``mmmu``, ``mmmu_pro``) found under ``data_root``; ``NAME:DIR`` for a known benchmark in an
    explicit directory; ``synth:PATH[@split]`` or a path to a project dataset (JSONL, parquet or a
    dataset directory; split ``test`` by default); a path to a VLMEvalKit ``.tsv``; or the name
    of a VLMEvalKit TSV in ``data_root`` (``MMBench_DEV_EN`` → ``<data_root>/MMBench_DEV_EN.tsv``).
    ``limit`` keeps the first N items (file order; MMMU-Pro alternates its two settings).
    """
    root = Path(data_root).expanduser() if data_root is not None else None
    head, sep, tail = spec.partition(":")
    if sep and len(head) > 1:  # NAME:PATH (a one-letter head is a Windows drive)
        kind = _canonical(head)
        if kind in ("synth", "project", "dataset"):
            path_s, _, split = tail.partition("@")
            path = _resolve_path(path_s, root)
            bench = _project_benchmark(path, split or "test", "synth" if kind == "synth" else None)
        elif kind in BENCHMARKS:
            info = BENCHMARKS[kind]
            path = _resolve_path(tail, root)
            bench = _known_benchmark(info, path)
        elif kind in ("tsv", "vlmevalkit"):
            path = _resolve_path(tail, root)
            bench = _tsv_benchmark(path)
        else:
            raise BenchmarkFormatError(f"unknown benchmark kind {head!r} in {spec!r}; {_help()}")
    elif _canonical(spec) in BENCHMARKS:
        info = BENCHMARKS[_canonical(spec)]
        bench = _known_benchmark(info, _benchmark_dir(info, root))
    else:
        path_s, _, split = spec.partition("@")
        candidates = [Path(path_s).expanduser()]
        if root is not None:
            candidates += [root / path_s, root / f"{path_s}.tsv"]
        path = next((c for c in candidates if c.exists()), None)
        if path is None:
            raise BenchmarkFormatError(
                f"unknown benchmark {spec!r}: not a known name or path; {_help()}"
            )
        if path.suffix.lower() == ".tsv":
            bench = _tsv_benchmark(path)
        else:
            bench = _project_benchmark(path, split or "test", None)
    if limit is not None:
        bench.items = bench.items[: max(0, limit)]
    return bench


def _help() -> str:
    """What a spec may be (read from the registry when an error is raised)."""
    return (
        "expected one of " + ", ".join(BENCHMARKS) + ", NAME:DIR, synth:PATH[@split], a dataset "
        "path, or a VLMEvalKit .tsv"
    )


def _resolve_path(text: str, root: Path | None) -> Path:
    p = Path(text).expanduser()
    if not p.exists() and root is not None and (root / text).exists():
        p = root / text
    if not p.exists():
        raise BenchmarkFormatError(f"{p}: no such file or directory")
    return p


def _known_benchmark(info: BenchmarkInfo, path: Path) -> Benchmark:
    if not path.is_dir():
        raise BenchmarkFormatError(f"{path}: expected a directory holding {info.layout}")
    items, skipped = info.loader(path)
    return Benchmark(
        info.name,
        info.title,
        path,
        _unique(items),
        skipped,
        macro_over_categories=info.macro_over_categories,
    )


def _tsv_benchmark(path: Path) -> Benchmark:
    name = _safe_name(path.stem)
    items, skipped = _load_vlmevalkit_file(path, name)
    return Benchmark(name, path.stem, path, _unique(items), skipped)


def _project_benchmark(path: Path, split: str, name: str | None) -> Benchmark:
    name = name or _safe_name(path.stem if path.is_file() else path.name)
    items, skipped = _load_project(path, split, name)
    return Benchmark(name, name, path, _unique(items), skipped)


def _unique(items: list[EvalItem]) -> list[EvalItem]:
    """Ids key the resumable prediction file, so they must be unique: suffix repeats (#2, #3…)."""
    seen: dict[str, int] = {}
    out = []
    for it in items:
        n = seen.get(it.id, 0) + 1
        seen[it.id] = n
        out.append(it if n == 1 else replace(it, id=f"{it.id}#{n}"))
    return out
