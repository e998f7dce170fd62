"""The policy: one HF vision-language model + its processor, seen as a distribution over tokens.

Everything the RL loop needs from a model goes through here, so that the two places that
compute log π(token) — sampling (``generate``) and training (``completion_logprobs``) — agree
to ~2e-5 in float32 (the tests demand 1e-4). What makes them agree, and what silently breaks it:

- **One definition of the distribution.** π_T(· | context) = softmax(mask(logits) / T), where
  ``mask`` sets the image/video/vision special tokens to −inf. Sampling draws from it (then
  optionally truncated by top-k/top-p) and ``Generation.logprobs`` records log π_T of the drawn
  token *before* the top-k/top-p truncation; ``completion_logprobs`` computes the same quantity.
  Why unwarped: truncation renormalises over a kept set that changes with the context, which
  makes the ratio π_θ/π_old ill-defined whenever a token falls out of the set; for a kept token
  the truncated logprob is higher by −log(kept mass) ≤ −log(top_p), i.e. ≤ 0.01 nats at the
  paper's top_p = 0.99. Greedy decoding (T = 0) records T = 1 logprobs.
- **Every multimodal field in the training forward.** The processor returns, besides
  ``input_ids``/``attention_mask``, ``pixel_values``, ``image_grid_thw`` and
  ``mm_token_type_ids``. Qwen2.5-VL without ``mm_token_type_ids`` silently falls back to 1-D
  positions (logprobs off by nats, no warning); Qwen3-VL raises. Per-token fields are extended
  over the completion (zeros = text), everything else is passed through untouched.
- **Left padding** for prompts, so that completions start at the same column for the whole batch.

Suppressing the vision tokens is not cosmetic: a sampled ``<|image_pad|>`` breaks the next
forward ("Image features and image tokens do not match").

Where the work lives: this module holds ``Policy`` (the one public class) and the prompt helpers;
its methods delegate to ``ivr.models.loading`` (``from_pretrained``: directory checks, processor,
4-bit), ``ivr.models.decode`` (``generate``: the decode loop and the recording logits processor)
and ``ivr.models.score`` (``completion_logprobs``: shared-prefix and full-sequence scoring).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import BatchFeature

from ivr.data.images import load_image
from ivr.models import decode, score
from ivr.models.loading import keep_4bit_layout, load_pretrained
from ivr.models.score import LogprobOutput
from ivr.types import Generation, Message, Prompt

__all__ = ["LogprobOutput", "Policy", "chat_prompt", "count_image_placeholders"]

_VISION_TOKENS = (
    "<|image_pad|>",
    "<|video_pad|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
)
_VISION_CONFIG_IDS = (
    "image_token_id",
    "video_token_id",
    "vision_start_token_id",
    "vision_end_token_id",
    "image_token_index",
    "video_token_index",
)


def chat_prompt(
    text: str, images: Sequence[Image.Image | str | Path] = (), system: str | None = None
) -> Prompt:
    """A one-turn user prompt: image parts first, then the text (Qwen's recommended order).
    ``images`` may be PIL images or paths (decoded with ``load_image``)."""
    loaded = tuple(im if isinstance(im, Image.Image) else load_image(im) for im in images)
    content = [{"type": "image"} for _ in loaded] + [{"type": "text", "text": text}]
    messages: list[Message] = [] if system is None else [{"role": "system", "content": system}]
    messages.append({"role": "user", "content": content})
    return Prompt(messages=tuple(messages), images=loaded)


def count_image_placeholders(messages: Sequence[Message]) -> int:
    """Image parts in ``messages``, counted the way the chat templates count them."""
    n = 0
    for m in messages:
        content = m.get("content")
        if isinstance(content, str) or content is None:
            continue
        for part in content:
            if part.get("type") == "image" or "image" in part or "image_url" in part:
                n += 1
    return n


class Policy:
    """A VLM + processor with the three operations RL needs: encode, sample, score.

    Works with any ``AutoModelForImageTextToText`` model whose processor takes
    ``(text=..., images=...)`` and whose chat template understands ``{"type": "image"}`` parts;
    tested on tiny Qwen2.5-VL and Qwen3-VL (``ivr.models.tiny``).

    ``shared_prefix`` (default True): on models with 3-D rope positions (Qwen2-VL, Qwen2.5-VL,
    Qwen3-VL: they expose ``get_rope_index``) a prompt with several samples is run once, not
    once per sample — when sampling (``decode.decode``: one prefill, KV cache gathered per
    sample) and when scoring (``score.shared_prefix_logits``). Set it to False to fall back to HF ``generate``
    and full-sequence forwards everywhere (same numbers, more work; e.g. to compare).

    ``logprob_chunk_size`` (default 1024; ``model.logprob_chunk_size``): scoring turns the logits
    into float32 log-probabilities this many positions (rows × tokens) at a time, so the float32
    working set is one chunk, not the micro-batch's [b, T, V] (``ivr.models.logprobs``). 0 = the
    plain whole-tensor formula (same numbers).
    """

    shared_prefix: bool = True
    logprob_chunk_size: int = 1024  # positions per float32 chunk when scoring; 0 = whole tensor
    # Scoring rows that share an image encode it once and pass the features to the model
    # (``mm_encoder_outputs``). Off under FSDP, where the vision tower may only run inside the
    # sharded root's forward (rl/sharding.py): each row then re-encodes its image.
    share_image_features: bool = True
    # Sampling keeps each image's features while the vision weights are unchanged
    # (``decode.VisionMemo``): IVR's critique and rectify prompts of a step reuse them round
    # after round. Needs ``share_image_features``.
    reuse_vision_features: bool = True
    # Sampling runs a prompt that extends one of the previous call's prompts (same images) only
    # from where they differ, on that prompt's KV cache (``prompt_cache.PromptKV``): IVR's rectify
    # prompt repeats its critique prompt's image, question and answer. Needs
    # ``share_image_features``. Off by default — it holds the last call's prompt KV between calls
    # (memory) and agrees with a full prefill to float summation order (~1e-6 in
    # log-probabilities), not bitwise; the trainer turns it on when the loop runs
    # (``ivr.enabled``), and so does test-time re-reasoning.
    reuse_prompt_kv: bool = False

    def __init__(self, model: torch.nn.Module, processor: Any):
        if not hasattr(processor, "tokenizer") or not hasattr(processor, "image_processor"):
            raise ValueError(
                f"Policy needs a multimodal processor with a tokenizer and an image processor, got "
                f"{type(processor).__name__}"
            )
        self.model = model
        self.processor = processor
        keep_4bit_layout(model)  # sampled and trained: one layout for both (QLoRA on CPU)
        tok = processor.tokenizer
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos = [gen_eos] if isinstance(gen_eos, int) else list(gen_eos or [])
        if tok.eos_token_id is not None and tok.eos_token_id not in eos:
            eos.insert(0, tok.eos_token_id)
        if not eos:
            raise ValueError("neither the tokenizer nor the generation config defines an eos token")
        self._eos = tuple(eos)
        self._pad = tok.pad_token_id if tok.pad_token_id is not None else eos[0]
        ids = {getattr(model.config, k, None) for k in _VISION_CONFIG_IDS}
        vocab = tok.get_vocab()
        ids |= {vocab.get(t) for t in _VISION_TOKENS}
        if self._pad not in self._eos:  # pad mid-sequence would be stripped as padding
            ids.add(self._pad)
        ids.discard(None)
        self._suppressed = tuple(sorted(i for i in ids if isinstance(i, int) and i >= 0))
        self._suppressed_t = torch.tensor(self._suppressed, dtype=torch.long)

    # ---------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        processor: Any = None,
        dtype: str | torch.dtype = "float32",
        device: str | torch.device = "cpu",
        attn_implementation: str | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        trust_remote_code: bool = False,
        load_in_4bit: bool = False,
        quantization_config: Any = None,
    ) -> Policy:
        """Load model + processor from a local directory (or a Hub id already in the local Hugging
        Face cache: nothing is downloaded). ``min_pixels``/``max_pixels`` override the image
        processor's resize limits.

        Errors name the directory and what is wrong, before any weight is read: a path that is
        not there or is a file, a Hub id that is not cached, a directory without config.json or
        without weights → ``FileNotFoundError``; a model that is not a vision-language model, no
        usable (image) processor → ``ValueError``. The model is loaded with
        ``AutoModelForImageTextToText``.

        Quantized loading (QLoRA): ``quantization_config`` is passed to ``from_pretrained`` as is;
        ``load_in_4bit=True`` builds bitsandbytes nf4 (double quantization, compute in ``dtype``).
        Either way the model is placed with ``device_map`` and prepared with peft's
        ``prepare_model_for_kbit_training`` (base weights frozen, norms in float32): add LoRA
        adapters before training. Needs ``pip install 'ivr[qlora]'`` (bitsandbytes; runs on
        CUDA, and on CPU with bitsandbytes ≥ 0.50).
        """
        model, processor = load_pretrained(
            path,
            processor=processor,
            dtype=dtype,
            device=device,
            attn_implementation=attn_implementation,
            min_pixels=min_pixels,
            max_pixels=max_pixels,
            trust_remote_code=trust_remote_code,
            load_in_4bit=load_in_4bit,
            quantization_config=quantization_config,
        )
        return cls(model, processor)

    # ---------------------------------------------------------------- properties
    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """Tokens that end a completion (tokenizer eos first, then the generation config's)."""
        return self._eos

    @property
    def pad_token_id(self) -> int:
        return self._pad

    @property
    def suppressed_token_ids(self) -> tuple[int, ...]:
        """Tokens that sampling can never emit and that the scored distribution excludes: the
        image/video/vision special tokens (and pad when pad is not an eos token)."""
        return self._suppressed

    def release_sampling_caches(self) -> None:
        """Drop the prompt KV kept between sampling calls (``PromptKV``): the trainer calls it
        before an update, which would invalidate it anyway, so it never shares memory with the
        training activations."""
        from .prompt_cache import PromptKV

        kv = self.__dict__.get("_prompt_kv")
        if isinstance(kv, PromptKV):
            kv.release()

    # ---------------------------------------------------------------- encode
    def encode(
        self, prompts: Sequence[Prompt], *, add_generation_prompt: bool = True
    ) -> BatchFeature:
        """Chat template → processor, left-padded, on the policy's device.

        Returns every field the processor produces (``input_ids``, ``attention_mask``,
        ``pixel_values``, ``image_grid_thw``, ``mm_token_type_ids``, …): pass them all to the model.
        """
        if len(prompts) == 0:
            raise ValueError("encode() needs at least one prompt")
        texts, images = [], []
        for i, prompt in enumerate(prompts):
            n = count_image_placeholders(prompt.messages)
            if n != len(prompt.images):
                raise ValueError(
                    f"prompt {i}: {n} image placeholder(s) in the messages but {len(prompt.images)} "
                    f"image(s) given"
                )
            texts.append(
                self.processor.apply_chat_template(
                    list(prompt.messages),
                    tokenize=False,
                    add_generation_prompt=add_generation_prompt,
                )
            )
            images.extend(prompt.images)
        batch = self.processor(
            text=texts,
            images=images or None,
            padding=True,
            padding_side="left",
            return_tensors="pt",
        )
        return batch.to(self.device)

    # ---------------------------------------------------------------- sample
    @torch.no_grad()
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
    ) -> list[list[Generation]]:
        """Sample ``num_return_sequences`` completions per prompt → ``out[prompt][sample]``.

        ``temperature=0`` is greedy. ``Generation.logprobs`` holds log π_T of each token (see the
        module docstring: temperature applied, top-k/top-p not). Token ids include the eos token
        when the completion finished; ``text`` is decoded without special tokens.
        """
        return decode.generate(
            self,
            prompts,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            num_return_sequences=num_return_sequences,
            seed=seed,
        )

    # ---------------------------------------------------------------- score
    def completion_logprobs(
        self,
        prompts: Sequence[Prompt],
        completions: Sequence[Sequence[int]],
        *,
        temperature: float = 1.0,
        micro_batch_size: int | None = None,
        with_grad: bool = False,
        return_entropy: bool = False,
        entropy_grad: bool = True,
    ) -> LogprobOutput:
        """log π_T(completion tokens | prompt), right-padded to the longest completion T of the call.

        With ``with_grad`` the graph is kept (call it per optimiser micro-batch to bound memory);
        otherwise it runs under ``no_grad``. ``temperature=0`` scores at T = 1, like greedy
        ``generate``. ``entropy_grad=False`` computes the entropy off the graph (when it is only
        reported: saves its share of the backward pass).

        Work is shared, never changed (same numbers to float error; tested against ``generate``):

        - **Rows of one prompt** (the same ``Prompt`` object, e.g. the G samples of a group) are
          templated, processed and run through the vision tower once. On Qwen-VL models (3-D
          rope) without gradient checkpointing, the whole prompt is run once: its KV cache is
          gathered for each row and only the completions run per row (``score.shared_prefix_logits``).
        - **Micro-batches** (``micro_batch_size`` rows per forward) keep the rows of a prompt
          together, longest completion first, and each pads only to its own longest completion.
        """
        return score.completion_logprobs(
            self,
            prompts,
            completions,
            temperature=temperature,
            micro_batch_size=micro_batch_size,
            with_grad=with_grad,
            return_entropy=return_entropy,
            entropy_grad=entropy_grad,
        )

    # ---------------------------------------------------------------- model introspection
    def _base_model(self) -> torch.nn.Module:
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def _checkpointing(self) -> bool:
        """Gradient checkpointing drops a passed KV cache in recomputed layers (transformers 5)."""
        base = self._base_model()
        if hasattr(type(base), "is_activation_checkpointing"):  # the newer name, no warning
            return bool(base.is_activation_checkpointing)
        return bool(getattr(base, "is_gradient_checkpointing", False))

    def _rope_index_fn(self) -> Any:
        """The model's 3-D rope position function (Qwen2-VL/2.5-VL/3-VL), or None."""
        inner = getattr(self._base_model(), "model", None)
        return getattr(inner, "get_rope_index", None)
