r"""Getting the answer out of a completion: the response text, the LAST ``\boxed{}``, the
right-hand side of a box's last ``=``, an option letter, and dataset columns as lists.

Pure string handling, shared by every reward (accuracy, format, localization) and by the data
tools that read a model's answer; no grading happens here (``answer.py`` grades what comes out).
"""

from __future__ import annotations

import re
from typing import Any

from ivr.rewards.normalize import _strip_latex


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, {"type": "image"}, ...]
        parts = [p.get("text") for p in content if isinstance(p, dict)]
        return "".join(p for p in parts if isinstance(p, str))
    return ""


def completion_text(completion: Any) -> str:
    """The response text of one completion, whatever shape TRL hands it in.

    A string is returned as is; for a chat message list, the content of the last assistant
    message (or of the last message when no message has a role); content may itself be a list
    of ``{"type": "text", "text": ...}`` parts. Anything else gives ``""`` (never raises).

    >>> completion_text([{"role": "assistant", "content": [{"type": "text", "text": "hi"}]}])
    'hi'
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return _content_text(completion.get("content"))
    if isinstance(completion, (list, tuple)):
        messages = [m for m in completion if isinstance(m, dict)]
        assistant = [m for m in messages if m.get("role") == "assistant"]
        chosen = assistant or [m for m in messages if "role" not in m] or messages
        return _content_text(chosen[-1].get("content")) if chosen else ""
    return ""


_BOXED_RE = re.compile(r"\\boxed\s*\{")


def boxed_span(text: str) -> tuple[int, int] | None:
    r"""``(start, end)`` of the LAST ``\boxed{`` content: ``text[start:end]`` is the content and
    ``text[end]`` its closing brace; None when there is no box or the last one is unbalanced."""
    if not isinstance(text, str):
        return None
    starts = [m.end() for m in _BOXED_RE.finditer(text)]
    if not starts:
        return None
    start = starts[-1]
    depth, i = 1, start
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return start, i
        i += 1
    return None


def extract_boxed(text: str) -> str | None:
    r"""Content of the LAST ``\boxed{...}`` in ``text``, brace-matched; None if absent/unbalanced.

    Backslash-escaped braces (``\{``) do not count, so sets survive. An unbalanced last box
    (a truncated response) gives None rather than an earlier box: the final answer is missing.

    >>> extract_boxed(r"so \boxed{1} ... finally \boxed{\frac{1}{2}}.")
    '\\frac{1}{2}'
    >>> extract_boxed(r"\boxed {\{1, 2\}}")
    '\\{1, 2\\}'
    >>> extract_boxed(r"\boxed{3") is None
    True
    """
    span = boxed_span(text)
    return None if span is None else text[span[0] : span[1]]


#: An ``=`` after which the answer follows (``x = 5``, ``x := 5``, ``x == 5``), or an
#: ``\approx``; ``<=``, ``>=`` and ``!=`` are relations, not assignments.
_EQUALS_RE = re.compile(r"(?<![<>!])=|\\approx(?![A-Za-z])|≈")


def _final_answer(pred: str) -> str:
    r"""What a numeric box states: the right-hand side of its LAST ``=`` (or ``\approx``),
    else the whole box. ``sum = 1 + 6 + 6`` -> ``1 + 6 + 6``; ``x = y = 5`` -> ``5``.

    Whatever comes before that ``=`` is not the answer, so it cannot make it right (``foo. sum =
    2 + 3`` is 5, not the 3 math-verify would pick out of the whole box) nor wrong.
    """
    ends = [m.end() for m in _EQUALS_RE.finditer(pred)]
    return pred[ends[-1] :] if ends else pred


_LETTER_RE = re.compile(
    r"^(?i:(?:the\s+)?(?:correct\s+)?(?:answer|option|choice)\s*(?:is|:)?\s*)?"
    r"[(\[]?\s*([A-Ja-j])\s*[)\]]?(?:\s*[.:)]\s*.*|\s*)$",
    re.DOTALL,
)


def _pred_letter(pred: str) -> str | None:
    """``B``, ``(B)``, ``[B]``, ``B.``, ``B)``, ``B: text``, ``Option B``; lower case only alone."""
    s = _strip_latex(pred).strip().rstrip(".")
    m = _LETTER_RE.match(s)
    if m is None:
        return None
    letter = m.group(1)
    if letter.islower() and len(re.sub(r"[\s()\[\].]", "", s)) > 1:
        return None  # "a cat" is not option A
    return letter.upper()


def column(value: Any, n: int, name: str) -> list[Any]:
    """A dataset column as a list of ``n`` values: None and scalars broadcast, lists checked.

    Raises ValueError naming the column when a list has the wrong length.
    """
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise ValueError(f"column {name!r} has {len(values)} values for {n} completions")
    return values
