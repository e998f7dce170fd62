"""Data parallelism by hand: the collectives the trainer makes between ranks.

``accelerate launch`` (or ``torchrun``) starts one trainer per rank; each samples its own
prompts and keeps its groups. There is no DDP wrapper (``generate`` runs on the plain module), so
the trainer sums gradients, agrees on loop lengths and averages metrics itself, with the helpers
below. How the weights themselves are split (FSDP2) is ``rl/sharding.py``'s concern.

Every rank must make the same collective calls in the same order, whatever its data: the helpers
never branch on local content (missing gradients and metric keys included). With one process
each is a no-op that returns its input.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..config import Config

__all__ = ["Collectives", "cpu_only"]


def cpu_only(cfg: Config) -> bool:
    """True when this run trains on CPU. ``PartialState`` sets up a (gloo) process group for
    ``torchrun``/``accelerate launch``-started CPU processes only when told so; otherwise every
    rank would silently train alone as a world of one."""
    if cfg.model.device == "auto":
        return not torch.cuda.is_available()
    return cfg.model.device == "cpu"


class Collectives:
    """The collectives of one rank of ``world``, on tensors placed on ``device``."""

    def __init__(self, world: int, device: torch.device) -> None:
        self.world, self.device = world, device

    def sum(self, *xs: float) -> Any:
        """Sum of each value over ranks, in one collective; a single value for a single x."""
        if self.world > 1:
            t = torch.tensor([float(x) for x in xs], dtype=torch.float64, device=self.device)
            torch.distributed.all_reduce(t)
            xs = tuple(t.tolist())
        return xs[0] if len(xs) == 1 else tuple(xs)

    def max(self, x: float) -> float:
        """The largest ``x`` of any rank (e.g. the most minibatches: every rank loops as long)."""
        if self.world == 1:
            return x
        t = torch.tensor([float(x)], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return float(t.item())

    def allreduce_grads(self, model: torch.nn.Module, bucket_numel: int = 1 << 24) -> None:
        """Sum gradients across ranks: each rank's loss is already weighted by its share of the
        global minibatch, so the sum is the gradient of the global mean. Unsharded runs only
        (FSDP reduce-scatters in the backward itself).

        Gradients travel in flat buckets of ≤ ``bucket_numel`` elements per dtype (a few large
        collectives rather than one per tensor). A parameter without a gradient on a rank counts
        as zero there; one without a gradient on every rank keeps ``grad = None`` (the optimiser
        then skips it, exactly as in a single process).
        """
        if self.world == 1:
            return
        params = [p for p in model.parameters() if p.requires_grad]
        has = torch.tensor(
            [p.grad is not None for p in params], dtype=torch.float32, device=self.device
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

    def drop_unused_grads(self, model: torch.nn.Module) -> None:
        """Sharded runs: a parameter no rank used this minibatch (e.g. the vision tower when every
        prompt is text-only) gets ``grad = None``, as it would without sharding — FSDP hands it
        zeros instead, and AdamW would still move it by its running moments."""
        params = [p for p in model.parameters() if p.requires_grad]
        zero = torch.zeros((), dtype=torch.bool, device=self.device)
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

    def mean_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
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
            device=self.device,
        ).reshape(-1, 2)
        torch.distributed.all_reduce(t)
        return {k: s / c if c else math.nan for k, (s, c) in zip(keys, t.tolist())}
