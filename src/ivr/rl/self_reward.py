"""Vision-SR1-style self-reward, a baseline of the IVR-R1 paper (Table 1).

Vision-SR1 (Li et al. 2025) rewards a response's visual perception by asking the policy itself to
answer from the response's ``<desc>`` block alone, WITHOUT the image: if the description is
faithful enough, the text-only answer is right. Reward: r += w · acc(description-only answer).
The extra answers are greedy, one per rollout, batched over the step.

The trainer adds it AFTER screening and rectification (DESIGN.md §1): screening and acceptance see
the task reward only, so a wrong answer with a faithful description (r = 0.1 + w ≥ τ) is still
screened as failed, and rectified or resampled rollouts get the term like sampled ones.
"""

from __future__ import annotations

from dataclasses import replace

from ..config import Config
from ..data.prompts import PromptSet, extract_tag, user_prompt
from ..models.policy import Policy
from ..rewards.scorer import Scorer
from ..types import Group


def add_self_reward(
    policy: Policy, groups: list[Group], scorer: Scorer, cfg: Config, prompts: PromptSet
) -> tuple[list[Group], dict[str, float]]:
    """Groups with ``w · acc(answer from <desc> only)`` added to each text rollout's reward."""
    w = cfg.reward.self_reward_weight
    jobs = []  # (group index, rollout index, prompt)
    for gi, g in enumerate(groups):
        if g.sample.answer_type == "boxes":
            continue
        for ri, r in enumerate(g.rollouts):
            text = prompts.description_only_answer.format(
                description=extract_tag(r.text, "desc") or "", question=g.sample.question
            )
            jobs.append((gi, ri, user_prompt(text)))
    if not jobs:
        return groups, {}
    gens = policy.generate(
        [p for _, _, p in jobs],
        max_new_tokens=cfg.rollout.max_new_tokens,
        temperature=0.0,
        num_return_sequences=1,
    )
    scores = scorer([groups[gi].sample for gi, _, _ in jobs], [g[0].text for g in gens])
    out = [list(g.rollouts) for g in groups]
    accs = []
    for (gi, ri, _), s in zip(jobs, scores):
        acc = s.components.get("accuracy", 0.0)
        accs.append(acc)
        r = out[gi][ri]
        out[gi][ri] = replace(
            r, reward=r.reward + w * acc, components={**r.components, "self_reward": acc}
        )
    return [replace(g, rollouts=tuple(r)) for g, r in zip(groups, out)], {
        "self_reward/desc_only_accuracy": sum(accs) / len(accs)
    }
