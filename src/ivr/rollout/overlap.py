"""One-step off-policy overlap (``train.staleness: 1``): sample step t+1 while step t updates.

In the synchronous loop (``train.staleness: 0``) a step samples its batch with the current
weights, then scores, rectifies and updates on it; the sampler idles during the update and the
trainer during the sampling. With ``train.staleness: 1`` a *stale sampler* — a copy of the model
(weights and processor) refreshed from the live model once per step — samples step t+1's batch in
a background thread while the main thread runs step t (reward, rectify, advantages, update). The
prompts of step t+1 are known in advance: the trainer's row order is a pure function of
(seed, step) (``Trainer.batch_samples``). This is verl's "one step off-policy" recipe and
AReaL's / PipelineRL's asynchronous RL with at most one version of lag (docs/scaling.md).

Versions. ``v`` = number of completed updates; step t starts with the live model at v = t − 1.
Step t's batch is sampled by (``sampler_version``)

    v = t − 1   (fresh)  the first step of a run, and the step after each checkpoint
                         (``(t − 1) % train.save_every == 0``): a synchronisation barrier
    v = t − 2   (stale)  every other step: sampled by the snapshot during step t − 1's update

so staleness is ≤ 1 and exactly 1 off the barriers. Every rollout records its ``policy_version``
(``Generation`` → ``Rollout``), and the step logs ``rollout/staleness`` and ``rollout/prefetched``.

π_old and the mismatch correction. The sampler's logprobs are log π_v of the tokens, v the stale
version, and are kept on each rollout as ``behaviour_logprobs``. By default (HF backend,
``rollout.recompute_logprobs: auto`` = off) they are also ``old_logprobs``: the clipped ratio is
π_θ / π_{t−2}, the exact importance ratio of an off-policy PPO step whose trust region is centred
on the behaviour policy. With ``rollout.recompute_logprobs: true`` π_old is recomputed by the live
model (v = t − 1, AReaL's "proximal" policy): the trust region is centred on the current weights
and the behaviour/π_old ratio is left to the mismatch correction (``rl/importance.py``:
``mismatch_weights(behaviour_logprobs, old_logprobs, ...)``, wired as ``rollout.is_correction``).

IVR-R1 under overlap. The critique/rectify loop (and any other ``generate`` call after the step's
main batch) runs on the main thread with the live model, at v = t − 1: those are bit for bit the
weights the snapshot holds at that moment (it was refreshed from them at the start of step t), so
the critic is the stale sampler's weights, one version fresher than the rollouts it critiques.
It does not run on the snapshot object itself only because that copy is busy sampling step t+1.

Resume. The prefetched batch is not checkpointed. Checkpoint steps are barriers, so a run resumed
from a regular checkpoint (``train.save_every``) samples exactly what the uninterrupted run did;
from an emergency save (a crash mid-run) the first resumed step is sampled fresh (v = t − 1):
deterministic, but one version fresher than the uninterrupted run's.

Determinism. The worker samples with ``seed=`` (a private ``torch.Generator`` in the shared-prefix
decoder, ``models/decode.py``): it never touches the process-wide RNG the main thread uses, so the
run is a function of (config, seed) whatever the threads' timing. Hence the limits: a Qwen-VL
(3-D rope) model with ``Policy.shared_prefix``, one process, no FSDP, no 4-bit weights.

Cost: a second copy of the weights (and of the processor), one weight copy per step.
"""

from __future__ import annotations

import copy
import threading
import warnings
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch

from ..config import ConfigError
from ..data.images import load_image
from ..data.prompts import question_prompt
from ..training import step_seed
from ..types import Generation, Prompt

if TYPE_CHECKING:
    from ..models.policy import Policy

__all__ = ["OverlapRollout", "overlap_speedup", "sampler_version", "step_metrics", "wrap"]

# XOR-ed into the step seed: the prefetched batch's draws differ from the main thread's stream of
# the same step (seeded with step_seed itself), so rollouts and critiques are not correlated.
_PREFETCH_SEED = 0x5EED_0FF


