"""Image-only processors for Qwen2.5-VL and Qwen3-VL.

Why they exist: the stock ``Qwen2_5_VLProcessor`` / ``Qwen3VLProcessor`` always load a video
processor, and the Qwen video processors need torchvision, which has no CPU build in our
environments. This library only feeds still images, so these subclasses drop the video
processor and keep everything else (chat template, placeholder expansion, ``mm_token_type_ids``)
exactly as upstream.

A directory saved with one of them records its class name in ``processor_config.json``, and
unless the classes are registered with ``AutoProcessor`` it cannot resolve that name and
``AutoProcessor.from_pretrained(dir)`` silently returns only the tokenizer. ``register_processors``
does that registration. It is explicit, not a side effect of importing ``ivr.models``: the code
paths that load a processor call it (``Policy.from_pretrained``, which every eval/SFT/RL loader
goes through; ``build_tiny_vlm``; the vLLM backend, whose engine loads the processor itself).
Code that calls ``AutoProcessor.from_pretrained`` on such a directory directly calls it first.
The registration is keyed on the Qwen config classes with ``exist_ok=True`` (idempotent); it only
changes what ``AutoProcessor`` returns for checkpoints that name no processor class at all (real
Qwen checkpoints name ``Qwen2_5_VLProcessor`` / ``Qwen3VLProcessor`` and are untouched).
"""

from __future__ import annotations

from typing import Any

from transformers import AutoProcessor, Qwen2_5_VLConfig, Qwen3VLConfig
from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor
from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

__all__ = [
    "IMAGE_ONLY_PROCESSORS",
    "Qwen2_5_VLImageOnlyProcessor",
    "Qwen3VLImageOnlyProcessor",
    "register_processors",
]


class Qwen2_5_VLImageOnlyProcessor(Qwen2_5_VLProcessor):
    """``Qwen2_5_VLProcessor`` without the (torchvision-only) video processor."""

    def __init__(
        self, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None, **kw
    ):
        # ProcessorMixin reads the sub-processors from this signature: image + tokenizer only.
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kw)


class Qwen3VLImageOnlyProcessor(Qwen3VLProcessor):
    """``Qwen3VLProcessor`` without the (torchvision-only) video processor."""

    def __init__(
        self, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None, **kw
    ):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kw)


#: model_type → image-only processor class; the policy falls back to these for real checkpoints
#: whose stock processor cannot be built (no torchvision).
IMAGE_ONLY_PROCESSORS: dict[str, type] = {
    "qwen2_5_vl": Qwen2_5_VLImageOnlyProcessor,
    "qwen3_vl": Qwen3VLImageOnlyProcessor,
}


def register_processors() -> None:
    """Make ``AutoProcessor`` able to resolve the image-only classes by name (idempotent)."""
    AutoProcessor.register(Qwen2_5_VLConfig, Qwen2_5_VLImageOnlyProcessor, exist_ok=True)
    AutoProcessor.register(Qwen3VLConfig, Qwen3VLImageOnlyProcessor, exist_ok=True)
