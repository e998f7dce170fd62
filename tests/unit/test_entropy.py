"""Token-entropy masking (Wang et al. 2025, arXiv:2506.01939): hand-derived numbers."""

from __future__ import annotations

import math

import pytest
import torch

from ivr.models.logprobs import token_logprobs
from ivr.rl.entropy import entropy_threshold, token_entropy, top_entropy_mask

# 12 positions, the last two of row 1 padding: 10 valid entropies 0.1 … 1.0 (TRL's test case).
H = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0.7, 0.8, 0.9, 1.0, 1.1, 1.2]])
M = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])


def test_top_20_percent() -> None:
    # n = 10 valid, ρ = 0.2 → k = 2: the 2nd highest valid entropy is 0.9 → keep 0.9 and 1.0
    # (1.1 and 1.2 are padding: neither kept nor counted).
    want = torch.tensor([[0, 0, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0]], dtype=torch.bool)
    assert torch.equal(top_entropy_mask(H, M, 0.2), want)
    assert entropy_threshold(H, M, 0.2).item() == pytest.approx(0.9)


def test_top_half_and_float_rounding() -> None:
    # ρ = 0.5 → k = 5: threshold 0.6 → keep 0.6, 0.7, 0.8, 0.9, 1.0.
    want = torch.tensor([[0, 0, 0, 0, 0, 1], [1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    assert torch.equal(top_entropy_mask(H, M, 0.5), want)
    # ρ = 0.7: 0.7·10 = 7.000000000000001 in floating point; k must be 7 (threshold 0.4), not 8.
    assert int(top_entropy_mask(H, M, 0.7).sum()) == 7


def test_rho_one_keeps_every_valid_token() -> None:
    assert torch.equal(top_entropy_mask(H, M, 1.0), M.bool())


def test_ties_are_all_kept() -> None:
    # Entropies [1, 1, 1, 0], ρ = 0.25 → k = 1, threshold 1: all three tied tokens are kept
    # (share 0.75 ≥ ρ) rather than one picked at random.
    mask = top_entropy_mask(torch.tensor([[1.0, 1.0, 1.0, 0.0]]), torch.ones(1, 4), 0.25)
    assert mask.tolist() == [[True, True, True, False]]


def test_empty_mask_and_bad_rho() -> None:
    assert not top_entropy_mask(H, torch.zeros_like(M), 0.2).any()
    for rho in (0.0, 1.5):
        with pytest.raises(ValueError, match="rho must be in"):
            top_entropy_mask(H, M, rho)


def test_given_threshold() -> None:
    # A threshold pooled over a larger batch (here 0.95) replaces this call's own.
    mask = top_entropy_mask(H, M, 0.2, threshold=torch.tensor(0.95))
    assert mask.sum().item() == 1 and mask[1, 3]


def test_token_entropy_hand_numbers() -> None:
    # uniform over 4 → ln 4 = 1.386294; one-hot (the rest −inf, suppressed) → 0;
    # p = [½, ¼, ¼] → ½ ln 2 + 2·¼ ln 4 = 0.346574 + 0.693147 = 1.039721.
    # temperature 2 on [0, 2 ln 3, −inf]: [0, ln 3] → p = [¼, ¾] → ¼ ln 4 + ¾ ln(4/3) = 0.562335.
    inf = float("inf")
    logits = torch.tensor(
        [
            [[0.0, 0.0, 0.0, 0.0], [0.0, -inf, -inf, -inf]],
            [[math.log(0.5), math.log(0.25), math.log(0.25), -inf], [0.0, 0.0, 0.0, 0.0]],
        ]
    )
    ent = token_entropy(logits, chunk_size=3)
    torch.testing.assert_close(ent, torch.tensor([[1.386294, 0.0], [1.039721, 1.386294]]))
    t2 = token_entropy(torch.tensor([[[0.0, 2 * math.log(3), -inf]]]), temperature=2.0)
    assert t2.item() == pytest.approx(0.562335, abs=1e-6)
    masked = token_entropy(logits, torch.tensor([[1, 0], [1, 1]]))
    assert masked[0, 1].item() == 0.0 and masked[1, 1].item() == pytest.approx(1.386294)


def test_token_entropy_chunk_invariant_detached_and_equal_to_the_training_forward() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 5, 11, generator=gen) * 3).requires_grad_(True)
    a = token_entropy(logits, chunk_size=1)
    b = token_entropy(logits, chunk_size=1000)
    torch.testing.assert_close(a, b)
    assert not a.requires_grad and a.dtype == torch.float32
    # the entropy the trainer gets from the logprob pass (models.logprobs.token_logprobs)
    targets = torch.zeros(3, 5, dtype=torch.long)
    _, ref = token_logprobs(logits, targets, temperature=1.3, entropy=True, entropy_grad=False)
    assert ref is not None
    torch.testing.assert_close(token_entropy(logits, temperature=1.3), ref)