# ---------------------------------------------------------------------- pure schedule
def sampler_version(step: int, *, start_step: int, staleness: int, save_every: int) -> int:
    """The weights version (completed updates) that samples step ``step``'s batch.

    >>> [sampler_version(t, start_step=0, staleness=1, save_every=0) for t in range(1, 6)]
    [0, 0, 1, 2, 3]
    >>> [sampler_version(t, start_step=0, staleness=1, save_every=2) for t in range(1, 6)]
    [0, 0, 2, 2, 4]
    """
    fresh = step - 1
    barrier = step == start_step + 1 or (save_every > 0 and fresh % save_every == 0)
    return fresh if staleness == 0 or barrier else fresh - 1


def overlap_speedup(generate_s: float, rest_s: float) -> float:
    """Step-time ratio synchronous/overlapped when sampling (``generate_s``) runs beside the rest
    of the step (``rest_s``: reward, rectify, update) on separate resources:
    (g + r) / max(g, r) = 1 / max(f, 1 − f), f = g / (g + r). At most 2, reached at f = 1/2.

    >>> round(overlap_speedup(7.0, 3.0), 3)  # f = 0.7: the step becomes the generation
    1.429
    """
    return (generate_s + rest_s) / max(generate_s, rest_s)


# ---------------------------------------------------------------------- the wrapper
class _Prefetch:
    """Step ``step``'s batch, being sampled in a daemon thread by ``policy`` at ``version``."""

    def __init__(self, step: int, version: int, kwargs: dict[str, Any]):
        self.step, self.version, self.kwargs = step, version, kwargs
        self.prompts: list[Prompt] = []
        self.gens: list[list[Generation]] | None = None
        self.error: BaseException | None = None
        self.thread: threading.Thread | None = None

    def run(self, trainer: Any, samples: list[Any], policy: Policy, seed: int) -> None:
        try:
            images = [tuple(load_image(p) for p in s.images) for s in samples]
            self.prompts = [
                question_prompt(s, im, trainer.prompts) for s, im in zip(samples, images)
            ]
            policy.model.eval()
            gens = policy.generate(self.prompts, **self.kwargs, seed=seed)
            self.gens = _tag(gens, self.version)
        except BaseException as e:  # re-raised on the main thread by ``join``
            self.error = e

    def join(self) -> list[list[Generation]]:
        if self.thread is not None:
            self.thread.join()
        if self.error is not None:
            raise RuntimeError(f"sampling step {self.step}'s batch in the background failed") from (
                self.error
            )
        assert self.gens is not None
        return self.gens


