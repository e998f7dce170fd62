"""The SFT recipe end to end, and its learning curve: synth → tiny VLM → SFT with periodic eval.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sft_curve.py --out runs/sft_curve

1. renders the synthetic world (``configs/sft_tiny.yaml``'s dataset: counting, level 1);
2. builds the tiny Qwen2.5-VL with a tokenizer trained on the world's text (prompts, answers,
   critiques, rectifications, role names);
3. runs ``ivr.sft.run_sft`` with the recipe (1,700 steps, eval every 100 on 256 held-out rows);
4. reads the run's ``metrics.jsonl`` and reports held-out accuracy, format rate and description
   fidelity against steps and minutes, next to the image-blind baseline (majority train answer
   per question, computed on exactly the evaluated rows);
5. writes ``curve.json`` + ``sft_curve.png`` under ``--out`` (the PNG also to
   ``benchmarks/sft_curve.png``) and appends a section to ``benchmarks/RESULTS.md``
   (``--no-append`` to skip).

Minutes are training minutes (forward, backward, optimiser; eval and checkpoints excluded) and
wall minutes (everything after pre-tokenisation). The machine's load is recorded: on a shared
2-core box the minutes move, the steps do not.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def world_texts(data_dir: Path) -> list[str]:
    """Every text a model sees in this world: the tokenizer's training corpus."""
    from ivr.data.sft_rows import load_sft_rows, sft_texts

    return sft_texts(load_sft_rows(data_dir))


def blind_baseline(data_dir: Path, limit: int) -> tuple[float, float]:
    """(image-blind accuracy on the first ``limit`` test rows, on the whole test split)."""
    from ivr.data.synth import image_blind_baseline

    def rows(name: str) -> list[dict]:
        return [json.loads(x) for x in (data_dir / name).read_text().splitlines() if x.strip()]

    train, test = rows("train.jsonl"), rows("test.jsonl")
    return (
        image_blind_baseline(train, test[:limit])["all"],
        image_blind_baseline(train, test)["all"],
    )


