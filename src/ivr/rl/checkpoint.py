"""Atomic checkpoints that make a killed run resumable with nothing lost.

A checkpoint is a directory ``checkpoints/step_000050/`` holding the model (``save_pretrained``,
so it is also a loadable HF model for ``ivr eval``), the optimizer and scheduler states, every RNG
state, and ``trainer_state.json`` (step, data position, config). It is written to a temporary
directory and renamed into place, and ``checkpoints/latest`` is replaced atomically afterwards, so
a kill at any instant leaves either the previous checkpoint or the new one — never half of one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_checkpoint(
    root: str | Path,
    step: int,
    *,
    model: torch.nn.Module,
    processor: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    keep: int = 2,
    model_state: dict[str, Any] | None = None,
    optimizer_state: dict[str, Any] | None = None,
) -> Path:
    """Write ``root/step_{step:06d}`` atomically and point ``root/latest`` at it.

    ``model_state`` / ``optimizer_state``: gathered full states of a sharded model (see
    ``rl/sharding.py``); by default the module's and optimizer's own.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp_step_{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    model.save_pretrained(tmp, state_dict=model_state)
    if processor is not None:
        processor.save_pretrained(tmp)
    torch.save(
        {
            "optimizer": optimizer.state_dict() if optimizer_state is None else optimizer_state,
            "scheduler": scheduler.state_dict(),
            "rng": rng_state(),
        },
        tmp / "training_state.pt",
    )
    (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **state}, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _write_text_atomic(root / "latest", final.name)
    for old in sorted(root.glob("step_*"))[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: str | Path) -> Path | None:
    """The checkpoint ``latest`` points at, or None when the run has none yet."""
    pointer = Path(root) / "latest"
    if not pointer.is_file():
        return None
    path = Path(root) / pointer.read_text().strip()
    if not (path / "trainer_state.json").is_file():
        raise FileNotFoundError(f"{pointer} points at {path}, which is not a complete checkpoint")
    return path


def load_training_state(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(trainer_state.json, {optimizer, scheduler, rng}) of a checkpoint directory."""
    path = Path(path)
    meta = json.loads((path / "trainer_state.json").read_text())
    blobs = torch.load(path / "training_state.pt", weights_only=False)
    return meta, blobs


def restore_training_state(
    path: str | Path,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    load_optimizer: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Load optimizer, scheduler and RNG states of checkpoint ``path``; return its trainer state.
    ``load_optimizer`` replaces ``optimizer.load_state_dict`` (sharded optimizers)."""
    meta, blobs = load_training_state(path)
    (load_optimizer or optimizer.load_state_dict)(blobs["optimizer"])
    scheduler.load_state_dict(blobs["scheduler"])
    set_rng_state(blobs["rng"])
    return meta


def make_scheduler(
    optimizer: torch.optim.Optimizer, schedule: str, warmup_steps: int, total: int
) -> Any:
    """Linear warmup, then ``cosine`` decay or ``constant`` (transformers' schedulers)."""
    from transformers import get_scheduler

    name = "cosine" if schedule == "cosine" else "constant_with_warmup"
    return get_scheduler(
        name, optimizer, num_warmup_steps=warmup_steps, num_training_steps=max(total, 1)
    )


def save_final_model(
    model: torch.nn.Module,
    processor: Any,
    path: str | Path,
    *,
    merge_lora: bool,
    model_state: dict[str, Any] | None = None,
) -> Path:
    """A plain HF model directory (LoRA merged into a copy) for ``ivr eval`` and further training.

    ``model_state``: the gathered full state of a sharded model (``model`` is then only used for
    its config; under LoRA pass the unsharded PEFT model to merge it into).
    """
    if merge_lora:
        import copy

        model = copy.deepcopy(model)
        if model_state is not None:  # tied weights come once, under their first name
            result = model.load_state_dict(model_state, strict=False)
            names = {n for n, _ in model.named_parameters(remove_duplicate=False)}
            tied = names - {n for n, _ in model.named_parameters()}
            if set(result.missing_keys) - tied or result.unexpected_keys:
                raise ValueError(f"final model: state dict does not match the model: {result}")
            model_state = None
        model = model.merge_and_unload()
    model.save_pretrained(path, state_dict=model_state)
    processor.save_pretrained(path)
    return Path(path)
