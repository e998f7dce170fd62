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

Every grader first writes unicode radicals as LaTeX (``√3``, ``2√(x+1)`` -> ``\sqrt{3}``,
``2\sqrt{x+1}``; MathVista writes radicals that way, and a dropped ``√`` read ``√3`` as ``3``)
and every degree sign as ``^{\circ}`` (``30°``, ``30^\circ``, ``30\degree``).

Why the time bound looks the way it does: math-verify's own timeout uses ``signal.alarm``, which
raises off the main thread (TRL and our trainer grade in threads), and a hang inside sympy is
usually one C-level big-integer operation (``2^{2^{2^{2^{2^{2}}}}}``) that holds the GIL, so no
thread-based timeout can interrupt it. We therefore (1) call math-verify with its timeout disabled,
(2) grade in-process only strings a cheap screen proves harmless (short, whitelisted LaTeX, no
exponent towers, no big factorials) and whose parsed tree bounds every number below 10^100,
(3) send everything else to one persistent worker process that is killed when it overruns
``timeout_s``, and (4) refuse outright (grade 0) answers that could only be compared by
computing a number of more than ``MAX_DIGITS`` digits, or that are absurdly long or nested. The
common path never spawns a process; plain numbers and integer fractions skip math-verify.
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import math
import os
import re
import select
import subprocess
import sys
import threading
import time
import unicodedata
from collections.abc import Sequence
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from fractions import Fraction
from pathlib import Path
from typing import Any

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

#: Default wall-clock bound (seconds) for one expression grade sent to the worker process.
DEFAULT_TIMEOUT_S: float = 1.0
#: Numbers with more digits than this are never computed (``verify`` would hang on them).
MAX_DIGITS: float = 1e4
#: Longest boxed content we grade at all; no real answer is longer.
MAX_ANSWER_CHARS: int = 1_000
#: Deepest bracket nesting we grade at all (``{{{{...}}}}`` from a degenerate policy).
MAX_BRACE_DEPTH: int = 20
_LETTERS = "ABCDEFGHIJ"


# --------------------------------------------------------------------------------------------
# Getting the response text and the boxed answer out of a completion
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Normalisation helpers shared by the graders
# --------------------------------------------------------------------------------------------

_WRAPPER_RE = re.compile(
    r"\\(?:text|textbf|textit|textrm|texttt|mathrm|mathbf|mathit|mbox|operatorname)\s*\{([^{}]*)\}"
)
_SPACING_RE = re.compile(r"\\[,;:! ]|\\q?quad\b|\\left\b|\\right\b|\\displaystyle\b|~")


def _strip_latex(s: str) -> str:
    """Remove text-style wrappers, math delimiters and spacing commands; keep the content."""
    for _ in range(8):  # nested \text{\textbf{B}}
        new = _WRAPPER_RE.sub(r"\1", s)
        if new == s:
            break
        s = new
    s = _SPACING_RE.sub(" ", s)
    s = s.replace("\\%", "%").replace("\\$", "$").replace("\\(", "").replace("\\)", "")
    s = s.replace("\\[", "").replace("\\]", "").replace("$", "")
    return " ".join(s.split())


def _closing(s: str, i: int) -> int:
    """Index of the bracket closing the one at ``s[i]`` (same kind, nesting counted), or -1."""
    open_, close = s[i], ")" if s[i] == "(" else "}"
    depth = 0
    for j in range(i, len(s)):
        depth += (s[j] == open_) - (s[j] == close)
        if depth == 0:
            return j
    return -1


_RADICAND_RE = re.compile(r"\d+(?:\.\d+)?|\.\d+")
_RADICAND_COMMAND_RE = re.compile(r"\\[A-Za-z]+")


def _radicand_end(s: str, j: int) -> int:
    """End of the radicand of a unicode radical whose radicand starts at ``s[j]``, or -1.

    ``(x+1)`` and ``{x+1}`` are groups; ``12`` and ``2.5`` digit runs; ``\\frac{1}{2}`` a command
    with its brace groups; ``x`` a single letter. Anything else is no radicand.
    """
    if j >= len(s):
        return -1
    if s[j] in "({":
        k = _closing(s, j)
        return -1 if k <= j + 1 else k + 1  # "√()" has no radicand
    m = _RADICAND_RE.match(s, j) or _RADICAND_COMMAND_RE.match(s, j)
    if m is not None:
        end = m.end()
        while m.group(0).startswith("\\") and end < len(s) and s[end] == "{":
            k = _closing(s, end)
            if k < 0:
                return -1
            end = k + 1
        return end
    return j + 1 if s[j].isalpha() else -1


