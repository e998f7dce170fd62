"""A static, self-contained HTML report of a demo run (no server, no external assets).

It reads the ``results.json`` that ``ivr demo`` writes (``summarise`` in demo/results.py) and the run
directories under ``out/rl``. Sections:

    verdict          plain sentences derived from the paired comparisons (``verdict``)
    headline table   per method: greedy / sampled accuracy with 95% intervals on held-out A and B,
                     grounding, all-fail groups in training, step time vs GRPO (``markdown_table``)
    comparisons      per pair of methods: Δ with its interval and p (``comparisons_table``)
    cold start       what the stage-1 model did on its own training prompts
    training curves  mean over seeds per method; acceptance of rectified traces per round
    rectification    per round acceptance, success rate, generations spent, all-fail before/after
    inspector        failed rollouts with the image, each critique and rectification
    timings          per phase and per RL step

The rows of every table and the verdict's sentences come from tables.py (also their markdown).
Every number and every word of the verdict follows from ``results``; nothing is hard-coded.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

from .tables import (
    ALPHA,
    RECTIFYING,
    _comparison_rows,
    _headline_rows,
    _label,
    _pct,
    _present,
    _rectification,
    _rectification_rows,
    _rereason_rows,
    _train,
    _train_mean,
    _verdict_paragraphs,
)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLOURS = {
    "grpo": "tab:blue",
    "resample": "tab:gray",
    "ivr": "tab:orange",
    "ivr_desc": "tab:green",
    "sr1": "tab:purple",
}
CURVES = [
    ("reward/mean", "reward"),
    ("reward/correct", "train correct (sampled)"),
    ("all_fail", "all-fail groups"),
    ("loss/off_policy_token_share", "off-policy token share"),
]

_CONTROL = dict.fromkeys(c for c in range(32) if c not in (9, 10, 13))


def _esc(text: Any) -> str:
    """HTML-escape model output, dropping control bytes (an untrained model emits NULs)."""
    return html.escape(str(text).translate(_CONTROL))


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _img_file(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    return (
        "<table><tr>"
        + "".join(f"<th>{_esc(h)}</th>" for h in header)
        + "</tr>"
        + "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in r) + "</tr>" for r in rows)
        + "</table>"
    )


# ------------------------------------------------------------------------------ run files
def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _curve_value(row: dict[str, Any], key: str) -> float | None:
    if key == "all_fail":
        solved = row.get("reward/group_solved")
        return None if solved is None else 1.0 - solved
    return row.get(key)


def _curves(out: Path, results: dict[str, Any]) -> str | None:
    """Training curves per method: the mean over seeds at each step, the seeds' range shaded."""
    series: dict[str, list[list[dict[str, Any]]]] = {}
    for key in _present(results):
        runs = [_jsonl(out / "rl" / r / "metrics.jsonl") for r in _train(results, key)]
        if any(runs):
            series[key] = [r for r in runs if r]
    if not series:
        return None
    fig, axes = plt.subplots(1, len(CURVES), figsize=(4 * len(CURVES), 3))
    for key, runs in series.items():
        for ax, (metric, _) in zip(axes, CURVES):
            by_step: dict[int, list[float]] = {}
            for rows in runs:
                for r in rows:
                    v = _curve_value(r, metric)
                    if v is not None:
                        by_step.setdefault(int(r["step"]), []).append(float(v))
            if not by_step:
                continue
            xs = sorted(by_step)
            colour = COLOURS.get(key)
            ax.plot(
                xs,
                [np.mean(by_step[x]) for x in xs],
                color=colour,
                label=f"{_label(results, key)} ({len(runs)})",
            )
            if len(runs) > 1:
                lo = [min(by_step[x]) for x in xs]
                hi = [max(by_step[x]) for x in xs]
                ax.fill_between(xs, lo, hi, color=colour, alpha=0.15, linewidth=0)
    for ax, (_, title) in zip(axes, CURVES):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
    axes[0].legend(fontsize=6)
    return _png(fig)


def _acceptance_plot(results: dict[str, Any]) -> str | None:
    """Share of critiqued failures accepted at each round, per rectifying method."""
    stats = {k: r for k in RECTIFYING if (r := _rectification(results, k)) is not None}
    if not stats:
        return None
    rounds = max(len(r["accepted_per_round"]) for r in stats.values())
    width = 0.8 / len(stats)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for i, (key, r) in enumerate(stats.items()):
        shares = [
            100 * x / r["critiqued"] if r["critiqued"] else 0.0 for x in r["accepted_per_round"]
        ]
        xs = [k + i * width for k in range(len(shares))]
        ax.bar(xs, shares, width, color=COLOURS.get(key), label=_label(results, key))
    ax.set_xticks(
        [k + width * (len(stats) - 1) / 2 for k in range(rounds)],
        [f"round {k + 1}" for k in range(rounds)],
    )
    ax.set_ylabel("% of critiqued failures accepted")
    ax.set_title("acceptance per round (training)", fontsize=9)
    ax.legend(fontsize=7)
    return _png(fig)