def plot(curve: list[dict], baseline: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, x_key, x_label in ((axes[0], "step", "SFT steps"), (axes[1], "cpu_min", "training CPU minutes (1 thread)")):  # fmt: skip
        xs = [r[x_key] for r in curve]
        ax.plot(xs, [r["accuracy"] for r in curve], "o-", label="held-out accuracy")
        ax.plot(xs, [r["format"] for r in curve], "s--", label="format rate", alpha=0.7)
        if curve and curve[0].get("desc_exact") is not None:
            ax.plot(xs, [r["desc_exact"] for r in curve], "^-", label="exact <desc>", alpha=0.8)
            ax.plot(xs, [r["desc_f1"] for r in curve], "v:", label="<desc> object F1", alpha=0.8)
        if curve and curve[0].get("desc_attr_f1") is not None:
            ax.plot(
                xs,
                [r["desc_attr_f1"] for r in curve],
                "x:",
                label="<desc> F1, positions ignored",
                alpha=0.8,
            )
        ax.axhline(baseline, color="gray", ls=":", label=f"image-blind baseline {baseline:.2f}")
        ax.set_xlabel(x_label)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("fraction of held-out rows")
    axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/sft_curve", help="work directory (data, model, run)")
    ap.add_argument("--config", default=str(ROOT / "configs" / "sft_tiny.yaml"))
    ap.add_argument("--n", type=int, default=10000, help="synthetic rows (train + test)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tasks", default="count")
    ap.add_argument("--levels", default="1")
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    ap.add_argument("--no-append", action="store_true", help="do not append to RESULTS.md")
    ap.add_argument("--append-from", help="a curve.json of an earlier run: report it, no run")
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. sft.steps=200")
    args = ap.parse_args(argv)
    if args.append_from:
        summary = json.loads(Path(args.append_from).read_text())
        report(summary, Path(args.append_from).parent, append=True, results=Path(args.results))
        return 0

    import torch

    from ivr.config import load_config
    from ivr.data.synth import generate_dataset
    from ivr.models.tiny import build_tiny_vlm
    from ivr.sft import run_sft

    out = Path(args.out)
    data, model_dir, run_dir = out / "data", out / "model", out / "run"
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    if not (data / "meta.json").is_file():
        generate_dataset(data, n=args.n, seed=args.seed, tasks=args.tasks, levels=args.levels,
                         overwrite=True)  # fmt: skip
    t_synth = time.perf_counter() - t0
    meta = json.loads((data / "meta.json").read_text())
    shutil.rmtree(model_dir, ignore_errors=True)
    build_tiny_vlm(model_dir, "qwen2_5_vl", hidden=128, layers=args.layers, vision_hidden=64,
                   vision_depth=2, seed=args.seed, corpus=world_texts(data))  # fmt: skip
    shutil.rmtree(run_dir, ignore_errors=True)
    overrides = [
        f"model.path={model_dir}",
        f"sft.data={data}",
        f"data.eval={data}",
        f"train.output_dir={run_dir}",
        *args.overrides,
    ]
    cfg = load_config(args.config, overrides)
    t1 = time.perf_counter()
    final = run_sft(cfg)
    t_run = time.perf_counter() - t1
    load1 = os.getloadavg()

    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x]
    curve = [
        {
            "step": r["step"],
            "cpu_min": round(r["time/train_cpu_elapsed"] / 60, 2),
            "train_min": round(r["time/train_elapsed"] / 60, 2),
            "wall_min": round(r["time/elapsed"] / 60, 2),
            "loss": round(r["sft/loss"], 4),
            "accuracy": r["eval/accuracy"],
            "format": r["eval/format"],
            "desc_exact": r.get("eval/desc_exact"),
            "desc_f1": r.get("eval/desc_f1"),
            "desc_attr_f1": r.get("eval/desc_attr_f1"),
        }
        for r in rows
        if "eval/accuracy" in r
    ]
    blind_eval, blind_all = blind_baseline(data, cfg.sft.eval_limit)
    n_params = sum(p.numel() for p in __import__("safetensors.torch", fromlist=["load_file"])
                   .load_file(str(Path(final["final_dir"]) / "model.safetensors")).values())  # fmt: skip
    summary = {
        "command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sft_curve.py "
        + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "dataset": {
            "n": args.n,
            "tasks": args.tasks,
            "levels": args.levels,
            "counts": meta["counts"],
        },
        "model_params": n_params,
        "image_blind_baseline": {"evaluated_rows": blind_eval, "test_split": blind_all},
        "seconds": {
            "synth": round(t_synth, 1),
            "encode": round(rows[0].get("time/encode", 0.0), 1),
            "run_sft": round(t_run, 1),
        },
        "date": time.strftime("%Y-%m-%d"),
        "recipe": {
            k: getattr(cfg.sft, k)
            for k in (
                "steps",
                "batch_size",
                "lr",
                "lr_schedule",
                "warmup_steps",
                "eval_every",
                "eval_limit",
            )
        },
        "threads": torch.get_num_threads(),
        "loadavg_start": [round(x, 2) for x in load0],
        "loadavg_end": [round(x, 2) for x in load1],
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "curve": curve,
    }
    (out / "curve.json").write_text(json.dumps(summary, indent=1))
    report(summary, out, append=not args.no_append, results=Path(args.results))
    return 0


