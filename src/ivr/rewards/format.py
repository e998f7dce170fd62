r"""Format reward r_format (IVR-R1 paper, appendix A.1).

r_format = 1 iff the response is ``<desc>…</desc>`` then ``<think>…</think>`` then a final
``\boxed{…}``, else 0. The paper calls it a structural regulariser: the description block
anchors the reasoning in what is seen before any logic is written, which is the quantity the
rest of IVR-R1 protects.

Precisely, a response earns 1.0 iff, after stripping surrounding whitespace:

1. it starts with the first tag block; each block ``<tag>content</tag>`` appears exactly once,
   in the configured order, with non-whitespace content, separated only by whitespace;
2. after the last block comes an answer part that contains no configured tag and ends with a
   balanced, non-empty ``\boxed{…}``; free text before the box is allowed ("The answer is
   \boxed{3}"), and after it only whitespace, a period or a closing ``$``.

Empty blocks earn 0: an empty ``<desc></desc>`` would let the policy collect the format reward
while skipping the description the method is about.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from ivr.rewards.extract import boxed_span, completion_text

#: The IVR-R1 template's blocks, in order.
DEFAULT_TAGS: tuple[str, ...] = ("desc", "think")
_TRAILER_RE = re.compile(r"[\s.$]*")


def _check_tags(tags: Sequence[str]) -> tuple[str, ...]:
    out = tuple(tags)
    for t in out:
        if not isinstance(t, str) or not re.fullmatch(r"[A-Za-z][\w-]*", t):
            raise ValueError(f"tags: {t!r} is not a valid tag name (letters, digits, _ or -)")
    if len(set(out)) != len(out):
        raise ValueError(f"tags: {out!r} repeats a tag")
    return out


def _answer_part_ok(rest: str, tags: tuple[str, ...]) -> bool:
    if any(f"<{t}>" in rest or f"</{t}>" in rest for t in tags):
        return False
    span = boxed_span(rest)
    if span is None or not rest[span[0] : span[1]].strip():
        return False
    return _TRAILER_RE.fullmatch(rest[span[1] + 1 :]) is not None


def format_score(text: str, tags: Sequence[str] = DEFAULT_TAGS) -> float:
    r"""1.0 iff ``text`` is the tag blocks in order, then a final ``\boxed{}``; else 0.0.

    >>> format_score("<desc>two cats</desc>\n<think>1+1</think>\n\\boxed{2}")
    1.0
    >>> format_score("<think>1+1</think><desc>two cats</desc> \\boxed{2}")
    0.0
    >>> format_score("<answer>2</answer>", tags=())  # no blocks: just a final box
    0.0
    """
    tags = _check_tags(tags)
    if not isinstance(text, str):
        return 0.0
    rest = text.strip()
    for tag in tags:
        open_, close = f"<{tag}>", f"</{tag}>"
        if not rest.startswith(open_):
            return 0.0
        end = rest.find(close)
        if end < 0:
            return 0.0
        content = rest[len(open_) : end]
        if not content.strip() or any(f"<{t}>" in content or f"</{t}>" in content for t in tags):
            return 0.0
        rest = rest[end + len(close) :].lstrip()
    return 1.0 if _answer_part_ok(rest, tags) else 0.0


def make_format_reward(tags: Sequence[str] = DEFAULT_TAGS) -> Callable[..., list[float | None]]:
    r"""A TRL-style format reward for another template, e.g. ``("think",)`` or ``("desc",)``.

    >>> think_only = make_format_reward(("think",))
    >>> think_only(["<think>2+2</think> \\boxed{4}"], answer=["4"])
    [1.0]
    >>> think_only.__name__
    'format_reward_think'
    """
    tags = _check_tags(tags)

    def reward(completions: Sequence[Any], **_: Any) -> list[float | None]:
        return [format_score(completion_text(c), tags) for c in completions]

    reward.__name__ = "format_reward" if tags == DEFAULT_TAGS else "format_reward_" + "_".join(tags)
    reward.__doc__ = f"1.0 iff blocks {tags!r} then a final \\boxed{{}}, else 0.0."
    return reward


def format_reward(completions: Sequence[Any], **_: Any) -> list[float | None]:
    r"""r_format (IVR-R1 A.1): ``<desc>…</desc>``, ``<think>…</think>``, final ``\boxed{}``.

    Any dataset columns passed along are ignored. For other tags use ``make_format_reward``.

    >>> format_reward([
    ...     "<desc>a red square</desc> <think>one shape</think> The answer is \\boxed{1}.",
    ...     [{"role": "assistant", "content": "<desc>x</desc><think>y</think>"}],
    ...     "<desc></desc><think>y</think>\\boxed{1}",
    ... ])
    [1.0, 0.0, 0.0]
    """
    return [format_score(completion_text(c), DEFAULT_TAGS) for c in completions]
