"""Generation backends behind one Protocol: HF generate (default) and vLLM (``ivr[vllm]``)."""

from .backends import (
    HFBackend,
    RolloutBackend,
    VLLMBackend,
    make_backend,
    recompute_enabled,
    recompute_logprobs,
)

__all__ = [
    "HFBackend",
    "RolloutBackend",
    "VLLMBackend",
    "make_backend",
    "recompute_enabled",
    "recompute_logprobs",
]
