"""rl/filters.py: DAPO's dynamic sampling and overlong handling; numbers derived by hand."""

from __future__ import annotations

import math
from contextlib import contextmanager

import pytest
import torch

from ivr.config import ConfigError, load_config
from ivr.rl import filters
from ivr.rl.filters import (
    Batches,
    concat_batches,
    informative,
    mask_rows,
    merge_round_metrics,
    overlong_buffer,
    overlong_penalty,
    soft_overlong,
    truncated,
)
from ivr.types import Group, Rollout, Sample

EOS = 99


def group(*rewards, index=0, lengths=None, eos=True):
    lengths = lengths or [2] * len(rewards)
    rows = tuple(
        Rollout(index, "", tuple([1] * (n - 1) + [EOS if eos else 1]), reward=r)
        for r, n in zip(rewards, lengths)
    )
    return Group(sample=Sample(id=str(index), question="q", answer="a"), rollouts=rows)


# ---------------------------------------------------------------------- which groups count
def test_informative_means_some_advantage_is_nonzero() -> None:
    assert informative(group(1.0, 0.0, 0.0, 0.0))  # Â = [1.5, −.5, −.5, −.5]
    assert not informative(group(0.0, 0.0, 0.0, 0.0))  # every answer wrong: Â = 0
    assert not informative(group(1.1, 1.1, 1.1, 1.1))  # every answer right (+ self-reward)
    assert informative(group(0.1, 0.1, 0.1, 0.2))  # format alone differs: still a signal
    assert not informative(group(0.0, math.nan, 1.0, 0.0))  # NaN: the advantages drop it


# ---------------------------------------------------------------------- overlong
@pytest.mark.parametrize(
    ("length", "expected"),
    [
        # L_max = 20, L_cache = 5: free up to L_max − L_cache = 15 tokens
        (1, 0.0),
        (15, 0.0),
        (16, -0.2),  # (15 − 16) / 5
        (18, -0.6),  # (15 − 18) / 5
        (20, -1.0),  # (15 − 20) / 5: the limit itself
        (21, -1.0),  # beyond L_max
    ],
)
def test_soft_overlong_penalty_by_hand(length: int, expected: float) -> None:
    assert overlong_penalty(length, 20, 5) == pytest.approx(expected)


def test_soft_overlong_penalty_at_dapo_scale() -> None:
    # DAPO: L_max = 20480, L_cache = 4096 → free up to 16384; 18432 is half-way: −2048/4096 = −0.5
    assert overlong_penalty(16384, 20480, 4096) == 0.0
    assert overlong_penalty(18432, 20480, 4096) == pytest.approx(-0.5)
    assert overlong_penalty(20480, 20480, 4096) == pytest.approx(-1.0)


def test_overlong_buffer_defaults_to_a_fifth_of_max_new_tokens() -> None:
    assert overlong_buffer(load_config(None, ["rollout.max_new_tokens=64"])) == 12  # 64 // 5
    assert overlong_buffer(load_config(None, ["rollout.max_new_tokens=3"])) == 1  # at least 1
    cfg = load_config(None, ["rollout.max_new_tokens=64", "algo.overlong_buffer=16"])
    assert overlong_buffer(cfg) == 16


def test_truncated_is_no_eos_at_the_end() -> None:
    assert not truncated((5, 6, EOS), (EOS,))
    assert truncated((5, 6, 7), (EOS, 100))
    assert truncated((), (EOS,))


def test_soft_overlong_adds_the_penalty_to_each_reward() -> None:
    # L_max = 4, L_cache = 2: lengths 2, 3, 4 → 0, (2 − 3)/2 = −0.5, (2 − 4)/2 = −1
    g = soft_overlong([group(1.0, 1.0, 0.0, lengths=[2, 3, 4])], 4, 2)[0]
    assert g.rewards == pytest.approx([1.0, 0.5, -1.0])
    assert [r.components["overlong"] for r in g.rollouts] == pytest.approx([0.0, -0.5, -1.0])
    # all right, but of different lengths: the penalty makes the group informative
    assert informative(g)


