"""QLoRA: ``model.load_in_4bit`` (bitsandbytes nf4 base weights + LoRA adapters).

The config check runs everywhere; the model tests need the optional extra
(``pip install 'ivr[qlora]'``: bitsandbytes ≥ 0.50 quantizes and runs on CPU too) and are
skipped without it.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from PIL import Image

from ivr.config import ConfigError, load_config
from ivr.models.policy import Policy, chat_prompt

HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None


def test_load_in_4bit_needs_lora():
    with pytest.raises(ConfigError, match=r"model.load_in_4bit.*lora_rank > 0"):
        load_config(None, ["model.load_in_4bit=true"])
    cfg = load_config(None, ["model.load_in_4bit=true", "model.lora_rank=8"])
    assert cfg.model.load_in_4bit and cfg.model.lora_rank == 8


def test_logprob_chunk_size_is_validated():
    assert load_config(None, []).model.logprob_chunk_size == 1024
    with pytest.raises(ConfigError, match="logprob_chunk_size"):
        load_config(None, ["model.logprob_chunk_size=-1"])


@pytest.mark.skipif(HAS_BNB, reason="bitsandbytes is installed")
def test_missing_bitsandbytes_is_named(tiny_qwen25_dir):
    with pytest.raises(ImportError, match=r"ivr\[qlora\]"):
        Policy.from_pretrained(tiny_qwen25_dir, load_in_4bit=True)


@pytest.mark.skipif(not HAS_BNB, reason="needs the qlora extra (bitsandbytes)")
def test_qlora_policy_samples_scores_and_trains_adapters(tiny_qwen25_dir):
    """4-bit base weights, LoRA on top (as ``Trainer._load_policy`` does): sampling and scoring
    still agree, and gradients reach the adapters only."""
    from bitsandbytes.nn import Linear4bit
    from peft import LoraConfig, get_peft_model

    policy = Policy.from_pretrained(tiny_qwen25_dir, load_in_4bit=True)
    quantized = [m for m in policy.model.modules() if isinstance(m, Linear4bit)]
    assert quantized and all(m.weight.dtype == torch.uint8 for m in quantized)
    assert not any(p.requires_grad for p in policy.model.parameters())
    model = get_peft_model(policy.model, LoraConfig(r=4, target_modules="all-linear"))
    policy = Policy(model, policy.processor)

    prompt = chat_prompt("How many shapes?", [Image.new("RGB", (56, 84), "red")])
    gens = policy.generate([prompt], max_new_tokens=8, num_return_sequences=2, seed=0)[0]
    # bitsandbytes repacks 4-bit weights for its inference-only CPU kernel on AVX512-BF16 CPUs
    # during a no-grad forward; the policy keeps them in the layout training uses
    assert not any(
        getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in quantized
    )
    out = policy.completion_logprobs([prompt, prompt], [g.token_ids for g in gens], with_grad=True)
    for i, g in enumerate(gens):
        n = len(g.token_ids)
        assert torch.allclose(out.logprobs[i, :n], torch.tensor(g.logprobs), atol=1e-4)
    out.logprobs.sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads and all("lora_" in n for n in grads)
    assert any(g.abs().sum() > 0 for g in grads.values())


def _has_avx512bf16() -> bool:
    from bitsandbytes.functional import has_avx512bf16

    return bool(has_avx512bf16())


@pytest.mark.skipif(
    not HAS_BNB or not _has_avx512bf16(),
    reason="needs bitsandbytes and a CPU with AVX512-BF16 (where bitsandbytes repacks)",
)
def test_policy_unpacks_4bit_weights_repacked_before_it(tiny_qwen25_dir):
    """A 4-bit model that already ran no-grad inference outside a Policy (bitsandbytes repacked
    its weights for the CPU inference kernel) is unpacked when wrapped: it samples and trains."""
    from bitsandbytes.nn import Linear4bit
    from peft import LoraConfig, get_peft_model

    loaded = Policy.from_pretrained(tiny_qwen25_dir, load_in_4bit=True)
    quantized = [m for m in loaded.model.modules() if isinstance(m, Linear4bit)]
    for m in quantized:  # as bitsandbytes builds them: repacking allowed
        m.support_avx512bf16_for_cpu = True
    prompt = chat_prompt("How many shapes?", [Image.new("RGB", (56, 84), "red")])
    with torch.no_grad():
        loaded.model(**loaded.encode([prompt]))

    def packed() -> list[bool]:
        return [getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in quantized]

    assert all(packed())

    model = get_peft_model(loaded.model, LoraConfig(r=4, target_modules="all-linear"))
    policy = Policy(model, loaded.processor)
    assert not any(packed())
    gens = policy.generate([prompt], max_new_tokens=6, num_return_sequences=2, seed=0)[0]
    out = policy.completion_logprobs([prompt, prompt], [g.token_ids for g in gens], with_grad=True)
    for i, g in enumerate(gens):
        n = len(g.token_ids)
        assert torch.allclose(out.logprobs[i, :n], torch.tensor(g.logprobs), atol=1e-4)
    out.logprobs.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.skipif(not HAS_BNB, reason="needs the qlora extra (bitsandbytes)")
def test_trainer_loads_a_qlora_policy(tmp_path, tiny_qwen25_dir):
    from ivr.rl.trainer import Trainer
    from ivr.types import Sample

    cfg = load_config(
        None,
        [
            f"model.path={tiny_qwen25_dir}",
            "model.device=cpu",
            "model.load_in_4bit=true",
            "model.lora_rank=4",
            "model.logprob_chunk_size=16",
            f"train.output_dir={tmp_path / 'run'}",
            "train.prompts_per_step=1",
            "rollout.group_size=2",
            "rollout.max_new_tokens=4",
            "log.progress=false",
            "log.tensorboard=false",
        ],
    )
    path = tmp_path / "red.png"
    Image.new("RGB", (56, 56), "red").save(path)
    sample = Sample(id="0", question="Colour?", answer="red", images=(str(path),))
    trainer = Trainer(cfg, samples=[sample])
    assert trainer.policy.logprob_chunk_size == 16
    trained = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n for n in trained)
