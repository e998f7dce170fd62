"""What ``ivr demo`` runs: the methods it compares, the workload of each profile, and the plan
(profile + command-line overrides) every phase reads. Pure data: importing it costs nothing, so
``ivr --help`` and the demo's worker processes stay light.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The shipped cold start (``--from-scratch`` rebuilds it; docs/demo.md says how it was made).
ASSET = Path(__file__).parents[1] / "assets" / "coldstart_arith1"

#: Methods: label and the config overrides that make them (all from the same trainer).
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "grpo": ("GRPO", {}),
    "resample": (
        "Resample control",
        {"ivr.enabled": True, "ivr.strategy": "resample"},
    ),
    "ivr": ("IVR-R1 (image)", {"ivr.enabled": True, "ivr.context": "image"}),
    "ivr_desc": (
        "IVR-R1 (own description)",
        {"ivr.enabled": True, "ivr.context": "description"},
    ),
    "sr1": ("Vision-SR1 self-reward", {"reward.self_reward_weight": 1.0}),
}

_COMMON = dict(
    task="arith",
    level=1,
    image_size=112,
    hidden=128,
    layers=3,
    vision_hidden=128,
    vision_depth=4,
    sft_batch=32,
    group=8,
    max_new_tokens=96,
    rl_lr=2e-5,
    k=2,
    rounds=3,
    workers=2,
)
#: The world and cold start of the shipped asset (built with these; ``--from-scratch`` rebuilds).
_SCIENCE = _COMMON | dict(
    from_scratch=False,
    n=11000,
    n_test=1000,
    n_dev=500,
    sft1_steps=1800,
    mine_prompts=3000,
    mine_samples=4,
    sft2_steps=400,
    prompts_per_step=16,
    eval_n=1000,
)
#: Workload per profile. Times are measured on 2 CPU cores (benchmarks/RESULTS.md).
PROFILES: dict[str, dict[str, Any]] = {
    "smoke": _COMMON
    | dict(
        from_scratch=True,
        n=600,
        n_test=40,
        n_dev=40,
        hidden=64,
        layers=2,
        vision_hidden=64,
        vision_depth=2,
        sft1_steps=30,
        mine_prompts=24,
        mine_samples=4,
        sft2_steps=10,
        sft_batch=16,
        rl_steps=2,
        prompts_per_step=4,
        group=4,
        eval_n=24,
        eval_samples=2,
        max_new_tokens=64,
        methods=("grpo", "resample", "ivr", "ivr_desc"),
        seeds=2,
        ablation_seeds=1,
        rereason_n=16,
    ),
    "default": _SCIENCE
    | dict(
        rl_steps=60,
        eval_samples=0,
        methods=("grpo", "resample", "ivr"),
        seeds=1,
        ablation_seeds=0,
        rereason_n=0,
    ),
    "full": _SCIENCE
    | dict(
        rl_steps=120,
        eval_samples=4,
        methods=("grpo", "resample", "ivr", "ivr_desc", "sr1"),
        seeds=3,
        ablation_seeds=1,
        rereason_n=300,
    ),
}


@dataclass(frozen=True)
class Plan:
    """One ``ivr demo`` invocation: where it writes, the profile's workload ``p`` with the command
    line's overrides applied, and which cold start it starts from."""

    out: Path
    profile: str
    p: dict[str, Any]
    from_scratch: bool
    sft_seed: int = 0

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(range(self.p["seeds"]))

    @property
    def workers(self) -> int:
        return self.p["workers"]


def run_names(plan: Plan) -> dict[str, str]:
    """{run name: method}: every method on every seed; ablation methods on fewer seeds."""
    out = {}
    for method in plan.p["methods"]:
        n = plan.p["ablation_seeds"] if method in ("ivr_desc", "sr1") else len(plan.seeds)
        for seed in plan.seeds[:n]:
            out[f"{method}_s{seed}"] = method
    return out


__all__ = ["ASSET", "METHODS", "PROFILES", "Plan", "run_names"]
