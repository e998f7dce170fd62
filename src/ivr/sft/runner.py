"""Supervised cold start: cross-entropy on the assistant tokens of chat demonstrations.

IVR-R1 (§4.1) and Vision-SR1 start RL from a model that already writes ``<desc>…</desc>
<think>…</think> \\boxed{…}`` answers, critiques and rectifications; this module trains that model
from chat rows (``sft.jsonl`` of ``ivr synth``, or any Vision-SR1-style cold-start JSONL):

    {"id": …, "images": ["images/000001.png"],
     "messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": …}]},
                  {"role": "assistant", "content": "<desc>…</desc> <think>…</think> \\boxed{2}"}]}

What is really implemented, and why (masking, fields and padding live in ``sft/data.py``; the
loss, the loop, eval and checkpoints here; the model set-up is the RL trainer's, ``ivr.training``):

- **Masking.** Each row is rendered once with the processor's own chat template. The assistant
  spans are found by rendering the conversation up to each assistant turn twice — with
  ``add_generation_prompt=True`` (everything the model is *given*) and with the turn itself — and
  diffing the token sequences, so it works for any template, not only ChatML. A span runs from the
  first token of the reply through the template's end-of-turn token (``<|im_end|>``: the model must
  learn to stop) and no further (the ``\\n`` after it belongs to the next prompt). Everything else
  — system and user text, image tokens, the ``<|im_start|>assistant\\n`` header, padding — has
  label −100.
- **Every multimodal field.** The processor's output is kept whole: per-token fields
  (``mm_token_type_ids``; without it Qwen2.5-VL silently uses 1-D positions) are padded like the
  ids (with 0 = text), the others (``pixel_values``, ``image_grid_thw``) are concatenated in row
  order — exactly what the processor would return for the batch.
- **Left padding**, like ``Policy.encode``, so the assistant tokens of a batch sit in the last
  columns and the LM head is applied only from the first labelled column on (``logits_to_keep``).
  The rows of an optimiser step are sorted by length and cut into forwards that minimise padding
  (``length_groups``): the gradient is the same, the CPU time ~20% lower on the synthetic mix of
  short answers and long critique/rectify prompts.
- **Pre-tokenised once.** Chat rendering, tokenisation and image processing run once before
  training; the image features are kept in memory up to ``image_cache_mb`` (a 112 px synthetic
  image is 0.3 MB of float32 patches) and recomputed per batch beyond that.
- **Optimisation.** AdamW, warmup then cosine or constant LR (HF schedulers), gradient clipping.
  ``sft.batch_size`` rows per forward, ``sft.grad_accum`` forwards per optimiser step; the loss is
  the mean over all assistant tokens of the optimiser step (token-level, like the RL loss).
- **Determinism and resumption.** The row order is a seeded permutation per epoch, so the rows
  of step ``s`` depend on (seed, s) only; checkpoints (``ivr/checkpoint.py``: weights, optimiser,
  scheduler, RNG) every ``sft.save_every`` steps, and ``train.resume=true`` continues from the last
  one with the same losses as an uninterrupted run (tested on CPU).
- **One process, one device** (no ``accelerate launch`` data parallelism yet).
- **Eval** on ``data.eval`` (split ``data.eval_split``, the first ``sft.eval_limit`` rows) through
  the project's one eval loop (``ivr.eval.runner.evaluate_samples``): greedy answers to the same
  prompt the RL trainer uses, graded by ``rewards.scorer.Scorer``; accuracy, format rate and, for rows
  that carry the true ``scene`` (the synthetic world), how exactly the model's ``<desc>`` block
  describes it (``render.description_fidelity``).

    from ivr.config import load_config
    from ivr.sft import run_sft
    run_sft(load_config("configs/sft_tiny.yaml", ["sft.steps=200"]))
"""

from __future__ import annotations

import inspect
import math
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import checkpoint as ckpt
from .. import training
from ..config import Config, dump_config
from ..data.prompts import PromptSet
from ..models.policy import Policy
from ..tracking import Tracker
from ..types import Sample
from .data import IGNORE, SFTData, collate, end_of_turn_ids, resolve_sft_file

