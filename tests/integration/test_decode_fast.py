"""The cheaper sampling of IVR's loop (issue 15, item 5): finished rows leave the decode batch and
image features are reused across calls — the same tokens, the same recorded log π, less work."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from ivr.models import decode
from ivr.models.policy import chat_prompt


def eos_biased(policy, bias: float = 4.0):
    """Make eos likely, so rows end at different lengths (a random model rarely ends)."""
    eos = torch.tensor([policy.eos_token_ids[0]])
    return policy.model.get_output_embeddings().register_forward_hook(
        lambda m, i, out: out.index_add(-1, eos, torch.full((*out.shape[:-1], 1), bias))
    )


@pytest.fixture
def prompts():
    ims = [Image.new("RGB", (56 + 28 * (i % 3), 56), (50 * i, 90, 200 - 30 * i)) for i in range(4)]
    return [chat_prompt(f"question {i}: {'the shape ' * (i % 4)}?", [ims[i % 4]]) for i in range(7)]


def _run(policy, prompts, **kw):
    return [
        [(g.token_ids, torch.tensor(g.logprobs)) for g in gs]
        for gs in policy.generate(prompts, max_new_tokens=32, **kw)
    ]


@pytest.mark.parametrize(
    "kw",
    [
        dict(temperature=0),
        dict(temperature=1.0, seed=3),
        dict(temperature=0.8, top_p=0.9, num_return_sequences=3, seed=4),
    ],
    ids=["greedy", "sample", "group-top-p"],
)
def test_dropping_finished_rows_changes_nothing(policy, prompts, monkeypatch, kw):
    hook = eos_biased(policy)
    try:
        dropped = _run(policy, prompts, **kw)
        monkeypatch.setattr(decode, "DROP_FINISHED", 2.0)  # never drop
        kept = _run(policy, prompts, **kw)
    finally:
        hook.remove()
    lengths = {len(ids) for gs in dropped for ids, _ in gs}
    assert len(lengths) > 2  # rows did finish at different steps
    for a, b in zip(dropped, kept):
        for (ids_a, lp_a), (ids_b, lp_b) in zip(a, b):
            assert ids_a == ids_b  # the same uniforms are drawn: the same tokens
            torch.testing.assert_close(
                lp_a, lp_b, atol=2e-5, rtol=0
            )  # float32: batch shape changes the sums


def test_vision_features_reused_until_the_weights_change(policy, prompts):
    memo = decode.VisionMemo.of(policy)
    assert memo is not None
    first = _run(policy, prompts, temperature=0)
    encoded = memo.encoded
    again = _run(policy, prompts, temperature=0)  # the same image objects: no tower run
    assert memo.encoded == encoded
    for a, b in zip(first, again):
        assert a[0][0] == b[0][0]
        torch.testing.assert_close(a[0][1], b[0][1], atol=1e-6, rtol=0)
    policy.reuse_vision_features = False
    try:
        plain = _run(policy, prompts, temperature=0)  # the tower on every image, as before
    finally:
        del policy.reuse_vision_features
    for a, b in zip(first, plain):
        assert a[0][0] == b[0][0]
        torch.testing.assert_close(
            a[0][1], b[0][1], atol=2e-5, rtol=0
        )  # float32: batch shape changes the sums
    # an optimiser step on the vision tower bumps its version counters: features recomputed
    visual = policy._base_model().model.visual
    params = [p for p in visual.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.0)
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()
    _run(policy, prompts[:2], temperature=0)
    assert memo.encoded == encoded + 2


def test_preallocated_cache_and_native_gqa_change_nothing(policy, prompts, monkeypatch):
    hook = eos_biased(policy)
    try:
        fast = _run(policy, prompts, temperature=1.0, seed=11)
        monkeypatch.setattr(decode, "_preallocated", lambda cache, room: cache)  # torch.cat
        monkeypatch.setenv("TRANSFORMERS_SDPA_FORCE_GQA", "0")  # repeat_kv, as before
        plain = _run(policy, prompts, temperature=1.0, seed=11)
    finally:
        hook.remove()
    for a, b in zip(fast, plain):
        assert a[0][0] == b[0][0]
        torch.testing.assert_close(
            a[0][1], b[0][1], atol=2e-5, rtol=0
        )  # float32: batch shape changes the sums


@pytest.mark.parametrize("padded", [True, False], ids=["ragged-prompts", "equal-prompts"])
def test_direct_one_token_forward_is_the_full_forward(policy, prompts, monkeypatch, padded):
    """The decode step on the text model and head directly (4-D mask of the one query, or none
    without padding) gives bit-for-bit the full model forward's tokens and log π."""
    rows = prompts if padded else [prompts[0]] * 3  # one prompt length: no row is padded
    kw = dict(temperature=1.0, num_return_sequences=3, seed=5)
    calls = []
    real = decode._one_token_forward
    monkeypatch.setattr(
        decode,
        "_one_token_forward",
        lambda p, padded, **kw: calls.append((padded, kw)) or real(p, padded, **kw),
    )
    assert real(policy, padded).__name__ == "direct"  # these models take the direct path
    direct = _run(policy, rows, **kw)
    monkeypatch.setattr(decode, "DIRECT_STEP", False)
    assert real(policy, padded).__name__ == "full"
    full = _run(policy, rows, **kw)
    assert calls == [(padded, {"plain_cache": True})] * 2  # preallocated full-attention cache
    for a, b in zip(direct, full):
        for (ids_a, lp_a), (ids_b, lp_b) in zip(a, b):
            assert ids_a == ids_b
            assert torch.equal(lp_a, lp_b)


def test_direct_step_only_on_plain_full_attention_caches(policy) -> None:
    """A sliding-window (or any other non-plain) cache layer keeps the full forward, which
    builds the window's mask itself."""
    assert decode._one_token_forward(policy, True, plain_cache=True).__name__ == "direct"
    assert decode._one_token_forward(policy, True, plain_cache=False).__name__ == "full"
