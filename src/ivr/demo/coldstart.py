"""The two-stage cold start of the science demo (issue 16, items 1–2).

    stage 1   answers only: ``<desc>…</desc> <think>…</think> \\boxed{}`` demonstrations of the
              world (ivr.sft), long enough for the vision tower to read digits
    mine      the stage-1 model answers training prompts at T = 1; its OWN wrong answers are
              diagnosed exactly against the known scene (data/diagnose.py)
    stage 2   continue SFT on answers + critique / rectify demonstrations of those own failures
              (the critique localises the first wrong step, the rectification is the true trace)
              + description-only answers (so the Vision-SR1 self-reward baseline has a policy that
              can answer from a description, as its paper's cold start does)

Why two stages: demonstrations of the errors the policy really makes can only be written once a
policy exists; critiques of invented errors taught the policy to invent errors (issue 16, item 4).
Every function is resumable through its output files; ``mine`` is seeded.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..data.diagnose import diagnose, own_failure_demos
from ..data.prompts import PromptSet
from ..eval.protocol import read_jsonl

__all__ = [
    "desc_only_demos",
    "mine_own_answers",
    "stage2_rows",
    "summarise_mined",
    "tokenizer_corpus",
]


#: Sentences in the words of the diagnoses (data/diagnose.py), so the tiny model's tokenizer, which is
#: trained before any critique exists, keeps them short.
_CRITIQUE_WORDS = [
    "The description says the digit in the blue square at top left is 3, but the image shows 8.",
    "The description misses the blue circle with 7 at lower right, which the image shows.",
    "The description lists a blue triangle with 2 at top right, but the image shows no shape there.",
    "The description says the square at top left is blue, but the image shows a red square there.",
    "The description says the red shape at top left is a circle, but the image shows a red square "
    "there.",
    "The reasoning misses the 7 at lower right, a blue shape in the description.",
    "The reasoning includes the 5 at top left, but the description says that shape is red, not blue.",
    "The reasoning reads the digit at top left as 3, but the description says 8.",
    "The reasoning adds 4 + 7 = 12, but 4 + 7 = 11.",
    "The final answer 12 does not match the reasoning, which gives 11.",
]


def tokenizer_corpus(data_dir: str | Path, prompts: PromptSet | None = None) -> list[str]:
    """The text a tiny model's tokenizer is trained on: the world's demonstrations, the critique,
    rectify and description-only prompts around 300 of them, and the diagnoses' words."""
    from ..data.sft_rows import load_sft_rows, sft_texts

    ps = prompts or PromptSet()
    rows = load_sft_rows(Path(data_dir) / "sft.jsonl")
    corpus = sft_texts(rows)
    for r in rows[:300]:
        answer = r["messages"][1]["content"]
        question = r["messages"][0]["content"][1]["text"].split("\n")[0]
        corpus.append(ps.critique.format(question=question, response=answer))
        corpus.append(ps.rectify.format(question=question, response=answer, critique="x"))
        corpus.append(
            ps.description_only_answer.format(
                description="a red circle with 3 at top left", question=question
            )
        )
    return corpus + _CRITIQUE_WORDS * 50


def mine_own_answers(
    model_dir: str | Path,
    data_dir: str | Path,
    *,
    n_prompts: int,
    samples: int = 4,
    seed: int = 0,
    max_new_tokens: int = 96,
    batch_prompts: int = 16,
    split: str = "train",
    offset: int = 0,
) -> list[dict[str, Any]]:
    """``samples`` answers at T = 1 from ``model_dir`` to ``n_prompts`` rows of ``data_dir``'s
    ``split`` (from row ``offset``): ``[{"row": raw row, "responses": [str, …]}]``."""
    from tqdm.auto import tqdm

    from ..eval.protocol import row_prompts
    from ..models.policy import Policy

    data_dir = Path(data_dir)
    rows = read_jsonl(data_dir / f"{split}.jsonl")[offset : offset + n_prompts]
    policy = Policy.from_pretrained(model_dir)
    policy.model.eval()
    out = []
    for i in tqdm(range(0, len(rows), batch_prompts), desc="mine own answers", leave=False):
        chunk = rows[i : i + batch_prompts]
        prompts = row_prompts(chunk, data_dir)
        gens = policy.generate(
            prompts,
            max_new_tokens=max_new_tokens,
            temperature=1.0,
            num_return_sequences=samples,
            seed=seed * 1_000_003 + i,
        )
        out += [{"row": r, "responses": [g.text for g in gs]} for r, gs in zip(chunk, gens)]
    return out


def summarise_mined(mined: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Sampled accuracy, the share of prompts with no correct sample, and what kind of step went
    wrong first in the failures (the numbers issue 16 asks to measure)."""
    kinds: Counter = Counter()
    n_ok = n_all = all_fail = 0
    for m in mined:
        oks = []
        for resp in m["responses"]:
            dx = diagnose(resp, m["row"])
            oks.append(dx is None)
            if dx is not None:
                kinds[dx.kind] += 1
        n_ok += sum(oks)
        n_all += len(oks)
        all_fail += not any(oks)
    fails = sum(kinds.values())
    return {
        "prompts": len(mined),
        "samples": n_all,
        "sampled_accuracy": n_ok / max(n_all, 1),
        "all_fail_share": all_fail / max(len(mined), 1),
        "failure_kinds": {k: v / max(fails, 1) for k, v in sorted(kinds.items())},
    }


def desc_only_demos(
    rows: Sequence[dict[str, Any]], prompts: PromptSet | None = None
) -> list[dict[str, Any]]:
    """Text-only rows: the TRUE scene description + question → the reasoning and the answer.
    What a Vision-SR1 policy is asked during its self-reward (rl/self_reward.py)."""
    from ..data.demos import trace

    ps = prompts or PromptSet()
    out = []
    for r in rows:
        full = trace(r["query"], r["scene"])
        reply = full[full.index("<think>") :]
        user = ps.description_only_answer.format(
            description=r["description"], question=r["question"]
        )
        out.append(
            {
                "id": f"{r['id']}-desc-only",
                "images": [],
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": user}]},
                    {"role": "assistant", "content": reply},
                ],
                "kind": "desc_only",
                "source": r["id"],
                "corruption": None,
            }
        )
    return out


def stage2_rows(
    data_dir: str | Path,
    mined: Sequence[dict[str, Any]],
    *,
    failures_per_prompt: int = 1,
    answer_ratio: float = 1.0,
    desc_only_ratio: float = 0.25,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Stage-2 SFT rows: own-failure critique/rectify demos (≤ ``failures_per_prompt`` per
    prompt), answer demos (``answer_ratio`` × as many, so answering is not forgotten) and
    description-only answers (``desc_only_ratio`` × as many), shuffled with ``seed``."""
    rng = random.Random(f"stage2/{seed}")
    rows, responses = [], []
    for m in mined:
        wrong = [r for r in m["responses"] if diagnose(r, m["row"]) is not None]
        for resp in wrong[:failures_per_prompt]:
            rows.append(m["row"])
            responses.append(resp)
    own = own_failure_demos(rows, responses, seed=seed)
    answers = [
        r for r in read_jsonl(Path(data_dir) / "sft.jsonl") if r.get("kind", "answer") == "answer"
    ]
    rng.shuffle(answers)
    train = read_jsonl(Path(data_dir) / "train.jsonl")
    rng.shuffle(train)
    out = (
        own
        + answers[: int(answer_ratio * len(own))]
        + desc_only_demos(train[: int(desc_only_ratio * len(own))])
    )
    rng.shuffle(out)
    return out
