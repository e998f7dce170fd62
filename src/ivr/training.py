"""What an SFT run and an RL run set up the same way: the model, its trainable part, the seeds
and the order of the rows.

Both jobs (``ivr.sft``, ``ivr.rl.trainer``) load ``model.path`` with the same options, freeze the
vision tower (``model.freeze_vision``), wrap the model in LoRA adapters (``model.lora_rank``;
the adapters of a checkpoint when resuming), turn on gradient checkpointing, reseed every RNG
from (seed, step) at each step, and visit the rows in a seeded permutation per epoch. It is
written once here so the two cannot drift: a run of either is reproducible from its seed, and a
resumed run continues exactly as an uninterrupted one (every function below draws from the global
RNGs only where its docstring says so, in the order the jobs always drew).

Layer: config, data and models only; rl, sft and eval sit above it.
"""

from __future__ import annotations

import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import Config
from .data.dataset import load_samples
from .models.policy import Policy
from .types import Sample

__all__ = [
    "epoch_order",
    "load_policy",
    "load_reference",
    "load_train_samples",
    "lora_config",
    "make_optimizer",
    "prepare_model",
    "resolve_device",
    "seed_everything",
    "set_threads",
    "step_seed",
]


# ---------------------------------------------------------------------- seeds and row order
def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """The seed of step ``step`` on rank ``rank``: a function of (seed, step, rank) only, so a
    resumed run draws what an uninterrupted one would have."""
    return (seed * 1_000_003 + step * 9_973 + rank * 101) % (2**31)


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global RNGs (in that order)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def epoch_order(seed: int, n: int, start: int, count: int) -> list[int]:
    """Row indices at positions ``start … start+count−1`` of the endless sequence of per-epoch
    permutations of ``n`` rows (epoch ``e``: ``default_rng(seed + e).permutation(n)``).

    The rows at a position depend on (seed, position) only, never on the global RNGs, so a step
    (and a resumed run) sees the same rows whatever ran before it.

    >>> epoch_order(0, 3, 2, 3)[1:] == epoch_order(1, 3, 0, 2)  # next epoch: the next seed
    True
    """
    out, perms = [], {}
    for pos in range(start, start + count):
        epoch, i = divmod(pos, n)
        if epoch not in perms:
            perms[epoch] = np.random.default_rng(seed + epoch).permutation(n)
        out.append(int(perms[epoch][i]))
    return out


def set_threads(cfg: Config) -> None:
    """``train.threads`` torch threads (0: torch's default)."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)


# ---------------------------------------------------------------------- the model
def resolve_device(cfg: Config, cuda: str = "cuda") -> str:
    """``model.device`` with ``auto`` resolved: ``cuda`` (a multi-process run passes this rank's
    GPU) when CUDA is available, else ``cpu``."""
    device = cfg.model.device
    if device == "auto":
        device = cuda if torch.cuda.is_available() else "cpu"
    return device


def load_policy(
    cfg: Config, path: str | Path, *, device: str, load_in_4bit: bool | None = None
) -> Policy:
    """``Policy.from_pretrained(path)`` with the ``model.*`` options (dtype, attention, image
    pixel bounds; ``load_in_4bit`` defaults to ``model.load_in_4bit``). Draws no random numbers."""
    m = cfg.model
    if not m.path:
        raise ValueError("model.path is empty: set it in the config or with model.path=DIR")
    return Policy.from_pretrained(
        path,
        dtype=m.dtype,
        device=device,
        attn_implementation=m.attn_implementation,
        min_pixels=m.min_pixels,
        max_pixels=m.max_pixels,
        load_in_4bit=m.load_in_4bit if load_in_4bit is None else load_in_4bit,
    )


def lora_config(cfg: Config) -> Any:
    """The ``peft.LoraConfig`` of ``model.lora_rank``/``lora_alpha``: every linear layer, the
    vision tower's excluded when it is frozen."""
    from peft import LoraConfig

    m = cfg.model
    return LoraConfig(
        r=m.lora_rank,
        lora_alpha=m.lora_alpha,
        target_modules="all-linear",
        exclude_modules=r".*visual.*" if m.freeze_vision else None,
    )


def prepare_model(cfg: Config, policy: Policy, resume_from: Path | None) -> Policy:
    """freeze_vision → LoRA → gradient checkpointing, in that order.

    LoRA: the adapters of ``resume_from`` when resuming, else fresh ones whose random init is
    reseeded from ``train.seed`` first (the one draw from the global RNG here: reproducible
    whatever ran before). Returns a new ``Policy`` around the wrapped model under LoRA.
    """
    m, model = cfg.model, policy.model
    if m.freeze_vision:
        for name, p in model.named_parameters():
            if "visual" in name:
                p.requires_grad_(False)
    if m.lora_rank > 0:
        from peft import PeftModel, get_peft_model

        if resume_from is not None:
            model = PeftModel.from_pretrained(model, resume_from, is_trainable=True)
        else:
            torch.manual_seed(cfg.train.seed)  # the adapters' random init: reproducible
            model = get_peft_model(model, lora_config(cfg))
        policy = Policy(model, policy.processor)
    if m.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return policy


def load_reference(cfg: Config, policy: Policy) -> Policy | None:
    """The frozen π_ref of the KL term: under LoRA the same weights with the adapter off (None);
    else ``model.path`` loaded again, or a frozen copy of ``policy`` when it was passed in."""
    if cfg.model.lora_rank > 0:
        return None
    path = cfg.model.path or None
    if path is None:  # a policy passed in by the caller: freeze a copy of its start weights
        import copy

        ref_model = copy.deepcopy(policy.model)
    else:
        ref_model = Policy.from_pretrained(
            path, dtype=cfg.model.dtype, device=str(policy.device)
        ).model
    ref_model.eval().requires_grad_(False)
    return Policy(ref_model, policy.processor)


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over the parameters that train (LoRA adapters only, vision tower frozen or not)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


# ---------------------------------------------------------------------- the data
def load_train_samples(cfg: Config) -> list[Sample]:
    """``data.train`` as samples, every image decoded now and rows without an answer dropped
    (``data.on_error=skip``) or refused (``raise``), so a bad row is named before training."""
    d = cfg.data
    if not d.train:
        raise ValueError("data.train is empty: set it to a dataset dir, .jsonl or .parquet")
    # Every image is decoded now (~0.3 ms for a small PNG): a truncated file is named here,
    # or skipped and counted with data.on_error=skip, not found when its row is sampled.
    samples = load_samples(d.train, split=d.train_split, on_error=d.on_error, verify_images=True)
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
