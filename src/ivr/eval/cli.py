"""``ivr eval``: evaluate a checkpoint on benchmarks, or compare two finished runs.

    ivr eval --model PATH --benchmarks mathvista,mmstar,synth:data/world --data-root DIR --out DIR
    ivr eval --compare runs/sft runs/ivr [--out DIR]

Only argparse at import time: ``ivr --help`` must not pay for torch. The benchmark names in the
help come from the loaders' registry (``ivr.eval.loaders.BENCHMARKS``), read when the parser is
built.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["add_eval_arguments", "run_eval"]


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``ivr eval`` flags to ``parser``."""
    parser.add_argument("--model", help="model directory (or Hub id where the Hub is reachable)")
    from ivr.eval.loaders import BENCHMARKS  # the registry (light: no torch)

    parser.add_argument(
        "--benchmarks",
        help=f"comma list: {', '.join(BENCHMARKS)}, NAME:DIR, "
        "synth:PATH[@split], a dataset path, a VLMEvalKit .tsv (see docs/eval.md)",
    )
    parser.add_argument("--data-root", help="directory holding the local benchmark copies")
    parser.add_argument("--out", help="run directory (predictions, tables, plot); reruns resume")
    parser.add_argument("--limit", type=int, help="first N items of each benchmark")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=1024)
    parser.add_argument(
        "--temperature", type=float, default=0.0, help="0 = greedy (the paper's setting)"
    )
    parser.add_argument("--seed", type=int, default=0, help="sampling seed when temperature > 0")
    parser.add_argument("--prompts", help="YAML file overriding the prompt texts (PromptSet keys)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 … (default: cuda if available)")
    parser.add_argument("--dtype", help="float32, bfloat16 … (default: bfloat16 on GPU)")
    parser.add_argument("--min-pixels", type=int, help="image processor min_pixels override")
    parser.add_argument("--max-pixels", type=int, help="image processor max_pixels override")
    parser.add_argument(
        "--rereason",
        type=int,
        default=0,
        metavar="N",
        help="then re-reason every wrong answer for up to N rounds (paper Fig. 5; oracle screen)",
    )
    parser.add_argument(
        "--rereason-context",
        default="image",
        help="comma list of rectification contexts: image, description (paper §5.2)",
    )
    parser.add_argument(
        "--compare",
        nargs=2,
        metavar=("RUN_A", "RUN_B"),
        help="print per-benchmark deltas B − A of two finished runs (no model needed)",
    )


def _compare(args: argparse.Namespace) -> int:
    from ivr.eval import tables

    run_a, run_b = args.compare
    cmp = tables.compare(run_a, run_b)
    label_a, label_b = Path(run_a).name or run_a, Path(run_b).name or run_b
    text = tables.compare_markdown(cmp, label_a, label_b)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.md").write_text(text + "\n")
        runs = {label_a: tables.load_results(run_a), label_b: tables.load_results(run_b)}
        (out / "compare.json").write_text(json.dumps(cmp, indent=2) + "\n")
        tables.plot_results(runs, out / "compare.png")
        print(f"\nwrote {out / 'compare.md'}, {out / 'compare.png'}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    """Run ``ivr eval`` from parsed arguments; returns the exit status."""
    if args.compare:
        return _compare(args)
    missing = [f for f in ("model", "benchmarks", "out") if not getattr(args, f)]
    if missing:
        flags = ", ".join("--" + m.replace("_", "-") for m in missing)
        raise ValueError(f"missing {flags} (or use --compare RUN_A RUN_B)")

    import torch

    from ivr.data.prompts import PromptSet
    from ivr.eval import tables
    from ivr.eval.runner import evaluate
    from ivr.models.policy import Policy

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    policy = Policy.from_pretrained(
        args.model,
        device=device,
        dtype=dtype,
        min_pixels=args.min_pixels,
        max_pixels=args.max_pixels,
    )
    results = evaluate(
        policy,
        args.benchmarks,
        data_root=args.data_root,
        out_dir=args.out,
        limit=args.limit,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        prompts=PromptSet.load(args.prompts),
        seed=args.seed,
        log=lambda msg: print(msg, file=sys.stderr),
    )
    print(tables.table1_markdown({Path(args.model).name or args.model: results}))
    print(f"\nwrote {Path(args.out) / tables.RESULTS_MD} and {tables.RESULTS_PNG}")
    if args.rereason:
        from ivr.eval.loaders import load_benchmark
        from ivr.eval.rereason import rereason_benchmark, rereason_markdown

        contexts = [c.strip() for c in args.rereason_context.split(",") if c.strip()]
        bad = [c for c in contexts if c not in ("image", "description")]
        if bad:
            raise ValueError(f"--rereason-context: {bad} not in ['image', 'description']")
        curves: dict[str, dict[str, list[float]]] = {}
        for spec in [b.strip() for b in args.benchmarks.split(",") if b.strip()]:
            bench = load_benchmark(spec, args.data_root, limit=args.limit)
            for ctx in contexts:
                res = rereason_benchmark(
                    policy, bench, args.out, rounds=args.rereason, context=ctx,
                    max_new_tokens=args.max_new_tokens, prompts=PromptSet.load(args.prompts),
                )  # fmt: skip
                curves.setdefault(bench.name, {})[ctx] = res["accuracy_by_round"]
        print("\n" + rereason_markdown(curves))
    return 0
