"""The policy wrapper on tiny Qwen2.5-VL and Qwen3-VL.

The central check: log π of a completion computed by the training forward
(``completion_logprobs``) equals the log π recorded while sampling it (``generate``), on a batch
that exercises everything that can go wrong — left padding, different image sizes, two images in
one prompt, micro-batching — and a negative control proving the check would catch a forward that
drops ``mm_token_type_ids``.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from ivr.models.policy import LogprobOutput, Policy, chat_prompt, count_image_placeholders
from ivr.types import Prompt

TOL = 1e-4


def _image(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl"])
def policy(request) -> Policy:
    name = {"qwen2_5_vl": "tiny_qwen25_dir", "qwen3_vl": "tiny_qwen3_dir"}[request.param]
    return Policy.from_pretrained(request.getfixturevalue(name))


@pytest.fixture(scope="module")
def prompts() -> list[Prompt]:
    """Different image sizes (→ different visual token counts) and text lengths (→ left padding)."""
    return [
        chat_prompt("How many red circles?", [_image(112, 112, 0)]),
        chat_prompt("Count every shape in the picture, row by row.", [_image(56, 168, 1)]),
        chat_prompt("Compare.", [_image(84, 56, 2), _image(112, 56, 3)], system="Be brief."),
    ]


def _max_error(gens, out: LogprobOutput, lengths=None) -> float:
    """Largest |sampling logprob − training logprob| over the first ``lengths[i]`` tokens."""
    err = 0.0
    for i, g in enumerate(gens):
        n = len(g.token_ids) if lengths is None else lengths[i]
        assert out.mask[i, :n].all() and not out.mask[i, n:].any()
        err = max(err, (torch.tensor(g.logprobs[:n]) - out.logprobs[i, :n]).abs().max().item())
    return err


def _sample(policy, prompts, temperature, **gen_kw):
    gens = policy.generate(
        prompts,
        max_new_tokens=24,
        temperature=temperature,
        num_return_sequences=2,
        seed=0,
        **gen_kw,
    )
    flat = [g for group in gens for g in group]
    repeated = [p for p in prompts for _ in range(2)]
    return flat, repeated


def test_encode_left_pads_and_returns_all_fields(policy, prompts):
    batch = policy.encode(prompts)
    for key in (
        "input_ids",
        "attention_mask",
        "pixel_values",
        "image_grid_thw",
        "mm_token_type_ids",
    ):
        assert key in batch, key
    mask = batch["attention_mask"]
    assert (mask[:, -1] == 1).all() and (mask[:, 0] == 0).any()  # left padding, really padded
    assert len({tuple(r) for r in batch["image_grid_thw"].tolist()}) == 4  # 4 different sizes


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_training_logprobs_match_sampling_logprobs(policy, prompts, temperature):
    flat, repeated = _sample(policy, prompts, temperature)
    # Ragged completions (right padding): prefixes of the samples, whose logprobs must be the
    # prefixes of the recorded ones.
    lengths = [max(1, len(g.token_ids) - 4 * i) for i, g in enumerate(flat)]
    completions = [g.token_ids[:n] for g, n in zip(flat, lengths)]
    out = policy.completion_logprobs(
        repeated, completions, temperature=temperature, micro_batch_size=4
    )
    assert out.logprobs.shape == (6, max(lengths)) and len(set(lengths)) > 3
    assert out.logprobs.dtype == torch.float32 and out.mask.dtype == torch.bool
    assert _max_error(flat, out, lengths) < TOL
    # Scoring at the wrong temperature is visibly different: the check has teeth.
    other = policy.completion_logprobs(repeated, [g.token_ids for g in flat], temperature=1.3)
    assert _max_error(flat, other) > 0.1


def test_negative_control_without_mm_token_type_ids(policy, prompts, monkeypatch):
    """Drop (or zero) mm_token_type_ids in the training forward only: agreement must break."""
    flat, repeated = _sample(policy, prompts, 1.0)
    completions = [g.token_ids for g in flat]
    encode = Policy.encode

    def encode_without(self, ps, **kw):
        batch = encode(self, ps, **kw)
        del batch["mm_token_type_ids"]
        return batch

    def encode_zeroed(self, ps, **kw):
        batch = encode(self, ps, **kw)
        batch["mm_token_type_ids"] = torch.zeros_like(batch["mm_token_type_ids"])
        return batch

    monkeypatch.setattr(Policy, "encode", encode_without)
    if policy.model.config.model_type == "qwen3_vl":
        with pytest.raises(ValueError, match="mm_token_type_ids"):  # Qwen3-VL refuses loudly
            policy.completion_logprobs(repeated, completions)
    else:  # Qwen2.5-VL silently falls back to 1-D positions
        assert _max_error(flat, policy.completion_logprobs(repeated, completions)) > 0.5
    monkeypatch.setattr(Policy, "encode", encode_zeroed)
    assert _max_error(flat, policy.completion_logprobs(repeated, completions)) > 0.5


def test_top_k_top_p_record_unwarped_logprobs(policy, prompts):
    flat, repeated = _sample(policy, prompts, 1.0, top_k=5, top_p=0.9)
    out = policy.completion_logprobs(repeated, [g.token_ids for g in flat])
    assert _max_error(flat, out) < TOL
    with torch.no_grad():  # every drawn token is among the 5 most likely
        logits = policy.model(**policy.encode(prompts[:1])).logits[0, -1]
    top5 = set(logits.topk(5).indices.tolist())
    assert all(g.token_ids[0] in top5 for g in flat[:2])


def test_greedy_is_deterministic_and_scored_at_t1(policy, prompts):
    a = policy.generate(prompts, max_new_tokens=16, temperature=0, num_return_sequences=2)
    b = policy.generate(prompts, max_new_tokens=16, temperature=0)
    assert a[0][0] == a[0][1] == b[0][0]
    flat = [group[0] for group in a]
    out = policy.completion_logprobs(prompts, [g.token_ids for g in flat], temperature=0)
    assert _max_error(flat, out) < TOL


def test_generation_never_emits_vision_tokens(policy, prompts):
    """At T = 4 the unsuppressed distribution puts real mass on the vision tokens, so ~2k
    samples would contain several; with suppression there are none."""
    suppressed = list(policy.suppressed_token_ids)
    vocab = policy.tokenizer.get_vocab()
    assert {
        vocab[t] for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
    } <= set(suppressed)
    with torch.no_grad():
        logits = policy.model(**policy.encode(prompts)).logits[:, -1]
    mass = torch.softmax(logits / 4.0, -1)[:, suppressed].sum(-1).min().item()
    n_tokens = 3 * 8 * 96
    assert mass * n_tokens > 5, "negative control: unsuppressed sampling would emit them"

    gens = policy.generate(
        prompts, max_new_tokens=96, temperature=4.0, num_return_sequences=8, seed=1
    )
    emitted = [t for group in gens for g in group for t in g.token_ids]
    assert len(emitted) > n_tokens // 2
    assert not set(emitted) & set(suppressed)


def test_generation_fields(policy, prompts):
    gens = policy.generate(
        prompts, max_new_tokens=40, temperature=1.0, num_return_sequences=4, seed=2
    )
    assert [len(group) for group in gens] == [4, 4, 4]
    for g in (g for group in gens for g in group):
        assert len(g.logprobs) == len(g.token_ids) <= 40
        assert all(lp <= 0.0 for lp in g.logprobs)
        if g.finished:  # ends with its eos, which is kept so that stopping is trained
            assert g.token_ids[-1] in policy.eos_token_ids
            assert not set(g.token_ids[:-1]) & set(policy.eos_token_ids)
        else:
            assert len(g.token_ids) == 40
        assert g.text == policy.tokenizer.decode(g.token_ids, skip_special_tokens=True)
    again = policy.generate(prompts, max_new_tokens=40, num_return_sequences=4, seed=2)
    assert again == gens
    assert policy.generate(prompts, max_new_tokens=40, num_return_sequences=4, seed=3) != gens


def test_completion_logprobs_grad_entropy_and_padding(policy, prompts):
    completions = [[10, 11, 12], [], [13, 14, 15, 16, 17]]
    out = policy.completion_logprobs(
        prompts, completions, with_grad=True, return_entropy=True, micro_batch_size=2
    )
    assert out.logprobs.shape == out.mask.shape == out.entropy.shape == (3, 5)
    assert out.mask.sum(1).tolist() == [3, 0, 5]
    assert (out.logprobs[~out.mask] == 0).all() and (out.entropy[~out.mask] == 0).all()
    assert (out.entropy[out.mask] > 0).all()
    assert out.logprobs.requires_grad
    policy.model.zero_grad()
    # a policy-gradient-like loss with an entropy bonus; suppressed tokens (p = 0, logit −inf)
    # must not turn the entropy gradient into NaN
    (-(out.logprobs * out.mask).sum() - 0.01 * out.entropy.sum()).backward()
    grads = [p.grad for p in policy.model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    assert all(torch.isfinite(g).all() for g in grads)
    policy.model.zero_grad()
    assert not policy.completion_logprobs(prompts, completions).logprobs.requires_grad


# ------------------------------------------------------------------ bad input
def test_missing_model_directory(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        Policy.from_pretrained(missing)


def test_missing_hub_style_id():
    """'org/name' that is not a local directory is looked up in the local Hub cache only."""
    with pytest.raises(FileNotFoundError, match="no-such-org/no-such-model.*never downloads"):
        Policy.from_pretrained("no-such-org/no-such-model")


@pytest.fixture
def no_network(monkeypatch) -> list:
    """Hub downloads allowed as far as huggingface_hub knows, but every name look-up is recorded
    and refused: a test sees whether a model path sent anything to the network."""
    import socket

    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    looked_up: list = []

    def refuse(*args, **kwargs):
        looked_up.append(args[:2])
        raise OSError("network refused in this test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return looked_up


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("models/no_such_tiny", r"'models/no_such_tiny' does not exist .*never downloads"),
        ("./no_such_tiny", r"'./no_such_tiny' does not exist \(looked for .*no_such_tiny\)$"),
        ("runs/sft/no_such_final", r"'runs/sft/no_such_final' does not exist"),
        ("~/no_such_ivr_model_dir", r"'~/no_such_ivr_model_dir' does not exist"),
    ],
)
def test_missing_relative_path_fails_at_once(tmp_path, monkeypatch, no_network, path, message):
    """A relative model path that is not there fails at once, naming it, without trying the
    Hub (it used to retry five times, 28 s, before failing); nothing is downloaded."""
    import time

    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match=message):
        Policy.from_pretrained(path)
    assert time.perf_counter() - start < 5.0  # was 5 Hub retries, 23-28 s
    assert no_network == []


def test_model_path_that_is_a_file(tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"not a directory")
    with pytest.raises(
        FileNotFoundError, match=r"'.*model.safetensors' is a file, not a model dir"
    ):
        Policy.from_pretrained(weights)


def test_hub_id_from_the_local_cache(tmp_path, monkeypatch, no_network, tiny_qwen25_dir):
    """An 'org/name' already in the local Hugging Face cache loads from its snapshot, offline."""
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    repo = cache / "models--ivr-test--tiny-vlm"
    shutil.copytree(tiny_qwen25_dir, repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    policy = Policy.from_pretrained("ivr-test/tiny-vlm")
    assert policy.model.config.model_type == "qwen2_5_vl"
    assert no_network == []


def test_bad_dtype(tiny_qwen25_dir):
    with pytest.raises(ValueError, match="float33"):
        Policy.from_pretrained(tiny_qwen25_dir, dtype="float33")


def test_pixel_limits_override(tiny_qwen25_dir, prompts):
    """max_pixels caps the visual tokens: 112×112 (16 tokens) → at most 2×2 merged tokens."""
    small = Policy.from_pretrained(tiny_qwen25_dir, max_pixels=56 * 56)
    assert small.encode(prompts[:1])["image_grid_thw"].tolist() == [[1, 4, 4]]
    passed = Policy.from_pretrained(
        tiny_qwen25_dir, processor=small.processor, min_pixels=112 * 112, max_pixels=112 * 112
    )
    assert passed.encode(prompts[:1])["image_grid_thw"].tolist() == [[1, 8, 8]]


def test_directory_without_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        Policy.from_pretrained(tmp_path)


def test_directory_without_processor(tiny_qwen25_dir, tmp_path):
    bare = tmp_path / "weights_only"
    bare.mkdir()
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        shutil.copy(tiny_qwen25_dir / name, bare / name)
    with pytest.raises(ValueError, match="no usable image processor in .*weights_only"):
        Policy.from_pretrained(bare)


def test_directory_without_weights(tiny_qwen25_dir, tmp_path):
    no_weights = tmp_path / "no_weights"
    shutil.copytree(tiny_qwen25_dir, no_weights)
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(
        FileNotFoundError, match=r"'.*no_weights' has a config.json but no weights \(no \*.safe"
    ):
        Policy.from_pretrained(no_weights)


def test_sharded_directory_missing_a_shard(tiny_qwen25_dir, tmp_path):
    import json

    sharded = tmp_path / "sharded"
    shutil.copytree(tiny_qwen25_dir, sharded)
    (sharded / "model.safetensors").rename(sharded / "model-00001-of-00002.safetensors")
    index = {
        "weight_map": {
            "a": "model-00001-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors",
        }
    }
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(FileNotFoundError, match=r"'.*sharded' .*1 of the 2 weight files .*00002"):
        Policy.from_pretrained(sharded)


def test_directory_without_image_processor(tiny_qwen25_dir, tmp_path):
    """Tokenizer and weights but no image processor config: one line that says so."""
    text_only_processor = tmp_path / "no_image_processor"
    shutil.copytree(tiny_qwen25_dir, text_only_processor)
    (text_only_processor / "processor_config.json").unlink()
    with pytest.raises(ValueError, match=r"no_image_processor'.*no image processor config") as e:
        Policy.from_pretrained(text_only_processor)
    assert "\n" not in str(e.value)


def test_text_only_language_model_is_named(tiny_qwen25_dir, tmp_path):
    """A text-only LLM (its own tokenizer and weights) is refused as not a vision-language model."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    llm = tmp_path / "text_only_llm"
    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen25_dir)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    Qwen2ForCausalLM(config).save_pretrained(llm)
    tokenizer.save_pretrained(llm)
    with pytest.raises(
        ValueError, match=r"'.*text_only_llm' is not a vision-language model: .*Qwen2ForCausalLM"
    ):
        Policy.from_pretrained(llm)


