"""IVR-R1's re-reasoning loop (paper §3.2; DESIGN.md §1 steps 1–6), its resample control, and
test-time re-reasoning.

Per group, after the TASK reward (the trainer adds any self-reward only after this phase):

    1. screen     F = {o_i : r_i < τ}; take up to k, lowest reward first, ties broken at random
    2. critique   c ~ π(· | v, q, o, CRITIQUE)     the ORIGINAL image is back in the context
    3. rectify    ô ~ π(· | v, q, o, c, RECTIFY)   a standalone answer in the required format
    4. loop       ô not accepted → critique ô and rectify again, up to T rounds
    5. accept     ``ACCEPT[cfg.accept]`` — by default ô's answer is right AND its format valid
                  (``reward`` ≥ τ alone would take a right answer in a broken format: 0.9 ≥ 0.5).
                  ô replaces the o it came from, in the same group, marked off-policy; the trainer
                  scores it as a response to the ORIGINAL prompt (v, q) and trains it with policy
                  shaping (rl/losses.py). Rejected attempts are never mixed in.

``strategy="resample"`` is the control IVR-R1 must beat: the same screen and acceptance, but each
round an open job draws 2 fresh samples of the ORIGINAL prompt at the rollout temperature (the
budget of one critique + one rectification), and the first accepted one replaces the failure with
the same off-policy marking and shaping. ``ivr/generations`` counts what either strategy spent.

All generations of a round (every open job of every group) go to the policy in one batch.
``context="description"`` is the paper's §5.2 ablation: the image is replaced by the policy's OWN
``<desc>`` of the response being critiqued (``description_source="dataset"`` uses the dataset's
true scene text instead — it leaks the answer; for analysis only).
Box tasks (Vision-R1 rewards) are not rectified: the loop is defined for reasoning traces.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..config import IVRConfig
from ..data.prompts import PromptSet, extract_tag, user_prompt
from ..rewards.scorer import Score, Scorer
from ..types import Generation, Group, Prompt, Rollout, Sample

GenerateFn = Callable[..., list[list[Generation]]]  # Policy.generate
AcceptFn = Callable[[Sample, str, Score, float], bool]  # (sample, response, score, τ) → accept?

#: Fresh samples per open job per round under ``strategy="resample"``: an IVR round spends one
#: critique and one rectification generation.
GENERATIONS_PER_ROUND = 2


def screen(group: Group, tau: float, k: int, rng: random.Random) -> list[int]:
    """Indices of the failed rollouts to rectify: r < τ, lowest reward first, ties at random."""
    if group.sample.answer_type == "boxes":
        return []
    failed = [i for i, r in enumerate(group.rollouts) if r.reward < tau]
    keys = {i: rng.random() for i in failed}
    return sorted(failed, key=lambda i: (group.rollouts[i].reward, keys[i]))[:k]


def scene_text(sample: Sample, response: str, source: str = "own") -> str:
    """The textual proxy of the image for the description ablation: the ``<desc>`` of the response
    being critiqued, or (``source="dataset"``, leaky) the sample's true description if it has one."""
    if source == "dataset" and sample.description:
        return sample.description
    return extract_tag(response, "desc") or ""


def _objects(description: str) -> list[str]:
    """A description's objects (``;``- or line-separated), each lower-cased with single spaces and
    no trailing period, sorted: the order of the objects does not matter."""
    items = (" ".join(x.lower().split()).strip(" .") for x in re.split(r"[;\n]", description))
    return sorted(x for x in items if x)


def description_agrees(sample: Sample, response: str) -> bool | None:
    """Whether the response's ``<desc>`` names exactly the sample's true objects (None: the sample
    carries no description to compare with)."""
    if not sample.description:
        return None
    desc = extract_tag(response, "desc")
    return desc is not None and _objects(desc) == _objects(sample.description)


def _correct_format(sample: Sample, response: str, score: Score, tau: float) -> bool:
    return bool(score.correct) and score.components.get("format", 0.0) >= 1.0


def _grounded(sample: Sample, response: str, score: Score, tau: float) -> bool:
    return _correct_format(sample, response, score, tau) and (
        description_agrees(sample, response) is not False  # None: nothing to compare with
    )


ACCEPT: dict[str, AcceptFn] = {
    "correct_format": _correct_format,  # the spec (default): right answer AND valid format
    "reward": lambda sample, response, score, tau: score.reward >= tau,  # the paper's r ≥ τ
    "grounded": _grounded,  # correct_format AND <desc> = the true scene, where the row has one
    "correct": lambda sample, response, score, tau: bool(score.correct),  # test-time oracle
}
"""Acceptance rules by ``ivr.accept`` name; add one here and to ``config._CHOICES``."""


