"""The IVR-R1 re-reasoning loop with a scripted fake policy: no model, every decision visible."""

from __future__ import annotations

import random
from dataclasses import replace

from PIL import Image

from ivr.config import IVRConfig
from ivr.data.prompts import PromptSet
from ivr.rl.rectify import rectify_groups, rereason_eval, screen
from ivr.rl.scoring import Score
from ivr.types import Generation, Group, Rollout, Sample

PROMPTS = PromptSet()
IMG = Image.new("RGB", (28, 28), "red")


def fake_scorer(samples, completions, progress=0.0):
    """Reward 1 iff the completion ends with the gold answer, else 0 (format ignored)."""
    out = []
    for s, c in zip(samples, completions):
        ok = c.strip().endswith(f"\\boxed{{{s.answer}}}")
        out.append(Score(float(ok), {"accuracy": float(ok)}, ok))
    return out


class ScriptedPolicy:
    """Critique prompts → "critique of <previous answer>". Rectify prompts → the next answer in
    ``script[previous answer]``. Records every prompt so tests can inspect the context."""

    def __init__(self, script: dict[str, str]):
        self.script = script
        self.calls: list[list] = []

    def generate(self, prompts, **kw):
        self.calls.append(list(prompts))
        out = []
        for p in prompts:
            text = p.messages[-1]["content"][-1]["text"]
            prev = text.split("A previous answer was:\n", 1)[1].split("\n", 1)[0]
            reply = self.script[prev] if "Critique:" in text else f"critique of {prev}"
            out.append([Generation(text=reply, token_ids=tuple(range(len(reply.split()))))])
        return out


def group(answer: str, texts: list[str], rewards: list[float], sid: str = "s") -> Group:
    sample = Sample(
        id=sid, question="How many?", answer=answer, images=("x.png",), answer_type="integer"
    )
    rollouts = tuple(
        Rollout(
            sample_index=0, text=t, token_ids=(1, 2, 3), old_logprobs=(-1.0, -1.0, -1.0), reward=r
        )
        for t, r in zip(texts, rewards)
    )
    return Group(sample=sample, rollouts=rollouts)


def test_screen_picks_lowest_rewards_first_and_at_most_k() -> None:
    g = group("2", ["a", "b", "c", "d", "e"], [0.1, 1.0, 0.0, 0.4, 0.5])
    # failed (r < 0.5): a (0.1), c (0.0), d (0.4); e (0.5) is not failed. Lowest first: c, a, d.
    assert screen(g, tau=0.5, k=2, rng=random.Random(0)) == [2, 0]
    assert screen(g, tau=0.5, k=4, rng=random.Random(0)) == [2, 0, 3]
    assert screen(g, tau=0.05, k=4, rng=random.Random(0)) == [2]


def test_screen_ties_are_random_but_seeded() -> None:
    g = group("2", ["a", "b", "c", "d"], [0.0, 0.0, 0.0, 0.0])
    picks = {tuple(screen(g, 0.5, 2, random.Random(s))) for s in range(20)}
    assert len(picks) > 1  # ties broken at random
    assert screen(g, 0.5, 2, random.Random(3)) == screen(g, 0.5, 2, random.Random(3))


def test_screen_skips_box_tasks() -> None:
    g = group("[]", ["a"], [0.0])
    g = replace(g, sample=replace(g.sample, answer_type="boxes"))
    assert screen(g, 0.5, 2, random.Random(0)) == []


def test_loop_stops_at_first_accepted_round_and_mixes_back() -> None:
    # Failed: w1, w2 (r = 0) and w3 (r = 0.3 < τ). k = 2 takes the two lowest: w1 and w2.
    # w1 is fixed in round 1; w2 goes w2 → w2b (still wrong) → right in round 2.
    right = "<desc>d</desc><think>t</think>\\boxed{2}"
    policy = ScriptedPolicy({"w1": right, "w2": "w2b", "w2b": right})
    g = group("2", [right, "w1", "w2", "w3"], [1.0, 0.0, 0.0, 0.3])
    cfg = IVRConfig(enabled=True, k=2, rounds=3, tau=0.5)
    (out,), stats = rectify_groups(
        policy.generate, [g], [(IMG,)], fake_scorer, cfg, PROMPTS, max_new_tokens=32
    )
    assert len(out.rollouts) == 4  # the group keeps its size
    # round 1: critique 2 + rectify 2; round 2: critique 1 + rectify 1; round 3: nothing left
    assert [len(c) for c in policy.calls] == [2, 2, 1, 1]
    assert stats.failed == 3 and stats.critiqued == 2 and stats.accepted_per_round == [1, 1, 0]
    assert out.rollouts[0] == g.rollouts[0] and out.rollouts[3] == g.rollouts[3]
    for i, t in ((1, 1), (2, 2)):
        r = out.rollouts[i]
        assert r.off_policy and r.text == right and r.reward == 1.0 and r.old_logprobs is None
        assert r.rectify_round == t and r.sample_index == g.rollouts[i].sample_index
        assert r.trace[0]["original"] == g.rollouts[i].text


