"""Results tables (markdown + JSON), the paper's Table 1 average, run comparisons and a bar plot.

A run directory written by :func:`ivr.eval.runner.evaluate` holds ``results.json``; everything
here reads that dict, so tables can be rebuilt, compared and plotted without a model:

    | Model | MathVista | MathVerse | MathVision | MMStar | MMMU-Pro | MMMU | Avg |

Columns follow the paper's order for its six benchmarks, then any other benchmark in run order.
"Avg" is the unweighted mean of the benchmark scores, as in the paper (e.g. Qwen2.5-VL-72B:
(48.1 + 40.9 + 34.5 + 45.5 + 36.6 + 34.9) / 6 = 40.1). Numbers are percentages.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "PAPER_ORDER",
    "compare",
    "compare_markdown",
    "load_results",
    "make_results",
    "plot_results",
    "table1_markdown",
    "to_markdown",
    "write_results",
]

#: The paper's Table 1 column order.
PAPER_ORDER = ("mathvista", "mathverse", "mathvision", "mmstar", "mmmu_pro", "mmmu")

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
RESULTS_PNG = "results.png"


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return round(sum(vals) / len(vals), 2) if vals else None


def _order(names: Sequence[str]) -> list[str]:
    known = [n for n in PAPER_ORDER if n in names]
    return known + [n for n in names if n not in known]


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "—"
    return f"{value:+.1f}" if signed else f"{value:.1f}"


def make_results(
    summaries: Mapping[str, dict[str, Any]], settings: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Bundle per-benchmark summaries with the Table 1 average.

    >>> r = make_results({"mmmu": {"title": "MMMU", "score": 50.0},
    ...                   "mathvista": {"title": "MathVista", "score": 70.0}})
    >>> r["order"], r["average"]
    (['mathvista', 'mmmu'], 60.0)
    """
    order = _order(list(summaries))
    return {
        "order": order,
        "benchmarks": {n: summaries[n] for n in order},
        "average": _mean([summaries[n].get("score") for n in order]),
        "settings": dict(settings or {}),
    }


def load_results(run: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """A results dict, from a run directory, its ``results.json``, or the dict itself."""
    if isinstance(run, Mapping):
        return dict(run)
    path = Path(run)
    if path.is_dir():
        path = path / RESULTS_JSON
    if not path.is_file():
        raise FileNotFoundError(
            f"{run}: no {RESULTS_JSON} (is this an `ivr eval --out` directory?)"
        )
    return json.loads(path.read_text())


# --------------------------------------------------------------------------------------------
# markdown


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    align = ["---"] + ["---:"] * (len(header) - 1)
    return "\n".join([_row(header), _row(align), *(_row(r) for r in rows)])


def _columns(runs: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], dict[str, str]]:
    """Benchmark names over several runs (paper order first) and their display titles."""
    titles: dict[str, str] = {}
    for res in runs.values():
        for n in res["order"]:
            titles.setdefault(n, res["benchmarks"][n].get("title", n))
    return _order(list(titles)), titles


def table1_markdown(runs: Mapping[str, Mapping[str, Any]]) -> str:
    """The paper's Table 1 layout: one row per run, one column per benchmark, then Avg.

    >>> r = make_results({"mmstar": {"title": "MMStar", "score": 41.7}})
    >>> print(table1_markdown({"zero-shot": r}))
    | Model | MMStar | Avg |
    | --- | ---: | ---: |
    | zero-shot | 41.7 | 41.7 |
    """
    names, titles = _columns(runs)
    rows = []
    for label, res in runs.items():
        b = res["benchmarks"]
        cells = [_fmt(b[n].get("score")) if n in b else "—" for n in names]
        rows.append([label, *cells, _fmt(res.get("average"))])
    return _table(["Model", *(titles[n] for n in names), "Avg"], rows)


def to_markdown(results: Mapping[str, Any], label: str | None = None) -> str:
    """Everything a run measured: Table 1 row, counts, per-category tables, localization."""
    label = label or _label(results, "model")
    parts = ["## Results", "", table1_markdown({label: results}), ""]
    header = ["Benchmark", "graded", "skipped", "pending", "accuracy", "format %"]
    with_desc = any(results["benchmarks"][n].get("description") for n in results["order"])
    if with_desc:  # description fidelity against the true scene (the synthetic world)
        header += ["desc exact %", "desc F1 %"]
    rows = []
    for n in results["order"]:
        s = results["benchmarks"][n]
        row = [
            s.get("title", n),
            str(s.get("graded", 0)),
            str(s.get("skipped", 0)),
            str(s.get("pending", 0)),
            _fmt(s.get("accuracy")),
            _fmt(s.get("format_rate")),
        ]
        if with_desc:
            desc = s.get("description") or {}
            row += [_fmt(desc.get("exact")), _fmt(desc.get("f1"))]
        rows.append(row)
    parts += ["### Counts", "", _table(header, rows), ""]
    for n in results["order"]:
        s = results["benchmarks"][n]
        for key, what in (("categories", "category"), ("subcategories", "subcategory")):
            groups = s.get(key) or {}
            if len(groups) < 2:
                continue
            body = [[k, str(v["n"]), _fmt(v["accuracy"])] for k, v in groups.items()]
            parts += [
                f"### {s.get('title', n)} by {what}",
                "",
                _table([what, "n", "acc"], body),
                "",
            ]
    loc_rows = []
    for n in results["order"]:
        loc = results["benchmarks"][n].get("localization")
        if loc:
            pct = [_fmt(None if loc[k] is None else 100 * loc[k]) for k in _LOC_KEYS]
            loc_rows.append(
                [
                    results["benchmarks"][n].get("title", n),
                    str(loc["n"]),
                    f"{loc['reward']:.3f}",
                    *pct,
                ]
            )
    if loc_rows:
        parts += [
            "### Localization",
            "",
            _table(["Benchmark", "n", "reward (0-3)", *_LOC_KEYS], loc_rows),
            "",
        ]
    return "\n".join(parts)


