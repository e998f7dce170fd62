"""The demo report: table numbers, the verdict, the inspector, and a real headless-browser render."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from ivr.report import markdown_table, verdict, write_report


def fake_run(tmp_path: Path) -> tuple[Path, dict]:
    out = tmp_path / "demo"
    data = out / "data"
    (data / "images").mkdir(parents=True)
    Image.new("RGB", (112, 112), "red").save(data / "images" / "000001.png")
    (data / "train.jsonl").write_text(json.dumps({"id": "t1", "image": "images/000001.png"}) + "\n")
    for name, off in (("grpo_s0", 0.0), ("ivr_s0", 0.2)):
        run = out / "rl" / name
        run.mkdir(parents=True)
        rows = [
            {
                "step": s,
                "reward/mean": 0.5 + 0.01 * s,
                "reward/accuracy": 0.5,
                "loss/kl": 0.0,
                "loss/off_policy_token_share": off,
                "time/step": 1.0,
            }
            for s in range(1, 4)
        ]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    trace = {
        "step": 1,
        "id": "t1",
        "question": "How many red circles?",
        "answer": "2",
        "original": "<desc>a blue circle</desc> \\boxed{0}\x00",
        "original_reward": 0.1,
        "accepted": True,
        "rounds": [
            {
                "round": 1,
                "critique": "The image shows a red circle <b>",
                "rectified": "\\boxed{2}",
                "reward": 1.0,
                "accepted": True,
            }
        ],
    }
    (out / "rl" / "ivr_s0" / "traces.jsonl").write_text(json.dumps(trace) + "\n")
    results = {
        "profile": "test",
        "seeds": [0, 1, 2],
        "image_blind": {"all": 0.36},
        "methods": {
            "zero_shot": {"accuracy": 0.0},
            "sft": {"accuracy": 0.6, "format": 1.0, "desc_exact": 0.5},
            "grpo": {"accuracy": 0.70, "accuracy_std": 0.01, "desc_exact": 0.3},
            "ivr": {
                "accuracy": 0.74,
                "accuracy_std": 0.02,
                "desc_exact": 0.5,
                "rectification": {"success_rate": 0.4, "accepted_per_round": [3.0, 1.0, 0.0]},
            },
        },
        "ablations": {
            "rereason": {
                "image": {"accuracy_by_round": [0.5, 0.6, 0.65, 0.7], "n": 10},
                "description": {"accuracy_by_round": [0.5, 0.55, 0.56, 0.57], "n": 10},
            }
        },
    }
    return out, results


def test_table_and_verdict_numbers(tmp_path) -> None:
    _, results = fake_run(tmp_path)
    table = markdown_table(results)
    # 0.70 ± 0.01 → "70.0 ± 1.0"; 0.74 ± 0.02 → "74.0 ± 2.0"; the blind baseline 0.36 → "36.0"
    assert "| GRPO | 70.0 ± 1.0 |" in table and "| IVR-R1 | 74.0 ± 2.0 |" in table
    assert "| image-blind baseline | 36.0 |" in table
    v = verdict(results)
    # difference 4.0 points > the larger spread 2.0 → a win, stated with both numbers
    assert v.startswith("IVR-R1 beats GRPO here: 74.0 vs 70.0") and "+4.0 points" in v
    assert "accepted 40% of the critiqued failures (per round: 3, 1, 0)" in v
    assert "SFT cold start: 60.0." in v  # 0.74 > 0.60: RL improved on SFT
    results["methods"]["ivr"]["accuracy"] = 0.69  # −1.0 point, within the 2.0 spread
    assert verdict(results).startswith("IVR-R1 and GRPO are within seed noise here")
    results["methods"]["ivr"]["accuracy"] = 0.60
    assert verdict(results).startswith("IVR-R1 does NOT beat GRPO here")
    results["methods"]["grpo"]["accuracy"] = 0.59  # both at or below SFT's 0.60
    assert "Neither RL method improves on the SFT cold start (60.0)" in verdict(results)


def test_report_html_is_self_contained(tmp_path) -> None:
    out, results = fake_run(tmp_path)
    page = write_report(out, results, data=out / "data").read_text()
    assert (
        "\x00" not in page and "<b>" not in page.split("Rollout inspector")[1].split("critique")[0]
    )
    assert "&lt;b&gt;" in page  # model text is escaped, not rendered
    assert page.count("data:image/png;base64,") == 3  # curves, re-reasoning plot, the scene image
    assert "ACCEPTED" in page and "How many red circles?" in page
    assert "http://" not in page and "https://" not in page  # no external assets


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)"
)
def test_report_renders_in_headless_chromium(tmp_path) -> None:
    out, results = fake_run(tmp_path)
    page = write_report(out, results, data=out / "data")
    shot = tmp_path / "report.png"
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}",
        "--window-size=1200,2000",
        page.as_uri(),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    img = Image.open(shot).convert("RGB")
    assert img.size == (1200, 2000)
    # The page really rendered: many distinct colours (plots, text), not a blank or error page.
    colours = img.resize((300, 500)).getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 50
    # The scene image (pure red 112 px) is drawn somewhere on the page.
    assert any(c[1] == (255, 0, 0) and c[0] > 500 for c in img.getcolors(maxcolors=1 << 20))
