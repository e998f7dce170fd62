"""Vision-SR1-style self-reward: the policy answers from its own <desc>, without the image."""

from __future__ import annotations

from ivr.config import load_config
from ivr.data.prompts import PromptSet
from ivr.rewards.scorer import Scorer
from ivr.rl.self_reward import add_self_reward
from ivr.types import Generation, Group, Rollout, Sample


class DescriptionReader:
    """Answers "\\boxed{2}" iff the scene text it is given mentions "two"; records the prompts."""

    def __init__(self):
        self.prompts = []

    def generate(self, prompts, **kw):
        self.prompts += list(prompts)
        return [
            [
                Generation(
                    text="\\boxed{2}"
                    if "two" in p.messages[0]["content"][-1]["text"]
                    else "\\boxed{0}",
                    token_ids=(1,),
                )
            ]
            for p in prompts
        ]


def test_self_reward_adds_w_times_description_only_accuracy() -> None:
    sample = Sample(
        id="a", question="How many circles?", answer="2", images=("x.png",), answer_type="integer"
    )
    good = "<desc>two circles</desc><think>t</think>\\boxed{2}"
    bad = "<desc>one circle</desc><think>t</think>\\boxed{2}"
    group = Group(sample, (Rollout(0, good, (1,), reward=1.0), Rollout(0, bad, (1,), reward=1.0)))
    cfg = load_config(None, ["reward.self_reward_weight=0.5"])
    policy = DescriptionReader()
    (out,), metrics = add_self_reward(policy, [group], Scorer(), cfg, PromptSet())
    # good: its description lets the text-only answer be right → 1.0 + 0.5·1; bad: 1.0 + 0.5·0
    assert [r.reward for r in out.rollouts] == [1.5, 1.0]
    assert [r.components["self_reward"] for r in out.rollouts] == [1.0, 0.0]
    assert metrics == {"self_reward/desc_only_accuracy": 0.5}
    # the description-only prompts carry no image at all
    assert all(p.images == () for p in policy.prompts)
    assert all(part["type"] == "text" for p in policy.prompts for part in p.messages[0]["content"])
