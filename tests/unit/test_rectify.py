"""The IVR-R1 re-reasoning loop with a scripted fake policy: no model, every decision visible."""

from __future__ import annotations

import random
from dataclasses import replace

from PIL import Image

from ivr.config import _CHOICES, IVRConfig
from ivr.data.prompts import PromptSet, user_prompt
from ivr.rewards.scorer import Score, Scorer
from ivr.rl.rectify import (
    ACCEPT,
    description_agrees,
    rectify_groups,
    rereason_eval,
    resample_groups,
    screen,
)
from ivr.types import Generation, Group, Rollout, Sample

PROMPTS = PromptSet()
IMG = Image.new("RGB", (28, 28), "red")


def fake_scorer(samples, completions, progress=0.0):
    """Right iff the completion ends with the gold answer; format always valid, so reward 1 iff
    right (0.1·1 + 0.9·1), else 0.1 (< τ = 0.5)."""
    out = []
    for s, c in zip(samples, completions):
        ok = c.strip().endswith(f"\\boxed{{{s.answer}}}")
        out.append(Score(0.1 + 0.9 * ok, {"accuracy": float(ok), "format": 1.0}, ok))
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


def test_description_context_is_the_policys_own_desc_never_the_gold() -> None:
    # The gold scene ("two red circles") would leak the answer. Round 1 critiques the failed
    # answer, whose own <desc> says "one red circle"; round 2 critiques the round-1 attempt, whose
    # <desc> says "three red circles". The gold text appears in no prompt.
    w1 = "<desc>one red circle</desc><think>t</think>\\boxed{1}"
    w1b = "<desc>three red circles</desc><think>t</think>\\boxed{3}"
    policy = ScriptedPolicy({w1: w1b, w1b: "\\boxed{2}"})
    g = group("2", [w1], [0.0])
    g = replace(g, sample=replace(g.sample, description="two red circles"))
    cfg = IVRConfig(context="description", rounds=2)
    rectify_groups(policy.generate, [g], [(IMG,)], fake_scorer, cfg, PROMPTS, max_new_tokens=8)
    texts = [p.messages[0]["content"][0]["text"] for call in policy.calls for p in call]
    assert all(p.images == () for call in policy.calls for p in call)
    assert [t.split("\n", 1)[0] for t in texts] == [
        "Scene: one red circle",  # round 1: critique, rectify
        "Scene: one red circle",
        "Scene: three red circles",  # round 2
        "Scene: three red circles",
    ]
    assert not any("two red circles" in t for t in texts)


def test_description_source_dataset_is_the_explicit_leaky_option() -> None:
    policy = ScriptedPolicy({"w1": "\\boxed{2}"})
    g = group("2", ["w1"], [0.0])
    g = replace(g, sample=replace(g.sample, description="two red circles"))
    cfg = IVRConfig(context="description", description_source="dataset")
    rectify_groups(policy.generate, [g], [(IMG,)], fake_scorer, cfg, PROMPTS, max_new_tokens=8)
    assert policy.calls[0][0].messages[0]["content"][0]["text"].startswith("Scene: two red circles")


def test_rereason_eval_description_context_never_sees_the_gold() -> None:
    policy = ScriptedPolicy({"<desc>a blue square</desc>\\boxed{0}": "\\boxed{1}"})
    sample = Sample(id="0", question="Q", answer="1", answer_type="integer", description="GOLD")
    res = rereason_eval(
        policy.generate,
        [sample],
        [()],
        ["<desc>a blue square</desc>\\boxed{0}"],
        fake_scorer,
        IVRConfig(rounds=1, context="description"),
        PROMPTS,
        max_new_tokens=8,
    )
    assert res["accuracy_by_round"] == [0.0, 1.0] and res["generations"] == 2
    texts = [p.messages[0]["content"][0]["text"] for call in policy.calls for p in call]
    assert all(t.startswith("Scene: a blue square\n") for t in texts)


