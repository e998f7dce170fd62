"""Prompt KV reuse between sampling calls (``models/prompt_cache.PromptKV``): IVR-R1's rectify
prompt runs only from where it leaves its critique prompt, with the same tokens sampled."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from tiny_runs import cfg_for

from ivr.data.prompts import PromptSet, user_prompt
from ivr.models.policy import Policy
from ivr.rl.trainer import Trainer

PROMPTS = PromptSet()
ANSWERS = ["it is red", "blue maybe so", "I think it is green and big"]


def _images(colours=("red", "blue", "green")) -> list[Image.Image]:
    return [Image.new("RGB", (56 + 28 * (i % 2), 56), c) for i, c in enumerate(colours)]


def critiques(images):
    return [
        user_prompt(PROMPTS.critique.format(question=f"What colour {i}?", response=a), (im,))
        for i, (im, a) in enumerate(zip(images, ANSWERS))
    ]


def rectifies(images):
    return [
        user_prompt(
            PROMPTS.rectify.format(
                question=f"What colour {i}?", response=a, critique="abc"[: i + 1]
            ),
            (im,),
        )
        for i, (im, a) in enumerate(zip(images, ANSWERS))
    ]


@pytest.fixture(params=["qwen25", "qwen3"])
def model_dir(request, tiny_qwen25_dir, tiny_qwen3_dir):
    return tiny_qwen25_dir if request.param == "qwen25" else tiny_qwen3_dir


def _policy(model_dir, reuse: bool) -> Policy:
    policy = Policy.from_pretrained(model_dir, device="cpu")
    policy.reuse_prompt_kv = reuse
    return policy


def _kv(policy: Policy):
    return policy.__dict__["_prompt_kv"]


def _common_prefix_tokens(policy: Policy, a, b) -> list[int]:
    """Per row, the tokens two prompts share from the start, read off the encoded ids."""
    out = []
    for x, y in zip(policy.encode(a)["input_ids"].tolist(), policy.encode(b)["input_ids"].tolist()):
        x, y = (
            [t for t in x if t != policy.pad_token_id],
            [t for t in y if t != policy.pad_token_id],
        )
        n = next((i for i, (s, t) in enumerate(zip(x, y)) if s != t), min(len(x), len(y)))
        out.append(n)
    return out


def test_rectify_after_critique_reuses_the_shared_prefix_and_samples_the_same(model_dir) -> None:
    images = _images()
    on, off = _policy(model_dir, True), _policy(model_dir, False)
    for policy in (on, off):
        policy.generate(critiques(images), max_new_tokens=6, temperature=0)
    before = _kv(on).reused_tokens
    greedy = [p.generate(rectifies(images), max_new_tokens=8, temperature=0) for p in (on, off)]
    # Reused: per row, exactly the tokens the rectify prompt shares with its critique prompt
    # (template, image, question, previous answer) — counted independently from the ids.
    shared = _common_prefix_tokens(on, critiques(images), rectifies(images))
    assert min(shared) > 16  # more than the 16 image tokens alone
    assert _kv(on).reused_tokens - before == sum(shared)
    for a, b in zip(*greedy):
        assert a[0].token_ids == b[0].token_ids
        assert a[0].logprobs == pytest.approx(b[0].logprobs, abs=1e-5)
    # Chained: the critiques again, now from a cache that was itself built by reuse (a prefix
    # region and a suffix region, pads in the middle): still the same tokens.
    again = [p.generate(critiques(images), max_new_tokens=8, temperature=0) for p in (on, off)]
    assert _kv(on).reused_tokens - before > sum(shared)
    for a, b in zip(*again):
        assert a[0].token_ids == b[0].token_ids
        assert a[0].logprobs == pytest.approx(b[0].logprobs, abs=1e-5)
    # Seeded sampling, 3 samples per prompt: the same draws (the prefix KV was computed in
    # another batch; float order only).
    sampled = [
        p.generate(rectifies(images), max_new_tokens=6, num_return_sequences=3, seed=3)
        for p in (on, off)
    ]
    for a, b in zip(*sampled):
        assert [g.token_ids for g in a] == [g.token_ids for g in b]


def test_no_reuse_across_a_weight_change_or_for_other_images(tiny_qwen25_dir) -> None:
    policy, fresh = _policy(tiny_qwen25_dir, True), _policy(tiny_qwen25_dir, False)
    images = _images()
    policy.generate(critiques(images), max_new_tokens=4, temperature=0)
    kv = _kv(policy)
    # Another image with the very same tokens (both are runs of <|image_pad|>): not reused.
    other = _images(("white", "black", "yellow"))
    got = policy.generate(rectifies(other), max_new_tokens=6, temperature=0)
    assert kv.reused_tokens == 0
    assert [g[0].token_ids for g in got] == [
        g[0].token_ids for g in fresh.generate(rectifies(other), max_new_tokens=6, temperature=0)
    ]
    # The weights move (an in-place update, as an optimiser step): the kept cache is stale.
    policy.generate(critiques(images), max_new_tokens=4, temperature=0)
    with torch.no_grad():
        for p in (policy.model, fresh.model):
            p.get_output_embeddings().weight.mul_(1.5)
    got = policy.generate(rectifies(images), max_new_tokens=6, temperature=0)
    assert kv.reused_tokens == 0
    assert [g[0].token_ids for g in got] == [
        g[0].token_ids for g in fresh.generate(rectifies(images), max_new_tokens=6, temperature=0)
    ]
    # One row without a match (a new image) sends the whole call down the full prefill.
    policy.generate(critiques(images), max_new_tokens=4, temperature=0)
    before = kv.reused_tokens  # (the critiques reused the rectify prompts' beginnings)
    mixed = rectifies(images[:2] + other[2:])
    policy.generate(mixed, max_new_tokens=4, temperature=0)
    assert before > 0 and kv.reused_tokens == before
    # Released before an update: nothing held.
    policy.release_sampling_caches()
    assert kv.kept is None


def test_off_by_default_on_where_the_loop_runs(tmp_path, tiny_qwen25_dir, colour_world) -> None:
    """A plain ``Policy.generate`` holds nothing between calls; the trainer keeps and reuses the
    prompt KV only when the re-reasoning loop runs (``ivr.enabled``), and a step's loop does
    reuse it, the cache released before the update."""
    assert Policy.reuse_prompt_kv is False
    grpo = Trainer(cfg_for(tmp_path / "g", tiny_qwen25_dir), samples=colour_world)
    assert grpo.policy.reuse_prompt_kv is False
    loop = (
        "ivr.enabled=true",
        "ivr.rounds=2",
        "ivr.critique_max_new_tokens=4",
        "train.steps=1",
        "train.save_every=0",
    )
    off = cfg_for(tmp_path / "o", tiny_qwen25_dir, *loop, "rollout.reuse_prompt_kv=false")
    assert Trainer(off, samples=colour_world).policy.reuse_prompt_kv is False  # the config knob
    cfg = cfg_for(tmp_path / "i", tiny_qwen25_dir, *loop)
    ivr = Trainer(cfg, samples=colour_world)
    assert ivr.policy.reuse_prompt_kv is True
    m = ivr.train()
    assert m["ivr/critiqued"] > 0  # random weights: every answer fails, the loop runs
    kv = _kv(ivr.policy)
    assert kv.reused_tokens > 0 and kv.kept is None  # used, then released before the update
