"""Scoring given completions: per-token log π_T(completion | prompt) and entropy, for training.

``Policy.completion_logprobs`` delegates here. It computes the same quantity that sampling
records (``ivr.models.decode``; the two agree to ~2e-5 in float32, see ``ivr.models.policy``),
with every multimodal field in the forward: Qwen2.5-VL without ``mm_token_type_ids`` silently
falls back to 1-D positions (logprobs off by nats, no warning); Qwen3-VL raises. Per-token fields
are extended over the completion (zeros = text), everything else is passed through untouched.

Work is shared, never changed: rows of one prompt are templated and encoded once; on 3-D rope
models the prompt is run once and its KV cache gathered per row (``shared_prefix_logits``);
otherwise full sequences run, with each unique image encoded once when the model takes
precomputed features (``row_inputs``).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from transformers import BatchFeature

from ivr.models.decode import has_vision_fields, prefill
from ivr.models.kv_cache import cache_kwarg, output_cache
from ivr.models.logprobs import token_logprobs
from ivr.types import Prompt

if TYPE_CHECKING:
    from ivr.models.policy import Policy

__all__ = ["LogprobOutput", "completion_logprobs", "row_inputs", "score", "shared_prefix_logits"]


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


def completion_logprobs(
    policy: Policy,
    prompts: Sequence[Prompt],
    completions: Sequence[Sequence[int]],
    *,
    temperature: float = 1.0,
    micro_batch_size: int | None = None,
    with_grad: bool = False,
    return_entropy: bool = False,
    entropy_grad: bool = True,
) -> LogprobOutput:
    """``Policy.completion_logprobs`` (documented there): micro-batches in prompt order, then
    back in the caller's order."""
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
            lp, ent = score(
                policy,
                [prompts[i] for i in rows],
                [completions[i] for i in rows],
                temperature,
                return_entropy,
                entropy_grad,
            )
            parts_lp.append(torch.nn.functional.pad(lp, (0, T - lp.shape[1])))
            if ent is not None:
                parts_ent.append(torch.nn.functional.pad(ent, (0, T - ent.shape[1])))
    mask = (torch.arange(T)[None, :] < torch.tensor(lengths).view(-1, 1)).to(policy.device)
    if not parts_lp:
        return LogprobOutput(torch.zeros(0, T, device=policy.device), mask, None)
    back = None if order == list(range(B)) else torch.tensor(order).argsort().to(policy.device)
    logprobs = torch.cat(parts_lp)
    entropy = torch.cat(parts_ent) if return_entropy else None
    if back is not None:
        logprobs = logprobs[back]
        entropy = entropy[back] if entropy is not None else None
    return LogprobOutput(logprobs=logprobs, mask=mask, entropy=entropy)


