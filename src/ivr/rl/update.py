"""The optimisation phase of a training step: μ passes × minibatches × micro-batches.

``Trainer.update`` calls ``update(trainer, groups, prompts, advantages)``; the functions here
read the trainer's pieces (config, policy, optimizer, scheduler, collectives, reference) and
nothing else, so the loop in ``rl/trainer.py`` keeps only the phases of a step.

Per micro-batch, one training forward gives log π_θ and the entropy (off the graph), and
``policy_loss`` (rl/losses.py) takes, besides the advantages and the off-policy flags:

- ``loss=algo.loss`` (grpo | gspo | cispo | sapo) with its clip range or SAPO's τ;
- ``entropy_mask`` when ``algo.top_entropy_quantile`` ρ < 1 (rl/entropy.py): the top-ρ tokens
  by entropy **of the micro-batch** (the threshold is the micro-batch's own quantile, as TRL's
  is over the batch each of its loss calls sees). Why not the minibatch's: the entropies of a
  minibatch's other micro-batches are not known until their forwards have run, and a second
  no-grad pass over the minibatch to find the threshold first would cost a third of the update.
  Micro-batches keep a group's rows together, so the quantile is taken over whole groups; with
  ``algo.micro_batch_size`` ≥ the minibatch it is exactly the minibatch quantile. Logged as
  ``loss/entropy_masked_share`` (the share of tokens without a policy gradient, ≈ 1 − ρ);
- ``is_weights`` when the rollout-training mismatch correction is on (``rollout.is_correction``,
  resolved by ``rollout.mismatch_correction``; rl/importance.py): computed once per step from
  the sampler's ``behaviour_logprobs`` (μ) and the training forward's ``old_logprobs`` (π_old)
  on every on-policy token of this rank, then sliced per micro-batch. Logged as
  ``mismatch/log_ratio_abs_mean``, ``mismatch/log_ratio_abs_max`` (the max over every rank),
  ``mismatch/ratio_mean``, ``mismatch/weight_mean``, ``mismatch/capped_share`` (TIS) and
  ``mismatch/masked_share`` (MIS).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from ..rollout import mismatch_correction
from ..types import Group, Prompt, Rollout
from . import sharding
from .entropy import top_entropy_mask
from .importance import mismatch_weights
from .losses import policy_loss
from .metrics import accumulate, loss_metrics

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = ["mismatch_phase", "update"]

Row = tuple[Prompt, Rollout]


def update(
    tr: Trainer, groups: list[Group], prompts: list[Prompt], advantages: Tensor
) -> dict[str, float]:
    """μ passes over minibatches of (prompt, completion) sequences with accumulation.

    Multi-process: every rank takes the same number of optimiser steps (the most minibatches
    any rank has), so the collectives line up even where a rank has fewer rows than the
    others (groups dropped for a NaN reward) or none: it contributes a zero gradient.
    """
    cfg, a = tr.cfg, tr.cfg.algo
    tr._dirty = True
    tr.policy.release_sampling_caches()  # stale after this update; frees the memory now
    rows = [(prompts[r.sample_index], r) for g in groups for r in g.rollouts]
    n = len(rows)
    mb = a.minibatch_size or max(n, 1)
    n_minibatches = int(tr.comm.max(math.ceil(n / mb)))
    if n_minibatches == 0:
        return {"loss/skipped": 1.0}
    temp = cfg.rollout.temperature or 1.0
    ref_lp = _ref_logprobs(tr, rows, temp) if a.beta > 0 and (rows or tr.sharded) else None
    is_w, mismatch = mismatch_phase(tr, rows)
    sums: dict[str, Tensor] = {}  # policy_loss metrics stay on the device until the end
    count, grad_norms = 0, []
    tr.model.train()
    _lockstep_forwards(tr, True)
    for _ in range(a.ppo_epochs):
        order = torch.randperm(n).tolist() if a.ppo_epochs > 1 or mb < n else list(range(n))
        for start in range(0, n_minibatches * mb, mb):
            idx = order[start : start + mb]
            # Micro-batches keep a group's rows together, longest first: the policy runs each
            # prompt once per micro-batch and pads to that micro-batch's longest completion.
            # The minibatch gradient does not depend on how the minibatch is split.
            idx.sort(key=lambda i: (rows[i][1].sample_index, -len(rows[i][1].token_ids)))
            total_tokens, total_seqs = tr.comm.sum(
                sum(len(rows[i][1].token_ids) for i in idx), len(idx)
            )
            tr.optimizer.zero_grad(set_to_none=True)
            n_micro = math.ceil(len(idx) / a.micro_batch_size)
            if tr.sharded:  # every rank runs as many forwards/backwards (rl/sharding.py)
                n_micro = int(tr.comm.max(n_micro))
            for ms in range(0, n_micro * a.micro_batch_size, a.micro_batch_size):
                micro = idx[ms : ms + a.micro_batch_size]
                if not micro:
                    _dummy_micro_step(tr, prompts)
                    continue
                m = _micro_step(
                    tr, rows, micro, advantages, ref_lp, is_w, temp, total_tokens, total_seqs
                )
                accumulate(sums, m)
                count += 1
            if tr.sharded:  # FSDP reduce-scatters in the backward itself
                tr.comm.drop_unused_grads(tr.model)
            else:
                tr.comm.allreduce_grads(tr.model)
            params = [p for p in tr.model.parameters() if p.requires_grad]
            grad_norm = torch.nn.utils.clip_grad_norm_(params, a.max_grad_norm)
            if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP
                grad_norm = grad_norm.full_tensor()
            grad_norms.append(float(grad_norm))
            tr.optimizer.step()
            tr.scheduler.step()
    _lockstep_forwards(tr, False)
    totals = torch.stack(list(sums.values())).tolist() if sums else []  # the one host sync
    out = loss_metrics(dict(zip(sums, totals)), count, tr.comm.sum)
    out["loss/grad_norm"] = float(np.mean(grad_norms))
    out.update(mismatch)
    if rows:  # a rank without rows leaves these to the others (``_reduce`` averages the rest)
        out["loss/off_policy_sequences"] = float(sum(r.off_policy for _, r in rows))
        out["completion_len"] = float(np.mean([len(r.token_ids) for _, r in rows]))
    return out


def _micro_step(
    tr: Trainer,
    rows: list[Row],
    micro: list[int],
    advantages: Tensor,
    ref_lp: list[Tensor] | None,
    is_w: list[Tensor] | None,
    temp: float,
    total_tokens: float,
    total_seqs: float,
) -> dict[str, Tensor]:
    a = tr.cfg.algo
    prompts = [rows[i][0] for i in micro]
    comps = [rows[i][1].token_ids for i in micro]
    if tr.sharded and not any(comps):  # no forward would run: keep FSDP in lock-step
        _dummy_micro_step(tr, prompts)
        return {}
    out = tr.policy.completion_logprobs(  # entropy: reported / masked on, kept off the graph
        prompts,
        comps,
        temperature=temp,
        with_grad=True,
        return_entropy=True,
        entropy_grad=False,
    )
    T, dev = out.logprobs.shape[1], out.logprobs.device
    old = _pad([rows[i][1].old_logprobs or () for i in micro], T)
    off = torch.tensor([rows[i][1].off_policy for i in micro])
    ref = torch.stack([ref_lp[i][:T] for i in micro]) if ref_lp is not None else None
    w = torch.stack([is_w[i][:T] for i in micro]).to(dev) if is_w is not None else None
    rho = a.top_entropy_quantile
    ent_mask = top_entropy_mask(out.entropy, out.mask, rho) if rho < 1.0 else None
    loss, m = policy_loss(
        out.logprobs,
        old.to(dev),
        advantages[micro].to(dev),
        out.mask,
        off_policy=off.to(dev),
        ref_logprobs=None if ref is None else ref.to(dev),
        clip_low=a.clip_low,
        clip_high=a.clip_high,
        shaping_gamma=tr.cfg.ivr.gamma if tr.cfg.ivr.shaping else None,
        kl_beta=a.beta,
        aggregation=a.aggregation,
        max_len=tr.cfg.rollout.max_new_tokens if a.aggregation == "dr_grpo" else None,
        entropy=out.entropy,
        loss=a.loss,
        sapo_tau_pos=a.sapo_tau_pos,
        sapo_tau_neg=a.sapo_tau_neg,
        entropy_mask=ent_mask,
        is_weights=w,
    )
    if "entropy_mask_share" in m:  # logged as the share masked (no policy gradient)
        m["entropy_masked_share"] = 1.0 - m.pop("entropy_mask_share")
    # Re-weight the micro-batch mean into the minibatch-wide (all-rank) normalisation.
    if a.aggregation == "token":  # token count from the host: no device sync
        count, total = sum(len(rows[i][1].token_ids) for i in micro), total_tokens
    else:
        count, total = len(micro), total_seqs
    weight = count / max(total, 1)
    m["loss_weight"] = loss.new_tensor(float(count)).detach()  # loss/loss pools by it
    (loss * weight).backward()
    return m


def _dummy_micro_step(tr: Trainer, prompts: list[Prompt]) -> None:
    """A zero-gradient forward/backward for a sharded rank with fewer micro-batches than the
    others: FSDP's per-layer all-gathers and reduce-scatters must line up on every rank."""
    out = tr.policy.completion_logprobs(prompts[:1], [tr.policy.eos_token_ids[:1]], with_grad=True)
    (out.logprobs.sum() * 0.0).backward()