# ---------------------------------------------------------------- acceptance (spec step 5)

FMT = "<desc>d</desc><think>t</think>"


def test_right_answer_in_broken_format_is_not_accepted() -> None:
    # Real scorer, λ = 0.1. Round 1 rectifies w1 to "\\boxed{2}": right, no <desc>/<think>:
    # r = 0.1·0 + 0.9·1 = 0.9 ≥ τ = 0.5, but the format is broken → rejected by the default
    # (correct_format) and critiqued again; round 2 gives the formatted answer, r = 0.1 + 0.9 = 1.
    policy = ScriptedPolicy({"w1": "\\boxed{2}", "\\boxed{2}": FMT + "\\boxed{2}"})
    g = group("2", ["w1"], [0.0])
    (out,), stats = rectify_groups(
        policy.generate, [g], [(IMG,)], Scorer(), IVRConfig(rounds=3), PROMPTS, max_new_tokens=8
    )
    assert stats.accepted_per_round == [0, 1, 0]
    assert out.rollouts[0].text == FMT + "\\boxed{2}" and out.rollouts[0].reward == 1.0
    assert out.rollouts[0].rectify_round == 2
    assert [(t["reward"], t["correct"], t["accepted"]) for t in stats.traces[0]["rounds"]] == [
        (0.9, True, False),
        (1.0, True, True),
    ]
    # accept=reward is the old rule, r ≥ τ: 0.9 ≥ 0.5 takes the broken answer in round 1
    policy = ScriptedPolicy({"w1": "\\boxed{2}"})
    (out,), stats = rectify_groups(
        policy.generate,
        [g],
        [(IMG,)],
        Scorer(),
        IVRConfig(accept="reward"),
        PROMPTS,
        max_new_tokens=8,
    )
    assert stats.accepted_per_round == [1, 0, 0] and out.rollouts[0].reward == 0.9


def test_accept_rules() -> None:
    s = Sample(id="0", question="Q", answer="2", description="a red circle; a blue square")
    right = Score(1.0, {"accuracy": 1.0, "format": 1.0}, True)
    broken = Score(0.9, {"accuracy": 1.0, "format": 0.0}, True)
    wrong = Score(0.1, {"accuracy": 0.0, "format": 1.0}, False)
    good_desc = "<desc>A blue square;  a red circle.</desc><think>t</think>\\boxed{2}"
    bad_desc = "<desc>a red circle; a green square</desc><think>t</think>\\boxed{2}"
    table = {  # rule: (right+good desc, right+bad desc, broken format, wrong)
        "correct_format": (True, True, False, False),
        "reward": (True, True, True, False),  # τ = 0.5: 1.0, 1.0, 0.9 ≥ τ; 0.1 < τ
        "grounded": (True, False, False, False),
        "correct": (True, True, True, False),
    }
    for name, want in table.items():
        got = tuple(
            ACCEPT[name](s, text, score, 0.5)
            for text, score in (
                (good_desc, right),
                (bad_desc, right),
                ("\\boxed{2}", broken),
                (good_desc, wrong),
            )
        )
        assert got == want, name
    # without a true description, grounded is correct_format
    plain = replace(s, description=None)
    assert ACCEPT["grounded"](plain, bad_desc, right, 0.5)
    assert description_agrees(plain, bad_desc) is None
    assert set(ACCEPT) == _CHOICES["ivr.accept"]  # every rule is a valid config value