def _coldstart(results: dict[str, Any]) -> str:
    cs = results.get("coldstart") or {}
    e = _esc
    facts = [
        f"source: {e(cs.get('source', 'unknown'))}",
        *([f"SFT seed: {e(cs['sft_seed'])}"] if "sft_seed" in cs else []),
    ]
    mined = cs.get("stage1_mined")
    if not mined:
        return "<p>" + "; ".join(facts) + ". No mining statistics were recorded.</p>"
    facts += [
        f"the stage-1 model answered {e(mined.get('prompts', '?'))} training prompts "
        f"({e(mined.get('samples', '?'))} samples at T = 1)",
        f"sampled accuracy {_pct(mined.get('sampled_accuracy'))}%",
        f"all-fail prompts {_pct(mined.get('all_fail_share'))}%",
    ]
    kinds = mined.get("failure_kinds") or {}
    rows = [[k, _pct(v)] for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])]
    table = _html_table(["failure kind", "% of failures"], rows) if rows else ""
    return "<ul>" + "".join(f"<li>{f}</li>" for f in facts) + "</ul>" + table


def _timings(results: dict[str, Any]) -> str:
    parts = []
    phases = results.get("timings_s") or {}
    if phases:
        rows = [[k, f"{v:.1f}"] for k, v in phases.items()]
        if results.get("total_s") is not None:
            rows.append(["total", f"{results['total_s']:.1f}"])
        parts.append(_html_table(["phase", "seconds"], rows))
    grpo_step = _train_mean(results, "grpo", "time_per_step")
    rows = []
    for key in _present(results):
        step = _train_mean(results, key, "time_per_step")
        if step is None:
            continue
        rows.append(
            [
                _label(results, key),
                f"{step:.2f}",
                f"{step / grpo_step:.2f}×" if grpo_step else "–",
                ", ".join(
                    f"{r}: {t['time_per_step']:.2f}"
                    for r, t in _train(results, key).items()
                    if t.get("time_per_step") is not None
                ),
            ]
        )
    if rows:
        parts.append(_html_table(["method", "s / RL step (mean)", "vs GRPO", "per run"], rows))
    return "".join(parts)


def _trace_run(out: Path, results: dict[str, Any]) -> Path | None:
    """The first run with rectification traces: IVR-R1 (image), then its ablation, then resample."""
    for key in ("ivr", "ivr_desc", "resample"):
        for run in _train(results, key):
            if (out / "rl" / run / "traces.jsonl").is_file():
                return out / "rl" / run / "traces.jsonl"
    return (
        next(iter(sorted((out / "rl").glob("*/traces.jsonl"))), None)
        if (out / "rl").is_dir()
        else None
    )


def _round_html(r: dict[str, Any]) -> str:
    e = _esc
    ok = bool(r.get("accepted"))
    if "resampled" in r:
        body = f'<div class="label">resampled</div><pre>{e(r["resampled"])}</pre>'
    else:
        body = (
            f'<div class="label">critique</div><pre>{e(r.get("critique", ""))}</pre>'
            f'<div class="label">rectification</div><pre>{e(r.get("rectified", ""))}</pre>'
        )
    return (
        f'<div class="round {"ok" if ok else "bad"}"><b>round {e(r.get("round", "?"))}</b> '
        f"(reward {r.get('reward', 0.0):.2f}, {'accepted' if ok else 'rejected'}){body}</div>"
    )


