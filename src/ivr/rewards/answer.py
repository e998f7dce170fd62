r"""Answer grading and the accuracy reward r_acc (IVR-R1 paper, appendix A.1).

r_acc = 1 iff the content of the LAST ``\boxed{}`` of a response grades equal to the ground truth
with the task's grader, else 0 (no ``\boxed{}`` -> 0). The graders, one per answer type:

=============  ================================================================================
integer        exact integer value of the box's number or expression (with an ``=``, of the
               right-hand side of the last one); units, ``x = 12``, thousands commas tolerated
float          both sides rounded to ``precision`` decimals (MathVista convention); when the
               precision is missing, to the number of decimals written in the gold; the box
               read as for integer
expression     math-verify ``parse`` + ``verify`` (fractions, radicals, sets, tuples, intervals,
               degrees, percent, ``x=3`` vs ``3``)
choice         letters A-J (``B``, ``(B)``, ``\text{B}``, ``B. text``, ``B)``) or the option text;
               the gold may be a letter or the option text (MathVista gives the text); an
               answer that is no option's text is matched to options by value (``2/3`` picks
               ``\frac{2}{3}``) with math-verify, in-process only
text           case-, punctuation- and whitespace-insensitive equality
=============  ================================================================================

Where the pieces live: ``extract.py`` gets the answer out of a completion (last box, the
right-hand side of its last ``=``, an option letter); ``normalize.py`` unifies LaTeX, radicals,
degrees and numbers; ``expression.py`` runs math-verify within a time bound on any thread, with
the worker process of ``grader_worker.py`` for risky answers. This module is the graders of
each answer type and the TRL-style reward on top of them.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
from collections.abc import Sequence
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from ivr.rewards.expression import (
    _COMMAND_RE,
    _IN_PROCESS_DIGITS,
    _MV_LOCK,
    DEFAULT_TIMEOUT_S,
    MAX_ANSWER_CHARS,
    _cheap_enough,
    _expr_key,
    _grade_math,
    _plain_rational,
    _rational_eq,
    _verify_unbounded,
    grade_expression,
)
from ivr.rewards.extract import (
    _final_answer,
    _pred_letter,
    column,
    completion_text,
    extract_boxed,
)
from ivr.rewards.normalize import (
    _normalize_math,
    _parse_fraction,
    _strip_latex,
    _text_key,
    parse_number,
)

logger = logging.getLogger(__name__)

#: Answer types the accuracy reward grades.
ANSWER_TYPES: tuple[str, ...] = ("integer", "float", "expression", "choice", "text")
#: Answer types that are somebody else's job (the localization reward): accuracy returns None.
NOT_APPLICABLE_TYPES: frozenset[str] = frozenset({"boxes", "bbox", "box", "detection", "grounding"})
#: Other spellings found in public datasets, mapped to the canonical names (also used by the
#: dataset loader, so a row's ``answer_type`` means the same thing everywhere).
ANSWER_TYPE_ALIASES: dict[str, str] = {
    "int": "integer",
    "number": "float",
    "numeric": "float",
    "math": "expression",
    "latex": "expression",
    "list": "expression",  # MathVista "list" answers: math-verify compares them as tuples/sets
    "multi_choice": "choice",
    "multiple_choice": "choice",
    "mcq": "choice",
    "option": "choice",
    "str": "text",
    "string": "text",
    "free_form": "text",
    **{name: "boxes" for name in NOT_APPLICABLE_TYPES if name != "boxes"},
}

_LETTERS = "ABCDEFGHIJ"


# --------------------------------------------------------------------------------------------
# The graders
# --------------------------------------------------------------------------------------------


def _gold_number(answer: str, field: str = "answer") -> Decimal:
    value = parse_number(answer)
    if value is None or not value.is_finite():
        raise ValueError(f"{field}={answer!r} is not a number, but its answer_type is numeric")
    return value


#: A trailing ``\text{ cm}``-style group: a unit after an expression (``2 \times 6 \text{ cm}``).
_TRAILING_WRAPPER_RE = re.compile(
    r"\\(?:text|textit|textrm|texttt|mathrm|mbox|operatorname)\s*\{[^{}0-9]*\}\s*$"
)


def _value_expression(answer: str, unit: str | None) -> str | None:
    r"""``answer`` (a ``_final_answer``) as an expression to take the value of, or None when it
    is not mathematics.

    A trailing unit is dropped first (the ``unit`` column, or a ``\text{}``-style group without
    digits: ``2 \times 6 \text{ cm}``), and trailing periods. What is left must read as
    mathematics (``_math_of``: no word of two or more letters), so ``foo. 2 + 3`` and
    ``0 apples + 3`` (0·a·p·p·l·e·s + 3 = 3 to sympy) have no value; math-verify must then parse
    it whole (``latex_only``).
    """
    s = answer.strip().rstrip(".").strip()
    u = _strip_latex(str(unit)).strip() if unit else ""
    if u and s.lower().endswith(u.lower()):
        s = s[: -len(u)].strip()
    s = _TRAILING_WRAPPER_RE.sub("", s).strip()
    if not s or _math_of(_normalize_math(_strip_latex(s))) is None:
        return None
    return s


def _numeric_answer(pred: str, unit: str | None) -> tuple[Decimal | None, str]:
    r"""``(number, answer)``: the number a numeric box states, if it states one, and its answer
    (``_final_answer``), which is what the graders fall back on.

    The whole box is tried first (``x = 12``, ``12 cm``, ``12 apples``), then its answer
    (``5 \text{ cm} = 50 \text{ mm}`` -> 50).
    """
    value = parse_number(pred, unit)
    answer = _final_answer(pred)
    if value is None and answer != pred:
        value = parse_number(answer, unit)
    return value, answer


def _states_value(answer: str, gold: Decimal, unit: str | None) -> bool:
    """``answer`` is an expression (``_value_expression``) whose value is ``gold``."""
    expr = _value_expression(answer, unit)
    if expr is None:
        return False
    return _grade_math(expr, format(gold, "f"), timeout_s=DEFAULT_TIMEOUT_S, latex_only=True)


def grade_integer(pred: str, gold: str, *, unit: str | None = None) -> bool:
    r"""Integer answers: equal values (``12.0`` counts as ``12``), units tolerated.

    The answer is the box's number, or the value of the expression it states; with an ``=`` in
    the box, of its right-hand side (``_final_answer``). Words around the numbers make it no
    expression, whatever number math-verify could pick out of them.

    >>> grade_integer("12 cm", "12"), grade_integer("\\frac{24}{2}", "12"), grade_integer("13", "12")
    (True, True, False)
    >>> grade_integer("sum = 1 + 6 + 6", "13"), grade_integer("foo. sum = 2 + 3", "3")
    (True, False)
    """
    target = _gold_number(gold)
    if target != target.to_integral_value():
        raise ValueError(f"answer={gold!r} is not an integer, but its answer_type is 'integer'")
    value, answer = _numeric_answer(pred, unit)
    if value is not None:
        return value.is_finite() and value == target
    return _states_value(answer, target.to_integral_value(), unit)


def _decimals(s: str) -> int:
    m = re.search(r"\.(\d+)", s)
    return len(m.group(1)) if m else 0


def grade_float(
    pred: str, gold: str, *, precision: int | None = None, unit: str | None = None
) -> bool:
    """Float answers, MathVista convention: both sides rounded to ``precision`` decimals.

    With no precision, the gold is taken to be written at the intended precision, so its number
    of decimals is used (``"1.5"`` -> 1). Rounding is half-up on the decimal digits as written.
    The box's answer is read as by ``grade_integer``; an expression's value is compared by
    math-verify's rule (6 decimals), not rounded to ``precision``.

    >>> grade_float("1.2499", "1.25", precision=2), grade_float("3.14159", "3.14")
    (True, True)
    >>> grade_float("1.3", "1.25", precision=2)
    False
    """
    target = _gold_number(gold)
    digits = _decimals(str(gold)) if precision is None else precision
    value, answer = _numeric_answer(pred, unit)
    if value is None:
        value = _parse_fraction(answer)
    if value is None:
        return _states_value(answer, target, unit)
    if not value.is_finite():
        return False
    quantum = Decimal(1).scaleb(-digits)
    try:
        return value.quantize(quantum, ROUND_HALF_UP) == target.quantize(quantum, ROUND_HALF_UP)
    except InvalidOperation:  # absurdly large prediction
        return False


_WORD_RE = re.compile(r"[A-Za-z]{2,}")
_MATH_MARK_RE = re.compile(r"[\d+\-*/^=<>π]|\\(?:sqrt|[dt]?frac|pi)(?![A-Za-z])")


def _math_of(s: str) -> str | None:
    r"""A string already through ``_strip_latex`` and ``_normalize_math`` as mathematics, or
    None when it reads as words.

    Mathematics here: a digit, an operator (``+ - * / ^ = < >``), ``\sqrt``, ``\frac`` or
    ``\pi`` somewhere; no word of two or more letters outside LaTeX commands (``2 cm``,
    ``Paris``, ``New-York`` are words); not a bare option letter.
    """
    t = s.replace("−", "-").replace("–", "-").strip()
    if not t or len(t) > MAX_ANSWER_CHARS or _pred_letter(t) is not None:
        return None
    if not _MATH_MARK_RE.search(t) or _WORD_RE.search(_COMMAND_RE.sub(" ", t)):
        return None
    return t


@functools.lru_cache(maxsize=65536)
def _option_key(s: str) -> tuple[Decimal | None, str, str | None]:
    """What an option or answer text is compared by: its number if any, its normalised text,
    and its mathematical form (``_math_of``) if it reads as mathematics.

    Cached: a GRPO group grades G completions against the same options.
    """
    base = _normalize_math(_strip_latex(s))
    return parse_number(s), _text_key(base), _math_of(base)


def _same_option_text(a: str, b: str) -> bool:
    """Same option text: equal numbers; else, for two mathematical texts, the same LaTeX up to
    spacing (text normalisation would drop the operators: ``x+1`` is not ``x-1``, ``5!`` is not
    ``5``); else the same normalised text."""
    (x, na, ma), (y, nb, mb) = _option_key(a), _option_key(b)
    if x is not None and y is not None:
        return x == y
    if ma is not None and mb is not None:
        return _expr_key(ma) == _expr_key(mb)
    return bool(na) and na == nb


@functools.lru_cache(maxsize=65536)
def _value_text(s: str) -> str | None:
    """``s`` ready for math-verify in-process: mathematics (``_math_of``) that passes the
    cheap screen (``_cheap_enough``), else None."""
    t = _option_key(s)[2]
    return t if t is not None and _cheap_enough(t) else None


def _same_value(text: str, option: str) -> bool:
    r"""``text`` and ``option`` are the same mathematical value (``2/3`` and ``\frac{2}{3}``).

    math-verify, in-process only (both sides pass the cheap screen): an option is never worth a
    round trip to the worker. Two plain numbers were already compared by ``_same_option_text``.
    """
    a, b = _value_text(text), _value_text(option)
    if a is None or b is None:
        return False
    if _option_key(text)[0] is not None and _option_key(option)[0] is not None:
        return False  # two numbers: decided by value already (a "%" is dropped, not /100)
    fast_a, fast_b = _plain_rational(a), _plain_rational(b)
    if fast_a is not None and fast_b is not None:
        return _rational_eq(fast_a, fast_b)
    with _MV_LOCK:
        try:
            return bool(_verify_unbounded(b, a, max_digits=_IN_PROCESS_DIGITS))
        except Exception:
            return False


def _choice_indices(text: str, choices: Sequence[str], *, as_letter: str | None) -> set[int]:
    """All option indices ``text`` can denote: as a letter in range, or as an option's text.

    An option's text (normalised, or the same number) wins; only when no option's text matches
    and ``text`` is not a letter are options matched by mathematical value, so an answer that is
    one option's text never also denotes another option of the same value.
    """
    out = {i for i, c in enumerate(choices) if _same_option_text(text, c)}
    if not out and as_letter is None and _value_text(text) is not None:
        out = {i for i, c in enumerate(choices) if _same_value(text, c)}
    if as_letter is not None:
        i = _LETTERS.index(as_letter)
        if not choices or i < len(choices):
            out.add(i)
    return out


def grade_choice(pred: str, gold: str, *, choices: Sequence[str] | None = None) -> bool:
    r"""Multiple choice: letter or option text on either side, letters valid within the options.

    An answer that is no option's text and no letter is matched to the options by value
    (``2/3`` denotes ``\frac{2}{3}``; math-verify, in-process). When a string could denote two
    options (a letter that is also another option's text, or a value two options share), the
    answer is right if any reading of the prediction meets any reading of the gold.

    >>> opts = ["3", "4", "5"]
    >>> grade_choice("(B)", "4", choices=opts), grade_choice("B. 4", "B", choices=opts)
    (True, True)
    >>> grade_choice("\\text{4}", "B", choices=opts), grade_choice("D", "A", choices=opts)
    (True, False)
    """
    gold_s = str(gold).strip()
    opts = [str(c) for c in (choices or [])]
    gold_letter = gold_s.strip("()[]. ").upper() if len(gold_s.strip("()[]. ")) == 1 else None
    gold_letter = gold_letter if gold_letter and gold_letter in _LETTERS else None
    gold_idx = _choice_indices(gold_s, opts, as_letter=gold_letter)
    if not gold_idx:
        # The gold only (never the prediction) falls back to plain normalised text, operators
        # dropped, as options were matched before: a gold that named an option still does.
        key = _option_key(gold_s)[1]
        gold_idx = {i for i, c in enumerate(opts) if key and key == _option_key(c)[1]}
    if not gold_idx:
        if opts:
            raise ValueError(
                f"answer={gold_s!r} is neither a letter within the {len(opts)} choices "
                f"nor the text of one of them (choices={opts!r})"
            )
        return grade_text(pred, gold_s)
    pred_idx = _choice_indices(pred, opts, as_letter=_pred_letter(pred))
    return bool(pred_idx & gold_idx)


def grade_text(pred: str, gold: str) -> bool:
    """Free text: equal after lower-casing, dropping punctuation and collapsing whitespace.

    Two numbers compare by value, so ``"2.50"`` equals ``"2.5"`` (and punctuation inside a
    number is never dropped).

    >>> grade_text("Yes.", "yes"), grade_text("New-York", "new york"), grade_text("2.50", "2.5")
    (True, True, True)
    """
    return _same_option_text(pred, str(gold))


# --------------------------------------------------------------------------------------------
# Answer types and the reward
# --------------------------------------------------------------------------------------------

_INT_RE = re.compile(r"^[+\-]?\d+$")
_FLOAT_RE = re.compile(r"^[+\-]?(?:\d+\.\d*|\.\d+|\d+(?:\.\d*)?[eE][+\-]?\d+)$")
_MATHY_RE = re.compile(r"[\\^_{}=/<>√π°%]|\d\s*[-+*]\s*\d|^[(\[].*\d.*[)\]]$|\bsqrt\b|\bpi\b")


def infer_answer_type(answer: Any, choices: Sequence[str] | None = None) -> str:
    r"""Answer type when a dataset gives none: choice / integer / float / expression / text.

    >>> [infer_answer_type(a) for a in ["12", "0.5", "\\frac{1}{2}", "(B)", "Paris"]]
    ['integer', 'float', 'expression', 'choice', 'text']
    """
    if choices:
        return "choice"
    s = str(answer).strip()
    if _INT_RE.match(s.replace(",", "")) and (
        "," not in s or re.match(r"^[+\-]?\d{1,3}(,\d{3})+$", s)
    ):
        return "integer"
    if _FLOAT_RE.match(s):
        return "float"
    if re.fullmatch(r"[(\[]?\s*[A-J]\s*[)\]]?", s):
        return "choice"
    if _MATHY_RE.search(s):
        return "expression"
    return "text"


def resolve_answer_type(
    answer: Any, answer_type: str | None, choices: Sequence[str] | None
) -> str | None:
    """Canonical answer type of a row; None when the accuracy reward does not apply.

    A row with options is multiple choice whatever its declared type: MathVista labels a
    multiple-choice row with the type of the option's content (``"text"``, ``"integer"``), and a
    model rightly answers it with a letter. Raises ValueError naming ``answer_type`` when it is
    not a known type.

    >>> resolve_answer_type("4", "integer", ["3", "4"]), resolve_answer_type("x", "boxes", None)
    ('choice', None)
    """
    opts = _choices_row(choices)
    if answer_type is None or (isinstance(answer_type, float) and math.isnan(answer_type)):
        return infer_answer_type(answer, opts)
    key = str(answer_type).strip().lower()
    if key in NOT_APPLICABLE_TYPES:
        return None
    key = ANSWER_TYPE_ALIASES.get(key, key)
    if key not in ANSWER_TYPES:
        known = ", ".join(ANSWER_TYPES + tuple(sorted(NOT_APPLICABLE_TYPES)))
        raise ValueError(f"answer_type={answer_type!r} is not one of: {known}")
    return "choice" if opts else key


def _precision(value: Any) -> int | None:
    if value is None:
        return None
    try:
        p = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"precision={value!r} is not a number of decimals") from None
    if math.isnan(p):
        return None
    if p != int(p) or not 0 <= p <= 30:
        raise ValueError(f"precision={value!r} must be a whole number of decimals in 0..30")
    return int(p)


def _choices_row(value: Any) -> list[str] | None:
    """One row's options as strings; a JSON-list string is accepted (CSV / some parquet dumps)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            value = None
        if not isinstance(value, list):
            raise ValueError(f"choices={value!r} is a string but not a JSON list") from None
    if isinstance(value, (str, bytes)) or (
        not isinstance(value, Sequence) and not hasattr(value, "tolist")
    ):
        raise ValueError(f"choices={value!r} is not a list of options")
    opts = list(value.tolist() if hasattr(value, "tolist") else value)
    return [str(o) for o in opts] or None


def grade_answer(
    pred: str | None,
    answer: Any,
    answer_type: str | None = None,
    *,
    choices: Sequence[str] | None = None,
    precision: Any = None,
    unit: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> bool | None:
    r"""Grade an extracted answer (e.g. the boxed content) against one ground truth.

    Returns None when the row is not for this grader (answer_type ``boxes``, or no answer).
    Malformed ground truth raises ValueError naming the field; a malformed prediction never
    raises, it is simply wrong.

    >>> grade_answer("B", "4", choices=["3", "4"]), grade_answer("50\\%", "\\frac{1}{2}")
    (True, True)
    """
    if answer is None:
        return None
    opts = _choices_row(choices)
    kind = resolve_answer_type(answer, answer_type, opts)
    if kind is None:
        return None
    gold = str(answer).strip()
    digits = _precision(precision)
    unit = None if unit is None or (isinstance(unit, float) and math.isnan(unit)) else str(unit)
    # Validate the ground truth before touching the prediction, so its errors surface.
    if kind in ("integer", "float"):
        _gold_number(gold)
    if kind == "choice":
        grade_choice("", gold, choices=opts)
    if not isinstance(pred, str) or not pred.strip() or len(pred) > MAX_ANSWER_CHARS:
        return False
    try:
        if kind == "integer":
            return grade_integer(pred, gold, unit=unit)
        if kind == "float":
            return grade_float(pred, gold, precision=digits, unit=unit)
        if kind == "choice":
            return grade_choice(pred, gold, choices=opts)
        if kind == "text":
            return grade_text(pred, gold)
        if unit and pred.rstrip().endswith(unit):
            pred = pred.rstrip()[: -len(unit)]
        return grade_expression(pred, gold, timeout_s=timeout_s)
    except Exception:  # a prediction must never crash a training step
        logger.debug("grading raised on prediction %r", pred[:200], exc_info=True)
        return False


def _choices_column(value: Any, n: int) -> list[Any]:
    """Per-row option lists; one flat list of strings is broadcast to every row."""
    flat = isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value)
    json_rows = flat and len(value) == n and all(v.lstrip().startswith("[") for v in value)
    if flat and not json_rows:
        return [list(value)] * n
    return column(value, n, "choices")


def accuracy_reward(
    completions: Sequence[Any],
    answer: Any,
    choices: Any = None,
    answer_type: Any = None,
    precision: Any = None,
    unit: Any = None,
    **_: Any,
) -> list[float | None]:
    r"""r_acc (IVR-R1 A.1): 1.0 iff the last ``\boxed{}`` grades equal to ``answer``, else 0.0.

    TRL contract: dataset columns arrive as lists aligned with ``completions``; None for rows
    the reward does not apply to (answer_type ``boxes``, or no answer); other kwargs ignored.

    >>> accuracy_reward(
    ...     [r"<think>...</think> \boxed{(B)}", [{"role": "assistant", "content": r"\boxed{0.5}"}],
    ...      r"\boxed{7 cm}", "no box", r"[{'bbox_2d': [0, 0, 1, 1]}]"],
    ...     answer=["4", r"\frac{1}{2}", "7", "7", None],
    ...     choices=[["3", "4"], None, None, None, None],
    ... )
    [1.0, 1.0, 1.0, 0.0, None]
    """
    n = len(completions)
    rows = zip(
        completions,
        column(answer, n, "answer"),
        _choices_column(choices, n),
        column(answer_type, n, "answer_type"),
        column(precision, n, "precision"),
        column(unit, n, "unit"),
    )
    out: list[float | None] = []
    for completion, gold, opts, kind, digits, u in rows:
        pred = extract_boxed(completion_text(completion))
        ok = grade_answer(pred, gold, kind, choices=opts, precision=digits, unit=u)
        out.append(None if ok is None else float(ok))
    return out
