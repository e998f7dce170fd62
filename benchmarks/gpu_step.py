"""A GRPO step and an IVR-R1 step on a Qwen2.5-VL-7B-sized model: ivr vs TRL, tokens/s, memory, MFU.

The model is built from a config with random weights (nothing is downloaded): ``--size 7b`` has
the sizes of Qwen2.5-VL-7B-Instruct (``ivr.models.flops.QWEN2_5_VL_7B``: text 3584 hidden,
18944 intermediate, 28 layers, 28 heads, 4 kv heads, vocabulary 152064, untied LM head; vision
depth 32, hidden 1280), created directly on ``--device`` in ``--dtype`` (no float32 CPU copy).
``--size tiny`` is the same code path at toy sizes, to check the script on a CPU in a minute.
The tokenizer and image-only processor come from ``ivr.models.tiny.build_tiny_vlm`` (a small
BPE vocabulary: ids above it are valid model ids that decode to nothing).

The work is ``benchmarks/grpo_step.py``'s (imported from it): synthetic images of one coloured
shape (resized to ``--image-size`` px: 448 px = 256 visual tokens for the 7B), the same question
for every prompt, ``--prompts`` × ``--group`` completions per step, every completion exactly
``--max-new-tokens`` long (TRL: ``min_new_tokens``; ivr: eos suppressed), μ = 1, β = 0, token-level
loss, ε = 0.2, torch AdamW, constant lr, clip 1.0, micro-batches of ``--micro`` rows,
temperature 1, top_p 1, the same reward function, gradient checkpointing on for the 7B.

Runs, one after the other on ONE model object (a 7B with gradients and AdamW states is ~66 GB in
bf16: two trainers' copies do not fit one GPU, so the runs are sequential, not interleaved as in
``grpo_step.py``; each run frees its optimiser and gradients before the next): ivr GRPO, then
ivr IVR-R1 with ``--ivr`` (k = 2, T = 3; a random model is never right, so every group runs the
full loop: the worst case), then TRL's GRPOTrainer with ``--trl`` (skipped with a message where
TRL is not installed). ``--warmup`` steps of each are discarded, the next ``--steps`` are timed.

Per phase (ivr: rollout, rectify, update, other = prompts + reward + advantages; TRL: rollout =
its ``_generate``, update = everything else: rewards, scoring, forward/backward, optimiser):
seconds (median over steps, CUDA-synchronised at every phase boundary), generated tokens/s,
trained (completion) tokens/s, peak memory (``torch.cuda.max_memory_allocated`` since the phase
began — weights, gradients and optimiser states included; on CPU the peak heap in use, glibc
``mallinfo2``), and MFU: the model FLOPs of the forwards the phase actually ran
(``ivr.models.flops.FlopCounter``: shapes read by hooks, ×3 for forwards run with autograd,
checkpoint recomputation not counted) over the phase's seconds and ``--peak-tflops``.

    python benchmarks/gpu_step.py --size tiny --device cpu --ivr --trl        # check, ~1 min
    python benchmarks/gpu_step.py --size 7b --ivr --trl --out runs/gpu_step_7b.json

The last line is ``ratio ivr/TRL (s/step): X`` when both ran.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grpo_step import HeapSampler, build_ivr, build_trl, make_work  # noqa: E402

#: Model sizes: Qwen2_5_VLConfig keywords (token ids and eos/pad come from the tokenizer).
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {
        "text_config": {
            "hidden_size": 128,
            "intermediate_size": 384,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "vocab_size": 2048,  # > the tokenizer's, as for the 7B
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [4, 6, 6],
            },
        },
        "vision_config": {
            "depth": 2,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_heads": 4,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": [1],
            "out_hidden_size": 128,
        },
        "tie_word_embeddings": False,
    },
    "7b": None,  # filled from ivr.models.flops.QWEN2_5_VL_7B in build_model
}
#: Per-size defaults of the knobs left unset on the command line.
DEFAULTS = {
    "tiny": dict(max_new_tokens=32, image_size=112, micro=None, grad_ckpt=False),
    "7b": dict(max_new_tokens=256, image_size=448, micro=8, grad_ckpt=True),
}


# ---------------------------------------------------------------------- model
def build_model(size: str, model_dir: Path, device: str, dtype, attn: str | None):
    """A random-weight Qwen2.5-VL of ``size``, created on ``device`` in ``dtype``, with the token
    ids and generation config of the tokenizer in ``model_dir``."""
    import torch
    from transformers import (
        AutoConfig,
        GenerationConfig,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
    )

    from ivr.models.flops import QWEN2_5_VL_7B

    spec = SIZES[size] or {
        **QWEN2_5_VL_7B,
        "text_config": {
            **QWEN2_5_VL_7B["text_config"],
            "max_position_embeddings": 128000,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1000000.0,
                "mrope_section": [16, 24, 24],
            },
        },
    }
    tok_cfg = AutoConfig.from_pretrained(model_dir)
    ids = {
        k: getattr(tok_cfg, k)
        for k in (
            "image_token_id",
            "video_token_id",
            "vision_start_token_id",
            "vision_end_token_id",
        )
    }
    special = {
        k: getattr(tok_cfg.text_config, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")
    }
    config = Qwen2_5_VLConfig(
        text_config={**spec["text_config"], **special},
        vision_config=spec["vision_config"],
        tie_word_embeddings=spec["tie_word_embeddings"],
        **ids,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(
            config, dtype=dtype, attn_implementation=attn
        )
    model.generation_config = GenerationConfig.from_pretrained(model_dir)
    return model.eval()


# ---------------------------------------------------------------------- measuring
class Meter:
    """Per step and phase: seconds, FLOPs (from a ``FlopCounter``), peak memory, tokens.

    ``start_step()``, then ``switch(name)`` at each phase boundary (it returns the phase it
    left), ``add_tokens(kind, n)``, ``end_step()``. On CUDA every boundary synchronises and
    resets the peak-memory counter; on CPU a ``HeapSampler`` watches each phase.
    """

    def __init__(self, device: str, counter) -> None:
        import torch

        self.torch = torch
        self.cuda = device.startswith("cuda")
        self.counter = counter
        self.steps: list[dict[str, Any]] = []
        self.phase: str | None = None

    def _sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def _open(self, name: str) -> None:
        self._sync()
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()
            self._sampler = None
        else:
            self._sampler = HeapSampler(period_s=0.001).__enter__()
        self.phase = self.counter.phase = name
        self._t0 = time.perf_counter()

    def _close(self) -> None:
        self._sync()
        dt = time.perf_counter() - self._t0
        if self.cuda:
            peak = self.torch.cuda.max_memory_allocated()
        else:
            self._sampler.__exit__(None, None, None)
            peak = self._sampler.peak
        rec = self.cur["phases"].setdefault(
            self.phase, {"s": 0.0, "peak_bytes": 0, "generated": 0, "trained": 0}
        )
        rec["s"] += dt
        rec["peak_bytes"] = max(rec["peak_bytes"], peak)

    def start_step(self, first: str = "other") -> None:
        self.cur = {"phases": {}}
        self._flops0 = dict(self.counter.flops)
        self._sync()
        self._step_t0 = time.perf_counter()
        self._open(first)

    def switch(self, name: str) -> str:
        left = self.phase
        self._close()
        self._open(name)
        return left

    def add_tokens(self, kind: str, n: int) -> None:
        rec = self.cur["phases"].setdefault(
            self.phase, {"s": 0.0, "peak_bytes": 0, "generated": 0, "trained": 0}
        )
        rec[kind] += n

    def end_step(self) -> None:
        self._close()
        self.cur["s"] = time.perf_counter() - self._step_t0
        for name, rec in self.cur["phases"].items():
            rec["flops"] = self.counter.flops.get(name, 0.0) - self._flops0.get(name, 0.0)
        self.cur["peak_bytes"] = max(r["peak_bytes"] for r in self.cur["phases"].values())
        self.steps.append(self.cur)
        self.phase = self.counter.phase = "other"


def summarise(steps: list[dict[str, Any]], peak_tflops: float) -> dict[str, Any]:
    """Medians over the timed steps, per phase and for the whole step."""
    from ivr.models.flops import mfu

    med = statistics.median
    names = list(dict.fromkeys(n for s in steps for n in s["phases"]))
    out: dict[str, Any] = {"phases": {}}
    for name in names:
        recs = [s["phases"].get(name) for s in steps]
        recs = [r for r in recs if r is not None]
        sec = med([r["s"] for r in recs])
        flops = med([r["flops"] for r in recs])
        gen, trained = med([r["generated"] for r in recs]), med([r["trained"] for r in recs])
        out["phases"][name] = {
            "s": sec,
            "generated_tokens": gen,
            "trained_tokens": trained,
            "generated_tok_per_s": gen / sec if gen else None,
            "trained_tok_per_s": trained / sec if trained else None,
            "tflops": flops / 1e12,
            "mfu": mfu(flops, sec, peak_tflops),
            "peak_gb": max(r["peak_bytes"] for r in recs) / 1e9,
        }
    sec = med([s["s"] for s in steps])
    flops = med([sum(r["flops"] for r in s["phases"].values()) for s in steps])
    gen = med([sum(r["generated"] for r in s["phases"].values()) for s in steps])
    trained = med([sum(r["trained"] for r in s["phases"].values()) for s in steps])
    out["step"] = {
        "s": sec,
        "s_mean": statistics.fmean(s["s"] for s in steps),
        "generated_tokens": gen,
        "trained_tokens": trained,
        "generated_tok_per_s": gen / sec,
        "trained_tok_per_s": trained / sec,
        "tflops": flops / 1e12,
        "mfu": mfu(flops, sec, peak_tflops),
        "peak_gb": max(s["peak_bytes"] for s in steps) / 1e9,
    }
    return out


# ---------------------------------------------------------------------- runs
def run_ivr(args, model, processor, model_dir, samples, tmp, counter, ivr: bool):
    """Warm-up + timed steps of ivr's Trainer (GRPO, or IVR-R1 with ``ivr``) on ``model``."""
    from ivr.models.policy import Policy

    policy = Policy(model, processor)
    extra = (
        f"model.device={args.device}",
        f"model.dtype={args.dtype}",
        f"model.gradient_checkpointing={str(args.grad_ckpt).lower()}",
    )
    out_dir = tmp / ("ivr_rect" if ivr else "ivr")
    trainer = build_ivr(args, model_dir, samples, out_dir, ivr, policy=policy, extra=extra)
    meter = Meter(args.device, counter)
    real_generate, real_update = policy.generate, trainer.update
    seen = {"rollout": False}

    def generate(*a, **kw):
        name = "rectify" if seen["rollout"] else "rollout"
        seen["rollout"] = True
        left = meter.switch(name)
        try:
            out = real_generate(*a, **kw)
            meter.add_tokens("generated", sum(len(g.token_ids) for gs in out for g in gs))
        finally:
            meter.switch(left)
        return out

    def update(groups, *a, **kw):
        left = meter.switch("update")
        try:
            out = real_update(groups, *a, **kw)
            meter.add_tokens("trained", sum(len(r.token_ids) for g in groups for r in g.rollouts))
        finally:
            meter.switch(left)
        return out

    policy.generate, trainer.update = generate, update
    timed = []
    for k in range(1, args.warmup + args.steps + 1):
        seen["rollout"] = False
        meter.start_step()
        metrics = trainer.step(k)
        meter.end_step()
        if k > args.warmup:
            timed.append(meter.steps[-1])
            timed[-1]["completion_len"] = metrics.get("completion_len")
            timed[-1]["ivr_accepted"] = metrics.get("ivr/accepted")
    del policy.generate, trainer.update, trainer, policy
    return timed