def test_grounded_acceptance_and_its_metric() -> None:
    # True scene: "a red circle at top left". Round 1's answer is right and formatted but its
    # <desc> names a blue circle; round 2's <desc> is the true scene (other case and spacing).
    wrong_desc = "<desc>a blue circle at top left</desc><think>t</think>\\boxed{2}"
    true_desc = "<desc>A red circle at  top left.</desc><think>t</think>\\boxed{2}"
    script = {"w1": wrong_desc, wrong_desc: true_desc}
    g = group("2", ["w1"], [0.0])
    g = replace(g, sample=replace(g.sample, description="a red circle at top left"))
    # correct_format (default) takes round 1's answer: accepted 1, of which grounded 0
    _, stats = rectify_groups(
        ScriptedPolicy(script).generate,
        [g],
        [(IMG,)],
        fake_scorer,
        IVRConfig(),
        PROMPTS,
        max_new_tokens=8,
    )
    m = stats.metrics()
    assert stats.accepted_per_round == [1, 0, 0]
    assert m["ivr/accepted"] == 1 and m["ivr/accepted_grounded"] == 0
    # grounded rejects it and accepts round 2's: accepted 1, grounded 1
    (out,), stats = rectify_groups(
        ScriptedPolicy(script).generate,
        [g],
        [(IMG,)],
        fake_scorer,
        IVRConfig(accept="grounded"),
        PROMPTS,
        max_new_tokens=8,
    )
    m = stats.metrics()
    assert stats.accepted_per_round == [0, 1, 0] and out.rollouts[0].text == true_desc
    assert m["ivr/accepted"] == 1 and m["ivr/accepted_grounded"] == 1
    # no true description on the sample: the metric is not reported at all
    plain = replace(g, sample=replace(g.sample, description=None))
    _, stats = rectify_groups(
        ScriptedPolicy(script).generate,
        [plain],
        [(IMG,)],
        fake_scorer,
        IVRConfig(),
        PROMPTS,
        max_new_tokens=8,
    )
    assert "ivr/accepted_grounded" not in stats.metrics()


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


# ---------------------------------------------------------------- the resample control


class Sampler:
    """Plays back ``script[call][prompt][sample]`` and records the prompts and keyword args."""

    def __init__(self, script: list[list[list[str]]]):
        self.script, self.calls, self.kwargs = script, [], []

    def generate(self, prompts, **kw):
        replies = self.script[len(self.calls)]
        self.calls.append(list(prompts))
        self.kwargs.append(kw)
        assert len(replies) == len(prompts)
        assert all(len(r) == kw["num_return_sequences"] for r in replies)
        return [[Generation(text=t, token_ids=(7,) * len(t)) for t in r] for r in replies]


def test_resample_replaces_failures_with_fresh_samples_of_the_original_prompt() -> None:
    # k = 2 takes w1 (r = 0.0) then w2 (r = 0.05). Round 1: w1's 2 samples are ["bad", right] →
    # the 2nd is accepted; w2's are both wrong. Round 2: only w2 is open; its 1st sample is right
    # (the 2nd, also right, is spent but not used). Round 3: nothing open, nothing generated.
    # Budget: 2 + 2 + 2 = 6 generations, 2 per open job per round (one critique + one rectify).
    right = FMT + "\\boxed{2}"
    sampler = Sampler([[["bad", right], ["bad", "worse"]], [[right, right + " "]]])
    g = group("2", ["ok " + right, "w1", "w2"], [1.0, 0.0, 0.05])
    original = user_prompt("the ORIGINAL question", (IMG,))
    cfg = IVRConfig(enabled=True, strategy="resample", k=2, rounds=3)
    (out,), stats = resample_groups(
        sampler.generate, [g], [original], fake_scorer, cfg, max_new_tokens=16, temperature=0.7
    )
    assert [len(c) for c in sampler.calls] == [2, 1]
    assert all(p == original for c in sampler.calls for p in c)  # the original prompt, as is
    assert all(
        kw == {"max_new_tokens": 16, "temperature": 0.7, "top_p": 1.0, "num_return_sequences": 2}
        for kw in sampler.kwargs
    )
    assert out.rollouts[0] == g.rollouts[0]
    for i, t in ((1, 1), (2, 2)):
        r = out.rollouts[i]
        assert r.text == right and r.off_policy and r.old_logprobs is None and r.reward == 1.0
        assert r.rectify_round == t and r.trace[0]["original"] == g.rollouts[i].text
    m = stats.metrics()
    assert stats.accepted_per_round == [1, 1, 0]
    assert m["ivr/failed"] == 2 and m["ivr/critiqued"] == 2 and m["ivr/accepted"] == 2
    assert m["ivr/success_rate"] == 1.0 and m["ivr/generations"] == 6
    assert m["ivr/generated_tokens"] == sum(len(t) for c in sampler.script for r in c for t in r)
    # the trace of w2: 2 samples in round 1, 2 in round 2, only the first of those accepted
    rounds = stats.traces[1]["rounds"]
    assert [(t["round"], t["accepted"]) for t in rounds] == [
        (1, False),
        (1, False),
        (2, True),
        (2, False),
    ]