__all__ = ["SFTRunner", "evaluate", "length_groups", "run_sft", "sft_loss"]


#: Fixed cost of one forward, in padded tokens: what ``length_groups`` trades padding against.
_FORWARD_COST_TOKENS = 256


def length_groups(lengths: Sequence[int], max_rows: int, forward_cost: float) -> list[list[int]]:
    """Split the rows of one optimiser step into forwards of ≤ ``max_rows`` rows, minimising
    padded tokens + ``forward_cost`` per forward (rows sorted by length; exact DP).

    The loss is a token sum over the whole step, so any grouping gives the same gradient; this
    only decides how much padding is computed. A batch of demonstrations that mixes short answers
    with long critique/rectify prompts pays ~20% less on a CPU this way.

    >>> length_groups([100, 210, 105, 200], max_rows=4, forward_cost=50)
    [[0, 2], [3, 1]]
    >>> length_groups([100, 210, 105, 200], max_rows=4, forward_cost=1000)
    [[0, 2, 3, 1]]
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    n = len(order)
    best = [0.0] + [math.inf] * n  # best[j]: cost of the first j sorted rows
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        longest = lengths[order[j - 1]]
        for i in range(max(0, j - max_rows), j):
            c = best[i] + (j - i) * longest + forward_cost
            if c < best[j]:
                best[j], cut[j] = c, i
    groups, j = [], n
    while j > 0:
        groups.append(order[cut[j] : j])
        j = cut[j]
    return groups[::-1]


def _accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def sft_loss(model: torch.nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, int, int]:
    """(summed token cross-entropy, labelled tokens, argmax hits) of a collated batch.

    Logits are computed only from the first labelled column on (left padding puts every reply
    in the last columns), in float32 for the softmax.
    """
    inputs = dict(batch)
    labels = inputs.pop("labels")
    B, L = labels.shape
    has = labels != IGNORE
    n = int(has.sum())
    if n == 0:
        zero = next(model.parameters()).sum() * 0.0
        return zero, 0, 0
    first = max(1, int(has.any(0).nonzero()[0]))
    if _accepts_logits_to_keep(model):
        logits = model(**inputs, use_cache=False, logits_to_keep=L - first + 1).logits[:, :-1]
    else:
        logits = model(**inputs, use_cache=False).logits[:, first - 1 : L - 1]
    target = labels[:, first:].to(logits.device)
    logits = logits.float()
    loss = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE,
        reduction="sum",
    )  # fmt: skip
    with torch.no_grad():
        hits = int(((logits.argmax(-1) == target) & (target != IGNORE)).sum())
    return loss, n, hits


# ---------------------------------------------------------------------------- eval


def evaluate(
    policy: Policy, samples: Sequence[Sample], **kwargs: Any
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Greedy eval of samples in memory → (metrics, records): the project's one eval loop,
    :func:`ivr.eval.runner.evaluate_samples` (same keyword arguments), kept under this name."""
    from ..eval.runner import evaluate_samples

    return evaluate_samples(policy, samples, **kwargs)


# ---------------------------------------------------------------------------- training


def _load_rows(path: Path, on_error: str) -> list[dict[str, Any]]:
    from ..data.sft_rows import load_sft_rows

    # Images are decoded now: a truncated file is named (or skipped and counted), not met mid-run.
    return [dict(r) for r in load_sft_rows(path, on_error=on_error, verify_images=True)]


def _check_has_assistant(rows: Sequence[dict[str, Any]], path: Path) -> None:
    def has_reply(row: dict[str, Any]) -> bool:
        for m in row.get("messages") or ():
            c = m.get("content")
            text = c if isinstance(c, str) else "".join(
                p.get("text", "") for p in (c or ()) if isinstance(p, dict)
            )  # fmt: skip
            if m.get("role") == "assistant" and text.strip():
                return True
        return False

    if not rows:
        raise ValueError(f"{path}: no rows to train on")
    if not any(has_reply(r) for r in rows):
        raise ValueError(
            f"{path}: no assistant turn with text in any of its {len(rows)} rows, so there are no "
            "tokens to train on (SFT needs chat rows whose `messages` end with "
            '{"role": "assistant", "content": …})'
        )