def test_stock_processor_class_falls_back_to_image_only(tiny_qwen25_dir, tmp_path, prompts):
    """Real Qwen checkpoints name ``Qwen2_5_VLProcessor``, whose video processor needs
    torchvision; without it the policy falls back to the image-only processor."""
    real = tmp_path / "stock_names"
    shutil.copytree(tiny_qwen25_dir, real)
    for name in ("processor_config.json", "tokenizer_config.json"):
        f = real / name
        f.write_text(f.read_text().replace("Qwen2_5_VLImageOnlyProcessor", "Qwen2_5_VLProcessor"))
    policy = Policy.from_pretrained(real)
    assert hasattr(policy.processor, "image_processor")
    assert policy.encode(prompts[:1])["image_grid_thw"].tolist() == [[1, 8, 8]]


def test_tokenizer_is_not_a_processor(policy):
    with pytest.raises(ValueError, match="multimodal processor"):
        Policy(policy.model, policy.tokenizer)


def test_more_placeholders_than_images(policy, prompts):
    one_image = _image(112, 112, 0)
    bad = Prompt(
        messages=(
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "?"}],
            },
        ),
        images=(one_image,),
    )
    assert count_image_placeholders(bad.messages) == 2
    with pytest.raises(ValueError, match=r"prompt 1: 2 image placeholder\(s\) .* but 1 image"):
        policy.generate([prompts[0], bad], max_new_tokens=4)
    with pytest.raises(ValueError, match="prompt 1"):
        policy.completion_logprobs([prompts[0], bad], [[1], [2]])


