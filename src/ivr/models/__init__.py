"""Models: the policy wrapper, tiny offline checkpoints and image-only Qwen VL processors.

Importing this package changes no global state. ``register_processors()`` (idempotent) makes
``AutoProcessor`` resolve the image-only processors that ``build_tiny_vlm`` saves; the loaders
(``Policy.from_pretrained``, ``build_tiny_vlm``) call it themselves, so only code that calls
``AutoProcessor.from_pretrained`` directly on such a directory needs to call it first.

Modules: ``policy`` (``Policy``, the one public class, and the prompt helpers), ``loading``
(``from_pretrained``), ``decode`` (sampling), ``score`` (log-probabilities of given completions),
``logprobs`` (the chunked float32 formula), ``kv_cache``, ``flops``, ``processor``, ``tiny``.
"""

from ivr.models.policy import LogprobOutput, Policy, chat_prompt, count_image_placeholders
from ivr.models.processor import register_processors
from ivr.models.tiny import build_tiny_vlm

__all__ = [
    "LogprobOutput",
    "Policy",
    "build_tiny_vlm",
    "chat_prompt",
    "count_image_placeholders",
    "register_processors",
]
