"""Statistics for comparing methods on a held-out set: intervals and paired tests a reviewer accepts.

Why this module: "IVR-R1 beats GRPO by 2 points" means nothing without knowing how much of the
gap the held-out items and the RL seed could produce by themselves. Everything here is a thin,
documented layer over numpy and scipy (``scipy.stats.bootstrap``, ``binomtest``, ``t``), so the
arithmetic is the textbook one and the tests can check it against numbers worked out by hand.

    accuracy_ci      one method, one run: mean per-item score with a percentile bootstrap CI
    paired_test      two methods on the same items: exact McNemar (binary) or sign test, plus a
                     paired bootstrap CI of the difference
    seed_summary     one number per RL seed (≥ 2 seeds): mean, std, sem, t interval
    pooled_paired    two methods, several seeds, same items: per-item differences averaged over
                     seeds, a bootstrap over items and a sign test on those per-item means

Conventions: a difference is always ``a − b`` (method A minus method B); every bootstrap draws
from ``numpy.random.default_rng(seed)`` so results are reproducible; intervals are two-sided at
``level``. See docs/statistics.md for which test to use when and the protocol around them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

__all__ = ["accuracy_ci", "paired_test", "pooled_paired", "seed_summary"]

ArrayLike = Sequence[bool] | Sequence[float] | np.ndarray


def _scores(values: ArrayLike, name: str, *, unit: bool = True) -> np.ndarray:
    """``values`` as a 1-D float array, checked: finite, and in [0, 1] when ``unit``."""
    x = np.asarray(values, dtype=float)
    if x.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} has non-finite values")
    if unit and x.size and (x.min() < 0 or x.max() > 1):
        raise ValueError(f"{name} must hold per-item scores in [0, 1]")
    return x


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")


def _bootstrap_mean(x: np.ndarray, *, n_boot: int, seed: int, level: float) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``x`` (resampling its entries, i.e. items)."""
    if x.size < 2:
        raise ValueError(f"a bootstrap needs at least 2 items, got {x.size}")
    res = stats.bootstrap(
        (x,),
        np.mean,
        n_resamples=n_boot,
        confidence_level=level,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    lo, hi = res.confidence_interval
    return float(lo), float(hi)


def accuracy_ci(
    correct: ArrayLike, *, n_boot: int = 10000, seed: int = 0, level: float = 0.95
) -> dict[str, float]:
    """Mean per-item score and its percentile bootstrap confidence interval.

    Why: the held-out set is a sample of items; the interval says how far the accuracy could move
    on another sample of the same size. Per-item scores may be 0/1 (greedy correctness) or
    fractions (the mean of k sampled answers to one item): the item is the unit that is resampled
    either way, so k samples of one item are never mistaken for k independent items. The
    percentile bootstrap needs no normality and stays inside [0, 1].

    Returns ``{"mean", "lo", "hi", "n"}``. Raises ValueError on fewer than 2 items or scores
    outside [0, 1].

    >>> r = accuracy_ci([1, 1, 1, 0] * 50, n_boot=2000)
    >>> r["mean"], r["n"], bool(0.6 < r["lo"] < 0.75 < r["hi"] < 0.9)
    (0.75, 200, True)
    """
    _check_level(level)
    x = _scores(correct, "correct")
    lo, hi = _bootstrap_mean(x, n_boot=n_boot, seed=seed, level=level)
    return {"mean": float(x.mean()), "lo": lo, "hi": hi, "n": int(x.size)}


def _is_binary(*arrays: np.ndarray) -> bool:
    return all(np.all((a == 0) | (a == 1)) for a in arrays)


def _sign_test(d: np.ndarray) -> dict[str, Any]:
    """Two-sided exact sign test on differences ``d``: ties dropped, then #positive ~ Bin(m, ½)."""
    n_pos, n_neg = int(np.sum(d > 0)), int(np.sum(d < 0))
    m = n_pos + n_neg
    p = float(stats.binomtest(n_pos, m, 0.5).pvalue) if m else 1.0
    return {"n_pos": n_pos, "n_neg": n_neg, "n_ties": int(d.size - m), "p": p}


def _mean_test(d: np.ndarray) -> float:
    """Two-sided p of "the mean per-item difference is 0": a one-sample t-test on ``d``.

    Why not the sign test for fractional scores: it counts which items each side wins and ignores
    by how much, so it can reject in the direction opposite to ``mean(d)`` (60 items at +1/3 and
    30 at −1 give mean −0.01 yet p = 0.002 "for" A), and pairing a 0/1 model with a mean over
    seeds makes the sign depend on the item's accuracy level rather than on which method is
    better (false rejections of 40–100% in simulation). The t-test is a test of the quantity
    reported, ``diff``; with hundreds of items the central limit theorem makes it exact enough.
    All differences equal (e.g. all 0): p = 1 when their mean is 0, else 0."""
    if d.size < 2 or np.all(d == d[0]):
        return 1.0 if d.size == 0 or d[0] == 0 else 0.0
    return float(stats.ttest_1samp(d, 0.0).pvalue)


def paired_test(
    a: ArrayLike, b: ArrayLike, *, n_boot: int = 10000, seed: int = 0, level: float = 0.95
) -> dict[str, Any]:
    """Compare methods A and B on the same items: a paired test and a CI of ``mean(a) − mean(b)``.

    Why paired: both methods answer the same items, and item difficulty dominates the variance;
    comparing two independent accuracy intervals throws that pairing away and is far too
    conservative (overlapping intervals do not mean "no difference"). Only the items on which the
    methods disagree carry evidence.

    - Binary outcomes (every score 0 or 1): the exact McNemar test. ``b01`` = items A got wrong
      and B right, ``b10`` = A right and B wrong; under "no difference" a discordant item is
      equally likely to go either way, so ``p`` is the two-sided binomial test of ``b10`` out of
      ``b01 + b10`` at ½ (``test == "mcnemar_exact"``).
    - Other per-item scores in [0, 1] (e.g. the mean of 4 sampled answers): a paired t-test on
      the per-item differences (``test == "paired_t"``, see ``_mean_test``: the sign test can
      contradict the mean on fractional scores). Items are the independent unit.

    In both cases ``lo``/``hi`` is a percentile bootstrap CI of the difference that resamples
    items (each resampled item brings its A and B scores along). ``n_pos``/``n_neg``/``n_ties``
    count items where A scored higher/lower/equal (for binary data ``n_pos == b10``,
    ``n_neg == b01``). Swapping A and B negates ``diff``, ``lo``, ``hi`` and keeps ``p``.

    >>> a = [1] * 10 + [0] * 2 + [1] * 30 + [0] * 8    # 10 items only A right, 2 only B right
    >>> b = [0] * 10 + [1] * 2 + [1] * 30 + [0] * 8
    >>> r = paired_test(a, b, n_boot=2000)
    >>> r["test"], r["b01"], r["b10"], round(r["p"], 5), r["diff"]
    ('mcnemar_exact', 2, 10, 0.03857, 0.16)
    """
    _check_level(level)
    x, y = _scores(a, "a"), _scores(b, "b")
    if x.size != y.size:
        raise ValueError(f"a and b must score the same items: {x.size} vs {y.size} scores")
    d = x - y
    lo, hi = _bootstrap_mean(d, n_boot=n_boot, seed=seed, level=level)
    sign = _sign_test(d)
    binary = _is_binary(x, y)
    out: dict[str, Any] = {
        "test": "mcnemar_exact" if binary else "paired_t",
        "n": int(x.size),
        "mean_a": float(x.mean()),
        "mean_b": float(y.mean()),
        "diff": float(d.mean()),
        "lo": lo,
        "hi": hi,
        "p": sign["p"] if binary else _mean_test(d),
        "n_pos": sign["n_pos"],
        "n_neg": sign["n_neg"],
        "n_ties": sign["n_ties"],
    }
    if out["test"] == "mcnemar_exact":
        # On 0/1 data the sign test *is* the exact McNemar test: positives are b10, negatives b01.
        out["b01"], out["b10"] = sign["n_neg"], sign["n_pos"]
    return out


def seed_summary(values: ArrayLike, *, level: float = 0.95) -> dict[str, float]:
    """Mean over RL seeds with its sample std (ddof=1), standard error and Student-t interval.

    Why: an RL run is one draw of the training randomness; the spread over seeds is how much a
    *re-run* of the method moves its score, which no item-level interval measures. With a handful
    of seeds the normal 1.96 is too optimistic, so the interval uses ``t(n − 1)``. Needs ≥ 2 seeds
    (a single seed has no spread: report it as a single run, not as a mean).

    Returns ``{"mean", "std", "sem", "lo", "hi", "n"}``.

    >>> r = seed_summary([0.50, 0.54, 0.52])
    >>> round(r["mean"], 4), round(r["std"], 4), round(r["lo"], 4), round(r["hi"], 4)
    (0.52, 0.02, 0.4703, 0.5697)
    """
    _check_level(level)
    x = _scores(values, "values", unit=False)
    if x.size < 2:
        raise ValueError(f"seed_summary needs at least 2 seeds, got {x.size}")
    mean, std = float(x.mean()), float(x.std(ddof=1))
    sem = std / np.sqrt(x.size)
    if sem > 0:
        lo, hi = stats.t.interval(level, df=x.size - 1, loc=mean, scale=sem)
    else:  # every seed gave the same number: scipy's t has no scale-0 form
        lo = hi = mean
    return {
        "mean": mean,
        "std": std,
        "sem": float(sem),
        "lo": float(lo),
        "hi": float(hi),
        "n": int(x.size),
    }


def pooled_paired(
    pairs: Sequence[tuple[ArrayLike, ArrayLike]],
    *,
    n_boot: int = 10000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Compare A and B over several RL seeds evaluated on the same items.

    ``pairs`` holds one ``(a, b)`` per seed, each a per-item score array over the *same* items in
    the same order (seed ``s`` of A is paired with seed ``s`` of B, e.g. both trained from the
    same SFT checkpoint and data order).

    Why not pool the seeds as more items: every seed is scored on the same held-out items, so its
    item-level outcomes are correlated with the other seeds' through item difficulty; stacking
    ``S × N`` outcomes and testing them as independent overstates the evidence about the item
    population about S-fold. Instead the per-item difference is averaged over seeds,
    ``m_i = mean_s (a_si − b_si)``, and ``diff = mean_i m_i`` (the mean per-seed difference).
    Its CI is a percentile bootstrap that resamples items, the same resampled items for every
    seed: averaging over seeds first and resampling ``m_i`` is exactly that bootstrap, since the
    seed-mean of item-resampled means is the item-resampled mean of ``m``. ``p`` is a t-test of
    ``mean(m) = 0`` over items (``_mean_test``; a sign test on the fractional ``m_i`` can contradict
    ``diff``); ``n_pos``/``n_neg``/``n_ties`` count the items whose ``m_i`` is above/below/at 0.
    Seed-to-seed variation enters only through the ``m_i``; to say how much a re-run moves the
    gap, report ``seed_summary`` of ``per_seed_diff`` alongside.

    Returns ``{"test": "paired_t_on_seed_means", "n_seeds", "n", "diff", "lo", "hi", "p",
    "n_pos", "n_neg", "n_ties", "per_seed_diff"}``.

    >>> s1 = ([1, 1, 0, 1, 0, 1] * 10, [1, 0, 0, 1, 0, 0] * 10)
    >>> s2 = ([1, 1, 0, 1, 0, 0] * 10, [1, 0, 0, 0, 0, 1] * 10)
    >>> r = pooled_paired([s1, s2], n_boot=2000)
    >>> r["n_seeds"], r["n"], round(r["diff"], 4), r["per_seed_diff"], r["n_pos"], r["n_neg"]
    (2, 60, 0.25, [0.3333333333333333, 0.16666666666666666], 20, 0)
    """
    _check_level(level)
    if not pairs:
        raise ValueError("pooled_paired needs at least one (a, b) pair")
    diffs = []
    for s, (a, b) in enumerate(pairs):
        x, y = _scores(a, f"a of seed {s}"), _scores(b, f"b of seed {s}")
        if x.size != y.size:
            raise ValueError(f"seed {s}: a and b must score the same items ({x.size} vs {y.size})")
        diffs.append(x - y)
    if len({d.size for d in diffs}) != 1:
        raise ValueError(
            f"every seed must score the same items; got item counts {[d.size for d in diffs]}"
        )
    m = np.mean(np.stack(diffs), axis=0)  # per-item difference, averaged over seeds
    lo, hi = _bootstrap_mean(m, n_boot=n_boot, seed=seed, level=level)
    return {
        "test": "paired_t_on_seed_means",
        "n_seeds": len(diffs),
        "n": int(m.size),
        "diff": float(m.mean()),
        "lo": lo,
        "hi": hi,
        **_sign_test(m),
        "p": _mean_test(m),
        "per_seed_diff": [float(d.mean()) for d in diffs],
    }