def score(
    policy: Policy,
    prompts: Sequence[Prompt],
    completions: Sequence[Sequence[int]],
    temperature: float,
    return_entropy: bool,
    entropy_grad: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One micro-batch → ([b, T] logprobs, [b, T] entropy | None), T = its longest completion;
    zeros past each end."""
    b = len(prompts)
    dev = policy.device
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
    batch = policy.encode(unique)
    comp = torch.full((b, T), policy.pad_token_id, dtype=torch.long)  # built on the host, sent once
    comp_mask = torch.zeros(b, T, dtype=batch["attention_mask"].dtype)
    for i, c in enumerate(completions):
        comp[i, : len(c)] = torch.as_tensor(list(c), dtype=torch.long)
        comp_mask[i, : len(c)] = 1
    comp, comp_mask = comp.to(dev), comp_mask.to(dev)
    rope_index = policy._rope_index_fn()
    if (
        len(unique) < b
        and policy.shared_prefix
        and rope_index is not None
        and has_vision_fields(batch)
        and not policy._checkpointing()
    ):
        logits = shared_prefix_logits(policy, batch, inv, comp, comp_mask, rope_index)
    else:
        inputs = row_inputs(policy, batch, unique, prompts, inv_list, comp, comp_mask)
        # logits for positions P-1 … P+T-2 predict the T completion tokens; logits_to_keep=T+1
        # keeps the last T+1 positions, the last of which predicts nothing we score (left in
        # place: ``token_logprobs`` ignores trailing positions, and slicing would copy them).
        logits = policy.model(**inputs, use_cache=False, logits_to_keep=T + 1).logits
    # log π_T(t) = logit_t/T − logsumexp(logits/T), H = logsumexp − Σ p·logit/T, in float32
    # one chunk of positions at a time (``ivr.models.logprobs``)
    logprobs, entropy = token_logprobs(
        logits,
        comp,
        suppressed=policy._suppressed_t,
        temperature=temperature,
        chunk_size=policy.logprob_chunk_size,
        entropy=return_entropy,
        entropy_grad=entropy_grad,
    )
    valid = comp_mask.bool()
    logprobs = logprobs.masked_fill(~valid, 0.0)
    if entropy is not None:
        entropy = entropy.masked_fill(~valid, 0.0)
    return logprobs, entropy


def shared_prefix_logits(
    policy: Policy,
    batch: BatchFeature,
    inv: torch.Tensor,
    comp: torch.Tensor,
    comp_mask: torch.Tensor,
    rope_index: Any,
) -> torch.Tensor:
    """[b, T, V] logits predicting each row's completion, with every prompt run once.

    1. The U unique prompts go through the model once (vision tower included), with their
       3-D rope positions computed exactly as the model would, keeping the KV cache.
    2. The cache is gathered row by row (``inv``: row → unique prompt); autograd sums the
       gradients of the rows back into the shared prompt.
    3. The completions run on top of it: text positions continue from each prompt's largest
       position (+1, +2, …), which is what the model's own full-sequence rope index gives
       to text after the last image. The prompt's last logit predicts completion token 0.
    """
    positions, out_p, _ = prefill(policy, batch, rope_index)
    cache = output_cache(out_p)
    cache.batch_select_indices(inv)
    T = comp.shape[1]
    start = positions.amax(dim=(0, 2)) + 1  # [U] next text position after each prompt
    pos = start[inv][:, None] + torch.arange(T, device=comp.device)  # [b, T]
    pos = pos.unsqueeze(0).expand(positions.shape[0], -1, -1)
    mask = torch.cat([batch["attention_mask"][inv], comp_mask], dim=1)
    out_c = policy.model(
        input_ids=comp,
        attention_mask=mask,
        position_ids=pos,
        **{cache_kwarg(policy.model): cache},
        use_cache=True,
        logits_to_keep=T,
    )
    return torch.cat([out_p.logits[inv], out_c.logits[:, :-1]], dim=1)


def row_inputs(
    policy: Policy,
    batch: BatchFeature,
    unique: Sequence[Prompt],
    prompts: Sequence[Prompt],
    inv_list: list[int],
    comp: torch.Tensor,
    comp_mask: torch.Tensor,
) -> dict[str, Any]:
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
            and not (policy.share_image_features and _takes_encoder_outputs(policy))
        )
    ):
        batch, inv_list, n_u = policy.encode(prompts), list(range(b)), b
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
        feats = policy._base_model().get_image_features(
            inputs.pop("pixel_values"), batch["image_grid_thw"], return_dict=True
        )
        inputs["image_grid_thw"] = batch["image_grid_thw"][idx]
        inputs["mm_encoder_outputs"] = {"image": _select_images(feats, images)}
    return inputs


def _takes_encoder_outputs(policy: Policy) -> bool:
    """The model's forward takes precomputed image features (``mm_encoder_outputs``)."""
    base = policy._base_model()
    params = inspect.signature(base.forward).parameters
    return "mm_encoder_outputs" in params and hasattr(base, "get_image_features")


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
