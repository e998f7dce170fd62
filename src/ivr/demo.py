"""``ivr demo``: IVR-R1 against GRPO and the controls that could beat it, with honest statistics,
on a laptop CPU with nothing downloaded (issue 16).

    world       digit-sum scenes ("What is the sum of the digits inside the blue shapes?"):
                train + held-out A (seed 0), held-out B (a world seed never used in development),
                a dev set (seed 2) for anything looked at while building             data/synth.py
    cold start  the shipped checkpoint (built by ``--from-scratch``): a tiny Qwen2.5-VL whose
                vision tower reads digits; stage 1 answers, stage 2 critiques and rectifications
                of its OWN failures with the true diagnosis                           coldstart.py
    rl          from that ONE checkpoint, per seed: GRPO · resample control · IVR-R1 (image)
                · IVR-R1 (own description, ablation seeds) · Vision-SR1 (if the profile asks)
                                                                                      rl/trainer.py
    eval        every model on A and B: greedy and k sampled answers per item, grounding
                (attribute fidelity of `<desc>`, self-consistency)                    eval/protocol.py
    stats       paired comparisons pooled over seeds (sign test on per-item means, bootstrap
                95% intervals): IVR-R1 vs GRPO, vs resample, RL vs SFT               eval/stats.py
    report      results.json + report.html

Every phase writes its outputs under ``--out`` and is skipped when they exist; training jobs
resume from their own last checkpoint. Two jobs run at a time, one torch thread each.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

#: The shipped cold start (``--from-scratch`` rebuilds it; docs/demo.md says how it was made).
ASSET = Path(__file__).parent / "assets" / "coldstart_arith1"

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
        methods=("grpo", "resample", "ivr", "ivr_desc"),
        seeds=3,
        ablation_seeds=1,
        rereason_n=300,
    ),
}


@dataclass(frozen=True)
class Plan:
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


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
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


def _eval_job(model_dir: str, data_dir: str, out_json: str, limit: int, samples: int, tokens: int):
    _job_env()
    from .eval.protocol import evaluate_heldout

    res = evaluate_heldout(
        model_dir,
        data_dir,
        out_json,
        limit=limit,
        samples=samples,
        max_new_tokens=tokens,
        progress=False,  # the demo's own bar counts jobs
    )
    return res["means"]


def _rereason_job(
    model_dir: str, data_dir: str, eval_json: str, limit: int, mode: str, tokens: int, out_json: str
) -> dict:
    """Test-time re-reasoning (paper Fig. 5) from the model's greedy held-out answers, at T = 1:
    critique + rectify with the image or its own description, or plain resampling (the same two
    generations per round)."""
    _job_env()
    from .config import IVRConfig
    from .data.dataset import load_samples
    from .data.images import load_image
    from .data.prompts import PromptSet
    from .eval.protocol import row_prompts
    from .models.policy import Policy
    from .rewards.scorer import Scorer
    from .rl.rectify import rereason_eval

    data = Path(data_dir)
    ev = json.loads(Path(eval_json).read_text())
    ids, responses = ev["ids"][:limit], ev["responses"][:limit]
    by_id = {s.id: s for s in load_samples(data, split="test", limit=limit)}
    rows = {
        r["id"]: r for r in map(json.loads, (data / "test.jsonl").read_text().splitlines()[:limit])
    }
    samples = [by_id[i] for i in ids]
    images = [tuple(load_image(p) for p in s.images) for s in samples]
    strategy, context = ("resample", "image") if mode == "resample" else ("rectify", mode)
    cfg = IVRConfig(rounds=3, context=context, strategy=strategy, critique_max_new_tokens=64)
    policy = Policy.from_pretrained(model_dir)
    policy.model.eval()
    res = rereason_eval(
        policy.generate,
        samples,
        images,
        responses,
        Scorer(),
        cfg,
        PromptSet(),
        max_new_tokens=tokens,
        temperature=1.0,
        original_prompts=row_prompts([rows[i] for i in ids], data),
    )
    res["mode"] = mode
    Path(out_json).write_text(json.dumps(res))
    return {"accuracy_by_round": res["accuracy_by_round"], "generations": res["generations"]}


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
def phase_world(plan: Plan, name: str, seed: int, n: int, n_test: int) -> Path:
    from .data.synth import generate_dataset

    out = plan.out / name
    if not (out / "meta.json").is_file():
        generate_dataset(
            out,
            n=n,
            n_test=n_test,
            seed=seed,
            tasks=[plan.p["task"]],
            levels=[plan.p["level"]],
            image_size=plan.p["image_size"],
            sft_mix=(1.0, 0.0, 0.0),  # stage 1 answers; stage 2 adds the model's own failures
            overwrite=True,
        )
    return out


def phase_base(plan: Plan, data: Path, seed: int) -> Path:
    from .coldstart import tokenizer_corpus
    from .models.tiny import build_tiny_vlm

    out = plan.out / "coldstart" / f"base_s{seed}"
    if not (out / "config.json").is_file():
        build_tiny_vlm(
            out,
            "qwen2_5_vl",
            hidden=plan.p["hidden"],
            layers=plan.p["layers"],
            vision_hidden=plan.p["vision_hidden"],
            vision_depth=plan.p["vision_depth"],
            seed=seed,
            corpus=tokenizer_corpus(data),
        )
    return out


def _sft(
    plan: Plan, init: Path, sft_data: Path, dev: Path, out: Path, steps: int, lr: float, warmup: int
) -> Path:
    from .config import load_config
    from .sft import run_sft

    if (out / "final" / "config.json").is_file():
        return out / "final"
    cfg = load_config(
        None,
        [
            f"model.path={init}",
            "model.device=cpu",
            f"data.eval={dev}",  # the dev world: held-out sets are never looked at while building
            f"sft.data={sft_data}",
            f"sft.steps={steps}",
            f"sft.batch_size={plan.p['sft_batch']}",
            f"sft.lr={lr}",
            f"sft.warmup_steps={warmup}",
            "sft.lr_schedule=cosine",
            "sft.eval_every=0",
            f"sft.eval_limit={min(200, plan.p['n_dev'])}",
            "sft.save_every=300",
            f"rollout.max_new_tokens={plan.p['max_new_tokens']}",
            f"train.output_dir={out}",
            f"train.seed={plan.sft_seed}",
            "train.threads=1",
            "train.resume=auto",  # resume a killed job; a fresh dir starts fresh
            "log.tensorboard=false",
            "log.progress=false",
        ],
    )
    run_sft(cfg)
    return out / "final"


def phase_coldstart(plan: Plan, data: Path, dev: Path, console) -> tuple[Path, dict[str, Any]]:
    """The checkpoint every RL run starts from: the shipped asset, or built here in two stages."""
    from .coldstart import mine_own_answers, stage2_rows, summarise_mined

    if not plan.from_scratch:
        if not (ASSET / "config.json").is_file():
            raise FileNotFoundError(
                f"the shipped cold start is missing ({ASSET}); run `ivr demo --from-scratch`"
            )
        info = json.loads((ASSET / "coldstart.json").read_text())
        return ASSET, info
    root = plan.out / "coldstart"
    s = plan.sft_seed
    base = phase_base(plan, data, s)
    console.print("[bold]cold start[/]: stage 1 (answers)")
    stage1 = _sft(plan, base, data, dev, root / f"sft1_s{s}", plan.p["sft1_steps"], 2e-3, 50)
    mined_file = root / f"mined_s{s}.jsonl"
    if not mined_file.is_file():
        console.print("[bold]cold start[/]: the stage-1 model answers training prompts at T = 1")
        mined = mine_own_answers(
            stage1,
            data,
            n_prompts=plan.p["mine_prompts"],
            samples=plan.p["mine_samples"],
            seed=s,
            max_new_tokens=plan.p["max_new_tokens"],
        )
        tmp = mined_file.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(m) + "\n" for m in mined))
        tmp.replace(mined_file)
    mined = [json.loads(x) for x in mined_file.read_text().splitlines() if x.strip()]
    summary = summarise_mined(mined)
    stage2_file = root / f"sft2_rows_s{s}.jsonl"
    if not stage2_file.is_file():
        rows = stage2_rows(data, mined, seed=s)
        for r in rows:  # image paths relative to the world's directory
            r["images"] = [str((data / p).resolve()) for p in r["images"]]
        stage2_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    console.print("[bold]cold start[/]: stage 2 (own-failure critiques and rectifications)")
    stage2 = _sft(
        plan, stage1, stage2_file, dev, root / f"sft2_s{s}", plan.p["sft2_steps"], 5e-4, 20
    )
    info = {"source": "built", "sft_seed": s, "stage1_mined": summary, "profile": plan.profile}
    (root / f"coldstart_s{s}.json").write_text(json.dumps(info, indent=1))
    return stage2, info


def rl_config(plan: Plan, sft: Path, data: Path, name: str, seed: int, method: str) -> dict:
    from .config import load_config

    over = [
        f"model.path={sft}",
        "model.device=cpu",
        f"data.train={data}",
        f"rollout.group_size={plan.p['group']}",
        "rollout.temperature=1.0",
        "rollout.top_p=1.0",
        f"rollout.max_new_tokens={plan.p['max_new_tokens']}",
        f"algo.lr={plan.p['rl_lr']}",
        "algo.beta=0.0",
        "algo.micro_batch_size=32",
        f"train.output_dir={plan.out / 'rl' / name}",
        f"train.seed={seed}",
        f"train.steps={plan.p['rl_steps']}",
        f"train.prompts_per_step={plan.p['prompts_per_step']}",
        "train.save_every=10",
        "train.resume=auto",
        "train.threads=1",
        "log.progress=false",
        "log.tensorboard=false",
        f"algo.name={'ivr' if method.startswith('ivr') else 'grpo'}",
        f"ivr.k={plan.p['k']}",
        f"ivr.rounds={plan.p['rounds']}",
        "ivr.critique_max_new_tokens=64",
    ]
    over += [f"{k}={v}" for k, v in METHODS[method][1].items()]
    return load_config(None, over).to_dict()


def run_names(plan: Plan) -> dict[str, str]:
    """{run name: method}: every method on every seed; ablation methods on fewer seeds."""
    out = {}
    for method in plan.p["methods"]:
        n = plan.p["ablation_seeds"] if method in ("ivr_desc", "sr1") else len(plan.seeds)
        for seed in plan.seeds[:n]:
            out[f"{method}_s{seed}"] = method
    return out


def phase_rl(plan: Plan, sft: Path, data: Path, console) -> dict[str, Path]:
    runs = {
        n: rl_config(plan, sft, data, n, int(n.rsplit("_s", 1)[1]), m)
        for n, m in run_names(plan).items()
    }
    todo = [
        (n, _train_job, (c,))
        for n, c in runs.items()
        if not (plan.out / "rl" / n / "final" / "config.json").is_file()
    ]
    console.print(f"[bold]rl[/]: {len(runs)} runs ({len(todo)} to train)")
    _run_parallel(todo, plan.workers, console)
    return {n: plan.out / "rl" / n / "final" for n in runs}


def phase_eval(
    plan: Plan, models: dict[str, Path], sets: dict[str, Path], console
) -> dict[str, dict[str, dict]]:
    """{set: {model: per-item results}}; sampled answers on set A only (the costlier half)."""
    out = plan.out / "eval"
    jobs = []
    for set_name, data in sets.items():
        samples = plan.p["eval_samples"] if set_name == "A" else 0
        for n, m in models.items():
            f = out / set_name / f"{n}.json"
            if not f.is_file():
                args = (
                    str(m),
                    str(data),
                    str(f),
                    plan.p["eval_n"],
                    samples,
                    plan.p["max_new_tokens"],
                )
                jobs.append((f"{set_name}/{n}", _eval_job, args))
    console.print(f"[bold]eval[/]: {len(models)} models × {len(sets)} sets ({len(jobs)} to run)")
    _run_parallel(jobs, plan.workers, console)
    return {s: {n: json.loads((out / s / f"{n}.json").read_text()) for n in models} for s in sets}


REREASON_MODES = ("image", "description", "resample")


def phase_rereason(
    plan: Plan, models: dict[str, Path], data: Path, console
) -> dict[str, dict[str, Any]]:
    """{model: {mode: accuracy by round}} on the first ``rereason_n`` items of held-out A."""
    out = plan.out / "rereason"
    out.mkdir(parents=True, exist_ok=True)
    n, jobs = plan.p["rereason_n"], []
    for name, m in models.items():
        for mode in REREASON_MODES:
            f = out / f"{name}_{mode}.json"
            if not f.is_file():
                ev = plan.out / "eval" / "A" / f"{name}.json"
                args = (str(m), str(data), str(ev), n, mode, plan.p["max_new_tokens"], str(f))
                jobs.append((f"{name}/{mode}", _rereason_job, args))
    console.print(f"[bold]test-time re-reasoning[/]: {len(jobs)} runs")
    _run_parallel(jobs, plan.workers, console)
    res = {}
    for name in models:
        res[name] = {}
        for mode in REREASON_MODES:
            r = json.loads((out / f"{name}_{mode}.json").read_text())
            res[name][mode] = {k: r[k] for k in ("accuracy_by_round", "generations", "n")}
    return res


# ------------------------------------------------------------------------------------ results
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


def summarise(
    plan: Plan, evals: dict[str, dict[str, dict]], coldstart: dict[str, Any]
) -> dict[str, Any]:
    """Per method and held-out set: the mean over seeds of each per-item metric with a bootstrap
    95% interval over items (checkpoints fixed) and, with ≥ 2 seeds, the t interval over seeds
    (what a re-run moves); paired comparisons pooled over seeds (eval/stats.py)."""
    from .eval.stats import accuracy_ci, paired_test, pooled_paired, seed_summary

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
                pa = [_per_item(by_model[r], metric) for r in ra]
                pb = [_per_item(by_model[r], metric) for r in rb]
                if any(x is None for x in pa + pb):
                    continue
                if len(pb) == 1:  # SFT: one model, paired with every seed of the other method
                    pb = pb * len(pa)
                if len(pa) == 1:
                    pa = pa * len(pb)
                pairs = list(zip(pa, pb))
                # one pair (one seed): exact McNemar / paired t; several: pooled over seeds
                res = pooled_paired(pairs) if len(pairs) > 1 else paired_test(*pairs[0])
                if len(ra) > 1 and len(rb) > 1:  # seed s vs seed s: how much a re-run moves Δ
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


def run_demo(args: argparse.Namespace) -> dict[str, Any]:
    from rich.console import Console

    from .report import write_report

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
    _job_env()
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


def export_coldstart(model_dir: Path, info: dict[str, Any], dest: Path = ASSET) -> Path:
    """Copy a built cold start into the package (the asset ``ivr demo`` starts from)."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for f in model_dir.iterdir():
        if f.is_file() and f.suffix in (".json", ".jinja", ".safetensors"):
            shutil.copy2(f, dest / f.name)
    (dest / "coldstart.json").write_text(json.dumps(info, indent=1))
    return dest


__all__ = ["METHODS", "PROFILES", "add_demo_arguments", "export_coldstart", "run_demo", "summarise"]
