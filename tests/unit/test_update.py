"""The mismatch-correction wiring of the update phase (rl/update.py ``mismatch_phase``): which
tokens are corrected, with which μ, and what is logged; numbers derived by hand."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from ivr.config import load_config
from ivr.rl.update import mismatch_phase
from ivr.types import Rollout

L2 = math.log(2.0)


def _trainer(*overrides: str, rank_max: float | None = None):
    seen = []

    def comm_max(x):  # every rank joins: the max of all of them (here, another rank's value)
        seen.append(x)
        return x if rank_max is None else max(x, rank_max)

    cfg = load_config(None, list(overrides))
    return SimpleNamespace(cfg=cfg, comm=SimpleNamespace(max=comm_max)), seen


def _rows():
    lp = math.log
    a = Rollout(
        0, "a", (1, 2), old_logprobs=(lp(0.5), lp(0.25)), behaviour_logprobs=(lp(0.25), lp(0.5))
    )
    # rectified: behaviour probability 1 by definition, whatever was recorded
    b = Rollout(
        0,
        "b",
        (3, 4, 5),
        old_logprobs=(0.0, 0.0, 0.0),
        behaviour_logprobs=(-9.0,) * 3,
        off_policy=True,
    )
    c = Rollout(1, "c", (6,), old_logprobs=(lp(0.3),))  # the sampler gave no logprobs: μ = π_old
    return [(None, a), (None, b), (None, c)]


def test_tis_weights_and_metrics_by_hand() -> None:
    tr, seen = _trainer("rollout.is_correction=tis", "rollout.is_cap=1.5")
    w, m = mismatch_phase(tr, _rows())
    # row a: ρ = π_old/μ = 0.5/0.25 = 2 → min(2, 1.5) = 1.5; 0.25/0.5 = 0.5 → 0.5
    assert w[0].tolist() == pytest.approx([1.5, 0.5, 1.0])  # padded to T = 3 with weight 1
    assert w[1].tolist() == [1.0, 1.0, 1.0]  # rectified
    assert w[2].tolist() == pytest.approx([1.0, 1.0, 1.0])  # μ missing: ρ = 1
    # corrected tokens: a's two and c's one; |log ρ| = ln 2, ln 2, 0
    assert m["mismatch/log_ratio_abs_mean"] == pytest.approx(2 * L2 / 3)
    assert m["mismatch/log_ratio_abs_max"] == pytest.approx(L2) and seen == [pytest.approx(L2)]
    assert m["mismatch/ratio_mean"] == pytest.approx((2 + 0.5 + 1) / 3)
    assert m["mismatch/weight_mean"] == pytest.approx((1.5 + 0.5 + 1) / 3)
    assert m["mismatch/capped_share"] == pytest.approx(1 / 3) and m["mismatch/masked_share"] == 0


def test_sequence_mis_and_the_max_over_ranks() -> None:
    tr, _ = _trainer(
        "rollout.is_correction=mis", "rollout.is_level=sequence", "rollout.is_cap=1.2", rank_max=3.0
    )
    w, m = mismatch_phase(tr, _rows())
    # row a: ρ_seq = 2 · 0.5 = 1 ≤ 1.2 → kept, weight 1 on both tokens; nothing masked
    assert w[0].tolist()[:2] == pytest.approx([1.0, 1.0]) and m["mismatch/masked_share"] == 0
    assert m["mismatch/log_ratio_abs_max"] == 3.0  # another rank's larger max wins


def test_off_for_hf_by_default_and_a_rank_without_rows_still_joins() -> None:
    tr, seen = _trainer()
    assert mismatch_phase(tr, _rows()) == (None, {}) and seen == []
    tr, seen = _trainer("rollout.backend=vllm", rank_max=0.7)  # auto = tis
    w, m = mismatch_phase(tr, [])
    assert w == [] and m == {"mismatch/log_ratio_abs_max": 0.7} and seen == [0.0]
