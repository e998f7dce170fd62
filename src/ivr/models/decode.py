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
import os
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
from transformers.cache_utils import DynamicLayer

from ivr.models.kv_cache import cache_kwarg, output_cache
from ivr.models.prompt_cache import PromptKV
from ivr.types import Generation, Prompt

if TYPE_CHECKING:
    from ivr.models.policy import Policy

__all__ = ["VisionMemo", "decode", "generate", "has_vision_fields", "prefill", "to_generation"]


#: ``decode`` drops the finished rows from its batch once this share of it has finished (each
#: drop copies the KV cache once; > 1 never drops).
DROP_FINISHED = 0.25


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

    def sample(
        self, logits: torch.Tensor, u: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of ``decode``: [N, V] raw logits → ([N] token, [N] log π_T(token)).
        The same distribution as HF sampling after ``__call__``, drawn by inverse CDF: one
        uniform per row (HF's multinomial draws an exponential per vocabulary entry); ``u``
        ([N, 1] in [0, 1)) gives them, drawn here otherwise."""
        scores = logits.float().index_fill(1, self.suppressed.to(logits.device), float("-inf"))
        scores = scores / self.temperature
        logp = torch.log_softmax(scores, dim=-1)
        if self.greedy:
            token = scores.argmax(-1)
        else:
            for warp in self.warpers:
                scores = warp(None, scores)
            cdf = torch.softmax(scores, dim=-1).cumsum(-1)
            u = (
                torch.rand(len(cdf), 1, device=cdf.device, generator=self.generator)
                if u is None
                else u.to(cdf.device)
            )
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
        row_images = [tuple(p.images) for p in prompts]
        new, logprobs = decode(
            policy, batch, rope_index, recorder, copies, max_new_tokens, row_images
        )
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
    row_images: Sequence[tuple[Any, ...]] = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sampling loop for 3-D rope (Qwen-VL) models: each prompt is prefilled ONCE, images
    included (each distinct image encoded once, ``prefill``), and its KV cache gathered for its
    ``copies`` samples; then one forward per token for the rows still running. Same distribution
    and recorded logprobs as HF ``generate`` with the same recorder (tested: training logprobs
    agree to 1e-5), less work: no G-fold prefill, no per-step HF bookkeeping, inverse-CDF
    sampling (one uniform per row instead of a vocabulary of exponentials), and finished rows
    dropped from the batch (their cache rows too) once ``DROP_FINISHED`` of it has finished. The
    uniforms are still drawn for every row at every step, so a seeded run draws the same tokens
    whether rows are dropped or not. Returns ([N, L] new token ids, pad after eos; [N, L]
    log π_T of each, 0 after eos), N = prompts × copies, rows of a prompt adjacent.
    """
    dev = policy.device
    positions, out, prompt_mask = prefill(policy, batch, rope_index, row_images)
    cache = output_cache(out)  # (cache= from transformers 5.24 on: kv_cache.py)
    rows = torch.arange(batch["input_ids"].shape[0], device=dev).repeat_interleave(copies)
    if copies > 1:
        cache.batch_select_indices(rows)
    logits = out.logits[rows, -1]
    n, P = len(rows), prompt_mask.shape[1]  # P: the prompt cache's width
    mask = torch.cat([prompt_mask[rows], prompt_mask.new_ones(n, max_new_tokens)], 1)
    start = (positions.amax(dim=(0, 2)) + 1)[rows]  # [N] position of the first new token
    eos = torch.tensor(policy.eos_token_ids, device=dev)
    tokens = torch.full((n, max_new_tokens), policy.pad_token_id, dtype=torch.long, device=dev)
    logprobs = torch.zeros(n, max_new_tokens, device=dev)
    cache = _preallocated(cache, max_new_tokens)
    plain = all(type(layer) is _GrowLayer for layer in getattr(cache, "layers", [None]))
    step = _one_token_forward(policy, padded=not bool(prompt_mask.all()), plain_cache=plain)
    live = torch.arange(n, device=dev)  # the rows in the decode batch (cache, logits, mask)
    running = torch.ones(n, dtype=torch.bool, device=dev)  # per live row: no eos yet
    steps = 0
    for t in range(max_new_tokens):
        u = (
            None
            if recorder.greedy
            else torch.rand(n, 1, device=dev, generator=recorder.generator)[live]
        )  # n draws, always
        token, logprob = recorder.sample(logits, u)
        token = token.masked_fill(~running, policy.pad_token_id)
        tokens[live, t] = token
        logprobs[live, t] = logprob.masked_fill(~running, 0.0)
        running &= ~torch.isin(token, eos)
        steps = t + 1
        n_live = int(running.sum())
        if t == max_new_tokens - 1 or n_live == 0:
            break
        if len(live) - n_live >= max(1, int(len(live) * DROP_FINISHED)):  # drop finished rows
            keep = running.nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            live, running, token = live[keep], running[keep], token[keep]
        pos = (start[live] + t).view(1, len(live), 1).expand(positions.shape[0], len(live), 1)
        with _masked_gqa(dev):
            logits = step(token[:, None], mask[live, : P + t + 1], pos, cache)
    return tokens[:, :steps], logprobs[:, :steps]


#: ``decode`` runs its one-token forwards on the text model and the LM head directly where it can
#: (``_one_token_forward``); False: always through the full model's forward.
DIRECT_STEP = True


def _one_token_forward(policy: Policy, padded: bool, plain_cache: bool = True) -> Any:
    """The decode step's forward: (ids [n, 1], 2-D mask [n, L], 3-D rope positions, cache) →
    [n, V] logits of the new position.

    A step of a 3-D rope VLM has no pixels and its own positions, so the outer model's forward
    would only embed the token, hand over to the text model and apply the head — through several
    layers of wrappers, and with the 4-D attention mask rebuilt from the 2-D one every step.
    Where the model is the plain (or PEFT-wrapped) HF layout (``model.language_model``,
    ``lm_head``), SDPA attention, not FSDP-sharded, and every cache layer a plain full-attention
    one (``plain_cache``; not a sliding window, whose mask transformers builds itself and whose
    cache is shorter than the sequence), this calls the text model and the head
    directly, with the 4-D boolean mask of the one query (a view of the padding mask: a single
    last query attends to every earlier key, so causality adds nothing), or no mask when no row
    is padded (what transformers passes SDPA then). Same arithmetic, same logits (tested)."""
    model = policy.model
    cache_kw = cache_kwarg(model)

    def full(ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, cache: Any) -> Any:
        out = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=pos,
            **{cache_kw: cache},
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1]

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    text = getattr(getattr(base, "model", None), "language_model", None)
    head = getattr(base, "lm_head", None)
    attn = getattr(getattr(base, "config", None), "_attn_implementation", None)
    sliding = getattr(text, "has_sliding_layers", False) or not plain_cache
    if not DIRECT_STEP or text is None or head is None or attn != "sdpa" or sliding:
        return full
    if hasattr(base, "unshard"):  # FSDP2-sharded: the root unit's hooks must run
        return full
    text_kw = cache_kwarg(text)

    def direct(ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, cache: Any) -> Any:
        hidden = text(
            input_ids=ids,
            attention_mask=mask[:, None, None, :].bool() if padded else None,
            position_ids=pos,
            **{text_kw: cache},
            use_cache=True,
        )[0]
        return head(hidden[:, -1])

    return direct


def _fingerprint(px: torch.Tensor) -> tuple[torch.Size, torch.Tensor, torch.Tensor]:
    """Cheap identity of an image's patches: shape, every 64th patch, and the total."""
    return px.shape, px[::64].clone(), px.sum()


def _same_pixels(fp: tuple[torch.Size, torch.Tensor, torch.Tensor], px: torch.Tensor) -> bool:
    return fp[0] == px.shape and torch.equal(fp[1], px[::64]) and bool(fp[2] == px.sum())


class _GrowLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys/values live in a buffer allocated once for the whole decode
    (prompt + ``room`` tokens): a step writes one position instead of concatenating (copying)
    the whole cache, and ``keys``/``values`` are views of the filled part. Same values."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, room: int):
        super().__init__()
        b, h, length, d = keys.shape
        self.buf_k = keys.new_empty(b, h, length + room, d)
        self.buf_v = values.new_empty(b, values.shape[1], length + room, values.shape[3])
        self.buf_k[:, :, :length] = keys
        self.buf_v[:, :, :length] = values
        self.length = length
        self.device, self.is_initialized = keys.device, True
        self._views()

    def _views(self) -> None:
        self.keys = self.buf_k[:, :, : self.length]
        self.values = self.buf_v[:, :, : self.length]

    def update(self, key_states, value_states, *args, **kwargs):
        new = key_states.shape[-2]
        self.buf_k[:, :, self.length : self.length + new] = key_states
        self.buf_v[:, :, self.length : self.length + new] = value_states
        self.length += new
        self._views()
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.buf_k, self.buf_v = self.buf_k[indices], self.buf_v[indices]
        self._views()


def _preallocated(cache: Any, room: int) -> Any:
    """``cache`` with its plain ``DynamicLayer``s moved into ``_GrowLayer`` buffers with room for
    ``room`` more tokens (left as it is when it holds any other kind of layer)."""
    layers = getattr(cache, "layers", None)
    if not layers or any(
        type(layer) is not DynamicLayer or not layer.is_initialized for layer in layers
    ):
        return cache
    cache.layers = [_GrowLayer(layer.keys, layer.values, room) for layer in layers]
    return cache


@contextlib.contextmanager
def _masked_gqa(device: torch.device) -> Iterator[None]:
    """On the CPU, let transformers' SDPA attention run grouped-query attention with a padding
    mask natively (``enable_gqa``) instead of first copying the KV cache once per query head
    group (``repeat_kv``): same arithmetic, no per-step copy. transformers only does it there
    when ``TRANSFORMERS_SDPA_FORCE_GQA=1`` (on CUDA a mask would push SDPA to its math kernel,
    so it is left alone)."""
    if device.type != "cpu" or os.environ.get(_FORCE_GQA) is not None:
        yield
        return
    os.environ[_FORCE_GQA] = "1"
    try:
        yield
    finally:
        os.environ.pop(_FORCE_GQA, None)


_FORCE_GQA = "TRANSFORMERS_SDPA_FORCE_GQA"


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


def prefill(
    policy: Policy,
    batch: BatchFeature,
    rope_index: Any,
    row_images: Sequence[tuple[Any, ...]] = (),
) -> tuple[torch.Tensor, Any, torch.Tensor]:
    """Run each prompt once (vision tower included) with the 3-D rope positions the model
    itself would compute, keeping the KV cache: → (positions [3, U, P], model output, [U, W]
    attention mask of its prompt cache).

    ``row_images`` (each prompt's images; sampling only, under ``no_grad``) turns on two reuses
    across calls while the weights are unchanged — IVR's critique and rectify prompts of a step
    carry the same images and begin alike, round after round:

    - ``PromptKV``: a prompt that extends one of the previous call's (same image objects) runs
      only its new tokens on top of that prompt's KV cache (the mask then has W ≠ P);
    - ``VisionMemo``: otherwise each distinct image is encoded once and its features kept."""
    positions, _ = rope_index(
        batch["input_ids"],
        mm_token_type_ids=batch["mm_token_type_ids"],
        image_grid_thw=batch["image_grid_thw"],
        attention_mask=batch["attention_mask"],
    )
    sampling = bool(row_images) and not torch.is_grad_enabled()
    images = [im for ims in row_images for im in ims]

    def full() -> Any:
        inputs = dict(batch)
        memo = VisionMemo.of(policy) if images and sampling else None
        if (
            memo is not None
            and "pixel_values" in inputs
            and len(images) == len(batch["image_grid_thw"])
        ):
            pixels, grid = inputs["pixel_values"], batch["image_grid_thw"]
            features = memo.features(policy, images, pixels, grid)
            if features is not None:
                del inputs["pixel_values"]
                inputs["mm_encoder_outputs"] = {"image": features}
        return policy.model(**inputs, position_ids=positions, use_cache=True, logits_to_keep=1)

    kv = PromptKV.of(policy) if sampling else None
    if kv is None:
        return positions, full(), batch["attention_mask"]
    out, mask = kv.prefill(policy, batch, positions, row_images, full)
    return positions, out, mask


class VisionMemo:
    """Image features per image, reused across sampling calls while the vision weights stay
    the same (the weights' in-place version counters, bumped by every optimiser step or
    ``load_state_dict``, are the key) and the image is the same object with the same pixels
    (a strided 1/64 sample of its patches and their sum, re-checked on every hit).

    Attached to a ``Policy`` (``VisionMemo.of``) where the model takes precomputed features
    (``mm_encoder_outputs``) and ``Policy.share_image_features`` is on (off under FSDP, where
    the tower must run inside the sharded forward). Holds at most ``capacity`` images (the
    oldest go first): enough for a step's prompts; each held image costs its visual tokens ×
    hidden size on the device (a 7B Qwen2.5-VL at 1,280 tokens: ~9 MB in bf16).
    """

    capacity = 64

    def __init__(self) -> None:
        self.version: tuple[int, ...] = ()
        self.entries: dict[int, tuple[Any, Any, Any]] = {}  # id → (image, fingerprint, feats)
        self.encoded = 0  # images run through the tower (for tests and profiling)

    @classmethod
    def of(cls, policy: Policy) -> VisionMemo | None:
        if not (policy.share_image_features and policy.reuse_vision_features):
            return None
        memo = policy.__dict__.get("_vision_memo")
        if memo is None:
            from ivr.models.score import _takes_encoder_outputs

            memo = cls() if _takes_encoder_outputs(policy) else False
            policy.__dict__["_vision_memo"] = memo
        return memo or None

    def features(
        self, policy: Policy, images: Sequence[Any], pixels: torch.Tensor, grid: torch.Tensor
    ) -> Any:
        """Encoder outputs for ``images`` (one per row of ``grid``, patches of each in order in
        ``pixels``), the tower run only on the images not already held."""
        base = policy._base_model()
        visual = getattr(getattr(base, "model", base), "visual", None)
        if visual is None:
            return None
        version = (id(visual), *(p._version for p in visual.parameters()))
        if version != self.version:
            self.version, self.entries = version, {}
        sizes = grid.prod(-1).tolist()
        offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        todo: dict[int, int] = {}  # id(image) → first index among ``images`` needing the tower
        for i, im in enumerate(images):
            hit = self.entries.get(id(im))
            px = pixels[offsets[i] : offsets[i] + sizes[i]]
            if hit is not None and hit[0] is im and _same_pixels(hit[1], px):
                continue
            todo.setdefault(id(im), i)
        if todo:
            idx = list(todo.values())
            px = torch.cat([pixels[offsets[i] : offsets[i] + sizes[i]] for i in idx])
            feats = base.get_image_features(px, grid[idx], return_dict=True)
            self.encoded += len(idx)
            deep = getattr(feats, "deepstack_features", None)
            for j, i in enumerate(idx):
                per = (feats.pooler_output[j], None if deep is None else [d[j] for d in deep])
                self.entries[id(images[i])] = (
                    images[i],
                    _fingerprint(pixels[offsets[i] : offsets[i] + sizes[i]]),
                    per,
                )
            self._kind = type(feats)
            while len(self.entries) > self.capacity:
                self.entries.pop(next(iter(self.entries)))
        per = [self.entries[id(im)][2] for im in images]
        fields: dict[str, Any] = {"pooler_output": tuple(p[0] for p in per)}
        if per and per[0][1] is not None:
            fields["deepstack_features"] = [
                tuple(p[1][layer] for p in per) for layer in range(len(per[0][1]))
            ]
        return self._kind(**fields)


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
