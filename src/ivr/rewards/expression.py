r"""Expression grading with math-verify, bounded in time on any thread (``grade_expression``).

Why the time bound looks the way it does: math-verify's own timeout uses ``signal.alarm``, which
raises off the main thread (TRL and our trainer grade in threads), and a hang inside sympy is
usually one C-level big-integer operation (``2^{2^{2^{2^{2^{2}}}}}``) that holds the GIL, so no
thread-based timeout can interrupt it. We therefore (1) call math-verify with its timeout disabled,
(2) grade in-process only strings a cheap screen proves harmless (short, whitelisted LaTeX, no
exponent towers, no big factorials) and whose parsed tree bounds every number below 10^100,
(3) send everything else to one persistent worker process (``grader_worker.py``) that is killed
when it overruns ``timeout_s``, and (4) refuse outright (grade 0) answers that could only be
compared by computing a number of more than ``MAX_DIGITS`` digits, or that are absurdly long or
nested. The common path never spawns a process; plain numbers and integer fractions skip
math-verify.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import threading
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

from ivr.rewards.grader_worker import shared_worker
from ivr.rewards.normalize import _normalize_math

#: Default wall-clock bound (seconds) for one expression grade sent to the worker process.
DEFAULT_TIMEOUT_S: float = 1.0
#: Numbers with more digits than this are never computed (``verify`` would hang on them).
MAX_DIGITS: float = 1e4
#: Longest boxed content we grade at all; no real answer is longer.
MAX_ANSWER_CHARS: int = 1_000
#: Deepest bracket nesting we grade at all (``{{{{...}}}}`` from a degenerate policy).
MAX_BRACE_DEPTH: int = 20


class _DropTimeoutWarning(logging.Filter):
    """math-verify warns once that we disabled its timeout: we did, deliberately (see module)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropTimeoutWarning())

# LaTeX commands the in-process path accepts; anything else (\gcd, \binom, \sum, \sin, ...) may
# make sympy evaluate something expensive while parsing, so it goes to the worker.
_SAFE_COMMANDS = frozenset(
    [
        "frac",
        "dfrac",
        "tfrac",
        "sqrt",
        "pi",
        "cdot",
        "times",
        "div",
        "pm",
        "mp",
        "left",
        "right",
        "circ",
        "text",
        "mathrm",
        "textbf",
        "mathbf",
        "textit",
        "textrm",
        "mbox",
        "infty",
        "cup",
        "cap",
        "le",
        "leq",
        "ge",
        "geq",
        "lt",
        "gt",
        "ne",
        "neq",
        "approx",
        "deg",
        "degree",
        "in",
        "emptyset",
        "varnothing",
        "displaystyle",
        "dots",
        "ldots",
        "cdots",
        "prime",
        "angle",
        "quad",
        "qquad",
        "alpha",
        "beta",
        "delta",
        "epsilon",
        "varepsilon",
        "theta",
        "vartheta",
        "lambda",
        "mu",
        "sigma",
        "phi",
        "varphi",
        "omega",
        "rho",
        "tau",
    ]
)
_COMMAND_RE = re.compile(r"\\([A-Za-z]+)")
_CALL_RE = re.compile(r"(?<![\\A-Za-z])([A-Za-z]{2,})\s*\(")


def _group_at(s: str, i: int) -> str:
    """The exponent token starting at ``s[i]``: a ``{}``/``()`` group, a command or a word."""
    while i < len(s) and s[i] == " ":
        i += 1
    if i >= len(s):
        return ""
    if s[i] in "{(":
        close = "}" if s[i] == "{" else ")"
        depth = 0
        for j in range(i, len(s)):
            depth += s[j] == s[i]
            depth -= s[j] == close
            if depth == 0:
                return s[i + 1 : j]
        return s[i + 1 :]
    m = re.match(r"\\?[A-Za-z0-9.]+", s[i:])
    return m.group(0) if m else s[i]


