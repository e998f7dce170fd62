"""``ivr demo``: the whole method, end to end, on a laptop CPU with nothing downloaded.

    world      render the synthetic visual-reasoning world (train / held-out)     data/synth.py
    base       a tiny Qwen2.5-VL, random weights, tokenizer trained on the world   models/tiny.py
    sft        cold start: answers + critique + rectification demonstrations      sft.py
    rl         from the SAME SFT checkpoint, plain GRPO and IVR-R1, same budget    rl/trainer.py
               of steps and samples, for each seed (2 jobs at a time, 1 thread each)
    ablations  (--ablations) IVR k ∈ {1, 4}; test-time re-reasoning with the image vs a description
               (paper Fig. 5); Vision-R1 localization with staged thresholds on vs off
    eval       zero-shot, SFT, GRPO, IVR-R1 on the held-out split: accuracy per task, format,
               description fidelity (the quantity IVR-R1 claims to protect)
    report     results.json + report.html (tables, curves, ablations, rollout inspector)

Every phase writes its outputs under ``--out`` and is skipped when they exist, so an interrupted
demo picks up where it stopped (and each training job resumes from its own last checkpoint).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

#: Workload per profile. "default" fits ~15 minutes on 2 CPU cores; "smoke" is the test's.
PROFILES: dict[str, dict[str, Any]] = {
    "smoke": dict(
        n=600,
        n_test=48,
        hidden=64,
        layers=2,
        sft_steps=40,
        sft_batch=16,
        rl_steps=3,
        prompts_per_step=4,
        group=4,
        eval_n=48,
        max_new_tokens=80,
        loc_n=200,
        loc_sft_steps=20,
    ),
    "default": dict(
        n=10000,
        n_test=500,
        hidden=128,
        layers=3,
        sft_steps=1200,
        sft_batch=32,
        rl_steps=40,
        prompts_per_step=16,
        group=8,
        eval_n=400,
        max_new_tokens=96,
        loc_n=3000,
        loc_sft_steps=600,
    ),
    "full": dict(
        n=20000,
        n_test=1000,
        hidden=128,
        layers=3,
        sft_steps=3000,
        sft_batch=32,
        rl_steps=150,
        prompts_per_step=16,
        group=8,
        eval_n=1000,
        max_new_tokens=96,
        loc_n=6000,
        loc_sft_steps=1500,
    ),
}


@dataclass(frozen=True)
class Plan:
    out: Path
    profile: str
    seeds: tuple[int, ...]
    ablations: bool
    workers: int
    p: dict[str, Any]
    rl_lr: float = 2e-5


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo_out", help="output directory (resumable)")
    p.add_argument("--profile", default="default", choices=sorted(PROFILES))
    p.add_argument("--seeds", type=int, default=3, help="RL seeds per method")
    p.add_argument("--ablations", action="store_true", help="k, image-vs-description, Vision-R1")
    p.add_argument("--workers", type=int, default=2, help="training/eval jobs run in parallel")
    p.add_argument(
        "--rl-lr", type=float, default=2e-5, help="GRPO and IVR-R1 learning rate (DESIGN.md §3)"
    )


# ------------------------------------------------------------------------------------ jobs
def _job_env() -> None:
    """Child processes: one torch thread each (two busy threads on 2 cores were ~40× slower)."""
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


def _train_job(cfg_dict: dict[str, Any]) -> dict[str, float]:
    _job_env()
    from .config import config_from_dict
    from .rl.trainer import train

    return train(config_from_dict(cfg_dict, "demo"))


def _eval_job(
    model_dir: str, data_dir: str, limit: int, max_new_tokens: int, out_json: str
) -> dict:
    _job_env()
    from .data.dataset import load_samples
    from .eval.runner import evaluate_samples
    from .models.policy import Policy

    policy = Policy.from_pretrained(model_dir)
    samples = load_samples(data_dir, split="test", limit=limit)
    metrics, records = evaluate_samples(policy, samples, max_new_tokens=max_new_tokens)
    Path(out_json).write_text(json.dumps({"metrics": metrics, "records": records}))
    return metrics


def _rereason_job(
    model_dir: str, data_dir: str, limit: int, max_new_tokens: int, context: str, out_json: str
) -> dict:
    _job_env()
    from .config import IVRConfig
    from .data.dataset import load_samples
    from .data.images import load_image
    from .data.prompts import PromptSet
    from .eval.runner import evaluate_samples
    from .models.policy import Policy
    from .rl.rectify import rereason_eval
    from .rl.scoring import Scorer

    policy = Policy.from_pretrained(model_dir)
    samples = [
        s for s in load_samples(data_dir, split="test", limit=limit) if s.answer_type != "boxes"
    ]
    _, records = evaluate_samples(policy, samples, max_new_tokens=max_new_tokens)
    images = [tuple(load_image(p) for p in s.images) for s in samples]
    res = rereason_eval(
        policy.generate,
        samples,
        images,
        [r["completion"] for r in records],
        Scorer(),
        IVRConfig(context=context, rounds=3, critique_max_new_tokens=64),
        PromptSet(),
        max_new_tokens=max_new_tokens,
    )
    Path(out_json).write_text(json.dumps(res))
    return res


def _run_parallel(jobs: list[tuple[str, Callable, tuple]], workers: int, console) -> dict[str, Any]:
    """Run (name, fn, args) jobs on ``workers`` processes; returns {name: result}."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    results: dict[str, Any] = {}
    if not jobs:
        return results
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        task = bar.add_task(f"{len(jobs)} jobs", total=len(jobs))
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(fn, *args): name for name, fn, args in jobs}
            for fut in as_completed(futures):
                name = futures[fut]
                results[name] = fut.result()
                bar.update(task, advance=1, description=f"done: {name}")
    return results


