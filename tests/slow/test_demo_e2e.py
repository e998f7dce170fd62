"""A reduced `ivr demo` end to end (slow: ~4–5 minutes on 2 cores). Run with `make test-slow`."""

from __future__ import annotations

import json

import pytest

from ivr.cli import main


@pytest.mark.slow
def test_smoke_demo_end_to_end(tmp_path) -> None:
    out = tmp_path / "demo"
    # smoke profile: 2 seeds of grpo, resample and ivr; 1 ablation seed of ivr_desc
    assert main(["demo", "--out", str(out), "--profile", "smoke"]) == 0
    results = json.loads((out / "results.json").read_text())
    methods = results["methods"]
    assert set(methods) == {"sft", "grpo", "resample", "ivr", "ivr_desc"}
    assert methods["sft"]["runs"] == ["sft"]
    assert methods["grpo"]["runs"] == ["grpo_s0", "grpo_s1"]
    assert methods["ivr_desc"]["runs"] == ["ivr_desc_s0"]
    for key, m in methods.items():
        assert {"greedy/correct", "sampled/correct", "greedy/attr", "greedy/consistent"} <= set(
            m["A"]
        ), key
        assert "greedy/correct" in m["B"] and "sampled/correct" not in m["B"], key
        for set_name in ("A", "B"):
            for metric, c in m[set_name].items():
                assert all(0.0 <= c[k] <= 1.0 for k in ("mean", "lo", "hi")), (key, metric)
                assert len(c["per_seed"]) == len(m["runs"])
        if key == "sft":
            continue
        assert set(m["train"]) == set(m["runs"])
        for run, t in m["train"].items():
            assert t["steps"] == results["rl_steps"] and t["time_per_step"] > 0, run
            assert 0.0 <= t["all_fail_share"] <= 1.0
            if key in ("resample", "ivr", "ivr_desc"):
                rect = t["rectification"]
                assert len(rect["accepted_per_round"]) == 3, run
                assert 0.0 <= rect["success_rate"] <= 1.0
                assert 0 <= rect["accepted"] <= rect["critiqued"]
            else:
                assert "rectification" not in t
    comparisons = results["comparisons"]
    assert {
        "ivr vs grpo",
        "ivr vs resample",
        "resample vs grpo",
        "ivr_desc vs grpo",
        "ivr vs ivr_desc",
        "grpo vs sft",
        "ivr vs sft",
    } <= set(comparisons)
    for key in ("ivr vs grpo", "ivr vs resample", "grpo vs sft", "ivr vs sft"):
        for metric in ("A/greedy/correct", "B/greedy/correct", "A/sampled/correct"):
            c = comparisons[key][metric]
            assert c["n_seeds"] == 2 and 0.0 <= c["p"] <= 1.0, (key, metric)
            assert all(-1.0 <= c[k] <= 1.0 for k in ("diff", "lo", "hi")), (key, metric)
    mined = results["coldstart"]["stage1_mined"]
    assert 0.0 <= mined["sampled_accuracy"] <= 1.0 and 0.0 <= mined["all_fail_share"] <= 1.0
    page = (out / "report.html").read_text()
    assert 'id="verdict"' in page and "Rollout inspector" in page
    assert "IVR-R1 (image)" in page and "Resample control" in page
    # Re-running the demo resumes: every phase is found done and nothing is retrained.
    before = (out / "rl" / "ivr_s0" / "metrics.jsonl").read_text()
    assert main(["demo", "--out", str(out), "--profile", "smoke"]) == 0
    assert (out / "rl" / "ivr_s0" / "metrics.jsonl").read_text() == before
