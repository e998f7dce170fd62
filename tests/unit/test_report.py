"""The demo report: table cells and verdict sentences worked out by hand from a fake results.json
(ivr.demo.results.summarise's schema), the inspector, and a real headless-browser render."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from ivr.demo.report import write_report
from ivr.demo.tables import comparisons_table, markdown_table, rereason_table, verdict


def cell(mean: float, lo: float, hi: float, per_seed: list[float]) -> dict:
    return {"mean": mean, "lo": lo, "hi": hi, "n": 200, "per_seed": per_seed}


def cmp(diff: float, lo: float, hi: float, p: float) -> dict:
    return {
        "test": "sign_on_seed_means",
        "n_seeds": 3,
        "n": 200,
        "diff": diff,
        "lo": lo,
        "hi": hi,
        "p": p,
        "n_pos": 30,
        "n_neg": 20,
        "n_ties": 150,
        "per_seed_diff": [diff, diff, diff],
    }


def rect(critiqued, accepted, per_round, generations, after) -> dict:
    return {
        "critiqued": critiqued,
        "accepted": accepted,
        "success_rate": accepted / critiqued,
        "accepted_per_round": per_round,
        "generations": generations,
        "all_fail_after": after,
    }


def method(label, runs, a, sampled, b, attr, cons, train=None) -> dict:
    entry = {
        "label": label,
        "runs": runs,
        "A": {
            "greedy/correct": a,
            "sampled/correct": sampled,
            "greedy/attr": cell(attr, attr - 0.03, attr + 0.03, [attr]),
            "greedy/consistent": cell(cons, cons - 0.03, cons + 0.03, [cons]),
        },
        "B": {"greedy/correct": b},
    }
    if train is not None:
        entry["train"] = train
    return entry


def fake_results() -> dict:
    g = ["grpo_s0", "grpo_s1", "grpo_s2"]
    r = ["resample_s0", "resample_s1", "resample_s2"]
    i = ["ivr_s0", "ivr_s1", "ivr_s2"]
    methods = {
        # sr1 first: the table orders rows itself
        "sr1": method(
            "Vision-SR1 self-reward",
            ["sr1_s0"],
            cell(0.66, 0.63, 0.69, [0.66]),
            cell(0.62, 0.59, 0.65, [0.62]),
            cell(0.64, 0.61, 0.67, [0.64]),
            0.45,
            0.74,
            {"sr1_s0": {"time_per_step": 2.4, "all_fail_share": 0.32}},
        ),
        "sft": method(
            "SFT cold start",
            ["sft"],
            cell(0.60, 0.57, 0.63, [0.60]),
            cell(0.55, 0.52, 0.58, [0.55]),
            cell(0.58, 0.55, 0.61, [0.58]),
            0.40,
            0.70,
        ),
        "grpo": method(
            "GRPO",
            g,
            cell(0.70, 0.671, 0.729, [0.69, 0.70, 0.71]),
            cell(0.66, 0.64, 0.68, [0.66, 0.66, 0.66]),
            cell(0.68, 0.651, 0.709, [0.67, 0.68, 0.69]),
            0.42,
            0.75,
            {
                "grpo_s0": {"time_per_step": 2.0, "all_fail_share": 0.30},
                "grpo_s1": {"time_per_step": 2.2, "all_fail_share": 0.20},
                "grpo_s2": {"time_per_step": 1.8, "all_fail_share": 0.25},
            },
        ),
        "resample": method(
            "Resample control",
            r,
            cell(0.726, 0.696, 0.756, [0.72, 0.726, 0.732]),
            cell(0.67, 0.65, 0.69, [0.67, 0.67, 0.67]),
            cell(0.687, 0.657, 0.717, [0.68, 0.687, 0.694]),
            0.43,
            0.76,
            {
                n: {
                    "time_per_step": 3.0,
                    "all_fail_share": 0.20,
                    "rectification": rect(30, 3, [1, 1, 1], 90, 0.20),
                }
                for n in r
            },
        ),
        "ivr": method(
            "IVR-R1 (image)",
            i,
            cell(0.731, 0.70, 0.76, [0.72, 0.731, 0.742]),
            cell(0.68, 0.66, 0.70, [0.68, 0.68, 0.68]),
            cell(0.69, 0.66, 0.72, [0.68, 0.69, 0.70]),
            0.37,
            0.78,
            {
                "ivr_s0": {
                    "time_per_step": 5.0,
                    "all_fail_share": 0.30,
                    "rectification": rect(40, 10, [6, 3, 1], 240, 0.15),
                },
                "ivr_s1": {
                    "time_per_step": 5.0,
                    "all_fail_share": 0.20,
                    "rectification": rect(60, 20, [12, 6, 2], 360, 0.10),
                },
                "ivr_s2": {
                    "time_per_step": 5.2,
                    "all_fail_share": 0.25,
                    "rectification": rect(20, 0, [0, 0, 0], 120, 0.20),
                },
            },
        ),
        "ivr_desc": method(
            "IVR-R1 (own description)",
            ["ivr_desc_s0"],
            cell(0.71, 0.68, 0.74, [0.71]),
            cell(0.67, 0.65, 0.69, [0.67]),
            cell(0.67, 0.64, 0.70, [0.67]),
            0.41,
            0.77,
            {
                "ivr_desc_s0": {
                    "time_per_step": 4.0,
                    "all_fail_share": 0.28,
                    "rectification": rect(40, 8, [5, 2, 1], 240, 0.22),
                }
            },
        ),
    }
    comparisons = {
        "ivr vs grpo": {
            "A/greedy/correct": cmp(0.031, 0.004, 0.059, 0.01),
            "A/sampled/correct": cmp(0.02, 0.001, 0.04, 0.0004),
            "A/greedy/attr": cmp(-0.05, -0.08, -0.02, 0.002),
            "B/greedy/correct": cmp(0.01, -0.015, 0.034, 0.3),
            "B/greedy/attr": cmp(0.0, -0.02, 0.02, 1.0),
        },
        "ivr vs resample": {
            "A/greedy/correct": cmp(0.005, -0.02, 0.03, 0.8),
            "B/greedy/correct": cmp(0.003, -0.02, 0.026, 0.9),
        },
        "ivr_desc vs grpo": {"A/greedy/correct": None, "B/greedy/correct": None},
        "grpo vs sft": {
            "A/greedy/correct": cmp(0.10, 0.07, 0.13, 0.0001),
            "B/greedy/correct": cmp(0.10, 0.07, 0.13, 0.0005),
        },
        "ivr vs sft": {
            "A/greedy/correct": cmp(0.131, 0.10, 0.16, 0.0001),
            "B/greedy/correct": cmp(0.11, 0.08, 0.14, 0.0002),
        },
    }
    return {
        "profile": "test",
        "seeds": [0, 1, 2],
        "rl_steps": 3,
        "coldstart": {
            "source": "built",
            "sft_seed": 0,
            "stage1_mined": {
                "prompts": 3000,
                "samples": 12000,
                "sampled_accuracy": 0.412,
                "all_fail_share": 0.25,
                "failure_kinds": {"format": 0.1, "perception": 0.6, "reasoning": 0.3},
            },
        },
        "sets": {"A": {"n": 200}, "B": {"n": 200}},
        "methods": methods,
        "comparisons": comparisons,
        "timings_s": {"worlds": 2.5, "rl": 70.0},
        "total_s": 72.5,
    }


def fake_run(tmp_path: Path) -> tuple[Path, dict]:
    out = tmp_path / "demo"
    data = out / "data"
    (data / "images").mkdir(parents=True)
    Image.new("RGB", (112, 112), "red").save(data / "images" / "000001.png")
    (data / "train.jsonl").write_text(json.dumps({"id": "t1", "image": "images/000001.png"}) + "\n")
    for name in ("grpo_s0", "grpo_s1", "ivr_s0"):
        run = out / "rl" / name
        run.mkdir(parents=True)
        rows = [
            {
                "step": s,
                "reward/mean": 0.5 + 0.01 * s,
                "reward/correct": 0.5,
                "reward/group_solved": 0.7,
                "loss/off_policy_token_share": 0.2 if name.startswith("ivr") else 0.0,
                "time/step": 1.0,
            }
            for s in range(1, 4)
        ]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    trace = {
        "step": 1,
        "id": "t1",
        "question": "What is the sum of the digits inside the red shapes?",
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
                "correct": True,
                "accepted": True,
            }
        ],
    }
    (out / "rl" / "ivr_s0" / "traces.jsonl").write_text(json.dumps(trace) + "\n")
    return out, fake_results()


def test_headline_table_cells() -> None:
    table = markdown_table(fake_results()).splitlines()
    assert table[0] == (
        "| method | greedy acc A [95% CI] | sampled acc A [95% CI] | greedy acc B [95% CI] | "
        "attr fidelity A | self-consistency A | all-fail groups (train) | step time vs GRPO | "
        "seeds |"
    )
    # rows in the fixed order, whatever the order of results["methods"]
    assert [r.split(" | ")[0] for r in table[2:]] == [
        "| SFT cold start",
        "| GRPO",
        "| Resample control",
        "| IVR-R1 (image)",
        "| IVR-R1 (own description)",
        "| Vision-SR1 self-reward",
    ]
    # SFT: no training, so no all-fail share, no step time, no seeds
    assert table[2] == (
        "| SFT cold start | 60.0 [57.0, 63.0] | 55.0 [52.0, 58.0] | 58.0 [55.0, 61.0] | 40.0 | "
        "70.0 | – | – | – |"
    )
    # GRPO: all-fail (0.30 + 0.20 + 0.25) / 3 = 25.0; step time 2.0 s / 2.0 s = 1.00×
    assert table[3] == (
        "| GRPO | 70.0 [67.1, 72.9] | 66.0 [64.0, 68.0] | 68.0 [65.1, 70.9] | 42.0 | 75.0 | "
        "25.0 | 1.00× | 3 |"
    )
    # IVR-R1: step time (5.0 + 5.0 + 5.2) / 3 = 5.067 s → 2.53× GRPO's 2.0 s
    assert table[5] == (
        "| IVR-R1 (image) | 73.1 [70.0, 76.0] | 68.0 [66.0, 70.0] | 69.0 [66.0, 72.0] | 37.0 | "
        "78.0 | 25.0 | 2.53× | 3 |"
    )
    assert table[4].endswith("| 20.0 | 1.50× | 3 |")  # resample: 3.0 s / 2.0 s
    assert table[6].endswith("| 28.0 | 2.00× | 1 |")  # ivr_desc: one ablation seed
    assert table[7].endswith("| 32.0 | 1.20× | 1 |")  # sr1: 2.4 / 2.0


def test_comparisons_table_cells() -> None:
    rows = {r.split(" | ")[0][2:]: r for r in comparisons_table(fake_results()).splitlines()[2:]}
    assert list(rows) == [
        "IVR-R1 (image) vs GRPO",
        "IVR-R1 (image) vs Resample control",
        "IVR-R1 (own description) vs GRPO",
        "GRPO vs SFT cold start",
        "IVR-R1 (image) vs SFT cold start",
    ]
    assert rows["IVR-R1 (image) vs GRPO"] == (
        "| IVR-R1 (image) vs GRPO | +3.1 [+0.4, +5.9], p = 0.010 | +1.0 [-1.5, +3.4], p = 0.300 | "
        "+2.0 [+0.1, +4.0], p < 0.001 | -5.0 [-8.0, -2.0], p = 0.002 | 3 |"
    )
    # no paired test (a single seed pair) → dashes, not zeros
    assert rows["IVR-R1 (own description) vs GRPO"] == (
        "| IVR-R1 (own description) vs GRPO | – | – | – | – | – |"
    )
    assert (
        "| +10.0 [+7.0, +13.0], p < 0.001 | +10.0 [+7.0, +13.0], p < 0.001 |"
        in (rows["GRPO vs SFT cold start"])
    )


def test_verdict_significant_on_one_set_only_is_not_a_win() -> None:
    # Δ = +3.1, p = 0.010 on A but Δ = +1.0, p = 0.300 on B: no win over GRPO
    v = verdict(fake_results())
    assert v.startswith(
        "IVR-R1 (image) does not beat GRPO (that needs a significant gain on both held-out "
        "sets): greedy accuracy A 73.1 vs 70.0 (Δ +3.1 points, 95% CI [+0.4, +5.9], p = 0.010); "
        "B 69.0 vs 68.0 (Δ +1.0 points, 95% CI [-1.5, +3.4], p = 0.300). "
        "The gain is significant (p < 0.05) on A only."
    )
    assert "beats GRPO" not in v
    # A +3.1 points > the larger seed std (IVR 1.1, GRPO 1.0): no re-run caveat
    assert "seed-to-seed" not in v
    # the control: neither set significant
    assert (
        "IVR-R1 (image) does not beat the resample control (that needs a significant gain on both "
        "held-out sets): greedy accuracy A 73.1 vs 72.6 (Δ +0.5 points, 95% CI [-2.0, +3.0], "
        "p = 0.800); B 69.0 vs 68.7 (Δ +0.3 points, 95% CI [-2.0, +2.6], p = 0.900). "
        "No difference is significant at p < 0.05."
    ) in v
    # RL vs SFT: significant gains on both sets
    assert (
        "GRPO improves on the SFT cold start on both held-out sets: greedy accuracy A 70.0 vs "
        "60.0 (Δ +10.0 points, 95% CI [+7.0, +13.0], p < 0.001); B 68.0 vs 58.0 (Δ +10.0 points, "
        "95% CI [+7.0, +13.0], p < 0.001)."
    ) in v
    assert "IVR-R1 (image) improves on the SFT cold start on both held-out sets" in v
    # ivr_desc and sr1 are in the tables, not the verdict
    assert "own description" not in v and "SR1" not in v


def test_verdict_win_loss_seed_noise_and_missing() -> None:
    results = fake_results()
    results["comparisons"]["ivr vs grpo"]["B/greedy/correct"] = cmp(0.02, 0.001, 0.04, 0.02)
    v = verdict(results)
    assert v.startswith("IVR-R1 (image) beats GRPO on both held-out sets: greedy accuracy A 73.1")
    assert "p = 0.020)." in v and "does not beat GRPO" not in v
    # the same gain with seeds that spread 8 points: say it is within a re-run's reach
    results["methods"]["ivr"]["A"]["greedy/correct"]["per_seed"] = [0.651, 0.731, 0.811]
    assert (
        "On A the gain (+3.1 points) is smaller than the seed-to-seed std (8.0 points): within "
        "what a re-run can produce."
    ) in verdict(results)
    # significantly worse on B
    results["comparisons"]["ivr vs grpo"]["B/greedy/correct"] = cmp(-0.03, -0.05, -0.01, 0.01)
    v = verdict(results)
    assert v.startswith("IVR-R1 (image) does not beat GRPO")
    assert "The gain is significant (p < 0.05) on A only. GRPO is significantly better on B." in v
    # one seed per method: the comparison has no test
    results["comparisons"]["ivr vs grpo"] = {"A/greedy/correct": None, "B/greedy/correct": None}
    v = verdict(results)
    assert v.startswith(
        "IVR-R1 (image) does not beat GRPO (that needs a significant gain on both held-out "
        "sets): greedy accuracy A 73.1 vs 70.0 (no paired test: fewer than two seed pairs); "
        "B 69.0 vs 68.0 (no paired test: fewer than two seed pairs)."
    )
    # methods that were not run
    partial = copy.deepcopy(fake_results())
    for key in ("ivr", "resample"):
        del partial["methods"][key]
    v = verdict(partial)
    assert v.startswith("IVR-R1 (image) and GRPO were not both run, so there is no comparison.")
    assert "resample" not in v and v.count("improves on the SFT cold start") == 1


def test_report_html_is_self_contained(tmp_path) -> None:
    out, results = fake_run(tmp_path)
    page = write_report(out, results, data=out / "data").read_text()
    assert "\x00" not in page  # control bytes of model output dropped
    # model text is escaped, not rendered
    assert "red circle <b>" not in page and "red circle &lt;b&gt;" in page
    # training curves, acceptance per round, the scene image
    assert page.count("data:image/png;base64,") == 3
    assert "ACCEPTED" in page and "What is the sum of the digits inside the red shapes?" in page
    assert "http://" not in page and "https://" not in page  # no external assets
    assert 'id="verdict"' in page and "IVR-R1 (image) does not beat GRPO" in page
    # headline and comparison cells, HTML-escaped
    assert "<td>73.1 [70.0, 76.0]</td>" in page and "<td>2.53×</td>" in page
    assert "<td>+2.0 [+0.1, +4.0], p &lt; 0.001</td>" in page
    # rectification, IVR-R1 (image) summed over its 3 runs: 120 critiqued, 30 accepted (25.0%),
    # 18 / 9 / 3 per round, 720 generations (24.0 per accepted), all-fail 25.0 → 15.0
    assert (
        "<td>IVR-R1 (image)</td><td>3</td><td>120</td><td>30</td><td>25.0</td>"
        "<td>18 / 9 / 3</td><td>720</td><td>24.0</td><td>25.0</td><td>15.0</td>"
    ) in page
    assert "<td>Resample control</td><td>3</td><td>90</td><td>9</td><td>10.0</td>" in page
    # cold start: mined accuracy, all-fail share, failure kinds largest first
    assert "sampled accuracy 41.2%" in page and "all-fail prompts 25.0%" in page
    assert page.index("<td>perception</td><td>60.0</td>") < page.index("<td>format</td>")
    assert "<td>total</td><td>72.5</td>" in page


def test_inspector_shows_resample_traces(tmp_path) -> None:
    out, results = fake_run(tmp_path)
    trace = {
        "step": 2,
        "id": "t1",
        "question": "q?",
        "answer": "3",
        "original": "\\boxed{1}",
        "original_reward": 0.0,
        "accepted": False,
        "rounds": [{"round": 1, "resampled": "\\boxed{4}", "reward": 0.0, "accepted": False}],
    }
    (out / "rl" / "ivr_s0" / "traces.jsonl").unlink()
    (out / "rl" / "resample_s0").mkdir(parents=True)
    (out / "rl" / "resample_s0" / "traces.jsonl").write_text(json.dumps(trace) + "\n")
    page = write_report(out, results, data=out / "data").read_text()
    inspector = page.split("Rollout inspector")[1]
    assert "1 failure handled in resample_s0; 0 accepted" in inspector
    assert "resampled</div><pre>\\boxed{4}</pre>" in inspector


def test_report_of_an_empty_run(tmp_path) -> None:
    """No methods trained, nothing compared: the report still renders and says so."""
    page = write_report(tmp_path, {"profile": "x", "methods": {}, "comparisons": {}}).read_text()
    assert "IVR-R1 (image) and GRPO were not both run" in page
    assert "No rectification traces were recorded." in page


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
        "--window-size=1200,5000",
        page.as_uri(),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    img = Image.open(shot).convert("RGB")
    assert img.size == (1200, 5000)
    # The page really rendered: many distinct colours (plots, text), not a blank or error page.
    colours = img.resize((300, 1250)).getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 50
    # The scene image (pure red 112 px) is drawn somewhere on the page.
    assert any(c[1] == (255, 0, 0) and c[0] > 500 for c in img.getcolors(maxcolors=1 << 20))


def test_rereason_table_by_hand() -> None:
    results = {
        "methods": {"sft": {"label": "SFT cold start"}},
        "rereason": {
            "sft": {
                "image": {"accuracy_by_round": [0.5, 0.6, 0.65, 0.7], "generations": 120, "n": 300},
                "resample": {"accuracy_by_round": [0.5, 0.55, 0.6, 0.6], "generations": 130},
            }
        },
    }
    lines = rereason_table(results).splitlines()
    assert (
        lines[0]
        == "| model | test-time loop | initial | round 1 | round 2 | round 3 | generations |"
    )
    assert lines[2] == (
        "| SFT cold start (sft) | critique + rectify, image | 50.0 | 60.0 | 65.0 | 70.0 | 120 |"
    )
    assert lines[3].endswith("| resample the original prompt | 50.0 | 55.0 | 60.0 | 60.0 | 130 |")
    assert rereason_table({"methods": {}}).count("\n") == 1  # header only when nothing ran
