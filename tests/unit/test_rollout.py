"""The pure parts of the rollout backends (rollout/base.py, hf.py, vllm.py), tested without vLLM.

The vLLM-shaped objects below are plain ``SimpleNamespace``s with the fields our converter reads
(``RequestOutput.outputs[i].{index, token_ids, logprobs, finish_reason}``; a per-token logprob is
a dict token id → object with ``.logprob``): they test OUR conversion, not vLLM.
"""

from __future__ import annotations

import copy
import importlib.util
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from ivr.config import ConfigError, load_config
from ivr.models.policy import Policy
from ivr.rollout.base import RolloutBackend, make_backend, recompute_enabled, recompute_logprobs
from ivr.rollout.hf import HFBackend
from ivr.rollout.vllm import (
    banned_token_params,
    build_request,
    merged_named_weights,
    sampling_kwargs,
    to_generations,
    vllm_weight_name,
)
from ivr.types import Prompt


@pytest.fixture(scope="module")
def policy(tiny_qwen25_dir) -> Policy:
    return Policy.from_pretrained(tiny_qwen25_dir)


def _prompt(n_images: int, text: str = "How many?") -> Prompt:
    images = tuple(Image.new("RGB", (56, 56), c) for c in ("red", "blue")[:n_images])
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": text}]
    return Prompt(messages=({"role": "user", "content": content},), images=images)


# ---------------------------------------------------------------- requests
def test_request_is_the_chat_template_text_plus_the_images(policy) -> None:
    one, two, none = _prompt(1), _prompt(2), _prompt(0)
    r1 = build_request(policy.processor, one)
    expected = policy.processor.apply_chat_template(
        list(one.messages), tokenize=False, add_generation_prompt=True
    )
    assert r1["prompt"] == expected and r1["prompt"].count("<|image_pad|>") == 1
    assert r1["multi_modal_data"] == {"image": one.images[0]}  # one image: not wrapped in a list
    r2 = build_request(policy.processor, two)
    assert r2["prompt"].count("<|image_pad|>") == 2
    assert r2["multi_modal_data"] == {"image": list(two.images)}
    assert "multi_modal_data" not in build_request(policy.processor, none)
    bad = Prompt(messages=one.messages, images=())
    with pytest.raises(ValueError, match="1 image placeholder"):
        build_request(policy.processor, bad)


# ---------------------------------------------------------------- banned tokens
def test_banned_vision_tokens_become_bad_words_that_encode_to_exactly_those_ids(policy) -> None:
    tok = policy.tokenizer
    params = banned_token_params(tok, policy.suppressed_token_ids)
    assert set(params) == {"bad_words"}
    assert "<|image_pad|>" in params["bad_words"]
    ids = [tok.encode(w, add_special_tokens=False) for w in params["bad_words"]]
    assert ids == [[i] for i in sorted(policy.suppressed_token_ids)]
    assert banned_token_params(tok, []) == {}


def test_a_banned_id_without_a_round_trip_string_falls_back_to_allowed_ids(policy) -> None:
    tok = policy.tokenizer
    plain = next(
        i
        for i in range(300, len(tok))
        if tok.encode(tok.convert_ids_to_tokens(i), add_special_tokens=False) != [i]
    )
    banned = [*policy.suppressed_token_ids, plain]
    params = banned_token_params(tok, banned)
    assert set(params) == {"allowed_token_ids"}
    allowed = params["allowed_token_ids"]
    assert len(allowed) == len(tok) - len(set(banned)) and not set(allowed) & set(banned)