def _cheap_enough(s: str) -> bool:
    """Screen: True iff parsing and verifying ``s`` in-process cannot blow up.

    Conservative by construction: rejecting a harmless string only costs a round trip to the
    worker process, accepting a harmful one would hang the training step.
    """
    if len(s) > 200 or s.count("{") > 40:
        return False
    if any(c not in _SAFE_COMMANDS for c in _COMMAND_RE.findall(s)):
        return False
    if any(name.lower() != "sqrt" for name in _CALL_RE.findall(s)):
        return False
    t = s.replace("**", "^")
    for i, ch in enumerate(t):
        if ch == "^":
            exponent = _group_at(t, i + 1)
            n_digits = sum(c.isdigit() for c in exponent)
            if "^" in exponent or "!" in exponent or n_digits > 4:
                return False
        elif ch == "!" and not t.startswith("=", i + 1):
            before = t[:i].rstrip()
            if before.endswith((")", "}", "]")):
                return False
            m = re.search(r"\d+$", before)
            if m and len(m.group(0)) > 3:
                return False
    depth = 0
    for ch in t:
        depth += (ch == "{") - (ch == "}")
        if depth > 10:
            return False
    return True


def _log10_bound(expr: Any, depth: int = 0) -> float:
    """An upper bound on log10 of the magnitude of a sympy expression's numeric parts.

    Used to refuse expressions whose evaluation would need astronomically large integers
    (``10^{10^{10}}`` has 10^10 digits), without evaluating anything.
    """
    if depth > 60:
        return math.inf
    if getattr(expr, "is_Integer", False) or getattr(expr, "is_Rational", False):
        p, q = int(expr.p), int(expr.q)
        return max(abs(p).bit_length(), q.bit_length()) * 0.30103
    if getattr(expr, "is_Float", False):
        try:
            return math.log10(abs(float(expr)) + 1.0)
        except (OverflowError, ValueError):
            return math.inf
    args = getattr(expr, "args", ())
    if getattr(expr, "is_Pow", False):
        base, exp = (_log10_bound(a, depth + 1) for a in args)
        if exp > 7:  # exponent beyond 10^7
            return math.inf if base > 0 else 0.0
        return max(base, 0.30103) * 10.0**exp
    name = type(expr).__name__.lower()
    if name in {
        "factorial",
        "factorial2",
        "subfactorial",
        "gamma",
        "risingfactorial",
        "fallingfactorial",
        "binomial",
    }:
        inner = max((_log10_bound(a, depth + 1) for a in args), default=0.0)
        return math.inf if inner > 7 else 10.0**inner * max(inner, 1.0)
    if not args:
        return 1.0  # symbols, pi, e, ...
    bounds = [_log10_bound(a, depth + 1) for a in args]
    if getattr(expr, "is_Mul", False):
        return sum(bounds)
    return max(bounds) + math.log10(len(bounds))


def _size_bound(parsed: Sequence[Any]) -> float:
    """Largest magnitude bound (log10) over the parsed alternatives math-verify returned."""
    return max((_log10_bound(p) for p in parsed if not isinstance(p, str)), default=0.0)


@functools.lru_cache(maxsize=8192)
def _parse_cached(s: str, latex_only: bool = False) -> tuple[Any, ...]:
    """math-verify's parse of ``\\boxed{s}``.

    ``latex_only``: the box must parse whole as LaTeX, or nothing comes back. math-verify's
    default also tries its plain-expression extractor, which takes the last number it finds in a
    box it cannot parse (``foo. sum = 2 + 3`` -> 3): fine for free-form expressions, where
    the LaTeX parse comes first anyway, but the numeric graders need the box's value.
    """
    from math_verify import parse

    if not latex_only:
        return tuple(parse("\\boxed{" + s + "}", parsing_timeout=None))
    from math_verify import LatexExtractionConfig

    return tuple(
        parse(
            "\\boxed{" + s + "}",
            extraction_config=[LatexExtractionConfig(boxed_match_priority=0)],
            fallback_mode="no_fallback",
            extraction_mode="first_match",
            parsing_timeout=None,
        )
    )


#: In-process verification handles magnitudes up to 10^this; heavier goes to the worker.
_IN_PROCESS_DIGITS = 100.0


