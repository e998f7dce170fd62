"""`ivr eval --rereason`: accuracy after the initial answer and after each round (paper Fig. 5)."""

from __future__ import annotations

import json

import torch

from ivr.data.synth import generate_dataset
from ivr.eval.loaders import load_benchmark
from ivr.eval.rereason import rereason_benchmark, rereason_heldout, rereason_markdown
from ivr.eval.runner import PREDICTIONS
from ivr.types import Generation


class FixesEvenItems:
    """Critiques anything; rectifies items whose question is in ``fix`` with the gold answer in
    round 1 and leaves the rest wrong."""

    def __init__(self, gold_by_question: dict[str, str], fix: set[str]):
        self.gold, self.fix, self.contexts = gold_by_question, fix, []

    def generate(self, prompts, **_):
        out = []
        for p in prompts:
            self.contexts.append(len(p.images))
            text = p.messages[-1]["content"][-1]["text"]
            q = next(q for q in self.gold if q in text)
            reply = f"\\boxed{{{self.gold[q]}}}" if "Critique:" in text and q in self.fix else "no"
            out.append([Generation(text=reply, token_ids=(1,))])
        return out


def test_rereason_curve_from_a_finished_run(tmp_path) -> None:
    data = generate_dataset(tmp_path / "world", n=40, n_test=8, seed=1, tasks=["count"], levels=[1])
    bench = load_benchmark(f"synth:{data}")
    items = bench.items
    assert len(items) == 8
    out = tmp_path / "run"
    (out / bench.name).mkdir(parents=True)
    # Initial answers: item 0 right, the other 7 wrong ("\boxed{99}" is never a level-1 count).
    lines = [
        {"id": it.id, "response": f"\\boxed{{{it.answer if i == 0 else 99}}}"}
        for i, it in enumerate(items)
    ]
    (out / bench.name / PREDICTIONS).write_text("".join(json.dumps(x) + "\n" for x in lines))
    gold = {it.question: it.answer for it in items}
    fix = {items[1].question, items[2].question, items[3].question}
    # Questions may repeat across items; the fixed set is by question text, so count by it.
    fixed = sum(1 for it in items[1:] if it.question in fix)
    policy = FixesEvenItems(gold, fix)
    res = rereason_benchmark(policy, bench, out, rounds=2, context="image", max_new_tokens=8)
    # initial 1/8; round 1 adds every wrong item whose question is in `fix`; round 2 adds none
    assert res["accuracy_by_round"] == [1 / 8, (1 + fixed) / 8, (1 + fixed) / 8]
    assert set(policy.contexts) == {1}  # the image was in every critique/rectify prompt
    policy.contexts.clear()
    rereason_benchmark(policy, bench, out, rounds=1, context="description", max_new_tokens=8)
    assert set(policy.contexts) == {0}  # the description ablation drops the image
    assert (out / bench.name / "rereason_image.json").is_file()
    table = rereason_markdown({"synth": {"image": res["accuracy_by_round"]}})
    assert (
        table.splitlines()[2]
        == f"| synth | image | 12.5 | {100 * (1 + fixed) / 8:.1f} | {100 * (1 + fixed) / 8:.1f} |"
    )


def test_heldout_rereason_is_seeded(tmp_path, tiny_qwen25_dir) -> None:
    """The demo's T = 1 loop gives the same traces on a rerun, whatever drew from the process's
    RNG before it; another seed draws other samples."""
    data = generate_dataset(tmp_path / "world", n=12, n_test=3, seed=2, tasks=["count"], levels=[1])
    rows = [json.loads(x) for x in (data / "test.jsonl").read_text().splitlines()]
    eval_json = tmp_path / "eval.json"
    eval_json.write_text(json.dumps({"ids": [r["id"] for r in rows], "responses": ["no"] * 3}))

    def run(name: str, seed: int) -> list:
        torch.rand(7)  # a different RNG state before each run
        rereason_heldout(
            tiny_qwen25_dir, data, eval_json, tmp_path / name, limit=3, mode="image",
            max_new_tokens=6, rounds=1, critique_max_new_tokens=4, seed=seed,
        )  # fmt: skip
        return json.loads((tmp_path / name).read_text())["traces"]

    first, again, other = run("a.json", 0), run("b.json", 0), run("c.json", 1)
    assert first == again
    assert first != other