def run_trl(args, model, processor, model_dir, rows, tmp, counter):
    """Warm-up + timed steps of TRL's GRPOTrainer on ``model`` (None where TRL is absent)."""
    try:
        import trl  # noqa: F401
        from transformers import PrinterCallback, TrainerCallback
    except Exception as e:  # absent, or not importable next to this transformers
        print(f"TRL not available ({type(e).__name__}: {e}): skipping the TRL run")
        return None
    meter = Meter(args.device, counter)
    batch = args.prompts * args.group

    class Steps(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            meter.start_step(first="update")

        def on_step_end(self, a, state, control, **kw):
            meter.end_step()

    from ivr.models.policy import Policy

    suppressed = list(Policy(model, processor).suppressed_token_ids)
    bf16 = args.dtype == "bfloat16" and args.device.startswith("cuda")
    trainer = build_trl(
        args,
        model_dir,
        rows,
        tmp / "trl",
        suppressed,
        Steps(),
        model=model,
        processor=processor,
        bf16=bf16,  # the weights are bf16 already; TRL's autocast flag only on CUDA
        gradient_checkpointing=args.grad_ckpt,
        use_cpu=not args.device.startswith("cuda"),
    )
    trainer.remove_callback(PrinterCallback)
    real_generate = trainer._generate

    def generate(*a, **kw):
        left = meter.switch("rollout")
        try:
            out = real_generate(*a, **kw)
            try:
                n = sum(len(c) for c in out[1])  # (prompt_ids, completion_ids, …)
            except Exception:
                n = batch * args.max_new_tokens
            meter.add_tokens("generated", n)
        finally:
            meter.switch(left)
        return out

    trainer._generate = generate
    trainer.train()
    lens = [
        r["completions/mean_length"]
        for r in trainer.state.log_history
        if "completions/mean_length" in r
    ]
    timed = meter.steps[args.warmup : args.warmup + args.steps]
    for s in timed:  # TRL trains every generated row; lengths are forced to max_new_tokens
        s["phases"]["update"]["trained"] = batch * args.max_new_tokens
        s["completion_len"] = statistics.fmean(lens) if lens else None
    del trainer._generate, trainer
    return timed


def free(model) -> None:
    """Drop the finished run's gradients (its optimiser went with its trainer)."""
    import torch

    model.zero_grad(set_to_none=True)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        print(f"  memory held after the run: {torch.cuda.memory_allocated() / 1e9:.1f} GB")


# ---------------------------------------------------------------------- report
def table(results: dict[str, Any]) -> list[str]:
    def f(x, fmt):
        return "—" if x is None else format(x, fmt)

    lines = [
        "| run | phase | s (median) | generated tok/s | trained tok/s | TFLOP | MFU | peak mem (GB) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run, res in results.items():
        s = res["summary"]
        for name, p in [*s["phases"].items(), ("**step**", s["step"])]:
            lines.append(
                f"| {run} | {name} | {p['s']:.3f} | {f(p['generated_tok_per_s'], ',.0f')} "
                f"| {f(p['trained_tok_per_s'], ',.0f')} | {p['tflops']:.4g} "
                f"| {p['mfu'] * 100:.3g}% | {p['peak_gb']:.2f} |"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=("tiny", "7b"), default="7b")
    p.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda if any)")
    p.add_argument(
        "--dtype", choices=("bfloat16", "float32"), help="default: bfloat16 on CUDA, float32 on CPU"
    )
    p.add_argument("--attn", default="sdpa", help="attn_implementation (sdpa, flash_attention_2…)")
    p.add_argument("--steps", type=int, default=3, help="timed steps of each run")
    p.add_argument("--warmup", type=int, default=1, help="discarded steps of each run")
    p.add_argument("--prompts", type=int, default=4, help="prompts per step")
    p.add_argument("--group", type=int, default=8, help="G: completions per prompt")
    p.add_argument("--max-new-tokens", type=int, help="every completion's length (7b: 256)")
    p.add_argument("--image-size", type=int, help="image side in px (7b: 448 = 256 tokens)")
    p.add_argument("--micro", type=int, help="rows per forward, both trainers (7b: 8)")
    p.add_argument("--grad-ckpt", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    p.add_argument("--ivr", action="store_true", help="also run an IVR-R1 step (k=2, T=3)")
    p.add_argument("--trl", action="store_true", help="also run TRL's GRPOTrainer")
    p.add_argument("--peak-tflops", type=float, default=790.0, help="MFU denominator")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args(argv)
    for k, v in DEFAULTS[args.size].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    batch = args.prompts * args.group
    args.micro = args.micro or batch
    if batch % args.micro:
        p.error(f"--micro {args.micro} must divide prompts × group = {batch}")
    # what grpo_step's builders read
    args.beta, args.mem_steps, args.no_shared_prefix = 0.0, 0, False

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    import torch
    import transformers
    from transformers import AutoProcessor
    from transformers.utils import logging as hf_logging

    from ivr.data.images import load_image
    from ivr.data.prompts import PromptSet, question_prompt
    from ivr.models import register_processors
    from ivr.models.flops import FlopCounter
    from ivr.models.policy import Policy
    from ivr.models.tiny import build_tiny_vlm

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    if not args.device.startswith("cuda"):
        torch.set_num_threads(args.threads)
    tmp_ctx = tempfile.TemporaryDirectory()
    tmp = Path(tmp_ctx.name)
    px = args.image_size**2
    model_dir = build_tiny_vlm(tmp / "tok", "qwen2_5_vl", min_pixels=min(px, 3136), max_pixels=px)
    register_processors()  # AutoProcessor must resolve the image-only class saved there
    processor = AutoProcessor.from_pretrained(model_dir)
    samples, rows = make_work(tmp / "img", 16, args.image_size)

    t0 = time.perf_counter()
    model = build_model(args.size, model_dir, args.device, getattr(torch, args.dtype), args.attn)
    if args.grad_ckpt:
        model.gradient_checkpointing_enable()
    build_s = time.perf_counter() - t0
    n_params = sum(q.numel() for q in model.parameters())
    prompt = question_prompt(samples[0], [load_image(samples[0].images[0])], PromptSet())
    prompt_len = int(Policy(model, processor).encode([prompt])["input_ids"].shape[1])
    gpu = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else None
    print(
        f"{args.size}: {n_params / 1e9:.3f}B params, built in {build_s:.1f} s on {args.device} "
        f"({gpu or platform.processor() or platform.machine()}), {args.dtype}; prompt "
        f"{prompt_len} tokens, {args.prompts}×{args.group} completions of {args.max_new_tokens}"
    )

    results: dict[str, Any] = {}
    with FlopCounter(model) as counter:
        runs = [("ivr GRPO", False)] + ([("ivr IVR-R1", True)] if args.ivr else [])
        for name, ivr in runs:
            steps = run_ivr(args, model, processor, model_dir, samples, tmp, counter, ivr)
            results[name] = {"steps": steps, "summary": summarise(steps, args.peak_tflops)}
            free(model)
            print(f"{name}: {results[name]['summary']['step']['s']:.3f} s/step")
        if args.trl:
            steps = run_trl(args, model, processor, model_dir, rows, tmp, counter)
            if steps is not None:
                results["TRL GRPO"] = {
                    "steps": steps,
                    "summary": summarise(steps, args.peak_tflops),
                }
                print(f"TRL GRPO: {results['TRL GRPO']['summary']['step']['s']:.3f} s/step")
            free(model)

    import importlib.metadata as md

    try:
        trl_version = md.version("trl")
    except md.PackageNotFoundError:
        trl_version = None
    versions = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl_version,
    }
    setup = {
        "size": args.size,
        "params": n_params,
        "device": args.device,
        "device_name": gpu,
        "dtype": args.dtype,
        "attn": args.attn,
        "grad_ckpt": args.grad_ckpt,
        "prompts": args.prompts,
        "group": args.group,
        "max_new_tokens": args.max_new_tokens,
        "image_size": args.image_size,
        "prompt_tokens": prompt_len,
        "micro": args.micro,
        "steps": args.steps,
        "warmup": args.warmup,
        "peak_tflops": args.peak_tflops,
        "threads": args.threads if args.device == "cpu" else None,
        "versions": versions,
    }
    cmd = "python benchmarks/gpu_step.py " + " ".join(argv if argv is not None else sys.argv[1:])
    mem = (
        "torch.cuda.max_memory_allocated"
        if args.device.startswith("cuda")
        else "heap in use (mallinfo2)"
    )
    out = [
        "",
        f"`{cmd.strip()}`",
        "",
        f"{args.size} Qwen2.5-VL ({n_params / 1e9:.3f}B params, random weights), {args.dtype}, "
        f"{args.device}{f' ({gpu})' if gpu else ''}, attention {args.attn}, gradient checkpointing "
        f"{'on' if args.grad_ckpt else 'off'}; {args.prompts} prompts × G={args.group}, prompt "
        f"{prompt_len} tokens ({args.image_size} px image), every completion "
        f"{args.max_new_tokens} tokens, micro-batch {args.micro}; medians of {args.steps} steps "
        f"after {args.warmup} warm-up; MFU against {args.peak_tflops:g} TFLOP/s; peak memory: "
        f"{mem}; torch {versions['torch']}, transformers {versions['transformers']}, "
        f"trl {versions['trl']}.",
        "",
        *table(results),
        "",
        f"process peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB",
    ]
    ratio = None
    if "ivr IVR-R1" in results:
        r = (
            results["ivr IVR-R1"]["summary"]["step"]["s"]
            / results["ivr GRPO"]["summary"]["step"]["s"]
        )
        out.append(f"ratio IVR/GRPO (s/step): {r:.2f}")
    if "TRL GRPO" in results:
        ivr_s, trl_s = (results[k]["summary"]["step"] for k in ("ivr GRPO", "TRL GRPO"))
        ratio = ivr_s["s"] / trl_s["s"]
        out.append(f"ratio ivr/TRL (step peak memory): {ivr_s['peak_gb'] / trl_s['peak_gb']:.2f}")
        out.append(f"ratio ivr/TRL (s/step): {ratio:.2f}")
    print("\n".join(out))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {"command": cmd.strip(), "setup": setup, "runs": results, "ratio_ivr_trl": ratio}
        args.out.write_text(json.dumps(payload, indent=1, default=str))
    tmp_ctx.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
