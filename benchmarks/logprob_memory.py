"""Peak memory of scoring: the old whole-tensor log-softmax vs ``ivr.models.logprobs`` chunks.

One training-scoring call as the trainer makes it (``ivr.models.score.score``): logits
[b, T+1, V] in the model's dtype (the ``logits_to_keep=T+1`` output, requiring grad) → per-token
log π and entropy (entropy off the graph, ``entropy_grad=False``) → Σ w·logp → backward to the
logits.

How memory is measured (no GPU here, so no ``torch.cuda.max_memory_allocated``):
- ``tensors`` (default): a ``TorchDispatchMode`` sees every op, forward and backward, registers
  the storage of each output and, after each op, sums the bytes of the storages still alive.
  Peak = the largest such sum: exact logical tensor bytes at op granularity (what a caching
  allocator must hold, before rounding), blind only to temporaries inside one kernel. Runs on
  the ``meta`` device by default: shapes and dtypes, no real memory or compute, so Qwen's full
  vocabulary at [8, 512] costs nothing to measure.
- ``rss`` (``--device cpu``): each path runs in a fresh subprocess on real tensors and reports
  the growth of peak resident memory (``ru_maxrss``) over a baseline taken after the inputs are
  allocated: physical, includes kernel temporaries and allocator behaviour, noisier.

    python benchmarks/logprob_memory.py                       # [8, 512, 151936] bf16, meta
    python benchmarks/logprob_memory.py --device cpu --rows 2 --tokens 256   # real tensors, RSS

The last line is the ratio old / new of the peak above the input logits.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import subprocess
import sys

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ivr.models.logprobs import token_logprobs

SUPPRESSED = torch.tensor([151652, 151653, 151654, 151655, 151656])  # Qwen's vision tokens


def old_score(logits, comp, valid, temperature, suppressed):
    """``Policy._score`` before chunking, verbatim from the line after the forward."""
    logits = logits[:, :-1, :]
    logits = logits.float().index_fill(-1, suppressed.to(logits.device), float("-inf"))
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    lse = logits.logsumexp(-1)
    logprobs = logits.gather(-1, comp.unsqueeze(-1)).squeeze(-1) - lse
    logprobs = logprobs.masked_fill(~valid, 0.0)
    with torch.no_grad():  # entropy_grad=False, as the trainer asks
        lg, ls = logits.detach(), lse.detach()
        p = torch.softmax(lg, dim=-1)
        finite = lg.masked_fill(torch.isinf(lg), 0.0)
        entropy = (ls - (p * finite).sum(-1)).masked_fill(~valid, 0.0)
    return logprobs, entropy


def new_score(logits, comp, valid, temperature, suppressed, chunk_size):
    lp, ent = token_logprobs(
        logits,
        comp,
        suppressed=suppressed,
        temperature=temperature,
        chunk_size=chunk_size,
        entropy=True,
        entropy_grad=False,
    )
    return lp.masked_fill(~valid, 0.0), ent.masked_fill(~valid, 0.0)


class LiveBytes(TorchDispatchMode):
    """Peak bytes of live tensor storages, sampled after every dispatched op."""

    def __init__(self, *tensors):
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.peak = 0
        for t in tensors:
            self._track(t)
        self.base = self._sweep()

    def _track(self, t):
        s = t.untyped_storage()
        self.live.setdefault(StorageWeakRef(s).cdata, (StorageWeakRef(s), s.nbytes()))

    def _sweep(self) -> int:
        self.live = {k: v for k, v in self.live.items() if not v[0].expired()}
        now = sum(n for _, n in self.live.values())
        self.peak = max(self.peak, now)
        return now

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._track(t)
        self._sweep()
        return out


def inputs(a, device):
    dtype = getattr(torch, a.dtype)
    if device == "meta":
        logits = torch.empty(a.rows, a.tokens + 1, a.vocab, dtype=dtype, device="meta")
    else:
        logits = torch.randn(a.rows, a.tokens + 1, a.vocab, dtype=dtype)
    logits.requires_grad_()
    comp = torch.randint(0, a.vocab - 1000, (a.rows, a.tokens), device=device)
    valid = torch.ones(a.rows, a.tokens, dtype=torch.bool, device=device)
    w = torch.ones(a.rows, a.tokens, device=device)
    return logits, comp, valid, w


def run(a, method, device, tracker=None):
    logits, comp, valid, w = inputs(a, device)
    mode = LiveBytes(logits, comp, valid, w) if tracker else None
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with mode if mode is not None else contextlib.nullcontext():
        if method == "old":
            lp, ent = old_score(logits, comp, valid, a.temperature, SUPPRESSED)
        else:
            lp, ent = new_score(logits, comp, valid, a.temperature, SUPPRESSED, a.chunk_size)
        (lp * w).sum().backward()
        del lp, ent
    if mode is not None:
        return mode.peak - mode.base
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base_rss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--chunk-size", type=int, default=1024)
    ap.add_argument("--device", choices=["meta", "cpu"], default="meta")
    ap.add_argument("--_child", choices=["old", "new"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a._child:  # one path, fresh process, RSS growth
        print(json.dumps(run(a, a._child, "cpu")))
        return
    gib = 2**30
    size = a.rows * a.tokens * a.vocab
    print(f"logits [{a.rows}, {a.tokens}+1, {a.vocab}] {a.dtype}; chunk_size {a.chunk_size}")
    grad = a.rows * (a.tokens + 1) * a.vocab * torch.finfo(getattr(torch, a.dtype)).bits / 8
    print(f"  input logits and their gradient (any method) {grad / gib:.2f} GiB each; "
          f"one fp32 copy of the scored logits {size * 4 / gib:.2f} GiB")  # fmt: skip
    peaks = {}
    for method in ("old", "new"):
        if a.device == "meta":
            peaks[method] = run(a, method, "meta", tracker=True)
            how = "live tensor bytes above the inputs"
        else:
            argv = [sys.executable, __file__, *sys.argv[1:], "--_child", method]
            peaks[method] = json.loads(subprocess.check_output(argv).decode().split()[-1])
            how = "peak RSS growth above the inputs"
        print(f"  {method}: peak {peaks[method] / gib:.3f} GiB ({how})")
    print(f"old/new peak ratio: {peaks['old'] / peaks['new']:.1f}")


if __name__ == "__main__":
    main()
