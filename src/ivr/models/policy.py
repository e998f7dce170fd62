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

Sampling is done by HF ``generate`` with a fresh ``GenerationConfig`` (the checkpoint's own
defaults, e.g. Qwen's ``repetition_penalty=1.05``, would change the distribution behind our back)
and one logits processor, ``_SamplingProcessor``, that masks, records and warps.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    AutoProcessor,
    BatchFeature,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from ivr.data.images import load_image
from ivr.models.kv_cache import cache_kwarg, output_cache
from ivr.models.logprobs import token_logprobs
from ivr.models.processor import IMAGE_ONLY_PROCESSORS, register_image_only_processors
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
_HUB_ID = re.compile(r"^\w[\w.-]*/\w[\w.-]*$")  # org/name (not ./x, ../x)


@dataclass(frozen=True)
class LogprobOutput:
    """Per-token results of ``Policy.completion_logprobs``; completions right-padded to T.

    logprobs: [B, T] float32, log π_T(token); 0 where ``mask`` is False.
    mask:     [B, T] bool, True on real completion tokens.
    entropy:  [B, T] float32 entropy of π_T at each position (None unless asked for).
    """

    logprobs: torch.Tensor
    mask: torch.Tensor
    entropy: torch.Tensor | None = None


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


class _SamplingProcessor(LogitsProcessor):
    """Masks the vision tokens, records log π_T of each drawn token, then applies top-k/top-p.

    HF calls it once per step with the (float32) logits of the next position and the tokens so
    far; the token drawn at step t is only visible at step t+1 (``input_ids[:, -1]``), so it
    keeps the previous step's log-distribution ([N, V]) and gathers from it one step late.
    ``finish(sequences)`` gathers the last one.
    """

    def __init__(self, suppressed: torch.Tensor, temperature: float, top_k: int, top_p: float):
        self.suppressed = suppressed
        self.greedy = temperature <= 0
        self.temperature = temperature if temperature > 0 else 1.0
        self.warpers = []
        if top_k > 0:
            self.warpers.append(TopKLogitsWarper(top_k=top_k))
        if top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p=top_p))
        self.prev: torch.Tensor | None = None
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.Tensor:
        if self.prev is not None:
            self.steps.append(self.prev.gather(1, input_ids[:, -1:]).squeeze(1))
        scores = scores.float().index_fill(1, self.suppressed.to(scores.device), float("-inf"))
        scores = scores / self.temperature
        self.prev = torch.log_softmax(scores, dim=-1)
        for warp in self.warpers:
            scores = warp(input_ids, scores)
        return scores

    def sample(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of ``Policy._decode``: [N, V] raw logits → ([N] token, [N] log π_T(token)).
        The same distribution as HF sampling after ``__call__``, drawn by inverse CDF: one
        uniform per row (HF's multinomial draws an exponential per vocabulary entry)."""
        scores = logits.float().index_fill(1, self.suppressed.to(logits.device), float("-inf"))
        scores = scores / self.temperature
        logp = torch.log_softmax(scores, dim=-1)
        if self.greedy:
            token = scores.argmax(-1)
        else:
            for warp in self.warpers:
                scores = warp(None, scores)
            cdf = torch.softmax(scores, dim=-1).cumsum(-1)
            u = torch.rand(len(cdf), 1, device=cdf.device) * cdf[:, -1:]
            # right=True: the first index whose cdf exceeds u, so zero-mass tokens are never drawn
            token = torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=cdf.shape[1] - 1)
        return token, logp.gather(1, token[:, None]).squeeze(1)

    def finish(self, sequences: torch.Tensor) -> torch.Tensor:
        """[N, L] log π_T of the generated tokens (L = steps taken)."""
        if self.prev is not None:
            self.steps.append(self.prev.gather(1, sequences[:, -1:]).squeeze(1))
            self.prev = None
        return (
            torch.stack(self.steps, dim=1)
            if self.steps
            else sequences.new_zeros((len(sequences), 0)).float()
        )


class Policy:
    """A VLM + processor with the three operations RL needs: encode, sample, score.

    Works with any ``AutoModelForImageTextToText`` model whose processor takes
    ``(text=..., images=...)`` and whose chat template understands ``{"type": "image"}`` parts;
    tested on tiny Qwen2.5-VL and Qwen3-VL (``ivr.models.tiny``).

    ``shared_prefix`` (default True): on models with 3-D rope positions (Qwen2-VL, Qwen2.5-VL,
    Qwen3-VL: they expose ``get_rope_index``) a prompt with several samples is run once, not
    once per sample — when sampling (``_decode``: one prefill, KV cache gathered per sample) and
    when scoring (``_shared_prefix_logits``). Set it to False to fall back to HF ``generate``
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

    def __init__(self, model: torch.nn.Module, processor: Any):
        if not hasattr(processor, "tokenizer") or not hasattr(processor, "image_processor"):
            raise ValueError(
                f"Policy needs a multimodal processor with a tokenizer and an image processor, got "
                f"{type(processor).__name__}"
            )
        self.model = model
        self.processor = processor
        _keep_4bit_layout(model)  # sampled and trained: one layout for both (QLoRA on CPU)
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
        source = _resolve_model_path(path, trust_remote_code)
        if isinstance(dtype, str) and dtype != "auto":
            if not isinstance(getattr(torch, dtype, None), torch.dtype):
                raise ValueError(
                    f"unknown dtype {dtype!r} (use e.g. 'float32', 'bfloat16', 'auto')"
                )
            dtype = getattr(torch, dtype)
        kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": trust_remote_code}
        if attn_implementation is not None:
            kwargs["attn_implementation"] = attn_implementation
        if load_in_4bit and quantization_config is None:
            quantization_config = _nf4_config(dtype)
        if quantization_config is not None:
            kwargs.update(quantization_config=quantization_config, device_map={"": str(device)})
        if processor is None:  # before the weights: a missing processor should fail fast
            processor = _load_processor(source, trust_remote_code)
        if min_pixels is not None or max_pixels is not None:
            _set_pixel_limits(processor, min_pixels, max_pixels)
        model = AutoModelForImageTextToText.from_pretrained(source, **kwargs)
        if quantization_config is None:
            model = model.to(device)
        else:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
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
        batch = self.encode(prompts)
        greedy = temperature <= 0
        recorder = _SamplingProcessor(
            self._suppressed_t, temperature, 0 if greedy else top_k, 1.0 if greedy else top_p
        )
        copies = 1 if greedy else num_return_sequences  # greedy: copies below
        seed_ctx = _seeded(seed, self.device) if seed is not None else contextlib.nullcontext()
        rope_index = self._rope_index_fn()
        if self.shared_prefix and rope_index is not None and _has_vision_fields(batch):
            with seed_ctx:
                new, logprobs = self._decode(batch, rope_index, recorder, copies, max_new_tokens)
        else:
            sampling = {"temperature": 1.0, "top_k": 0, "top_p": 1.0} if not greedy else {}
            config = GenerationConfig(  # temperature/top-k/top-p are applied by the recorder
                max_new_tokens=max_new_tokens,
                do_sample=not greedy,
                **sampling,
                num_beams=1,
                num_return_sequences=copies,
                eos_token_id=list(self._eos),
                pad_token_id=self._pad,
                return_dict_in_generate=True,
            )
            with seed_ctx, _fresh_generation_config(self.model):
                out = self.model.generate(
                    **batch,
                    generation_config=config,
                    logits_processor=LogitsProcessorList([recorder]),
                    # transformers syncs ranks per token for FSDP-managed models; ivr samples on
                    # gathered weights, each rank alone (rl/sharding.py), so that would deadlock
                    synced_gpus=False,
                )
            new = out.sequences[:, batch["input_ids"].shape[1] :]
            logprobs = recorder.finish(out.sequences)
        new, logprobs = new.cpu(), logprobs.cpu()
        gens = [self._to_generation(new[r], logprobs[r]) for r in range(new.shape[0])]
        if greedy:
            return [[g] * num_return_sequences for g in gens]
        n = num_return_sequences
        return [gens[i * n : (i + 1) * n] for i in range(len(prompts))]

    def _decode(self, batch, rope_index, recorder, copies: int, max_new_tokens: int):
        """Sampling loop for 3-D rope (Qwen-VL) models: each prompt is prefilled ONCE, images
        included, and its KV cache gathered for its ``copies`` samples; then one forward per
        token for all rows. Same distribution and recorded logprobs as HF ``generate`` with the
        same recorder (tested: training logprobs agree to 1e-5), less work: no G-fold prefill,
        no per-step HF bookkeeping, inverse-CDF sampling (one uniform per row instead of a
        vocabulary of exponentials). Returns ([N, L] new token ids, pad after eos; [N, L]
        log π_T of each), N = prompts × copies, rows of a prompt adjacent.
        """
        dev = self.device
        positions, out = self._prefill(batch, rope_index)
        cache, cache_kw = output_cache(out), cache_kwarg(self.model)  # cache= from 5.24 on
        rows = torch.arange(batch["input_ids"].shape[0], device=dev).repeat_interleave(copies)
        if copies > 1:
            cache.batch_select_indices(rows)
        logits = out.logits[rows, -1]
        n, P = len(rows), batch["input_ids"].shape[1]
        mask = torch.cat(
            [batch["attention_mask"][rows], batch["attention_mask"].new_ones(n, max_new_tokens)], 1
        )
        start = (positions.amax(dim=(0, 2)) + 1)[rows]  # [N] position of the first new token
        eos = torch.tensor(self._eos, device=dev)
        done = torch.zeros(n, dtype=torch.bool, device=dev)
        tokens, logprobs = [], []
        for t in range(max_new_tokens):
            token, logprob = recorder.sample(logits)
            token = token.masked_fill(done, self._pad)
            tokens.append(token)
            logprobs.append(logprob)
            done |= torch.isin(token, eos)
            if t == max_new_tokens - 1 or bool(done.all()):
                break
            pos = (start + t).view(1, n, 1).expand(positions.shape[0], n, 1)
            out = self.model(
                input_ids=token[:, None],
                attention_mask=mask[:, : P + t + 1],
                position_ids=pos,
                **{cache_kw: cache},
                use_cache=True,
                logits_to_keep=1,
            )
            logits = out.logits[:, -1]
        if not tokens:
            return torch.zeros(n, 0, dtype=torch.long), torch.zeros(n, 0)
        return torch.stack(tokens, 1), torch.stack(logprobs, 1)

    def _to_generation(self, ids: torch.Tensor, logprobs: torch.Tensor) -> Generation:
        ids_list = ids.tolist()
        end = next((j for j, t in enumerate(ids_list) if t in self._eos), None)
        finished = end is not None
        if finished:
            ids_list = ids_list[: end + 1]
        else:
            while ids_list and ids_list[-1] == self._pad:
                ids_list.pop()
        lp = logprobs[: len(ids_list)].tolist()
        text = self.tokenizer.decode(ids_list, skip_special_tokens=True)
        return Generation(
            text=text, token_ids=tuple(ids_list), logprobs=tuple(lp), finished=finished
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
          gathered for each row and only the completions run per row (``_shared_prefix_logits``).
        - **Micro-batches** (``micro_batch_size`` rows per forward) keep the rows of a prompt
          together, longest completion first, and each pads only to its own longest completion.
        """
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        lengths = [len(c) for c in completions]
        T = max(lengths, default=0)
        B = len(prompts)
        mb = micro_batch_size or B
        order = _bucket_order(prompts, lengths) if mb < B else list(range(B))
        parts_lp, parts_ent = [], []
        grad_ctx = contextlib.nullcontext() if with_grad else torch.no_grad()
        with grad_ctx:
            for s in range(0, B, mb):
                rows = order[s : s + mb]
                lp, ent = self._score(
                    [prompts[i] for i in rows],
                    [completions[i] for i in rows],
                    temperature,
                    return_entropy,
                    entropy_grad,
                )
                parts_lp.append(torch.nn.functional.pad(lp, (0, T - lp.shape[1])))
                if ent is not None:
                    parts_ent.append(torch.nn.functional.pad(ent, (0, T - ent.shape[1])))
        mask = (torch.arange(T)[None, :] < torch.tensor(lengths).view(-1, 1)).to(self.device)
        if not parts_lp:
            return LogprobOutput(torch.zeros(0, T, device=self.device), mask, None)
        back = None if order == list(range(B)) else torch.tensor(order).argsort().to(self.device)
        logprobs = torch.cat(parts_lp)
        entropy = torch.cat(parts_ent) if return_entropy else None
        if back is not None:
            logprobs = logprobs[back]
            entropy = entropy[back] if entropy is not None else None
        return LogprobOutput(logprobs=logprobs, mask=mask, entropy=entropy)

    def _score(self, prompts, completions, temperature, return_entropy, entropy_grad=True):
        """One micro-batch → ([b, T] logprobs, [b, T] entropy | None), T = its longest completion;
        zeros past each end."""
        b = len(prompts)
        dev = self.device
        T = max((len(c) for c in completions), default=0)
        if T == 0:
            z = torch.zeros(b, 0, device=dev)
            return z, (z if return_entropy else None)
        first: dict[int, int] = {}  # id(prompt) → index among the unique prompts
        for p in prompts:
            first.setdefault(id(p), len(first))
        unique = list({id(p): p for p in prompts}.values())
        inv_list = [first[id(p)] for p in prompts]
        inv = torch.tensor(inv_list, device=dev)
        batch = self.encode(unique)
        comp = torch.full((b, T), self._pad, dtype=torch.long)  # built on the host, sent once
        comp_mask = torch.zeros(b, T, dtype=batch["attention_mask"].dtype)
        for i, c in enumerate(completions):
            comp[i, : len(c)] = torch.as_tensor(list(c), dtype=torch.long)
            comp_mask[i, : len(c)] = 1
        comp, comp_mask = comp.to(dev), comp_mask.to(dev)
        rope_index = self._rope_index_fn()
        if (
            len(unique) < b
            and self.shared_prefix
            and rope_index is not None
            and _has_vision_fields(batch)
            and not self._checkpointing()
        ):
            logits = self._shared_prefix_logits(batch, inv, comp, comp_mask, rope_index)
        else:
            inputs = self._row_inputs(batch, unique, prompts, inv_list, comp, comp_mask)
            # logits for positions P-1 … P+T-2 predict the T completion tokens; logits_to_keep=T+1
            # keeps the last T+1 positions, the last of which predicts nothing we score (left in
            # place: ``token_logprobs`` ignores trailing positions, and slicing would copy them).
            logits = self.model(**inputs, use_cache=False, logits_to_keep=T + 1).logits
        # log π_T(t) = logit_t/T − logsumexp(logits/T), H = logsumexp − Σ p·logit/T, in float32
        # one chunk of positions at a time (``ivr.models.logprobs``)
        logprobs, entropy = token_logprobs(
            logits,
            comp,
            suppressed=self._suppressed_t,
            temperature=temperature,
            chunk_size=self.logprob_chunk_size,
            entropy=return_entropy,
            entropy_grad=entropy_grad,
        )
        valid = comp_mask.bool()
        logprobs = logprobs.masked_fill(~valid, 0.0)
        if entropy is not None:
            entropy = entropy.masked_fill(~valid, 0.0)
        return logprobs, entropy

    # ---------------------------------------------------------------- score: shared work
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

    def _prefill(self, batch: BatchFeature, rope_index: Any) -> tuple[torch.Tensor, Any]:
        """Run each prompt once (vision tower included) with the 3-D rope positions the model
        itself would compute, keeping the KV cache: → (positions [3, U, P], model output)."""
        positions, _ = rope_index(
            batch["input_ids"],
            mm_token_type_ids=batch["mm_token_type_ids"],
            image_grid_thw=batch["image_grid_thw"],
            attention_mask=batch["attention_mask"],
        )
        return positions, self.model(
            **batch, position_ids=positions, use_cache=True, logits_to_keep=1
        )

    def _shared_prefix_logits(self, batch, inv, comp, comp_mask, rope_index) -> torch.Tensor:
        """[b, T, V] logits predicting each row's completion, with every prompt run once.

        1. The U unique prompts go through the model once (vision tower included), with their
           3-D rope positions computed exactly as the model would, keeping the KV cache.
        2. The cache is gathered row by row (``inv``: row → unique prompt); autograd sums the
           gradients of the rows back into the shared prompt.
        3. The completions run on top of it: text positions continue from each prompt's largest
           position (+1, +2, …), which is what the model's own full-sequence rope index gives
           to text after the last image. The prompt's last logit predicts completion token 0.
        """
        positions, out_p = self._prefill(batch, rope_index)
        cache = output_cache(out_p)
        cache.batch_select_indices(inv)
        T = comp.shape[1]
        start = positions.amax(dim=(0, 2)) + 1  # [U] next text position after each prompt
        pos = start[inv][:, None] + torch.arange(T, device=comp.device)  # [b, T]
        pos = pos.unsqueeze(0).expand(positions.shape[0], -1, -1)
        mask = torch.cat([batch["attention_mask"][inv], comp_mask], dim=1)
        out_c = self.model(
            input_ids=comp,
            attention_mask=mask,
            position_ids=pos,
            **{cache_kwarg(self.model): cache},
            use_cache=True,
            logits_to_keep=T,
        )
        return torch.cat([out_p.logits[inv], out_c.logits[:, :-1]], dim=1)

    def _row_inputs(self, batch, unique, prompts, inv_list, comp, comp_mask) -> dict[str, Any]:
        """Full-sequence model inputs for every row: the unique prompts' fields gathered per row,
        per-token fields extended over the completion (ids, the completion mask, or zeros =
        text). Images are encoded once per unique image when the model takes precomputed
        features (``mm_encoder_outputs``); otherwise the rows are simply encoded one by one."""
        b, n_u = len(prompts), len(unique)
        P = batch["input_ids"].shape[1]
        known = {
            "input_ids",
            "attention_mask",
            "mm_token_type_ids",
            "token_type_ids",
            "pixel_values",
            "image_grid_thw",
        }
        if n_u < b and (
            not set(batch) <= known
            or (
                "pixel_values" in batch
                and not (self.share_image_features and self._takes_encoder_outputs())
            )
        ):
            batch, inv_list, n_u = self.encode(prompts), list(range(b)), b
            P = batch["input_ids"].shape[1]
        identity = n_u == b  # every row its own prompt, in order
        inv = torch.tensor(inv_list, device=comp.device)
        inputs: dict[str, Any] = {}
        for key, value in batch.items():
            per_token = isinstance(value, torch.Tensor) and value.shape == (n_u, P)
            if not per_token:
                inputs[key] = value
                continue
            if not identity:
                value = value[inv]
            if value.is_floating_point():
                inputs[key] = value
                continue
            ext = {"input_ids": comp, "attention_mask": comp_mask}.get(key)
            if ext is None:
                ext = torch.zeros(b, comp.shape[1], dtype=value.dtype, device=value.device)
            inputs[key] = torch.cat([value, ext.to(value.dtype)], dim=1)
        if not identity and "pixel_values" in batch:
            counts = [len(p.images) for p in unique]
            starts = [sum(counts[:u]) for u in range(n_u)]
            images = [starts[u] + j for u in inv_list for j in range(counts[u])]
            idx = torch.tensor(images, device=comp.device)
            feats = self._base_model().get_image_features(
                inputs.pop("pixel_values"), batch["image_grid_thw"], return_dict=True
            )
            inputs["image_grid_thw"] = batch["image_grid_thw"][idx]
            inputs["mm_encoder_outputs"] = {"image": _select_images(feats, images)}
        return inputs

    def _takes_encoder_outputs(self) -> bool:
        import inspect

        base = self._base_model()
        params = inspect.signature(base.forward).parameters
        return "mm_encoder_outputs" in params and hasattr(base, "get_image_features")


# -------------------------------------------------------------------- helpers
def _has_vision_fields(batch: BatchFeature) -> bool:
    """3-D rope positions can be computed: image grid and per-token modality ids present."""
    return "mm_token_type_ids" in batch and "image_grid_thw" in batch


def _bucket_order(prompts: Sequence[Prompt], lengths: Sequence[int]) -> list[int]:
    """Row order for micro-batching: rows of one prompt together (first appearance order),
    longest completion first within each, so micro-batches share prompts and pad little."""
    first: dict[int, int] = {}
    for p in prompts:
        first.setdefault(id(p), len(first))
    return sorted(range(len(prompts)), key=lambda i: (first[id(prompts[i])], -lengths[i]))


def _select_images(features: Any, images: Sequence[int]) -> Any:
    """Per-image encoder outputs (``get_image_features``: ``pooler_output`` a tuple with one
    tensor per image; Qwen3-VL's ``deepstack_features`` one such tuple per layer) re-indexed
    to ``images``: the same tensors, repeated, so gradients flow back to the shared encoding."""
    fields = {"pooler_output": tuple(features.pooler_output[i] for i in images)}
    deepstack = getattr(features, "deepstack_features", None)
    if deepstack is not None:
        fields["deepstack_features"] = [tuple(layer[i] for i in images) for layer in deepstack]
    return type(features)(**fields)


def _resolve_model_path(path: str | Path, trust_remote_code: bool) -> str:
    """The local model directory ``path`` names, checked by ``_check_model_dir``. Nothing is ever
    downloaded: ``path`` is a directory, or an ``org/name`` id already in the local Hugging Face
    cache (its snapshot directory). Everything else fails at once, naming ``path``."""
    text = str(path)
    p = Path(text).expanduser()
    if p.is_dir():
        _check_model_dir(p, trust_remote_code)
        return str(p)
    if p.exists():
        raise FileNotFoundError(f"model path {text!r} is a file, not a model directory")
    where = "" if p.is_absolute() else f" (looked for {p.absolute()})"
    if not _HUB_ID.match(text):  # ./x, ../x, /x, ~/x, a/b/c, …: a path, and it is not there
        raise FileNotFoundError(f"model directory {text!r} does not exist{where}")
    snapshot = _cached_snapshot(text)
    if snapshot is None:
        raise FileNotFoundError(
            f"model directory {text!r} does not exist{where}, and no Hub model {text!r} is in the "
            f"local Hugging Face cache; ivr never downloads models: download it once (e.g. "
            f"`hf download {text} --local-dir DIR`) and set model.path=DIR"
        )
    _check_model_dir(snapshot, trust_remote_code)
    return str(snapshot)


def _cached_snapshot(repo_id: str) -> Path | None:
    """The snapshot directory of Hub model ``repo_id`` in the local cache, if it is there (no
    network: ``local_files_only``)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (OSError, ValueError):  # not cached (LocalEntryNotFoundError), not a valid id
        return None


def _check_model_dir(d: Path, trust_remote_code: bool) -> None:
    """A model directory ivr can train: a config.json of a vision-language model, and its
    weights. One-line errors naming ``d`` and what is missing (the processor is checked by
    ``_load_processor``)."""
    if not (d / "config.json").is_file():
        raise FileNotFoundError(
            f"{str(d)!r} is not a Hugging Face model directory (no config.json)"
        )
    config = AutoConfig.from_pretrained(str(d), trust_remote_code=trust_remote_code)
    if not _is_vision_language(config):
        what = ", ".join(getattr(config, "architectures", None) or ()) or config.model_type
        raise ValueError(
            f"{str(d)!r} is not a vision-language model: its config.json describes {what} "
            f"(model_type {config.model_type!r}, no vision_config); ivr trains image-text-to-text "
            f"models such as Qwen2.5-VL or Qwen3-VL"
        )
    missing = _missing_weights(d)
    if missing is not None:
        raise FileNotFoundError(f"{str(d)!r} has a config.json but {missing}")


def _is_vision_language(config: Any) -> bool:
    """A vision tower in the config, or a model ``AutoModelForImageTextToText`` can build."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING

    auto_map = getattr(config, "auto_map", None) or {}
    return (
        getattr(config, "vision_config", None) is not None
        or type(config) in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING
        or "AutoModelForImageTextToText" in auto_map
    )


def _missing_weights(d: Path) -> str | None:
    """What is missing of the weights in model directory ``d`` (None: nothing). A sharded
    checkpoint's index must find each of its shards; otherwise one *.safetensors or
    pytorch_model*.bin file (a LoRA adapter's adapter_model.* does not count) is enough."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = d / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
            absent = [s for s in shards if not (d / s).is_file()]
            if not absent:
                return None
            more = ", …" if len(absent) > 3 else ""
            return (
                f"{len(absent)} of the {len(shards)} weight files its {index_name} lists are "
                f"missing ({', '.join(absent[:3])}{more})"
            )
    for pattern in ("*.safetensors", "pytorch_model*.bin"):
        if any(not f.name.startswith("adapter_") for f in d.glob(pattern)):
            return None
    return "no weights (no *.safetensors or pytorch_model*.bin file)"


def _has_image_processor_config(d: Path) -> bool:
    """preprocessor_config.json, or a processor_config.json with an image_processor entry."""
    if (d / "preprocessor_config.json").is_file():
        return True
    config = d / "processor_config.json"
    if not config.is_file():
        return False
    try:
        return "image_processor" in json.loads(config.read_text())
    except ValueError:  # unreadable: the loader's own error says why
        return True


def _load_processor(path: str, trust_remote_code: bool) -> Any:
    """AutoProcessor first; if it fails or returns a bare tokenizer (the stock Qwen processors need
    torchvision for their video processor), the image-only subclass for the model type."""
    register_image_only_processors()
    error: Exception | None = None
    try:
        proc = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
        if hasattr(proc, "image_processor") and hasattr(proc, "tokenizer"):
            return proc
    except (OSError, ValueError, ImportError, TypeError) as e:
        error = e
    model_type = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code).model_type
    fallback = IMAGE_ONLY_PROCESSORS.get(model_type)
    if fallback is not None:
        try:
            return fallback.from_pretrained(path)
        except (OSError, ValueError, TypeError) as e:
            error = e
    if not _has_image_processor_config(Path(path)):
        raise ValueError(
            f"no usable image processor in {path!r}: it has no image processor config "
            f"(preprocessor_config.json, or processor_config.json with an image_processor entry), "
            f"which a vision-language model directory keeps next to its tokenizer files; copy them "
            f"from the model it was made from, or pass processor=... to Policy.from_pretrained"
        ) from error
    first_line = str(error).strip().splitlines()[0] if error and str(error).strip() else ""
    raise ValueError(
        f"no usable image processor in {path!r}: a VLM directory needs processor_config.json or "
        f"preprocessor_config.json next to the tokenizer files (pass processor=... to "
        f"Policy.from_pretrained otherwise)"
        + (f"; loading failed with: {first_line}" if error else "")
    ) from error


def _set_pixel_limits(processor: Any, min_pixels: int | None, max_pixels: int | None) -> None:
    """Override the Qwen-style resize limits in place (``size`` = {shortest,longest}_edge)."""
    from transformers.image_utils import SizeDict

    ip = processor.image_processor
    size = dict(shortest_edge=ip.size.shortest_edge, longest_edge=ip.size.longest_edge)
    if min_pixels is not None:
        size["shortest_edge"] = min_pixels
    if max_pixels is not None:
        size["longest_edge"] = max_pixels
    ip.size = SizeDict(**size)


def _keep_4bit_layout(model: torch.nn.Module) -> None:
    """Keep bitsandbytes' 4-bit layers of a policy in the layout that training can use.

    bitsandbytes (0.50.2 at least) on a CPU with AVX512-BF16: the first forward of a
    ``Linear4bit`` in eval mode on an input without grad (``generate``, no-grad scoring) repacks
    its weight, once and for good, into the layout of a fused inference kernel (``gemv_4bit``),
    and every later forward of that layer, training ones included, goes through that kernel. It
    (1) computes in bfloat16 whatever the compute dtype: log-probabilities off by up to 0.06 nats
    on the tiny test model, where sampling and scoring must agree to 1e-4; (2) has no autograd:
    no gradient flows back through the frozen base weight to the adapters below it, silently on
    layers without bias; (3) on layers with a bias fails with "a view of a leaf Variable that
    requires grad is being used in an in-place operation". A policy is sampled and trained with
    the same weights, so each 4-bit layer has the repacking switched off (the per-layer flag
    ``support_avx512bf16_for_cpu`` its forward reads) and is unpacked where it already happened.
    That costs the fused CPU inference kernel (sampling dequantizes as training does) and makes
    such a CPU run exactly what a CPU without AVX512-BF16 runs; nothing changes on GPUs.
    """
    for m in model.modules():
        if not hasattr(m, "support_avx512bf16_for_cpu"):
            continue
        m.support_avx512bf16_for_cpu = False
        weight = m.weight
        state = getattr(weight, "quant_state", None)
        if getattr(state, "packing_format_for_cpu", False):
            from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

            weight.data, weight.quant_state = _convert_weight_packed_for_cpu_inverse(
                weight.data, state
            )


def _nf4_config(dtype: str | torch.dtype) -> Any:
    """bitsandbytes 4-bit NormalFloat (QLoRA, Dettmers et al. 2023), compute in ``dtype``."""
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError("load_in_4bit needs bitsandbytes: pip install 'ivr[qlora]'")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype if isinstance(dtype, torch.dtype) else torch.float32,
    )


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed sampling without disturbing the caller's global RNG streams."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def _fresh_generation_config(model: torch.nn.Module) -> Iterator[None]:
    """HF fills every unset generate() option from ``model.generation_config`` (e.g. Qwen's
    repetition_penalty=1.05, top_k=1): swap in a blank one so only our options apply."""
    owner = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT
    saved = owner.generation_config
    owner.generation_config = GenerationConfig()
    try:
        yield
    finally:
        owner.generation_config = saved
