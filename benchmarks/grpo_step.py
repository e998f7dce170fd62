"""One GRPO step, ivr vs TRL's GRPOTrainer, on the same work, in one process (and IVR vs GRPO).

The same tiny Qwen2.5-VL (built offline with ``build_tiny_vlm``, random weights, loaded twice
from the same directory: each trainer owns its copy), the same synthetic data (112×112 images of
one coloured shape on a coloured background = 16 visual tokens each, one question of a fixed
length, so every prompt has the same token count), the same batch (``--prompts`` × ``--group``
completions), μ = 1, the same β, the same loss (token-level mean over the whole batch: TRL's
``loss_type="dapo"`` = ivr's ``algo.aggregation=token``, ε = 0.2 both sides), the same optimiser
(torch AdamW, constant lr, grad-norm clip 1.0), the same micro-batching (``--micro`` rows per
forward: ivr ``algo.micro_batch_size``, TRL ``per_device_train_batch_size`` with gradient
accumulation up to the batch), float32, no gradient checkpointing, CPU, ``--threads`` torch
threads (1 by default: DESIGN.md §3), temperature 1, top_p 1, the same reward function
(``ivr.rewards.combined_reward``).

Equal lengths: every completion is exactly ``--max-new-tokens`` long in both trainers. TRL gets
``generation_kwargs={"min_new_tokens": L}`` (HF masks every eos id for the first L steps, i.e.
always); ivr's policy gets its eos ids added to the tokens it suppresses (masked to −inf when
sampling and when scoring — the same effect, done through the one knob ``Policy`` has). Both
suppress the same vision tokens (TRL's ``suppress_tokens`` is set to ivr's list). The reward
is ~0 for a random model, so advantages are ~0 — the arithmetic is the same regardless.

Timing: TRL drives the loop (``GRPOTrainer.train``); a ``TrainerCallback`` times each TRL
optimiser step from ``on_step_begin`` to ``on_step_end`` and then runs one ivr step (and one IVR
step with ``--ivr``), timed around ``Trainer.step``. Interleaving step by step means that load
from other processes hits both sides alike. The first ``--warmup`` steps of each are discarded;
medians of the next ``--steps`` are reported (means in brackets).

IVR-R1 vs GRPO (``--ivr``), two settings in the same run, each an ivr GRPO trainer and an ivr
IVR-R1 trainer (k = 2, T = 3) interleaved with the rest: the **worst case** — the shapes above,
every completion (critiques included) exactly ``--max-new-tokens`` long, and since a random model
is never right every job runs all T rounds; and the **demo setting** (``DEMO``) — the demo's
shapes (16 prompts × G, rollouts of up to 96 tokens, critiques of up to 64) with completions that
end at eos with the demo's mean length (``eos_at_rate``), still nothing accepted (the demo
accepted ~11 % of its jobs, so this is a little harsher than the demo). Printed:
``ratio IVR/GRPO, worst case`` and ``ratio IVR/GRPO, demo setting``.

Memory: after the timed steps, ``--mem-steps`` more steps of each run with a sampling thread that
reads glibc's ``mallinfo2`` (bytes in use: arenas + mmapped chunks, which is where torch's CPU
allocator gets its memory) every ~0.5 ms; reported is the peak in-use heap during the step minus
the in-use heap when the step began, i.e. the step's transient memory (activations, logits,
gradients, generation caches), not the weights and optimiser state that both hold throughout.
Process peak RSS (``ru_maxrss``) is printed too, for both together.

    python benchmarks/grpo_step.py                       # ivr vs TRL, 10 warm steps each
    python benchmarks/grpo_step.py --ivr                 # + IVR/GRPO: worst case, demo setting
    python benchmarks/grpo_step.py --beta 0.04 --micro 8 --append

The last line is ``ratio ivr/TRL (s/step): X`` (median step time of ivr over TRL's).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import platform
import resource
import statistics
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
#: The demo's setting (``ivr demo``, configs/ivr_tiny.yaml; runs/full measured a mean completion
#: of 54 tokens of 96): 16 prompts × G, rollouts of up to 96 tokens, critiques of up to 64, and an
#: eos probability per token that gives that mean under the 96 cap (geometric: 1/75 → 54.2).
DEMO = {"prompts": 16, "max_new_tokens": 96, "critique_tokens": 64, "eos_rate": 1 / 75}
QUESTION = "What colour is the shape in the image?"
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 180, 60),
    "blue": (40, 60, 220),
    "yellow": (230, 210, 40),
    "purple": (140, 50, 170),
    "orange": (240, 140, 20),
    "white": (250, 250, 250),
    "black": (10, 10, 10),
}


# ---------------------------------------------------------------------- memory
class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


class HeapSampler:
    """Peak bytes in use (glibc arenas + mmapped chunks) while the ``with`` block runs, minus
    the bytes in use when it began. Falls back to RSS deltas where mallinfo2 is missing."""

    def __init__(self, period_s: float = 0.0005) -> None:
        self.period = period_s
        libc = ctypes.CDLL("libc.so.6") if sys.platform.startswith("linux") else None
        self._mallinfo2 = getattr(libc, "mallinfo2", None) if libc else None
        if self._mallinfo2 is not None:
            self._mallinfo2.restype = _MallInfo2
        self.kind = "heap in use (mallinfo2)" if self._mallinfo2 else "RSS"
        self.peak_delta = 0

    def in_use(self) -> int:
        if self._mallinfo2 is not None:
            m = self._mallinfo2()
            return int(m.uordblks + m.hblkhd)
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> HeapSampler:
        self._stop = threading.Event()
        self.base = self.peak = self.in_use()

        def poll() -> None:
            while not self._stop.is_set():
                self.peak = max(self.peak, self.in_use())
                time.sleep(self.period)

        self._thread = threading.Thread(target=poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.in_use())
        self.peak_delta = self.peak - self.base


# ---------------------------------------------------------------------- data
def make_images(root: Path, n: int) -> list[tuple[Path, str]]:
    """``n`` 112×112 PNGs: one shape of a named colour on a contrasting background."""
    from PIL import Image, ImageDraw

    names = list(COLOURS)
    out = []
    for i in range(n):
        colour = names[i % len(names)]
        bg = COLOURS[names[(i + 3) % len(names)]]
        im = Image.new("RGB", (112, 112), bg)
        d = ImageDraw.Draw(im)
        x0, y1 = 20 + 4 * (i % 5), 88 - 3 * (i % 4)
        if i % 3 == 0:
            d.ellipse((x0, 24, 84, y1), fill=COLOURS[colour])
        elif i % 3 == 1:
            d.rectangle((x0, 24, 84, y1), fill=COLOURS[colour])
        else:
            d.polygon([(x0, y1), (84, y1), ((x0 + 84) // 2, 24)], fill=COLOURS[colour])
        path = root / f"{i}.png"
        im.save(path)
        out.append((path, colour))
    return out


def make_work(root: Path, n: int, size: int = 112):
    """``n`` images (``make_images``, resized to ``size`` px) → ivr ``Sample``s and TRL rows
    ``(path, user text, answer)``: TRL gets exactly the user text ivr builds (the
    <desc>/<think>/\\boxed{} instruction), so every prompt has the same token count."""
    from PIL import Image

    from ivr.data.images import load_image
    from ivr.data.prompts import PromptSet, question_prompt
    from ivr.types import Sample

    root.mkdir(parents=True, exist_ok=True)
    images = make_images(root, n)
    if size != 112:
        for path, _ in images:
            Image.open(path).resize((size, size), Image.Resampling.BICUBIC).save(path)
    samples = [
        Sample(id=str(i), question=QUESTION, answer=c, images=(str(path),), answer_type="text")
        for i, (path, c) in enumerate(images)
    ]
    texts = [
        question_prompt(s, [load_image(s.images[0])], PromptSet()).messages[0]["content"][-1][
            "text"
        ]
        for s in samples
    ]
    return samples, [(path, t, c) for (path, c), t in zip(images, texts)]


# ---------------------------------------------------------------------- trainers
def fixed_length(policy) -> None:
    """Make every completion exactly ``max_new_tokens`` long: the eos ids join the suppressed
    tokens (−inf when sampling and scoring) — TRL's ``min_new_tokens`` done through the one knob
    ``Policy`` has."""
    import torch

    policy._suppressed = tuple(sorted(set(policy._suppressed) | set(policy.eos_token_ids)))
    policy._suppressed_t = torch.tensor(policy._suppressed, dtype=torch.long)


def eos_at_rate(policy, rate: float) -> None:
    """Completions that end like the demo's: the first eos id gets probability ``rate`` at every
    position (its logit set to logsumexp(others) + log(rate / (1 − rate)), a forward hook on the
    LM head, so sampling and scoring see the same distribution): lengths are geometric, mean
    (1 − (1 − rate)^L) / rate for a cap of L tokens."""
    import math

    import torch

    eos = policy.eos_token_ids[0]
    head = policy.model.get_output_embeddings()

    def hook(module, inputs, logits):
        others = logits.index_fill(-1, torch.tensor([eos], device=logits.device), float("-inf"))
        value = torch.logsumexp(others, -1, keepdim=True) + math.log(rate / (1 - rate))
        return logits.index_copy(-1, torch.tensor([eos], device=logits.device), value)

    head.register_forward_hook(hook)


def build_ivr(
    args,
    model_dir: Path,
    samples,
    out: Path,
    ivr: bool,
    *,
    policy=None,
    extra=(),
    prompts: int | None = None,
    max_new_tokens: int | None = None,
    critique_tokens: int | None = None,
    eos_rate: float | None = None,
):
    """ivr's Trainer on the benchmark's work. ``policy`` (default: loaded from ``model_dir`` on
    the CPU in float32) and ``extra`` config overrides let other benchmarks reuse it. The shapes
    default to ``args``'; ``eos_rate`` lets completions end (``eos_at_rate``) instead of running
    exactly ``max_new_tokens``."""
    prompts = prompts or args.prompts
    max_new_tokens = max_new_tokens or args.max_new_tokens
    critique_tokens = critique_tokens or max_new_tokens
    from ivr.config import load_config
    from ivr.models.policy import Policy
    from ivr.rl.trainer import Trainer

    overrides = [
        f"model.path={model_dir}",
        "model.device=cpu",
        f"train.output_dir={out}",
        "train.steps=1000000",
        f"train.prompts_per_step={prompts}",
        "train.save_every=0",
        f"train.threads={args.threads}",
        f"rollout.group_size={args.group}",
        f"rollout.max_new_tokens={max_new_tokens}",
        "rollout.temperature=1.0",
        "rollout.top_p=1.0",
        f"algo.lr={args.lr}",
        f"algo.beta={args.beta}",
        "algo.aggregation=token",
        f"algo.micro_batch_size={args.micro}",
        "log.progress=false",
        "log.tensorboard=false",
        "log.jsonl=false",
        f"ivr.enabled={str(ivr).lower()}",
        f"ivr.critique_max_new_tokens={critique_tokens}",
        *extra,
    ]
    cfg = load_config(None, overrides)
    if policy is None:
        policy = Policy.from_pretrained(model_dir, device="cpu")
    if eos_rate is None:
        fixed_length(policy)
    else:
        eos_at_rate(policy, eos_rate)
    if args.no_shared_prefix:
        policy.shared_prefix = False
    return Trainer(cfg, policy=policy, samples=samples)


def build_trl(
    args,
    model_dir: Path,
    rows,
    out: Path,
    suppressed,
    callback,
    *,
    model=None,
    processor=None,
    **kw,
):
    """TRL's GRPOTrainer on the same work. ``model``/``processor`` (default: loaded from
    ``model_dir``, float32, CPU) and ``GRPOConfig`` overrides (``kw``) let others reuse it."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForImageTextToText
    from trl import GRPOConfig, GRPOTrainer

    from ivr.models.policy import Policy
    from ivr.rewards import combined_reward

    if processor is None:
        processor = Policy.from_pretrained(model_dir, device="cpu").processor
    if model is None:
        model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    batch = args.prompts * args.group
    settings = dict(
        output_dir=str(out),
        max_steps=args.warmup + args.steps + args.mem_steps,
        per_device_train_batch_size=args.micro,
        gradient_accumulation_steps=batch // args.micro,
        num_generations=args.group,
        max_completion_length=args.max_new_tokens,
        generation_kwargs={"min_new_tokens": args.max_new_tokens, "suppress_tokens": suppressed},
        temperature=1.0,
        top_p=1.0,
        beta=args.beta,
        loss_type="dapo",
        epsilon=0.2,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        optim="adamw_torch",
        max_grad_norm=1.0,
        weight_decay=0.0,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        logging_steps=10**6,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    config = GRPOConfig(**{**settings, **kw})
    from PIL import Image

    data = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": text}],
                "image": Image.open(path).convert("RGB"),
                "answer": answer,
                "answer_type": "text",
            }
            for path, text, answer in rows
        ]
    )
    return GRPOTrainer(
        model=model,
        reward_funcs=[combined_reward],
        args=config,
        train_dataset=data,
        processing_class=processor,
        callbacks=[callback],
    )


