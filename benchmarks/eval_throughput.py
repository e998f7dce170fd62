"""Eval throughput: samples/s of ``ivr.eval.evaluate`` with the tiny Qwen2.5-VL.

What is timed: the whole harness on the synthetic world's test split (load → decode images →
batched greedy generation → grading → JSONL writes → tables and plot), end to end, and the
generation share of it. The tiny random model rarely emits eos, so nearly every sample runs to
``--max-new-tokens``: the figure is a worst case for a given length.

    python benchmarks/eval_throughput.py                    # 1 thread, CPU, prints a table
    python benchmarks/eval_throughput.py --append           # … and appends it to RESULTS.md
    python benchmarks/eval_throughput.py --device cuda --threads 4 --n 256 --batch-sizes 16,64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=64, help="test items")
    p.add_argument("--batch-sizes", default="1,8,16")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--append", action="store_true", help=f"append the table to {RESULTS.name}")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from ivr.data.synth import generate_dataset
    from ivr.eval.runner import evaluate
    from ivr.models.policy import Policy
    from ivr.models.tiny import build_tiny_vlm

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = build_tiny_vlm(tmp / "model", "qwen2_5_vl", seed=0)
        data = generate_dataset(tmp / "world", n=args.n + 8, n_test=args.n, seed=0)
        policy = Policy.from_pretrained(model_dir, device=args.device)
        n_params = sum(p.numel() for p in policy.model.parameters())
        kw = dict(max_new_tokens=args.max_new_tokens, log=None)
        evaluate(policy, [f"synth:{data}"], out_dir=tmp / "warmup", limit=4, batch_size=4, **kw)
        for bs in (int(b) for b in args.batch_sizes.split(",")):
            out = tmp / f"bs{bs}"
            t0 = time.perf_counter()
            res = evaluate(policy, [f"synth:{data}"], out_dir=out, batch_size=bs, **kw)
            wall = time.perf_counter() - t0
            s = res["benchmarks"]["synth"]
            preds = [json.loads(ln) for ln in (out / "synth" / "predictions.jsonl").open()]
            tokens = sum(r["num_tokens"] for r in preds) / len(preds)
            rows.append(
                {
                    "batch": bs,
                    "samples": s["graded"],
                    "wall_s": wall,
                    "e2e": s["graded"] / wall,
                    "gen": s["timing"]["samples_per_s"],
                    "tokens": tokens,
                }
            )

    header = (
        "| batch size | samples | wall (s) | samples/s end to end | samples/s generating "
        "| new tokens / sample |\n| ---: | ---: | ---: | ---: | ---: | ---: |\n"
    )
    body = "".join(
        f"| {r['batch']} | {r['samples']} | {r['wall_s']:.2f} | {r['e2e']:.1f} | {r['gen']:.1f} "
        f"| {r['tokens']:.1f} |\n"
        for r in rows
    )
    cmd = "python benchmarks/eval_throughput.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores "
        f"(1-min load average {os.getloadavg()[0]:.1f} at the end: other jobs share the box), "
        f"torch {torch.__version__}, {args.threads} thread(s), device {args.device}"
    )
    if args.device.startswith("cuda"):
        machine += f" ({torch.cuda.get_device_name(0)})"
    section = (
        f"\n## Eval throughput: tiny Qwen2.5-VL ({n_params / 1e6:.2f}M params), "
        f"{time.strftime('%Y-%m-%d')}\n\n"
        f"`{cmd.strip()}` — synthetic world test split, greedy, max_new_tokens "
        f"{args.max_new_tokens}; {machine}. End to end = load, decode, generate, grade, write "
        "predictions, tables and plot.\n\n" + header + body
    )
    print(section)
    if args.append:
        if not RESULTS.exists():
            RESULTS.write_text("# Benchmarks\n")
        with RESULTS.open("a") as f:
            f.write(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