_MAX_RADICALS = 64


def _unicode_sqrt(s: str) -> str:
    r"""Unicode radicals as LaTeX: ``√3`` -> ``\sqrt{3}``, ``2√(x+1)`` -> ``2\sqrt{x+1}``.

    Without this, text normalisation drops ``√`` as a symbol (so ``√3`` read as ``3``) and
    math-verify cannot parse it. Right to left, so a nested ``√(1+√2)`` converts its inner radical
    first; a ``√`` with no radicand is left as it is. Never raises; past ``_MAX_RADICALS``
    (no real answer has that many, and each costs a pass over the string) every ``√`` becomes
    ``\sqrt `` with no braces, still not its radicand.
    """
    if s.count("√") > _MAX_RADICALS:
        return s.replace("√", "\\sqrt ")
    end = len(s)
    while True:
        i = s.rfind("√", 0, end)
        if i < 0:
            return s
        j = i + 1
        while j < len(s) and s[j] == " ":
            j += 1
        k = _radicand_end(s, j)
        if k > 0:
            inner = s[j + 1 : k - 1] if s[j] in "({" else s[j:k]
            s = s[:i] + "\\sqrt{" + inner + "}" + s[k:]
        end = i


#: Every spelling of a degree sign, unified to ``^{\circ}`` (math-verify reads it; ``°`` and
#: ``\degree`` it does not).
_DEGREE_ANY_RE = re.compile(
    r"\^\s*\{\s*(?:\\circ|\\degree|°)\s*\}"
    r"|\^\s*(?:\\circ|\\degree)(?![A-Za-z])|\^\s*°"
    r"|\\(?:text|mathrm)\s*\{\s*°\s*\}"
    r"|\\(?:textdegree|degree)(?![A-Za-z])(?:\s*\{\s*\})?"
    r"|°"
)


def _normalize_math(s: str) -> str:
    r"""Unicode radicals and degree signs in one LaTeX spelling, before anything compares them.

    ``√3`` -> ``\sqrt{3}``; ``30°``, ``30^\circ``, ``30^{\circ}``, ``30\degree`` -> ``30^{\circ}``.

    >>> _normalize_math("2√3 + √(x+1)"), _normalize_math("30°")
    ('2\\sqrt{3} + \\sqrt{x+1}', '30^{\\circ}')
    """
    if "√" in s:
        s = _unicode_sqrt(s)
    return _DEGREE_ANY_RE.sub(r"^{\\circ}", s) if ("°" in s or "\\" in s) else s


def _normalize_text(s: str) -> str:
    """Lower-case, punctuation to spaces, whitespace collapsed (text answers, option texts).

    Radicals and degrees are unified first, so ``√3`` reads ``sqrt 3`` (not ``3``) and
    ``30^\\circ`` reads like ``30°`` (the degree sign is dropped like any symbol).
    """
    return _text_key(_normalize_math(_strip_latex(s)))


def _text_key(s: str) -> str:
    """``_normalize_text`` of a string already through ``_strip_latex`` and ``_normalize_math``."""
    s = unicodedata.normalize("NFKC", s.replace("^{\\circ}", "°")).lower()
    s = "".join(" " if unicodedata.category(c).startswith(("P", "S")) else c for c in s)
    return " ".join(s.split())


_NUMBER_RE = re.compile(
    r"\s*([+\-]?)\s*(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d*)?|\.\d+)(?:[eE]([+\-]?\d{1,3}))?"
)
_ASSIGN_RE = re.compile(r"^\s*(?:[A-Za-z]\w{0,10}\s*(?:=|\\approx|≈)|\\approx|≈|approx\.?)\s*")
_UNIT_EXP_RE = re.compile(r"\^\s*\{?\s*-?\d\s*\}?")
_UNIT_START_RE = re.compile(r"[A-Za-z%°]")
_DEGREE_RE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?")
_MATH_TAILS = ("pi", "π", "i", "e", "sqrt", "√")


