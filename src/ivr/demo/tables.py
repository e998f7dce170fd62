"""The demo's results as markdown and words: the headline table, the paired comparisons, the
rectification and test-time re-reasoning tables, and the verdict. Each is a list of rows built
from ``results.json`` (results.py's schema) once, rendered as markdown here (README, RESULTS.md)
and as HTML by report.py: the two can never disagree.

Every number and every word of the verdict follows from ``results``; nothing is hard-coded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: Headline rows, in order (those present in the results).
ORDER = ("sft", "grpo", "resample", "ivr", "ivr_desc", "sr1")
#: Fallback labels; a method's own ``label`` in results.json wins.
LABELS = {
    "sft": "SFT cold start",
    "grpo": "GRPO",
    "resample": "Resample control",
    "ivr": "IVR-R1 (image)",
    "ivr_desc": "IVR-R1 (own description)",
    "sr1": "Vision-SR1",
}
#: How a method reads as the object of a verdict sentence.
_OBJECT = {"resample": "the resample control", "sft": "the SFT cold start"}
SETS = ("A", "B")
#: Significance level of the verdict (two-sided p of the paired test).
ALPHA = 0.05
#: Methods whose runs rectify (or resample) failed groups.
RECTIFYING = ("resample", "ivr", "ivr_desc")


# ------------------------------------------------------------------------------ formatting
def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _pts(x: float) -> str:
    """A difference in percentage points, signed."""
    return f"{100 * x:+.1f}"


def _p(p: float) -> str:
    """``0.003``, or ``<0.001``."""
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _p_phrase(p: float) -> str:
    """``p = 0.003``, or ``p < 0.001``."""
    return "p < 0.001" if p < 0.001 else f"p = {_p(p)}"


def _ci(cell: dict[str, Any] | None) -> str:
    """``61.2 [58.1, 64.2]``: a mean and its 95% interval, in percent."""
    if not cell:
        return "–"
    return f"{_pct(cell['mean'])} [{_pct(cell['lo'])}, {_pct(cell['hi'])}]"


def _delta(c: dict[str, Any] | None) -> str:
    """``+3.1 [+0.4, +5.9], p = 0.010``: a paired difference in points, its interval and p."""
    if not c:
        return "–"
    return f"{_pts(c['diff'])} [{_pts(c['lo'])}, {_pts(c['hi'])}], {_p_phrase(c['p'])}"


def _md(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


# ------------------------------------------------------------------------------ results access
def _methods(results: dict[str, Any]) -> dict[str, Any]:
    return results.get("methods") or {}


def _label(results: dict[str, Any], key: str) -> str:
    return _methods(results).get(key, {}).get("label") or LABELS.get(key, key)


def _cell(results: dict[str, Any], method: str, set_name: str, metric: str) -> dict | None:
    return (_methods(results).get(method, {}).get(set_name) or {}).get(metric)


def _train(results: dict[str, Any], method: str) -> dict[str, dict[str, Any]]:
    return _methods(results).get(method, {}).get("train") or {}


def _train_mean(results: dict[str, Any], method: str, key: str) -> float | None:
    vals = [t[key] for t in _train(results, method).values() if t.get(key) is not None]
    return float(np.mean(vals)) if vals else None


def _present(results: dict[str, Any]) -> list[str]:
    m = _methods(results)
    return [k for k in ORDER if k in m] + sorted(k for k in m if k not in ORDER)


# ------------------------------------------------------------------------------ tables
HEADLINE = [
    "method",
    "greedy acc A [95% CI]",
    "sampled acc A [95% CI]",
    "greedy acc B [95% CI]",
    "attr fidelity A",
    "self-consistency A",
    "all-fail groups (train)",
    "step time vs GRPO",
    "seeds",
]


def _headline_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The headline table: one row per method; accuracies in percent with bootstrap intervals."""
    grpo_step = _train_mean(results, "grpo", "time_per_step")
    rows = []
    for key in _present(results):
        entry = _methods(results)[key]
        step = _train_mean(results, key, "time_per_step")
        ratio = f"{step / grpo_step:.2f}×" if step is not None and grpo_step else "–"
        attr = _cell(results, key, "A", "greedy/attr")
        cons = _cell(results, key, "A", "greedy/consistent")
        rows.append(
            [
                _label(results, key),
                _ci(_cell(results, key, "A", "greedy/correct")),
                _ci(_cell(results, key, "A", "sampled/correct")),
                _ci(_cell(results, key, "B", "greedy/correct")),
                _pct(attr["mean"]) if attr else "–",
                _pct(cons["mean"]) if cons else "–",
                _pct(_train_mean(results, key, "all_fail_share")),
                ratio,
                str(len(entry.get("runs", []))) if key != "sft" else "–",
            ]
        )
    return HEADLINE, rows