# ---------------------------------------------------------------- sampling params
def test_sampling_kwargs_match_policy_generate_conventions() -> None:
    kw = sampling_kwargs(
        n=8,
        temperature=1.0,
        top_p=0.99,
        top_k=0,
        max_new_tokens=64,
        stop_token_ids=(5, 7),
        seed=100,
        banned={"bad_words": ["<|image_pad|>"]},
    )
    assert kw == {
        "n": 8,
        "temperature": 1.0,
        "top_p": 0.99,
        "max_tokens": 64,
        "stop_token_ids": [5, 7],
        "repetition_penalty": 1.0,
        "logprobs": 0,  # the sampled token's logprob only
        "skip_special_tokens": True,
        "seed": 100,
        "bad_words": ["<|image_pad|>"],
    }
    greedy = sampling_kwargs(
        n=8,
        temperature=0.0,
        top_p=0.5,
        top_k=20,
        max_new_tokens=4,
        stop_token_ids=(5,),
        seed=None,
        banned={},
    )
    assert greedy["n"] == 1 and greedy["temperature"] == 0.0 and greedy["top_p"] == 1.0
    assert "top_k" not in greedy and "seed" not in greedy
    top_k = sampling_kwargs(
        n=2,
        temperature=0.7,
        top_p=1.0,
        top_k=20,
        max_new_tokens=4,
        stop_token_ids=(5,),
        seed=None,
        banned={},
    )
    assert top_k["top_k"] == 20 and top_k["temperature"] == 0.7


# ---------------------------------------------------------------- outputs
def _lp(token: int, value: float) -> dict[int, SimpleNamespace]:
    return {token: SimpleNamespace(logprob=value, rank=1)}


def _completion(index, ids, logprobs, reason):
    return SimpleNamespace(index=index, token_ids=ids, logprobs=logprobs, finish_reason=reason)


def test_outputs_become_generations_with_policy_conventions() -> None:
    eos = (9, 10)
    out = SimpleNamespace(
        outputs=[
            # listed out of order: the converter sorts by sample index
            _completion(1, [3, 4, 5], [_lp(3, -0.1), _lp(4, -0.2), _lp(5, -0.3)], "length"),
            _completion(
                0, [1, 2, 10], [_lp(1, -1.0), _lp(2, -2.0), _lp(10, -0.5)], "stop"
            ),  # ends with eos
            _completion(2, [6, 9, 9], [_lp(6, -0.6), _lp(9, -0.9), _lp(9, -0.9)], "stop"),
        ]
    )
    seen = []

    def decode(ids):
        seen.append(list(ids))
        return " ".join(map(str, ids))

    g = to_generations(out, eos_ids=eos, decode=decode)
    assert [x.token_ids for x in g] == [(1, 2, 10), (3, 4, 5), (6, 9)]  # cut after the first eos
    assert [x.logprobs for x in g] == [(-1.0, -2.0, -0.5), (-0.1, -0.2, -0.3), (-0.6, -0.9)]
    assert [x.finished for x in g] == [True, False, True]
    assert [x.text for x in g] == ["1 2 10", "3 4 5", "6 9"] and seen[0] == [1, 2, 10]


def test_outputs_without_logprobs_and_mismatches() -> None:
    out = SimpleNamespace(outputs=[_completion(0, (4, 5), None, "length")])
    (g,) = to_generations(out, eos_ids=(9,), decode=lambda ids: "")
    assert g.logprobs is None and g.token_ids == (4, 5) and not g.finished
    short = SimpleNamespace(outputs=[_completion(0, [4, 5], [_lp(4, -1.0)], "length")])
    with pytest.raises(ValueError, match="1 logprobs for 2 tokens"):
        to_generations(short, eos_ids=(9,), decode=lambda ids: "")


# ---------------------------------------------------------------- weights
def test_weight_names_strip_peft_wrappers_and_skip_adapters() -> None:
    assert vllm_weight_name("model.language_model.embed_tokens.weight") == (
        "model.language_model.embed_tokens.weight"
    )
    assert (
        vllm_weight_name("base_model.model.model.visual.blocks.0.attn.qkv.base_layer.bias")
        == "model.visual.blocks.0.attn.qkv.bias"
    )
    for adapter in ("lora_A.default.weight", "lora_B.default.weight", "lora_embedding_A.default"):
        assert vllm_weight_name(f"base_model.model.model.layers.0.q_proj.{adapter}") is None
    assert vllm_weight_name("base_model.model.head.modules_to_save.default.weight") == (
        "head.weight"
    )
    assert vllm_weight_name("base_model.model.head.original_module.weight") is None