def parse_number(text: str, unit: str | None = None) -> Decimal | None:
    r"""A number written in ``text``, tolerating units, ``x = ``, ``$``, commas; else None.

    ``"12 cm"``, ``"12\text{ cm}"``, ``"x = 12"``, ``"1,000"``, ``"30^\circ"``, ``"12.5\%"``
    and ``"-3."`` all parse; ``"12 + 5"`` and ``"3 x 4"`` do not (a trailing unit has no digits
    except exponents such as ``cm^2``).

    >>> parse_number("12\\text{ cm}^2"), parse_number("x = -1,000"), parse_number("3 + 4")
    (Decimal('12'), Decimal('-1000'), None)
    """
    if not isinstance(text, str) or len(text) > 200:
        return None
    s = _DEGREE_RE.sub("°", _normalize_math(_strip_latex(text)))
    s = s.replace("−", "-").strip().rstrip(".").strip()
    if unit:
        u = _strip_latex(str(unit)).strip()
        if u and s.lower().endswith(u.lower()):
            s = s[: -len(u)].strip()
    s = _ASSIGN_RE.sub("", s).lstrip("$").strip()
    m = _NUMBER_RE.match(s)
    if m is None:
        return None
    tail = s[m.end() :].strip()
    if tail:
        if not _UNIT_START_RE.match(tail) or tail.split()[0].lower() in _MATH_TAILS:
            return None  # "12 + 5" is not 12, nor is "2 pi"
        tail = _UNIT_EXP_RE.sub("", tail)
        if any(c.isdigit() for c in tail) or any(c in tail for c in "\\=+*(){}[]<>"):
            return None
    sign, digits, exp = m.group(1), m.group(2).replace(",", ""), m.group(3)
    try:
        return Decimal(f"{sign}{digits}" + (f"e{exp}" if exp else ""))
    except InvalidOperation:
        return None


_FRAC_RE = re.compile(
    r"^\s*([+\-]?)\s*\\[dt]?frac\s*\{\s*(\d+(?:\.\d+)?)\s*\}\s*\{\s*(\d+(?:\.\d+)?)\s*\}\s*$"
)
_SLASH_RE = re.compile(r"^\s*([+\-]?\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)\s*$")


def _parse_fraction(text: str) -> Decimal | None:
    r"""``\frac{a}{b}`` or ``a/b`` with plain numbers, as a Decimal (float answers)."""
    s = _strip_latex(text)
    m = _FRAC_RE.match(s)
    if m:
        num, den = Decimal(m.group(1) + m.group(2)), Decimal(m.group(3))
    else:
        m = _SLASH_RE.match(s)
        if m is None:
            return None
        num, den = Decimal(m.group(1)), Decimal(m.group(2))
    return None if den == 0 else num / den


# --------------------------------------------------------------------------------------------
# Bounded math-verify
# --------------------------------------------------------------------------------------------


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


_STARTUP_TIMEOUT_S = 30.0
_RETRY_BROKEN_S = 60.0


