r"""Offline scoring of a JSONL of model outputs (``ivr score FILE``).

Users evaluate models we never ran (an API, another framework) with the exact graders used as
training rewards, so the numbers in their tables and ours mean the same thing. One JSON object
per line, two kinds of rows (they may be mixed):

- answer rows: ``{"completion": ..., "answer": ..., "answer_type"?, "choices"?, "precision"?,
  "unit"?}``: graded by ``accuracy_reward`` (last ``\boxed{}``) and ``format_reward``;
- localization rows: ``{"completion": ..., "boxes": [[x1, y1, x2, y2], ...], "image_size":
  [w, h], "input_size"?, "labels"?}``: scored by the Vision-R1 reward at its initial thresholds
  (``progress`` 0 unless a row says otherwise).

``completion`` may be a string or a chat message list; ``response`` is taken where there is no
``completion`` (the predictions of ``ivr eval``, ``eval/<run>/<benchmark>/predictions.jsonl``, so
they can be re-graded as they are). Other keys are carried along and ignored.
A row with nothing to grade (a null ``answer``, an ``answer_type`` the accuracy reward does not
apply to, such as ``boxes`` without boxes) is skipped: counted, and listed with its line and why.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from ivr.rewards.answer import accuracy_reward, resolve_answer_type
from ivr.rewards.format import format_reward
from ivr.rewards.localization import LocalizationReward

_LOCALIZATION = LocalizationReward()  # the paper's settings, initial thresholds at progress 0


def _load_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    rows: list[tuple[int, dict[str, Any]]] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})"
                ) from None
            if not isinstance(row, dict):
                raise ValueError(
                    f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}"
                )
            if "completion" not in row:
                if "response" not in row:
                    raise ValueError(
                        f"{path}:{lineno}: missing key 'completion' (or 'response', as in "
                        "ivr eval's predictions.jsonl): the model's output to grade"
                    )
                row = {**row, "completion": row["response"]}
            if "answer" not in row and "boxes" not in row:
                raise ValueError(
                    f"{path}:{lineno}: needs 'answer' (QA row) or 'boxes' (localization row)"
                )
            if "boxes" in row and row["boxes"] is not None and "image_size" not in row:
                raise ValueError(f"{path}:{lineno}: a row with 'boxes' needs 'image_size' [w, h]")
            rows.append((lineno, row))
    return rows


def _score_row(path: Path, lineno: int, row: dict[str, Any]) -> dict[str, Any]:
    """Scores of one row; ground-truth errors are re-raised with the file and line."""
    try:
        if row.get("boxes") is not None:
            parts = _LOCALIZATION.components(
                [row["completion"]],
                boxes=[row["boxes"]],
                image_size=[row["image_size"]],
                input_size=[row.get("input_size")],
                progress=[row.get("progress") or 0.0],
                labels=[row.get("labels")],
            )
            return {"kind": "boxes", **{k: v[0] for k, v in parts.items()}}
        if row.get("answer") is None:
            return {"kind": "n/a", "why": "'answer' is null (and no 'boxes')"}
        kind = resolve_answer_type(row["answer"], row.get("answer_type"), row.get("choices"))
        if kind is None:  # e.g. answer_type "boxes" without boxes: nothing to grade
            return {
                "kind": "n/a",
                "why": f"answer_type {row.get('answer_type')!r} is not graded by the accuracy "
                "reward (a localization row needs 'boxes' and 'image_size')",
            }
        columns = {
            k: [row.get(k)] for k in ("answer", "choices", "answer_type", "precision", "unit")
        }
        acc = accuracy_reward([row["completion"]], **columns)[0]
        fmt = format_reward([row["completion"]])[0]
        return {"kind": kind, "accuracy": acc, "format": fmt}
    except ValueError as e:
        raise ValueError(f"{path}:{lineno}: {e}") from None


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def score_file(path: str | Path) -> dict[str, Any]:
    r"""Grade a JSONL of predictions; accuracy overall and per answer type, localization means.

    Returns ``{"path", "n", "n_skipped", "skipped": [{"line", "why"}], "n_answer", "accuracy",
    "format", "by_type": {type: {"n", "accuracy", "format"}}, "localization": {"n", "format",
    "recall", "precision", "total"} or None}``. Raises ValueError naming the file and line of a
    malformed line.

    >>> import tempfile, os
    >>> rows = [{"completion": r"<desc>d</desc><think>t</think>\boxed{B}", "answer": "4",
    ...          "choices": ["3", "4"]},
    ...         {"completion": r"\boxed{12 cm}", "answer": "12"},
    ...         {"completion": r"\boxed{13}", "answer": "12"}]
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = os.path.join(d, "preds.jsonl")
    ...     _ = open(p, "w").write("\n".join(json.dumps(r) for r in rows))
    ...     res = score_file(p)
    >>> res["accuracy"], res["by_type"]["integer"], res["format"]
    (0.6666666666666666, {'n': 2, 'accuracy': 0.5, 'format': 0.0}, 0.3333333333333333)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    scored = [{**_score_row(path, lineno, row), "line": lineno} for lineno, row in _load_rows(path)]
    answers = [s for s in scored if s["kind"] not in ("boxes", "n/a")]
    boxes = [s for s in scored if s["kind"] == "boxes"]
    by_type: dict[str, dict[str, Any]] = {}
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in answers:
        groups[s["kind"]].append(s)
    for kind in sorted(groups):
        g = groups[kind]
        by_type[kind] = {
            "n": len(g),
            "accuracy": _mean([s["accuracy"] for s in g]),
            "format": _mean([s["format"] for s in g]),
        }
    localization = None
    if boxes:
        localization = {"n": len(boxes)}
        for key in ("format", "recall", "precision", "reward"):
            localization["total" if key == "reward" else key] = _mean([s[key] for s in boxes])
    return {
        "path": str(path),
        "n": len(scored),
        "n_skipped": len(scored) - len(answers) - len(boxes),
        "skipped": [{"line": s["line"], "why": s["why"]} for s in scored if s["kind"] == "n/a"],
        "n_answer": len(answers),
        "accuracy": _mean([s["accuracy"] for s in answers]),
        "format": _mean([s["format"] for s in answers]),
        "by_type": by_type,
        "localization": localization,
    }


