"""The rollout interface: the ``RolloutBackend`` Protocol, the registry of backends by
``rollout.backend`` name, and the backend-independent π_old recompute.

The trainer samples through one small interface, ``RolloutBackend``:

    generate(prompts, *, max_new_tokens, temperature, top_p, top_k, num_return_sequences, seed)
        -> out[prompt][sample] : Generation          (the contract of ``Policy.generate``)
    sync_weights(model)   after every update phase: make the sampler see the new weights
    close()               free what the backend holds (GPU memory, processes)

and reads two capabilities, so that it never asks *which* backend it has:

    shares_policy_weights     the sampler is the training model itself (``Policy.generate``):
                              under FSDP the trainer gathers the sharded weights around sampling
    logprobs_match_training   ``Generation.logprobs`` equal the training forward's (to float
                              error): ``rollout.recompute_logprobs=auto`` then skips the recompute

Why ``old_logprobs`` may need a recompute: another engine's per-token logprobs come from other
kernels (paged attention, fused sampling, often bf16 with a different reduction order) and
possibly from a top-p *truncated* distribution, while the loss's π_θ comes from the HF forward.
Using them as π_old would make the ratio ρ = π_θ/π_old ≠ 1 at the first pass for reasons that
have nothing to do with the update, and clipping would act on that noise. So the trainer
recomputes log π_old with the HF policy under ``no_grad`` (``recompute_logprobs``: one forward
over the batch, prompts shared across the G samples of a group): ρ = 1 exactly at the first
pass, as PPO intends; the samples themselves remain the engine's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch

from ..types import Generation, Prompt
from .hf import HFBackend
from .vllm import VLLMBackend

if TYPE_CHECKING:
    from ..config import Config, RolloutConfig
    from ..models.policy import Policy

__all__ = [
    "BACKENDS",
    "RolloutBackend",
    "backend_class",
    "make_backend",
    "mismatch_correction",
    "recompute_enabled",
    "recompute_logprobs",
]


@runtime_checkable
class RolloutBackend(Protocol):
    """What the trainer needs from a sampler. ``generate`` has the contract of
    ``Policy.generate``: ``out[i][j]`` is sample j of prompt i; token ids end with the eos token
    when the completion finished; ``logprobs`` are log π_T of the sampled tokens (or None).

    The two capabilities are class attributes: ``recompute_enabled`` reads them from the class
    the config names, before (or without) building the backend.
    """

    #: Samples with the training model's own weights: nothing to sync, and under FSDP the
    #: trainer must gather the sharded weights around sampling (no other copy exists).
    shares_policy_weights: bool
    #: ``Generation.logprobs`` are the training forward's (tested to 1e-4): they can serve as
    #: ``old_logprobs`` with no extra forward (``rollout.recompute_logprobs: auto``).
    logprobs_match_training: bool

    @classmethod
    def from_config(cls, cfg: Config, policy: Policy) -> RolloutBackend:
        """The backend for ``cfg`` (its ``rollout`` and ``model`` sections), sampling for
        ``policy``; raises with the knob to change when it cannot be built here."""
        ...

    def generate(
        self,
        prompts: Sequence[Prompt],
        *,
        max_new_tokens: int = 256,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        num_return_sequences: int = 1,
        seed: int | None = None,
    ) -> list[list[Generation]]: ...

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Called after every update phase with the training model (plain or peft)."""
        ...

    def close(self) -> None: ...


#: ``rollout.backend`` name → backend class. A new backend is one module in ``ivr/rollout/``
#: with one class satisfying ``RolloutBackend``, plus one entry here (and its name in
#: ``config._CHOICES["rollout.backend"]``, which validates configs without importing torch;
#: a unit test keeps the two equal).
BACKENDS: dict[str, type[RolloutBackend]] = {"hf": HFBackend, "vllm": VLLMBackend}


def backend_class(name: str) -> type[RolloutBackend]:
    """The registered backend class called ``name`` (``rollout.backend``)."""
    cls = BACKENDS.get(name)
    if cls is None:
        expected = " or ".join(repr(n) for n in BACKENDS)
        raise ValueError(f"rollout.backend = {name!r}; expected {expected}")
    return cls


def make_backend(cfg: Config, policy: Policy) -> RolloutBackend:
    """The backend ``cfg.rollout.backend`` names, sampling for ``policy``."""
    return backend_class(cfg.rollout.backend).from_config(cfg, policy)


# ====================================================================== old logprobs
def recompute_enabled(rollout: RolloutConfig) -> bool:
    """``rollout.recompute_logprobs``: true/false as given; ``auto`` = on unless the backend's
    sampling logprobs are the training forward's (``logprobs_match_training``: HF generate,
    tested to 1e-4), or when a mismatch correction is on (it needs π_old from the training
    forward beside the sampler's μ: with HF, one extra no-grad forward over the batch)."""
    value = rollout.recompute_logprobs
    if value == "auto":
        return (
            not backend_class(rollout.backend).logprobs_match_training
            or mismatch_correction(rollout) != "none"
        )
    return bool(value)


def mismatch_correction(rollout: RolloutConfig) -> str:
    """``rollout.is_correction`` resolved: "none" | "tis" | "mis". ``auto`` = "tis" for a backend
    whose sampling logprobs are not the training forward's (vLLM), "none" otherwise (HF) or when
    ``rollout.recompute_logprobs=false`` leaves no training-forward π_old to compare with."""
    value = rollout.is_correction
    if value != "auto":
        return value
    if rollout.recompute_logprobs is False:
        return "none"
    return "none" if backend_class(rollout.backend).logprobs_match_training else "tis"


def recompute_logprobs(
    policy: Policy,
    prompts: Sequence[Prompt],
    gens: Sequence[Sequence[Generation]],
    *,
    temperature: float,
    micro_batch_size: int | None = None,
) -> list[list[Generation]]:
    """``gens`` (``out[prompt][sample]``) with ``logprobs`` replaced by log π_T(token) from the
    HF policy (no grad): exactly the quantity the loss computes at the first pass. The sampler's
    values are kept as ``behaviour_logprobs``, and every other field as it was. The samples of
    a prompt share its ``Prompt`` object, so the policy runs each prompt (and image) once."""
    flat_p = [p for p, g in zip(prompts, gens, strict=True) for _ in g]
    flat = [x for g in gens for x in g]
    if not flat:
        return [list(g) for g in gens]
    out = policy.completion_logprobs(
        flat_p,
        [x.token_ids for x in flat],
        temperature=temperature,
        micro_batch_size=micro_batch_size,
    )
    lp = out.logprobs.detach().float().cpu()
    new = [  # the sampler's own logprobs stay, as behaviour_logprobs (rl/importance.py)
        replace(
            x,
            logprobs=tuple(lp[i, : len(x.token_ids)].tolist()),
            behaviour_logprobs=x.sampler_logprobs,
        )
        for i, x in enumerate(flat)
    ]
    res, k = [], 0
    for g in gens:
        res.append(new[k : k + len(g)])
        k += len(g)
    return res
