"""Atomic checkpoints that make a killed run resumable with nothing lost.

A checkpoint is a directory ``checkpoints/step_000050/`` holding the model (``save_pretrained``,
so it is also a loadable HF model for ``ivr eval``), the optimizer and scheduler states, every RNG
state, and ``trainer_state.json`` (step, data position, config). It is written to a temporary
directory and renamed into place, and ``checkpoints/latest`` is replaced atomically afterwards, so
a kill at any instant leaves either the previous checkpoint or the new one — never half of one.

On resume every file of the checkpoint is checked first (``verify_checkpoint``: JSON parses,
safetensors and ``training_state.pt`` are complete); a damaged one is named and the newest intact
checkpoint is used instead. A run directory that already holds a run is never silently reused:
``plan_run`` resumes it, refuses it, or (``train.overwrite``) clears it first. Old checkpoints are
pruned by step number: the ``keep`` newest at or below the step just saved; any above it belong
to an abandoned continuation (a resume from an earlier checkpoint) and go.

``training_state.pt`` is loaded with ``torch.load(weights_only=True)``: it holds tensors and plain
Python data only (the numpy RNG state is stored as a tensor), so a checkpoint someone else
supplied cannot run code when it is resumed; one that holds anything else is refused, named.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
import struct
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import ConfigError

#: What a training run writes to ``train.output_dir`` (removed by ``clear_run``).
RUN_FILES = (
    "metrics.jsonl",
    "samples.jsonl",
    "traces.jsonl",
    "config.yaml",
    "checkpoints",
    "final",
    "tensorboard",
)


class CheckpointError(ValueError):
    """A checkpoint file that is missing, truncated or corrupt; the message names the file."""


def rng_state() -> dict[str, Any]:
    """Every RNG state, as tensors and plain Python data (what ``weights_only`` loading allows):
    python ``random`` (a tuple of ints), numpy's legacy global RNG (its MT19937 key as an int64
    tensor) and torch's (CPU and CUDA byte tensors)."""
    kind, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    state = {
        "python": random.getstate(),
        "numpy": {
            "kind": str(kind),
            "key": torch.from_numpy(key.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    if isinstance(n, dict):
        n = (n["kind"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    np.random.set_state(n)  # already a tuple holding an ndarray: a checkpoint of an older version
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
    if keep > 0:
        for old in _stale_checkpoints(root, step, keep):
            shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoint_step(path: str | Path) -> int | None:
    """The step of a ``step_NNNNNN`` directory name, or None for any other name."""
    m = re.fullmatch(r"step_(\d+)", Path(path).name)
    return int(m.group(1)) if m else None


def _step_dirs(root: Path) -> list[tuple[int, Path]]:
    """(step, dir) of the checkpoints under ``root``, by step number (not by name)."""
    found = [(checkpoint_step(d), d) for d in root.glob("step_*") if d.is_dir()]
    return sorted((s, d) for s, d in found if s is not None)


def _stale_checkpoints(root: Path, step: int, keep: int) -> list[Path]:
    """What pruning removes after saving ``step``: checkpoints past it (an abandoned continuation)
    and all but the ``keep`` newest at or below it."""
    dirs = _step_dirs(root)
    below = [d for s, d in dirs if s <= step]
    return [d for s, d in dirs if s > step] + below[:-keep]


def _verify_json(path: Path) -> None:
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}): truncated or corrupt") from e


def _verify_safetensors(path: Path) -> None:
    """Header readable and every tensor's bytes present (a truncated file fails here)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if n < 0 or 8 + n > size:
            raise CheckpointError(f"{path}: truncated ({size} bytes, header incomplete)")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from e
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    need = 8 + n + max(ends, default=0)
    if size < need:
        raise CheckpointError(f"{path}: truncated ({size} of {need} bytes)")


def _verify_torch_zip(path: Path) -> None:
    """``torch.save`` writes a zip archive whose directory is at the end: truncation loses it."""
    try:
        with zipfile.ZipFile(path) as z:
            end = max((i.header_offset + i.compress_size for i in z.infolist()), default=0)
    except (zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"{path}: truncated or corrupt ({e})") from e
    if end > path.stat().st_size:
        raise CheckpointError(f"{path}: truncated")


def verify_checkpoint(path: str | Path) -> None:
    """Raise ``CheckpointError`` naming the first missing, truncated or corrupt file of
    checkpoint directory ``path`` (trainer state, training state, weights, JSON configs)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    for name in ("trainer_state.json", "training_state.pt"):
        if not (path / name).is_file():
            raise CheckpointError(f"{path / name}: missing (an incomplete checkpoint)")
    for f in sorted(path.glob("*.json")):
        _verify_json(f)
    weights = sorted(path.glob("*.safetensors"))
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
        for name in sorted(shards - {w.name for w in weights}):
            raise CheckpointError(f"{path / name}: missing (listed in {index.name})")
    if not weights and not list(path.glob("*.bin")):
        raise CheckpointError(f"{path}: no model weights (*.safetensors)")
    for w in weights:
        _verify_safetensors(w)
    _verify_torch_zip(path / "training_state.pt")


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest intact checkpoint under ``root`` (the one ``latest`` points at, verified), or
    None when the run has none. A damaged checkpoint is named in a warning and the newest intact
    one before it is returned; if none is intact, ``CheckpointError`` names the damaged files."""
    root = Path(root)
    pointer = root / "latest"
    dirs = _step_dirs(root)
    candidates = [d for _, d in reversed(dirs)]
    bad: list[str] = []
    if pointer.is_file():
        name = pointer.read_text().strip()
        target = checkpoint_step(name)
        if target is None:
            bad.append(f"{pointer}: does not name a checkpoint ({name!r})")
        else:  # the pointer's target first, then older ones: never a newer, abandoned one
            candidates = [root / name] + [d for s, d in reversed(dirs) if s < target]
    for path in candidates:
        try:
            verify_checkpoint(path)
        except CheckpointError as e:
            bad.append(str(e))
            continue
        if bad:
            warnings.warn(
                f"damaged checkpoint: {'; '.join(bad)}. Resuming from the newest intact one, "
                f"{path}",
                stacklevel=2,
            )
        return path
    if bad:
        raise CheckpointError(f"no intact checkpoint under {root}: {'; '.join(bad)}")
    return None


def plan_run(out: str | Path, resume: bool | str, overwrite: bool) -> tuple[Path | None, bool]:
    """How a run starts in ``out``: (checkpoint to resume from or None, clear the old files first).

    ``resume`` (``train.resume``): True = the last intact checkpoint, an error if there is none;
    "auto" = that checkpoint if there is one, else a fresh start that clears the old run's files;
    False = a fresh start, refused when ``out`` holds a run (``metrics.jsonl`` or
    ``checkpoints/``) unless ``overwrite``. Only reads: every rank may call it."""
    out = Path(out)
    if resume is True or resume == "auto":
        found = latest_checkpoint(out / "checkpoints")
        if found is not None:
            return found, False
        if resume is True:
            raise ConfigError(
                f"train.resume=true (--resume): no checkpoint under {out / 'checkpoints'} to "
                "resume from; use train.resume=auto (--resume=auto) to start fresh when there "
                "is none"
            )
        overwrite = True  # auto, nothing to resume: a fresh run replaces what is there
    held = [name for name in ("metrics.jsonl", "checkpoints") if (out / name).exists()]
    if held and not overwrite:
        raise ConfigError(
            f"train.output_dir {out} holds a previous run ({', '.join(held)}): pass --resume "
            "(train.resume=true) to continue it, --overwrite (train.overwrite=true) to replace "
            "it, or choose another train.output_dir"
        )
    return None, bool(overwrite) and any((out / name).exists() for name in RUN_FILES)


def clear_run(out: str | Path) -> list[str]:
    """Remove what a previous run wrote to ``out`` (``RUN_FILES``); return the names removed."""
    out = Path(out)
    removed = []
    for name in RUN_FILES:
        p = out / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
        else:
            continue
        removed.append(name)
    if removed:
        warnings.warn(
            f"{out}: removed the previous run's {', '.join(removed)} (a fresh run)", stacklevel=2
        )
    return removed


def load_training_state(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(trainer_state.json, {optimizer, scheduler, rng}) of a checkpoint directory; a file that
    does not load raises ``CheckpointError`` naming it."""
    path = Path(path)
    state, blob = path / "trainer_state.json", path / "training_state.pt"
    _verify_json(state)
    try:
        # Tensors and plain data only: unpickling anything else could run code. The numpy
        # globals are the ndarray of the numpy RNG state in checkpoints written before it was
        # stored as a tensor; an ndarray's contents go through the same restricted unpickler.
        with torch.serialization.safe_globals(_LEGACY_NUMPY_GLOBALS):
            blobs = torch.load(blob, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            raise CheckpointError(f"{blob}: cannot be loaded ({e})") from e
        what = _unsafe_globals(blob) or re.findall(r"Unsupported global: GLOBAL (\S+)", str(e))
        what = f" ({', '.join(what)})" if what else ""
        raise CheckpointError(
            f"{blob}: refused to load: it holds an object other than tensors and plain data"
            f"{what}, which could run code when unpickled. ivr writes no such object: the file "
            "was not written by ivr, or has been tampered with; do not resume from it unless "
            "you trust its source"
        ) from None
    except Exception as e:  # torch raises several types for a damaged archive
        raise CheckpointError(f"{blob}: cannot be loaded ({e})") from e
    return json.loads(state.read_text()), blobs


def _unsafe_globals(blob: Path) -> list[str]:
    """The names of what ``blob`` would import to unpickle, beyond what ``weights_only`` allows
    (read from the pickle's opcodes, nothing executed)."""
    try:
        with torch.serialization.safe_globals(_LEGACY_NUMPY_GLOBALS):
            return list(torch.serialization.get_unsafe_globals_in_checkpoint(blob))
    except Exception:  # a damaged archive: the load error says what it can
        return []


def _legacy_numpy_globals() -> list[Any]:
    """What an ndarray pickles as (under numpy 2's and numpy 1's module names)."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return [
        (_reconstruct, "numpy._core.multiarray._reconstruct"),
        (_reconstruct, "numpy.core.multiarray._reconstruct"),
        np.ndarray,
        np.dtype,
        type(np.dtype(np.uint32)),  # numpy.dtypes.UInt32DType: the legacy RNG key's dtype
    ]


_LEGACY_NUMPY_GLOBALS = _legacy_numpy_globals()


def _flat(d: dict[str, Any] | None) -> dict[str, Any]:
    return {
        f"{s}.{k}": v
        for s, sec in (d or {}).items()
        if isinstance(sec, dict)
        for k, v in sec.items()
    }


def restore_training_state(
    path: str | Path,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    load_optimizer: Callable[[dict[str, Any]], None] | None = None,
    *,
    config: dict[str, Any] | None = None,
    lr_key: str = "algo.lr",
) -> dict[str, Any]:
    """Load optimizer, scheduler and RNG states of checkpoint ``path``; return its trainer state.
    ``load_optimizer`` replaces ``optimizer.load_state_dict`` (sharded optimizers).

    ``config`` (the resumed run's ``Config.to_dict()``): the config in force. Its learning rate
    (``lr_key``) and weight decay replace the checkpoint's in the restored optimizer and scheduler,
    and every key that differs from the checkpoint's config is named in a warning, so the
    ``config.yaml`` written for the resumed run is the one it trains with."""
    meta, blobs = load_training_state(path)
    (load_optimizer or optimizer.load_state_dict)(blobs["optimizer"])
    scheduler.load_state_dict(blobs["scheduler"])
    set_rng_state(blobs["rng"])
    if config is not None:
        new = _flat(config)
        section = lr_key.split(".")[0]
        _set_hyperparameters(optimizer, scheduler, new[lr_key], new[f"{section}.weight_decay"])
        old = _flat(meta.get("config"))
        ignore = {"train.resume", "train.overwrite", "train.output_dir"}  # how, not what
        changed = [
            f"{k} {old[k]!r} → {v!r}"
            for k, v in new.items()
            if k in old and k not in ignore and old[k] != v
        ]
        if changed:
            warnings.warn(
                f"resuming {path} with a changed config: {', '.join(changed)}; the new values "
                f"apply from step {int(meta['step']) + 1} (the optimizer's {lr_key} and weight "
                "decay included) and config.yaml records them",
                stacklevel=2,
            )
    return meta


def _set_hyperparameters(
    optimizer: torch.optim.Optimizer, scheduler: Any, lr: float, weight_decay: float
) -> None:
    """The config's base learning rate and weight decay in a restored optimizer; the current
    learning rate follows the (restored) schedule position: lr × schedule(step)."""
    scheduler.base_lrs = [lr for _ in optimizer.param_groups]
    lambdas = getattr(scheduler, "lr_lambdas", [None] * len(optimizer.param_groups))
    for group, fn in zip(optimizer.param_groups, lambdas):
        factor = fn(scheduler.last_epoch) if fn is not None else 1.0
        group["initial_lr"], group["lr"] = lr, lr * factor
        group["weight_decay"] = weight_decay
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


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