def _rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100.0 * x:.1f}"


def format_score_table(result: dict[str, Any]) -> str:
    r"""A plain-text table of a ``score_file`` result, for the terminal or a paper draft.

    >>> print(format_score_table({"path": "p.jsonl", "n": 3, "n_answer": 3, "accuracy": 2 / 3,
    ...     "format": 1 / 3, "by_type": {"choice": {"n": 1, "accuracy": 1.0, "format": 1.0},
    ...     "integer": {"n": 2, "accuracy": 0.5, "format": 0.0}}, "localization": None}))
    p.jsonl: 3 rows
    type           n   accuracy %   format %
    choice         1        100.0      100.0
    integer        2         50.0        0.0
    all            3         66.7       33.3
    """
    skipped = result.get("n_skipped", 0)
    head = f"{result['path']}: {_rows(result['n'])}"
    lines = [head + (f" ({result['n'] - skipped} scored, {skipped} skipped)" if skipped else "")]
    if result["n_answer"]:
        lines.append(f"{'type':<10} {'n':>5} {'accuracy %':>12} {'format %':>10}")
        for kind, s in result["by_type"].items():
            lines.append(
                f"{kind:<10} {s['n']:>5} {_pct(s['accuracy']):>12} {_pct(s['format']):>10}"
            )
        lines.append(
            f"{'all':<10} {result['n_answer']:>5} {_pct(result['accuracy']):>12} {_pct(result['format']):>10}"
        )
    loc = result.get("localization")
    if loc:
        lines.append(
            f"localization ({_rows(loc['n'])}, Vision-R1 reward): format {loc['format']:.3f}  "
            f"recall {loc['recall']:.3f}  precision {loc['precision']:.3f}  total {loc['total']:.3f} / 3"
        )
    reasons = result.get("skipped") or []
    for s in reasons[:10]:
        lines.append(f"skipped line {s['line']}: {s['why']}")
    if len(reasons) > 10:
        lines.append(f"… and {len(reasons) - 10} more skipped rows")
    return "\n".join(lines)