def test_chat_prompt_from_paths(tmp_path):
    good = tmp_path / "good.png"
    _image(56, 56, 0).save(good)
    prompt = chat_prompt("What is this?", [good])
    assert prompt.images[0].size == (56, 56)
    assert prompt.messages[-1]["content"][0] == {"type": "image"}
    with pytest.raises(FileNotFoundError, match="missing.png"):
        chat_prompt("?", [tmp_path / "missing.png"])
    truncated = tmp_path / "truncated.png"
    _image(64, 64, 1).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(ValueError, match="truncated.png"):
        chat_prompt("?", [truncated])


def test_lora_wrapped_policy_agrees(tiny_qwen25_dir, prompts):
    """The trainer wraps the model with PEFT LoRA: sampling and scoring must still agree, and the
    checkpoint's generation defaults must still be kept out of sampling."""
    from peft import LoraConfig, get_peft_model

    base = Policy.from_pretrained(tiny_qwen25_dir)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    policy = Policy(get_peft_model(base.model, lora), base.processor)
    flat, repeated = _sample(policy, prompts, 1.0)
    out = policy.completion_logprobs(repeated, [g.token_ids for g in flat])
    assert _max_error(flat, out) < TOL
    with policy.model.disable_adapter():
        plain = policy.completion_logprobs(repeated, [g.token_ids for g in flat])
    assert _max_error(flat, plain) > 0.1  # the adapter is really in the loop


