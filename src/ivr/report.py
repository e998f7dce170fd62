"""A static, self-contained HTML report of a demo run (no server, no external assets).

Sections: the results table (paper Table 1 layout: methods as rows, mean ± std over seeds), a
verdict that says plainly whether IVR-R1 beat GRPO here, training curves (reward, accuracy, KL,
off-policy share), the ablations (k; re-reasoning with the image vs a description, per round, as
the paper's Fig. 5), and a rollout inspector: for sampled failed rollouts, the image, the original
answer, each critique and rectification, and whether it was accepted.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LABELS = {"zero_shot": "Zero-shot", "sft": "SFT cold start", "grpo": "GRPO", "ivr": "IVR-R1"}
CURVES = [
    ("reward/mean", "reward"),
    ("reward/accuracy", "train accuracy (sampled)"),
    ("loss/kl", "KL to reference"),
    ("loss/off_policy_token_share", "off-policy token share"),
]


_CONTROL = dict.fromkeys(c for c in range(32) if c not in (9, 10, 13))


def _esc(text: str) -> str:
    """HTML-escape model output, dropping control bytes (an untrained model emits NULs)."""
    return html.escape(str(text).translate(_CONTROL))


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _img_file(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _fmt(entry: dict[str, Any], key: str) -> str:
    if key not in entry:
        return "–"
    std = entry.get(f"{key}_std", 0.0)
    return f"{100 * entry[key]:.1f}" + (f" ± {100 * std:.1f}" if std else "")


def results_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    methods = results["methods"]
    tasks = sorted(
        {
            k
            for m in methods.values()
            for k in m
            if k.startswith("accuracy/") and not k.endswith("_std")
        }
    )
    cols = ["accuracy", *tasks, "format", "desc_exact", "desc_f1"]
    header = ["method", *[c.replace("accuracy/", "acc: ") for c in cols]]
    rows = []
    for key in ("zero_shot", "sft", "grpo", "ivr"):
        if key in methods:
            rows.append([LABELS[key], *[_fmt(methods[key], c) for c in cols]])
    blind = results.get("image_blind") or {}
    if blind:
        overall = blind.get("overall", blind.get("all"))
        value = overall if isinstance(overall, (int, float)) else None
        rows.append(
            [
                "image-blind baseline",
                f"{100 * value:.1f}" if value is not None else "–",
                *["–"] * (len(cols) - 1),
            ]
        )
    return header, rows


def markdown_table(results: dict[str, Any]) -> str:
    header, rows = results_table(results)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def verdict(results: dict[str, Any]) -> str:
    m = results["methods"]
    if "grpo" not in m or "ivr" not in m:
        return "Only some methods ran; no comparison."
    g, i = m["grpo"], m["ivr"]
    diff = i["accuracy"] - g["accuracy"]
    spread = max(g.get("accuracy_std", 0.0), i.get("accuracy_std", 0.0))
    n = len(results.get("seeds", []))
    if abs(diff) <= spread:
        head = (
            f"IVR-R1 and GRPO are within seed noise here: {100 * i['accuracy']:.1f} vs "
            f"{100 * g['accuracy']:.1f} held-out accuracy (difference {100 * diff:+.1f} points, "
            f"seed spread {100 * spread:.1f}, {n} seeds)."
        )
    elif diff > 0:
        head = (
            f"IVR-R1 beats GRPO here: {100 * i['accuracy']:.1f} vs {100 * g['accuracy']:.1f} held-out "
            f"accuracy ({100 * diff:+.1f} points; seed spread {100 * spread:.1f}, {n} seeds)."
        )
    else:
        head = (
            f"IVR-R1 does NOT beat GRPO here: {100 * i['accuracy']:.1f} vs {100 * g['accuracy']:.1f} "
            f"held-out accuracy ({100 * diff:+.1f} points; seed spread {100 * spread:.1f}, {n} seeds)."
        )
    sft = m.get("sft", {}).get("accuracy")
    if sft is not None:
        best = max(g["accuracy"], i["accuracy"])
        if best <= sft:
            head += (
                f" Neither RL method improves on the SFT cold start ({100 * sft:.1f}) within this "
                "budget of steps."
            )
        else:
            head += f" SFT cold start: {100 * sft:.1f}."
    rect = i.get("rectification")
    if rect:
        head += (
            f" The re-reasoning loop accepted {100 * rect['success_rate']:.0f}% of the critiqued "
            f"failures (per round: {', '.join(f'{x:.0f}' for x in rect['accepted_per_round'])})."
        )
    if "desc_exact" in g and "desc_exact" in i:
        head += (
            f" Description exactness (grounding): GRPO {100 * g['desc_exact']:.1f}, "
            f"IVR-R1 {100 * i['desc_exact']:.1f}."
        )
    return head


_METHOD_RUN = re.compile(r"^(grpo|ivr)(_k\d+)?_s\d+$")  # not the localization ablation's runs


def _curves(out: Path) -> str | None:
    runs = sorted(
        p
        for p in (out / "rl").glob("*")
        if _METHOD_RUN.match(p.name) and (p / "metrics.jsonl").is_file()
    )
    if not runs:
        return None
    fig, axes = plt.subplots(1, len(CURVES), figsize=(4 * len(CURVES), 3))
    for run in runs:
        rows = [
            json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()
        ]
        colour = "tab:orange" if run.name.startswith("ivr") else "tab:blue"
        style = "-" if "_k" not in run.name else ":"
        for ax, (key, title) in zip(axes, CURVES):
            xs = [r["step"] for r in rows if r.get(key) is not None]
            ys = [r[key] for r in rows if r.get(key) is not None]
            if xs:
                ax.plot(xs, ys, style, color=colour, alpha=0.7, label=run.name)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("step", fontsize=8)
    axes[0].legend(fontsize=6)
    return _png(fig)


def _rereason_plot(ablations: dict[str, Any]) -> str | None:
    rr = ablations.get("rereason")
    if not rr:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for context, res in rr.items():
        curve = res["accuracy_by_round"]
        ax.plot(
            range(len(curve)), [100 * c for c in curve], marker="o", label=f"rectify with {context}"
        )
    ax.set_xticks(range(4), ["initial", "round 1", "round 2", "round 3"])
    ax.set_ylabel("accuracy (%)")
    ax.set_title("test-time re-reasoning (oracle screen)", fontsize=9)
    ax.legend(fontsize=8)
    return _png(fig)


def _inspector(out: Path, data: Path | None, limit: int = 12) -> str:
    runs = sorted((out / "rl").glob("ivr_s*")) if (out / "rl").is_dir() else []
    traces_file = next((r / "traces.jsonl" for r in runs if (r / "traces.jsonl").is_file()), None)
    if traces_file is None:
        return "<p>No IVR traces were recorded.</p>"
    images: dict[str, Path] = {}
    if data is not None and (data / "train.jsonl").is_file():
        for line in (data / "train.jsonl").read_text().splitlines():
            row = json.loads(line)
            if row.get("image"):
                images[str(row["id"])] = data / row["image"]
    traces = [json.loads(x) for x in traces_file.read_text().splitlines() if x.strip()]
    accepted = [t for t in traces if t["accepted"]]
    rejected = [t for t in traces if not t["accepted"]]
    chosen = accepted[: limit // 2] + rejected[: limit - min(len(accepted), limit // 2)]
    cards = []
    e = _esc
    for t in chosen:
        img = images.get(str(t["id"]))
        img_html = (
            f'<img class="scene" src="{_img_file(img)}" alt="scene {e(str(t["id"]))}">'
            if img and img.is_file()
            else ""
        )
        rounds = "".join(
            f'<div class="round {"ok" if r["accepted"] else "bad"}"><b>round {r["round"]}</b> '
            f"(reward {r['reward']:.2f}, {'accepted' if r['accepted'] else 'rejected'})"
            f'<div class="label">critique</div><pre>{e(r["critique"])}</pre>'
            f'<div class="label">rectification</div><pre>{e(r["rectified"])}</pre></div>'
            for r in t["rounds"]
        )
        cards.append(
            f'<div class="card {"ok" if t["accepted"] else "bad"}"><div class="head">{img_html}<div>'
            f"<b>step {t.get('step', '?')}</b> · id {e(str(t['id']))}<br>{e(t['question'])}<br>"
            f"gold: <code>{e(str(t['answer']))}</code> · {'ACCEPTED' if t['accepted'] else 'not accepted'}"
            f'</div></div><div class="label">original (reward {t["original_reward"]:.2f})</div>'
            f"<pre>{e(t['original'])}</pre>{rounds}</div>"
        )
    return (
        f"<p>{len(traces)} critiqued failures in {e(traces_file.parent.name)}; "
        f"{len(accepted)} accepted. Showing {len(chosen)}.</p>" + "".join(cards)
    )


CSS = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}
td:first-child,th:first-child{text-align:left}.verdict{background:#f4f4f8;padding:1em;border-left:4px solid #557}
.card{border:1px solid #ddd;margin:1em 0;padding:.6em}.card.ok{border-left:4px solid #2a2}.card.bad{border-left:4px solid #c33}
.head{display:flex;gap:1em;align-items:flex-start}.scene{width:112px;height:112px;image-rendering:pixelated;border:1px solid #999}
pre{white-space:pre-wrap;background:#fafafa;padding:.4em;margin:.2em 0;font-size:12px}.label{font-size:11px;color:#666}
.round{margin-left:1em;padding-left:.5em;border-left:2px solid #ccc}.round.ok{border-color:#2a2}
"""