# ------------------------------------------------------------------------------------ phases
def phase_world(plan: Plan, name: str = "data", task: str = "count", n: int | None = None) -> Path:
    from .data.synth import generate_dataset

    out = plan.out / name
    if not (out / "meta.json").is_file():
        generate_dataset(
            out,
            n=n or plan.p["n"],
            n_test=plan.p["n_test"],
            seed=0,
            tasks=[task],
            levels=[1],
            overwrite=True,
        )
    return out


def phase_base(plan: Plan, data: Path, name: str = "base") -> Path:
    from .data.dataset import load_sft_rows, sft_texts
    from .models.tiny import build_tiny_vlm

    out = plan.out / "models" / name
    if not (out / "config.json").is_file():
        corpus = sft_texts(load_sft_rows(data / "sft.jsonl"))
        build_tiny_vlm(
            out,
            "qwen2_5_vl",
            hidden=plan.p["hidden"],
            layers=plan.p["layers"],
            seed=0,
            corpus=corpus,
        )
    return out


def phase_sft(
    plan: Plan, base: Path, data: Path, name: str = "sft", steps: int | None = None
) -> Path:
    from .config import load_config
    from .sft import run_sft

    out = plan.out / name
    if (out / "final" / "config.json").is_file():
        return out / "final"
    cfg = load_config(
        None,
        [
            f"model.path={base}",
            "model.device=cpu",
            f"data.eval={data}",
            f"sft.data={data}",
            f"sft.steps={steps or plan.p['sft_steps']}",
            f"sft.batch_size={plan.p['sft_batch']}",
            "sft.lr=2e-3",
            "sft.warmup_steps=50",
            "sft.lr_schedule=cosine",
            "sft.eval_every=0",
            f"sft.eval_limit={min(256, plan.p['eval_n'])}",
            "sft.save_every=250",
            f"rollout.max_new_tokens={plan.p['max_new_tokens']}",
            f"train.output_dir={out}",
            "train.threads=1",
            f"train.resume={(out / 'checkpoints').is_dir()}",
            "log.tensorboard=false",
        ],
    )
    run_sft(cfg)
    return out / "final"