def markdown_table(results: dict[str, Any]) -> str:
    """The README headline table (markdown)."""
    return _md(*_headline_rows(results))


COMPARISON_HEADER = [
    "comparison",
    "Δ greedy A [95% CI], p",
    "Δ greedy B [95% CI], p",
    "Δ sampled A [95% CI], p",
    "Δ attr A [95% CI], p",
    "seed pairs",
]


def _comparison_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """One row per comparison ``a vs b``: Δ = a − b in points, pooled over seeds."""
    rows = []
    for key, cmp in (results.get("comparisons") or {}).items():
        a, b = key.split(" vs ")
        cmp = cmp or {}
        seeds = {c.get("n_seeds", 1) for c in cmp.values() if c}  # one pair: McNemar / t
        rows.append(
            [
                f"{_label(results, a)} vs {_label(results, b)}",
                _delta(cmp.get("A/greedy/correct")),
                _delta(cmp.get("B/greedy/correct")),
                _delta(cmp.get("A/sampled/correct")),
                _delta(cmp.get("A/greedy/attr")),
                "/".join(str(s) for s in sorted(x for x in seeds if x is not None)) or "–",
            ]
        )
    return COMPARISON_HEADER, rows


def comparisons_table(results: dict[str, Any]) -> str:
    """The paired comparisons (markdown): Δ in points with its 95% interval and p."""
    return _md(*_comparison_rows(results))


# ------------------------------------------------------------------------------ verdict
def _seed_std(cell: dict[str, Any] | None) -> float:
    per_seed = (cell or {}).get("per_seed") or []
    return float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0


def _compare_sentences(results: dict[str, Any], a: str, b: str, *, yes: str, no: str) -> list[str]:
    """Does ``a`` beat ``b``? Yes iff greedy accuracy has Δ > 0 and p < ALPHA on every held-out
    set; the sentences give the numbers either way."""
    la, lb = _label(results, a), _OBJECT.get(b, _label(results, b))
    methods = _methods(results)
    if a not in methods or b not in methods:
        return [f"{la} and {lb} were not both run, so there is no comparison."]
    cmp = (results.get("comparisons") or {}).get(f"{a} vs {b}") or {}
    parts, sig_pos, sig_neg, untested = [], [], [], []
    for s in SETS:
        ca = _cell(results, a, s, "greedy/correct")
        cb = _cell(results, b, s, "greedy/correct")
        c = cmp.get(f"{s}/greedy/correct")
        means = f"{_pct(ca['mean'])} vs {_pct(cb['mean'])}" if ca and cb else "not evaluated"
        if not c:
            untested.append(s)
            why = "fewer than two seed pairs" if f"{s}/greedy/correct" in cmp else "not compared"
            parts.append(f"{s} {means} (no paired test: {why})")
            continue
        parts.append(
            f"{s} {means} (Δ {_pts(c['diff'])} points, 95% CI [{_pts(c['lo'])}, "
            f"{_pts(c['hi'])}], {_p_phrase(c['p'])})"
        )
        if c["p"] < ALPHA and c["diff"] > 0:
            sig_pos.append(s)
        elif c["p"] < ALPHA and c["diff"] < 0:
            sig_neg.append(s)
    win = len(sig_pos) == len(SETS)
    head = (
        f"{la} {yes} {lb} on both held-out sets"
        if win
        else f"{la} {no} {lb} (that needs a significant gain on both held-out sets)"
    )
    out = [f"{head}: greedy accuracy {'; '.join(parts)}."]
    if sig_pos and not win:
        out.append(f"The gain is significant (p < {ALPHA:g}) on {_join(sig_pos)} only.")
    if sig_neg:
        out.append(f"{lb[0].upper() + lb[1:]} is significantly better on {_join(sig_neg)}.")
    if not sig_pos and not sig_neg and not untested:
        out.append(f"No difference is significant at p < {ALPHA:g}.")
    for s in sig_pos:
        spread = max(
            _seed_std(_cell(results, a, s, "greedy/correct")),
            _seed_std(_cell(results, b, s, "greedy/correct")),
        )
        diff = cmp[f"{s}/greedy/correct"]["diff"]
        if diff < spread:
            out.append(
                f"On {s} the gain ({_pts(diff)} points) is smaller than the seed-to-seed std "
                f"({100 * spread:.1f} points): within what a re-run can produce."
            )
    return out