def write_report(
    out: str | Path, results: dict[str, Any], *, data: str | Path | None = None
) -> Path:
    out = Path(out)
    data = Path(data) if data else None
    e = _esc
    header, rows = results_table(results)
    table = (
        "<table><tr>"
        + "".join(f"<th>{e(h)}</th>" for h in header)
        + "</tr>"
        + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
        + "</table>"
    )
    parts = [
        f"<h1>IVR-R1 demo — profile {e(str(results.get('profile')))}</h1>",
        f"<p>Seeds: {results.get('seeds')}. Held-out split of the synthetic world; accuracy in %, "
        "mean ± std over RL seeds. desc_exact / desc_f1: how faithfully the model's own &lt;desc&gt; "
        "matches the true scene (visual grounding).</p>",
        "<h2>Results</h2>",
        table,
        f'<p class="verdict" id="verdict">{e(verdict(results))}</p>',
    ]
    curves = _curves(out)
    if curves:
        parts += [
            "<h2>Training curves</h2>",
            f'<img src="{curves}" alt="training curves" style="max-width:100%">',
        ]
    abl = results.get("ablations") or {}
    if abl:
        parts.append("<h2>Ablations</h2>")
        if "k" in abl:
            parts.append(
                "<h3>Rectified traces per group (k)</h3><table><tr><th>k</th><th>accuracy</th>"
                "<th>desc_exact</th></tr>"
                + "".join(
                    f"<tr><td>{e(k)}</td><td>{100 * v.get('accuracy', 0):.1f}</td>"
                    f"<td>{100 * v.get('desc_exact', 0):.1f}</td></tr>"
                    for k, v in sorted(abl["k"].items())
                )
                + "</table>"
            )
        plot = _rereason_plot(abl)
        if plot:
            parts += [
                "<h3>Re-reasoning with the image vs a description (paper Fig. 5)</h3>",
                f'<img src="{plot}" alt="re-reasoning rounds">',
            ]
        if "localization" in abl:
            parts.append(
                "<h3>Vision-R1 localization</h3><pre>"
                + e(json.dumps(abl["localization"], indent=1))
                + "</pre>"
            )
    parts += ["<h2>Rollout inspector</h2>", _inspector(out, data)]
    if results.get("timings_s"):
        parts.append(
            "<h2>Timings</h2><pre>" + e(json.dumps(results["timings_s"], indent=1)) + "</pre>"
        )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>IVR-R1 demo report</title>"
        f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>"
    )
    path = out / "report.html"
    path.write_text(page)
    return path
