"""The GRPO / IVR-R1 training loop.

One step, top to bottom (each phase timed and logged as ``time/<phase>``):

    1. prompts      next ``prompts_per_step`` samples of a seeded per-epoch shuffle (per rank)
    2. rollout      G samples per prompt, temperature/top_p from the config, image tokens banned
    3. reward       the task reward: r = λ·format + (1−λ)·accuracy, or the Vision-R1 reward for
                    box tasks; screening and acceptance see this reward only
    4. rectify      (IVR-R1, optional) failed rollouts critiqued + rectified with the image, or
                    (``ivr.strategy=resample``, the control) replaced by fresh samples of the
                    original prompt; accepted ones replace them off-policy (rl/rectify.py)
    5. self-reward  (Vision-SR1 baseline, optional) + w·acc(answer from the <desc> alone), after
                    screening, so it can never hide a wrong answer from the loop
    6. advantages   over each (mixed) group; groups whose reward is NaN are dropped and counted
    7. update       μ passes × minibatches × micro-batches; clipped surrogate on sampled tokens,
                    policy shaping on rectified ones, k3 KL to the frozen reference if β > 0
    8. log / save   metrics (JSONL, TensorBoard, wandb), samples and traces, atomic checkpoint

What is really implemented, and why:
- ``old_logprobs`` are the sampling log-probabilities returned by ``generate`` (π_θold is the
  policy that sampled). They are exact up to float error (tested to 1e-4), so no extra forward is
  spent on them; μ > 1 reuses them too, which is what PPO prescribes. With the vLLM rollout
  backend (other kernels) they are recomputed by a no-grad training forward (rollout/backends.py).
- The training forward divides logits by the sampling temperature, so ρ = 1 at the first pass.
- Token aggregation is over the whole minibatch (all ranks): each micro-batch loss is re-weighted
  by its share of the minibatch's tokens (or sequences) and gradients are summed across ranks.
- Multi-process (``accelerate launch``): every rank samples its own prompts and keeps its groups;
  gradients are all-reduced by hand (no DDP wrapper, so ``generate`` runs on the plain module).
- Determinism: every step reseeds from (seed, step), so a run killed and resumed from a checkpoint
  samples and updates exactly as an uninterrupted one (tested on CPU).
"""

from __future__ import annotations

import math
import random
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..config import Config, ConfigError, dump_config
from ..data.dataset import load_samples
from ..data.images import load_image
from ..data.prompts import PromptSet, question_text, user_prompt
from ..models.policy import Policy
from ..rewards import LocalizationConfig
from ..rewards.scorer import RewardError, RewardFn, Scorer
from ..rollout import HFBackend, make_backend, recompute_enabled, recompute_logprobs
from ..tracking import Tracker
from ..types import Generation, Group, Prompt, Rollout, Sample
from . import checkpoint as ckpt
from . import sharding
from .advantages import group_advantages
from .losses import policy_loss


def question_prompt(sample: Sample, images: Sequence[Any], prompts: PromptSet) -> Prompt:
    """The ORIGINAL prompt of a sample (``prompts.question_text``), with its images."""
    return user_prompt(question_text(sample.question, sample.answer_type, prompts), tuple(images))


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    return (seed * 1_000_003 + step * 9_973 + rank * 101) % (2**31)


class _Timer(dict):
    @contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        yield
        self[f"time/{name}"] = self.get(f"time/{name}", 0.0) + time.perf_counter() - t0


