"""Can a cold start USE a right critique? A dev-set diagnostic of the science demo.

For each wrong greedy answer of MODEL on the dev world (seed 2, never a held-out set), one
attempt each at T = 1: rectify with (a) the TRUE diagnosis (data/diagnose.py), (b) the model's own
critique, (c) a fresh sample of the original prompt. Prints the fix rate of each over the
failures and how often the own critique equals the true one.

    OMP_NUM_THREADS=1 python benchmarks/critique_oracle.py src/ivr/assets/coldstart_arith1 \
        runs/full/world_dev
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ivr.data.diagnose import diagnose
from ivr.data.images import load_image
from ivr.data.prompts import PromptSet, user_prompt
from ivr.eval.protocol import row_prompts
from ivr.models.policy import Policy
from ivr.rewards import extract_boxed, grade_answer


def right(text: str, row: dict) -> bool:
    boxed = extract_boxed(text or "")
    return boxed is not None and bool(grade_answer(boxed, row["answer"], row["answer_type"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("world")
    args = ap.parse_args()
    torch.set_num_threads(1)
    world = Path(args.world)
    rows = [json.loads(x) for x in (world / "test.jsonl").read_text().splitlines() if x.strip()]
    policy = Policy.from_pretrained(args.model)
    policy.model.eval()
    ps = PromptSet()
    greedy = []
    for i in range(0, len(rows), 32):
        gens = policy.generate(
            row_prompts(rows[i : i + 32], world), max_new_tokens=96, temperature=0
        )
        greedy += [g[0].text for g in gens]
    fails = [(r, g) for r, g in zip(rows, greedy) if not right(g, r)]
    print(
        f"greedy accuracy {1 - len(fails) / len(rows):.3f} on {len(rows)} items; {len(fails)} fail"
    )
    fixed = {"true critique": 0, "own critique": 0, "resample": 0, "own critique exact": 0}
    for i in range(0, len(fails), 16):
        chunk = fails[i : i + 16]
        images = [(load_image(world / r["image"]),) for r, _ in chunk]
        true = [diagnose(g, r).critique for r, g in chunk]
        asks = [
            user_prompt(ps.critique.format(question=r["question"], response=g), im)
            for (r, g), im in zip(chunk, images)
        ]
        own = [c[0].text for c in policy.generate(asks, max_new_tokens=64, temperature=1, seed=i)]
        fixed["own critique exact"] += sum(a.strip() == b for a, b in zip(own, true))
        for name, critiques in (("true critique", true), ("own critique", own)):
            prompts = [
                user_prompt(ps.rectify.format(question=r["question"], response=g, critique=c), im)
                for (r, g), c, im in zip(chunk, critiques, images)
            ]
            outs = policy.generate(prompts, max_new_tokens=96, temperature=1, seed=i + 1)
            fixed[name] += sum(right(o[0].text, r) for o, (r, _) in zip(outs, chunk))
        outs = policy.generate(
            row_prompts([r for r, _ in chunk], world), max_new_tokens=96, temperature=1, seed=i + 2
        )
        fixed["resample"] += sum(right(o[0].text, r) for o, (r, _) in zip(outs, chunk))
    n = max(len(fails), 1)
    print({k: f"{v}/{len(fails)} = {v / n:.3f}" for k, v in fixed.items()})


if __name__ == "__main__":
    main()