def test_mask_rows_drops_rows_keeps_their_advantages() -> None:
    groups = [group(1.0, 0.0), group(0.0, 1.0, index=1)]
    adv = torch.tensor([1.0, -1.0, -2.0, 2.0])
    out, a = mask_rows(groups, adv, [True, False, False, False])
    # group 0 keeps its first row (Â = 1 as computed over the whole group); group 1 goes
    assert [len(g.rollouts) for g in out] == [1] and a.tolist() == [1.0]


# ---------------------------------------------------------------------- merging rounds
def test_concat_shifts_the_second_batchs_sample_indexes() -> None:
    a = ([group(1.0, 0.0, index=0), group(0.0, 1.0, index=1)], ["p0", "p1"], {})
    b = ([group(1.0, 0.0, index=0)], ["p2"], {})
    groups, prompts = concat_batches(a, b)
    assert prompts == ["p0", "p1", "p2"]
    assert [r.sample_index for g in groups for r in g.rollouts] == [0, 0, 1, 1, 2, 2]


def test_merge_round_metrics_sums_counts_and_weights_means() -> None:
    r1 = {"reward/mean": 0.2, "ivr/critiqued": 4.0, "ivr/accepted": 1.0, "ivr/success_rate": 0.25}
    r2 = {"reward/mean": 0.8, "ivr/critiqued": 2.0, "ivr/accepted": 2.0, "ivr/success_rate": 1.0}
    m = merge_round_metrics([r1, r2], [3, 1])
    # mean weighted by groups: (0.2·3 + 0.8·1) / 4 = 1.4 / 4 = 0.35; counts 4 + 2 and 1 + 2;
    # success rate pooled: 3 / 6 = 0.5 (not the mean of 0.25 and 1.0)
    assert m["reward/mean"] == pytest.approx(0.35)
    assert m["ivr/critiqued"] == 6.0 and m["ivr/accepted"] == 3.0
    assert m["ivr/success_rate"] == pytest.approx(0.5)


# ---------------------------------------------------------------------- the loop
class FakeComm:
    """``world`` ranks; ``others`` is what the other ranks report to ``max``."""

    def __init__(self, world: int = 1, others: float = 0) -> None:
        self.world, self.others, self.calls = world, others, []

    def max(self, x):
        self.calls.append(x)
        return max(x, self.others) if self.world > 1 else x


class FakePolicy:
    eos_token_ids = (EOS,)


class FakeTimer(dict):
    @contextmanager
    def __call__(self, name):
        yield


def batches(*overrides, n=100, world=1, rank=0, others=0):
    cfg = load_config(None, ["train.prompts_per_step=2", "rollout.group_size=2", *overrides])
    samples = [Sample(id=str(i), question="q", answer="a") for i in range(n)]
    return Batches(cfg, samples, FakeComm(world, others), rank, FakePolicy())


def fake_collect(flat_ids: set[str], log: list):
    """Groups whose rewards are all equal for the sample ids in ``flat_ids``, [1, 0] otherwise."""

    def collect(step, samples, timer):
        log.append([s.id for s in samples])
        groups = [
            Group(
                sample=s,
                rollouts=tuple(
                    Rollout(i, s.id, (1, EOS), reward=0.0 if s.id in flat_ids else float(j))
                    for j in range(2)
                ),
            )
            for i, s in enumerate(samples)
        ]
        return groups, [f"prompt {s.id}" for s in samples], {"reward/mean": 0.5}

    return collect


def _rows(b: Batches, start: int, count: int) -> list[str]:
    return [s.id for s in b._rows(start, count)]


def test_without_the_switches_one_collection_as_before() -> None:
    b, log = batches(), []
    groups, prompts, m = b.collect(fake_collect(set(), log), 1, FakeTimer())
    # step 1, rank 0, 2 prompts: positions 0, 1 of the seed-0 shuffle; no dynamic/ metric
    assert log == [_rows(b, 0, 2)] and len(groups) == 2 and m == {"reward/mean": 0.5}
    assert b.state(1) == {"extra_prompts": 0}


