"""Sequential decode steps of the IVR-R1 loop, lock-step vs continuous batching, from a run's traces.

A run's ``traces.jsonl`` (one line per screened failure: its rounds' critique and rectification
texts) is re-tokenised with the model's tokenizer (+1 for the eos token, capped at the run's
``ivr.critique_max_new_tokens`` / ``rollout.max_new_tokens``). Per training step, the decode
steps one after the other that the loop needs:

    lock-step      Σ over rounds of (longest critique + longest rectification): what the trainer
                   does (every call waits for its longest row)
    per round      Σ over rounds of the longest critique + rectification of one job
    per job        the longest job's Σ over its rounds (each job pipelined on its own)

    python benchmarks/loop_steps.py runs/default_kv/rl/ivr_s0
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="an IVR-R1 run directory (traces.jsonl, config.yaml)")
    args = p.parse_args(argv)
    from transformers import AutoTokenizer

    from ivr.config import load_config

    run = Path(args.run)
    cfg = load_config(run / "config.yaml", [])
    tok = AutoTokenizer.from_pretrained(cfg.model.path)
    cap_c, cap_r = cfg.ivr.critique_max_new_tokens, cfg.rollout.max_new_tokens

    def length(text: str, cap: int) -> int:
        return min(len(tok(text)["input_ids"]) + 1, cap)

    steps: dict[int, list[list[tuple[int, int]]]] = {}
    for line in (run / "traces.jsonl").read_text().splitlines():
        t = json.loads(line)
        rounds = [
            (length(r["critique"], cap_c), length(r["rectified"], cap_r)) for r in t["rounds"]
        ]
        steps.setdefault(t["step"], []).append(rounds)
    lock, per_round, per_job = [], [], []
    for jobs in steps.values():
        n_rounds = max(len(j) for j in jobs)
        rows = [[j[r] for j in jobs if len(j) > r] for r in range(n_rounds)]
        lock.append(sum(max(c for c, _ in x) + max(r for _, r in x) for x in rows))
        per_round.append(sum(max(c + r for c, r in x) for x in rows))
        per_job.append(max(sum(c + r for c, r in j) for j in jobs))
    med = statistics.median
    print(f"{len(steps)} training steps; sequential decode steps per training step (median):")
    print(f"lock-step {med(lock):.1f}, per round {med(per_round):.1f}, per job {med(per_job):.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