_LOC_KEYS = ("mAP", "AP50", "AP75", "AR100")


# --------------------------------------------------------------------------------------------
# comparison


def _label(results: Mapping[str, Any], default: str) -> str:
    """The row label of a run: the model directory's name (``runs/ivr/final`` → ``final``)."""
    model = results.get("settings", {}).get("model")
    return Path(model).name if model else default


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(b - a, 2)


def compare(run_a: str | Path | Mapping[str, Any], run_b: str | Path | Mapping[str, Any]) -> dict:
    """Per-benchmark and per-category deltas ``b − a`` (percentage points).

    >>> a = make_results({"mmmu": {"title": "MMMU", "score": 40.0}})
    >>> b = make_results({"mmmu": {"title": "MMMU", "score": 45.5}})
    >>> compare(a, b)["benchmarks"]["mmmu"]["delta"]
    5.5
    """
    ra, rb = load_results(run_a), load_results(run_b)
    names = _order(list(dict.fromkeys([*ra["order"], *rb["order"]])))
    out: dict[str, Any] = {"order": names, "benchmarks": {}, "categories": {}}
    for n in names:
        sa, sb = ra["benchmarks"].get(n, {}), rb["benchmarks"].get(n, {})
        a, b = sa.get("score"), sb.get("score")
        out["benchmarks"][n] = {
            "title": sa.get("title") or sb.get("title") or n,
            "a": a,
            "b": b,
            "delta": _delta(a, b),
        }
        cats = dict.fromkeys([*(sa.get("categories") or {}), *(sb.get("categories") or {})])
        out["categories"][n] = {
            c: {
                "a": (sa.get("categories") or {}).get(c, {}).get("accuracy"),
                "b": (sb.get("categories") or {}).get(c, {}).get("accuracy"),
            }
            for c in cats
        }
        for v in out["categories"][n].values():
            v["delta"] = _delta(v["a"], v["b"])
    out["average"] = {
        "a": ra.get("average"),
        "b": rb.get("average"),
        "delta": _delta(ra.get("average"), rb.get("average")),
    }
    return out


def compare_markdown(cmp: Mapping[str, Any], label_a: str = "A", label_b: str = "B") -> str:
    """The comparison as markdown: per benchmark A, B, Δ, then per-category deltas."""
    rows = [
        [v["title"], _fmt(v["a"]), _fmt(v["b"]), _fmt(v["delta"], signed=True)]
        for v in cmp["benchmarks"].values()
    ]
    avg = cmp["average"]
    rows.append(["**Avg**", _fmt(avg["a"]), _fmt(avg["b"]), _fmt(avg["delta"], signed=True)])
    parts = [_table(["Benchmark", label_a, label_b, "Δ"], rows), ""]
    for n, cats in cmp["categories"].items():
        if len(cats) < 2:
            continue
        body = [
            [c, _fmt(v["a"]), _fmt(v["b"]), _fmt(v["delta"], signed=True)] for c, v in cats.items()
        ]
        title = cmp["benchmarks"][n]["title"]
        parts += [
            f"#### {title} by category",
            "",
            _table(["category", label_a, label_b, "Δ"], body),
            "",
        ]
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------
# plot and files


def plot_results(runs: Mapping[str, Mapping[str, Any]], path: str | Path) -> Path:
    """A grouped bar chart (one group per benchmark plus Avg, one bar per run) saved as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names, titles = _columns(runs)
    labels = [titles[n] for n in names] + ["Avg"]
    fig = Figure(figsize=(min(16.0, max(4.0, len(labels) * (0.7 + 0.35 * len(runs)) + 1)), 3.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(runs))
    for k, (label, res) in enumerate(runs.items()):
        values = [res["benchmarks"].get(n, {}).get("score") for n in names] + [res.get("average")]
        xs = [i + (k - (len(runs) - 1) / 2) * width for i in range(len(labels))]
        bars = ax.bar(xs, [v or 0.0 for v in values], width, label=label)
        for bar, v in zip(bars, values):
            if v is not None:
                ax.annotate(
                    f"{v:.1f}",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
    ax.set_ylabel("score (%)")
    ax.set_ylim(0, 105)
    if len(runs) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path


def write_results(
    results: Mapping[str, Any], out_dir: str | Path, label: str | None = None
) -> None:
    """Write ``results.json``, ``results.md`` and ``results.png`` into ``out_dir``."""
    out = Path(out_dir)
    label = label or _label(results, "model")
    (out / RESULTS_JSON).write_text(json.dumps(results, indent=2) + "\n")
    (out / RESULTS_MD).write_text(to_markdown(results, label) + "\n")
    plot_results({label: results}, out / RESULTS_PNG)
