"""Rollout backends on a tiny VLM: the logprob recompute (HF, CPU) and the vLLM engine (GPU only).

The vLLM tests need ``pip install 'ivr[vllm]'`` and a CUDA GPU; they are skipped otherwise.
"""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from tiny_runs import cfg_for

from ivr.models.policy import Policy, chat_prompt
from ivr.rl.trainer import Trainer
from ivr.rollout.base import recompute_logprobs

ONE_STEP = ("train.steps=1", "train.save_every=0")


def _prompts() -> list:
    return [
        chat_prompt("What colour?", [Image.new("RGB", (56, 56), "red")]),
        chat_prompt("Count the shapes.", [Image.new("RGB", (84, 56), "blue")]),
    ]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_recomputed_old_logprobs_equal_the_sampling_ones(tiny_qwen25_dir, temperature) -> None:
    policy = Policy.from_pretrained(tiny_qwen25_dir)
    prompts = _prompts()
    gens = policy.generate(
        prompts, max_new_tokens=8, temperature=temperature, num_return_sequences=4, seed=3
    )
    again = recompute_logprobs(policy, prompts, gens, temperature=temperature, micro_batch_size=3)
    assert [[g.token_ids for g in row] for row in again] == [
        [g.token_ids for g in row] for row in gens
    ]
    assert [[g.text for g in row] for row in again] == [[g.text for g in row] for row in gens]
    worst = max(
        abs(a - b)
        for ra, rb in zip(again, gens)
        for ga, gb in zip(ra, rb)
        for a, b in zip(ga.logprobs, gb.logprobs)
    )
    assert worst < 1e-4, worst
    assert all(len(g.logprobs) == len(g.token_ids) for row in again for g in row)


def test_trainer_step_with_recomputed_old_logprobs(tmp_path, tiny_qwen25_dir, colour_world) -> None:
    base = Trainer(
        cfg_for(tmp_path / "a", tiny_qwen25_dir, *ONE_STEP), samples=colour_world
    ).train()
    trainer = Trainer(
        cfg_for(tmp_path / "b", tiny_qwen25_dir, *ONE_STEP, "rollout.recompute_logprobs=true"),
        samples=colour_world,
    )
    calls = []
    real = trainer.policy.completion_logprobs

    def spy(prompts, completions, **kw):
        calls.append((len(completions), kw.get("with_grad", False)))
        return real(prompts, completions, **kw)

    trainer.policy.completion_logprobs = spy
    m = trainer.train()
    assert calls[0] == (8, False)  # one no-grad pass over the 2 × 4 rollouts, before the update
    assert "time/old_logprobs" in m and "time/weight_sync" in m
    assert "time/old_logprobs" not in base
    # Same samples (recomputing draws no random numbers), the same update up to float error.
    assert m["reward/mean"] == base["reward/mean"]
    assert abs(m["loss/ratio_mean"] - 1.0) < 1e-4
    assert abs(m["loss/loss"] - base["loss/loss"]) < 1e-4 and m["loss/clip_frac"] == 0.0
    rows = [
        json.loads(x) for x in (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in rows] == [1]


# ---------------------------------------------------------------- vLLM (GPU only)
def _need_vllm_gpu():
    pytest.importorskip("vllm")
    if not torch.cuda.is_available():
        pytest.skip("the vLLM backend needs a CUDA GPU")


@pytest.fixture(scope="module")
def vllm_setup(tiny_qwen25_dir):
    _need_vllm_gpu()
    from ivr.rollout.vllm import VLLMBackend

    policy = Policy.from_pretrained(tiny_qwen25_dir, device="cuda")
    backend = VLLMBackend(policy, str(tiny_qwen25_dir), dtype="float32", gpu_memory_utilization=0.2)
    yield policy, backend
    backend.close()


def test_vllm_samples_follow_the_policy_conventions(vllm_setup) -> None:
    policy, backend = vllm_setup
    prompts = _prompts()
    gens = backend.generate(prompts, max_new_tokens=8, temperature=1.0, num_return_sequences=4)
    assert [len(row) for row in gens] == [4, 4]
    banned = set(policy.suppressed_token_ids)
    for row in gens:
        for g in row:
            assert not banned & set(g.token_ids) and len(g.logprobs) == len(g.token_ids)
            assert g.finished == (bool(g.token_ids) and g.token_ids[-1] in policy.eos_token_ids)
    # The HF training forward scores vLLM's samples like vLLM did (float32, top_p = 1).
    hf = recompute_logprobs(policy, prompts, gens, temperature=1.0)
    worst = max(
        abs(a - b)
        for ra, rb in zip(hf, gens)
        for ga, gb in zip(ra, rb)
        for a, b in zip(ga.logprobs, gb.logprobs)
    )
    assert worst < 1e-2, worst


def test_vllm_greedy_matches_hf_before_and_after_a_weight_sync(vllm_setup) -> None:
    policy, backend = vllm_setup
    prompts = _prompts()

    def both():
        v = backend.generate(prompts, max_new_tokens=8, temperature=0.0)
        h = policy.generate(prompts, max_new_tokens=8, temperature=0.0)
        return [r[0].token_ids for r in v], [r[0].token_ids for r in h]

    v, h = both()
    assert v == h
    torch.manual_seed(0)
    with torch.no_grad():  # an "update": the engine must follow it, and only after the sync
        for p in policy.model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    backend.sync_weights(policy.model)
    v2, h2 = both()
    assert h2 != h and v2 == h2
