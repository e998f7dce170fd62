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
    6. filter       (DAPO, optional: rl/filters.py) drop equal-reward groups, rerun 1–5 to refill
    7. advantages   over each (mixed) group; NaN groups dropped and counted; truncated rows masked
    8. update       μ passes × minibatches × micro-batches; clipped surrogate on sampled tokens,
                    policy shaping on rectified ones, k3 KL to the frozen reference if β > 0
    9. log / save   metrics (JSONL, TensorBoard, wandb), samples and traces, atomic checkpoint

What is really implemented, and why:
- ``old_logprobs`` are the sampling log-probabilities returned by ``generate`` (π_θold is the
  policy that sampled). They are exact up to float error (tested to 1e-4), so no extra forward is
  spent on them; μ > 1 reuses them too, which is what PPO prescribes. With the vLLM rollout
  backend (other kernels) they are recomputed by a no-grad training forward (rollout/base.py),
  and the sampler's are kept for the TIS/MIS correction of ``rollout.is_correction`` (rl/update.py).
- The training forward divides logits by the sampling temperature, so ρ = 1 at the first pass.
- Token aggregation is over the whole minibatch (all ranks): each micro-batch loss is re-weighted
  by its share of the minibatch's tokens (or sequences) and gradients are summed across ranks.
- Multi-process (``accelerate launch``): every rank samples its own prompts and keeps its groups;
  gradients are all-reduced by hand (rl/distributed.py; no DDP wrapper, so ``generate`` runs on
  the plain module).
- Determinism: every step reseeds from (seed, step), so a run killed and resumed from a checkpoint
  samples and updates exactly as an uninterrupted one (tested on CPU). The model set-up, seeds and
  row order are SFT's too (ivr/training.py).
