"""IVR-R1's re-reasoning loop (paper §3.2; DESIGN.md §1 steps 1–6), for training and test time.

Per group, after rewards:

    1. screen     F = {o_i : r_i < τ}; take up to k, lowest reward first, ties broken at random
    2. critique   c ~ π(· | v, q, o, CRITIQUE)     the ORIGINAL image is back in the context
    3. rectify    ô ~ π(· | v, q, o, c, RECTIFY)   a standalone answer in the required format
    4. loop       ô still wrong → critique ô and rectify again, up to T rounds
    5. accept     r(ô) ≥ τ: ô replaces the o it came from, in the same group, marked off-policy;
                  the trainer scores it as a response to the ORIGINAL prompt (v, q) and trains it
                  with policy shaping (rl/losses.py). Rejected attempts are never mixed in.

All generations of a round (every open job of every group) go to the policy in one batch.
``context="description"`` is the paper's §5.2 ablation: the image is replaced by a description of
the scene (the dataset's ``description`` when present, else the failed answer's own ``<desc>``).
Box tasks (Vision-R1 rewards) are not rectified: the loop is defined for reasoning traces.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..config import IVRConfig
from ..data.prompts import PromptSet, user_prompt
from ..types import Generation, Group, Prompt, Rollout, Sample
from .scoring import Score, Scorer

GenerateFn = Callable[..., list[list[Generation]]]  # Policy.generate


def screen(group: Group, tau: float, k: int, rng: random.Random) -> list[int]:
    """Indices of the failed rollouts to rectify: r < τ, lowest reward first, ties at random."""
    if group.sample.answer_type == "boxes":
        return []
    failed = [i for i, r in enumerate(group.rollouts) if r.reward < tau]
    keys = {i: rng.random() for i in failed}
    return sorted(failed, key=lambda i: (group.rollouts[i].reward, keys[i]))[:k]


_DESC = re.compile(r"<desc>(.*?)</desc>", re.S)


def scene_text(sample: Sample, response: str) -> str:
    """The textual proxy of the image for the description ablation."""
    if sample.description:
        return sample.description
    m = _DESC.search(response)
    return m.group(1).strip() if m else ""


@dataclass
class Job:
    """One failed response travelling through the loop."""

    sample: Sample
    images: tuple[Any, ...]
    response: str  # the answer currently being critiqued
    trace: list[dict[str, Any]] = field(default_factory=list)
    accepted: Generation | None = None
    score: Score | None = None
    round: int = 0  # the round that produced the accepted answer


def _context(job: Job, text: str, cfg: IVRConfig, prompts: PromptSet) -> Prompt:
    if cfg.context == "description":
        return user_prompt(
            text,
            (),
            description=scene_text(job.sample, job.response),
            description_template=prompts.description_context,
        )
    return user_prompt(text, job.images)


def reasoning_loop(
    generate: GenerateFn,
    jobs: Sequence[Job],
    scorer: Scorer,
    cfg: IVRConfig,
    prompts: PromptSet,
    *,
    max_new_tokens: int,
    top_p: float = 1.0,
    progress: float = 0.0,
) -> list[int]:
    """Run critique → rectify for up to ``cfg.rounds`` rounds; returns #accepted per round.

    Jobs are updated in place (trace, accepted answer, round); a job leaves the loop at its first
    accepted rectification.
    """
    accepted_per_round = []
    for t in range(1, cfg.rounds + 1):
        open_jobs = [j for j in jobs if j.accepted is None]
        if not open_jobs:
            accepted_per_round.append(0)
            continue
        gen_kw = dict(temperature=cfg.critique_temperature, top_p=top_p, num_return_sequences=1)
        critiques = generate(
            [
                _context(
                    j,
                    prompts.critique.format(question=j.sample.question, response=j.response),
                    cfg,
                    prompts,
                )
                for j in open_jobs
            ],
            max_new_tokens=cfg.critique_max_new_tokens,
            **gen_kw,
        )
        critiques = [c[0].text for c in critiques]
        rectified = generate(
            [
                _context(
                    j,
                    prompts.rectify.format(
                        question=j.sample.question, response=j.response, critique=c
                    ),
                    cfg,
                    prompts,
                )
                for j, c in zip(open_jobs, critiques)
            ],
            max_new_tokens=max_new_tokens,
            **gen_kw,
        )
        rectified = [r[0] for r in rectified]
        scores = scorer([j.sample for j in open_jobs], [r.text for r in rectified], progress)
        n_acc = 0
        for j, c, r, s in zip(open_jobs, critiques, rectified, scores):
            ok = s.reward >= cfg.tau
            j.trace.append(
                {"round": t, "critique": c, "rectified": r.text, "reward": s.reward, "accepted": ok}
            )
            if ok:
                j.accepted, j.score, j.round = r, s, t
                n_acc += 1
            else:
                j.response = r.text  # critique the new attempt in the next round
        accepted_per_round.append(n_acc)
    return accepted_per_round


@dataclass
class RectifyStats:
    groups: int = 0
    failed: int = 0
    critiqued: int = 0
    accepted_per_round: list[int] = field(default_factory=list)
    traces: list[dict[str, Any]] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        accepted = sum(self.accepted_per_round)
        out = {
            "ivr/failed": float(self.failed),
            "ivr/critiqued": float(self.critiqued),
            "ivr/accepted": float(accepted),
            "ivr/success_rate": accepted / self.critiqued if self.critiqued else 0.0,
        }
        for t, n in enumerate(self.accepted_per_round, 1):
            out[f"ivr/accepted_round_{t}"] = float(n)
        return out


def rectify_groups(
    generate: GenerateFn,
    groups: Sequence[Group],
    images: Sequence[tuple[Any, ...]],
    scorer: Scorer,
    cfg: IVRConfig,
    prompts: PromptSet,
    *,
    max_new_tokens: int,
    top_p: float = 1.0,
    progress: float = 0.0,
    rng: random.Random | None = None,
) -> tuple[list[Group], RectifyStats]:
    """Screen, critique, rectify and mix back: the groups keep their size; accepted rectified
    traces replace the failed rollouts they came from as off-policy rollouts."""
    rng = rng or random.Random(0)
    stats = RectifyStats(groups=len(groups))
    jobs: list[tuple[int, int, Job]] = []
    for gi, g in enumerate(groups):
        stats.failed += (
            sum(r.reward < cfg.tau for r in g.rollouts) if g.sample.answer_type != "boxes" else 0
        )
        for ri in screen(g, cfg.tau, cfg.k, rng):
            jobs.append((gi, ri, Job(g.sample, tuple(images[gi]), g.rollouts[ri].text)))
    stats.critiqued = len(jobs)
    stats.accepted_per_round = reasoning_loop(
        generate,
        [j for _, _, j in jobs],
        scorer,
        cfg,
        prompts,
        max_new_tokens=max_new_tokens,
        top_p=top_p,
        progress=progress,
    )
    out = [list(g.rollouts) for g in groups]
    for gi, ri, job in jobs:
        original = groups[gi].rollouts[ri]
        stats.traces.append(
            {
                "id": groups[gi].sample.id,
                "question": groups[gi].sample.question,
                "answer": groups[gi].sample.answer,
                "original": original.text,
                "original_reward": original.reward,
                "rounds": job.trace,
                "accepted": job.accepted is not None,
            }
        )
        if job.accepted is None:
            continue
        comps = dict(job.score.components)
        if job.score.correct is not None:
            comps["correct"] = float(job.score.correct)
        out[gi][ri] = Rollout(
            sample_index=original.sample_index,
            text=job.accepted.text,
            token_ids=job.accepted.token_ids,
            old_logprobs=None,  # behaviour probability 1 (LUFFY): no old policy for these tokens
            reward=job.score.reward,
            components=comps,
            off_policy=True,
            rectify_round=job.round,
            trace=({"original": original.text, "original_reward": original.reward}, *job.trace),
        )
    return [replace(g, rollouts=tuple(r)) for g, r in zip(groups, out)], stats


def rereason_eval(
    generate: GenerateFn,
    samples: Sequence[Sample],
    images: Sequence[tuple[Any, ...]],
    responses: Sequence[str],
    scorer: Scorer,
    cfg: IVRConfig,
    prompts: PromptSet,
    *,
    max_new_tokens: int,
) -> dict[str, Any]:
    """Test-time re-reasoning with an oracle screen (paper Fig. 5): every wrong initial answer goes
    through the loop; accuracy after the initial answer and after each round."""
    initial = scorer(samples, responses)
    correct0 = [bool(s.correct) for s in initial]
    jobs = {
        i: Job(samples[i], tuple(images[i]), responses[i])
        for i, ok in enumerate(correct0)
        if not ok
    }
    greedy = replace(cfg, critique_temperature=0.0)
    reasoning_loop(
        generate, list(jobs.values()), scorer, greedy, prompts, max_new_tokens=max_new_tokens
    )
    n = max(len(samples), 1)
    curve = [sum(correct0) / n]
    for t in range(1, cfg.rounds + 1):
        fixed = sum(
            1 for j in jobs.values() if j.accepted is not None and j.round <= t and j.score.correct
        )
        curve.append((sum(correct0) + fixed) / n)
    return {
        "accuracy_by_round": curve,
        "context": cfg.context,
        "n": len(samples),
        "traces": [{"id": j.sample.id, "rounds": j.trace} for j in jobs.values()],
    }
