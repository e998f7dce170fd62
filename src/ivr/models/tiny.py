"""Build tiny random-weight Qwen2.5-VL / Qwen3-VL checkpoints entirely offline.

Why: tests, benchmarks and the laptop demo need a *real* HF VLM (the same classes, processor,
chat template and ``from_pretrained`` path as a 7B checkpoint) without downloading anything.
``build_tiny_vlm`` trains a byte-level BPE tokenizer on a small corpus, adds Qwen's special
tokens and a Qwen-style chat template, sizes the model from a handful of knobs and saves
model + image-only processor + generation config with ``save_pretrained``.

Facts this relies on (DESIGN.md §3): the tokenizer is wrapped as ``Qwen2Tokenizer`` (merges as
tuples); the image processor is ``Qwen2VLImageProcessorPil`` (the default one needs
torchvision); the processor is the image-only subclass from ``ivr.models.processor``;
``mrope_section`` must sum to head_dim / 2; ``initializer_range`` ≈ 0.2 makes logprobs peaked
enough that position-id bugs show up as nats, not thousandths.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Tokenizer,
    Qwen2VLImageProcessorPil,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
)
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX
from transformers.utils import logging as hf_logging

from ivr.models.processor import (
    Qwen2_5_VLImageOnlyProcessor,
    Qwen3VLImageOnlyProcessor,
    register_processors,
)

__all__ = ["ARCHS", "CHAT_TEMPLATE", "SPECIAL_TOKENS", "build_tiny_vlm", "default_corpus"]

ARCHS = ("qwen2_5_vl", "qwen3_vl")

#: Qwen's control tokens, in Qwen's order (ids follow the BPE vocabulary).
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

#: Qwen-style ChatML. Differences from the stock Qwen2.5-VL template, on purpose: no default
#: system prompt (every token costs on a laptop) and no video branch (image-only processor).
#: Content may be a plain string or a list of ``{"type": "image"}`` / ``{"type": "text"}`` parts.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part or 'image_url' in part %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in part %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Per-arch vision constants. Pixel limits suit the synthetic world's 112×112 images: a 4×4 grid
# of 28 px cells becomes one visual token per cell (Qwen2.5-VL: 112 = 4·(14·2); Qwen3-VL rounds
# 112 to 128 = 4·(16·2)). min = 2×2 merged tokens, max = 16×16 merged tokens.
_VISION = {
    "qwen2_5_vl": {
        "patch": 14,
        "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
    },
    "qwen3_vl": {"patch": 16, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
}
_MERGE = 2


_COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "black", "white", "gray")
_SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond", "heart", "ring")
_PROSE = (
    "Look at the image carefully. How many objects are there in the picture?",
    "Describe the scene, then think step by step, then give the final answer in a box.",
    "The grid has four rows and four columns; each cell is empty or holds one shape.",
    "Which colour is the shape in the top left cell? What is the total number of shapes?",
    "Is there more than one red object? Answer yes or no. Count the same colour again.",
    "Your previous answer was wrong. Check where the reasoning contradicts the image.",
    "Critique: the description says two circles, but the image shows three. Rectify it.",
    "Wait, let me check: the second row has a small blue square on the right and bottom.",
    "The answer is therefore correct because every step matches the description.",
    "A mistake in the description leads to an error in the final answer, so describe first.",
)


def default_corpus() -> list[str]:
    """English prose, digits, arithmetic, LaTeX and the answer-format tags, so that the BPE
    vocabulary covers what prompts and responses in this project look like."""
    lines = list(_PROSE) + [
        "<desc>There are 2 red circles and 1 blue square.</desc>"
        "<think>2 + 1 = 3, so the answer is 3.</think> \\boxed{3}",
        "<desc> </desc> <think> </think> \\boxed{} \\boxed{A} \\boxed{B} \\boxed{C} \\boxed{D}",
        "\\frac{1}{2} \\sqrt{2} \\times \\cdot \\pi \\left( \\right) \\{ \\} x^2 + y^2 = z^2",
        "$x = 3$ $y = -1.5$ 0.5 10% 3.14 1,000 (A) (B) (C) (D) A. B. C. D.",
        '[{"bbox_2d": [10, 20, 30, 40], "label": "red circle"}] ```json ```',
    ]
    for n, (c, s) in enumerate(itertools.product(_COLOURS, _SHAPES)):
        lines.append(f"There are {n % 10} {c} {s}s and one {c} {s}.")
    lines += [
        f"{a} + {b} = {a + b}, {a} - {b} = {a - b}, {a} * {b} = {a * b}"
        for a, b in itertools.product(range(10), range(1, 10, 2))
    ]
    return lines


def _train_tokenizer(corpus: Iterable[str], vocab_size: int) -> Qwen2Tokenizer:
    """Byte-level BPE with Qwen's pre-tokenizer, wrapped as ``Qwen2Tokenizer`` so that it saves
    and reloads like a real Qwen tokenizer."""
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(pattern=Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(SPECIAL_TOKENS),
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer=trainer)
    state = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    vocab = dict(state["vocab"])
    for token in SPECIAL_TOKENS:  # after the BPE tokens, in Qwen's order, as in Qwen's vocab
        vocab[token] = len(vocab)
    tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_start_token": "<|vision_start|>",
            "vision_end_token": "<|vision_end|>",
        },
    )
    tok.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    tok.chat_template = CHAT_TEMPLATE
    tok.model_max_length = 32768
    return tok


def _configs(
    arch: str,
    tok: Qwen2Tokenizer,
    hidden: int,
    layers: int,
    vision_hidden: int,
    vision_depth: int,
    init: float,
):
    """Tiny text + vision configs with the constraints that make Qwen VL run: 4 heads (head_dim =
    hidden/4), 2 kv heads, mrope_section summing to head_dim/2, out_hidden_size = text hidden."""
    heads = 4
    head_dim = hidden // heads
    half = head_dim // 2
    # [T, H, W] frequency split: [4, 6, 6] for head_dim 32 (Qwen2.5-VL's 16/24/24 scaled down).
    # Qwen3-VL interleaves H and W every third frequency, so H, W ≤ half/3: [6, 5, 5] (its 24/20/20).
    hw = half * 3 // 8 if arch == "qwen2_5_vl" else half * 5 // 16
    section = [half - 2 * hw, hw, hw]
    ids = {
        n: tok.convert_tokens_to_ids(t)
        for n, t in [
            ("image_token_id", "<|image_pad|>"),
            ("video_token_id", "<|video_pad|>"),
            ("vision_start_token_id", "<|vision_start|>"),
            ("vision_end_token_id", "<|vision_end|>"),
        ]
    }
    eos, pad = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    text = dict(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=2,
        head_dim=head_dim,
        max_position_embeddings=4096,
        initializer_range=init,
        bos_token_id=pad,
        eos_token_id=eos,
        pad_token_id=pad,
    )
    vision = dict(
        depth=vision_depth,
        hidden_size=vision_hidden,
        intermediate_size=2 * vision_hidden,
        num_heads=4,
        patch_size=_VISION[arch]["patch"],
        spatial_merge_size=_MERGE,
        temporal_patch_size=2,
        out_hidden_size=hidden,
        initializer_range=init,
    )
    if arch == "qwen2_5_vl":
        text["rope_parameters"] = {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": section,
        }
        vision.update(window_size=112, fullatt_block_indexes=[vision_depth - 1])
        return Qwen2_5_VLConfig(
            text_config=text,
            vision_config=vision,
            tie_word_embeddings=True,
            initializer_range=init,
            **ids,
        )
    text["rope_parameters"] = {
        "rope_type": "default",
        "rope_theta": 10000.0,
        "mrope_section": section,
        "mrope_interleaved": True,
    }
    vision.update(
        hidden_act="gelu_pytorch_tanh",
        num_position_embeddings=256,
        deepstack_visual_indexes=list(range(min(vision_depth, layers))),
    )
    return Qwen3VLConfig(
        text_config=text,
        vision_config=vision,
        tie_word_embeddings=True,
        initializer_range=init,
        **ids,
    )


def build_tiny_vlm(
    out_dir: str | Path,
    arch: str = "qwen2_5_vl",
    *,
    hidden: int = 128,
    layers: int = 2,
    vision_hidden: int = 64,
    vision_depth: int = 2,
    seed: int = 0,
    corpus: Iterable[str] | None = None,
    initializer_range: float = 0.2,
    vocab_size: int | None = None,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Build and save a random-weight ``arch`` VLM with its tokenizer and image-only processor.

    ``corpus`` (extra strings, e.g. the prompts of a dataset) is added to the built-in corpus
    before training the tokenizer; ``vocab_size`` (default 1024) caps the vocabulary, Qwen's
    special tokens included (a small corpus yields fewer tokens). ``min_pixels``/``max_pixels``
    default to 2×2 … 16×16 visual tokens. The same arguments give the same files. Returns
    ``out_dir``, loadable with ``Policy.from_pretrained`` or ``AutoModelForImageTextToText`` +
    ``AutoProcessor`` (this call registers the image-only processors with ``AutoProcessor``:
    ``ivr.models.register_processors``). A non-empty ``out_dir`` is refused unless
    ``overwrite`` (``--overwrite``), which writes the model's files over it.
    """
    register_processors()  # the saved directory names an image-only class: make it loadable
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHS}")
    for name, value in (("hidden", hidden), ("vision_hidden", vision_hidden)):
        if value % 8:
            raise ValueError(
                f"{name} must be a multiple of 8 (4 heads, even head_dim), got {value}"
            )
    out = Path(out_dir)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{out} is not empty; pass overwrite=True (--overwrite) to replace it"
        )
    out.mkdir(parents=True, exist_ok=True)

    texts = default_corpus() * 2 + list(corpus or ())  # ×2: every default word passes min_frequency
    tok = _train_tokenizer(texts, vocab_size or 1024)

    factor = _VISION[arch]["patch"] * _MERGE
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=min_pixels or 4 * factor**2,
        max_pixels=max_pixels or 256 * factor**2,
        patch_size=_VISION[arch]["patch"],
        merge_size=_MERGE,
        temporal_patch_size=2,
        image_mean=_VISION[arch]["mean"],
        image_std=_VISION[arch]["std"],
    )
    proc_cls = Qwen2_5_VLImageOnlyProcessor if arch == "qwen2_5_vl" else Qwen3VLImageOnlyProcessor
    processor = proc_cls(
        image_processor=image_processor, tokenizer=tok, chat_template=CHAT_TEMPLATE
    )

    config = _configs(arch, tok, hidden, layers, vision_hidden, vision_depth, initializer_range)
    model_cls = (
        Qwen2_5_VLForConditionalGeneration
        if arch == "qwen2_5_vl"
        else Qwen3VLForConditionalGeneration
    )
    with torch.random.fork_rng(devices=[]):  # seed the weights, leave the caller's RNG alone
        torch.manual_seed(seed)
        model = model_cls(config).eval()
    eos, pad = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    model.generation_config = GenerationConfig(
        bos_token_id=pad,
        eos_token_id=[eos, pad],
        pad_token_id=pad,
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        max_new_tokens=256,
    )

    with _quiet_progress_bars():
        model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


@contextlib.contextmanager
def _quiet_progress_bars() -> Iterator[None]:
    """A 2 MB checkpoint does not need a progress bar in every test log."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