def test_dynamic_sampling_draws_the_next_prompts_until_full() -> None:
    b, log = batches("algo.dynamic_sampling=true"), []
    first, second = _rows(b, 0, 2), _rows(b, 2, 2)
    # step 1: positions 0–1; one of them flat → 1 more (position 2); it is flat too → 1 more (3)
    flat = {first[0], second[0]}
    groups, prompts, m = b.collect(fake_collect(flat, log), 1, FakeTimer())
    assert log == [first, [second[0]], [second[1]]]
    assert [g.sample.id for g in groups] == [first[1], second[1]]
    # the kept rows index the concatenated prompts: first[1] is prompt 1, second[1] prompt 3
    assert [r.sample_index for g in groups for r in g.rollouts] == [1, 1, 3, 3]
    assert prompts[3] == f"prompt {second[1]}"
    assert m["dynamic/prompts_drawn"] == 4 and m["dynamic/rounds"] == 3
    assert m["dynamic/groups_kept"] == 2 and m["dynamic/groups_dropped"] == 2
    assert m["dynamic/bound_hit"] == 0 and m["dynamic/fallback"] == 0
    # 2 extra prompts drawn: step 2 starts at position (2−1)·1·2 + 2 = 4, not 2 (no repeats)
    assert b.state(1) == {"extra_prompts": 2}
    assert [s.id for s in b.draw(2)] == _rows(b, 4, 2)


def test_the_bound_trains_on_what_was_kept() -> None:
    b, log = batches("algo.dynamic_sampling=true", "algo.max_sampling_rounds=2"), []
    first = _rows(b, 0, 2)
    groups, _, m = b.collect(fake_collect({first[0], *_rows(b, 2, 1)}, log), 1, FakeTimer())
    # round 1 keeps 1, round 2 (1 prompt) keeps 0; the bound (2 rounds) stops: 1 group trained
    assert len(log) == 2 and [g.sample.id for g in groups] == [first[1]]
    assert m["dynamic/bound_hit"] == 1 and m["dynamic/groups_kept"] == 1
    assert m["dynamic/prompts_drawn"] == 3


def test_nothing_informative_anywhere_falls_back_to_the_first_collection() -> None:
    b, log = batches("algo.dynamic_sampling=true"), []
    everything = {str(i) for i in range(100)}
    groups, _, m = b.collect(fake_collect(everything, log), 1, FakeTimer())
    # 3 rounds of 2 prompts, nothing kept: train on round 1 as GRPO would (zero advantages)
    assert [len(x) for x in log] == [2, 2, 2] and [g.sample.id for g in groups] == log[0]
    assert m["dynamic/fallback"] == 1 and m["dynamic/prompts_drawn"] == 6
    assert b.state(1) == {"extra_prompts": 4}


def test_every_rank_runs_as_many_rounds_on_its_own_slice() -> None:
    # world 2, this rank 1 is full after round 1 but rank 0 still needs 2: round 2 draws 2
    # prompts on every rank (max over ranks). Step 1's block is positions 0–3 (rank 1: 2–3);
    # round 2 starts at 1·2·2 = 4 and rank 1 takes 4 + 1·2 = 6–7; extra = 2 ranks × 2 = 4.
    b, log = batches("algo.dynamic_sampling=true", world=2, rank=1, others=2), []
    b.comm.others = 2
    calls = []

    def collect(step, samples, timer):
        calls.append(len(calls))
        if len(calls) == 2:
            b.comm.others = 0  # rank 0 is full after round 2
        return fake_collect(set(), log)(step, samples, timer)

    groups, _, m = b.collect(collect, 1, FakeTimer())
    assert log == [_rows(b, 2, 2), _rows(b, 6, 2)]
    assert [g.sample.id for g in groups] == log[0]  # the first 2 informative: surplus dropped
    assert m["dynamic/rounds"] == 2 and b.state(1) == {"extra_prompts": 4}
    # step 2, rank 1: ((2−1)·2 + 1)·2 + 4 = 10
    assert [s.id for s in b.draw(2)] == _rows(b, 10, 2)


