"""ivr.eval.stats against numbers worked out by hand (or by a normal approximation at large n)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from ivr.eval.stats import accuracy_ci, paired_test, pooled_paired, seed_summary


def _pairs(b01: int, b10: int, both: int = 0, neither: int = 0) -> tuple[list[int], list[int]]:
    """Binary outcomes with the given discordant/concordant counts (A first, B second)."""
    a = [0] * b01 + [1] * b10 + [1] * both + [0] * neither
    b = [1] * b01 + [0] * b10 + [1] * both + [0] * neither
    return a, b


# ------------------------------------------------------------------------------ McNemar / sign


def test_mcnemar_exact_by_hand() -> None:
    # b01 = 10, b10 = 2: under H0 the 12 discordant items are Bin(12, ½).
    # p = 2·P(X ≤ 2) = 2·(C(12,0) + C(12,1) + C(12,2)) / 2^12 = 2·(1 + 12 + 66) / 4096
    #   = 158 / 4096 = 0.03857421875.
    a, b = _pairs(b01=10, b10=2, both=20, neither=8)
    r = paired_test(a, b, n_boot=500)
    assert r["test"] == "mcnemar_exact"
    assert (r["b01"], r["b10"], r["n"]) == (10, 2, 40)
    assert r["p"] == pytest.approx(158 / 4096, rel=1e-12)
    # Accuracies: A = (2 + 20)/40 = 0.55, B = (10 + 20)/40 = 0.75, A − B = −8/40 = −0.2.
    assert (r["mean_a"], r["mean_b"]) == pytest.approx((0.55, 0.75))
    assert r["diff"] == pytest.approx(-0.2)
    assert r["lo"] < -0.2 < r["hi"] < 0


def test_mcnemar_edge_cases_by_hand() -> None:
    # b01 = 0, b10 = 5: p = 2·P(X = 0 | n = 5) = 2/32 = 0.0625 (never below 0.05 with 5 items).
    r = paired_test(*_pairs(b01=0, b10=5, both=3), n_boot=500)
    assert r["p"] == pytest.approx(0.0625)
    # b01 = b10 = 3: 2·P(X ≤ 3 | n = 6) = 2·42/64 > 1, so p = 1.
    assert paired_test(*_pairs(b01=3, b10=3, neither=4), n_boot=500)["p"] == pytest.approx(1.0)
    # No discordant items at all: nothing to test, p = 1, difference exactly 0.
    r = paired_test([1, 0, 1], [1, 0, 1], n_boot=500)
    assert (r["p"], r["diff"], r["lo"], r["hi"], r["b01"], r["b10"]) == (1.0, 0.0, 0.0, 0.0, 0, 0)


def test_paired_t_on_fractional_scores_by_hand() -> None:
    # Means of 4 samples per item. d = a − b = [.25, 0, .25, −.25, .25]: 3 positive, 1 negative,
    # 1 tie. mean d = 0.5/5 = 0.1; squared deviations .0225+.01+.0225+.1225+.0225 = 0.2, sample
    # variance 0.2/4 = 0.05, sd = √0.05, se = √0.05/√5 = 0.1 → t = 1 exactly, df = 4;
    # two-sided p = 2·P(T₄ > 1) = 0.37390 (t table: P(T₄ > 1) = 0.18695).
    a = [0.75, 0.5, 1.0, 0.25, 0.5]
    b = [0.5, 0.5, 0.75, 0.5, 0.25]
    r = paired_test(a, b, n_boot=500)
    assert r["test"] == "paired_t"
    assert (r["n_pos"], r["n_neg"], r["n_ties"]) == (3, 1, 1)
    assert r["p"] == pytest.approx(0.37390, abs=1e-5)
    assert r["diff"] == pytest.approx(0.1)
    assert "b01" not in r


def test_paired_bootstrap_ci_matches_normal_approximation_at_large_n() -> None:
    # n = 4000, b10 = 400, b01 = 300. Per-item d ∈ {−1, 0, 1}: mean = 100/4000 = 0.025,
    # var = E[d²] − mean² = 700/4000 − 0.025² = 0.174375, se = sqrt(0.174375/4000) = 0.0066026,
    # 95% normal CI = 0.025 ± 1.959964·0.0066026 = [0.012059, 0.037941].
    a, b = _pairs(b01=300, b10=400, both=2000, neither=1300)
    r = paired_test(a, b, seed=1)
    se = math.sqrt((700 / 4000 - 0.025**2) / 4000)
    assert r["diff"] == pytest.approx(0.025)
    assert r["lo"] == pytest.approx(0.025 - 1.959964 * se, abs=1.5e-3)
    assert r["hi"] == pytest.approx(0.025 + 1.959964 * se, abs=1.5e-3)
    # McNemar's chi-square (400 − 300)²/700 = 14.3 on 1 df puts p near 1.6e-4; exact is close.
    assert 5e-5 < r["p"] < 5e-4


# ------------------------------------------------------------------------------ accuracy_ci


def test_accuracy_ci_matches_normal_approximation_at_large_n() -> None:
    # 1200 of 4000 right: p = 0.3, se = sqrt(0.3·0.7/4000) = 0.0072457,
    # 95% Wald CI = 0.3 ± 1.959964·0.0072457 = [0.285799, 0.314201].
    r = accuracy_ci([1] * 1200 + [0] * 2800, seed=3)
    se = math.sqrt(0.3 * 0.7 / 4000)
    assert (r["mean"], r["n"]) == (pytest.approx(0.3), 4000)
    assert r["lo"] == pytest.approx(0.3 - 1.959964 * se, abs=1.5e-3)
    assert r["hi"] == pytest.approx(0.3 + 1.959964 * se, abs=1.5e-3)


def test_accuracy_ci_fractional_scores_and_level() -> None:
    # Mean of k samples per item: 0.25·500 + 0.75·500 over 1000 items → 0.5; per-item sd 0.25,
    # se = 0.25/sqrt(1000) = 0.0079057; a 90% interval is 0.5 ± 1.644854·se = [0.48700, 0.51300].
    r = accuracy_ci([0.25, 0.75] * 500, level=0.9, seed=0)
    se = 0.25 / math.sqrt(1000)
    assert r["mean"] == pytest.approx(0.5)
    assert r["lo"] == pytest.approx(0.5 - 1.644854 * se, abs=1e-3)
    assert r["hi"] == pytest.approx(0.5 + 1.644854 * se, abs=1e-3)


def test_accuracy_ci_degenerate_deterministic_and_checked() -> None:
    assert accuracy_ci([True] * 10, n_boot=200) == {"mean": 1.0, "lo": 1.0, "hi": 1.0, "n": 10}
    x = [1, 0, 1, 1, 0, 1, 0, 1]
    assert accuracy_ci(x, n_boot=500, seed=7) == accuracy_ci(x, n_boot=500, seed=7)
    with pytest.raises(ValueError, match="at least 2"):
        accuracy_ci([1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        accuracy_ci([0.5, 1.5])
    with pytest.raises(ValueError, match="level"):
        accuracy_ci([0, 1], level=95)


# ------------------------------------------------------------------------------ seeds


def test_seed_summary_by_hand() -> None:
    # [1, 2, 3, 4]: mean 2.5; squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5, var = 5/3,
    # std = 1.2909944, sem = std/2 = 0.6454972; t(0.975, df 3) = 3.1824463 →
    # half-width 2.0542, interval [0.44574, 4.55426].
    r = seed_summary([1, 2, 3, 4])
    assert r["n"] == 4
    assert r["mean"] == pytest.approx(2.5)
    assert r["std"] == pytest.approx(math.sqrt(5 / 3))
    assert r["sem"] == pytest.approx(math.sqrt(5 / 3) / 2)
    assert r["lo"] == pytest.approx(2.5 - 3.1824463 * 0.6454972, abs=1e-6)
    assert r["hi"] == pytest.approx(2.5 + 3.1824463 * 0.6454972, abs=1e-6)


def test_seed_summary_edge_cases() -> None:
    r = seed_summary([0.5, 0.5])
    assert (r["std"], r["sem"], r["lo"], r["hi"]) == (0.0, 0.0, 0.5, 0.5)
    with pytest.raises(ValueError, match="at least 2 seeds"):
        seed_summary([0.5])


def test_pooled_paired_by_hand() -> None:
    # Seed 1: d = [0, 1, 0, 0, 0, 1]; seed 2: d = [0, 1, 0, 1, 0, −1] (each block ×10 items).
    # Per-item seed means m = [0, 1, 0, .5, 0, 0]: 2 positive, 0 negative, 4 ties per block →
    # 20 vs 0 over 60 items. diff = mean(m) = 1.5/6 = 0.25 = mean of the per-seed differences
    # (1/3 + 1/6)/2. t-test of mean(m) = 0: squared deviations per block .0625·5 + .5625 = .875,
    # ×10 = 8.75; variance 8.75/59; se = √(8.75/59)/√60 = 0.0497167 → t = 5.028490, df = 59.
    s1 = ([1, 1, 0, 1, 0, 1] * 10, [1, 0, 0, 1, 0, 0] * 10)
    s2 = ([1, 1, 0, 1, 0, 0] * 10, [1, 0, 0, 0, 0, 1] * 10)
    r = pooled_paired([s1, s2], n_boot=2000)
    assert (r["n_seeds"], r["n"], r["n_pos"], r["n_neg"], r["n_ties"]) == (2, 60, 20, 0, 40)
    assert r["diff"] == pytest.approx(0.25)
    assert r["per_seed_diff"] == pytest.approx([1 / 3, 1 / 6])
    t = 0.25 / (math.sqrt(8.75 / 59) / math.sqrt(60))
    assert t == pytest.approx(5.028490, abs=1e-6)
    assert r["p"] == pytest.approx(2 * stats.t.sf(t, 59))
    assert r["lo"] < 0.25 < r["hi"]
    assert r["test"] == "paired_t_on_seed_means"


def test_a_fractional_gap_is_tested_on_its_mean_not_its_signs() -> None:
    # 60 items at +1/3, 30 at −1, 910 at 0: more items favour A, yet mean d = (20 − 30)/1000 =
    # −0.01 favours B. The old sign test said p = 0.002 "for A"; the test of the mean must not
    # call that significant in A's favour: here t = −0.01/se with se = sd/√1000,
    # sd² = (60·(1/3+.01)² + 30·(−1+.01)² + 910·.01²)/999 = 0.03660 → t = −1.653, p ≈ 0.099.
    a = np.array([1 / 3] * 60 + [0.0] * 30 + [0.0] * 910)
    b = np.array([0.0] * 60 + [1.0] * 30 + [0.0] * 910)
    r = paired_test(a, b, n_boot=500)
    assert r["diff"] == pytest.approx(-0.01) and r["n_pos"] > r["n_neg"]
    assert r["p"] == pytest.approx(0.099, abs=0.002)


def test_pooled_paired_reduces_to_paired_test() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
    one = paired_test(a, b, n_boot=1000, seed=5)
    # One seed, or the same seed twice: the per-item means are the per-item differences, and the
    # same rng draws the same resamples, so the interval is identical.
    for pairs in ([(a, b)], [(a, b), (a, b)]):
        r = pooled_paired(pairs, n_boot=1000, seed=5)
        assert (r["diff"], r["lo"], r["hi"]) == pytest.approx((one["diff"], one["lo"], one["hi"]))
        assert (r["n_pos"], r["n_neg"]) == (one["n_pos"], one["n_neg"])


def test_seed_structured_resampling_equals_resampling_seed_means() -> None:
    # The identity pooled_paired relies on: resampling the same items for every seed and then
    # averaging over seeds gives, resample by resample, the item-resampled mean of m_i.
    rng = np.random.default_rng(1)
    d = rng.integers(-1, 2, size=(3, 50)).astype(float)  # 3 seeds × 50 items
    idx = rng.integers(0, 50, size=(200, 50))  # 200 resamples of the items
    per_seed_then_mean = np.mean([d[s][idx].mean(axis=1) for s in range(3)], axis=0)
    assert np.allclose(per_seed_then_mean, d.mean(axis=0)[idx].mean(axis=1))


def test_pooled_paired_checks_shapes() -> None:
    with pytest.raises(ValueError, match="same items"):
        pooled_paired([([1, 0], [0, 1]), ([1, 0, 1], [0, 1, 1])])
    with pytest.raises(ValueError, match="seed 0"):
        pooled_paired([([1, 0], [0, 1, 1])])
    with pytest.raises(ValueError, match="at least one"):
        pooled_paired([])
    with pytest.raises(ValueError, match="same items"):
        paired_test([1, 0], [1])


# ------------------------------------------------------------------------------ properties

_binary = st.lists(st.sampled_from([0, 1]), min_size=2, max_size=40)
_quarters = st.lists(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]), min_size=2, max_size=40)


@settings(max_examples=40, deadline=None)
@given(st.one_of(st.tuples(_binary, _binary), st.tuples(_quarters, _quarters)), st.integers(0, 9))
def test_swapping_a_and_b_negates_the_difference_and_keeps_p(
    ab: tuple[list[float], list[float]], seed: int
) -> None:
    n = min(len(ab[0]), len(ab[1]))
    a, b = ab[0][:n], ab[1][:n]
    fwd = paired_test(a, b, n_boot=200, seed=seed)
    rev = paired_test(b, a, n_boot=200, seed=seed)
    assert rev["test"] == fwd["test"]
    assert rev["p"] == pytest.approx(fwd["p"])
    assert 0.0 <= fwd["p"] <= 1.0
    assert rev["diff"] == pytest.approx(-fwd["diff"])
    assert (rev["lo"], rev["hi"]) == pytest.approx((-fwd["hi"], -fwd["lo"]), abs=1e-9)
    assert (rev["n_pos"], rev["n_neg"]) == (fwd["n_neg"], fwd["n_pos"])
    if fwd["test"] == "mcnemar_exact":
        assert (rev["b01"], rev["b10"]) == (fwd["b10"], fwd["b01"])
    assert -1.0 <= fwd["lo"] <= fwd["hi"] <= 1.0
