"""Model FLOPs of a VLM step: decoder-only text model + Qwen2.5-VL vision tower, from configs.

What is counted (the usual "model FLOPs" of MFU, PaLM appendix B): every matrix multiply of
the forward pass at 2 FLOPs per multiply-add, plus the attention score and value products.
Norms, activations, rotary embeddings, softmax and biases are left out (< 1 % at 7B).
Training = 3 × forward (the backward pass costs two forwards: gradients with respect to the
inputs and to the weights); recomputation under gradient checkpointing is NOT counted (it is
hardware work, not model work). Generation with a KV cache: each new token is one forward of
one position that attends over the cache; summed over n tokens that is exactly a causal forward
of n positions after the prompt, which is how ``generation_flops`` computes it.

Text (per position, per layer; h = hidden, I = intermediate, a = heads, g = kv heads,
d = head_dim)::

    projections  2·(h·a·d + 2·h·g·d + a·d·h)      q, k, v, o
    MLP          2·3·h·I                           SwiGLU: gate, up, down
    attention    4·a·d·ctx                         QKᵀ and AV over the ctx keys it sees

and the LM head 2·h·vocab per position whose logits are computed. A causal forward of T new
positions after ``past`` cached ones sees ctx = past + 1 … past + T keys: Σ ctx = T·past +
T(T+1)/2.

Vision (Qwen2.5-VL; per patch; H = vision hidden, I_v = its intermediate)::

    patch embed  2·(C·t·p²)·H                      Conv3d, kernel = stride = (t, p, p)
    per block    2·(4·H² + 3·H·I_v)                qkv + proj, SwiGLU MLP
    attention    4·H·n per patch in a segment of n patches: full-attention blocks attend over
                 the whole frame, the others over windows of (window / patch)² patches (the edge
                 windows are smaller, as in ``transformers``' ``get_vision_window_index``)
    merger       2·(M·M + M·out) per merged token, M = H·merge², tokens = patches / merge²

A Qwen3-VL tower (GELU MLP: 2 matmuls, no windows) is read from its config the same way; its
deepstack mergers are not counted.

``FlopCounter`` applies these formulas to the forwards a live HF model actually runs (shapes read
by hooks), so a benchmark can charge every phase of a step — whatever trainer drives it — with
the FLOPs it executed. ``mfu`` turns FLOPs and seconds into a fraction of a peak.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ivr.models.kv_cache import input_cache

__all__ = [
    "H200_BF16_TFLOPS",
    "QWEN2_5_VL_7B",
    "TRAIN_FACTOR",
    "FlopCounter",
    "TextDims",
    "VisionDims",
    "generation_flops",
    "mfu",
    "text_forward_flops",
    "text_matmul_params",
    "training_flops",
    "vision_forward_flops",
]

#: The peak that MFU is quoted against by default (dense bf16, TFLOP/s).
H200_BF16_TFLOPS = 790.0
#: Forward + backward = 3 forwards.
TRAIN_FACTOR = 3

#: The sizes of Qwen2.5-VL-7B-Instruct (its ``config.json``), as ``Qwen2_5_VLConfig`` keywords.
#: Token ids, rope and norm settings are left to the caller (``benchmarks/gpu_step.py``).
QWEN2_5_VL_7B: dict[str, Any] = {
    "text_config": {
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "vocab_size": 152064,
        "hidden_act": "silu",
    },
    "vision_config": {
        "depth": 32,
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
        "out_hidden_size": 3584,
        "hidden_act": "silu",
    },
    "tie_word_embeddings": False,
}


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def _sub(cfg: Any, key: str) -> Any:
    sub = _get(cfg, key)
    return cfg if sub is None else sub


@dataclass(frozen=True)
class TextDims:
    """The sizes of a decoder-only transformer that set its FLOPs."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    @classmethod
    def from_config(cls, config: Any) -> TextDims:
        """From an HF config (a VLM config with ``text_config``, a text config, or a dict)."""
        c = _sub(config, "text_config")
        heads = int(_get(c, "num_attention_heads"))
        hidden = int(_get(c, "hidden_size"))
        return cls(
            hidden=hidden,
            intermediate=int(_get(c, "intermediate_size")),
            layers=int(_get(c, "num_hidden_layers")),
            heads=heads,
            kv_heads=int(_get(c, "num_key_value_heads") or heads),
            head_dim=int(_get(c, "head_dim") or hidden // heads),
            vocab=int(_get(c, "vocab_size")),
        )


def text_matmul_params(d: TextDims, *, lm_head: bool = True) -> int:
    """Weights that take part in a matmul per position (embedding lookup excluded)."""
    attn = d.hidden * d.heads * d.head_dim * 2 + d.hidden * d.kv_heads * d.head_dim * 2
    mlp = 3 * d.hidden * d.intermediate
    return d.layers * (attn + mlp) + (d.vocab * d.hidden if lm_head else 0)


def text_forward_flops(
    d: TextDims, tokens: int, *, past: int = 0, logits: int | None = None, rows: int = 1
) -> float:
    """Forward FLOPs of ``rows`` sequences, each ``tokens`` new positions after ``past`` cached
    ones (causal), with logits for ``logits`` positions per row (default: all ``tokens``)."""
    if tokens < 0 or past < 0:
        raise ValueError(f"tokens and past must be >= 0, got {tokens}, {past}")
    linear = 2 * tokens * text_matmul_params(d, lm_head=False)
    ctx = tokens * past + tokens * (tokens + 1) // 2
    attn = 4 * d.layers * d.heads * d.head_dim * ctx
    head = 2 * (tokens if logits is None else logits) * d.hidden * d.vocab
    return float(rows * (linear + attn + head))


def generation_flops(
    d: TextDims, prompt: int, new_tokens: int, *, rows: int = 1, prefills: int | None = None
) -> float:
    """Sampling ``new_tokens`` for each of ``rows`` rows after a ``prompt``-token prompt.

    ``prefills`` prompts are run (default: one per row; a trainer that shares a prompt between
    its G samples runs rows / G). The prefill yields the first token's logits; the other
    ``new_tokens − 1`` tokens are fed back one by one, attending over the KV cache.
    """
    if new_tokens <= 0:
        return 0.0
    prefill = text_forward_flops(d, prompt, logits=1, rows=rows if prefills is None else prefills)
    decode = text_forward_flops(d, new_tokens - 1, past=prompt, rows=rows)
    return prefill + decode


def training_flops(forward_flops: float) -> float:
    """Forward + backward of a forward that costs ``forward_flops``."""
    return TRAIN_FACTOR * forward_flops


@dataclass(frozen=True)
class VisionDims:
    """The sizes of a ViT vision tower (Qwen2.5-VL's by default) that set its FLOPs."""

    depth: int
    hidden: int
    intermediate: int
    patch: int
    merge: int
    out_hidden: int
    temporal_patch: int = 2
    in_channels: int = 3
    window: int = 0  # window side in pixels (Qwen2.5-VL: 112); 0 = no windowed blocks
    fullatt_blocks: tuple[int, ...] = ()
    mlp_matmuls: int = 3  # SwiGLU (Qwen2.5-VL); 2 for a GELU MLP (Qwen3-VL)

    @classmethod
    def from_config(cls, config: Any) -> VisionDims:
        """From an HF VLM config (its ``vision_config``), a vision config, or a dict. Windowed
        blocks iff the config has ``window_size`` and ``fullatt_block_indexes`` (Qwen2.5-VL);
        a SwiGLU MLP iff ``hidden_act`` is silu."""
        c = _sub(config, "vision_config")
        full = _get(c, "fullatt_block_indexes")
        window = int(_get(c, "window_size", 0) or 0) if full is not None else 0
        return cls(
            depth=int(_get(c, "depth")),
            hidden=int(_get(c, "hidden_size")),
            intermediate=int(_get(c, "intermediate_size")),
            patch=int(_get(c, "patch_size")),
            merge=int(_get(c, "spatial_merge_size", 2)),
            out_hidden=int(_get(c, "out_hidden_size")),
            temporal_patch=int(_get(c, "temporal_patch_size", 2)),
            in_channels=int(_get(c, "in_channels", 3)),
            window=window,
            fullatt_blocks=tuple(full or ()),
            mlp_matmuls=3 if _get(c, "hidden_act", "silu") in ("silu", "swish") else 2,
        )


def _window_sizes(grid_h: int, grid_w: int, v: VisionDims) -> list[int]:
    """Patches per attention window of one frame (``get_vision_window_index``'s tiling)."""
    side = v.window // v.merge // v.patch  # window side in merged tokens
    llm_h, llm_w = grid_h // v.merge, grid_w // v.merge

    def tiles(n: int) -> list[int]:
        return [side] * (n // side) + ([n % side] if n % side else [])

    return [th * tw * v.merge**2 for th in tiles(llm_h) for tw in tiles(llm_w)]


def vision_forward_flops(v: VisionDims, grids: Sequence[Sequence[int]]) -> float:
    """Forward FLOPs of the vision tower on images/videos of ``grids`` = (t, h, w) patches each
    (``image_grid_thw``)."""
    patches = sum(int(t) * int(h) * int(w) for t, h, w in grids)
    embed = 2 * patches * v.in_channels * v.temporal_patch * v.patch**2 * v.hidden
    per_patch_block = 2 * (4 * v.hidden**2 + v.mlp_matmuls * v.hidden * v.intermediate)
    full_sq = sum(int(t) * (int(h) * int(w)) ** 2 for t, h, w in grids)
    if v.window:  # Qwen2.5-VL: windows everywhere but the full-attention blocks
        n_full = sum(1 for b in set(v.fullatt_blocks) if 0 <= b < v.depth)
        win_sq = sum(
            int(t) * sum(n * n for n in _window_sizes(int(h), int(w), v)) for t, h, w in grids
        )
    else:  # every block attends over the whole frame
        n_full, win_sq = v.depth, 0
    attn = 4 * v.hidden * (n_full * full_sq + (v.depth - n_full) * win_sq)
    m = v.hidden * v.merge**2
    merger = 2 * (patches // v.merge**2) * (m * m + m * v.out_hidden)
    return float(embed + v.depth * patches * per_patch_block + attn + merger)


def mfu(flops: float, seconds: float, peak_tflops: float = H200_BF16_TFLOPS) -> float:
    """Model FLOPs utilisation: achieved FLOP/s over the peak (``peak_tflops`` × 10¹²)."""
    if seconds <= 0:
        return float("nan")
    return flops / seconds / (peak_tflops * 1e12)


class FlopCounter:
    """Charges the forwards a live HF VLM runs with their model FLOPs, per named phase.

    Hooks on the text decoder (``model.model.language_model``: rows × new positions, past from
    the KV cache), the LM head (positions whose logits are computed) and the vision tower
    (``grid_thw``). A forward run with autograd enabled is charged ×3 (its backward is assumed
    to follow, as in every trainer's update); checkpoint recomputation is not charged. Shapes
    are taken as executed: padding positions count (the benchmarks keep prompts and completions
    of equal length, so there is none to speak of).

        counter = FlopCounter(model)
        with counter:
            counter.phase = "rollout"
            ...
        counter.flops  # {"rollout": 1.2e15, ...}
    """

    def __init__(self, model: Any) -> None:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        inner = getattr(base, "model", base)
        self.text = TextDims.from_config(base.config)
        self._lm = getattr(inner, "language_model", None)
        self._visual = getattr(inner, "visual", None)
        self._head = base.get_output_embeddings()
        self.vision = VisionDims.from_config(base.config) if self._visual is not None else None
        if self._lm is None or self._head is None:
            raise ValueError(f"{type(base).__name__}: no language_model / lm_head to hook")
        self.phase = "other"
        self.flops: dict[str, float] = {}
        self._handles: list[Any] = []

    def _add(self, flops: float) -> None:
        import torch

        factor = TRAIN_FACTOR if torch.is_grad_enabled() else 1
        self.flops[self.phase] = self.flops.get(self.phase, 0.0) + factor * flops

    def _on_text(self, module: Any, args: tuple, kwargs: dict) -> None:
        x = kwargs.get("inputs_embeds")
        if x is None:
            x = kwargs.get("input_ids", args[0] if args else None)
        if x is None:
            return
        cache = input_cache(kwargs)  # cache= from transformers 5.24 on, past_key_values= before
        past = int(cache.get_seq_length()) if cache is not None else 0
        rows, tokens = int(x.shape[0]), int(x.shape[1])
        self._add(text_forward_flops(self.text, tokens, past=past, logits=0, rows=rows))

    def _on_head(self, module: Any, args: tuple) -> None:
        positions = args[0].numel() // args[0].shape[-1]
        self._add(2.0 * positions * self.text.hidden * self.text.vocab)

    def _on_vision(self, module: Any, args: tuple, kwargs: dict) -> None:
        grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
        if grid is None or self.vision is None:
            return
        self._add(vision_forward_flops(self.vision, grid.tolist()))

    def __enter__(self) -> FlopCounter:
        self._handles = [
            self._lm.register_forward_pre_hook(self._on_text, with_kwargs=True),
            self._head.register_forward_pre_hook(self._on_head),
        ]
        if self._visual is not None:
            self._handles.append(
                self._visual.register_forward_pre_hook(self._on_vision, with_kwargs=True)
            )
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    @contextlib.contextmanager
    def charging(self, phase: str) -> Iterator[None]:
        """Charge the forwards inside the block to ``phase`` (then back to the previous one)."""
        before, self.phase = self.phase, phase
        try:
            yield
        finally:
            self.phase = before