def test_plain_model_weights_are_its_parameters_and_changed_only_the_trainable(
    tiny_qwen25_dir,
) -> None:
    model = Policy.from_pretrained(tiny_qwen25_dir).model
    all_w = dict(merged_named_weights(model))
    assert list(all_w) == [n for n, _ in model.named_parameters()]
    assert set(all_w) <= set(model.state_dict())  # checkpoint names: what load_weights maps
    for name, p in model.named_parameters():
        assert all_w[name] is not p and all_w[name].data_ptr() == p.data_ptr()  # no copies
    for name, p in model.named_parameters():
        if "visual" in name:
            p.requires_grad_(False)
    changed = [n for n, _ in merged_named_weights(model, changed_only=True)]
    assert changed and not any("visual" in n for n in changed)
    assert changed == [n for n, p in model.named_parameters() if p.requires_grad]


def test_lora_weights_are_merged_on_the_fly_without_touching_the_training_weights(
    tiny_qwen25_dir,
) -> None:
    from peft import LoraConfig, get_peft_model

    base = Policy.from_pretrained(tiny_qwen25_dir).model
    names, n_params = set(base.state_dict()), len(list(base.parameters()))
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    torch.manual_seed(0)
    with torch.no_grad():  # lora_B starts at zero (ΔW = 0): make the adapters do something
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    merged = {n: t.clone() for n, t in merged_named_weights(model)}
    reference = copy.deepcopy(model).merge_and_unload().state_dict()  # peft's own merge
    # Checkpoint names, one per base parameter, no adapter tensors; the values are peft's merge.
    assert set(merged) <= names and len(merged) == n_params
    assert all(torch.allclose(merged[n], reference[n], atol=1e-6) for n in merged)
    unmerged = {
        n.removeprefix("base_model.model.").replace(".base_layer", ""): p
        for n, p in before.items()
        if "lora_" not in n
    }
    adapted = [n for n in merged if not torch.allclose(merged[n], unmerged[n])]
    assert adapted  # ΔW ≠ 0 reached the merged weights …
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # … not the model
    # Under LoRA only the adapted layers can change: changed_only sends exactly those.
    changed = [n for n, _ in merged_named_weights(model, changed_only=True)]
    lora_layers = {
        n.removeprefix("base_model.model.").rsplit(".lora_A", 1)[0]
        for n in before
        if ".lora_A." in n
    }
    assert sorted(changed) == sorted(f"{layer}.weight" for layer in lora_layers)
    assert set(adapted) <= set(changed)


# ---------------------------------------------------------------- config and factory
def test_recompute_knob_resolves_per_backend() -> None:
    def rollout(*o):
        return load_config(None, list(o)).rollout

    assert recompute_enabled(rollout()) is False  # hf: sampling logprobs are exact
    assert recompute_enabled(rollout("rollout.backend=vllm")) is True
    assert (
        recompute_enabled(rollout("rollout.backend=vllm", "rollout.recompute_logprobs=false"))
        is False
    )
    assert recompute_enabled(rollout("rollout.recompute_logprobs=true")) is True
    with pytest.raises(ConfigError, match="recompute_logprobs"):
        load_config(None, ["rollout.recompute_logprobs=sometimes"])
    with pytest.raises(ConfigError, match="vllm_gpu_memory_utilization"):
        load_config(None, ["rollout.vllm_gpu_memory_utilization=1.5"])


def test_mismatch_correction_resolves_per_backend_and_forces_the_recompute() -> None:
    from ivr.rollout import mismatch_correction

    def rollout(*o):
        return load_config(None, list(o)).rollout

    assert mismatch_correction(rollout()) == "none"  # hf: μ is the training forward's
    assert mismatch_correction(rollout("rollout.backend=vllm")) == "tis"
    # no training-forward π_old to compare with: auto turns itself off
    vllm_no_recompute = rollout("rollout.backend=vllm", "rollout.recompute_logprobs=false")
    assert mismatch_correction(vllm_no_recompute) == "none"
    assert (
        mismatch_correction(rollout("rollout.backend=vllm", "rollout.is_correction=mis")) == "mis"
    )
    # hf + tis: π_old is recomputed (one no-grad forward) so that there is something to correct
    hf_tis = rollout("rollout.is_correction=tis")
    assert mismatch_correction(hf_tis) == "tis" and recompute_enabled(hf_tis) is True
    assert recompute_enabled(rollout("rollout.is_correction=none")) is False