class _GraderWorker:
    """One persistent subprocess that runs math-verify and is killed when it overruns.

    Started lazily with ``subprocess.Popen`` (fork+exec: safe from threaded parents, and it
    never re-imports the user's ``__main__`` as multiprocessing's spawn would). Requests are
    JSON lines on stdin, answers ``1``/``0`` lines on stdout, read with ``select`` so that the
    wait has a deadline. A fork of the parent never talks to its parent's worker.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._owner = -1
        self._ready = False
        self._buf = b""
        self._broken_until = 0.0

    def _start(self) -> None:
        root = str(Path(__file__).resolve().parents[2])  # the directory that holds `ivr`
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
        self._proc = subprocess.Popen(
            [sys.executable, "-c", "from ivr.rewards.answer import _worker_main; _worker_main()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            bufsize=0,
        )
        self._owner, self._ready, self._buf = os.getpid(), False, b""

    def _kill(self) -> None:
        if self._proc is not None and self._owner == os.getpid():
            self._proc.kill()
            self._proc.wait()
        self._proc, self._ready, self._buf = None, False, b""

    def _readline(self, deadline: float) -> bytes | None:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        poller = select.poll()  # not select.select: it fails for fds >= 1024
        poller.register(fd, select.POLLIN)
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not poller.poll(remaining * 1000.0):
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                return None  # the worker died
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.strip()

    def _ensure_ready(self) -> bool:
        if self._proc is not None:
            if self._owner != os.getpid():  # inherited through a fork: not ours to use
                self._proc, self._ready, self._buf = None, False, b""
            elif self._proc.poll() is not None:
                self._kill()
        if self._proc is None:
            if time.monotonic() < self._broken_until:
                return False
            try:
                self._start()
            except OSError:
                self._broken_until = time.monotonic() + _RETRY_BROKEN_S
                logger.warning("ivr grader worker could not start; risky answers grade as 0")
                return False
        if not self._ready:
            if self._readline(time.monotonic() + _STARTUP_TIMEOUT_S) != b"ready":
                self._kill()
                self._broken_until = time.monotonic() + _RETRY_BROKEN_S
                logger.warning("ivr grader worker failed to start; risky answers grade as 0")
                return False
            self._ready = True
        return True

    def warm_up(self) -> bool:
        """Start the worker now (tests, benchmarks); True when it is ready."""
        with self._lock:
            return hasattr(select, "poll") and self._ensure_ready()

    def grade(
        self, gold: str, pred: str, timeout_s: float, *, latex_only: bool = False
    ) -> bool | None:
        """True/False, or None when the bound was hit or no worker is available."""
        if not hasattr(select, "poll") or not self._lock.acquire(timeout=max(timeout_s, 0.0)):
            return None
        try:
            if not self._ensure_ready():
                return None
            assert self._proc is not None and self._proc.stdin is not None
            request = {"gold": gold, "pred": pred, "latex_only": latex_only}
            self._proc.stdin.write((json.dumps(request) + "\n").encode())
            line = self._readline(time.monotonic() + timeout_s)
            if line is None:  # overran: kill it and pre-launch the next one
                self._kill()
                self._start()
                return None
            return line == b"1"
        except (OSError, ValueError):
            self._kill()
            return None
        finally:
            self._lock.release()

    def close(self) -> None:
        with self._lock:
            self._kill()


_WORKER = _GraderWorker()
atexit.register(_WORKER.close)
_MV_LOCK = threading.Lock()  # math-verify / latex2sympy are not documented as thread-safe


def _worker_main() -> None:
    """Entry point of the grader subprocess: JSON requests in, ``1``/``0`` out."""
    logging.disable(logging.CRITICAL)
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints from libraries must not corrupt the protocol
    _parse_cached("1")
    out.write("ready\n")
    for line in sys.stdin:
        try:
            req = json.loads(line)
            gold, pred, latex_only = str(req["gold"]), str(req["pred"]), bool(req["latex_only"])
            ok = bool(_verify_unbounded(gold, pred, latex_only=latex_only))
        except Exception:
            ok = False
        out.write("1\n" if ok else "0\n")


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
    return bool(_WORKER.grade(gold, pred, timeout_s, latex_only=latex_only))


# --------------------------------------------------------------------------------------------
# The graders
# --------------------------------------------------------------------------------------------


def _gold_number(answer: str, field: str = "answer") -> Decimal:
    value = parse_number(answer)
    if value is None or not value.is_finite():
        raise ValueError(f"{field}={answer!r} is not a number, but its answer_type is numeric")
    return value


#: An ``=`` after which the answer follows (``x = 5``, ``x := 5``, ``x == 5``), or an
#: ``\approx``; ``<=``, ``>=`` and ``!=`` are relations, not assignments.
_EQUALS_RE = re.compile(r"(?<![<>!])=|\\approx(?![A-Za-z])|≈")
#: A trailing ``\text{ cm}``-style group: a unit after an expression (``2 \times 6 \text{ cm}``).
_TRAILING_WRAPPER_RE = re.compile(
    r"\\(?:text|textit|textrm|texttt|mathrm|mbox|operatorname)\s*\{[^{}0-9]*\}\s*$"
)


def _final_answer(pred: str) -> str:
    r"""What a numeric box states: the right-hand side of its LAST ``=`` (or ``\approx``),
    else the whole box. ``sum = 1 + 6 + 6`` -> ``1 + 6 + 6``; ``x = y = 5`` -> ``5``.

    Whatever comes before that ``=`` is not the answer, so it cannot make it right (``foo. sum =
    2 + 3`` is 5, not the 3 math-verify would pick out of the whole box) nor wrong.
    """
    ends = [m.end() for m in _EQUALS_RE.finditer(pred)]
    return pred[ends[-1] :] if ends else pred


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
