"""``Policy.logprob_chunk_size`` on the tiny Qwen VLMs: chunked scoring gives the same
log-probabilities, entropies and parameter gradients as the whole-tensor formula (chunk 0),
on both scoring paths (shared prompt prefix, full sequences) and at temperature ≠ 1."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ivr.models.policy import Policy, chat_prompt


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl"])
def policy(request) -> Policy:
    name = {"qwen2_5_vl": "tiny_qwen25_dir", "qwen3_vl": "tiny_qwen3_dir"}[request.param]
    return Policy.from_pretrained(request.getfixturevalue(name))


def _image(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (56, 84, 3), dtype=np.uint8))


def _score(policy: Policy, chunk: int, shared: bool, temperature: float):
    prompts = [chat_prompt("How many shapes?", [_image(0)]), chat_prompt("Colours?", [_image(1)])]
    rows = [prompts[0], prompts[0], prompts[1]]  # two rows share a prompt
    comps = [[5, 9, 11, 40, 7], [12, 3], [8, 8, 30, 2, 19, 22, 6]]  # ragged: padding scored too
    policy.model.zero_grad(set_to_none=True)
    policy.logprob_chunk_size, policy.shared_prefix = chunk, shared
    try:
        out = policy.completion_logprobs(
            rows, comps, temperature=temperature, with_grad=True, return_entropy=True
        )
    finally:
        policy.logprob_chunk_size, policy.shared_prefix = Policy.logprob_chunk_size, True
    w = torch.linspace(-1.0, 1.0, out.logprobs.numel()).view_as(out.logprobs)
    ((out.logprobs * w).sum() + (out.entropy * w.flip(1)).sum()).backward()
    grads = {n: p.grad.clone() for n, p in policy.model.named_parameters() if p.grad is not None}
    return out, grads


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_scoring_matches_whole_tensor(policy, shared, temperature):
    ref, ref_g = _score(policy, 0, shared, temperature)
    for chunk in (3, 7, 1024):  # token slices of one row; one row; everything at once
        out, g = _score(policy, chunk, shared, temperature)
        assert torch.equal(out.mask, ref.mask)
        torch.testing.assert_close(out.logprobs, ref.logprobs, rtol=1e-6, atol=1e-5)
        torch.testing.assert_close(out.entropy, ref.entropy, rtol=1e-6, atol=1e-5)
        assert (out.logprobs[~out.mask] == 0).all() and (out.entropy[~out.mask] == 0).all()
        assert g.keys() == ref_g.keys() and len(g) > 0
        for name in g:  # float32 rounding of a different summation order: ~1e-6 of the norm
            err = (g[name] - ref_g[name]).norm() / ref_g[name].norm().clamp(min=1e-12)
            assert err < 1e-5, (name, err.item())