class SFTRunner:
    """``SFTRunner(cfg).train()``; ``policy``/``rows``/``eval_samples`` bypass loading."""

    def __init__(
        self,
        cfg: Config,
        *,
        policy: Policy | None = None,
        rows: Sequence[dict[str, Any]] | None = None,
        eval_samples: Sequence[Sample] | None = None,
        callback: Callable[[int, dict[str, float]], None] | None = None,
        image_cache_mb: float = 4096,
    ) -> None:
        self.cfg, s = cfg, cfg.sft
        self.callback = callback
        training.set_threads(cfg)
        torch.manual_seed(cfg.train.seed)
        self.out = Path(cfg.train.output_dir)
        self.ckpt_dir = self.out / "checkpoints"
        self.prompts = PromptSet.load(cfg.data.prompts)

        # Data first: a file with nothing to learn fails before any model is loaded.
        self.data_path = resolve_sft_file(s.data) if rows is None else Path(s.data or "<rows>")
        rows = list(rows) if rows is not None else _load_rows(self.data_path, cfg.data.on_error)
        _check_has_assistant(rows, self.data_path)
        # Eval data and the eval path too: a broken one must fail before any training.
        self.eval_samples = list(eval_samples) if eval_samples is not None else self._eval_rows()
        if self.eval_samples:
            from ..rewards import LocalizationConfig
            from ..rewards.scorer import Scorer

            self.scorer = Scorer(
                format_weight=cfg.reward.format_weight,
                localization=LocalizationConfig(switch_at=cfg.reward.loc_switch_at),
            )
        from ..eval.runner import synth_grid

        self.grid = synth_grid(cfg.data.eval)

        # resume, refuse a directory holding another run, or clear it (train.overwrite / auto)
        resume_from, clear = ckpt.plan_run(self.out, cfg.train.resume, cfg.train.overwrite)
        if clear:
            ckpt.clear_run(self.out)
        lora = cfg.model.lora_rank > 0
        if policy is None:  # full precision: model.load_in_4bit (QLoRA) is an RL option
            path = resume_from if resume_from and not lora else cfg.model.path
            device = training.resolve_device(cfg)
            policy = training.load_policy(cfg, path, device=device, load_in_4bit=False)
        elif resume_from is not None and not lora:
            policy = Policy.from_pretrained(
                resume_from, processor=policy.processor, dtype=policy.model.dtype,
                device=policy.device,
            )  # fmt: skip
        self.policy = training.prepare_model(cfg, policy, resume_from)  # as the RL trainer's
        self.model = self.policy.model

        t0 = time.perf_counter()
        self.data = SFTData(
            self.policy.processor,
            rows,
            source=self.data_path,
            end_ids=end_of_turn_ids(self.policy.processor, self.policy.eos_token_ids),
            cache_mb=image_cache_mb,
        )
        self.encode_seconds = time.perf_counter() - t0
        n_labels = sum(ex.n_labels for ex in self.data.examples)
        if n_labels == 0:
            raise ValueError(
                f"{self.data_path}: the assistant turns of its {len(rows)} rows produced no "
                "tokens after the chat template was applied (empty replies?); nothing to train on"
            )
        empty = [ex.id for ex in self.data.examples if ex.n_labels == 0]
        if empty:
            warnings.warn(f"{self.data_path}: {len(empty)} row(s) have no assistant tokens "
                          f"(first: id {empty[0]!r}); they contribute nothing", stacklevel=2)  # fmt: skip

        self.rows_per_step = s.batch_size * s.grad_accum
        per_epoch = len(self.data) / self.rows_per_step
        self.total_steps = s.steps or max(1, math.ceil(s.epochs * per_epoch))
        self.optimizer = training.make_optimizer(self.model, s.lr, s.weight_decay)
        self.scheduler = ckpt.make_scheduler(
            self.optimizer, cfg.sft.lr_schedule, cfg.sft.warmup_steps, self.total_steps
        )
        self.start_step, self.train_seconds, self.wall_seconds = 0, 0.0, 0.0
        self.train_cpu_seconds = 0.0  # CPU time of the training steps: load-independent
        if resume_from is not None:
            meta = ckpt.restore_training_state(  # a changed sft.lr / weight_decay applies
                resume_from, self.optimizer, self.scheduler, config=cfg.to_dict(), lr_key="sft.lr"
            )
            self.start_step = int(meta["step"])
            self.train_seconds = float(meta.get("train_seconds", 0.0))
            self.wall_seconds = float(meta.get("wall_seconds", 0.0))
            self.train_cpu_seconds = float(meta.get("train_cpu_seconds", 0.0))
            if int(meta.get("total_steps", self.total_steps)) != self.total_steps:
                warnings.warn(f"resuming a run planned for {meta['total_steps']} steps with "
                              f"{self.total_steps}: the LR schedule changes", stacklevel=2)  # fmt: skip
        self.tracker = Tracker.for_run(
            self.out,
            cfg.log,
            total_steps=self.total_steps,
            start_step=self.start_step,
            config=cfg.to_dict(),
        )
        self.out.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, self.out / "config.yaml")
        self._saved = self.start_step
        self._dirty = False

    def _eval_rows(self) -> list[Sample]:
        d = self.cfg.data
        if not d.eval:
            return []
        from ..data.dataset import load_samples

        limit = self.cfg.sft.eval_limit
        return load_samples(
            d.eval,
            split=d.eval_split,
            on_error=d.on_error,
            limit=limit if limit and limit > 0 else None,
            verify_images=True,  # a truncated image is named now, not after training
        )

    # -------------------------------------------------------------- the loop
    def batch_indices(self, step: int) -> list[int]:
        """Rows of optimiser step ``step`` (1-based): a seeded permutation per epoch."""
        per = self.rows_per_step
        return training.epoch_order(self.cfg.train.seed, len(self.data), (step - 1) * per, per)

    def train(self) -> dict[str, Any]:
        s = self.cfg.sft
        last: dict[str, Any] = {}
        done = self.start_step
        try:
            for step in range(self.start_step + 1, self.total_steps + 1):
                t0, c0 = time.perf_counter(), time.process_time()
                metrics = self.step(step)
                metrics["time/step"] = time.perf_counter() - t0
                self.train_seconds += metrics["time/step"]
                self.train_cpu_seconds += time.process_time() - c0
                done = step
                final = step == self.total_steps
                if self.eval_samples and ((s.eval_every and step % s.eval_every == 0) or final):
                    metrics.update(self.evaluate(step))
                self.wall_seconds += time.perf_counter() - t0
                metrics["time/train_elapsed"] = self.train_seconds
                metrics["time/elapsed"] = self.wall_seconds
                metrics["time/train_cpu_elapsed"] = self.train_cpu_seconds
                if step == self.start_step + 1:
                    metrics["time/encode"] = self.encode_seconds  # pre-tokenisation, once
                self.tracker.log(step, metrics)
                last = metrics
                if self.callback is not None:
                    self.callback(step, metrics)
                if s.save_every and step % s.save_every == 0 and not final:
                    self.save(step)
            if self.total_steps > self.start_step:
                self.save(self.total_steps)
            final_dir = self.save_final()
        except BaseException:
            # Interrupted between steps (Ctrl-C, a failing callback): keep the finished steps.
            if not self._dirty and done > self._saved and s.save_every:
                self.save(done)
            raise
        finally:
            self.tracker.close()
        return {**last, "step": float(self.total_steps), "final_dir": str(final_dir)}

    def step(self, step: int) -> dict[str, float]:
        training.seed_everything(training.step_seed(self.cfg.train.seed, step))
        s = self.cfg.sft
        idx = self.batch_indices(step)
        examples = [self.data.examples[i] for i in idx]
        n_tokens = sum(ex.n_labels for ex in examples)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum, hits, t_data = 0.0, 0, 0.0
        device = self.policy.device
        forward_cost = _FORWARD_COST_TOKENS if device.type == "cpu" else 8 * _FORWARD_COST_TOKENS
        groups = length_groups([len(ex.input_ids) for ex in examples], s.batch_size, forward_cost)
        for group in groups:
            t = time.perf_counter()
            micro = [examples[i] for i in group]
            batch = collate(micro, [self.data.row_features(ex) for ex in micro],
                            self.policy.pad_token_id)  # fmt: skip
            batch = {k: v.to(device) for k, v in batch.items()}
            t_data += time.perf_counter() - t
            loss, _, h = sft_loss(self.model, batch)
            (loss / max(n_tokens, 1)).backward()
            loss_sum += float(loss.detach())
            hits += h
        params = [p for p in self.model.parameters() if p.requires_grad]
        max_norm = s.max_grad_norm if s.max_grad_norm > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        lr = self.scheduler.get_last_lr()[0]
        self._dirty = True  # the weights are changing: a checkpoint now would be half a step
        self.optimizer.step()
        self.scheduler.step()
        self._dirty = False
        kinds: dict[str, int] = {}
        for ex in examples:
            kinds[ex.kind or "chat"] = kinds.get(ex.kind or "chat", 0) + 1
        return {
            "sft/loss": loss_sum / max(n_tokens, 1),
            "sft/token_accuracy": hits / max(n_tokens, 1),
            "sft/tokens": float(n_tokens),
            "sft/grad_norm": grad_norm,
            "sft/lr": lr,
            "sft/epoch": step * self.rows_per_step / len(self.data),
            "time/data": t_data,
            "sft/forwards": float(len(groups)),
        }

    def evaluate(self, step: int) -> dict[str, float]:
        from ..eval.runner import evaluate_samples

        cfg = self.cfg
        t = time.perf_counter()
        metrics, records = evaluate_samples(
            self.policy,
            self.eval_samples,
            scorer=self.scorer,
            prompts=self.prompts,
            max_new_tokens=cfg.rollout.max_new_tokens,
            batch_size=cfg.sft.batch_size,
            grid=self.grid,
        )
        self.tracker.write_rows("samples", step, records[: cfg.log.samples_per_step])
        out = {f"eval/{k}": v for k, v in metrics.items()}
        out["time/eval"] = time.perf_counter() - t
        return out

    # -------------------------------------------------------------- saving
    def save(self, step: int) -> None:
        ckpt.save_checkpoint(
            self.ckpt_dir,
            step,
            model=self.model,
            processor=self.policy.processor,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            state={
                "total_steps": self.total_steps,
                "train_seconds": self.train_seconds,
                "wall_seconds": self.wall_seconds,
                "train_cpu_seconds": self.train_cpu_seconds,
                "data": str(self.data_path),
                "config": self.cfg.to_dict(),
            },
        )
        self._saved = step

    def save_final(self) -> Path:
        """A plain HF model directory (LoRA merged), loadable by ``Policy.from_pretrained``."""
        return ckpt.save_final_model(
            self.model,
            self.policy.processor,
            self.out / "final",
            merge_lora=self.cfg.model.lora_rank > 0,
        )


def run_sft(cfg: Config, *, policy: Policy | None = None, **kwargs: Any) -> dict[str, Any]:
    """Run the SFT job described by ``cfg`` (the ``ivr sft`` entry point).

    Returns the last step's metrics (``sft/loss``, ``eval/accuracy`` …) plus ``final_dir``, the
    saved model. ``policy`` skips loading ``model.path``; ``kwargs`` go to ``SFTRunner``
    (``rows``, ``eval_samples``, ``callback(step, metrics)``, ``image_cache_mb``).
    """
    return SFTRunner(cfg, policy=policy, **kwargs).train()
