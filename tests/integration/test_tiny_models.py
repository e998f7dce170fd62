"""The tiny offline VLM kit: builds fast, reloads through the ordinary HF paths, and has the
tokenizer / template / image geometry the rest of the project relies on."""

from __future__ import annotations

import time

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, Qwen2VLImageProcessorPil

from ivr.models.processor import Qwen2_5_VLImageOnlyProcessor, Qwen3VLImageOnlyProcessor
from ivr.models.tiny import CHAT_TEMPLATE, SPECIAL_TOKENS, build_tiny_vlm

ARCHS = {
    "qwen2_5_vl": ("Qwen2_5_VLForConditionalGeneration", Qwen2_5_VLImageOnlyProcessor),
    "qwen3_vl": ("Qwen3VLForConditionalGeneration", Qwen3VLImageOnlyProcessor),
}


@pytest.fixture(params=list(ARCHS))
def arch(request) -> str:
    return request.param


def test_builds_fast_and_reloads(tmp_path, arch):
    build_tiny_vlm(tmp_path / "warmup", arch)  # first call pays one-off lazy imports
    start = time.perf_counter()
    out = build_tiny_vlm(tmp_path / "m", arch)
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0, f"build took {elapsed:.2f} s"

    model = AutoModelForImageTextToText.from_pretrained(out)
    processor = AutoProcessor.from_pretrained(out)
    model_cls, proc_cls = ARCHS[arch]
    assert type(model).__name__ == model_cls
    # Not a bare tokenizer: the registered image-only processor, with the PIL image processor.
    assert type(processor) is proc_cls
    assert isinstance(processor.image_processor, Qwen2VLImageProcessorPil)
    assert not hasattr(processor, "video_processor")
    assert model.config.image_token_id == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert model.config.get_text_config().vocab_size == len(processor.tokenizer)
    assert model.config.get_text_config().initializer_range == 0.2


def test_same_arguments_same_files(tmp_path):
    a = build_tiny_vlm(tmp_path / "a", "qwen2_5_vl", seed=3)
    b = build_tiny_vlm(tmp_path / "b", "qwen2_5_vl", seed=3)
    c = build_tiny_vlm(tmp_path / "c", "qwen2_5_vl", seed=4)
    weights = lambda d: (d / "model.safetensors").read_bytes()  # noqa: E731
    assert weights(a) == weights(b) != weights(c)
    assert (a / "tokenizer.json").read_text() == (c / "tokenizer.json").read_text()


def test_tokenizer_special_tokens_and_eos(tiny_qwen25_dir):
    tok = AutoProcessor.from_pretrained(tiny_qwen25_dir).tokenizer
    ids = [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    assert len(set(ids)) == len(SPECIAL_TOKENS) and tok.unk_token_id not in ids
    for t in SPECIAL_TOKENS:  # each is one token, and never split from surrounding text
        assert tok.tokenize(f"a{t}b") == ["a", t, "b"]
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    text = "<desc>There are 3 red circles.</desc>\n<think>2 + 1 = 3</think> \\boxed{3}"
    assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode(text)) < 40  # the BPE learned the project's vocabulary


def test_corpus_and_vocab_size(tmp_path):
    out = build_tiny_vlm(tmp_path / "m", corpus=["zorblax quux"] * 50, vocab_size=400)
    tok = AutoProcessor.from_pretrained(out).tokenizer
    assert len(tok) <= 400
    assert tok.tokenize("zorblax") == ["zorblax"]


def test_chat_template(tiny_qwen3_dir):
    processor = AutoProcessor.from_pretrained(tiny_qwen3_dir)
    assert processor.chat_template == CHAT_TEMPLATE
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many?"}]},
        {"role": "assistant", "content": "\\boxed{2}"},
    ]
    text = processor.apply_chat_template(messages, tokenize=False)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>How many?<|im_end|>\n"
        "<|im_start|>assistant\n\\boxed{2}<|im_end|>\n"
    )
    prompt = processor.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")


def test_generation_config(tiny_qwen25_dir):
    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen25_dir)
    tok = AutoProcessor.from_pretrained(tiny_qwen25_dir).tokenizer
    gc = model.generation_config
    assert tok.convert_tokens_to_ids("<|im_end|>") in gc.eos_token_id
    assert gc.pad_token_id == tok.pad_token_id


@pytest.mark.parametrize("fixture", ["tiny_qwen25_dir", "tiny_qwen3_dir"])
def test_one_visual_token_per_grid_cell(request, fixture):
    """112 px = 4×4 cells of 28 px → 16 visual tokens for both patch sizes (14 and 16)."""
    path = request.getfixturevalue(fixture)
    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    batch = processor(text=[text], images=[Image.new("RGB", (112, 112))], return_tensors="pt")
    assert batch["image_grid_thw"].tolist() == [[1, 8, 8]]
    assert int(batch["mm_token_type_ids"].sum()) == 16
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (1, batch["input_ids"].shape[1], len(processor.tokenizer))
    assert logits.std() > 1.0  # initializer_range 0.2: peaked, not flat, distributions


def test_unknown_arch(tmp_path):
    with pytest.raises(ValueError, match="llava"):
        build_tiny_vlm(tmp_path, "llava")


# ---------------------------------------------------------------- processor registration
_REGISTERED = """
from transformers import Qwen2_5_VLConfig, Qwen3VLConfig
from transformers.models.auto.processing_auto import PROCESSOR_MAPPING
from ivr.models.processor import IMAGE_ONLY_PROCESSORS
def registered():
    return set(PROCESSOR_MAPPING._extra_content.values()) & set(IMAGE_ONLY_PROCESSORS.values())
"""


def _run(code: str) -> str:
    """``code`` in a fresh interpreter (registration is process-wide state): its stdout."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", _REGISTERED + code], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_importing_ivr_models_registers_nothing(tiny_qwen25_dir):
    """``import ivr.models`` (and the rollout layer above it) leaves ``AutoProcessor`` alone;
    ``register_processors()`` registers both classes, idempotently."""
    out = _run(
        "import ivr.models, ivr.rollout\n"
        "print(len(registered()))\n"
        "ivr.models.register_processors(); ivr.models.register_processors()\n"
        "print(len(registered()))\n"
    )
    assert out.split() == ["0", "2"]


def test_loading_a_tiny_model_registers_what_it_needs(tiny_qwen25_dir):
    """In a fresh process, ``Policy.from_pretrained`` alone loads the image-only processor, and
    afterwards plain ``AutoProcessor`` resolves it too."""
    out = _run(
        "from transformers import AutoProcessor\n"
        "from ivr.models import Policy\n"
        f"p = Policy.from_pretrained({str(tiny_qwen25_dir)!r})\n"
        f"q = AutoProcessor.from_pretrained({str(tiny_qwen25_dir)!r})\n"
        "print(type(p.processor).__name__, type(q).__name__, len(registered()))\n"
    )
    assert out.split() == ["Qwen2_5_VLImageOnlyProcessor", "Qwen2_5_VLImageOnlyProcessor", "2"]