def rl_config(
    plan: Plan, sft: Path, data: Path, name: str, seed: int, **ivr: Any
) -> dict[str, Any]:
    from .config import load_config

    over = [
        f"model.path={sft}",
        "model.device=cpu",
        f"data.train={data}",
        f"rollout.group_size={plan.p['group']}",
        "rollout.temperature=1.0",
        "rollout.top_p=1.0",
        f"rollout.max_new_tokens={plan.p['max_new_tokens']}",
        f"algo.lr={plan.rl_lr}",
        "algo.beta=0.0",
        "algo.micro_batch_size=32",
        f"train.output_dir={plan.out / 'rl' / name}",
        f"train.seed={seed}",
        f"train.steps={plan.p['rl_steps']}",
        f"train.prompts_per_step={plan.p['prompts_per_step']}",
        "train.save_every=10",
        f"train.resume={(plan.out / 'rl' / name / 'checkpoints').is_dir()}",
        "train.threads=1",
        "log.progress=false",
        "log.tensorboard=false",
        f"algo.name={'ivr' if ivr else 'grpo'}",
    ]
    if ivr:
        over += ["ivr.enabled=true", "ivr.critique_max_new_tokens=64"] + [
            f"ivr.{k}={v}" for k, v in ivr.items()
        ]
    return load_config(None, over).to_dict()


def phase_rl(plan: Plan, sft: Path, data: Path, console) -> dict[str, Path]:
    runs: dict[str, dict[str, Any]] = {}
    for seed in plan.seeds:
        runs[f"grpo_s{seed}"] = rl_config(plan, sft, data, f"grpo_s{seed}", seed)
        runs[f"ivr_s{seed}"] = rl_config(plan, sft, data, f"ivr_s{seed}", seed, k=2)
    if plan.ablations:
        for k in (1, 4):
            runs[f"ivr_k{k}_s{plan.seeds[0]}"] = rl_config(
                plan, sft, data, f"ivr_k{k}_s{plan.seeds[0]}", plan.seeds[0], k=k
            )
    todo = [
        (n, _train_job, (c,))
        for n, c in runs.items()
        if not (plan.out / "rl" / n / "final" / "config.json").is_file()
    ]
    console.print(f"[bold]rl[/]: {len(runs)} runs ({len(todo)} to train)")
    _run_parallel(todo, plan.workers, console)
    return {n: plan.out / "rl" / n / "final" for n in runs}


def phase_eval(plan: Plan, models: dict[str, Path], data: Path, console) -> dict[str, dict]:
    out = plan.out / "eval"
    out.mkdir(parents=True, exist_ok=True)
    jobs = [
        (
            n,
            _eval_job,
            (str(m), str(data), plan.p["eval_n"], plan.p["max_new_tokens"], str(out / f"{n}.json")),
        )
        for n, m in models.items()
        if not (out / f"{n}.json").is_file()
    ]
    console.print(f"[bold]eval[/]: {len(models)} models ({len(jobs)} to evaluate)")
    _run_parallel(jobs, plan.workers, console)
    return {n: json.loads((out / f"{n}.json").read_text()) for n in models}


def phase_rereason(plan: Plan, sft: Path, data: Path, console) -> dict[str, Any]:
    out = plan.out / "ablations"
    out.mkdir(parents=True, exist_ok=True)
    limit = min(plan.p["eval_n"], 200)
    jobs = [
        (
            c,
            _rereason_job,
            (
                str(sft),
                str(data),
                limit,
                plan.p["max_new_tokens"],
                c,
                str(out / f"rereason_{c}.json"),
            ),
        )
        for c in ("image", "description")
        if not (out / f"rereason_{c}.json").is_file()
    ]
    console.print(
        f"[bold]ablation[/]: test-time re-reasoning, image vs description ({len(jobs)} to run)"
    )
    _run_parallel(jobs, plan.workers, console)
    return {
        c: json.loads((out / f"rereason_{c}.json").read_text()) for c in ("image", "description")
    }