def _inspector(out: Path, results: dict[str, Any], data: Path | None, limit: int = 12) -> str:
    traces_file = _trace_run(out, results)
    if traces_file is None:
        return "<p>No rectification traces were recorded.</p>"
    images: dict[str, Path] = {}
    if data is not None:
        for row in _jsonl(data / "train.jsonl"):
            if row.get("image"):
                images[str(row["id"])] = data / row["image"]
    traces = _jsonl(traces_file)
    accepted = [t for t in traces if t.get("accepted")]
    rejected = [t for t in traces if not t.get("accepted")]
    chosen = accepted[: limit // 2] + rejected[: limit - min(len(accepted), limit // 2)]
    cards = []
    e = _esc
    for t in chosen:
        img = images.get(str(t.get("id")))
        img_html = (
            f'<img class="scene" src="{_img_file(img)}" alt="scene {e(t.get("id"))}">'
            if img and img.is_file()
            else ""
        )
        ok = bool(t.get("accepted"))
        cards.append(
            f'<div class="card {"ok" if ok else "bad"}"><div class="head">{img_html}<div>'
            f"<b>step {e(t.get('step', '?'))}</b> · id {e(t.get('id'))}<br>"
            f"{e(t.get('question', ''))}<br>gold: <code>{e(t.get('answer', ''))}</code> · "
            f"{'ACCEPTED' if ok else 'not accepted'}</div></div>"
            f'<div class="label">original (reward {t.get("original_reward", 0.0):.2f})</div>'
            f"<pre>{e(t.get('original', ''))}</pre>"
            + "".join(_round_html(r) for r in t.get("rounds", []))
            + "</div>"
        )
    return (
        f"<p>{len(traces)} failure{'' if len(traces) == 1 else 's'} handled in "
        f"{e(traces_file.parent.name)}; "
        f"{len(accepted)} accepted. Showing {len(chosen)}.</p>" + "".join(cards)
    )


CSS = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}
td{white-space:nowrap;font-size:13px}td:first-child,th:first-child{text-align:left;white-space:normal}.verdict{background:#f4f4f8;padding:.2em 1em;border-left:4px solid #557}
.card{border:1px solid #ddd;margin:1em 0;padding:.6em}.card.ok{border-left:4px solid #2a2}.card.bad{border-left:4px solid #c33}
.head{display:flex;gap:1em;align-items:flex-start}.scene{width:112px;height:112px;image-rendering:pixelated;border:1px solid #999}
pre{white-space:pre-wrap;background:#fafafa;padding:.4em;margin:.2em 0;font-size:12px}.label{font-size:11px;color:#666}
.round{margin-left:1em;padding-left:.5em;border-left:2px solid #ccc}.round.ok{border-color:#2a2}
.note{font-size:13px;color:#555}
"""


def write_report(
    out: str | Path, results: dict[str, Any], *, data: str | Path | None = None
) -> Path:
    """Write ``out/report.html`` for ``results`` (demo's results.json) and the runs under out/rl.

    ``data`` is the training world (its train.jsonl and images feed the rollout inspector)."""
    out = Path(out)
    data = Path(data) if data else (out / "world" if (out / "world").is_dir() else None)
    e = _esc
    sets = results.get("sets") or {}
    sizes = ", ".join(f"{s}: {e(v.get('n', '?'))} items" for s, v in sets.items())
    parts = [
        f"<h1>IVR-R1 demo — profile {e(results.get('profile'))}</h1>",
        f"<p>RL seeds: {e(results.get('seeds'))}; {e(results.get('rl_steps', '?'))} RL steps per "
        f"run; held-out sets {sizes or '?'} (A: unseen items of the training world, B: a world "
        "seed never used in development).</p>",
        "<h2>Verdict</h2>",
        '<div class="verdict" id="verdict">'
        + "".join(f"<p>{e(s)}</p>" for s in _verdict_paragraphs(results))
        + "</div>",
        f'<p class="note">A method beats another when its greedy accuracy is higher with '
        f"p &lt; {ALPHA:g} on both held-out sets.</p>",
        "<h2>Results</h2>",
        _html_table(*_headline_rows(results)),
        '<p class="note">Accuracy in %, mean over RL seeds of per-item scores, with a percentile '
        "bootstrap 95% interval over items. Sampled: mean of k answers at T = 1. Attribute "
        "fidelity: the model's own &lt;desc&gt; is right about what the question depends on; "
        "self-consistency: the answer follows from that &lt;desc&gt;. All-fail groups: share of "
        "training groups where no sample was correct (mean over runs). Step time: mean seconds "
        "per RL step relative to GRPO.</p>",
        "<h2>Paired comparisons</h2>",
        _html_table(*_comparison_rows(results)),
        '<p class="note">Δ = first − second, in points: per-item differences averaged over the '
        "paired seeds, a bootstrap 95% interval over items and a sign test on those per-item "
        "means. p-values are not corrected for multiple comparisons.</p>",
        "<h2>Cold start</h2>",
        _coldstart(results),
    ]
    curves = _curves(out, results)
    if curves:
        parts += [
            "<h2>Training curves</h2>",
            f'<img src="{curves}" alt="training curves" style="max-width:100%">',
            '<p class="note">Mean over seeds per step; shaded: the range over seeds.</p>',
        ]
    plot = _acceptance_plot(results)
    header, rows = _rectification_rows(results)
    if rows:
        parts += ["<h2>Rectification</h2>", _html_table(header, rows)]
        if plot:
            parts.append(f'<img src="{plot}" alt="acceptance per round">')
        parts.append(
            '<p class="note">Counts summed over runs; the success rate is accepted / critiqued. '
            "All-fail groups before: sampled groups with no correct answer; after: the same "
            "groups once accepted traces are mixed in.</p>"
        )
    header, rows = _rereason_rows(results)
    if rows:
        parts += [
            "<h2>Test-time re-reasoning</h2>",
            _html_table(header, rows),
            '<p class="note">Paper Fig. 5 on held-out A: every wrong greedy answer goes through the '
            "loop at T = 1 (an oracle screen); accuracy after each round. The resample control "
            "spends the same two generations per round on fresh answers to the original "
            "prompt.</p>",
        ]
    parts += ["<h2>Rollout inspector</h2>", _inspector(out, results, data)]
    timings = _timings(results)
    if timings:
        parts += ["<h2>Timings</h2>", timings]
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>IVR-R1 demo report</title>"
        f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>"
    )
    path = out / "report.html"
    path.write_text(page)
    return path


__all__ = ["write_report"]
