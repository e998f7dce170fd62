"""The IVR-R1 loop's cost on a real run: prompt-KV reuse on vs off, A/B in one process.

Two IVR-R1 trainers are built from the same RL config (a run's ``config.yaml``, e.g. the demo's
``runs/full/rl/ivr_s0/config.yaml``, which starts from the SFT cold start, so critiques and
rectifications are the real ones and some are accepted) — one with ``Policy.reuse_prompt_kv`` on,
one off — and stepped alternately (the order flips every step, so load from other processes
hits both alike). Same seeds, same weights: the two runs take the same trajectory up to float
summation order (the accepted counts printed per step should agree). Medians over the steps
after the first.

    python benchmarks/ivr_loop.py runs/full/rl/ivr_s0/config.yaml --steps 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config", help="an IVR-R1 run's config.yaml (model.path: its cold start)")
    p.add_argument("--steps", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(args.threads)
    from ivr.config import load_config
    from ivr.rl.trainer import Trainer

    tmp = tempfile.mkdtemp()

    def make(name: str, reuse: bool) -> Trainer:
        cfg = load_config(
            args.config,
            [
                f"train.output_dir={tmp}/{name}",
                "train.resume=false",
                f"train.steps={args.steps}",
                "train.save_every=0",
                "log.progress=false",
                "log.tensorboard=false",
                "log.jsonl=false",
            ],
        )
        trainer = Trainer(cfg)
        trainer.policy.reuse_prompt_kv = reuse
        return trainer

    runs = {"reuse on": make("on", True), "reuse off": make("off", False)}
    rows: dict[str, list[dict[str, float]]] = {k: [] for k in runs}
    for step in range(1, args.steps + 1):
        order = list(runs.items()) if step % 2 else list(reversed(runs.items()))
        for name, trainer in order:
            t0 = time.perf_counter()
            m = trainer.step(step)
            m["wall"] = time.perf_counter() - t0
            rows[name].append(m)
        print(
            f"step {step}: "
            + "; ".join(
                f"{n} rectify {r[-1]['time/rectify']:.2f} s, step {r[-1]['wall']:.2f} s, "
                f"accepted {r[-1].get('ivr/accepted', 0):.0f}"
                for n, r in rows.items()
            ),
            flush=True,
        )
    kv = runs["reuse on"].policy.__dict__.get("_prompt_kv")
    if kv is not None and kv.prompt_tokens:
        print(
            f"prompt tokens reused: {kv.reused_tokens} of {kv.prompt_tokens} "
            f"({100 * kv.reused_tokens / kv.prompt_tokens:.0f} %)"
        )
    med = {
        n: {k: statistics.median(m[k] for m in r[1:]) for k in ("time/rectify", "wall")}
        for n, r in rows.items()
    }
    for n, d in med.items():
        print(f"{n}: rectify {d['time/rectify']:.3f} s, step {d['wall']:.3f} s (median)")
    on, off = med["reuse on"], med["reuse off"]
    print(
        f"on/off: rectify {on['time/rectify'] / off['time/rectify']:.3f}, "
        f"step {on['wall'] / off['wall']:.3f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