"""

from __future__ import annotations

import math
import random
import time
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .. import checkpoint as ckpt
from .. import training
from ..config import Config, ConfigError, dump_config
from ..data.images import load_image
from ..data.prompts import PromptSet, question_prompt
from ..models.policy import Policy
from ..rewards import LocalizationConfig
from ..rewards.scorer import RewardError, RewardFn, Scorer
from ..rollout import make_backend, overlap, recompute_enabled, recompute_logprobs
from ..tracking import Tracker
from ..types import Generation, Group, Prompt, Rollout, Sample
from . import filters, sharding
from .advantages import group_advantages
from .distributed import Collectives, cpu_only
from .metrics import Timer, nan_components, reward_metrics, sample_rows
from .update import update as update_phase


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
        self.state = PartialState(cpu=cpu_only(cfg))
        self.rank, self.world = self.state.process_index, self.state.num_processes
        training.set_threads(cfg)
        self.out = Path(cfg.train.output_dir)
        self.ckpt_dir = self.out / "checkpoints"
        self.prompts = PromptSet.load(cfg.data.prompts)

        # resume, refuse a directory holding another run, or clear it (train.overwrite / auto)
        resume_from, clear = ckpt.plan_run(self.out, cfg.train.resume, cfg.train.overwrite)
        if clear and self.state.is_main_process:
            ckpt.clear_run(self.out)
        self.policy = policy if policy is not None else self._load_policy(resume_from)
        # The loop's calls extend each other's prompts: keep and reuse their KV between calls
        self.policy.reuse_prompt_kv = cfg.ivr.enabled and cfg.rollout.reuse_prompt_kv
        self.model = self.policy.model
        self.samples = list(samples) if samples is not None else training.load_train_samples(cfg)
        self.ref = training.load_reference(cfg, self.policy) if cfg.algo.beta > 0 else None
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
        self.comm = Collectives(self.world, self.policy.device)  # rl/distributed.py
        self.batches = filters.Batches(cfg, self.samples, self.comm, self.rank, self.policy)

        # The sampler: HF generate on self.model, or a vLLM engine synced after each update.
        self.rollout = overlap.wrap(make_backend(cfg, self.policy), self)  # train.staleness
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
        self.optimizer = training.make_optimizer(self.model, cfg.algo.lr, cfg.algo.weight_decay)
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
            self.start_step = self.batches.restore(meta)  # the step and the data position
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
        """``model.path`` (or the checkpoint's full weights) prepared as ``ivr.training`` does
        for SFT too: freeze_vision, LoRA, gradient checkpointing."""
        m = self.cfg.model
        lora = m.lora_rank > 0
        device = training.resolve_device(self.cfg, cuda=str(self.state.device))
        path = resume_from if resume_from and not lora else m.path
        policy = training.load_policy(self.cfg, path, device=device)
        policy = training.prepare_model(self.cfg, policy, resume_from)
        policy.logprob_chunk_size = m.logprob_chunk_size
        return policy

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
        cfg, timer = self.cfg, Timer()
        training.seed_everything(training.step_seed(cfg.train.seed, step, self.rank))
        progress = (step - 1) / max(1, self.total_steps)
        t0 = time.perf_counter()

        groups, prompts, metrics = self.batches.collect(self._collect, step, timer)  # 1–6
        with timer("advantages"):
            self._nan_rewards = nan_components(groups)
            groups, advantages, dropped = self.batches.advantages(self.advantages, groups)
            metrics["reward/nan_groups"] = float(dropped)
        with timer("update"):
            metrics.update(self.update(groups, prompts, advantages))
        with timer("weight_sync"):  # the sampler sees the new weights (no-op for HF generate)
            self.rollout.sync_weights(self.model)
        metrics.update(timer)
        metrics.update(overlap.step_metrics(self.rollout))  # rollout/staleness (train.staleness)
        metrics["time/step"] = time.perf_counter() - t0
        metrics["lr"] = self.scheduler.get_last_lr()[0]
        metrics["progress"] = progress
        metrics = self._reduce(metrics)
        self.tracker.write_rows("samples", step, sample_rows(groups, cfg.log.samples_per_step))
        return metrics

    def _collect(self, step: int, samples: list[Sample], timer: Timer) -> filters.Batch:  # 1–5
        cfg, seed = self.cfg, training.step_seed(self.cfg.train.seed, step, self.rank)
        progress = (step - 1) / max(1, self.total_steps)
        with timer("prompts"):
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
        if recompute_enabled(cfg.rollout):  # π_old from the training forward (rollout/base.py)
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
        metrics = reward_metrics(groups, prefix="reward")  # the task reward of the samples
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
            metrics.update(reward_metrics(groups, prefix="reward_mixed"))
        return groups, prompts, metrics

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
        """Prompts of this step for this rank: a seeded per-epoch shuffle (rl/filters.py)."""
        return self.batches.draw(step)

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
                        behaviour_logprobs=gen.sampler_logprobs,  # log μ (rl/importance.py)
                        policy_version=gen.policy_version,
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
        """μ passes × minibatches × micro-batches (rl/update.py: the optimisation phase)."""
        return update_phase(self, groups, prompts, advantages)

    @contextmanager
    def _gathered(self, sampling: bool = False):
        """Sampling and other data-dependent passes on full weights (a no-op unsharded, and for
        sampling when another engine samples: vLLM holds its own copy of the weights)."""
        if not self.sharded or (sampling and not self.rollout.shares_policy_weights):
            yield
            return
        with sharding.gathered(self.model):
            yield

    def _reduce(self, metrics: dict[str, float]) -> dict[str, float]:
        """Each metric's mean over the ranks that report it (rl/distributed.py)."""
        return self.comm.mean_metrics(metrics)

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
                state={"total_steps": self.total_steps, "config": self.cfg.to_dict()}
                | self.batches.state(step),
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
                model = get_peft_model(base.model, training.lora_config(self.cfg))
            ckpt.save_final_model(
                model, self.policy.processor, final, merge_lora=lora, model_state=model_state
            )
        if self.world > 1:
            self.state.wait_for_everyone()
        return final


def train(cfg: Config, **kwargs: Any) -> dict[str, float]:
    """Run a whole training job described by ``cfg`` (the ``ivr train`` entry point)."""
    return Trainer(cfg, **kwargs).train()


__all__ = ["Trainer", "train"]