def test_resample_uses_the_same_acceptance() -> None:
    # A right answer in a broken format (r = 0.9 ≥ τ) is not accepted by the resample control
    # either; the formatted right answer of round 2 is.
    sampler = Sampler([[["\\boxed{2}", "\\boxed{2}"]], [["x", FMT + "\\boxed{2}"]]])
    g = group("2", ["w1"], [0.0])
    (out,), stats = resample_groups(
        sampler.generate,
        [g],
        [user_prompt("Q")],
        Scorer(),
        IVRConfig(strategy="resample", rounds=2),
        max_new_tokens=8,
    )
    assert stats.accepted_per_round == [0, 1] and out.rollouts[0].rectify_round == 2


def test_both_strategies_spend_the_same_budget_on_unfixable_failures() -> None:
    # 2 failures (k = 2), T = 3 rounds, never fixed: rectify spends critique + rectify = 2
    # generations per job per round, resample 2 samples: 2 jobs × 3 rounds × 2 = 12 each.
    g = group("2", ["w1", "w2"], [0.0, 0.0])
    never = {f"w{i}{s}": f"w{i}{s}x" for i in (1, 2) for s in ("", "x", "xx")}
    _, rect = rectify_groups(
        ScriptedPolicy(never).generate,
        [g],
        [(IMG,)],
        fake_scorer,
        IVRConfig(),
        PROMPTS,
        max_new_tokens=8,
    )
    sampler = Sampler([[["a", "b"], ["c", "d"]]] * 3)
    _, res = resample_groups(
        sampler.generate, [g], [user_prompt("Q")], fake_scorer, IVRConfig(), max_new_tokens=8
    )
    assert rect.metrics()["ivr/generations"] == res.metrics()["ivr/generations"] == 12
    assert rect.accepted_per_round == res.accepted_per_round == [0, 0, 0]


def test_rereason_eval_resample_control_redraws_the_original_prompt() -> None:
    # Two items, gold "2". Item 0 starts right; item 1 wrong. Round 1: item 1's two fresh answers
    # are ["bad", "bad"]; round 2: ["bad", right] → fixed in round 2. Accuracy by round: 1/2, 1/2,
    # 2/2, 2/2; generations 2 + 2 = 4 (two per open item per round, the critique+rectify budget).
    right = FMT + "\\boxed{2}"
    sampler = Sampler([[["bad", "bad"]], [["bad", right]]])
    samples = [Sample(id=str(i), question="Q", answer="2", answer_type="integer") for i in (0, 1)]
    originals = [user_prompt(f"ORIGINAL {i}", (IMG,)) for i in (0, 1)]
    res = rereason_eval(
        sampler.generate,
        samples,
        [(IMG,), (IMG,)],
        [right, "wrong"],
        fake_scorer,
        IVRConfig(rounds=3, strategy="resample"),
        PROMPTS,
        max_new_tokens=8,
        temperature=1.0,
        original_prompts=originals,
    )
    assert res["accuracy_by_round"] == [0.5, 0.5, 1.0, 1.0] and res["generations"] == 4
    assert all(p == originals[1] for c in sampler.calls for p in c)
    assert all(kw["temperature"] == 1.0 for kw in sampler.kwargs)