def _verify_unbounded(
    gold: str, pred: str, max_digits: float = MAX_DIGITS, *, latex_only: bool = False
) -> bool | None:
    """math-verify with its own timeout disabled: only call on screened input or in the worker.

    False when a side has numbers beyond ``MAX_DIGITS`` digits (never computed); None when a side
    is heavier than ``max_digits`` (the caller should use the worker instead). ``latex_only`` as
    in ``_parse_cached``.
    """
    from math_verify import verify

    g, p = _parse_cached(gold, latex_only), _parse_cached(pred, latex_only)
    if not g or not p:
        return False
    heaviest = max(_size_bound(g), _size_bound(p))
    if heaviest > MAX_DIGITS:
        return False
    if heaviest > max_digits:
        return None
    return bool(verify(list(g), list(p), timeout_seconds=None))


_MV_LOCK = threading.Lock()  # math-verify / latex2sympy are not documented as thread-safe


def _expr_key(s: str) -> str:
    return re.sub(r"\s+|\\left|\\right|\$|\\[,;!]", "", s)


_PLAIN_NUMBER_RE = re.compile(r"[+\-]?(?:\d+(?:\.\d+)?|\.\d+)")
_PLAIN_FRAC_RE = re.compile(
    r"([+\-]?)\\[dt]?frac\{([+\-]?\d+)\}\{([+\-]?\d+)\}|([+\-]?\d+)/([+\-]?\d+)"
)


def _plain_rational(s: str) -> tuple[Fraction, bool] | None:
    """``(value, is_decimal)`` for a bare number or integer fraction, else None.

    The fast path of ``grade_expression``: math-verify's LaTeX parser costs ~20-50 ms for a new
    string, and most "expression" answers in practice are plain numbers or fractions.
    """
    t = _expr_key(s)
    if len(t) > 40:
        return None
    if _PLAIN_NUMBER_RE.fullmatch(t):
        return Fraction(t), "." in t
    m = _PLAIN_FRAC_RE.fullmatch(t)
    if m is None:
        return None
    sign, num, den = (
        (m.group(1), m.group(2), m.group(3)) if m.group(2) else ("", m.group(4), m.group(5))
    )
    if int(den) == 0:
        return None
    value = Fraction(int(num), int(den))
    return (-value if sign == "-" else value), False


def _rational_eq(a: tuple[Fraction, bool], b: tuple[Fraction, bool]) -> bool:
    """math-verify's rule for two numbers: round to 6 decimals if either is a decimal, else exact."""
    if a[1] or b[1]:
        return round(a[0], 6) == round(b[0], 6)
    return a[0] == b[0]


def _brace_depth(s: str) -> int:
    depth = deepest = 0
    for ch in s:
        if ch in "{([":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "})]":
            depth -= 1
    return deepest


def grade_expression(pred: str, gold: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    r"""Mathematical equivalence by math-verify, bounded by ``timeout_s`` on any thread.

    >>> grade_expression("\\frac{1}{2}", "0.5"), grade_expression("x=3", "3")
    (True, True)
    >>> grade_expression("(10^{9999})^{9999}", "5")  # 10^(10^8) has too many digits: refused
    False
    """
    return _grade_math(pred, gold, timeout_s=timeout_s)


def _grade_math(pred: str, gold: str, *, timeout_s: float, latex_only: bool = False) -> bool:
    """``grade_expression``; ``latex_only`` (the numeric graders): math-verify must parse each
    side whole as LaTeX (``_parse_cached``), never pick a number out of it."""
    if not pred or len(pred) > MAX_ANSWER_CHARS:
        return False
    pred, gold = _normalize_math(pred), _normalize_math(gold)  # √3, 30° -> \sqrt{3}, 30^{\circ}
    if _brace_depth(pred) > MAX_BRACE_DEPTH:  # after: "√√√…3" nests as deep as it is long
        return False  # no real answer looks like this; latex2sympy could take seconds on it
    if _expr_key(pred) == _expr_key(gold):
        return True
    fast_pred, fast_gold = _plain_rational(pred), _plain_rational(gold)
    if fast_pred is not None and fast_gold is not None:
        return _rational_eq(fast_pred, fast_gold)
    if _cheap_enough(pred) and _cheap_enough(gold):
        with _MV_LOCK:
            try:
                verdict = _verify_unbounded(
                    gold, pred, max_digits=_IN_PROCESS_DIGITS, latex_only=latex_only
                )
            except Exception:
                return False
        if verdict is not None:
            return verdict
    return bool(shared_worker().grade(gold, pred, timeout_s, latex_only=latex_only))
