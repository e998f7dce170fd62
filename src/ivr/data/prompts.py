"""Every prompt the method uses, in one place (IVR-R1 paper, appendix A.3).

The paper's prompt texts were lost in extraction, so these are ours. They are deliberately short:
the same strings are used to write the cold-start demonstrations (``data/demos.py``), to sample
answers, and to drive the re-reasoning loop (``rl/rectify.py``), so a tiny model trained from
scratch sees exactly what it will be asked at RL time. Users override any of them with a YAML
file (``ivr.prompts: path.yaml``) holding the same keys.

Placeholders: ``{question}``, ``{response}`` (a previous answer), ``{critique}``,
``{description}`` (scene text, used instead of the image in the paper's §5.2 ablation).

The two ends of a prompt live here too, once for every layer: ``question_prompt`` builds the
ORIGINAL question chat (trainer, evaluator, SFT), and ``extract_tag`` reads a tag such as
``<desc>`` back out of a response (rectification, self-reward, the world's metrics).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import yaml

from ..types import Prompt, Sample

#: Appended to every question: the paper's `<desc>` → `<think>` → `\boxed{}` answer format.
ANSWER = (
    "{question}\n"
    "First describe the image in <desc></desc>, then reason step by step in <think></think>, "
    "then give the final answer in \\boxed{{}}."
)

#: Visual erosion localization (paper §3.2, step 2): the policy re-reads the image and names the
#: first step where the previous answer contradicts it.
CRITIQUE = (
    "{question}\n"
    "A previous answer was:\n{response}\n"
    "This answer is wrong. Look at the image again and find the first step that contradicts "
    "the image. Say what the answer claims and what the image really shows."
)

#: Automated trajectory rectification (paper §3.2, step 3): a standalone answer in the same
#: format, so the accepted trace can be trained as a response to the original prompt.
RECTIFY = (
    "{question}\n"
    "A previous answer was:\n{response}\n"
    "Critique: {critique}\n"
    "Answer the question again from scratch. First describe the image in <desc></desc>, then "
    "reason step by step in <think></think>, then give the final answer in \\boxed{{}}."
)

#: The paper's §5.2 ablation: the image is replaced by a textual description of the scene.
DESCRIPTION_CONTEXT = "Scene: {description}\n"

#: Vision-SR1-style self-reward: the policy must answer from its own description alone.
DESCRIPTION_ONLY_ANSWER = (
    "Scene: {description}\n{question}\n"
    "Answer from the scene description only. Give the final answer in \\boxed{{}}."
)


@dataclass(frozen=True)
class PromptSet:
    """The prompt texts as one value, so a run can log and override them together."""

    answer: str = ANSWER
    critique: str = CRITIQUE
    rectify: str = RECTIFY
    description_context: str = DESCRIPTION_CONTEXT
    description_only_answer: str = DESCRIPTION_ONLY_ANSWER

    @classmethod
    def load(cls, path: str | Path | None) -> PromptSet:
        """The defaults, with the keys of the YAML file at ``path`` (if any) replacing them."""
        if path is None:
            return cls()
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"prompt file not found: {path}")
        data = yaml.safe_load(path.read_text()) or {}
        known = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or set(data) - known:
            bad = sorted(set(data) - known) if isinstance(data, dict) else data
            raise ValueError(f"{path}: unknown prompt keys {bad}; expected some of {sorted(known)}")
        return replace(cls(), **{k: str(v) for k, v in data.items()})


def question_text(question: str, answer_type: str | None, prompts: PromptSet | None = None) -> str:
    """The user text of a row's ORIGINAL prompt: the paper's answer-format instruction around the
    question, except box rows, whose question carries its own output instruction (Vision-R1)."""
    if answer_type == "boxes":
        return question
    return (prompts or PromptSet()).answer.format(question=question)


def question_prompt(sample: Sample, images: Sequence[Any], prompts: PromptSet) -> Prompt:
    """The ORIGINAL prompt of a sample (``question_text``), with its images: what the trainer
    samples from and the evaluator asks (the cold-start demonstrations use the same text)."""
    return user_prompt(question_text(sample.question, sample.answer_type, prompts), tuple(images))


def user_prompt(
    text: str,
    images: tuple = (),
    *,
    description: str | None = None,
    description_template: str = DESCRIPTION_CONTEXT,
) -> Prompt:
    """A one-turn chat: image placeholders first, then the text (Qwen-VL convention).

    With ``description`` the images are dropped and the scene text is put in their place — the
    rectification context of the paper's §5.2 ablation.
    """
    if description is not None:
        scene = description_template.format(description=description)
        content = [{"type": "text", "text": scene + text}]
        return Prompt(messages=({"role": "user", "content": content},), images=())
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": text}]
    return Prompt(messages=({"role": "user", "content": content},), images=tuple(images))


# ----------------------------------------------------------------------------------- response tags


def extract_tag(text: str, tag: str, *, unclosed: bool = False) -> str | None:
    """The stripped text of the FIRST ``<tag>…</tag>`` block of ``text``, or None without one.

    An unclosed block (a generation cut off at its token limit) counts as absent, unless
    ``unclosed=True``: then it runs to the end of the text. The re-reasoning loop reads the
    policy's own description strictly (``rl/rectify.py``); the description metrics of the
    synthetic world read it leniently (``extract_description``).

    >>> extract_tag("<desc> a red circle </desc><think>1</think>", "desc")
    'a red circle'
    >>> extract_tag("<desc>a</desc> <desc>b</desc>", "desc")  # the first block
    'a'
    >>> extract_tag("<desc>cut off", "desc") is None
    True
    >>> extract_tag("<desc>cut off", "desc", unclosed=True)
    'cut off'
    >>> extract_tag("<desc></desc>", "desc"), extract_tag("\\boxed{2}", "desc")
    ('', None)
    """
    end = f"(?:</{re.escape(tag)}>|$)" if unclosed else f"</{re.escape(tag)}>"
    m = re.search(f"<{re.escape(tag)}>(.*?){end}", text, re.S)
    return m.group(1).strip() if m else None


def extract_description(response: str) -> str | None:
    """The text of the first ``<desc>`` block of a response (to its end if unclosed), or None."""
    return extract_tag(response, "desc", unclosed=True)