def _loc_eval_job(model_dir: str, data_dir: str, limit: int, out_dir: str) -> dict:
    _job_env()
    from .eval.loaders import load_benchmark
    from .eval.runner import evaluate_benchmark
    from .models.policy import Policy

    bench = load_benchmark(f"synth:{data_dir}", limit=limit)
    summary = evaluate_benchmark(
        Policy.from_pretrained(model_dir), bench, Path(out_dir), max_new_tokens=LOC_TOKENS, log=None
    )
    loc = summary["localization"]
    return {k: loc[k] for k in ("mAP", "AP50", "AP75", "AR100", "reward") if k in loc}


LOC_TOKENS = 128  # three boxes in Qwen2.5-VL JSON fit with room to spare


def phase_localization(plan: Plan, console) -> dict[str, Any]:
    """Vision-R1 ablation: GRPO with the criteria-driven reward on the locate task, with the staged
    threshold progression (switch at half of training) and without it (switch_at = 1)."""
    data = phase_world(plan, "data_locate", task="locate", n=plan.p["loc_n"])
    base = phase_base(plan, data, "base_locate")
    sft = phase_sft(plan, base, data, "sft_locate", steps=plan.p["loc_sft_steps"])
    runs = {}
    for label, switch in (("staged", 0.5), ("no_stage", 1.0)):
        name = f"locate_{label}"
        cfg = rl_config(plan, sft, data, name, plan.seeds[0])
        cfg["reward"]["loc_switch_at"] = switch
        cfg["rollout"]["max_new_tokens"] = LOC_TOKENS
        runs[name] = cfg
    todo = [
        (n, _train_job, (c,))
        for n, c in runs.items()
        if not (plan.out / "rl" / n / "final" / "config.json").is_file()
    ]
    console.print(f"[bold]ablation[/]: Vision-R1 localization ({len(todo)} runs to train)")
    _run_parallel(todo, plan.workers, console)
    models = {
        "sft": sft,
        **{n.removeprefix("locate_"): plan.out / "rl" / n / "final" for n in runs},
    }
    out = plan.out / "ablations" / "locate"
    cached = out / "summary.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    jobs = [
        (n, _loc_eval_job, (str(m), str(data), plan.p["eval_n"], str(out / n)))
        for n, m in models.items()
    ]
    res = _run_parallel(jobs, plan.workers, console)
    summary = {
        "before (SFT)": res["sft"],
        "after, staged thresholds": res["staged"],
        "after, fixed thresholds": res["no_stage"],
    }
    out.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(summary, indent=1))
    return summary


# ------------------------------------------------------------------------------------ results
def _mean_std(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=float)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0}


def _rl_stats(run_dir: Path) -> dict[str, Any]:
    rows = [
        json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()
    ]
    out: dict[str, Any] = {"steps": len(rows)}
    if rows and "ivr/critiqued" in rows[0]:
        crit = sum(r["ivr/critiqued"] for r in rows)
        rounds = sorted(k for k in rows[0] if k.startswith("ivr/accepted_round_"))
        out["rectification"] = {
            "failed": sum(r["ivr/failed"] for r in rows),
            "critiqued": crit,
            "accepted": sum(r["ivr/accepted"] for r in rows),
            "success_rate": sum(r["ivr/accepted"] for r in rows) / crit if crit else 0.0,
            "accepted_per_round": [sum(r[k] for r in rows) for k in rounds],
        }
    out["time_per_step"] = float(np.mean([r["time/step"] for r in rows])) if rows else 0.0
    return out


