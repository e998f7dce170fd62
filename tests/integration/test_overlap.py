"""``train.staleness: 1`` (rollout/overlap.py): step t+1's batch is sampled by a weight snapshot
while step t updates. On a tiny VLM: identical to the synchronous loop where every step is a
barrier, bounded staleness checked against the weights themselves, resume, learning, IVR-R1."""

from __future__ import annotations

import copy
import json

import torch
from tiny_runs import cfg_for, first_token_probs, kill_at_step, preferred_token_trainer

from ivr.data.images import load_image
from ivr.data.prompts import PromptSet, question_prompt
from ivr.models.policy import Policy
from ivr.rl.trainer import Trainer
from ivr.rollout import HFBackend
from ivr.rollout.overlap import OverlapRollout


def metrics(run_dir, drop=("time/",)):
    rows = [json.loads(x) for x in (run_dir / "run" / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(drop)} for r in rows]


def by_length(completions, **_):
    """A reward that differs within a group (random weights never answer right): the updates
    then really move the weights."""
    return [len(c) / 10 for c in completions]


def test_staleness_0_is_untouched_and_barriers_at_every_step_reproduce_it(
    tmp_path, tiny_qwen25_dir, colour_world
) -> None:
    base = ["train.steps=3", "train.save_every=1"]
    sync = Trainer(cfg_for(tmp_path / "a", tiny_qwen25_dir, *base), samples=colour_world)
    assert type(sync.rollout) is HFBackend  # staleness 0: today's backend object, no wrapper
    sync.train()
    # save_every=1: every step follows a checkpoint, a barrier: sampled fresh, nothing prefetched
    over = Trainer(
        cfg_for(tmp_path / "b", tiny_qwen25_dir, *base, "train.staleness=1"), samples=colour_world
    )
    assert isinstance(over.rollout, OverlapRollout)
    over.train()
    m = metrics(tmp_path / "b")
    assert [r["rollout/prefetched"] for r in m] == [0.0, 0.0, 0.0]
    assert metrics(tmp_path / "b", ("time/", "rollout/")) == metrics(tmp_path / "a")
    sd_a, sd_b = sync.model.state_dict(), over.model.state_dict()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)


def test_every_rollout_of_step_t_was_sampled_by_the_weights_of_step_t_minus_1(
    tmp_path, tiny_qwen25_dir, colour_world, monkeypatch
) -> None:
    """v = completed updates; step t starts at v = t − 1 and trains on rows sampled at
    v = t − 2 (step 1: v = 0, fresh). Checked on the counter AND on the numbers: the rows'
    behaviour logprobs are those of the saved v = t − 2 weights, π_old (recomputed) v = t − 1's."""
    seen = []  # (step's live state = v t−1, prompts, on-policy rows)
    real_update = Trainer.update

    def spy(self, groups, prompts, advantages):
        rows = [(prompts[r.sample_index], r) for g in groups for r in g.rollouts]
        seen.append((copy.deepcopy(self.model.state_dict()), rows))
        return real_update(self, groups, prompts, advantages)

    monkeypatch.setattr(Trainer, "update", spy)
    cfg = cfg_for(
        tmp_path,
        tiny_qwen25_dir,
        "train.steps=4",
        "train.save_every=0",
        "train.staleness=1",
        "rollout.recompute_logprobs=true",  # π_old from the live model: AReaL's proximal policy
    )
    Trainer(cfg, samples=colour_world, extra_rewards=[(by_length, 1.0)]).train()
    assert [{r.policy_version for _, r in rows} for _, rows in seen] == [{0}, {0}, {1}, {2}]
    m = metrics(tmp_path)
    assert [r["rollout/staleness"] for r in m] == [0.0, 1.0, 1.0, 1.0]
    assert [r["rollout/prefetched"] for r in m] == [0.0, 1.0, 1.0, 1.0]

    scorer = Policy.from_pretrained(tiny_qwen25_dir)

    def logprobs(state, rows):
        scorer.model.load_state_dict(state)
        out = scorer.completion_logprobs([p for p, _ in rows], [r.token_ids for _, r in rows])
        return [out.logprobs[i, : len(r.token_ids)] for i, (_, r) in enumerate(rows)]

    for t in (3, 4):  # rows of step t: behaviour = v t−2 (step t−1's live), π_old = v t−1
        rows = seen[t - 1][1]
        stale, live = logprobs(seen[t - 2][0], rows), logprobs(seen[t - 1][0], rows)
        gap = 0.0
        for (_, r), s, c in zip(rows, stale, live):
            assert torch.allclose(torch.tensor(r.behaviour_logprobs), s, atol=1e-4)
            assert torch.allclose(torch.tensor(r.old_logprobs), c, atol=1e-4)
            gap = max(gap, (s - c).abs().max().item())
        assert gap > 1e-3  # the two versions really differ: the check above can tell them apart