def report(s: dict, out: Path, *, append: bool, results: Path) -> None:
    """Print the curve, plot it, and (``append``) add a section to RESULTS.md + the PNG."""
    r0 = s["recipe"]
    title = (
        f"SFT from scratch, tiny Qwen2.5-VL ({s['model_params'] / 1e6:.2f}M params), synthetic "
        f"world ({s['dataset']['tasks']}, level {s['dataset']['levels']}), {r0['steps']} steps "
        f"× batch {r0['batch_size']}"
    )
    png = out / "sft_curve.png"
    plot(s["curve"], s["image_blind_baseline"]["evaluated_rows"], png, title)
    print(json.dumps({k: v for k, v in s.items() if k != "curve"}, indent=1))
    for line in table(s["curve"]):
        print(line)
    if append:
        shutil.copy(png, ROOT / "benchmarks" / "sft_curve.png")
        append_results(results, s)


def table(curve: list[dict]) -> list[str]:
    rows = [
        "| step | CPU min | train min | wall min | loss | accuracy | format | exact `<desc>` "
        "| `<desc>` F1 | `<desc>` F1 w/o positions |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def f(v):
        return "–" if v is None else f"{v:.3f}"

    for r in curve:
        rows.append(
            f"| {r['step']} | {r['cpu_min']:.2f} | {r['train_min']:.2f} | {r['wall_min']:.2f} | "
            f"{r['loss']:.4f} | {r['accuracy']:.3f} | {r['format']:.3f} | {f(r['desc_exact'])} | "
            f"{f(r['desc_f1'])} | {f(r.get('desc_attr_f1'))} |"
        )
    return rows


def append_results(path: Path, s: dict) -> None:
    c, r0 = s["curve"], s["recipe"]
    blind = s["image_blind_baseline"]
    lines = [
        "",
        f"## SFT cold start from scratch: learning curve ({s['date']})",
        "",
        f"Command: `{s['command']}` (recipe `configs/sft_tiny.yaml`; `ivr sft --config "
        "configs/sft_tiny.yaml` runs the same SFT on an existing dataset and model).",
        "",
        f"Tiny Qwen2.5-VL trained from scratch ({s['model_params'] / 1e6:.2f}M parameters, BPE "
        f"tokenizer trained on the world's text). Synthetic world: tasks {s['dataset']['tasks']}, "
        f"level {s['dataset']['levels']}, {s['dataset']['counts']['train']} train rows, SFT "
        f"demonstrations {s['dataset']['counts']['sft']}. {r0['steps']} steps × batch "
        f"{r0['batch_size']}, AdamW lr {r0['lr']:g}, {r0['lr_schedule']} with {r0['warmup_steps']} "
        f"warmup steps. Eval every {r0['eval_every']} steps on the first {r0['eval_limit']} test "
        f"rows, greedy, graded by the training scorer. {s['threads']} torch thread on a "
        f"{s['cpus']}-core box: load average {s['loadavg_start'][0]} at the start, "
        f"{s['loadavg_end'][0]} at the end (1.0 = this run alone; above that, other jobs shared "
        "the cores and inflated wall and train minutes, while *CPU minutes*, the process CPU time "
        "of the training steps, stay comparable; steps are what the recipe fixes).",
        "",
        f"Image-blind baseline (majority train answer per question string): "
        f"{blind['evaluated_rows']:.3f} on the evaluated rows ({blind['test_split']:.3f} on the "
        "whole test split).",
        "",
        *table(c),
    ]
    if c:
        best, last = max(c, key=lambda r: r["accuracy"]), c[-1]
        lines += [
            "",
            f"Final: accuracy {last['accuracy']:.3f} at step {last['step']} (best "
            f"{best['accuracy']:.3f} at step {best['step']}) against {blind['evaluated_rows']:.3f} "
            f"image-blind; format {last['format']:.3f}; exact descriptions "
            f"{last['desc_exact'] if last['desc_exact'] is not None else float('nan'):.3f}. "
            f"{last['cpu_min']:.1f} CPU minutes of training ({last['train_min']:.1f} wall, "
            f"{last['wall_min']:.1f} with evals); pre-tokenisation "
            f"{s['seconds']['encode'] / 60:.1f} min. Plot: `benchmarks/sft_curve.png`.",
        ]
    with path.open("a") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