def _lockstep_forwards(tr: Trainer, on: bool) -> None:
    """Under FSDP, the same forwards on every rank: one full forward per micro-batch
    (no shared-prefix second pass, vision inside the root forward; rl/sharding.py)."""
    if tr.sharded:
        tr.policy.shared_prefix = tr.policy.share_image_features = not on


def mismatch_phase(tr: Trainer, rows: list[Row]) -> tuple[list[Tensor] | None, dict[str, float]]:
    """Per-row TIS/MIS weights (each [len(row)], 1 on rectified rows) and the ``mismatch/*``
    metrics of this rank, with the max |log-ratio| over every rank (a collective every rank
    makes when the correction is on, rows or not). ``(None, {})`` when it is off.

    μ is a row's ``behaviour_logprobs`` (the sampler's, kept when π_old was recomputed); a row
    without them (no logprobs from the sampler) counts as μ = π_old, weight 1.
    """
    r = tr.cfg.rollout
    mode = mismatch_correction(r)
    if mode == "none":
        return None, {}
    T = max((len(x.token_ids) for _, x in rows), default=0)
    old = _pad([x.old_logprobs or () for _, x in rows], T)
    beh = _pad(
        [
            x.behaviour_logprobs if x.behaviour_logprobs is not None else (x.old_logprobs or ())
            for _, x in rows
        ],
        T,
    )
    lengths = torch.tensor([len(x.token_ids) for _, x in rows], dtype=torch.long)
    on = torch.tensor([not x.off_policy for _, x in rows], dtype=torch.bool)
    mask = (torch.arange(T)[None, :] < lengths[:, None]) & on[:, None]
    w, m = mismatch_weights(beh, old, mask, mode=mode, cap=r.is_cap, level=r.is_level)
    out = {f"mismatch/{k}": float(v) for k, v in m.items()} if rows else {}
    out["mismatch/log_ratio_abs_max"] = tr.comm.max(out.get("mismatch/log_ratio_abs_max", 0.0))
    return list(w), out


