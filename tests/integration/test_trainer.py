"""The GRPO / IVR-R1 loop on a tiny VLM built offline: it learns, it resumes, it survives bad rows."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from PIL import Image
from tiny_runs import cfg_for, first_token_probs, kill_at_step, preferred_token_trainer

from ivr.data.prompts import PromptSet, question_prompt
from ivr.rewards.scorer import Score
from ivr.rl.trainer import Trainer


def first_wrong_then_right():
    """A scorer for one step: the rollouts (its first call) all fail with reward 0; everything
    scored after them (rectifications, fresh samples) is right and formatted, reward 1."""
    calls = {"n": 0}

    def score(samples, completions, progress=0.0):
        calls["n"] += 1
        ok = calls["n"] > 1
        return [Score(float(ok), {"accuracy": float(ok), "format": 1.0}, ok) for _ in completions]

    return score


def test_grpo_steps_raise_the_preferred_tokens_probability(
    tmp_path, tiny_qwen25_dir, colour_world
) -> None:
    trainer, target, before = preferred_token_trainer(tmp_path, tiny_qwen25_dir, colour_world)
    trainer.train()
    after = first_token_probs(trainer.policy, colour_world[0])
    # A real learning signal: the rewarded token becomes clearly more likely (not just "changed").
    assert after[target] > 2 * before[target], (before[target].item(), after[target].item())
    rows = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert (tmp_path / "run" / "final" / "config.json").is_file()


def test_kill_and_resume_reproduces_the_uninterrupted_run(
    tmp_path, tiny_qwen25_dir, colour_world, monkeypatch
) -> None:
    base = ["train.steps=4", "train.save_every=2"]
    full = Trainer(cfg_for(tmp_path / "a", tiny_qwen25_dir, *base), samples=colour_world)
    full.train()

    killed = Trainer(cfg_for(tmp_path / "b", tiny_qwen25_dir, *base), samples=colour_world)
    kill_at_step(killed, 3, monkeypatch)  # killed in the middle of step 3
    resumed = Trainer(
        cfg_for(tmp_path / "b", tiny_qwen25_dir, *base, "train.resume=true"), samples=colour_world
    )
    assert resumed.start_step == 2
    resumed.train()

    def metrics(d):
        rows = [json.loads(x) for x in (d / "run" / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]

    assert metrics(tmp_path / "b") == metrics(tmp_path / "a")
    sd_a, sd_b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)


def test_ivr_step_runs_and_counters_are_consistent(tmp_path, tiny_qwen25_dir, colour_world) -> None:
    cfg = cfg_for(
        tmp_path,
        tiny_qwen25_dir,
        "train.steps=1",
        "ivr.enabled=true",
        "ivr.k=2",
        "ivr.rounds=2",
        "ivr.critique_max_new_tokens=4",
        "train.save_every=0",
    )
    # Random weights never answer right, so every rollout fails: 2 groups × k=2 are critiqued.
    m = Trainer(cfg, samples=colour_world).train()
    assert m["ivr/failed"] == 8 and m["ivr/critiqued"] == 4
    assert m["ivr/accepted"] == sum(m[f"ivr/accepted_round_{t}"] for t in (1, 2)) <= 4
    traces = [json.loads(x) for x in (tmp_path / "run" / "traces.jsonl").read_text().splitlines()]
    assert len(traces) == 4 and all(1 <= len(t["rounds"]) <= 2 for t in traces)


def test_nan_reward_group_is_skipped_not_fatal(tmp_path, tiny_qwen25_dir, colour_world) -> None:
    def nan_for_red(completions, answer, **_):
        return [float("nan") if a == "red" else 0.0 for a in answer]

    cfg = cfg_for(tmp_path, tiny_qwen25_dir, "train.steps=2", "train.save_every=0")
    with pytest.warns(UserWarning, match="NaN/inf reward"):
        m = Trainer(cfg, samples=colour_world, extra_rewards=[(nan_for_red, 1.0)]).train()
    assert m["reward/nan_groups"] in (0.0, 1.0)


def test_bad_training_data_is_named(tmp_path, tiny_qwen25_dir, colour_world) -> None:
    rows = tmp_path / "train.jsonl"
    good = {"id": "a", "image": str(colour_world[0].images[0]), "question": "Q", "answer": "red"}
    missing = {"id": "b", "image": "nope.png", "question": "Q", "answer": "red"}
    rows.write_text(json.dumps(good) + "\n" + json.dumps(missing) + "\n")
    cfg = cfg_for(tmp_path, tiny_qwen25_dir, f"data.train={rows}")
    with pytest.raises(ValueError, match=r"train\.jsonl:2: image 'nope\.png' not found"):
        Trainer(cfg)
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({**good, "answer": ""}) + "\n")
    with pytest.raises(ValueError, match="empty answer"):
        Trainer(cfg_for(tmp_path, tiny_qwen25_dir, f"data.train={empty}"))
    skipped = Trainer(
        cfg_for(tmp_path, tiny_qwen25_dir, f"data.train={rows}", "data.on_error=skip")
    )
    assert [s.id for s in skipped.samples] == ["a"]


def test_kl_to_reference_is_zero_at_start(tmp_path, tiny_qwen25_dir, colour_world) -> None:
    cfg = cfg_for(
        tmp_path,
        tiny_qwen25_dir,
        "train.steps=1",
        "algo.beta=0.1",
        "algo.lr=0.0",
        "train.save_every=0",
    )
    m = Trainer(cfg, samples=colour_world).train()
    # lr 0: policy == reference, so k3 = exp(0) − 0 − 1 = 0 on every token; ratio ρ = 1 exactly-ish.
    assert abs(m["loss/kl"]) < 1e-5 and abs(m["loss/ratio_mean"] - 1.0) < 1e-3


def test_question_prompt_for_box_tasks_is_the_question_itself(colour_world) -> None:
    s = replace(colour_world[0], answer_type="boxes", question="Locate every circle.")
    p = question_prompt(s, [Image.new("RGB", (28, 28))], PromptSet())
    assert p.messages[0]["content"][-1]["text"] == "Locate every circle."


def rectifying_step(tmp_path, model_dir, samples, *extra: str) -> Trainer:
    """One IVR step in which every rollout fails and every rectification (k = 2) succeeds."""
    cfg = cfg_for(
        tmp_path,
        model_dir,
        "train.steps=1",
        "ivr.enabled=true",
        "ivr.k=2",
        "ivr.critique_max_new_tokens=3",
        "train.save_every=0",
        *extra,
    )
    trainer = Trainer(cfg, samples=samples)
    trainer.scorer = first_wrong_then_right()
    return trainer


def test_rectified_traces_are_trained_on_the_original_prompt(
    tmp_path, tiny_qwen25_dir, colour_world
) -> None:
    trainer = rectifying_step(tmp_path, tiny_qwen25_dir, colour_world)
    seen = []
    real = trainer.policy.completion_logprobs

    def spy(prompts, completions, **kw):
        seen.extend(zip(prompts, completions))
        return real(prompts, completions, **kw)

    trainer.policy.completion_logprobs = spy
    m = trainer.train()
    assert m["ivr/accepted"] == 4 and m["ivr/accepted_round_1"] == 4  # 2 groups × k = 2, round 1
    texts = {p.messages[0]["content"][-1]["text"] for p, _ in seen}
    originals = {PromptSet().answer.format(question=s.question) for s in colour_world}
    # Every trained row — sampled or rectified — is conditioned on an original question prompt,
    # never on the critique/rectify prompt that produced it.
    assert texts <= originals and not any("previous answer" in t for t in texts)
    assert len(seen) == 2 * 4 and m["loss/off_policy_sequences"] == 4


def test_loss_metrics_are_pooled_over_micro_batches(
    tmp_path, tiny_qwen25_dir, colour_world, monkeypatch
) -> None:
    import ivr.rl.update as trainer_module

    # 2 groups × 4 rows (2 rectified per group) in micro-batches of 3, 3 and 2 rows: micro-batches
    # with different totals of push Σ|∂ℓ/∂log p|, so the mean of their shares is not the share.
    trainer = rectifying_step(tmp_path, tiny_qwen25_dir, colour_world, "algo.micro_batch_size=3")
    micros = []
    real = trainer_module.policy_loss

    def spy(*args, **kwargs):
        loss, m = real(*args, **kwargs)
        micros.append({k: float(v) for k, v in m.items()})
        return loss, m

    monkeypatch.setattr(trainer_module, "policy_loss", spy)
    m = trainer.train()
    assert len(micros) == 3 and m["loss/off_policy_sequences"] == 4
    pooled = sum(x["off_policy_grad"] for x in micros) / sum(x["policy_grad"] for x in micros)
    mean_of_shares = sum(x["off_policy_grad_share"] for x in micros) / 3
    assert abs(pooled - mean_of_shares) > 1e-3  # the two readings differ on this data
    assert m["loss/off_policy_grad_share"] == pytest.approx(pooled, rel=1e-5)
    # Token means pool by their token counts: the mean entropy over all 8 rows' tokens.
    entropy = sum(x["entropy"] * x["tokens"] for x in micros) / sum(x["tokens"] for x in micros)
    assert abs(entropy - sum(x["entropy"] for x in micros) / 3) > 1e-4  # readings differ here
    assert m["loss/entropy"] == pytest.approx(entropy, rel=1e-5)
    # The loss logged is the minibatch loss optimised: micro-batch losses weighed by their tokens.
    loss = sum(x["loss"] * x["tokens"] for x in micros) / sum(x["tokens"] for x in micros)
    assert m["loss/loss"] == pytest.approx(loss, rel=1e-5, abs=1e-7)


def test_self_reward_is_added_after_screening(
    tmp_path, tiny_qwen25_dir, colour_world, monkeypatch
) -> None:
    import ivr.rl.self_reward as self_reward

    seen = []

    def faithful_desc_everywhere(policy, groups, scorer, cfg, prompts):
        """Stands in for the Vision-SR1 term: every <desc> "lets the policy answer", + w·1 = +1."""
        seen.append([r.reward for g in groups for r in g.rollouts])
        out = [
            replace(
                g,
                rollouts=tuple(
                    replace(r, reward=r.reward + 1.0, components={**r.components, "self_reward": 1})
                    for r in g.rollouts
                ),
            )
            for g in groups
        ]
        return out, {"self_reward/desc_only_accuracy": 1.0}

    monkeypatch.setattr(self_reward, "add_self_reward", faithful_desc_everywhere)
    cfg = cfg_for(
        tmp_path,
        tiny_qwen25_dir,
        "train.steps=1",
        "ivr.enabled=true",
        "ivr.k=2",
        "ivr.rounds=1",
        "ivr.critique_max_new_tokens=3",
        "reward.self_reward_weight=1.0",
        "train.save_every=0",
    )
    m = Trainer(cfg, samples=colour_world).train()
    # Random weights answer wrong: task reward ≤ 0.1 (format at most) < τ = 0.5 on all 2 × 4
    # rollouts, so 8 fail and 2 groups × k = 2 are screened — although with the self-reward each
    # would score ≥ 1.0 ≥ τ (added before screening, as before this fix: 0 failed, 0 screened).
    assert m["ivr/failed"] == 8 and m["ivr/critiqued"] == 4
    # the term was added once, after the rectify phase: the advantages see task reward + 1
    assert len(seen) == 1 and max(seen[0]) <= 0.1
    assert m["reward/mean"] <= 0.1 and m["reward_mixed/mean"] >= 1.0
    assert m["self_reward/desc_only_accuracy"] == 1.0


def test_resample_control_trains(tmp_path, tiny_qwen25_dir, colour_world) -> None:
    cfg = cfg_for(
        tmp_path,
        tiny_qwen25_dir,
        "train.steps=1",
        "ivr.enabled=true",
        "ivr.strategy=resample",
        "ivr.k=2",
        "ivr.rounds=2",
        "log.samples_per_step=8",
        "train.save_every=0",
    )
    trainer = Trainer(cfg, samples=colour_world)
    trainer.scorer = first_wrong_then_right()
    seen = []
    real = trainer.policy.completion_logprobs

    def spy(prompts, completions, **kw):
        seen.extend(prompts)
        return real(prompts, completions, **kw)

    trainer.policy.completion_logprobs = spy
    m = trainer.train()
    # 2 groups × k = 2 screened; each job's first sample of round 1 is accepted; both samples of
    # the round are spent: 4 jobs × 2 = 8 generations; round 2 has nothing left to do.
    assert m["ivr/critiqued"] == 4 and m["ivr/accepted"] == 4 and m["ivr/success_rate"] == 1.0
    assert m["ivr/accepted_round_1"] == 4 and m["ivr/accepted_round_2"] == 0
    assert m["ivr/generations"] == 8 and m["ivr/generated_tokens"] > 0
    # accepted samples are trained off-policy (shaped) as responses to the original prompt
    assert m["loss/off_policy_sequences"] == 4 and 0 < m["loss/off_policy_token_share"] < 1
    assert math.isfinite(m["loss/loss"]) and m["loss/grad_norm"] > 0
    texts = {p.messages[0]["content"][-1]["text"] for p in seen}
    assert texts <= {PromptSet().answer.format(question=s.question) for s in colour_world}
    rows = [json.loads(x) for x in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and sum(r["off_policy"] for r in rows) == 4
    traces = [json.loads(x) for x in (tmp_path / "run" / "traces.jsonl").read_text().splitlines()]
    assert len(traces) == 4 and all(t["accepted"] and t["generations"] == 2 for t in traces)
    assert all([r["accepted"] for r in t["rounds"]] == [True, False] for t in traces)


# ---------------------------------------------------------------------- nothing silent, nothing lost
def _png(path, colour="red"):
    Image.new("RGB", (56, 56), colour).save(path)
    return path


def test_truncated_training_image_is_found_at_load_and_skipped(tmp_path, tiny_qwen25_dir) -> None:
    _png(tmp_path / "good.png")
    bad = _png(tmp_path / "bad.png", "blue")
    bad.write_bytes(bad.read_bytes()[:60])  # a truncated PNG still "opens" lazily in PIL
    rows = tmp_path / "train.jsonl"
    rows.write_text(
        json.dumps({"id": "a", "image": "good.png", "question": "Q", "answer": "red"})
        + "\n"
        + json.dumps({"id": "b", "image": "bad.png", "question": "Q", "answer": "blue"})
        + "\n"
    )
    # found when the data is loaded (not when row b happens to be sampled), row and file named
    with pytest.raises(ValueError, match=r"train\.jsonl:2: cannot decode image '.*bad\.png'"):
        Trainer(cfg_for(tmp_path, tiny_qwen25_dir, f"data.train={rows}"))
    with pytest.warns(UserWarning, match=r"skipped 1 of 2 rows: .*train\.jsonl:2: .*bad\.png"):
        t = Trainer(cfg_for(tmp_path, tiny_qwen25_dir, f"data.train={rows}", "data.on_error=skip"))
    assert [s.id for s in t.samples] == ["a"]


def test_greedy_rollouts_are_refused_for_training(tmp_path, tiny_qwen25_dir, colour_world) -> None:
    from ivr.config import ConfigError

    cfg = cfg_for(tmp_path, tiny_qwen25_dir, "rollout.temperature=0")  # valid for eval
    with pytest.raises(ConfigError, match=r"`rollout\.temperature` = 0\.0 must be > 0"):
        Trainer(cfg, samples=colour_world)


def test_all_nan_rewards_stop_the_run_naming_the_reward(
    tmp_path, tiny_qwen25_dir, colour_world
) -> None:
    def broken_reward(completions, **_):
        return [float("nan")] * len(completions)

    # train.max_skipped_steps = 5 (the default): today all 10 steps skip their update, exit 0
    cfg = cfg_for(tmp_path, tiny_qwen25_dir, "train.steps=10", "train.save_every=0")
    trainer = Trainer(cfg, samples=colour_world, extra_rewards=[(broken_reward, 1.0)])
    with (
        pytest.warns(UserWarning, match="NaN/inf reward"),
        pytest.raises(ValueError, match=r"steps 1–5: no update .*from broken_reward") as err,
    ):
        trainer.train()
    assert type(err.value).__name__ == "RewardError"
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss/skipped"]) for r in rows] == [(s, 1.0) for s in range(1, 6)]
    assert not (tmp_path / "run" / "final").exists()


def _trainer(tmp_path, model_dir, samples, *extra: str) -> Trainer:
    return Trainer(cfg_for(tmp_path, model_dir, *extra), samples=samples)


def _checkpoints(run) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").glob("step_*"))


def test_resume_needs_a_checkpoint_unless_auto(tmp_path, tiny_qwen25_dir, colour_world) -> None:
    from ivr.config import ConfigError

    with pytest.raises(ConfigError, match=r"train\.resume=true.*no checkpoint under"):
        _trainer(tmp_path, tiny_qwen25_dir, colour_world, "train.resume=true")
    assert _trainer(tmp_path, tiny_qwen25_dir, colour_world, "train.resume=auto").start_step == 0


def test_an_old_run_dir_is_refused_or_overwritten(tmp_path, tiny_qwen25_dir, colour_world) -> None:
    from ivr.config import ConfigError

    run = tmp_path / "run"
    _trainer(tmp_path, tiny_qwen25_dir, colour_world, "train.steps=4", "train.save_every=2").train()
    assert _checkpoints(run) == ["step_000002", "step_000004"]
    new = ["train.steps=3", "train.save_every=1"]
    with pytest.raises(ConfigError, match=r"holds a previous run \(metrics\.jsonl, checkpoints\)"):
        _trainer(tmp_path, tiny_qwen25_dir, colour_world, *new)
    with pytest.warns(UserWarning, match="removed the previous run's metrics.jsonl"):
        t = _trainer(tmp_path, tiny_qwen25_dir, colour_world, *new, "train.overwrite=true")
    t.train()
    # only this run's files: its 3 metrics rows, its two newest checkpoints, `latest` → step 3
    # (before: refused nothing; pruning by name kept the old run's step 4 over this run's step 2)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert _checkpoints(run) == ["step_000002", "step_000003"]
    assert (run / "checkpoints" / "latest").read_text() == "step_000003"
    resumed = _trainer(tmp_path, tiny_qwen25_dir, colour_world, *new, "train.resume=true")
    assert resumed.start_step == 3


def test_resume_falls_back_from_a_truncated_checkpoint(
    tmp_path, tiny_qwen25_dir, colour_world
) -> None:
    base = ["train.steps=2", "train.save_every=1"]
    _trainer(tmp_path, tiny_qwen25_dir, colour_world, *base).train()
    weights = tmp_path / "run" / "checkpoints" / "step_000002" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.warns(UserWarning, match=r"step_000002/model\.safetensors: truncated.*step_000001"):
        resumed = _trainer(tmp_path, tiny_qwen25_dir, colour_world, *base, "train.resume=true")
    assert resumed.start_step == 1


def test_resume_with_a_changed_lr_trains_with_it_and_records_it(
    tmp_path, tiny_qwen25_dir, colour_world
) -> None:
    from ivr.config import load_config

    first = ["train.steps=1", "train.save_every=1", "algo.lr=0.02"]
    _trainer(tmp_path, tiny_qwen25_dir, colour_world, *first).train()
    again = ["train.steps=2", "train.save_every=1", "algo.lr=0.05", "train.resume=true"]
    with pytest.warns(UserWarning, match=r"algo\.lr 0\.02 → 0\.05"):
        t = _trainer(tmp_path, tiny_qwen25_dir, colour_world, *again)
    # constant schedule, no warmup: the lr in force is the new one, and config.yaml says so
    assert t.optimizer.param_groups[0]["lr"] == 0.05
    assert load_config(tmp_path / "run" / "config.yaml").algo.lr == 0.05
    assert t.train()["lr"] == 0.05
