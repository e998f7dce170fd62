"""FSDP2 (ZeRO-3-style) sharding of the policy across data-parallel ranks.

Every rank keeps 1/world of each parameter, gradient and AdamW state; a layer's full weights
exist only while it runs. Two things make RL different from supervised training here:

- **Sampling is data-dependent.** Ranks generate different numbers of tokens and, under IVR-R1,
  run different numbers of critique/rectify rounds, so per-forward all-gathers would deadlock.
  ``gathered`` therefore all-gathers every unit once, keeps the full weights while the rank
  samples alone (no collectives), and reshards afterwards (what ``summon_full_params`` does for
  FSDP1 and TRL's ``unwrap_model_for_generation`` does for generation under ZeRO-3).
- **Training forwards must line up.** Each forward/backward all-gathers and reduce-scatters
  layer by layer, so all ranks must run the same sequence of them. The trainer pads each
  minibatch to the same number of micro-batches (zero-weight dummy ones) and the policy takes one
  code path on every rank (one full forward per micro-batch; ``Policy.share_image_features``
  off, because the vision tower lives in the root unit and may only run inside the root forward).

Units (``fully_shard``): each decoder layer, then the root (embeddings, vision tower, norm,
head). The layer classes come from the model's own ``_no_split_modules`` (what accelerate's
``TRANSFORMER_BASED_WRAP`` uses) minus the vision blocks, or from accelerate's
``FSDP_TRANSFORMER_CLS_TO_WRAP`` when launched with ``configs/accelerate/fsdp.yaml``.
Gradients are summed, not averaged, across ranks (the trainer already weights each rank's loss by
its share of the global minibatch).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

_VISION = ("Vision", "Visual", "Patch")  # class-name parts of vision-tower blocks


def sharding_mode(requested: str) -> str:
    """``fsdp`` or ``none`` for ``train.sharding`` (``auto`` follows ``accelerate launch``)."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("1", "true"):
        raise ValueError(
            "DeepSpeed launches are not supported by the ivr trainer: launch with "
            "configs/accelerate/fsdp.yaml (FSDP2 full sharding = ZeRO-3) or set train.sharding=fsdp"
        )
    if requested == "auto":
        return (
            "fsdp" if os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true") else "none"
        )
    return requested


def _reshard_after_forward() -> bool:
    """accelerate's ``fsdp_reshard_after_forward`` (default on: the ZeRO-3 layout)."""
    return os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() not in ("0", "false")


def layer_classes(model: torch.nn.Module) -> set[str]:
    """Class names of the blocks to shard one by one: the text decoder layers."""
    env = os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "")
    names = {n.strip() for n in env.split(",") if n.strip()}
    if not names:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        names = set(getattr(base, "_no_split_modules", None) or ())
    names = {n for n in names if not any(v in n for v in _VISION)}
    if not names:
        raise ValueError(
            f"{type(model).__name__} names no decoder layer class (_no_split_modules); set "
            "FSDP_TRANSFORMER_CLS_TO_WRAP=<DecoderLayerClass> to shard it"
        )
    return names


def shard(model: torch.nn.Module, device: torch.device, world: int) -> torch.nn.Module:
    """Shard ``model`` in place over ``world`` ranks (FSDP2); returns it for chaining.

    Call before building the optimizer: parameters become DTensor shards.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (world,))
    reshard = _reshard_after_forward()
    names = layer_classes(model)
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(f"no module of class {sorted(names)} in {type(model).__name__}")
    for layer in layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=reshard)
    # The root is the HF model itself, under a PEFT wrapper too: PEFT's ``generate`` calls the
    # inner model directly, and FSDP needs every forward to enter through its root.
    root = model.get_base_model() if hasattr(model, "get_base_model") else model
    fully_shard(root, mesh=mesh, reshard_after_forward=reshard)
    for unit in units(model):
        unit.set_gradient_divide_factor(1.0)  # sum across ranks: losses are globally weighted
        unit.set_force_sum_reduction_for_comms(True)  # plain SUM (gloo has no PREMUL_SUM)
        # A rank whose micro-batch has no image leaves the vision tower without gradients;
        # reduce-scatter zeros for it so the ranks' buffers still match (torch ≥ 2.13).
        if hasattr(unit, "set_reduce_scatter_unused_params"):
            unit.set_reduce_scatter_unused_params(True)
    return model


def units(model: torch.nn.Module) -> list[Any]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def is_sharded(model: torch.nn.Module) -> bool:
    return bool(units(model))


@contextmanager
def gathered(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Full weights on every rank for the duration (collective: every rank must enter).

    Inside, forwards run no collectives, so ranks may sample different amounts. A no-op for an
    unsharded model.
    """
    mods = units(model)
    for m in mods:
        m.unshard()
        m.set_reshard_after_forward(False)
    try:
        yield model
    finally:
        reshard = _reshard_after_forward()
        for m in mods:
            m.reshard()
            m.set_reshard_after_forward(reshard)


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state dict on CPU (collective for a sharded model)."""
    if not is_sharded(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    # Tied weights (e.g. lm_head = embed_tokens) once, under their first name, as HF saves them.
    first: dict[int, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if first.setdefault(id(p), name) != name:
            state.pop(name, None)
    return state


def optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state in the unsharded layout keyed by parameter name (collective for a
    sharded model), so a sharded checkpoint resumes under any world size, or in one process."""
    if not is_sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(
        model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )


def load_optimizer_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    if not is_sharded(model):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    state = _name_keyed(model, state)
    set_optimizer_state_dict(
        model, optimizer, state, options=StateDictOptions(full_state_dict=True)
    )


def _name_keyed(model: torch.nn.Module, state: dict[str, Any]) -> dict[str, Any]:
    """``optimizer.state_dict()`` of an unsharded run (parameters numbered in the order the
    trainer hands them to AdamW: ``requires_grad`` ones, module order) → keyed by name."""
    groups = state.get("param_groups", [])
    if not any(isinstance(i, int) for g in groups for i in g["params"]):
        return state
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    return {
        "state": {names[i]: v for i, v in state["state"].items()},
        "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in groups],
    }


__all__ = [
    "full_state_dict",
    "gathered",
    "is_sharded",
    "layer_classes",
    "load_optimizer_state",
    "optimizer_state",
    "shard",
    "sharding_mode",
    "units",
]