def test_recompute_keeps_the_samplers_logprobs_as_behaviour(policy) -> None:
    gens = policy.generate([_prompt(1)], max_new_tokens=4, num_return_sequences=2, seed=3)
    fake = [[replace(g, logprobs=tuple(x - 0.5 for x in g.logprobs)) for g in gens[0]]]
    out = recompute_logprobs(policy, [_prompt(1)], fake, temperature=1.0)
    for g, f, o in zip(gens[0], fake[0], out[0]):
        assert o.behaviour_logprobs == f.logprobs  # μ: what the sampler said
        assert o.logprobs == pytest.approx(g.logprobs, abs=1e-4)  # π_old: the training forward


def test_hf_backend_is_the_policy(policy) -> None:
    cfg = load_config(None, [])
    backend = make_backend(cfg, policy)
    assert isinstance(backend, HFBackend) and isinstance(backend, RolloutBackend)
    prompts = [_prompt(1)]
    a = backend.generate(prompts, max_new_tokens=5, num_return_sequences=3, seed=7)
    b = policy.generate(prompts, max_new_tokens=5, num_return_sequences=3, seed=7)
    assert a == b
    backend.sync_weights(policy.model)  # no-op
    backend.close()


def test_vllm_backend_errors_name_the_knob_and_the_extra(policy, tiny_qwen25_dir) -> None:
    with pytest.raises(ValueError, match="model.path"):
        make_backend(load_config(None, ["rollout.backend=vllm"]), policy)
    if importlib.util.find_spec("vllm") is not None and torch.cuda.is_available():
        pytest.skip("vLLM and a GPU are present: the error path cannot be reached")
    cfg = load_config(None, ["rollout.backend=vllm", f"model.path={tiny_qwen25_dir}"])
    with pytest.raises((ImportError, RuntimeError)) as err:
        make_backend(cfg, policy)
    assert "rollout.backend=vllm" in str(err.value) and "pip install 'ivr[vllm]'" in str(err.value)


# ---------------------------------------------------------------- registry and capabilities
def test_registry_matches_the_config_choices() -> None:
    """The config validates ``rollout.backend`` without importing torch: its list of names is the
    registry's."""
    from ivr.config import _CHOICES
    from ivr.rollout.base import BACKENDS

    assert set(BACKENDS) == set(_CHOICES["rollout.backend"])


def test_capabilities_are_what_the_trainer_reads() -> None:
    from ivr.rollout.vllm import VLLMBackend

    assert HFBackend.shares_policy_weights and HFBackend.logprobs_match_training
    assert not VLLMBackend.shares_policy_weights and not VLLMBackend.logprobs_match_training


def test_a_new_backend_is_one_class_and_one_registry_entry(policy, monkeypatch) -> None:
    """What rollout/__init__.py promises: a class with the Protocol's members, one entry in
    ``BACKENDS``, and the factory and the recompute knob follow (no trainer change)."""
    import dataclasses

    from ivr.rollout import base

    class EchoBackend:
        shares_policy_weights = False
        logprobs_match_training = False

        def __init__(self, policy):
            self.generate = policy.generate

        @classmethod
        def from_config(cls, cfg, policy):
            return cls(policy)

        def sync_weights(self, model) -> None:
            pass

        def close(self) -> None:
            pass

    monkeypatch.setitem(base.BACKENDS, "echo", EchoBackend)
    cfg = load_config(None, [])
    cfg = dataclasses.replace(cfg, rollout=dataclasses.replace(cfg.rollout, backend="echo"))
    backend = make_backend(cfg, policy)
    assert isinstance(backend, EchoBackend) and isinstance(backend, RolloutBackend)
    assert recompute_enabled(cfg.rollout) is True  # its logprobs are not the training forward's
    bad = dataclasses.replace(cfg, rollout=dataclasses.replace(cfg.rollout, backend="nope"))
    with pytest.raises(ValueError, match="rollout.backend = 'nope'; expected 'hf' or 'vllm'"):
        make_backend(bad, policy)
