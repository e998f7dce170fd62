"""``results.json`` of ``ivr demo``: per method and held-out set, accuracy with intervals over
items and seeds; paired comparisons pooled over seeds (eval/stats.py); training statistics read
back from each run's ``metrics.jsonl``. report.py and tables.py render this schema.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .profiles import METHODS, Plan, run_names

__all__ = ["seed_pairs", "summarise"]


def _train_stats(run_dir: Path) -> dict[str, Any]:
    rows = [
        json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()
    ]
    out: dict[str, Any] = {"steps": len(rows)}
    if not rows:
        return out
    out["time_per_step"] = float(np.mean([r["time/step"] for r in rows]))
    out["all_fail_share"] = float(np.mean([1 - r["reward/group_solved"] for r in rows]))
    third = max(1, len(rows) // 3)
    out["train_correct_first_third"] = float(np.mean([r["reward/correct"] for r in rows[:third]]))
    out["train_correct_last_third"] = float(np.mean([r["reward/correct"] for r in rows[-third:]]))
    if "ivr/critiqued" in rows[0]:
        crit = sum(r["ivr/critiqued"] for r in rows)
        rounds = sorted(k for k in rows[0] if k.startswith("ivr/accepted_round_"))
        out["rectification"] = {
            "critiqued": crit,
            "accepted": sum(r["ivr/accepted"] for r in rows),
            "success_rate": sum(r["ivr/accepted"] for r in rows) / crit if crit else 0.0,
            "accepted_per_round": [sum(r[k] for r in rows) for k in rounds],
            "generations": sum(r.get("ivr/generations", 0.0) for r in rows),
            "all_fail_after": float(np.mean([1 - r["reward_mixed/group_solved"] for r in rows])),
        }
    if "loss/off_policy_grad_share" in rows[0]:
        out["off_policy_grad_share"] = float(
            np.mean([r["loss/off_policy_grad_share"] for r in rows])
        )
    return out


_METRICS = ("greedy/correct", "sampled/correct", "greedy/attr", "greedy/consistent")


def _per_item(res: dict[str, Any], metric: str) -> np.ndarray | None:
    mode, key = metric.split("/")
    vals = res.get(mode, {}).get(key)
    return np.asarray(vals, dtype=float) if vals else None


def seed_pairs(ra: list[str], rb: list[str]) -> list[tuple[str, str]]:
    """The runs a paired comparison may pair: seed s of one method with seed s of the other
    (same cold start, same data order), or the one SFT model with every seed of the other
    method. A method run on fewer seeds (an ablation) is compared on those seeds only: pairing
    its one run with each of three GRPO seeds would count one run three times.

    >>> seed_pairs(["ivr_desc_s0"], ["grpo_s0", "grpo_s1", "grpo_s2"])
    [('ivr_desc_s0', 'grpo_s0')]
    >>> seed_pairs(["ivr_s0", "ivr_s1"], ["sft"])
    [('ivr_s0', 'sft'), ('ivr_s1', 'sft')]
    """
    if ra == ["sft"]:
        return [("sft", r) for r in rb]
    if rb == ["sft"]:
        return [(r, "sft") for r in ra]
    by_seed = {r.rsplit("_s", 1)[1]: r for r in rb}
    return [(r, by_seed[s]) for r in ra if (s := r.rsplit("_s", 1)[1]) in by_seed]


def summarise(
    plan: Plan, evals: dict[str, dict[str, dict]], coldstart: dict[str, Any]
) -> dict[str, Any]:
    """Per method and held-out set: the mean over seeds of each per-item metric with a bootstrap
    95% interval over items (checkpoints fixed) and, with ≥ 2 seeds, the t interval over seeds
    (what a re-run moves); paired comparisons pooled over seeds (eval/stats.py)."""
    from ..eval.stats import accuracy_ci, paired_test, pooled_paired, seed_summary

    for set_name, by_model in evals.items():  # every model answered the same items in order
        ids = {tuple(r["ids"]) for r in by_model.values()}
        if len(ids) != 1:
            raise ValueError(f"held-out {set_name}: models were evaluated on different items")
    names = run_names(plan)
    groups: dict[str, list[str]] = {"sft": ["sft"]}
    for n, m in names.items():
        groups.setdefault(m, []).append(n)
    methods: dict[str, Any] = {}
    for method, runs in groups.items():
        entry: dict[str, Any] = {
            "label": "SFT cold start" if method == "sft" else METHODS[method][0],
            "runs": runs,
        }
        for set_name, by_model in evals.items():
            cell = {}
            for metric in _METRICS:
                arrays = [a for r in runs if (a := _per_item(by_model[r], metric)) is not None]
                if not arrays:
                    continue
                ci = accuracy_ci(np.mean(arrays, axis=0))
                per_seed = [float(a.mean()) for a in arrays]
                cell[metric] = {**ci, "per_seed": per_seed}
                if len(per_seed) > 1:
                    cell[metric]["over_seeds"] = seed_summary(per_seed)
            entry[set_name] = cell
        if method != "sft":
            entry["train"] = {r: _train_stats(plan.out / "rl" / r) for r in runs}
        methods[method] = entry

    def compare(a: str, b: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        ra, rb = groups[a], groups[b]
        for set_name, by_model in evals.items():
            for metric in ("greedy/correct", "sampled/correct", "greedy/attr"):
                pairs = [
                    (_per_item(by_model[x], metric), _per_item(by_model[y], metric))
                    for x, y in seed_pairs(ra, rb)
                ]
                if not pairs or any(x is None or y is None for x, y in pairs):
                    continue
                # one pair (one seed): exact McNemar / paired t; several: pooled over seeds
                res = pooled_paired(pairs) if len(pairs) > 1 else paired_test(*pairs[0])
                if len(pairs) > 1 and "sft" not in (a, b):  # how much a re-run moves Δ
                    res["over_seeds"] = seed_summary(res["per_seed_diff"])
                out[f"{set_name}/{metric}"] = res
        return out

    comparisons = {}
    present = set(groups)
    for a, b in (
        ("ivr", "grpo"),
        ("ivr", "resample"),
        ("resample", "grpo"),
        ("ivr_desc", "grpo"),
        ("ivr", "ivr_desc"),
        ("sr1", "grpo"),
        ("grpo", "sft"),
        ("ivr", "sft"),
    ):
        if a in present and b in present:
            comparisons[f"{a} vs {b}"] = compare(a, b)
    return {
        "profile": plan.profile,
        "seeds": list(plan.seeds),
        "rl_steps": plan.p["rl_steps"],
        "coldstart": coldstart,
        "sets": {s: {"n": len(next(iter(e.values()))["ids"])} for s, e in evals.items()},
        "methods": methods,
        "comparisons": comparisons,
    }
