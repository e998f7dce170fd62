"""Prompt KV reuse between sampling calls: automatic prefix caching for the shared-prefix path.

IVR-R1's loop (rl/rectify.py) asks the policy, per failed answer, a critique prompt and then a
rectify prompt, round after round. Each begins like the last one (``data/prompts.py``): the chat
template, the image, the question, then — critique and rectify of one round — the same previous
answer. vLLM reuses such prefixes by itself (prefix caching); ``PromptKV`` does it for the HF
decode path (``decode.prefill``):

    keep     after a call's prefill, its prompts' KV cache (no copy: the prefill's own tensors),
             each row's token ids and image objects, and where its tokens sit in the cache
    reuse    a new row takes the longest common token prefix with a kept row that shows the
             SAME image objects (token ids alone cannot tell two images apart: both are runs of
             ``<|image_pad|>``); the prefix must cover the row's images. Only the rest of each
             prompt — the suffix — runs through the model, on top of the gathered prefix KV.

Reuse happens only under ``no_grad`` and while the weights are the ones that made the kept
cache (every parameter's in-place version counter, bumped by an optimiser step, is the key),
and only when every row of the call qualifies (the suffix forward carries no pixels). The
sampled distribution is the same up to float summation order (the prefix was computed in
another batch): tested on tiny Qwen2.5-VL and Qwen3-VL, greedy tokens identical.

Layout of a reused prompt cache, row u with prefix length L_u and suffix length S_u::

    [ pad … | prefix (L_u) ]  [ pad … | suffix (S_u) ]     widths max L, max S; pads masked
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from ivr.models.kv_cache import cache_kwarg, output_cache

if TYPE_CHECKING:
    from transformers import BatchFeature

    from ivr.models.policy import Policy

__all__ = ["PromptKV"]


@dataclass
class _Kept:
    """One call's prompts: per row its token ids, image objects (held, so their ``id`` cannot be
    recycled) and the cache positions of its tokens; per layer the keys and values."""

    ids: list[torch.Tensor]
    images: list[tuple[Any, ...]]
    slots: list[torch.Tensor]
    layers: list[tuple[torch.Tensor, torch.Tensor]]
    by_images: dict[tuple[int, ...], list[int]]


class PromptKV:
    """The last sampling call's prompt KV, reused by the next call's prompts that extend it.

    Attached to a ``Policy`` (``PromptKV.of``) when ``Policy.reuse_prompt_kv`` (off by default;
    on in the trainer when ``ivr.enabled``, and in test-time re-reasoning) and
    ``Policy.share_image_features`` are on. ``release`` drops what it holds (the trainer calls it
    before the update, so the cache never sits in memory next to the training activations).
    What it holds costs one prompt cache: the previous call's prompts' KV.
    """

    def __init__(self) -> None:
        self.version: tuple[int, ...] = ()
        self.kept: _Kept | None = None
        self.reused_tokens = 0  # prompt tokens not run again (tests, profiling)
        self.prompt_tokens = 0  # prompt tokens asked for

    @classmethod
    def of(cls, policy: Policy) -> PromptKV | None:
        if not (policy.reuse_prompt_kv and policy.share_image_features):
            return None
        memo = policy.__dict__.get("_prompt_kv")
        if memo is None:
            memo = policy.__dict__["_prompt_kv"] = cls()
        return memo

    def release(self) -> None:
        self.kept = None

    def _weights(self, policy: Policy) -> tuple[int, ...]:
        """The model object and its parameters' in-place version counters."""
        return (id(policy.model), *(p._version for p in policy.model.parameters()))

    # ------------------------------------------------------------------ prefill
    def prefill(
        self,
        policy: Policy,
        batch: BatchFeature,
        positions: torch.Tensor,
        row_images: Sequence[tuple[Any, ...]],
        full: Callable[[], Any],
    ) -> tuple[Any, torch.Tensor]:
        """The prompts' prefill → (model output with the prompt cache, [U, W] attention mask of
        that cache): from the kept prefixes when every row extends a kept prompt, else ``full()``
        (the plain prefill; mask = the batch's). Either way this call's prompt cache is kept for
        the next call. ``positions`` [3, U, P]: the batch's 3-D rope positions."""
        ids, version = _row_ids(batch), self._weights(policy)
        self.prompt_tokens += sum(len(x) for x in ids)
        match = self._match(batch, ids, version, row_images)
        if match is None:
            self.kept = None  # not held through the full prefill
            out, mask, slots = full(), batch["attention_mask"], None
        else:
            out, mask, slots = self._run(policy, batch, positions, ids, match)
        self._keep(batch, out, ids, version, row_images, slots)
        return out, mask

    def _match(
        self,
        batch: BatchFeature,
        ids: list[torch.Tensor],
        version: tuple[int, ...],
        row_images: Sequence[tuple[Any, ...]],
    ) -> list[tuple[int, int]] | None:
        """Per row, (kept row, prefix length) of its longest common prefix with a kept prompt
        showing the same images; None when some row has none covering its images."""
        kept = self.kept
        if kept is None or version != self.version or len(row_images) != len(ids):
            return None
        vision_end = _vision_end(batch)
        match: list[tuple[int, int]] = []
        for u, row in enumerate(ids):
            best = (-1, 0)
            for v in kept.by_images.get(tuple(map(id, row_images[u])), ()):
                n = _common_prefix(row, kept.ids[v])
                if n > best[1]:
                    best = (v, n)
            n = min(best[1], len(row) - 1)  # the last prompt token runs: its logits start decoding
            if best[0] < 0 or n < max(vision_end[u], 1):
                return None
            match.append((best[0], n))
        return match

    def _run(
        self,
        policy: Policy,
        batch: BatchFeature,
        positions: torch.Tensor,
        ids: list[torch.Tensor],
        match: list[tuple[int, int]],
    ) -> tuple[Any, torch.Tensor, list[torch.Tensor]]:
        """Only the suffixes through the model, on the gathered prefix KV: → (output, mask, per
        row the cache positions of its tokens)."""
        kept, dev = self.kept, batch["input_ids"].device
        assert kept is not None
        pre = [n for _, n in match]
        suf = [len(x) - n for x, n in zip(ids, pre)]
        lp, ls = max(pre), max(suf)
        # prefix: each row's kept slots, right-aligned in a width of max L (pads repeat slot 0)
        idx = torch.zeros(len(ids), lp, dtype=torch.long, device=dev)
        for u, (v, n) in enumerate(match):
            idx[u, lp - n :] = kept.slots[v][:n]
            idx[u, : lp - n] = kept.slots[v][0]
        src = torch.tensor([v for v, _ in match], device=dev)[:, None]
        cache = DynamicCache(  # (copies the gathered prefix: free the old call's KV now)
            [
                (k[src, :, idx].permute(0, 2, 1, 3), val[src, :, idx].permute(0, 2, 1, 3))
                for k, val in kept.layers
            ]
        )
        self.kept = kept = None
        cols = torch.arange(max(lp, ls), device=dev)[None]
        pre_t, suf_t = (
            torch.tensor(pre, device=dev)[:, None],
            torch.tensor(suf, device=dev)[:, None],
        )
        mask = torch.cat([cols[:, :lp] >= lp - pre_t, cols[:, :ls] >= ls - suf_t], dim=1)
        suffix = batch["input_ids"][:, -ls:].masked_fill(~mask[:, lp:], policy.pad_token_id)
        mask = mask.to(batch["attention_mask"].dtype)
        out = policy.model(
            input_ids=suffix,
            attention_mask=mask,
            position_ids=positions[:, :, -ls:],
            **{cache_kwarg(policy.model): cache},
            use_cache=True,
            logits_to_keep=1,
        )
        self.reused_tokens += sum(pre)
        slots = [
            torch.cat(
                [
                    torch.arange(lp - n, lp, device=dev),
                    torch.arange(lp + ls - m, lp + ls, device=dev),
                ]
            )
            for n, m in zip(pre, suf)
        ]
        return out, mask, slots

    def _keep(
        self,
        batch: BatchFeature,
        out: Any,
        ids: list[torch.Tensor],
        version: tuple[int, ...],
        row_images: Sequence[tuple[Any, ...]],
        slots: list[torch.Tensor] | None,
    ) -> None:
        """Remember this call's prompt cache (``out``'s, straight after the prefill) for the
        next call; ``slots``: where each row's tokens are, when the prefill reused a prefix (else
        the tail of a left-padded row). A cache with any other kind of layer than a plain
        ``DynamicLayer`` (sliding window, quantised) is not kept."""
        layers = getattr(output_cache(out), "layers", None)
        if (
            not layers
            or any(type(x) is not DynamicLayer for x in layers)
            or len(row_images) != len(ids)
        ):
            self.kept = None
            return
        if slots is None:
            width = batch["input_ids"].shape[1]
            dev = batch["input_ids"].device
            slots = [torch.arange(width - len(x), width, device=dev) for x in ids]
        images = [tuple(im) for im in row_images]
        by_images: dict[tuple[int, ...], list[int]] = {}
        for u, ims in enumerate(images):
            by_images.setdefault(tuple(map(id, ims)), []).append(u)
        self.version = version  # (a no-grad forward leaves the weights' versions as they were)
        self.kept = _Kept(ids, images, slots, [(x.keys, x.values) for x in layers], by_images)


def _row_ids(batch: BatchFeature) -> list[torch.Tensor]:
    """Each row's prompt token ids without the (left) padding."""
    return [row[m.bool()] for row, m in zip(batch["input_ids"], batch["attention_mask"])]


def _vision_end(batch: BatchFeature) -> list[int]:
    """Per row, the index (in the unpadded row) just after its last vision token; 0 if none."""
    out = []
    for types, m in zip(batch["mm_token_type_ids"], batch["attention_mask"]):
        hits = types[m.bool()].nonzero()
        out.append(int(hits[-1]) + 1 if len(hits) else 0)
    return out


def _common_prefix(a: torch.Tensor, b: torch.Tensor) -> int:
    """Length of the longest common prefix of two 1-D token id tensors."""
    n = min(len(a), len(b))
    diff = (a[:n] != b[:n]).nonzero()
    return int(diff[0]) if len(diff) else n