def test_round_counts_for_a_known_pick() -> None:
    right = "\\boxed{2}"
    policy = ScriptedPolicy({"w1": right, "w2": "w2b", "w2b": right})
    # w3 has the highest failed reward, so with k=2 the loop takes w1 (0.0) and w2 (0.1).
    g = group("2", ["w1", "w2", "w3"], [0.0, 0.1, 0.2])
    cfg = IVRConfig(enabled=True, k=2, rounds=3)
    (out,), stats = rectify_groups(
        policy.generate, [g], [(IMG,)], fake_scorer, cfg, PROMPTS, max_new_tokens=8
    )
    assert stats.accepted_per_round == [1, 1, 0]
    assert [r.off_policy for r in out.rollouts] == [True, True, False]
    assert [r.rectify_round for r in out.rollouts] == [1, 2, 0]
    m = stats.metrics()
    assert m["ivr/failed"] == 3 and m["ivr/critiqued"] == 2 and m["ivr/accepted"] == 2
    assert m["ivr/success_rate"] == 1.0


def test_rejected_rectifications_are_never_mixed_in() -> None:
    policy = ScriptedPolicy({"w1": "w1b", "w1b": "w1c", "w1c": "w1d"})
    g = group("2", ["w1", "ok \\boxed{2}"], [0.0, 1.0])
    cfg = IVRConfig(enabled=True, k=2, rounds=3)
    (out,), stats = rectify_groups(
        policy.generate, [g], [(IMG,)], fake_scorer, cfg, PROMPTS, max_new_tokens=8
    )
    assert out == g  # nothing accepted after T = 3 rounds: the group is unchanged
    assert stats.accepted_per_round == [0, 0, 0]
    assert [t["rectified"] for t in stats.traces[0]["rounds"]] == ["w1b", "w1c", "w1d"]
    # each round critiques the latest attempt, not the original
    assert len(policy.calls) == 6


def test_prompts_carry_the_original_image_and_the_failed_answer() -> None:
    policy = ScriptedPolicy({"w1": "\\boxed{2}"})
    g = group("2", ["w1"], [0.0])
    rectify_groups(
        policy.generate, [g], [(IMG,)], fake_scorer, IVRConfig(), PROMPTS, max_new_tokens=8
    )
    critique_prompt, rectify_prompt = policy.calls[0][0], policy.calls[1][0]
    for p in (critique_prompt, rectify_prompt):
        assert p.images == (IMG,)
        assert p.messages[0]["content"][0] == {"type": "image"}
        assert "How many?" in p.messages[0]["content"][-1]["text"]
    assert "critique of w1" in rectify_prompt.messages[0]["content"][-1]["text"]


def test_description_context_replaces_the_image() -> None:
    policy = ScriptedPolicy({"w1": "\\boxed{2}"})
    g = group("2", ["w1"], [0.0])
    g = replace(g, sample=replace(g.sample, description="two red circles"))
    cfg = IVRConfig(context="description")
    rectify_groups(policy.generate, [g], [(IMG,)], fake_scorer, cfg, PROMPTS, max_new_tokens=8)
    p = policy.calls[0][0]
    assert p.images == () and all(part["type"] == "text" for part in p.messages[0]["content"])
    assert "two red circles" in p.messages[0]["content"][0]["text"]


def test_batched_across_groups_per_round() -> None:
    policy = ScriptedPolicy({"a": "\\boxed{1}", "b": "\\boxed{2}"})
    groups = [group("1", ["a"], [0.0], "s1"), group("2", ["b"], [0.0], "s2")]
    out, stats = rectify_groups(
        policy.generate,
        groups,
        [(IMG,), (IMG,)],
        fake_scorer,
        IVRConfig(),
        PROMPTS,
        max_new_tokens=8,
    )
    assert [len(c) for c in policy.calls] == [2, 2]  # one critique batch + one rectify batch
    assert all(g.rollouts[0].off_policy for g in out)


def test_rereason_eval_accuracy_by_round() -> None:
    # 4 samples: one right at first; w1 fixed in round 1; w2 in round 2; w3 never.
    policy = ScriptedPolicy(
        {"w1": "\\boxed{1}", "w2": "w2b", "w2b": "\\boxed{1}", "w3": "x", "x": "y", "y": "z"}
    )
    samples = [Sample(id=str(i), question="Q", answer="1", answer_type="integer") for i in range(4)]
    res = rereason_eval(
        policy.generate,
        samples,
        [()] * 4,
        ["\\boxed{1}", "w1", "w2", "w3"],
        fake_scorer,
        IVRConfig(rounds=3),
        PROMPTS,
        max_new_tokens=8,
    )
    assert res["accuracy_by_round"] == [0.25, 0.5, 0.75, 0.75]
