"""``ivr demo``: IVR-R1 against GRPO and the controls that could beat it, with honest statistics,
on a laptop CPU with nothing downloaded (issue 16).

    world       digit-sum scenes ("What is the sum of the digits inside the blue shapes?"):
                train + held-out A (seed 0), held-out B (a world seed never used in development),
                a dev set (seed 2) for anything looked at while building             data/synth.py
    cold start  the shipped checkpoint (built by ``--from-scratch``): a tiny Qwen2.5-VL whose
                vision tower reads digits; stage 1 answers, stage 2 critiques and rectifications
                of its OWN failures with the true diagnosis                      demo/coldstart.py
    rl          from that ONE checkpoint, per seed: GRPO · resample control · IVR-R1 (image)
                · IVR-R1 (own description, ablation seeds) · Vision-SR1 (if the profile asks)
                                                                                      rl/trainer.py
    eval        every model on A and B: greedy and k sampled answers per item, grounding
                (attribute fidelity of `<desc>`, self-consistency)                    eval/protocol.py
    stats       paired comparisons pooled over seeds (sign test on per-item means, bootstrap
                95% intervals): IVR-R1 vs GRPO, vs resample, RL vs SFT               eval/stats.py
    report      results.json + report.html                         demo/results.py, report.py

Every phase writes its outputs under ``--out`` and is skipped when they exist; training jobs
resume from their own last checkpoint. Two jobs run at a time, one torch thread each.

The package is the top layer (it may import any part of ivr; nothing but the CLI imports it):

    profiles.py   methods, profiles, the plan            phases.py     the phases above
    jobs.py       the process-pool jobs                  coldstart.py  the two-stage cold start
    results.py    results.json (``summarise``)           report.py     report.html (tables.py: markdown)

Importing ``ivr.demo`` is cheap: ``ivr --help`` builds the demo's flags, and every worker process
imports it before ``jobs.job_env`` sets its thread count. ``run_demo`` imports the phases.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from .profiles import METHODS, PROFILES, Plan


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``ivr demo`` (each overrides the profile's value)."""
    p.add_argument("--out", default="demo_out", help="output directory (resumable)")
    p.add_argument("--profile", default="default", choices=sorted(PROFILES))
    p.add_argument("--seeds", type=int, default=None, help="RL seeds per method (profile's)")
    p.add_argument("--rl-steps", type=int, default=None, help="RL steps per run (profile's)")
    p.add_argument("--workers", type=int, default=None, help="jobs in parallel (2)")
    p.add_argument(
        "--from-scratch",
        action="store_true",
        help="rebuild the cold start (two SFT stages, ~35 CPU-min) instead of the shipped one",
    )
    p.add_argument("--sft-seed", type=int, default=0, help="seed of a --from-scratch cold start")
    p.add_argument(
        "--stop-after",
        choices=("coldstart",),
        default=None,
        help="build the cold start and stop (with --from-scratch: then --export it)",
    )
    p.add_argument(
        "--export",
        action="store_true",
        help="copy the built cold start into the package as the shipped asset",
    )
    p.add_argument("--methods", default=None, help=f"comma list of {','.join(METHODS)} (profile's)")


def run_demo(args: argparse.Namespace) -> dict[str, Any]:
    """``ivr demo``: every phase, then results.json and report.html under ``args.out``."""
    from rich.console import Console

    from .phases import (
        export_coldstart,
        phase_coldstart,
        phase_eval,
        phase_rereason,
        phase_rl,
        phase_world,
    )
    from .report import write_report
    from .results import summarise

    console = Console()
    p = dict(PROFILES[args.profile])
    for key, value in (
        ("seeds", args.seeds),
        ("rl_steps", args.rl_steps),
        ("workers", args.workers),
    ):
        if value is not None:
            p[key] = value
    if args.methods:
        p["methods"] = tuple(m.strip() for m in args.methods.split(","))
        unknown = set(p["methods"]) - set(METHODS)
        if unknown:
            raise ValueError(
                f"--methods: unknown {sorted(unknown)}; expected some of {list(METHODS)}"
            )
    plan = Plan(
        out=Path(args.out),
        profile=args.profile,
        p=p,
        from_scratch=bool(args.from_scratch or p["from_scratch"]),
        sft_seed=args.sft_seed,
    )
    plan.out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        timings[name] = round(time.perf_counter() - t, 1)
        console.print(f"[green]✓[/] {name} ({timings[name]} s)")
        t = time.perf_counter()

    data = phase_world(plan, "world", 0, p["n"], p["n_test"])
    held_b = phase_world(plan, "world_b", 1, p["n_test"] + 100, p["n_test"])
    dev = phase_world(plan, "world_dev", 2, p["n_dev"] + 100, p["n_dev"])
    lap("worlds")
    sft, coldstart = phase_coldstart(plan, data, dev, console)
    lap("cold start")
    if args.export and plan.from_scratch:
        console.print(f"exported the cold start to {export_coldstart(sft, coldstart)}")
    if args.stop_after == "coldstart":
        return {"coldstart": coldstart, "model": str(sft)}
    rl = phase_rl(plan, sft, data, console)
    lap("rl")
    evals = phase_eval(plan, {"sft": sft, **rl}, {"A": data, "B": held_b}, console)
    lap("eval")
    results = summarise(plan, evals, coldstart)
    if plan.p["rereason_n"]:
        first = {"sft": sft} | {n: rl[n] for n in rl if n.startswith("ivr_s")}
        keep = dict(list(first.items())[:2])  # the cold start and the first IVR-R1 seed
        results["rereason"] = phase_rereason(plan, keep, data, console)
        lap("re-reasoning")
    results["timings_s"] = timings
    results["total_s"] = round(sum(timings.values()), 1)
    (plan.out / "results.json").write_text(json.dumps(results, indent=1))
    write_report(plan.out, results, data=data)
    lap("report")
    console.print(
        f"[bold]results[/]: {plan.out / 'results.json'}  [bold]report[/]: {plan.out / 'report.html'}"
    )
    return results


__all__ = ["METHODS", "PROFILES", "add_demo_arguments", "run_demo"]
