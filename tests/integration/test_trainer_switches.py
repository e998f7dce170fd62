"""The loss variants, token-entropy masking and the TIS/MIS mismatch correction, switched on from
the config in a short tiny-VLM run: each one trains (the rewarded first token becomes clearly more
likely, as in test_trainer.py's GRPO test) and logs what it did."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from tiny_runs import cfg_for, first_token_probs, preferred_token_trainer

from ivr.models.policy import Policy
from ivr.rl.trainer import Trainer


class PerturbedSampler:
    """A rollout backend that samples from a deep copy of the policy with fixed noise added to
    its LM head (tied to the embeddings in the tiny models): a sampler whose μ differs from the
    trainer's π_old at the same weights, as vLLM's (bf16, other kernels) or a stale copy's does.
    ``sync_weights`` copies the new weights and perturbs them again, with the same noise."""

    shares_policy_weights = False
    logprobs_match_training = False

    def __init__(self, policy: Policy, noise: float) -> None:
        self.noise = noise
        self.sampler = Policy(copy.deepcopy(policy.model), policy.processor)
        self.generate = self.sampler.generate
        self.sync_weights(policy.model)

    def sync_weights(self, model: torch.nn.Module) -> None:
        self.sampler.model.load_state_dict(model.state_dict())
        w = self.sampler.model.get_output_embeddings().weight
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            w.add_(torch.randn(w.shape, generator=g) * self.noise)

    def close(self) -> None:
        pass


def learn_a_first_token(tmp_path, model_dir, samples, *overrides, sampler_noise=None):
    """The shared preferred-token run with ``overrides``; returns (p before, p after, the
    per-step metrics rows)."""
    trainer, target, before = preferred_token_trainer(tmp_path, model_dir, samples, *overrides)
    if sampler_noise is not None:
        trainer.rollout = PerturbedSampler(trainer.policy, sampler_noise)
    trainer.train()
    after = first_token_probs(trainer.policy, samples[0])
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    return before[target].item(), after[target].item(), rows


@pytest.mark.parametrize(
    "overrides",
    [
        # two minibatches per step: the second trains off-policy, where the variants differ
        ("algo.name=gspo", "algo.minibatch_size=8"),
        ("algo.name=cispo", "algo.minibatch_size=8"),
        ("algo.name=sapo", "algo.minibatch_size=8"),
        ("algo.top_entropy_quantile=0.2",),
    ],
    ids=["gspo", "cispo", "sapo", "top_entropy_0.2"],
)
def test_switch_trains(tmp_path, tiny_qwen25_dir, colour_world, overrides) -> None:
    before, after, rows = learn_a_first_token(tmp_path, tiny_qwen25_dir, colour_world, *overrides)
    assert after > 2 * before, (before, after)
    last = rows[-1]
    if "algo.top_entropy_quantile=0.2" in overrides:
        # 80% of the tokens get no policy gradient (ties at the threshold may keep a few more)
        assert all(0.6 <= r["loss/entropy_masked_share"] <= 0.8 for r in rows)
    else:
        assert "loss/entropy_masked_share" not in last
    if "algo.name=gspo" in overrides:
        # GSPO's ε of 3e-4/4e-4: the second minibatch's sequences leave the band
        assert max(r["loss/clip_frac"] for r in rows) > 0
    assert not any(k.startswith("mismatch/") for k in last)  # hf: no correction by default


def test_tis_with_a_perturbed_sampler_reports_the_mismatch_and_trains(
    tmp_path, tiny_qwen25_dir, colour_world
) -> None:
    before, after, rows = learn_a_first_token(
        tmp_path,
        tiny_qwen25_dir,
        colour_world,
        "rollout.is_correction=tis",
        "rollout.is_cap=1.5",
        sampler_noise=0.005,
    )
    assert after > 2 * before, (before, after)
    # π_old (the training forward) vs μ (the perturbed sampler): a real gap at the start
    # (measured 0.37 nats mean, 1.2 max); it shrinks as the policy peaks on the rewarded token
    assert rows[0]["mismatch/log_ratio_abs_mean"] > 0.1
    for r in rows:  # non-zero every step, the max at least the mean; TIS truncates, never masks
        assert r["mismatch/log_ratio_abs_mean"] > 0
        assert r["mismatch/log_ratio_abs_max"] >= r["mismatch/log_ratio_abs_mean"]
        assert r["mismatch/capped_share"] < 0.5 and r["mismatch/masked_share"] == 0.0
        assert "time/old_logprobs" in r  # hf + tis: π_old recomputed by a training forward
    assert any(r["mismatch/capped_share"] > 0 for r in rows)  # some ratios above C = 1.5


def test_mis_at_sequence_level_masks_and_hf_sampler_has_no_mismatch(
    tmp_path, tiny_qwen25_dir, colour_world
) -> None:
    cfg = cfg_for(
        tmp_path / "mis",
        tiny_qwen25_dir,
        "train.steps=1",
        "rollout.is_correction=mis",
        "rollout.is_level=sequence",
        "rollout.is_cap=1.2",
    )
    trainer = Trainer(cfg, samples=colour_world)
    trainer.rollout = PerturbedSampler(trainer.policy, 0.005)
    m = trainer.train()
    assert m["mismatch/masked_share"] > 0 and m["mismatch/capped_share"] == 0.0
    # the HF sampler itself: its logprobs are the training forward's, the weights ~1
    cfg = cfg_for(tmp_path / "hf", tiny_qwen25_dir, "train.steps=1", "rollout.is_correction=tis")
    m = Trainer(cfg, samples=colour_world).train()
    assert m["mismatch/log_ratio_abs_max"] < 1e-3 and m["mismatch/capped_share"] == 0.0
