"""Models: the policy wrapper, tiny offline checkpoints and image-only Qwen VL processors.

Importing this package registers the image-only processors with ``AutoProcessor`` (see
``ivr.models.processor``), so directories saved by ``build_tiny_vlm`` load back as processors,
not bare tokenizers.
"""

from ivr.models.processor import register_image_only_processors

register_image_only_processors()

from ivr.models.policy import LogprobOutput, Policy, chat_prompt  # noqa: E402
from ivr.models.tiny import build_tiny_vlm  # noqa: E402

__all__ = ["LogprobOutput", "Policy", "build_tiny_vlm", "chat_prompt"]
