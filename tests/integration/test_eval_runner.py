"""The eval harness end to end: every published format plus the synthetic world, graded.

Two policies drive it. An *oracle* that answers from a table (right on every other item, wrong on
the rest) checks the grading and the tables exactly, without a model. The tiny random Qwen2.5-VL
checks the real path (processor, batched greedy generation) and that an interrupted run, resumed,
writes the same predictions and tables as an uninterrupted one.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
from pathlib import Path

import pytest

from ivr.data.prompts import PromptSet
from ivr.eval.loaders import load_benchmark
from ivr.eval.runner import evaluate
from ivr.types import Generation

# The fixture writers live with the loader tests (one definition of each published schema).
_spec = importlib.util.spec_from_file_location(
    "eval_fixtures", Path(__file__).parents[1] / "unit" / "test_eval_loaders.py"
)
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)

SPECS = [
    "mathvista",
    "mathverse",
    "mathvision",
    "mmstar",
    "mmmu",
    "mmmu_pro",
    "MMBench_DEV_EN",  # VLMEvalKit TSV found in the data root
    "Broken.tsv",  # one row whose image does not decode
    "synth:world",  # the project's own dataset (synthetic world, incl. localization rows)
]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ivr.data.synth import generate_dataset

    root = tmp_path_factory.mktemp("bench")
    fx.write_all(root)
    tsv = fx.write_vlmevalkit_tsv(root / "Broken.tsv")
    text = tsv.read_text().splitlines()
    garbage = base64.b64encode(b"GIF89a truncated " * 8).decode()  # > 64 chars: not a reference
    bad = text[2].split("\t")  # row 1 refers to row 0's image: give it its own broken one
    bad[-1] = garbage
    tsv.write_text("\n".join([text[0], text[1], "\t".join(bad)]) + "\n")
    generate_dataset(root / "world", n=16, n_test=8, seed=0)
    return root


def _key(prompt) -> str:
    text = prompt.messages[-1]["content"][-1]["text"]
    pixels = [hashlib.md5(im.tobytes()).hexdigest() for im in prompt.images]
    return text + "|" + ",".join(pixels)


def _right(item) -> str:
    if "query" in item.extra:  # the synthetic world writes its own gold trace
        from ivr.data.demos import trace

        return trace(item.extra["query"], item.extra["scene"])
    answer = item.accepted[0] if item.accepted else item.answer  # an accepted alternative
    return f"<desc>an image</desc> <think>so</think> \\boxed{{{answer}}}"


def _wrong(item) -> str:
    if item.is_localization:
        return "```json\n[]\n```"
    return "<desc>an image</desc> <think>hm</think> \\boxed{Z 999}"


class Oracle:
    """Answers item k right iff k is even (localization items always); optionally raises after
    ``fail_after`` batches."""

    def __init__(self, data_root: Path, fail_after: int | None = None):
        from ivr.data.prompts import question_prompt

        self.table: dict[str, str] = {}
        self.expected: dict[str, dict[str, bool]] = {}
        self.localization: dict[str, set[str]] = {}
        for spec in SPECS:
            bench = load_benchmark(spec, data_root)
            self.expected[bench.name] = {}
            self.localization[bench.name] = {it.id for it in bench.items if it.is_localization}
            for k, item in enumerate(bench.items):
                try:
                    images = item.load_images()
                except ValueError:
                    continue
                prompt = question_prompt(item.to_sample(), images, PromptSet())
                right = k % 2 == 0 or item.is_localization  # boxes: always right (mAP = 1)
                self.table[_key(prompt)] = _right(item) if right else _wrong(item)
                self.expected[bench.name][item.id] = right
        self.fail_after = fail_after
        self.calls = 0

    def generate(self, prompts, **_):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("injected failure")
        return [[Generation(self.table[_key(p)], (1, 2, 3))] for p in prompts]


def _without_timing(results: dict) -> dict:
    return {
        n: {k: v for k, v in s.items() if k != "timing"} for n, s in results["benchmarks"].items()
    }


def test_every_format_graded_exactly(data_root: Path, tmp_path: Path) -> None:
    oracle = Oracle(data_root)
    res = evaluate(oracle, SPECS, data_root=data_root, out_dir=tmp_path, batch_size=3, log=None)
    assert set(res["benchmarks"]) == set(oracle.expected)
    for name, expected in oracle.expected.items():
        s = res["benchmarks"][name]
        preds = [json.loads(ln) for ln in (tmp_path / name / "predictions.jsonl").open()]
        got = {p["id"]: p["correct"] for p in preds}
        loc_ids = {p["id"] for p in preds if p["correct"] is None}  # not graded right/wrong
        assert loc_ids == oracle.localization[name], name
        want = {i: r for i, r in expected.items() if i not in loc_ids}
        assert {i: c for i, c in got.items() if c is not None} == want, name
        # (MMMU-Pro's score is the mean of its settings; equal-sized here, so the same number)
        assert s["accuracy"] == pytest.approx(100 * sum(want.values()) / len(want), abs=0.01)
        assert s["graded"] == len(expected) and s["pending"] == 0
    pro = res["benchmarks"]["mmmu_pro"]["categories"]  # items alternate settings: std right
    assert (pro["standard-10"]["accuracy"], pro["vision"]["accuracy"]) == (100.0, 0.0)
    # MathVista multiple choice: the gold is the option text, the model may answer the text
    mv = {
        json.loads(ln)["id"]: json.loads(ln)
        for ln in (tmp_path / "mathvista" / "predictions.jsonl").open()
    }
    assert mv["1"]["prediction"] == "Yes" and mv["1"]["correct"] is True
    # MMMU open question answered with the accepted alternative "1/2" (item index 2: right)
    mmmu = {
        json.loads(ln)["id"]: json.loads(ln)
        for ln in (tmp_path / "mmmu" / "predictions.jsonl").open()
    }
    assert mmmu["validation_Math_2"]["correct"] is True
    # the row whose image does not decode: reported, skipped, never graded
    broken = res["benchmarks"]["Broken"]
    assert (broken["graded"], broken["skipped"]) == (1, 1)
    (skip,) = [json.loads(ln) for ln in (tmp_path / "Broken" / "skipped.jsonl").open()]
    assert skip["id"] == "1" and "does not decode" in skip["reason"] and "row 1" in skip["reason"]
    # synthetic world: categories are tasks, localization scored with COCO, descriptions checked
    world = res["benchmarks"]["synth"]
    loc = world["localization"]
    assert loc["n"] == len(oracle.localization["synth"]) >= 1
    assert (loc["mAP"], loc["AP50"], loc["AR100"], loc["reward"]) == (1.0, 1.0, 1.0, 3.0)
    assert 0 < world["description"]["exact"] < 100  # gold traces describe exactly; wrong ones don't
    assert "count" in world["categories"] or "arith" in world["categories"]
    # Table 1 average = mean of the scores
    scores = [s["score"] for s in res["benchmarks"].values()]
    assert res["average"] == pytest.approx(sum(scores) / len(scores), abs=0.01)
    md = (tmp_path / "results.md").read_text()
    assert "| Model | MathVista | MathVerse | MathVision | MMStar | MMMU-Pro | MMMU |" in md
    assert "### MMMU by category" in md and "Business" in md
    assert (tmp_path / "results.png").stat().st_size > 1000


def test_interrupted_run_resumes_to_the_same_tables(data_root: Path, tmp_path: Path) -> None:
    full = evaluate(
        Oracle(data_root),
        SPECS,
        data_root=data_root,
        out_dir=tmp_path / "a",
        batch_size=2,
        log=None,
    )
    with pytest.raises(RuntimeError, match="injected"):
        evaluate(
            Oracle(data_root, fail_after=5),
            SPECS,
            data_root=data_root,
            out_dir=tmp_path / "b",
            batch_size=2,
            log=None,
        )
    partial = tmp_path / "b" / "mathverse" / "predictions.jsonl"
    assert partial.is_file()
    with partial.open("a") as f:  # the process died mid-line
        f.write('{"id": "3", "categ')
    resumed_policy = Oracle(data_root)
    resumed = evaluate(
        resumed_policy, SPECS, data_root=data_root, out_dir=tmp_path / "b", batch_size=2, log=None
    )
    assert _without_timing(resumed) == _without_timing(full)
    assert (tmp_path / "b" / "results.md").read_text() == (
        tmp_path / "a" / "results.md"
    ).read_text()
    # only the missing items were generated again
    total = sum(s["graded"] for s in full["benchmarks"].values())
    redone = sum(s["timing"]["samples"] for s in resumed["benchmarks"].values())
    assert 0 < redone < total


def test_resume_with_other_settings_is_refused(data_root: Path, tmp_path: Path) -> None:
    evaluate(Oracle(data_root), ["mmstar"], data_root=data_root, out_dir=tmp_path, log=None)
    with pytest.raises(ValueError, match="max_new_tokens: 1024 -> 64"):
        evaluate(
            Oracle(data_root),
            ["mmstar"],
            data_root=data_root,
            out_dir=tmp_path,
            max_new_tokens=64,
            log=None,
        )


def test_compare_and_cli(data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from ivr.cli import main

    evaluate(
        Oracle(data_root), ["mmstar", "mmmu"], data_root=data_root, out_dir=tmp_path / "a", log=None
    )
    b = tmp_path / "b"
    evaluate(Oracle(data_root), ["mmstar", "mmmu"], data_root=data_root, out_dir=b, log=None)
    res = json.loads((b / "results.json").read_text())
    res["benchmarks"]["mmmu"]["score"] += 10.0
    res["average"] += 5.0
    (b / "results.json").write_text(json.dumps(res))
    assert (
        main(["eval", "--compare", str(tmp_path / "a"), str(b), "--out", str(tmp_path / "cmp")])
        == 0
    )
    out = capsys.readouterr().out
    assert "| MMMU |" in out and "+10.0" in out and "| **Avg** |" in out and "+5.0" in out
    assert (tmp_path / "cmp" / "compare.png").is_file()
    assert main(["eval", "--benchmarks", "mmstar"]) == 2  # one clear line, no traceback
    assert "missing --model, --out" in capsys.readouterr().err


# ----------------------------------------------------------------------------------- tiny VLM


class _FailAfter:
    """Wraps a policy; raises on the (k+1)-th generate call (simulates a killed run)."""

    def __init__(self, policy, k: int):
        self.policy, self.k, self.calls = policy, k, 0

    def __getattr__(self, name):
        return getattr(self.policy, name)

    def generate(self, prompts, **kw):
        self.calls += 1
        if self.calls > self.k:
            raise KeyboardInterrupt
        return self.policy.generate(prompts, **kw)


def test_tiny_vlm_end_to_end_and_resume(
    data_root: Path, tiny_qwen25_dir: Path, tmp_path: Path
) -> None:
    from ivr.cli import main
    from ivr.models.policy import Policy

    policy = Policy.from_pretrained(tiny_qwen25_dir)
    kw = dict(data_root=data_root, limit=3, batch_size=4, max_new_tokens=12, log=None)
    full = evaluate(policy, SPECS, out_dir=tmp_path / "a", **kw)
    for name, s in full["benchmarks"].items():
        assert s["graded"] + s["skipped"] >= min(3, s["items"]) and s["pending"] == 0, name
    rec = json.loads((tmp_path / "a" / "mmmu" / "predictions.jsonl").read_text().splitlines()[0])
    assert rec["num_tokens"] > 0 and isinstance(rec["response"], str)

    with pytest.raises(KeyboardInterrupt):
        evaluate(_FailAfter(policy, 3), SPECS, out_dir=tmp_path / "b", **kw)
    resumed = evaluate(policy, SPECS, out_dir=tmp_path / "b", **kw)
    assert _without_timing(resumed) == _without_timing(full)
    assert (tmp_path / "b" / "results.md").read_text() == (
        tmp_path / "a" / "results.md"
    ).read_text()
    for name in full["benchmarks"]:
        a = (tmp_path / "a" / name / "predictions.jsonl").read_text().splitlines()
        b = (tmp_path / "b" / name / "predictions.jsonl").read_text().splitlines()
        assert sorted(a) == sorted(b), name  # same responses, token for token

    # the command line on the same model resumes the finished run: nothing left to generate
    args = ["eval", "--model", str(tiny_qwen25_dir), "--benchmarks", ",".join(SPECS)]
    args += ["--data-root", str(data_root), "--out", str(tmp_path / "a"), "--limit", "3"]
    args += ["--batch-size", "4", "--max-new-tokens", "12"]
    assert main(args) == 0
    again = json.loads((tmp_path / "a" / "results.json").read_text())
    assert all(s["timing"]["samples"] == 0 for s in again["benchmarks"].values())


# ------------------------------------------------------------------------ the one eval loop


def test_description_fidelity_with_and_without_positions() -> None:
    from ivr.eval.runner import _description

    scene = [
        {"shape": "circle", "colour": "red", "digit": None, "row": 0, "col": 0},
        {"shape": "square", "colour": "blue", "digit": None, "row": 3, "col": 3},
    ]
    text = r"<desc>a red circle at top left; a blue square at top right</desc> <think>2</think> \boxed{2}"
    # By hand: the square is misplaced (row 0, not 3), so not exact; with positions 1 of the 2
    # objects matches (P = R = F1 = 1/2); without them both do (F1 = 2·2 / (2 + 2) = 1).
    assert _description(text, scene, grid=4) == {"exact": 0.0, "f1": 0.5, "attr_f1": 1.0}
    assert _description(r"<think>2</think> \boxed{2}", scene, grid=4) == {
        "exact": 0.0,
        "f1": 0.0,
        "attr_f1": 0.0,
    }


def test_synth_grid_comes_from_the_dataset_meta(data_root: Path, tmp_path: Path) -> None:
    from ivr.eval.runner import synth_grid

    assert synth_grid(data_root / "world") == 4
    (tmp_path / "meta.json").write_text(json.dumps({"params": {"grid": 3}}))
    assert synth_grid(tmp_path) == 3
    assert synth_grid(tmp_path / "other.jsonl") == 3  # a file: its directory's meta
    (tmp_path / "plain").mkdir()
    assert synth_grid(tmp_path / "plain") == 4 and synth_grid(None) == 4  # no meta: 4


def test_in_memory_eval_is_the_benchmark_loop(
    data_root: Path, tiny_qwen25_dir: Path, tmp_path: Path
) -> None:
    """``evaluate_samples`` (SFT eval, demo) and ``evaluate_benchmark`` run the same loop: the
    same answer, grade and description fidelity for every item of the synthetic world."""
    from ivr.data.dataset import load_samples
    from ivr.eval.runner import evaluate_benchmark, evaluate_samples
    from ivr.models.policy import Policy
    from ivr.sft import evaluate as sft_evaluate

    policy = Policy.from_pretrained(tiny_qwen25_dir)
    world = data_root / "world"
    samples = load_samples(world, split="test")
    kw = dict(max_new_tokens=12, batch_size=4)
    metrics, records = evaluate_samples(policy, samples, **kw)
    assert sft_evaluate(policy, samples, **kw) == (metrics, records)
    assert [r["id"] for r in records] == [s.id for s in samples]
    assert {"accuracy", "format", "loc_reward", "desc_exact", "desc_f1", "desc_attr_f1"} <= set(
        metrics
    )

    summary = evaluate_benchmark(policy, load_benchmark(f"synth:{world}"), tmp_path, log=None, **kw)
    lines = (tmp_path / summary["name"] / "predictions.jsonl").read_text().splitlines()
    preds = {p["id"]: p for p in map(json.loads, lines)}
    assert set(preds) == {s.id for s in samples}
    for r in records:
        p = preds[r["id"]]
        assert (p["response"], p["correct"], p["reward"], p["finished"]) == (
            r["completion"],
            r["correct"],
            r["reward"],
            r["finished"],
        )
        assert {k: v for k, v in r.items() if k in p["components"]} == p["components"]
        if "desc_exact" in r:
            assert p["description"] == {
                "exact": r["desc_exact"],
                "f1": r["desc_f1"],
                "attr_f1": r["desc_attr_f1"],
            }
        else:
            assert "description" not in p
    for k in ("exact", "f1", "attr_f1"):
        assert summary["description"][k] == pytest.approx(100 * metrics[f"desc_{k}"], abs=0.01)