def _stats(xs: list[float]) -> tuple[float, float]:
    return (statistics.median(xs), statistics.fmean(xs)) if xs else (float("nan"),) * 2


# ---------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10, help="timed steps of each trainer")
    p.add_argument("--warmup", type=int, default=2, help="discarded steps of each trainer")
    p.add_argument("--mem-steps", type=int, default=2, help="extra steps with the memory sampler")
    p.add_argument("--prompts", type=int, default=4, help="prompts per step")
    p.add_argument("--group", type=int, default=8, help="G: completions per prompt")
    p.add_argument("--max-new-tokens", type=int, default=64, help="every completion's length")
    p.add_argument("--micro", type=int, default=32, help="rows per forward (both trainers)")
    p.add_argument("--beta", type=float, default=0.0, help="KL weight (both trainers)")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--hidden", type=int, default=128, help="tiny model text hidden size")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--ivr", action="store_true", help="also time an IVR-R1 step vs plain GRPO")
    p.add_argument(
        "--no-shared-prefix",
        action="store_true",
        help="ivr without Policy.shared_prefix (HF generate, full-sequence scoring): an A/B",
    )
    p.add_argument("--append", action="store_true", help=f"append the table to {RESULTS.name}")
    args = p.parse_args(argv)
    batch = args.prompts * args.group
    if batch % args.micro:
        p.error(f"--micro {args.micro} must divide prompts × group = {batch}")

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(args.threads)
    from transformers import TrainerCallback
    from transformers.utils import logging as hf_logging

    from ivr.models.tiny import build_tiny_vlm

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    tmp_ctx = tempfile.TemporaryDirectory()
    tmp = Path(tmp_ctx.name)
    model_dir = build_tiny_vlm(
        tmp / "model", "qwen2_5_vl", hidden=args.hidden, layers=args.layers, seed=0
    )
    samples, rows = make_work(tmp / "img", 16)

    ivr_trainer = build_ivr(args, model_dir, samples, tmp / "ivr", ivr=False)
    ivr_rect = build_ivr(args, model_dir, samples, tmp / "ivr_rect", ivr=True) if args.ivr else None
    demo = dict(  # the demo's shapes and completion lengths (module docstring)
        prompts=DEMO["prompts"],
        max_new_tokens=DEMO["max_new_tokens"],
        critique_tokens=DEMO["critique_tokens"],
        eos_rate=DEMO["eos_rate"],
    )
    demo_grpo = demo_ivr = None
    if args.ivr:
        demo_grpo = build_ivr(args, model_dir, samples, tmp / "demo_grpo", ivr=False, **demo)
        demo_ivr = build_ivr(args, model_dir, samples, tmp / "demo_ivr", ivr=True, **demo)
    n_params = sum(p.numel() for p in ivr_trainer.model.parameters())
    names = ("trl", "ivr", "ivr_rect", "demo_grpo", "demo_ivr")
    times: dict[str, list[float]] = {k: [] for k in names}
    mem: dict[str, list[int]] = {k: [] for k in names}
    phases: dict[str, dict[str, list[float]]] = {k: {} for k in names[1:]}
    tokens: dict[str, list[float]] = {k: [] for k in names[1:]}
    sampler_kind = HeapSampler().kind

    def run_ivr(name: str, trainer, k: int, record: bool, measure_mem: bool) -> None:
        if trainer is None:
            return
        sampler = HeapSampler() if measure_mem else None
        t0 = time.perf_counter()
        if sampler:
            with sampler:
                m = trainer.step(k)
        else:
            m = trainer.step(k)
        dt = time.perf_counter() - t0
        if sampler:
            mem[name].append(sampler.peak_delta)
        if record:
            times[name].append(dt)
            tokens[name].append(m.get("completion_len", float("nan")))
            for key, v in m.items():
                if key.startswith("time/") and key != "time/step":
                    phases[name].setdefault(key[5:], []).append(v)

    class Interleave(TrainerCallback):
        k = 0

        def on_step_begin(self, a, state, control, **kw):
            self.measure_mem = self.k >= args.warmup + args.steps
            self.sampler = HeapSampler() if self.measure_mem else None
            if self.sampler:
                self.sampler.__enter__()
            self.t0 = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            dt = time.perf_counter() - self.t0
            if self.sampler:
                self.sampler.__exit__(None, None, None)
                mem["trl"].append(self.sampler.peak_delta)
            record = args.warmup <= self.k < args.warmup + args.steps
            if record:
                times["trl"].append(dt)
            self.k += 1
            run_ivr("ivr", ivr_trainer, self.k, record, self.measure_mem)
            run_ivr("ivr_rect", ivr_rect, self.k, record, self.measure_mem)
            run_ivr("demo_grpo", demo_grpo, self.k, record, self.measure_mem)
            run_ivr("demo_ivr", demo_ivr, self.k, record, self.measure_mem)

    trl_trainer = build_trl(
        args,
        model_dir,
        rows,
        tmp / "trl",
        list(ivr_trainer.policy.suppressed_token_ids),
        Interleave(),
    )
    from transformers import PrinterCallback

    trl_trainer.remove_callback(PrinterCallback)  # the end-of-training dict, printed otherwise
    real_generate = trl_trainer._generate  # TRL's rollout: chat template, processor, HF generate

    def timed_generate(*a, **kw):
        t0 = time.perf_counter()
        try:
            return real_generate(*a, **kw)
        finally:
            trl_rollout.append(time.perf_counter() - t0)

    trl_rollout: list[float] = []
    trl_trainer._generate = timed_generate
    trl_trainer.train()
    trl_lens = [
        row["completions/mean_length"]
        for row in trl_trainer.state.log_history
        if "completions/mean_length" in row
    ]
    trl_rollout = trl_rollout[args.warmup : args.warmup + args.steps]

    (t_trl, m_trl), (t_ivr, m_ivr) = _stats(times["trl"]), _stats(times["ivr"])
    mb = 1024 * 1024
    peak = lambda k: max(mem[k]) / mb if mem[k] else float("nan")  # noqa: E731
    tok = args.prompts * args.group * args.max_new_tokens
    lines = [
        "| trainer | s/step median (mean) | completion tokens/s | step peak Δ memory (MB) "
        "| mean completion length |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| TRL GRPOTrainer | {t_trl:.3f} ({m_trl:.3f}) | {tok / t_trl:.0f} | {peak('trl'):.1f} "
        f"| {statistics.fmean(trl_lens) if trl_lens else float('nan'):.1f} |",
        f"| ivr Trainer (GRPO) | {t_ivr:.3f} ({m_ivr:.3f}) | {tok / t_ivr:.0f} | {peak('ivr'):.1f} "
        f"| {statistics.fmean(tokens['ivr']):.1f} |",
    ]
    if args.ivr:
        t_rect, m_rect = _stats(times["ivr_rect"])
        lines.append(
            f"| ivr Trainer (IVR-R1, k=2, T=3) | {t_rect:.3f} ({m_rect:.3f}) | — "
            f"| {peak('ivr_rect'):.1f} | {statistics.fmean(tokens['ivr_rect']):.1f} |"
        )
    phase_line = lambda name: ", ".join(  # noqa: E731
        f"{k} {statistics.median(v):.3f}" for k, v in phases[name].items()
    )
    cmd = "python benchmarks/grpo_step.py " + " ".join(argv if argv is not None else sys.argv[1:])
    import accelerate
    import transformers
    import trl

    setup = (
        f"Tiny Qwen2.5-VL ({n_params / 1e6:.2f}M params, text hidden {args.hidden}, "
        f"{args.layers} layers), {args.prompts} prompts × G={args.group}, every completion "
        f"{args.max_new_tokens} tokens, μ=1, β={args.beta}, micro-batch {args.micro}, fp32, "
        f"{args.steps} timed steps after {args.warmup} warm-up, interleaved; "
        f"{platform.machine()}, {os.cpu_count()} cores, {args.threads} torch thread(s), torch "
        f"{torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}, "
        f"accelerate {accelerate.__version__}"
        + (" (ivr with Policy.shared_prefix=False)" if args.no_shared_prefix else "")
        + f". Memory: {sampler_kind}, peak during the step "
        f"minus at its start, max over {args.mem_steps} steps."
    )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ratio = t_ivr / t_trl
    out = [
        "",
        f"`{cmd.strip()}`",
        "",
        setup,
        "",
        *lines,
        "",
        f"TRL phases (median s): rollout {statistics.median(trl_rollout):.3f}, everything else "
        f"{t_trl - statistics.median(trl_rollout):.3f}",
        f"ivr phases (median s): {phase_line('ivr')}",
    ]
    if args.ivr:
        out.append(f"IVR phases (median s): {phase_line('ivr_rect')}")
        (t_dg, m_dg), (t_di, m_di) = _stats(times["demo_grpo"]), _stats(times["demo_ivr"])
        out += [
            f"demo setting ({DEMO['prompts']} prompts × G={args.group}, rollout "
            f"{DEMO['max_new_tokens']} / critique {DEMO['critique_tokens']} tokens, eos rate "
            f"{DEMO['eos_rate']:.4f}): GRPO {t_dg:.3f} ({m_dg:.3f}) s/step, mean completion "
            f"{statistics.fmean(tokens['demo_grpo']):.1f}; IVR-R1 {t_di:.3f} ({m_di:.3f}) s/step",
            f"demo GRPO phases (median s): {phase_line('demo_grpo')}",
            f"demo IVR phases (median s): {phase_line('demo_ivr')}",
            f"ratio IVR/GRPO, worst case (s/step): {t_rect / t_ivr:.2f}",
            f"ratio IVR/GRPO, demo setting (s/step): {t_di / t_dg:.2f}",
        ]
    out += [
        f"process peak RSS (all trainers together): {rss:.0f} MB",
        f"ratio ivr/TRL (step peak Δ memory): {peak('ivr') / peak('trl'):.2f}",
        f"ratio ivr/TRL (s/step): {ratio:.2f}",
    ]
    text = "\n".join(out)
    if args.append:
        section = (
            f"\n## GRPO step, ivr vs TRL {trl.__version__} (CPU), {time.strftime('%Y-%m-%d')}\n"
            + text
            + "\n"
        )
        if not RESULTS.exists():
            RESULTS.write_text("# Benchmarks\n")
        with RESULTS.open("a") as f:
            f.write(section)
    print(text)
    tmp_ctx.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