class OverlapRollout:
    """A ``RolloutBackend`` around the configured one (HF) that serves each step's main batch
    from a prefetch sampled by a stale weight snapshot (module docstring).

    The step's *main batch* is its first ``generate`` call; the trainer calls ``sync_weights``
    once per step after the update (the Protocol's contract), which is how the wrapper counts
    steps. A main call whose prompts or settings differ from the prefetch (a restructured loop)
    is sampled synchronously instead, with a warning: never a wrong batch.
    """

    def __init__(self, inner: Any, trainer: Any):
        if trainer.world > 1 or trainer.sharded:
            raise ConfigError(
                "`train.staleness` = 1 runs on one process for now (the snapshot and its thread "
                "are per process and untested under accelerate launch); use train.staleness=0"
            )
        policy = trainer.policy
        if not policy.shared_prefix or policy._rope_index_fn() is None:
            raise ConfigError(
                "`train.staleness` = 1 needs a model sampled by the shared-prefix decoder (Qwen-VL "
                "3-D rope, Policy.shared_prefix): its private RNG keeps the background sampling "
                "deterministic; HF generate draws from the process-wide RNG"
            )
        self.inner, self.trainer = inner, trainer
        self.shares_policy_weights = inner.shares_policy_weights
        self.logprobs_match_training = inner.logprobs_match_training
        self.version: int | None = None  # live model's completed updates (set at first use)
        self.snapshot: Policy | None = None
        self.snapshot_version = -1
        self.pending: _Prefetch | None = None
        self.main_done = False  # this step's main batch was served
        self.metrics: dict[str, float] = {}

    # ------------------------------------------------------------------ Protocol
    def generate(self, prompts: Sequence[Prompt], **kwargs: Any) -> list[list[Generation]]:
        if self.version is None:  # first call: the trainer has loaded/resumed its weights
            self.version = int(self.trainer.start_step)
        if self.main_done:  # rectify / resample / extra rounds: the live model, at v = t − 1
            return _tag(self.inner.generate(prompts, **kwargs), self.version)
        self.main_done = True
        step = self.version + 1
        pending, self.pending = self.pending, None
        gens, used = None, self.version
        if pending is not None:
            got = pending.join()  # the wait for the worker is in the trainer's time/rollout
            same = pending.kwargs == kwargs and list(prompts) == pending.prompts
            if pending.step == step and same:
                gens, used = got, pending.version
            else:
                warnings.warn(
                    f"step {step}: the prefetched batch (step {pending.step}) does not match the "
                    "prompts or settings asked for; sampling it now with the current weights",
                    stacklevel=2,
                )
        self._refresh()  # snapshot ← live weights (v = t − 1): the worker is idle now
        self.metrics = {
            "rollout/staleness": float(step - 1 - used),
            "rollout/prefetched": float(gens is not None),
        }
        if gens is None:
            gens = _tag(self.inner.generate(prompts, **kwargs), self.version)
        self._launch(step + 1, kwargs)
        return gens

    def sync_weights(self, model: torch.nn.Module) -> None:
        """After step t's update: the live model is at v = t. The snapshot is refreshed lazily, at
        the next main call, once the worker sampling with it has finished."""
        self.inner.sync_weights(model)
        if self.version is not None:
            self.version += 1
        self.main_done = False

    def step_metrics(self) -> dict[str, float]:
        out, self.metrics = self.metrics, {}
        return out

    def close(self) -> None:
        pending, self.pending = self.pending, None
        if pending is not None and pending.thread is not None:
            pending.thread.join()  # bounded by one generation; its result is dropped
        self.snapshot = None
        self.inner.close()

    # ------------------------------------------------------------------ internals
    def _refresh(self) -> None:
        live = self.trainer.policy
        if self.snapshot is None:
            snap = copy.copy(live)
            for memo in ("_vision_memo", "_prompt_kv"):  # its own, not the live policy's
                snap.__dict__.pop(memo, None)  # (two threads would share them, or mix models)
            snap.reuse_prompt_kv = False  # one call per step on new images: nothing to reuse
            snap.model = copy.deepcopy(live.model).requires_grad_(False).eval()
            snap.processor = copy.deepcopy(live.processor)  # HF tokenizers are not thread-safe
            self.snapshot = snap
        elif self.snapshot_version != self.version:
            with torch.no_grad():
                self.snapshot.model.load_state_dict(live.model.state_dict())
        self.snapshot_version = int(self.version)

    def _launch(self, step: int, kwargs: dict[str, Any]) -> None:
        cfg = self.trainer.cfg
        if step > self.trainer.total_steps:
            return
        v = sampler_version(
            step,
            start_step=self.trainer.start_step,
            staleness=cfg.train.staleness,
            save_every=cfg.train.save_every,
        )
        if v != self.snapshot_version:  # a barrier: step ``step`` samples fresh weights
            return
        job = _Prefetch(step, v, dict(kwargs))
        seed = step_seed(cfg.train.seed, step, self.trainer.rank) ^ _PREFETCH_SEED
        # the rows are drawn here, on the main thread: under DAPO dynamic sampling the data
        # position moves with the rounds drawn so far (rl/filters.py); if step ``step - 1`` then
        # draws extra prompts the prefetch no longer matches and is resampled (warning)
        samples = self.trainer.batch_samples(step)
        job.thread = threading.Thread(
            target=job.run, args=(self.trainer, samples, self.snapshot, seed), daemon=True
        )
        job.thread.start()
        self.pending = job


def _tag(gens: list[list[Generation]], version: int) -> list[list[Generation]]:
    return [[replace(g, policy_version=version) for g in row] for row in gens]


def wrap(backend: Any, trainer: Any) -> Any:
    """``backend`` itself at ``train.staleness: 0`` (today's synchronous loop, untouched), else
    an ``OverlapRollout`` around it. ``trainer`` is read duck-typed: ``cfg``, ``policy``,
    ``batch_samples(step)``, ``prompts``, ``start_step``, ``total_steps``, ``rank``, ``world``,
    ``sharded``."""
    if trainer.cfg.train.staleness == 0:
        return backend
    return OverlapRollout(backend, trainer)


def step_metrics(backend: Any) -> dict[str, float]:
    """The overlap's metrics of the step (``rollout/staleness``, ``rollout/prefetched``); {} for a
    plain backend."""
    return backend.step_metrics() if isinstance(backend, OverlapRollout) else {}