def summarise(plan: Plan, evals: dict[str, dict], meta: dict[str, Any]) -> dict[str, Any]:
    """Per method: the mean and spread over seeds of every metric; per seed the raw numbers."""
    methods: dict[str, Any] = {}
    groups: dict[str, list[str]] = {"zero_shot": ["zero_shot"], "sft": ["sft"]}
    for name in evals:
        for method in ("grpo", "ivr"):
            if name.startswith(f"{method}_s"):
                groups.setdefault(method, []).append(name)
    for method, names in groups.items():
        keys = sorted({k for n in names for k in evals[n]["metrics"] if k != "n"})
        entry: dict[str, Any] = {}
        for k in keys:
            vals = [evals[n]["metrics"][k] for n in names if k in evals[n]["metrics"]]
            ms = _mean_std(vals)
            entry[k] = ms["mean"]
            entry[f"{k}_std"] = ms["std"]
        entry["seeds"] = {n: evals[n]["metrics"] for n in names}
        if method in ("grpo", "ivr"):
            entry["runs"] = {n: _rl_stats(plan.out / "rl" / n) for n in names}
            rect = [r["rectification"] for r in entry["runs"].values() if "rectification" in r]
            if rect:
                entry["rectification"] = {
                    "success_rate": float(np.mean([r["success_rate"] for r in rect])),
                    "accepted_per_round": np.mean(
                        [r["accepted_per_round"] for r in rect], axis=0
                    ).tolist(),
                    "critiqued": float(np.mean([r["critiqued"] for r in rect])),
                }
        methods[method] = entry
    return {
        "profile": plan.profile,
        "seeds": list(plan.seeds),
        "image_blind": meta.get("image_blind_baseline", meta.get("image_blind", {})),
        "methods": methods,
    }


def run_demo(args: argparse.Namespace) -> dict[str, Any]:
    from rich.console import Console

    from .report import write_report

    console = Console()
    plan = Plan(
        out=Path(args.out),
        profile=args.profile,
        seeds=tuple(range(args.seeds)),
        ablations=args.ablations,
        workers=max(1, args.workers),
        p=PROFILES[args.profile],
        rl_lr=args.rl_lr,
    )
    plan.out.mkdir(parents=True, exist_ok=True)
    _job_env()
    timings: dict[str, float] = {}
    t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        timings[name] = round(time.perf_counter() - t, 1)
        console.print(f"[green]✓[/] {name} ({timings[name]} s)")
        t = time.perf_counter()

    data = phase_world(plan)
    lap("world")
    base = phase_base(plan, data)
    lap("base model")
    sft = phase_sft(plan, base, data)
    lap("sft")
    rl = phase_rl(plan, sft, data, console)
    lap("rl")
    models = {"zero_shot": base, "sft": sft, **rl}
    evals = phase_eval(plan, models, data, console)
    lap("eval")
    meta = json.loads((data / "meta.json").read_text())
    results = summarise(plan, evals, meta)
    if plan.ablations:
        results["ablations"] = {
            "k": {f"k={k}": evals[f"ivr_k{k}_s{plan.seeds[0]}"]["metrics"] for k in (1, 4)}
            | {"k=2": evals[f"ivr_s{plan.seeds[0]}"]["metrics"]},
            "rereason": {
                c: {"accuracy_by_round": r["accuracy_by_round"], "n": r["n"]}
                for c, r in phase_rereason(plan, sft, data, console).items()
            },
            "localization": phase_localization(plan, console),
        }
        lap("ablations")
    results["timings_s"] = timings
    results["total_s"] = round(sum(timings.values()), 1)
    (plan.out / "results.json").write_text(json.dumps(results, indent=1))
    write_report(plan.out, results, data=data)
    lap("report")
    console.print(
        f"[bold]results[/]: {plan.out / 'results.json'}  [bold]report[/]: {plan.out / 'report.html'}"
    )
    return results


__all__ = ["PROFILES", "add_demo_arguments", "run_demo", "summarise"]
