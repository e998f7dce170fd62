"""A reduced `ivr demo` end to end (slow: ~4 minutes on 2 cores). Run with `make test-slow`."""

from __future__ import annotations

import json

import pytest

from ivr.cli import main


@pytest.mark.slow
def test_smoke_demo_end_to_end(tmp_path) -> None:
    out = tmp_path / "demo"
    assert (
        main(["demo", "--out", str(out), "--profile", "smoke", "--seeds", "2", "--ablations"]) == 0
    )
    results = json.loads((out / "results.json").read_text())
    methods = results["methods"]
    assert set(methods) == {"zero_shot", "sft", "grpo", "ivr"}
    for m in methods.values():
        assert 0.0 <= m["accuracy"] <= 1.0 and 0.0 <= m["format"] <= 1.0
    assert set(methods["grpo"]["seeds"]) == {"grpo_s0", "grpo_s1"}
    rect = methods["ivr"]["rectification"]
    assert len(rect["accepted_per_round"]) == 3 and 0.0 <= rect["success_rate"] <= 1.0
    assert set(results["ablations"]["k"]) == {"k=1", "k=2", "k=4"}
    for ctx in ("image", "description"):
        curve = results["ablations"]["rereason"][ctx]["accuracy_by_round"]
        assert len(curve) == 4 and curve == sorted(curve)  # oracle screen: accuracy never drops
    page = (out / "report.html").read_text()
    assert "Rollout inspector" in page and "IVR-R1" in page and 'id="verdict"' in page
    # Re-running the demo resumes: every phase is found done and nothing is retrained.
    before = (out / "rl" / "ivr_s0" / "metrics.jsonl").read_text()
    assert (
        main(["demo", "--out", str(out), "--profile", "smoke", "--seeds", "2", "--ablations"]) == 0
    )
    assert (out / "rl" / "ivr_s0" / "metrics.jsonl").read_text() == before
