"""The pure parts of the one-step off-policy overlap (rollout/overlap.py, ``train.staleness``):
the version schedule, the speed-up model, the config checks, the behaviour-logprob plumbing and
the private sampling generator. Expected numbers derived by hand in the comments."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from ivr.config import ConfigError, load_config
from ivr.models.decode import _SamplingProcessor
from ivr.rollout.base import recompute_logprobs
from ivr.rollout.overlap import overlap_speedup, sampler_version
from ivr.types import Generation


def test_sampler_version_schedule() -> None:
    # v = completed updates; step t starts at v = t − 1. Staleness 1 samples step t at t − 2,
    # except the first step of a run and the step after a checkpoint ((t − 1) % save_every = 0).
    def table(start, save_every, steps, staleness=1):
        kw = dict(start_step=start, staleness=staleness, save_every=save_every)
        return [sampler_version(t, **kw) for t in steps]

    # no checkpoints: 1 → 0 (first), 2 → 0, 3 → 1, 4 → 2, 5 → 3
    assert table(0, 0, range(1, 6)) == [0, 0, 1, 2, 3]
    # save_every 2: steps 3 and 5 follow checkpoints 2 and 4 → fresh: 0, 0, 2, 2, 4
    assert table(0, 2, range(1, 6)) == [0, 0, 2, 2, 4]
    # resumed at 2 (save_every 2): 3 → 2 (first of the run and a barrier), 4 → 2, 5 → 4
    assert table(2, 2, range(3, 6)) == [2, 2, 4]
    # resumed from an emergency save at 3 (save_every 2): 4 → 3 fresh, 5 → 4 (barrier), 6 → 4
    assert table(3, 2, range(4, 7)) == [3, 4, 4]
    # staleness 0: always t − 1
    assert table(0, 0, range(1, 5), staleness=0) == [0, 1, 2, 3]


def test_overlap_speedup_is_one_over_the_larger_share() -> None:
    # sync step = g + r, overlapped = max(g, r): g = 7, r = 3 → 10 / 7 = 1.4286 (= 1 / f, f = 0.7)
    assert overlap_speedup(7.0, 3.0) == pytest.approx(10 / 7)
    # g = r → the bound 2; g = 6, r = 4 → 10 / 6 = 1.667; g = 1, r = 4 → 5 / 4 = 1 / (1 − f)
    assert overlap_speedup(5.0, 5.0) == 2.0
    assert overlap_speedup(6.0, 4.0) == pytest.approx(5 / 3)
    assert overlap_speedup(1.0, 4.0) == pytest.approx(1.25)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.staleness=2"], "must be 0 .synchronous. or 1"),
        (["train.staleness=1", "rollout.backend=vllm"], "needs rollout.backend = hf"),
        (["train.staleness=1", "train.sharding=fsdp"], "train.sharding = fsdp"),
        (
            ["train.staleness=1", "model.load_in_4bit=true", "model.lora_rank=8"],
            "model.load_in_4bit",
        ),
    ],
)
def test_config_rejects_what_the_overlap_cannot_do(overrides, message) -> None:
    with pytest.raises(ConfigError, match=r"`train.staleness` = \d+ .*" + message):
        load_config(None, overrides)
    assert load_config(None, ["train.staleness=1"]).train.staleness == 1
    assert load_config(None, []).train.staleness == 0  # the synchronous loop by default


def test_sampler_logprobs_survive_the_recompute() -> None:
    # The sampler said log μ = (−1, −2); the training forward says (−0.5, −2.5): logprobs become
    # the recomputed π_old, behaviour_logprobs keep μ, and every other field (version) stays.
    g = Generation("ab", (3, 4), logprobs=(-1.0, -2.0), policy_version=7)
    assert g.sampler_logprobs == (-1.0, -2.0)
    policy = SimpleNamespace(
        completion_logprobs=lambda *a, **k: SimpleNamespace(logprobs=torch.tensor([[-0.5, -2.5]]))
    )
    (new,) = recompute_logprobs(policy, [object()], [[g]], temperature=1.0)[0]
    assert new.logprobs == (-0.5, -2.5) and new.behaviour_logprobs == (-1.0, -2.0)
    assert new.sampler_logprobs == (-1.0, -2.0) and new.policy_version == 7
    # recomputing twice keeps the sampler's, not the first recompute's
    (again,) = recompute_logprobs(policy, [object()], [[new]], temperature=1.0)[0]
    assert again.behaviour_logprobs == (-1.0, -2.0)


def test_private_generator_draws_what_the_global_seed_would() -> None:
    """``generate(seed=s)`` on the shared-prefix path: a private generator instead of
    fork_rng(manual_seed(s)): the same tokens, and the process-wide RNG is not touched."""
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(1))
    proc = _SamplingProcessor(torch.tensor([], dtype=torch.long), 1.0, 0, 1.0)
    torch.manual_seed(5)
    expected, _ = proc.sample(logits)
    state = torch.get_rng_state()
    proc.generator = torch.Generator().manual_seed(5)
    got, _ = proc.sample(logits)
    assert torch.equal(got, expected)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's stream is where it was
