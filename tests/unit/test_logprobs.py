"""Chunked log-probabilities (``ivr.models.logprobs``) against the plain whole-tensor formula.

The reference (``reference_logprobs``) is the formula ``Policy._score`` used before chunking:
float32 copy, suppressed columns −inf, ÷T, logsumexp, gather; entropy = logsumexp − Σ softmax·z
over finite z. Run in float64 it is the truth both float32 paths are measured against.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

from ivr.models.logprobs import reference_logprobs, token_logprobs

SUPPRESSED = torch.tensor([3, 7])


def _case(dtype=torch.float32, b=3, L=9, V=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, L, V, generator=g, dtype=dtype) * 4
    targets = torch.randint(0, V, (b, L - 1), generator=g)
    targets[targets == 3] = 4  # real tokens are never suppressed ones …
    targets[1, -2:] = 7  # … but padding may be (pad ∈ suppressed): −inf, masked by the caller
    weights = torch.randn(2, b, L - 1, generator=g, dtype=dtype)
    return logits, targets, weights


def _run(fn, logits, targets, weights, **kw):
    """Value and gradient of Σ w₀·logp + Σ w₁·H with the −inf (padding) positions masked out."""
    x = logits.clone().requires_grad_()
    lp, ent = fn(x, targets, **kw)
    lp = lp.masked_fill(torch.isinf(lp), 0.0)
    loss = (weights[0] * lp).sum()
    if ent is not None and ent.requires_grad:
        loss = loss + (weights[1] * ent).sum()
    loss.backward()
    return lp.detach(), None if ent is None else ent.detach(), x.grad


def _ref(x, targets, *, suppressed, temperature, entropy, entropy_grad, chunk_size):
    return reference_logprobs(x[:, :-1], targets, suppressed, temperature, entropy, entropy_grad)


@pytest.mark.parametrize("chunk_size", [1, 5, 8, 16, 1000])
@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.0])
@pytest.mark.parametrize("entropy,entropy_grad", [(False, True), (True, True), (True, False)])
def test_chunked_matches_whole_tensor(chunk_size, temperature, entropy, entropy_grad):
    """chunk 1: one token per chunk; 5 (< T = 8): token slices, ragged last; 8: one row per
    chunk; 16: two rows per chunk, ragged last; 1000: everything in one chunk.

    Both float32 paths are compared with the float64 truth: the chunked one is within 2e-6 of
    it (values up to ~30 nats, gradients up to ~2) and never further than the old formula,
    whose entropy (logsumexp − Σ p·z) loses ~5e-6 to cancellation; the chunked entropy is
    −Σ p·log p."""
    logits, targets, weights = _case()
    kw = dict(
        suppressed=SUPPRESSED,
        temperature=temperature,
        entropy=entropy,
        entropy_grad=entropy_grad,
        chunk_size=chunk_size,
    )
    truth = _run(_ref, logits.double(), targets, weights.double(), **kw)
    old = _run(_ref, logits, targets, weights, **kw)
    new = _run(token_logprobs, logits, targets, weights, **kw)
    assert new[0].dtype == torch.float32 and new[0].shape == targets.shape
    for t, o, n in zip(truth, old, new):
        if t is None:
            assert n is None
            continue
        torch.testing.assert_close(n.double(), t, rtol=1e-6, atol=2e-6)
        torch.testing.assert_close(n, o, rtol=1e-6, atol=1e-5)
        assert (n.double() - t).abs().max() <= (o.double() - t).abs().max() + 1e-7
    g = new[2]
    assert g[:, -1].abs().sum() == 0  # the trailing (unscored) position gets no gradient
    assert g[..., SUPPRESSED].abs().sum() == 0  # nor do the suppressed columns


def test_hand_values():
    """V = 3, logits [0, 0, ln 2] with column 1 suppressed: π = [1/3, 0, 2/3].
    log π(2) = ln(2/3); H = −(1/3 ln 1/3 + 2/3 ln 2/3) = ln 3 − (2/3) ln 2.
    At T = 0.5: z = [0, −inf, 2 ln 2] → π = [1/5, 0, 4/5], log π(0) = ln(1/5)."""
    logits = torch.tensor([[[0.0, 0.0, math.log(2)], [0.0, 0.0, math.log(2)]]])
    lp, ent = token_logprobs(
        logits, torch.tensor([[2, 0]]), suppressed=torch.tensor([1]), entropy=True, chunk_size=1
    )
    torch.testing.assert_close(lp, torch.tensor([[math.log(2 / 3), math.log(1 / 3)]]))
    torch.testing.assert_close(ent[0, 0], torch.tensor(math.log(3) - 2 / 3 * math.log(2)))
    lp, _ = token_logprobs(
        logits, torch.tensor([[0, 2]]), suppressed=torch.tensor([1]), temperature=0.5
    )
    torch.testing.assert_close(lp, torch.tensor([[math.log(1 / 5), math.log(4 / 5)]]))


def test_gradcheck_float64():
    """Float64 stays float64 inside, so the analytic backward can be checked numerically."""
    logits, targets, _ = _case(torch.float64, b=2, L=4, V=6, seed=1)
    targets = targets.clamp(max=2)  # no suppressed target: finite everywhere
    x = logits.requires_grad_()
    for chunk_size, temperature in ((1, 1.0), (2, 0.7), (5, 1.3)):
        fn = functools.partial(
            token_logprobs,
            targets=targets,
            suppressed=torch.tensor([5]),
            temperature=temperature,
            chunk_size=chunk_size,
            entropy=True,
        )
        assert torch.autograd.gradcheck(fn, (x,))


def test_bfloat16_logits_upcast_per_chunk():
    """bf16 logits (the model's dtype on GPU): float32 results, a bf16 gradient, equal to the
    reference up to bf16 rounding of the gradient."""
    logits, targets, weights = _case()
    logits = logits.bfloat16()
    kw = dict(suppressed=SUPPRESSED, temperature=1.0, entropy=True, entropy_grad=True)
    lp_r, ent_r, g_r = _run(_ref, logits, targets, weights.bfloat16(), chunk_size=0, **kw)
    lp_c, ent_c, g_c = _run(token_logprobs, logits, targets, weights.bfloat16(), chunk_size=4, **kw)
    assert lp_c.dtype == torch.float32 and g_c.dtype == torch.bfloat16
    torch.testing.assert_close(lp_c, lp_r, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(ent_c, ent_r, rtol=1e-6, atol=2e-5)
    torch.testing.assert_close(g_c.float(), g_r.float(), rtol=1e-2, atol=1e-3)


def test_no_grad_and_chunk_zero():
    logits, targets, _ = _case()
    with torch.no_grad():
        lp, ent = token_logprobs(logits, targets, suppressed=SUPPRESSED, entropy=True, chunk_size=3)
    lp0, ent0 = token_logprobs(logits, targets, suppressed=SUPPRESSED, entropy=True, chunk_size=0)
    torch.testing.assert_close(lp, lp0.detach(), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(ent, ent0.detach(), rtol=1e-6, atol=2e-5)
    assert not lp.requires_grad