def _ref_logprobs(tr: Trainer, rows: list[Row], temp: float) -> list[Tensor] | None:
    """log π_ref per row, padded to the longest completion (no grad, computed once per step).
    Sharded: every rank enters (the reference's weights are gathered), rows or not."""
    if tr.sharded:
        ref_model = tr.ref.model if tr.ref is not None else tr.model
        with sharding.gathered(ref_model):
            return _ref_logprobs_local(tr, rows, temp) if rows else None
    return _ref_logprobs_local(tr, rows, temp)


def _ref_logprobs_local(tr: Trainer, rows: list[Row], temp: float) -> list[Tensor] | None:
    T = max(len(r.token_ids) for _, r in rows)
    prompts, comps = [p for p, _ in rows], [r.token_ids for _, r in rows]
    with torch.no_grad():
        if tr.ref is not None:
            out = tr.ref.completion_logprobs(
                prompts,
                comps,
                temperature=temp,
                micro_batch_size=tr.cfg.algo.micro_batch_size,
            )
        elif tr.cfg.model.lora_rank > 0:
            with tr.model.disable_adapter():
                out = tr.policy.completion_logprobs(
                    prompts,
                    comps,
                    temperature=temp,
                    micro_batch_size=tr.cfg.algo.micro_batch_size,
                )
        else:
            return None
    lp = torch.nn.functional.pad(out.logprobs, (0, T - out.logprobs.shape[1]))
    return list(lp.cpu())


def _pad(rows: Sequence[Sequence[float]], T: int) -> Tensor:
    out = torch.zeros(len(rows), T)
    for i, r in enumerate(rows):
        r = list(r)[:T]
        if r:
            out[i, : len(r)] = torch.tensor(r)
    return out
