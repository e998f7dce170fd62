"""SFT cold start on a tiny Qwen2.5-VL and a tiny synthetic world.

What must hold: the labels cover exactly the assistant tokens (checked by decoding them, by hand);
the loss is the HF causal-LM loss and does not depend on batching (left padding, every multimodal
field); a few steps lower the loss; a file with nothing to learn fails before any model is loaded,
naming the file; a run killed and resumed reproduces the uninterrupted one exactly; the final
directory is a plain HF model that ``Policy.from_pretrained`` loads.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from ivr.config import load_config
from ivr.data.sft_rows import load_sft_rows
from ivr.data.synth import generate_dataset
from ivr.models.policy import Policy, chat_prompt
from ivr.sft import SFTData, SFTRunner, collate, encode_example, run_sft, sft_loss

IMAGE_PAD = "<|image_pad|>"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """20 train rows with answer, critique and rectify demonstrations, 4 test rows."""
    out = tmp_path_factory.mktemp("world")
    return generate_dataset(out, n=24, n_test=4, seed=0, tasks=["count"], levels=[1],
                            sft_mix=(0.4, 0.3, 0.3))  # fmt: skip


@pytest.fixture(scope="module")
def policy(tiny_qwen25_dir) -> Policy:
    return Policy.from_pretrained(tiny_qwen25_dir)


def _cfg(model_dir: Path, data: Path | str, out: Path, *extra: str):
    return load_config(None, [
        f"model.path={model_dir}", f"sft.data={data}", f"train.output_dir={out}",
        "sft.batch_size=4", "sft.lr=0.003", "sft.warmup_steps=0", "sft.save_every=2",
        "log.tensorboard=false", "log.progress=false", "rollout.max_new_tokens=24", *extra,
    ])  # fmt: skip


def _user(text: str, images: int = 1) -> dict:
    return {"role": "user", "content": [{"type": "image"}] * images + [{"type": "text", "text": text}]}  # fmt: skip


# ------------------------------------------------------------------------------------ masking


def test_labels_are_exactly_the_reply_and_its_end_token(policy):
    proc, tok = policy.processor, policy.tokenizer
    reply = r"<desc>a red circle at top left</desc> <think>count = 1.</think> \boxed{1}"
    messages = [_user("How many red circles are there?"), {"role": "assistant", "content": reply}]
    ex, feats = encode_example(proc, messages, [Image.new("RGB", (112, 112), "white")])

    on = ex.labels != -100
    idx = on.nonzero().flatten().tolist()
    assert idx == list(range(idx[0], idx[-1] + 1)), "one contiguous span"
    assert torch.equal(ex.labels[on], ex.input_ids[on])
    # By hand: the reply and <|im_end|> are trained; the prompt, the 16 image tokens
    # (112 px = 8×8 patches of 14, merged 2×2) and the assistant header are not; nor the
    # newline the template writes after <|im_end|>.
    assert tok.decode(ex.input_ids[on]) == reply + "<|im_end|>"
    assert tok.decode(ex.input_ids[: idx[0]]) == (
        "<|im_start|>user\n<|vision_start|>" + IMAGE_PAD * 16 + "<|vision_end|>"
        "How many red circles are there?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tok.decode(ex.input_ids[idx[-1] + 1 :]) == "\n"
    # Every multimodal field is kept: mm_token_type_ids marks exactly the image tokens.
    mm = ex.token_fields["mm_token_type_ids"]
    pad_id = tok.convert_tokens_to_ids(IMAGE_PAD)
    assert torch.equal(mm.bool(), ex.input_ids == pad_id) and int(mm.sum()) == 16
    assert feats["image_grid_thw"].tolist() == [[1, 8, 8]] and feats["pixel_values"].shape[0] == 64


def test_multi_turn_and_system_prompt_train_only_the_replies(policy):
    tok = policy.tokenizer
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        _user("How many shapes?"),
        {"role": "assistant", "content": r"\boxed{2}"},
        {"role": "user", "content": [{"type": "text", "text": "Are you sure?"}]},
        {"role": "assistant", "content": r"Yes. \boxed{2}"},
    ]
    ex, _ = encode_example(policy.processor, messages, [Image.new("RGB", (56, 56), "red")])
    on = (ex.labels != -100).tolist()
    spans, start = [], None
    for i, flag in enumerate([*on, False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            spans.append(tok.decode(ex.input_ids[start:i]))
            start = None
    assert spans == [r"\boxed{2}<|im_end|>", r"Yes. \boxed{2}<|im_end|>"]


def test_synthetic_demonstrations_of_every_kind_are_masked_right(policy, world):
    rows = load_sft_rows(world)
    data = SFTData(policy.processor, rows)
    kinds = set()
    for row, ex in zip(rows, data.examples):
        reply = row["messages"][-1]["content"]
        assert policy.tokenizer.decode(ex.input_ids[ex.labels != -100]) == reply + "<|im_end|>"
        kinds.add(row["kind"])
    assert kinds == {"answer", "critique", "rectify"}


def test_vision_sr1_style_rows_work(policy, world, tmp_path):
    """LLaMA-Factory / Vision-SR1 cold-start rows: ``<image>`` in a string, ShareGPT turns."""
    reply = r"<visual perception>a red circle</visual perception> <think>one</think> \boxed{1}"
    rows = [
        {"messages": [{"role": "user", "content": "<image>How many circles?"},
                      {"role": "assistant", "content": reply}], "images": ["images/000000.png"]},
        {"conversations": [{"from": "human", "value": "<image>How many circles?"},
                           {"from": "gpt", "value": reply}], "images": ["images/000001.png"]},
    ]  # fmt: skip
    path = world / "sr1_style.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = SFTData(policy.processor, load_sft_rows(path))
    for ex in data.examples:
        assert policy.tokenizer.decode(ex.input_ids[ex.labels != -100]) == reply + "<|im_end|>"
        assert int(ex.token_fields["mm_token_type_ids"].sum()) == 16


# ------------------------------------------------------------------------------------ the loss


def test_loss_is_the_hf_loss_and_does_not_depend_on_batching(policy, world):
    data = SFTData(policy.processor, load_sft_rows(world))
    by_len = sorted(data.examples, key=lambda e: len(e.input_ids))
    rows = [by_len[0], by_len[len(by_len) // 2], by_len[-1]]  # three lengths: left padding
    assert len({len(e.input_ids) for e in rows}) == 3
    model, pad = policy.model.eval(), policy.pad_token_id

    def loss_of(exs, drop=()):
        batch = collate(exs, [data.row_features(e) for e in exs], pad)
        for k in drop:
            batch.pop(k)
        with torch.no_grad():
            return sft_loss(model, batch)

    # Image features beyond the cache budget are recomputed, identically.
    uncached = SFTData(policy.processor, load_sft_rows(world), cache_mb=0)
    assert not uncached.features
    for e, u in zip(data.examples, uncached.examples):
        f, g = data.row_features(e), uncached.row_features(u)
        assert f.keys() == g.keys() and all(torch.equal(f[k], g[k]) for k in f)

    singles = [loss_of([e]) for e in rows]
    for e, (loss, n, _) in zip(rows, singles):
        batch = collate([e], [data.row_features(e)], pad)
        with torch.no_grad():
            hf = model(**batch, use_cache=False).loss  # HF shifts the labels itself; mean
        assert n == e.n_labels
        assert loss.item() == pytest.approx(hf.item() * n, rel=1e-5)
    batched, n_all, _ = loss_of(rows)
    assert n_all == sum(n for _, n, _ in singles)
    assert batched.item() == pytest.approx(sum(s.item() for s, _, _ in singles), rel=1e-5)
    # Negative control: without mm_token_type_ids Qwen2.5-VL silently uses 1-D positions.
    wrong, _, _ = loss_of(rows, drop=("mm_token_type_ids",))
    assert abs(wrong.item() - batched.item()) > 0.1


def test_a_few_steps_lower_the_loss_and_eval_reports(tiny_qwen25_dir, world, tmp_path):
    cfg = _cfg(tiny_qwen25_dir, world, tmp_path / "run", "sft.steps=8", "sft.eval_every=4",
               f"data.eval={world}", "sft.eval_limit=4")  # fmt: skip
    before = Policy.from_pretrained(tiny_qwen25_dir)
    data = SFTData(before.processor, load_sft_rows(world)[:8])
    batch = collate(data.examples, [data.row_features(e) for e in data.examples],
                    before.pad_token_id)  # fmt: skip

    def mean_loss(model):
        with torch.no_grad():
            loss, n, _ = sft_loss(model.eval(), batch)
        return loss.item() / n

    out = run_sft(cfg)
    after = Policy.from_pretrained(out["final_dir"])
    assert mean_loss(after.model) < mean_loss(before.model) - 0.5
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 9))
    evals = [r for r in rows if "eval/accuracy" in r]
    assert [r["step"] for r in evals] == [4, 8]
    for key in (
        "eval/accuracy",
        "eval/format",
        "eval/desc_exact",
        "eval/desc_f1",
        "eval/desc_attr_f1",
    ):
        assert 0.0 <= evals[-1][key] <= 1.0
    assert evals[-1]["eval/n"] == 4
    assert rows[-1]["sft/loss"] < rows[0]["sft/loss"]


# ------------------------------------------------------------------------------------ bad input


def test_no_assistant_tokens_fails_before_loading_a_model(world, tmp_path):
    bad = tmp_path / "no_replies.jsonl"
    row = {"id": "r0", "images": [str(world / "images" / "000000.png")],
           "messages": [_user("How many shapes are there?")]}  # fmt: skip
    bad.write_text(json.dumps(row) + "\n")
    missing_model = tmp_path / "no-such-model"  # failing on the data proves it came first
    with pytest.raises(ValueError, match="no assistant turn") as e:
        run_sft(_cfg(missing_model, bad, tmp_path / "run"))
    assert str(bad) in str(e.value)

    # Rows handed over directly (not through the loader): empty replies, same early failure.
    empty = [{**row, "messages": [*row["messages"], {"role": "assistant", "content": "  "}]}]
    cfg = _cfg(missing_model, bad, tmp_path / "run2")
    with pytest.raises(ValueError, match="no assistant turn") as e:
        run_sft(cfg, rows=empty)
    assert str(bad) in str(e.value)
    assert not (tmp_path / "run").exists() and not (tmp_path / "run2").exists()


# ------------------------------------------------------------------------------------ resume


class _Kill(Exception):
    pass


def _losses(run: Path) -> list[tuple[int, float, float]]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["sft/loss"], r["sft/grad_norm"]) for r in rows]


def test_kill_and_resume_reproduce_the_uninterrupted_run(tiny_qwen25_dir, world, tmp_path):
    extra = ("sft.steps=6", "sft.grad_accum=2")  # 8 rows per step, 20 rows: epochs wrap
    a, b = tmp_path / "a", tmp_path / "b"
    run_sft(_cfg(tiny_qwen25_dir, world, a, *extra))

    def kill_at_5(step, metrics):
        if step == 5:
            raise _Kill

    with pytest.raises(_Kill):
        run_sft(_cfg(tiny_qwen25_dir, world, b, *extra), callback=kill_at_5)
    ckpts = b / "checkpoints"
    # An interrupted run keeps its finished steps (checkpoints at 2, 4 and the one in flight) …
    assert (ckpts / "latest").read_text().strip() == "step_000005"
    # … and a hard kill (no chance to save) leaves the last periodic one: simulate that.
    shutil.rmtree(ckpts / "step_000005")
    (ckpts / "latest").write_text("step_000004")
    run_sft(_cfg(tiny_qwen25_dir, world, b, *extra, "train.resume=true"))

    assert _losses(b) == _losses(a)  # bit-identical losses and gradient norms, steps 1–6
    wa, wb = (
        load_file(a / "final" / "model.safetensors"),
        load_file(b / "final" / "model.safetensors"),
    )
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)

    # The final directory is a plain HF model dir that the policy loads and samples from.
    final = Policy.from_pretrained(b / "final")
    assert all(torch.equal(p.detach(), wb[n]) for n, p in final.model.named_parameters() if n in wb)
    image = Image.open(world / "images" / "000004.png")
    gens = final.generate([chat_prompt("How many shapes are there?", [image])],
                          max_new_tokens=8, temperature=0.0)  # fmt: skip
    assert len(gens) == 1 and len(gens[0][0].token_ids) > 0


def test_a_truncated_image_is_named_before_training_or_skipped(world, policy, tmp_path):
    rows = [json.loads(x) for x in (world / "sft.jsonl").read_text().splitlines()][:4]
    bad = tmp_path / "bad.png"
    bad.write_bytes((world / rows[2]["images"][0]).read_bytes()[:80])  # truncated copy
    for r in rows:
        r["images"] = [str(world / r["images"][0])]
    rows[2]["images"] = [str(bad)]
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    missing_model = tmp_path / "no-such-model"  # failing on the data proves it came first
    with pytest.raises(ValueError, match=r"sft\.jsonl:3: cannot decode image '.*bad\.png'"):
        run_sft(_cfg(missing_model, data, tmp_path / "run"))
    with pytest.warns(UserWarning, match=r"skipped 1 of 4 rows: .*sft\.jsonl:3"):
        runner = SFTRunner(_cfg(missing_model, data, tmp_path / "run", "data.on_error=skip"),
                           policy=policy)  # fmt: skip
    assert len(runner.data) == 3


def test_resume_and_rerun_are_explicit(world, tmp_path):
    from ivr.config import ConfigError

    missing_model = tmp_path / "no-such-model"  # the run dir is judged before any model loads
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"train\.resume=true.*no checkpoint.*resume=auto"):
        run_sft(_cfg(missing_model, world, out, "train.resume=true"))
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1, "sft/loss": 3.0}\n')
    with pytest.raises(ConfigError, match=r"holds a previous run \(metrics\.jsonl\)"):
        run_sft(_cfg(missing_model, world, out))
    assert (out / "metrics.jsonl").read_text().startswith('{"step": 1')  # nothing was lost
