"""``reward.functions`` reaches the trainer: config entries join ``extra_rewards`` in the Scorer,
config first, and their values are in every rollout's reward components."""

from __future__ import annotations

from tiny_runs import cfg_for

from ivr.rl.trainer import Trainer
from ivr.types import Generation


def constant_bonus(completions, **_):
    return [0.25] * len(completions)


def python_bonus(completions, **_):
    return [1.0] * len(completions)


def test_config_rewards_are_added_like_extra_rewards(tmp_path, tiny_qwen25_dir, colour_world):
    cfg = cfg_for(
        tmp_path,
        tiny_qwen25_dir,
        f'reward.functions=[{{fn: "{__name__}:constant_bonus", weight: 2.0}}]',
        "train.steps=1",
        "train.save_every=0",
    )
    trainer = Trainer(cfg, samples=colour_world, extra_rewards=[(python_bonus, 0.5)])
    assert trainer.scorer.extra == ((constant_bonus, 2.0), (python_bonus, 0.5))
    texts = ["<desc>d</desc><think>t</think>\\boxed{red}", "\\boxed{blue}"]
    gens = [[Generation(text=t, token_ids=(1,)) for t in texts]]
    (group,) = trainer.score_groups(colour_world[:1], gens, progress=0.0)
    for r in group.rollouts:
        assert r.components["constant_bonus"] == 0.25 and r.components["python_bonus"] == 1.0
        base = 0.1 * r.components["format"] + 0.9 * r.components["accuracy"]
        assert r.reward == base + 2.0 * 0.25 + 0.5 * 1.0
    # and training with them runs
    trainer.train()