def test_resume_from_a_checkpoint_reproduces_the_uninterrupted_overlapped_run(
    tmp_path, tiny_qwen25_dir, colour_world, monkeypatch
) -> None:
    """Checkpoint steps are barriers: the step after one samples fresh weights, in the
    uninterrupted run and in the resumed one alike (the prefetch is never checkpointed)."""
    base = ["train.steps=4", "train.save_every=2", "train.staleness=1"]
    full = Trainer(cfg_for(tmp_path / "a", tiny_qwen25_dir, *base), samples=colour_world)
    full.train()
    assert [r["rollout/staleness"] for r in metrics(tmp_path / "a")] == [0.0, 1.0, 0.0, 1.0]

    killed = Trainer(cfg_for(tmp_path / "b", tiny_qwen25_dir, *base), samples=colour_world)
    kill_at_step(killed, 3, monkeypatch)  # killed in step 3, step 2's prefetch of step 3 in flight
    resumed = Trainer(
        cfg_for(tmp_path / "b", tiny_qwen25_dir, *base, "train.resume=true"), samples=colour_world
    )
    assert resumed.start_step == 2
    resumed.train()
    assert metrics(tmp_path / "b") == metrics(tmp_path / "a")
    sd_a, sd_b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)


def test_overlapped_grpo_raises_the_preferred_tokens_probability(
    tmp_path, tiny_qwen25_dir, colour_world
) -> None:
    """The learning test of test_trainer.py with train.staleness=1: π_old = the stale sampler's
    logprobs (no recompute), so the ratio is π_θ / π_{t−2} and the clip is centred on it."""
    trainer, target, before = preferred_token_trainer(
        tmp_path, tiny_qwen25_dir, colour_world, "train.staleness=1"
    )
    trainer.train()
    after = first_token_probs(trainer.policy, colour_world[0])
    assert after[target] > 2 * before[target], (before[target].item(), after[target].item())
    m = metrics(tmp_path)
    assert sum(r["rollout/prefetched"] for r in m) == 5  # steps 2–6 came from the worker
    rewards = [r["reward/mean"] for r in m]
    assert max(rewards[3:]) > rewards[0], rewards  # the reward rises


def test_ivr_under_overlap_rectifies_with_the_live_model(
    tmp_path, tiny_qwen25_dir, colour_world
) -> None:
    """Step 2's main batch is prefetched (v = 0); its critiques/rectifications are sampled on the
    main thread by the live model at v = 1, the weights the snapshot holds at that moment."""
    cfg = cfg_for(
        tmp_path,
        tiny_qwen25_dir,
        "train.steps=2",
        "ivr.enabled=true",
        "ivr.k=2",
        "ivr.rounds=1",
        "ivr.critique_max_new_tokens=4",
        "train.save_every=0",
        "train.staleness=1",
    )
    trainer = Trainer(cfg, samples=colour_world)
    live_calls = []
    inner_generate = trainer.rollout.inner.generate

    snapshots = []

    def counted(prompts, **kw):
        live_calls.append(trainer.rollout.version)
        snapshots.append(trainer.rollout.snapshot)
        return inner_generate(prompts, **kw)

    trainer.rollout.inner.generate = counted
    # The live policy has sampled before (an eval, say): it holds its memos when the snapshot is
    # copied from it.
    s = colour_world[0]
    trainer.policy.generate(
        [question_prompt(s, [load_image(s.images[0])], PromptSet())], max_new_tokens=2
    )
    m = trainer.train()
    assert m["rollout/prefetched"] == 1.0 and m["rollout/staleness"] == 1.0
    assert m["ivr/failed"] == 8 and m["ivr/critiqued"] == 4  # random weights: every answer fails
    # step 1: its batch + critique/rectify rounds at v = 0; step 2: only those rounds, at v = 1
    assert live_calls[0] == 0 and 1 in live_calls and live_calls.count(1) >= 2
    # The snapshot samples in another thread: it has its own image-feature memo (sharing the live
    # policy's would mix the two models' caches across threads) and keeps no prompt KV (it makes
    # one call per step, on new images: nothing to reuse, memory held for nothing).
    snapshot = next(x for x in snapshots if x is not None)
    live, snap = trainer.policy.__dict__, snapshot.__dict__
    assert live.get("_prompt_kv") is not None and live.get("_vision_memo") is not None
    assert snapshot.reuse_prompt_kv is False and snap.get("_prompt_kv") is None
    assert snap["_vision_memo"] is not live["_vision_memo"]
