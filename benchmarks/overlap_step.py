"""Does the one-step off-policy overlap (``train.staleness: 1``) shorten a step here?

The same tiny Qwen2.5-VL (random weights, built offline), the same colour data, the same config,
run for ``--steps`` GRPO steps at staleness 0 and 1, each with ``--threads`` torch threads. The
reward prefers long answers so the updates are not empty. Reported per mode (medians over the
steps after the first two): time/step, the main thread's wait for the batch (time/rollout), and
the update; plus the speed-up and what ``overlap_speedup`` predicts from the synchronous run's
split (generation vs the rest) if both halves ran on separate resources.

    PYTHONPATH=src python benchmarks/overlap_step.py --threads 1
    PYTHONPATH=src python benchmarks/overlap_step.py --threads 2 --hidden 256 --layers 4
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch
from PIL import Image

from ivr.config import load_config
from ivr.models.tiny import build_tiny_vlm
from ivr.rl.trainer import Trainer
from ivr.rollout.overlap import overlap_speedup
from ivr.types import Sample


def by_length(completions, **_):
    return [len(c) / 10 for c in completions]


def run(root: Path, model: Path, samples, staleness: int, a) -> dict[str, float]:
    cfg = load_config(
        None,
        [
            f"model.path={model}",
            "model.device=cpu",
            f"train.output_dir={root / f'run{staleness}'}",
            f"train.steps={a.steps}",
            "train.save_every=0",
            f"train.prompts_per_step={a.prompts}",
            f"train.threads={a.threads}",
            f"train.staleness={staleness}",
            f"rollout.group_size={a.group}",
            f"rollout.max_new_tokens={a.max_new_tokens}",
            "rollout.top_p=1.0",
            "algo.lr=0.001",
            f"algo.micro_batch_size={a.group}",
            "log.progress=false",
            "log.tensorboard=false",
        ],
    )
    trainer = Trainer(cfg, samples=samples, extra_rewards=[(by_length, 1.0)])
    rows, real = [], trainer.step

    def timed(step):
        m = real(step)
        rows.append(m)
        return m

    trainer.step = timed
    trainer.train()
    rows = rows[2:]  # step 1 is always synchronous, step 2 pays the snapshot's first copy
    return {k: statistics.median(r[k] for r in rows) for k in rows[0] if k.startswith("time/")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = build_tiny_vlm(root / "model", hidden=a.hidden, layers=a.layers, seed=0)
        samples = []
        for i, c in enumerate(["red", "blue", "green", "white"] * 2):
            path = root / f"{i}.png"
            Image.new("RGB", (56, 56), c).save(path)
            samples.append(Sample(str(i), f"What colour {i}?", c, (str(path),), "text"))
        res = {s: run(root, model, samples, s, a) for s in (0, 1)}
    sync, over = res[0], res[1]
    gen = sync["time/rollout"]
    rest = sync["time/step"] - gen
    print(f"threads={a.threads} hidden={a.hidden} layers={a.layers} batch={a.prompts}x{a.group}")
    for s, r in res.items():
        print(
            f"  staleness {s}: step {r['time/step']:.3f}s  rollout(wait) {r['time/rollout']:.3f}s"
            f"  update {r['time/update']:.3f}s"
        )
    print(
        f"  generation share f = {gen / sync['time/step']:.2f}; measured speed-up "
        f"{sync['time/step'] / over['time/step']:.2f}x; on separate resources it would be "
        f"{overlap_speedup(gen, rest):.2f}x"
    )


if __name__ == "__main__":
    main()