@dataclass
class Job:
    """One failed response travelling through the loop."""

    sample: Sample
    images: tuple[Any, ...]
    response: str  # the answer currently being critiqued
    prompt: Prompt | None = None  # the ORIGINAL prompt (resample control)
    trace: list[dict[str, Any]] = field(default_factory=list)
    accepted: Generation | None = None
    score: Score | None = None
    round: int = 0  # the round that produced the accepted answer
    generations: int = 0  # generations spent on this job (critiques, rectifications, samples)
    tokens: int = 0  # their completion tokens

    def spend(self, *gens: Generation) -> None:
        self.generations += len(gens)
        self.tokens += sum(len(g.token_ids) for g in gens)


def _context(job: Job, text: str, cfg: IVRConfig, prompts: PromptSet) -> Prompt:
    if cfg.context == "description":
        return user_prompt(
            text,
            (),
            description=scene_text(job.sample, job.response, cfg.description_source),
            description_template=prompts.description_context,
        )
    return user_prompt(text, job.images)


def _judge(
    job: Job,
    t: int,
    candidate: Generation,
    score: Score,
    accept: AcceptFn,
    tau: float,
    **record: Any,
) -> bool:
    """Judge one candidate of round ``t``: record it in the job's trace, keep it if accepted."""
    ok = job.accepted is None and accept(job.sample, candidate.text, score, tau)
    job.trace.append(
        {"round": t, **record, "reward": score.reward, "correct": score.correct, "accepted": ok}
    )
    if ok:
        job.accepted, job.score, job.round = candidate, score, t
    return ok


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
    accept: AcceptFn | None = None,
) -> list[int]:
    """Run critique → rectify for up to ``cfg.rounds`` rounds; returns #accepted per round.

    Jobs are updated in place (trace, accepted answer, round, generations spent); a job leaves the
    loop at its first accepted rectification. ``accept`` defaults to ``ACCEPT[cfg.accept]``.
    """
    accept = accept or ACCEPT[cfg.accept]
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
        critiques = [c[0] for c in critiques]
        rectified = generate(
            [
                _context(
                    j,
                    prompts.rectify.format(
                        question=j.sample.question, response=j.response, critique=c.text
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
            j.spend(c, r)
            if _judge(j, t, r, s, accept, cfg.tau, critique=c.text, rectified=r.text):
                n_acc += 1
            else:
                j.response = r.text  # critique the new attempt in the next round
        accepted_per_round.append(n_acc)
    return accepted_per_round


def resample_loop(
    generate: GenerateFn,
    jobs: Sequence[Job],
    scorer: Scorer,
    cfg: IVRConfig,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    progress: float = 0.0,
) -> list[int]:
    """The resample control: per round, ``GENERATIONS_PER_ROUND`` fresh samples of each open job's
    ORIGINAL prompt (``job.prompt``), the first accepted one kept; returns #accepted per round."""
    accept = ACCEPT[cfg.accept]
    accepted_per_round = []
    for t in range(1, cfg.rounds + 1):
        open_jobs = [j for j in jobs if j.accepted is None]
        if not open_jobs:
            accepted_per_round.append(0)
            continue
        drawn = generate(
            [j.prompt for j in open_jobs],
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            num_return_sequences=GENERATIONS_PER_ROUND,
        )
        flat = [(j, g) for j, gs in zip(open_jobs, drawn) for g in gs]
        scores = scorer([j.sample for j, _ in flat], [g.text for _, g in flat], progress)
        n_acc = 0
        for (j, g), s in zip(flat, scores):
            j.spend(g)
            n_acc += _judge(j, t, g, s, accept, cfg.tau, resampled=g.text)
        accepted_per_round.append(n_acc)
    return accepted_per_round


@dataclass
class RectifyStats:
    groups: int = 0
    failed: int = 0
    critiqued: int = 0  # screened failures sent to the loop (critiqued, or resampled)
    accepted_per_round: list[int] = field(default_factory=list)
    generations: int = 0  # generations the loop spent (critiques + rectifications, or samples)
    generated_tokens: int = 0
    described: int = 0  # screened failures whose sample carries a true description
    accepted_grounded: int = 0  # accepted answers whose <desc> matches that description
    traces: list[dict[str, Any]] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        accepted = sum(self.accepted_per_round)
        out = {
            "ivr/failed": float(self.failed),
            "ivr/critiqued": float(self.critiqued),
            "ivr/accepted": float(accepted),
            "ivr/success_rate": accepted / self.critiqued if self.critiqued else 0.0,
            "ivr/generations": float(self.generations),
            "ivr/generated_tokens": float(self.generated_tokens),
        }
        if self.described:
            out["ivr/accepted_grounded"] = float(self.accepted_grounded)
        for t, n in enumerate(self.accepted_per_round, 1):
            out[f"ivr/accepted_round_{t}"] = float(n)
        return out


def _run(
    groups: Sequence[Group],
    cfg: IVRConfig,
    rng: random.Random | None,
    make_job: Callable[[int, int], Job],
    loop: Callable[[list[Job]], list[int]],
) -> tuple[list[Group], RectifyStats]:
    """Screen every group (step 1), run ``loop`` on the jobs (#accepted per round), mix back."""
    rng = rng or random.Random(0)
    stats = RectifyStats(groups=len(groups))
    jobs: list[tuple[int, int, Job]] = []
    for gi, g in enumerate(groups):
        if g.sample.answer_type == "boxes":
            continue
        stats.failed += sum(r.reward < cfg.tau for r in g.rollouts)
        jobs += [(gi, ri, make_job(gi, ri)) for ri in screen(g, cfg.tau, cfg.k, rng)]
    stats.critiqued = len(jobs)
    stats.accepted_per_round = loop([j for _, _, j in jobs])
    return _mix_back(groups, jobs, stats)


def _mix_back(
    groups: Sequence[Group], jobs: Sequence[tuple[int, int, Job]], stats: RectifyStats
) -> tuple[list[Group], RectifyStats]:
    """Accepted answers replace the failed rollouts they came from, as off-policy rollouts (no
    old log-probabilities: behaviour probability 1, LUFFY); the groups keep their size."""
    out = [list(g.rollouts) for g in groups]
    for gi, ri, job in jobs:
        original = groups[gi].rollouts[ri]
        stats.generations += job.generations
        stats.generated_tokens += job.tokens
        stats.traces.append(
            {
                "id": groups[gi].sample.id,
                "question": groups[gi].sample.question,
                "answer": groups[gi].sample.answer,
                "original": original.text,
                "original_reward": original.reward,
                "rounds": job.trace,
                "accepted": job.accepted is not None,
                "generations": job.generations,
            }
        )
        grounded = description_agrees(job.sample, job.accepted.text if job.accepted else "")
        stats.described += grounded is not None
        if job.accepted is None:
            continue
        stats.accepted_grounded += bool(grounded)
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
    return _run(
        groups,
        cfg,
        rng,
        lambda gi, ri: Job(groups[gi].sample, tuple(images[gi]), groups[gi].rollouts[ri].text),
        lambda jobs: reasoning_loop(
            generate,
            jobs,
            scorer,
            cfg,
            prompts,
            max_new_tokens=max_new_tokens,
            top_p=top_p,
            progress=progress,
        ),
    )


def resample_groups(
    generate: GenerateFn,
    groups: Sequence[Group],
    originals: Sequence[Prompt],
    scorer: Scorer,
    cfg: IVRConfig,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    progress: float = 0.0,
    rng: random.Random | None = None,
) -> tuple[list[Group], RectifyStats]:
    """The resample control of ``rectify_groups``: the same screen, acceptance, mixing back and
    stats, but fresh samples of each group's ORIGINAL prompt (``originals[g]``, at the rollout
    ``temperature``) instead of critique → rectify."""
    return _run(
        groups,
        cfg,
        rng,
        lambda gi, ri: Job(groups[gi].sample, (), groups[gi].rollouts[ri].text, originals[gi]),
        lambda jobs: resample_loop(
            generate,
            jobs,
            scorer,
            cfg,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            progress=progress,
        ),
    )


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
    temperature: float = 0.0,
    original_prompts: Sequence[Prompt] | None = None,
) -> dict[str, Any]:
    """Test-time re-reasoning with an oracle screen (paper Fig. 5): every wrong initial answer goes
    through the loop until its answer is right (``ACCEPT["correct"]``: the curve is accuracy,
    whatever the format); accuracy after the initial answer and after each round.

    ``cfg.strategy="resample"`` is the control: each round draws ``GENERATIONS_PER_ROUND`` fresh
    answers to the ORIGINAL prompt (``original_prompts``), the budget of one critique + one
    rectification. ``temperature`` applies to every generation (0 = greedy; a resample needs > 0).
    With ``cfg.context="description"`` the scene text follows ``cfg.description_source`` (default:
    the response's own ``<desc>``, never the gold)."""
    initial = scorer(samples, responses)
    correct0 = [bool(s.correct) for s in initial]
    jobs = {
        i: Job(
            samples[i],
            tuple(images[i]),
            responses[i],
            prompt=original_prompts[i] if original_prompts is not None else None,
        )
        for i, ok in enumerate(correct0)
        if not ok
    }
    if cfg.strategy == "resample":
        if original_prompts is None or temperature <= 0:
            raise ValueError("a test-time resample needs original_prompts and temperature > 0")
        resample_loop(
            generate,
            list(jobs.values()),
            scorer,
            replace(cfg, accept="correct"),
            max_new_tokens=max_new_tokens,
            temperature=temperature,
        )
    else:
        reasoning_loop(
            generate,
            list(jobs.values()),
            scorer,
            replace(cfg, critique_temperature=temperature),
            prompts,
            max_new_tokens=max_new_tokens,
            accept=ACCEPT["correct"],
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
        "strategy": cfg.strategy,
        "temperature": temperature,
        "n": len(samples),
        "generations": sum(j.generations for j in jobs.values()),
        "traces": [{"id": j.sample.id, "rounds": j.trace} for j in jobs.values()],
    }
