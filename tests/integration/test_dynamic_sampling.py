"""DAPO's dynamic sampling and overlong handling in the tiny-VLM loop (rl/filters.py)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from tiny_runs import cfg_for, first_token_probs, kill_at_step, preferred_token_trainer

from ivr.rewards.scorer import Score
from ivr.rl.trainer import Trainer


def first_wrong_then_right():
    """The rollouts (the first scorer call) all fail with reward 0; later calls (rectifications)
    are right and formatted, reward 1."""
    calls = {"n": 0}

    def score(samples, completions, progress=0.0):
        calls["n"] += 1
        ok = calls["n"] > 1
        return [Score(float(ok), {"accuracy": float(ok), "format": 1.0}, ok) for _ in completions]

    return score


def always_wrong(samples, completions, progress=0.0):
    return [Score(0.0, {"accuracy": 0.0, "format": 0.0}, False) for _ in completions]


@pytest.mark.parametrize("ivr", [True, False])
def test_filter_runs_after_rectification(tmp_path, tiny_qwen25_dir, colour_world, ivr) -> None:
    extra = ["ivr.enabled=true", "ivr.k=2", "ivr.rounds=1", "ivr.critique_max_new_tokens=3"]
    cfg = cfg_for(
        tmp_path,
        tiny_qwen25_dir,
        "train.steps=1",
        "train.save_every=0",
        "algo.dynamic_sampling=true",
        *(extra if ivr else []),
    )
    trainer = Trainer(cfg, samples=colour_world)
    trainer.scorer = first_wrong_then_right() if ivr else always_wrong
    m = trainer.train()
    if ivr:
        # every rollout fails (all-fail groups), k = 2 per group are rectified and accepted:
        # groups [1, 1, 0, 0] are informative, kept; the batch is full after one collection
        assert m["ivr/accepted"] == 4 and m["dynamic/groups_kept"] == 2
        assert m["dynamic/rounds"] == 1 and m["dynamic/prompts_drawn"] == 2
        assert m["loss/off_policy_sequences"] == 4
    else:
        # the same all-fail groups without IVR carry nothing: dropped, 2 more rounds of 2
        # prompts, none informative; the step falls back to the first collection (GRPO's step)
        assert m["dynamic/groups_kept"] == 0 and m["dynamic/rounds"] == 3
        assert m["dynamic/prompts_drawn"] == 6 and m["dynamic/groups_dropped"] == 6
        assert m["dynamic/bound_hit"] == 1 and m["dynamic/fallback"] == 1


def half_flat(completions, answer, **_):
    """Constant 0 for red and blue (flat groups, dropped); odd length → 1 otherwise."""
    return [0.0 if a in ("red", "blue") else float(len(c) % 2) for c, a in zip(completions, answer)]


def test_kill_and_resume_with_dynamic_sampling(
    tmp_path, tiny_qwen25_dir, colour_world, monkeypatch
) -> None:
    base = ["train.steps=4", "train.save_every=2", "algo.dynamic_sampling=true"]

    def trainer(d, *extra):
        t = Trainer(cfg_for(d, tiny_qwen25_dir, *base, *extra), samples=colour_world)
        t.scorer = replace(t.scorer, extra=((half_flat, 1.0),))
        return t

    trainer(tmp_path / "a").train()
    killed = trainer(tmp_path / "b")
    kill_at_step(killed, 3, monkeypatch)  # killed in the middle of step 3
    state = json.loads((tmp_path / "b/run/checkpoints/step_000002/trainer_state.json").read_text())
    # half the prompts give flat groups: the first two steps drew extra prompts, recorded
    assert state["extra_prompts"] > 0
    resumed = trainer(tmp_path / "b", "train.resume=true")
    assert resumed.start_step == 2
    resumed.train()

    def metrics(d):
        rows = [json.loads(x) for x in (d / "run" / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]

    a, b = metrics(tmp_path / "a"), metrics(tmp_path / "b")
    assert b[-2:] == a[-2:] and len(a) == 4
    assert sum(r["dynamic/prompts_drawn"] for r in a) > 8  # dynamic sampling did draw more


def _target_run(tmp_path, tiny_qwen25_dir, colour_world, *extra):
    """The shared "preferred first token" learning run with ``extra`` switches."""
    trainer, target, before = preferred_token_trainer(
        tmp_path, tiny_qwen25_dir, colour_world, *extra
    )
    return trainer, before, target, lambda: first_token_probs(trainer.policy, colour_world[0])


def _rows(tmp_path):
    return [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]


def test_dapo_dynamic_sampling_with_soft_overlong_trains(
    tmp_path, tiny_qwen25_dir, colour_world
) -> None:
    trainer, before, target, probs = _target_run(
        tmp_path,
        tiny_qwen25_dir,
        colour_world,
        "algo.name=dapo",
        "algo.dynamic_sampling=true",
        "algo.overlong=soft",
    )
    trainer.train()
    after = probs()
    assert after[target] > 2 * before[target], (before[target].item(), after[target].item())
    rows = _rows(tmp_path)
    assert all(r["dynamic/groups_kept"] + r["dynamic/fallback"] * 2 >= 1 for r in rows)
    assert all(0 <= r["overlong/truncated_share"] <= 1 for r in rows)
    # the reward rises: the last steps' task reward beats the first step's
    assert max(r["reward/mean"] for r in rows[-2:]) > rows[0]["reward/mean"]


def test_overlong_filter_trains_on_finished_rows_only(
    tmp_path, tiny_qwen25_dir, colour_world
) -> None:
    trainer, before, target, probs = _target_run(
        tmp_path, tiny_qwen25_dir, colour_world, "algo.overlong=filter"
    )
    # The target token also ends a completion: a completion that starts with it is finished
    # (1 token), most others run to max_new_tokens = 3 without an eos and are masked out.
    trainer.policy._eos = (*trainer.policy.eos_token_ids, target)
    seen = []
    real = trainer.policy.completion_logprobs

    def spy(prompts, completions, **kw):
        if kw.get("with_grad"):
            seen.extend(completions)
        return real(prompts, completions, **kw)

    trainer.policy.completion_logprobs = spy
    trainer.train()
    eos = set(trainer.policy.eos_token_ids)
    assert seen and all(c[-1] in eos for c in seen)  # no truncated row reached the loss
    rows = _rows(tmp_path)
    assert any(0 < r["overlong/truncated_share"] < 1 for r in rows)
    after = probs()
    assert after[target] > 2 * before[target], (before[target].item(), after[target].item())
    assert torch.isfinite(after).all()