#: The verdict's comparisons (a, b, verb if a wins, verb if not); the first is always stated.
VERDICT_PAIRS = (
    ("ivr", "grpo", "beats", "does not beat"),
    ("ivr", "resample", "beats", "does not beat"),
    ("grpo", "sft", "improves on", "does not improve on"),
    ("ivr", "sft", "improves on", "does not improve on"),
)


def _verdict_paragraphs(results: dict[str, Any]) -> list[str]:
    """One paragraph per comparison: IVR-R1 vs GRPO, vs the resample control, RL vs SFT."""
    methods = _methods(results)
    return [
        " ".join(_compare_sentences(results, a, b, yes=yes, no=no))
        for i, (a, b, yes, no) in enumerate(VERDICT_PAIRS)
        if i == 0 or (a in methods and b in methods)
    ]


def verdict(results: dict[str, Any]) -> str:
    """Plain sentences, each following from the paired comparisons: a method beats another iff
    its greedy accuracy is higher with p < 0.05 on BOTH held-out sets (A and B)."""
    return " ".join(_verdict_paragraphs(results))


# ------------------------------------------------------------------------------ rectification
def _rectification(results: dict[str, Any], method: str) -> dict[str, Any] | None:
    """A method's rectification statistics summed (counts) or averaged (shares) over its runs."""
    train = _train(results, method)
    rects = [t["rectification"] for t in train.values() if t.get("rectification")]
    if not rects:
        return None
    critiqued = sum(r["critiqued"] for r in rects)
    accepted = sum(r["accepted"] for r in rects)
    rounds = max(len(r["accepted_per_round"]) for r in rects)
    per_round = [
        sum(r["accepted_per_round"][k] for r in rects if k < len(r["accepted_per_round"]))
        for k in range(rounds)
    ]
    generations = sum(r.get("generations", 0.0) for r in rects)
    before = [t["all_fail_share"] for t in train.values() if "all_fail_share" in t]
    return {
        "runs": len(rects),
        "critiqued": critiqued,
        "accepted": accepted,
        "success_rate": accepted / critiqued if critiqued else 0.0,
        "accepted_per_round": per_round,
        "generations": generations,
        "all_fail_before": float(np.mean(before)) if before else None,
        "all_fail_after": float(np.mean([r["all_fail_after"] for r in rects])),
    }


RECT_HEADER = [
    "method",
    "runs",
    "critiqued",
    "accepted",
    "success rate",
    "accepted per round",
    "generations",
    "generations per accepted",
    "all-fail groups before",
    "all-fail groups after",
]


def _rectification_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    rows = []
    for key in RECTIFYING:
        r = _rectification(results, key)
        if r is None:
            continue
        rows.append(
            [
                _label(results, key),
                str(r["runs"]),
                f"{r['critiqued']:.0f}",
                f"{r['accepted']:.0f}",
                _pct(r["success_rate"]),
                " / ".join(f"{x:.0f}" for x in r["accepted_per_round"]),
                f"{r['generations']:.0f}",
                f"{r['generations'] / r['accepted']:.1f}" if r["accepted"] else "–",
                _pct(r["all_fail_before"]),
                _pct(r["all_fail_after"]),
            ]
        )
    return RECT_HEADER, rows


# ------------------------------------------------------------------------------ re-reasoning
_MODES = {
    "image": "critique + rectify, image",
    "description": "critique + rectify, own description",
    "resample": "resample the original prompt",
}


def _rereason_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    rr = results.get("rereason") or {}
    rounds = max(
        (len(m["accuracy_by_round"]) for per in rr.values() for m in per.values()), default=0
    )
    header = ["model", "test-time loop", "initial", *[f"round {t}" for t in range(1, rounds)]]
    header.append("generations")
    rows = []
    for model, per in rr.items():
        for mode, m in per.items():
            curve = [_pct(a) for a in m["accuracy_by_round"]]
            label = (
                _label(results, model.rsplit("_s", 1)[0])
                if model != "sft"
                else _label(results, "sft")
            )
            rows.append(
                [
                    f"{label} ({model})",
                    _MODES.get(mode, mode),
                    *curve,
                    str(m.get("generations", "–")),
                ]
            )
    return header, rows


def rereason_table(results: dict[str, Any]) -> str:
    """Test-time re-reasoning (paper Fig. 5) as markdown: accuracy (%) after the greedy answer and
    after each round, per model and loop, with the generations each loop spent."""
    return _md(*_rereason_rows(results))


__all__ = ["comparisons_table", "markdown_table", "rereason_table", "verdict"]