class Trainer:
    """``Trainer(cfg).train()``; pass ``policy``/``samples``/``extra_rewards`` to bypass loading."""

    def __init__(
        self,
        cfg: Config,
        *,
        policy: Policy | None = None,
        samples: Sequence[Sample] | None = None,
        extra_rewards: Sequence[tuple[RewardFn, float]] = (),
    ) -> None:
        from accelerate import PartialState

        if cfg.rollout.temperature <= 0:  # fine for eval (greedy), not for sampling groups
            raise ConfigError(
                f"`rollout.temperature` = {cfg.rollout.temperature} must be > 0 for RL training: "
                "the G samples of a group would all be the same greedy answer, every advantage 0"
            )
        self.cfg = cfg
        self.state = PartialState(cpu=_cpu_only(cfg))
        self.rank, self.world = self.state.process_index, self.state.num_processes
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.out = Path(cfg.train.output_dir)
        self.ckpt_dir = self.out / "checkpoints"
        self.prompts = PromptSet.load(cfg.data.prompts)

        # resume, refuse a directory holding another run, or clear it (train.overwrite / auto)
        resume_from, clear = ckpt.plan_run(self.out, cfg.train.resume, cfg.train.overwrite)
        if clear and self.state.is_main_process:
            ckpt.clear_run(self.out)
        self.policy = policy if policy is not None else self._load_policy(resume_from)
        self.model = self.policy.model
        self.samples = list(samples) if samples is not None else self._load_samples()
        self.ref = self._load_reference() if cfg.algo.beta > 0 else None
        # FSDP2: every rank keeps 1/world of the weights, gradients and optimizer states
        # (rl/sharding.py); the optimizer is built on the shards below.
        self.sharded = sharding.sharding_mode(cfg.train.sharding) == "fsdp" and self.world > 1
        if self.world > 1:  # one starting point (e.g. LoRA's random init) whatever each rank drew
            for t in [*self.model.parameters(), *self.model.buffers()]:
                torch.distributed.broadcast(t.data, src=0)
        if self.sharded:
            sharding.shard(self.model, self.policy.device, self.world)
            if self.ref is not None:
                sharding.shard(self.ref.model, self.policy.device, self.world)

        # The sampler: HF generate on self.model, or a vLLM engine synced after each update.
        self.rollout = make_backend(cfg, self.policy)
        self.scorer = Scorer(
            format_weight=cfg.reward.format_weight,
            localization=LocalizationConfig(switch_at=cfg.reward.loc_switch_at),
            extra=(*cfg.reward.resolved_functions(), *extra_rewards),  # reward.functions
        )
        per_step = cfg.train.prompts_per_step * self.world
        self.total_steps = cfg.train.steps or max(1, math.ceil(len(self.samples) / per_step))
        batch = cfg.train.prompts_per_step * cfg.rollout.group_size
        minibatch = cfg.algo.minibatch_size or batch
        self.updates_per_step = cfg.algo.ppo_epochs * (batch // minibatch)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            params, lr=cfg.algo.lr, weight_decay=cfg.algo.weight_decay
        )
        self.scheduler = ckpt.make_scheduler(
            self.optimizer,
            cfg.algo.lr_schedule,
            cfg.algo.warmup_steps,
            self.total_steps * self.updates_per_step,
        )

        self.start_step = 0
        if resume_from is not None:
            meta = ckpt.restore_training_state(
                resume_from,
                self.optimizer,
                self.scheduler,
                load_optimizer=lambda sd: sharding.load_optimizer_state(
                    self.model, self.optimizer, sd
                ),
                config=cfg.to_dict(),  # a changed algo.lr / weight_decay applies (and is said)
            )
            self.start_step = int(meta["step"])
        self.tracker = Tracker.for_run(
            self.out,
            cfg.log,
            total_steps=self.total_steps,
            start_step=self.start_step,
            config=cfg.to_dict(),
            enabled=self.state.is_main_process,
        )
        if self.state.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            dump_config(cfg, self.out / "config.yaml")
        self._dirty = False  # True once this step's optimizer update has begun
        self._nan_rewards: list[str] = []  # this step's NaN/inf reward components
        self._skipped: set[str] = set()  # those of the current run of skipped updates
        self._n_skipped = 0  # consecutive steps without an update (every reward NaN/inf)

    # ------------------------------------------------------------------ setup
    def _load_policy(self, resume_from: Path | None) -> Policy:
        m = self.cfg.model
        if not m.path:
            raise ValueError("model.path is empty: set it in the config or with model.path=DIR")
        device = m.device
        if device == "auto":
            device = str(self.state.device) if torch.cuda.is_available() else "cpu"
        kwargs = dict(
            dtype=m.dtype,
            device=device,
            attn_implementation=m.attn_implementation,
            min_pixels=m.min_pixels,
            max_pixels=m.max_pixels,
            load_in_4bit=m.load_in_4bit,
        )
        lora = m.lora_rank > 0
        policy = Policy.from_pretrained(
            resume_from if resume_from and not lora else m.path, **kwargs
        )
        model = policy.model
        if m.freeze_vision:
            for name, p in model.named_parameters():
                if "visual" in name:
                    p.requires_grad_(False)
        if lora:
            from peft import PeftModel, get_peft_model

            if resume_from is not None:
                model = PeftModel.from_pretrained(model, resume_from, is_trainable=True)
            else:
                torch.manual_seed(self.cfg.train.seed)  # the adapters' random init: reproducible
                model = get_peft_model(model, self._lora_config())
            policy = Policy(model, policy.processor)
        if m.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        policy.logprob_chunk_size = m.logprob_chunk_size
        return policy

    def _lora_config(self) -> Any:
        from peft import LoraConfig

        m = self.cfg.model
        return LoraConfig(
            r=m.lora_rank,
            lora_alpha=m.lora_alpha,
            target_modules="all-linear",
            exclude_modules=r".*visual.*" if m.freeze_vision else None,
        )

    def _load_reference(self) -> Policy | None:
        """The frozen π_ref of the KL term: under LoRA the same weights with the adapter off."""
        if self.cfg.model.lora_rank > 0:
            return None
        path = self.cfg.model.path or None
        if path is None:  # a policy passed in by the caller: freeze a copy of its start weights
            import copy

            ref_model = copy.deepcopy(self.model)
        else:
            ref_model = Policy.from_pretrained(
                path, dtype=self.cfg.model.dtype, device=str(self.policy.device)
            ).model
        ref_model.eval().requires_grad_(False)
        return Policy(ref_model, self.policy.processor)

    def _load_samples(self) -> list[Sample]:
        d = self.cfg.data
        if not d.train:
            raise ValueError("data.train is empty: set it to a dataset dir, .jsonl or .parquet")
        # Every image is decoded now (~0.3 ms for a small PNG): a truncated file is named here,
        # or skipped and counted with data.on_error=skip, not found when its row is sampled.
        samples = load_samples(
            d.train, split=d.train_split, on_error=d.on_error, verify_images=True
        )
        bad = [s.id for s in samples if not str(s.answer).strip() and s.answer_type != "boxes"]
        if bad:
            msg = f"{d.train}: {len(bad)} rows have an empty answer (first: id {bad[0]!r})"
            if d.on_error == "raise":
                raise ValueError(msg + "; fix them or set data.on_error=skip")
            warnings.warn(msg + "; skipped", stacklevel=2)
            samples = [s for s in samples if s.id not in set(bad)]
        if not samples:
            raise ValueError(f"{d.train}: no usable training rows")
        return samples

    # ------------------------------------------------------------------ the loop
    def train(self) -> dict[str, float]:
        last: dict[str, float] = {}
        step = self.start_step  # the step in progress; step - 1 is the last one completed
        try:
            for step in range(self.start_step + 1, self.total_steps + 1):
                self._dirty = False
                last = self.step(step)
                self.tracker.log(step, last)
                self._check_skipped(step, last)
                if self.cfg.train.save_every and step % self.cfg.train.save_every == 0:
                    self.save(step)
            if self.total_steps > self.start_step:
                self.save(self.total_steps)
                self.save_final()
        except BaseException:
            # A crash (or Ctrl-C) before this step touched the weights: keep the work done so far.
            done = step - 1
            # Not with several ranks: the others may sit in another collective (a hang, not a save).
            if (
                not self._dirty
                and done > self.start_step
                and self.cfg.train.save_every
                and self.world == 1
            ):
                self.save(done)
            raise
        finally:
            self.rollout.close()
            self.tracker.close()
        return last

    def step(self, step: int) -> dict[str, float]:
        cfg, timer = self.cfg, _Timer()
        seed = step_seed(cfg.train.seed, step, self.rank)
        random.seed(seed)
        np.random.seed(seed % (2**32))
        torch.manual_seed(seed)
        progress = (step - 1) / max(1, self.total_steps)
        t0 = time.perf_counter()

        with timer("prompts"):
            samples = self.batch_samples(step)
            images = [tuple(load_image(p) for p in s.images) for s in samples]
            prompts = [question_prompt(s, im, self.prompts) for s, im in zip(samples, images)]
        with timer("rollout"), self._gathered(sampling=True):
            self.model.eval()
            gens = self.rollout.generate(
                prompts,
                max_new_tokens=cfg.rollout.max_new_tokens,
                temperature=cfg.rollout.temperature,
                top_p=cfg.rollout.top_p,
                num_return_sequences=cfg.rollout.group_size,
            )
        if recompute_enabled(cfg.rollout):  # π_old from the training forward (rollout/backends.py)
            with timer("old_logprobs"), self._gathered():
                gens = recompute_logprobs(
                    self.policy,
                    prompts,
                    gens,
                    temperature=cfg.rollout.temperature,
                    micro_batch_size=cfg.algo.micro_batch_size,
                )
        with timer("reward"):
            groups = self.score_groups(samples, gens, progress)
        metrics = _reward_metrics(groups, prefix="reward")  # the task reward of the samples
        if cfg.ivr.enabled:  # screens on the task reward: self-reward is not added yet
            from .rectify import rectify_groups, resample_groups

            kw = dict(
                max_new_tokens=cfg.rollout.max_new_tokens,
                top_p=cfg.rollout.top_p,
                progress=progress,
                rng=random.Random(seed),
            )
            with timer("rectify"), self._gathered(sampling=True):  # rectify or its control
                if cfg.ivr.strategy == "resample":
                    groups, stats = resample_groups(
                        self.rollout.generate,
                        groups,
                        prompts,
                        self.scorer,
                        cfg.ivr,
                        temperature=cfg.rollout.temperature,
                        **kw,
                    )
                else:
                    groups, stats = rectify_groups(
                        self.rollout.generate,
                        groups,
                        images,
                        self.scorer,
                        cfg.ivr,
                        self.prompts,
                        **kw,
                    )
            metrics.update(stats.metrics())
            self.tracker.write_rows("traces", step, stats.traces)
        if cfg.reward.self_reward_weight > 0:
            from .self_reward import add_self_reward

            with timer("self_reward"), self._gathered():
                groups, sr = add_self_reward(self.policy, groups, self.scorer, cfg, self.prompts)
            metrics.update(sr)
        if cfg.ivr.enabled or cfg.reward.self_reward_weight > 0:  # what the advantages see
            metrics.update(_reward_metrics(groups, prefix="reward_mixed"))
        with timer("advantages"):
            self._nan_rewards = _nan_components(groups)
            groups, advantages, dropped = self.advantages(groups)
            metrics["reward/nan_groups"] = float(dropped)
        with timer("update"):
            metrics.update(self.update(groups, prompts, advantages))
        with timer("weight_sync"):  # the sampler sees the new weights (no-op for HF generate)
            self.rollout.sync_weights(self.model)
        metrics.update(timer)
        metrics["time/step"] = time.perf_counter() - t0
        metrics["lr"] = self.scheduler.get_last_lr()[0]
        metrics["progress"] = progress
        metrics = self._reduce(metrics)
        self.tracker.write_rows("samples", step, _sample_rows(groups, cfg.log.samples_per_step))
        return metrics

    def _check_skipped(self, step: int, metrics: dict[str, float]) -> None:
        """Fail after ``train.max_skipped_steps`` consecutive steps whose update was skipped
        because every group's reward was NaN/inf (a user reward gone wrong), naming the reward."""
        if not metrics.get("loss/skipped"):
            self._skipped, self._n_skipped = set(), 0
            return
        self._skipped.update(self._nan_rewards)
        self._n_skipped += 1
        limit = self.cfg.train.max_skipped_steps
        if limit and self._n_skipped >= limit:
            names = ", ".join(sorted(self._skipped)) or "the reward"
            raise RewardError(
                f"steps {step - limit + 1}–{step}: no update ({limit} steps in a row, "
                f"train.max_skipped_steps = {limit}): every group's reward was NaN/inf, from "
                f"{names}. Fix the reward (it must return finite floats, or None where it does "
                "not apply) or raise train.max_skipped_steps (0 = never stop)"
            )

    # ------------------------------------------------------------------ phases
    def batch_samples(self, step: int) -> list[Sample]:
        """Prompts of this step for this rank: a seeded shuffle per epoch, so position = step."""
        n, per = len(self.samples), self.cfg.train.prompts_per_step
        start = ((step - 1) * self.world + self.rank) * per
        out = []
        for pos in range(start, start + per):
            epoch, i = divmod(pos, n)
            order = np.random.default_rng(self.cfg.train.seed + epoch).permutation(n)
            out.append(self.samples[int(order[i])])
        return out

    def score_groups(
        self, samples: list[Sample], gens: list[list[Generation]], progress: float
    ) -> list[Group]:
        flat_s = [s for s, g in zip(samples, gens) for _ in g]
        flat_g = [x for g in gens for x in g]
        scores = self.scorer(flat_s, [g.text for g in flat_g], progress)
        groups, k = [], 0
        for i, (s, g) in enumerate(zip(samples, gens)):
            rollouts = []
            for gen in g:
                sc = scores[k]
                k += 1
                rollouts.append(
                    Rollout(
                        sample_index=i,
                        text=gen.text,
                        token_ids=gen.token_ids,
                        old_logprobs=gen.logprobs,
                        reward=sc.reward,
                        components={**sc.components, "correct": float(bool(sc.correct))}
                        if sc.correct is not None
                        else dict(sc.components),
                    )
                )
            groups.append(Group(sample=s, rollouts=tuple(rollouts)))
        return groups

    def advantages(self, groups: list[Group]) -> tuple[list[Group], Tensor, int]:
        """Â over each group (mixed groups included). A group with a NaN reward (a user reward
        went wrong) is dropped from the update with a warning rather than poisoning the batch."""
        finite = [g for g in groups if all(math.isfinite(r) for r in g.rewards)]
        dropped = len(groups) - len(finite)
        if dropped:
            warnings.warn(f"{dropped} group(s) had a NaN/inf reward and were skipped", stacklevel=2)
        if not finite:
            return [], torch.zeros(0), dropped
        G = len(finite[0].rollouts)
        rewards = torch.tensor([r for g in finite for r in g.rewards], dtype=torch.float32)
        adv = group_advantages(rewards, G, scale=self.cfg.algo.scale_advantages)
        return finite, adv, dropped

    def update(
        self, groups: list[Group], prompts: list[Prompt], advantages: Tensor
    ) -> dict[str, float]:
        """μ passes over minibatches of (prompt, completion) sequences with accumulation.

        Multi-process: every rank takes the same number of optimiser steps (the most minibatches
        any rank has), so the collectives line up even where a rank has fewer rows than the
        others (groups dropped for a NaN reward) or none: it contributes a zero gradient.
        """
        cfg, a = self.cfg, self.cfg.algo
        self._dirty = True
        rows = [(prompts[r.sample_index], r) for g in groups for r in g.rollouts]
        n = len(rows)
        mb = a.minibatch_size or max(n, 1)
        n_minibatches = int(self._global_max(math.ceil(n / mb)))
        if n_minibatches == 0:
            return {"loss/skipped": 1.0}
        temp = cfg.rollout.temperature or 1.0
        ref_lp = self._ref_logprobs(rows, temp) if a.beta > 0 and (rows or self.sharded) else None
        sums: dict[str, Tensor] = {}  # policy_loss metrics stay on the device until the end
        count, grad_norms = 0, []
        self.model.train()
        self._lockstep_forwards(True)
        for _ in range(a.ppo_epochs):
            order = torch.randperm(n).tolist() if a.ppo_epochs > 1 or mb < n else list(range(n))
            for start in range(0, n_minibatches * mb, mb):
                idx = order[start : start + mb]
                # Micro-batches keep a group's rows together, longest first: the policy runs each
                # prompt once per micro-batch and pads to that micro-batch's longest completion.
                # The minibatch gradient does not depend on how the minibatch is split.
                idx.sort(key=lambda i: (rows[i][1].sample_index, -len(rows[i][1].token_ids)))
                total_tokens, total_seqs = self._global_sum(
                    sum(len(rows[i][1].token_ids) for i in idx), len(idx)
                )
                self.optimizer.zero_grad(set_to_none=True)
                n_micro = math.ceil(len(idx) / a.micro_batch_size)
                if self.sharded:  # every rank runs as many forwards/backwards (rl/sharding.py)
                    n_micro = int(self._global_max(n_micro))
                for ms in range(0, n_micro * a.micro_batch_size, a.micro_batch_size):
                    micro = idx[ms : ms + a.micro_batch_size]
                    if not micro:
                        self._dummy_micro_step(prompts)
                        continue
                    m = self._micro_step(
                        rows, micro, advantages, ref_lp, temp, total_tokens, total_seqs
                    )
                    for k, v in m.items():
                        sums[k] = sums.get(k, 0.0) + v
                    count += 1
                self._allreduce_grads()
                self._drop_unused_grads()
                params = [p for p in self.model.parameters() if p.requires_grad]
                grad_norm = torch.nn.utils.clip_grad_norm_(params, a.max_grad_norm)
                if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP
                    grad_norm = grad_norm.full_tensor()
                grad_norms.append(float(grad_norm))
                self.optimizer.step()
                self.scheduler.step()
        self._lockstep_forwards(False)
        totals = torch.stack(list(sums.values())).tolist() if sums else []  # the one host sync
        out = _loss_metrics(dict(zip(sums, totals)), count, self._global_sum)
        out["loss/grad_norm"] = float(np.mean(grad_norms))
        if rows:  # a rank without rows leaves these to the others (``_reduce`` averages the rest)
            out["loss/off_policy_sequences"] = float(sum(r.off_policy for _, r in rows))
            out["completion_len"] = float(np.mean([len(r.token_ids) for _, r in rows]))
        return out

    def _micro_step(
        self, rows, micro, advantages, ref_lp, temp, total_tokens, total_seqs
    ) -> dict[str, Tensor]:
        a = self.cfg.algo
        prompts = [rows[i][0] for i in micro]
        comps = [rows[i][1].token_ids for i in micro]
        if self.sharded and not any(comps):  # no forward would run: keep FSDP in lock-step
            self._dummy_micro_step(prompts)
            return {}
        out = self.policy.completion_logprobs(  # entropy is only reported: keep it off the graph
            prompts,
            comps,
            temperature=temp,
            with_grad=True,
            return_entropy=True,
            entropy_grad=False,
        )
        T = out.logprobs.shape[1]
        old = _pad([rows[i][1].old_logprobs or () for i in micro], T)
        off = torch.tensor([rows[i][1].off_policy for i in micro])
        ref = torch.stack([ref_lp[i][:T] for i in micro]) if ref_lp is not None else None
        loss, m = policy_loss(
            out.logprobs,
            old.to(out.logprobs.device),
            advantages[micro].to(out.logprobs.device),
            out.mask,
            off_policy=off.to(out.logprobs.device),
            ref_logprobs=None if ref is None else ref.to(out.logprobs.device),
            clip_low=a.clip_low,
            clip_high=a.clip_high,
            shaping_gamma=self.cfg.ivr.gamma if self.cfg.ivr.shaping else None,
            kl_beta=a.beta,
            aggregation=a.aggregation,
            max_len=self.cfg.rollout.max_new_tokens if a.aggregation == "dr_grpo" else None,
            entropy=out.entropy,
        )
        # Re-weight the micro-batch mean into the minibatch-wide (all-rank) normalisation.
        if a.aggregation == "token":  # token count from the host: no device sync
            weight = sum(len(rows[i][1].token_ids) for i in micro) / max(total_tokens, 1)
        else:
            weight = len(micro) / max(total_seqs, 1)
        (loss * weight).backward()
        return m

    def _dummy_micro_step(self, prompts: list[Prompt]) -> None:
        """A zero-gradient forward/backward for a sharded rank with fewer micro-batches than the
        others: FSDP's per-layer all-gathers and reduce-scatters must line up on every rank."""
        out = self.policy.completion_logprobs(
            prompts[:1], [self.policy.eos_token_ids[:1]], with_grad=True
        )
        (out.logprobs.sum() * 0.0).backward()

    def _lockstep_forwards(self, on: bool) -> None:
        """Under FSDP, the same forwards on every rank: one full forward per micro-batch
        (no shared-prefix second pass, vision inside the root forward; rl/sharding.py)."""
        if self.sharded:
            self.policy.shared_prefix = self.policy.share_image_features = not on

    @contextmanager
    def _gathered(self, sampling: bool = False):
        """Sampling and other data-dependent passes on full weights (a no-op unsharded, and for
        sampling when another engine samples: vLLM holds its own copy of the weights)."""
        if not self.sharded or (sampling and not isinstance(self.rollout, HFBackend)):
            yield
            return
        with sharding.gathered(self.model):
            yield

    def _ref_logprobs(self, rows, temp: float) -> list[Tensor] | None:
        """log π_ref per row, padded to the longest completion (no grad, computed once per step).
        Sharded: every rank enters (the reference's weights are gathered), rows or not."""
        if self.sharded:
            ref_model = self.ref.model if self.ref is not None else self.model
            with sharding.gathered(ref_model):
                return self._ref_logprobs_local(rows, temp) if rows else None
        return self._ref_logprobs_local(rows, temp)

    def _ref_logprobs_local(self, rows, temp: float) -> list[Tensor] | None:
        T = max(len(r.token_ids) for _, r in rows)
        prompts, comps = [p for p, _ in rows], [r.token_ids for _, r in rows]
        with torch.no_grad():
            if self.ref is not None:
                out = self.ref.completion_logprobs(
                    prompts,
                    comps,
                    temperature=temp,
                    micro_batch_size=self.cfg.algo.micro_batch_size,
                )
            elif self.cfg.model.lora_rank > 0:
                with self.model.disable_adapter():
                    out = self.policy.completion_logprobs(
                        prompts,
                        comps,
                        temperature=temp,
                        micro_batch_size=self.cfg.algo.micro_batch_size,
                    )
            else:
                return None
        lp = torch.nn.functional.pad(out.logprobs, (0, T - out.logprobs.shape[1]))
        return list(lp.cpu())

    # ------------------------------------------------------------------ distributed helpers
    # Every rank must make the same collective calls in the same order, whatever its data: the
    # helpers below never branch on local content (missing gradients and metric keys included).
    def _global_sum(self, *xs: float) -> Any:
        """Sum of each value over ranks, in one collective; a single value for a single x."""
        if self.world > 1:
            t = torch.tensor([float(x) for x in xs], dtype=torch.float64, device=self.policy.device)
            torch.distributed.all_reduce(t)
            xs = tuple(t.tolist())
        return xs[0] if len(xs) == 1 else tuple(xs)

    def _global_max(self, x: float) -> float:
        if self.world == 1:
            return x
        t = torch.tensor([float(x)], dtype=torch.float64, device=self.policy.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return float(t.item())

    def _allreduce_grads(self, bucket_numel: int = 1 << 24) -> None:
        """Sum gradients across ranks: each rank's loss is already weighted by its share of the
        global minibatch, so the sum is the gradient of the global mean.

        Gradients travel in flat buckets of ≤ ``bucket_numel`` elements per dtype (a few large
        collectives rather than one per tensor). A parameter without a gradient on a rank counts
        as zero there; one without a gradient on every rank keeps ``grad = None`` (the optimiser
        then skips it, exactly as in a single process).
        """
        if self.world == 1 or self.sharded:  # FSDP reduce-scatters in the backward itself
            return
        params = [p for p in self.model.parameters() if p.requires_grad]
        has = torch.tensor(
            [p.grad is not None for p in params], dtype=torch.float32, device=self.policy.device
        )
        torch.distributed.all_reduce(has)
        params = [p for p, h in zip(params, has.tolist()) if h > 0]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        by_dtype: dict[torch.dtype, list[Tensor]] = {}
        for p in params:
            by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
        for grads in by_dtype.values():
            bucket: list[Tensor] = []
            size = 0
            for i, g in enumerate(grads):
                bucket.append(g)
                size += g.numel()
                if i == len(grads) - 1 or size >= bucket_numel:
                    flat = torch.cat([b.reshape(-1) for b in bucket])
                    torch.distributed.all_reduce(flat)
                    offset = 0
                    for b in bucket:
                        b.copy_(flat[offset : offset + b.numel()].view_as(b))
                        offset += b.numel()
                    bucket, size = [], 0

    def _drop_unused_grads(self) -> None:
        """Sharded: a parameter no rank used this minibatch (e.g. the vision tower when every
        prompt is text-only) gets ``grad = None``, as it would without sharding — FSDP hands it
        zeros instead, and AdamW would still move it by its running moments."""
        if not self.sharded:
            return
        params = [p for p in self.model.parameters() if p.requires_grad]
        zero = torch.zeros((), dtype=torch.bool, device=self.policy.device)
        used = torch.stack(  # built on the device: one transfer below, not one per parameter
            [
                zero
                if p.grad is None
                else (p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad).any()
                for p in params
            ]
        ).float()
        torch.distributed.all_reduce(used)
        for p, u in zip(params, used.tolist()):
            if u == 0:
                p.grad = None

    def _reduce(self, metrics: dict[str, float]) -> dict[str, float]:
        """Mean of each metric over the ranks that report it with a finite value (NaN where
        none does). Ranks may report different keys (e.g. one whose groups were all dropped)."""
        if self.world == 1:
            return metrics
        keys_per_rank: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(keys_per_rank, sorted(metrics))
        keys = sorted(set().union(*keys_per_rank))
        values = [float(metrics.get(k, math.nan)) for k in keys]
        t = torch.tensor(
            [[v, 1.0] if math.isfinite(v) else [0.0, 0.0] for v in values],
            dtype=torch.float64,
            device=self.policy.device,
        ).reshape(-1, 2)
        torch.distributed.all_reduce(t)
        return {k: s / c if c else math.nan for k, (s, c) in zip(keys, t.tolist())}

    # ------------------------------------------------------------------ saving
    def save(self, step: int) -> None:
        # Sharded: every rank takes part in gathering the full states; rank 0 writes them.
        model_state = sharding.full_state_dict(self.model) if self.sharded else None
        optim_state = sharding.optimizer_state(self.model, self.optimizer) if self.sharded else None
        if self.state.is_main_process:
            ckpt.save_checkpoint(
                self.ckpt_dir,
                step,
                model=self.model,
                processor=self.policy.processor,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                state={"total_steps": self.total_steps, "config": self.cfg.to_dict()},
                model_state=model_state,
                optimizer_state=optim_state,
            )
        if self.world > 1:
            self.state.wait_for_everyone()

    def save_final(self) -> Path:
        """A plain HF model directory (LoRA merged) for ``ivr eval`` and further training."""
        final = self.out / "final"
        lora = self.cfg.model.lora_rank > 0
        model_state = sharding.full_state_dict(self.model) if self.sharded else None
        if self.state.is_main_process:
            model = self.model
            if self.sharded and lora:  # merge into an unsharded copy of the same PEFT model
                from peft import get_peft_model

                base = Policy.from_pretrained(self.cfg.model.path, dtype=self.cfg.model.dtype)
                model = get_peft_model(base.model, self._lora_config())
            ckpt.save_final_model(
                model, self.policy.processor, final, merge_lora=lora, model_state=model_state
            )
        if self.world > 1:
            self.state.wait_for_everyone()
        return final


# ---------------------------------------------------------------------- small helpers
#: ``policy_loss`` metrics that are a ratio of two of its sums: name -> (numerator,
#: denominator). ``_loss_metrics`` pools them; the sums themselves are not logged.
_POOLED_RATIOS: dict[str, tuple[str, str]] = {
    "off_policy_grad_share": ("off_policy_grad", "policy_grad"),
}


def _loss_metrics(
    sums: dict[str, float], count: int, global_sum: Callable[..., Any]
) -> dict[str, float]:
    """The update's ``loss/*`` metrics from the sums of ``policy_loss``'s metrics over its
    ``count`` micro-batches (this rank's).

    Most are the mean over micro-batches of each micro-batch's value (``_reduce`` then averages
    the ranks). A ratio in ``_POOLED_RATIOS`` is exact instead: Σ numerator / Σ denominator over
    every micro-batch of the update on every rank (``global_sum``, one collective, which every
    rank makes whatever its data), 0 when the denominator is 0. The mean of the micro-batches'
    ratios would weigh a micro-batch that barely pushes like one that pushes hard.
    """
    sums = dict(sums)
    pairs = []
    for name, (num, den) in _POOLED_RATIOS.items():
        sums.pop(name, None)
        pairs += [sums.pop(num, 0.0), sums.pop(den, 0.0)]
    out = {f"loss/{k}": v / max(count, 1) for k, v in sums.items()}
    pooled = global_sum(*pairs)
    pooled = list(pooled) if isinstance(pooled, (tuple, list)) else [pooled]
    for i, name in enumerate(_POOLED_RATIOS):
        num, den = pooled[2 * i], pooled[2 * i + 1]
        out[f"loss/{name}"] = num / den if den > 0 else 0.0
    return out


def _pad(rows: Sequence[Sequence[float]], T: int) -> Tensor:
    out = torch.zeros(len(rows), T)
    for i, r in enumerate(rows):
        r = list(r)[:T]
        if r:
            out[i, : len(r)] = torch.tensor(r)
    return out


def _cpu_only(cfg: Config) -> bool:
    """True when this run trains on CPU. ``PartialState`` sets up a (gloo) process group for
    ``torchrun``/``accelerate launch``-started CPU processes only when told so; otherwise every
    rank would silently train alone as a world of one."""
    if cfg.model.device == "auto":
        return not torch.cuda.is_available()
    return cfg.model.device == "cpu"


def _nan_components(groups: list[Group]) -> list[str]:
    """Names of the reward components that are NaN/inf somewhere in ``groups`` (a user reward's
    component is its function's name); "reward" when the total alone is not finite."""
    names = {
        k
        for g in groups
        for r in g.rollouts
        if not math.isfinite(r.reward)
        for k, v in r.components.items()
        if not math.isfinite(v)
    }
    bad = any(not math.isfinite(r.reward) for g in groups for r in g.rollouts)
    return sorted(names) or (["reward"] if bad else [])


def _reward_metrics(groups: list[Group], prefix: str) -> dict[str, float]:
    rollouts = [r for g in groups for r in g.rollouts]
    if not rollouts:
        return {}
    rewards = np.array([r.reward for r in rollouts], dtype=float)
    out = {f"{prefix}/mean": float(np.nanmean(rewards)), f"{prefix}/std": float(np.nanstd(rewards))}
    keys = sorted({k for r in rollouts for k in r.components})
    for k in keys:
        vals = [r.components[k] for r in rollouts if k in r.components]
        out[f"{prefix}/{k}"] = float(np.mean(vals))
    solved = [max(r.components.get("correct", 0.0) for r in g.rollouts) for g in groups]
    out[f"{prefix}/group_solved"] = float(np.mean(solved))
    return out


def _sample_rows(groups: list[Group], n: int) -> list[dict[str, Any]]:
    rows = []
    for g in groups:
        for r in g.rollouts:
            if len(rows) >= n:
                return rows
            rows.append(
                {
                    "id": g.sample.id,
                    "question": g.sample.question,
                    "answer": g.sample.answer,
                    "completion": r.text,
                    "reward": r.reward,
                    "off_policy": r.off_policy,
                }
            )
    return rows


def train(cfg: Config, **kwargs: Any) -> dict[str, float]:
    """Run a whole training job described by ``cfg`` (the ``ivr train`` entry point)."""
    return Trainer(cfg, **kwargs).train()


__all__ = ["Trainer", "question_prompt", "step_seed", "train"]