@pytest.mark.parametrize("micro_batch_size", [None, 4])
def test_shared_prefix_scoring_equals_full_sequences(policy, prompts, micro_batch_size):
    """The fast path (each prompt encoded once, its KV cache shared by its completions) gives the
    same logprobs and gradients as one full forward per (prompt, completion) row."""
    flat, repeated = _sample(policy, prompts, 1.0)
    # Shuffled rows with different completion lengths, as μ > 1 minibatches would have.
    order = np.random.default_rng(0).permutation(len(flat)).tolist()
    rows = [repeated[i] for i in order]
    comps = [flat[i].token_ids[: max(1, len(flat[i].token_ids) - 3 * (i % 3))] for i in order]
    weights = None
    results = []
    for shared in (True, False):
        policy.shared_prefix = shared
        policy.model.zero_grad()
        out = policy.completion_logprobs(
            rows, comps, with_grad=True, micro_batch_size=micro_batch_size
        )
        if weights is None:
            weights = torch.linspace(-1, 1, out.logprobs.shape[1])
        (out.logprobs * weights * out.mask).sum().backward()
        grad = torch.cat(
            [p.grad.flatten() for p in policy.model.parameters() if p.grad is not None]
        )
        results.append((out.logprobs.detach(), out.mask, grad))
    policy.shared_prefix = True
    (a, mask_a, ga), (b, mask_b, gb) = results
    assert torch.equal(mask_a, mask_b)
    assert (a - b)[mask_a].abs().max().item() < 1e-4
    assert ((ga - gb).norm() / ga.norm()).item() < 1e-4
