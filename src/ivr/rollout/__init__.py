"""Generation backends behind one Protocol: HF generate (default) and vLLM (``ivr[vllm]``).

Layout: ``base.py`` (the ``RolloutBackend`` Protocol, the ``BACKENDS`` registry, ``make_backend``
and the π_old recompute), one module per backend: ``hf.py`` (``HFBackend``, the policy samples
itself), ``vllm.py`` (``VLLMBackend``, a colocated vLLM engine, and its pure helpers).

Adding a backend (say ``sglang``):

1. Write ``ivr/rollout/sglang.py`` with one class that satisfies ``RolloutBackend``:
   ``generate`` (the contract of ``Policy.generate``: ``out[prompt][sample]``), ``sync_weights``
   (called after every update with the training model), ``close``, a ``from_config(cfg, policy)``
   classmethod that reads its settings, and the two capability class attributes the trainer
   reads instead of asking which backend it has: ``shares_policy_weights`` (it samples with the
   training model's own weights) and ``logprobs_match_training`` (its logprobs can be π_old;
   if False, ``rollout.recompute_logprobs: auto`` recomputes them with the HF policy).
2. Add one entry to ``BACKENDS`` in ``ivr/rollout/base.py``: ``"sglang": SGLangBackend``.
3. Add the name to ``rollout.backend`` in ``ivr.config._CHOICES`` (configs are validated without
   importing torch; ``tests/unit/test_rollout.py`` checks the two lists agree).

Nothing in the trainer changes.
"""

from .base import (
    BACKENDS,
    RolloutBackend,
    backend_class,
    make_backend,
    mismatch_correction,
    recompute_enabled,
    recompute_logprobs,
)
from .hf import HFBackend
from .vllm import VLLMBackend

__all__ = [
    "BACKENDS",
    "HFBackend",
    "RolloutBackend",
    "VLLMBackend",
    "backend_class",
    "make_backend",
    "mismatch_correction",
    "recompute_enabled",
    "recompute_logprobs",
]
