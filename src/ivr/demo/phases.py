"""The phases of ``ivr demo``, in the order ``run_demo`` calls them: worlds → cold start → RL →
held-out eval → test-time re-reasoning. Each writes its outputs under ``plan.out`` and is skipped
when they exist; training jobs resume from their own last checkpoint. Model work runs in worker
processes (jobs.py), except the cold start's, which runs here with one torch thread.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from .jobs import eval_job, rereason_job, run_parallel, torch_threads, train_job
from .profiles import ASSET, METHODS, Plan, run_names

__all__ = [
    "REREASON_MODES",
    "export_coldstart",
    "phase_coldstart",
    "phase_eval",
    "phase_rereason",
    "phase_rl",
    "phase_world",
    "rl_config",
]


def phase_world(plan: Plan, name: str, seed: int, n: int, n_test: int) -> Path:
    from ..data.synth import generate_dataset

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
    from ..models.tiny import build_tiny_vlm
    from .coldstart import tokenizer_corpus

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
    from ..config import load_config
    from ..sft import run_sft

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
    if not plan.from_scratch:
        if not (ASSET / "config.json").is_file():
            raise FileNotFoundError(
                f"the shipped cold start is missing ({ASSET}); run `ivr demo --from-scratch`"
            )
        info = json.loads((ASSET / "coldstart.json").read_text())
        return ASSET, info
    with torch_threads(1):  # built in this process: one thread, as in the workers
        return _build_coldstart(plan, data, dev, console)


def _build_coldstart(plan: Plan, data: Path, dev: Path, console) -> tuple[Path, dict[str, Any]]:
    """Stage 1 SFT → mine the stage-1 model's own answers → stage 2 SFT (coldstart.py)."""
    from .coldstart import mine_own_answers, stage2_rows, summarise_mined

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
    from ..config import load_config

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


def phase_rl(plan: Plan, sft: Path, data: Path, console) -> dict[str, Path]:
    runs = {
        n: rl_config(plan, sft, data, n, int(n.rsplit("_s", 1)[1]), m)
        for n, m in run_names(plan).items()
    }
    todo = [
        (n, train_job, (c,))
        for n, c in runs.items()
        if not (plan.out / "rl" / n / "final" / "config.json").is_file()
    ]
    console.print(f"[bold]rl[/]: {len(runs)} runs ({len(todo)} to train)")
    run_parallel(todo, plan.workers, console)
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
                jobs.append((f"{set_name}/{n}", eval_job, args))
    console.print(f"[bold]eval[/]: {len(models)} models × {len(sets)} sets ({len(jobs)} to run)")
    run_parallel(jobs, plan.workers, console)
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
                jobs.append((f"{name}/{mode}", rereason_job, args))
    console.print(f"[bold]test-time re-reasoning[/]: {len(jobs)} runs")
    run_parallel(jobs, plan.workers, console)
    res = {}
    for name in models:
        res[name] = {}
        for mode in REREASON_MODES:
            r = json.loads((out / f"{name}_{mode}.json").read_text())
            res[name][mode] = {k: r[k] for k in ("accuracy_by_round", "generations", "n")}
    return res


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