def test_resume_restores_the_data_position() -> None:
    b = batches("algo.dynamic_sampling=true")
    assert b.restore({"step": 7, "extra_prompts": 5}) == 7
    # step 8: (8 − 1)·2 + 5 = 19
    assert [s.id for s in b.draw(8)] == _rows(b, 19, 2)
    assert b.state(7) == {"extra_prompts": 5}
    # an old checkpoint without the key: no extra prompts
    assert b.restore({"step": 3}) == 3 and b.state(3) == {"extra_prompts": 0}


def test_a_checkpoint_taken_mid_step_records_the_position_before_it() -> None:
    # a crash in step 2 after its extra rounds saves step 1: step 2's draws must not count
    b, log = batches("algo.dynamic_sampling=true"), []
    b.collect(fake_collect(set(), log), 1, FakeTimer())
    b.collect(fake_collect(set(_rows(b, 2, 2)), log), 2, FakeTimer())
    assert b.state(1) == {"extra_prompts": 0} and b.state(2) == {"extra_prompts": 2}


def test_overlong_filter_masks_truncated_rows_after_the_advantages() -> None:
    b = batches("algo.overlong=filter")
    g = Group(
        sample=Sample(id="0", question="q", answer="a"),
        rollouts=(Rollout(0, "", (1, EOS), reward=1.0), Rollout(0, "", (1, 1), reward=0.0)),
    )
    seen = []

    def adv_fn(groups):
        seen.append(groups)
        return groups, torch.tensor([0.7071, -0.7071]), 0

    groups, adv, dropped = b.advantages(adv_fn, [g])
    # the advantages saw both rows (the truncated one counts in mean and std) …
    assert len(seen[0][0].rollouts) == 2
    # … the loss sees only the finished one
    assert len(groups[0].rollouts) == 1 and adv.tolist() == pytest.approx([0.7071])
    _, _, m = b.collect(fake_collect(set(), []), 1, FakeTimer())
    assert m["overlong/truncated_share"] == 0.0  # the fake's rows all end with eos


def test_soft_overlong_runs_before_the_filter() -> None:
    # max_new_tokens 2, L_cache 1: length 2 → (1 − 2)/1 = −1. Flat rewards [0, 0] of different
    # lengths become [0, −1]: informative, kept
    b = batches("algo.dynamic_sampling=true", "algo.overlong=soft", "rollout.max_new_tokens=2", n=4)

    def collect(step, samples, timer):
        rows = (Rollout(0, "", (EOS,), reward=0.0), Rollout(0, "", (1, 1), reward=0.0))
        return [Group(sample=s, rollouts=rows) for s in samples], list(samples), {}

    groups, _, m = b.collect(collect, 1, FakeTimer())
    assert [g.rewards for g in groups] == [[0.0, -1.0]] * 2 and m["dynamic/rounds"] == 1
    assert m["overlong/truncated_share"] == 0.5 and m["overlong/penalty_mean"] == -0.5


# ---------------------------------------------------------------------- config
@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("algo.overlong=cut", r"`algo\.overlong` = 'cut'; expected one of \['filter', 'none'"),
        ("algo.max_sampling_rounds=0", r"`algo\.max_sampling_rounds` = 0 must be ≥ 1"),
        ("algo.overlong_buffer=-1", r"`algo\.overlong_buffer` = -1 must be in \[0, rollout"),
        ("algo.overlong_buffer=999", r"`algo\.overlong_buffer` = 999 .*max_new_tokens = 256"),
    ],
)
def test_bad_values_name_the_key(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(None, ["rollout.max_new_tokens=256", override])


def test_module_exports() -> None:
    assert set(filters.__all__) <= set(dir(filters))
