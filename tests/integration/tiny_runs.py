"""Shared by the integration tests that train a few steps of a tiny VLM."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ivr.config import load_config
from ivr.data.images import load_image
from ivr.data.prompts import PromptSet, question_prompt
from ivr.models.policy import Policy
from ivr.rl.trainer import Trainer
from ivr.types import Sample


def cfg_for(tmp_path: Path, model_dir: Path, *extra: str):
    return load_config(
        None,
        [
            f"model.path={model_dir}",
            "model.device=cpu",
            f"train.output_dir={tmp_path / 'run'}",
            "train.prompts_per_step=2",
            "rollout.group_size=4",
            "rollout.max_new_tokens=6",
            "rollout.top_p=1.0",
            "algo.lr=0.02",
            "algo.micro_batch_size=4",
            "log.progress=false",
            "log.tensorboard=false",
            *extra,
        ],
    )


def first_token_probs(policy: Policy, sample: Sample) -> torch.Tensor:
    """π(first completion token | original prompt), over the vocabulary."""
    prompt = question_prompt(sample, [load_image(p) for p in sample.images], PromptSet())
    with torch.no_grad():
        logits = policy.model(**policy.encode([prompt])).logits[0, -1]
    return logits.float().softmax(-1)


def preferred_token_trainer(
    tmp_path: Path, model_dir: Path, samples: list[Sample], *extra: str
) -> tuple[Trainer, int, torch.Tensor]:
    """The learning test every switch is held to: 6 steps on one prompt (twice per step) whose
    only reward is a completion starting with one plain token the random model already samples
    now and then (p 1–20%). Returns (the trainer, that token's id, ``first_token_probs`` before
    training); a switch "trains" if the token's probability more than doubles."""
    cfg = cfg_for(
        tmp_path,
        model_dir,
        "train.steps=6",
        "rollout.group_size=8",
        "rollout.max_new_tokens=3",
        "train.save_every=0",
        "reward.format_weight=0.0",
        *extra,
    )
    trainer = Trainer(cfg, samples=samples[:1] * 2)
    before = first_token_probs(trainer.policy, samples[0])
    tok = trainer.policy.tokenizer
    target = next(
        int(i)
        for i in before.argsort(descending=True)[1:]
        if tok.decode([int(i)]).strip().isalnum() and 0.01 < before[i] < 0.2
    )
    word = tok.decode([target])

    def prefers_target(completions, **_):
        return [1.0 if c.startswith(word) else 0.0 for c in completions]

    trainer.scorer = replace(trainer.scorer, extra=((prefers_target, 1.0),))
    return trainer, target, before


def kill_at_step(trainer: Trainer, step: int, monkeypatch) -> None:
    """Run ``trainer`` until it is killed (KeyboardInterrupt) at the start of ``step``, as a user's
    Ctrl-C would; the checkpoints it saved before stay for a resume."""
    real_step = Trainer.step

    def dying_step(self, s):
        if s == step:
            raise KeyboardInterrupt
        return real_step(self, s)

    with monkeypatch.context() as m:
        m.setattr(Trainer, "step", dying_step)
        with pytest.raises(KeyboardInterrupt):
            trainer.train()
