"""Sampling from the policy: the decode loop and the logits processor that records log π_T.

``Policy.generate`` delegates here. The distribution sampled is the one ``ivr.models.score``
scores (see ``ivr.models.policy``): π_T(· | context) = softmax(mask(logits) / T), the vision
tokens masked to −inf, ``Generation.logprobs`` recorded *before* top-k/top-p truncation.

Two paths, same distribution and recorded logprobs (tested against the training forward):

- **Shared prefix** (``Policy.shared_prefix``, models with 3-D rope: Qwen2-VL/2.5-VL/3-VL):
  ``decode`` prefills each prompt ONCE, images included, gathers its KV cache for its samples,
  then runs one forward per token for all rows, drawing by inverse CDF.
- **HF generate** otherwise, with a fresh ``GenerationConfig`` (the checkpoint's own defaults,
  e.g. Qwen's ``repetition_penalty=1.05``, would change the distribution behind our back) and
  one logits processor, ``_SamplingProcessor``, that masks, records and warps.

Suppressing the vision tokens is not cosmetic: a sampled ``<|image_pad|>`` breaks the next
forward ("Image features and image tokens do not match").
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from transformers import (
    BatchFeature,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from ivr.models.kv_cache import cache_kwarg, output_cache
from ivr.types import Generation, Prompt

if TYPE_CHECKING:
    from ivr.models.policy import Policy

__all__ = ["decode", "generate", "has_vision_fields", "prefill", "to_generation"]


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
        self.generator: torch.Generator | None = None  # ``decode``'s draws; None = global RNG

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
        """One step of ``decode``: [N, V] raw logits → ([N] token, [N] log π_T(token)).
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
            u = torch.rand(len(cdf), 1, device=cdf.device, generator=self.generator)
            u = u * cdf[:, -1:]
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


@torch.no_grad()
def generate(
    policy: Policy,
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int = 256,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    num_return_sequences: int = 1,
    seed: int | None = None,
) -> list[list[Generation]]:
    """``Policy.generate`` (documented there): the shared-prefix ``decode`` loop on 3-D rope
    models, HF ``generate`` with the recording processor otherwise."""
    batch = policy.encode(prompts)
    greedy = temperature <= 0
    recorder = _SamplingProcessor(
        policy._suppressed_t, temperature, 0 if greedy else top_k, 1.0 if greedy else top_p
    )
    copies = 1 if greedy else num_return_sequences  # greedy: copies below
    seed_ctx = _seeded(seed, policy.device) if seed is not None else contextlib.nullcontext()
    rope_index = policy._rope_index_fn()
    if policy.shared_prefix and rope_index is not None and has_vision_fields(batch):
        if seed is not None:  # a private generator: the same draws as torch.manual_seed(seed),
            # and thread-safe (fork_rng swaps the process-wide state; rollout/overlap.py)
            recorder.generator = torch.Generator(policy.device).manual_seed(seed)
        new, logprobs = decode(policy, batch, rope_index, recorder, copies, max_new_tokens)
    else:
        sampling = {"temperature": 1.0, "top_k": 0, "top_p": 1.0} if not greedy else {}
        config = GenerationConfig(  # temperature/top-k/top-p are applied by the recorder
            max_new_tokens=max_new_tokens,
            do_sample=not greedy,
            **sampling,
            num_beams=1,
            num_return_sequences=copies,
            eos_token_id=list(policy.eos_token_ids),
            pad_token_id=policy.pad_token_id,
            return_dict_in_generate=True,
        )
        with seed_ctx, _fresh_generation_config(policy.model):
            out = policy.model.generate(
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
    gens = [to_generation(policy, new[r], logprobs[r]) for r in range(new.shape[0])]
    if greedy:
        return [[g] * num_return_sequences for g in gens]
    n = num_return_sequences
    return [gens[i * n : (i + 1) * n] for i in range(len(prompts))]


def decode(
    policy: Policy,
    batch: BatchFeature,
    rope_index: Any,
    recorder: _SamplingProcessor,
    copies: int,
    max_new_tokens: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sampling loop for 3-D rope (Qwen-VL) models: each prompt is prefilled ONCE, images
    included, and its KV cache gathered for its ``copies`` samples; then one forward per
    token for all rows. Same distribution and recorded logprobs as HF ``generate`` with the
    same recorder (tested: training logprobs agree to 1e-5), less work: no G-fold prefill,
    no per-step HF bookkeeping, inverse-CDF sampling (one uniform per row instead of a
    vocabulary of exponentials). Returns ([N, L] new token ids, pad after eos; [N, L]
    log π_T of each), N = prompts × copies, rows of a prompt adjacent.
    """
    dev = policy.device
    positions, out = prefill(policy, batch, rope_index)
    cache, cache_kw = output_cache(out), cache_kwarg(policy.model)  # cache= from 5.24 on
    rows = torch.arange(batch["input_ids"].shape[0], device=dev).repeat_interleave(copies)
    if copies > 1:
        cache.batch_select_indices(rows)
    logits = out.logits[rows, -1]
    n, P = len(rows), batch["input_ids"].shape[1]
    mask = torch.cat(
        [batch["attention_mask"][rows], batch["attention_mask"].new_ones(n, max_new_tokens)], 1
    )
    start = (positions.amax(dim=(0, 2)) + 1)[rows]  # [N] position of the first new token
    eos = torch.tensor(policy.eos_token_ids, device=dev)
    done = torch.zeros(n, dtype=torch.bool, device=dev)
    tokens, logprobs = [], []
    for t in range(max_new_tokens):
        token, logprob = recorder.sample(logits)
        token = token.masked_fill(done, policy.pad_token_id)
        tokens.append(token)
        logprobs.append(logprob)
        done |= torch.isin(token, eos)
        if t == max_new_tokens - 1 or bool(done.all()):
            break
        pos = (start + t).view(1, n, 1).expand(positions.shape[0], n, 1)
        out = policy.model(
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


def to_generation(policy: Policy, ids: torch.Tensor, logprobs: torch.Tensor) -> Generation:
    """One row of new token ids (pad after eos) → ``Generation``: cut after the first eos,
    trailing pads dropped, text decoded without special tokens."""
    ids_list = ids.tolist()
    end = next((j for j, t in enumerate(ids_list) if t in policy.eos_token_ids), None)
    finished = end is not None
    if finished:
        ids_list = ids_list[: end + 1]
    else:
        while ids_list and ids_list[-1] == policy.pad_token_id:
            ids_list.pop()
    lp = logprobs[: len(ids_list)].tolist()
    text = policy.tokenizer.decode(ids_list, skip_special_tokens=True)
    return Generation(text=text, token_ids=tuple(ids_list), logprobs=tuple(lp), finished=finished)


def prefill(policy: Policy, batch: BatchFeature, rope_index: Any) -> tuple[torch.Tensor, Any]:
    """Run each prompt once (vision tower included) with the 3-D rope positions the model
    itself would compute, keeping the KV cache: → (positions [3, U, P], model output)."""
    positions, _ = rope_index(
        batch["input_ids"],
        mm_token_type_ids=batch["mm_token_type_ids"],
        image_grid_thw=batch["image_grid_thw"],
        attention_mask=batch["attention_mask"],
    )
    return positions, policy.model(
        **batch, position_ids=positions, use_cache=True, logits_to_keep=1
    )


def has_vision_fields(batch: BatchFeature) -> bool:
    """3-D rope positions can be computed: image grid and per-token modality ids present."""
    return "mm_token_type_ids" in batch and "image_grid_thw" in batch


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
