r"""Normalisation shared by the graders: LaTeX wrappers stripped, unicode radicals and degree
signs in one LaTeX spelling, text keys for case/punctuation-insensitive comparison, and numbers
read out of answers that carry units, ``x = ``, ``$`` or thousands commas.

Every grader first writes unicode radicals as LaTeX (``√3``, ``2√(x+1)`` -> ``\sqrt{3}``,
``2\sqrt{x+1}``; MathVista writes radicals that way, and a dropped ``√`` read ``√3`` as ``3``)
and every degree sign as ``^{\circ}`` (``30°``, ``30^\circ``, ``30\degree``). Pure functions:
no math-verify, no state.
"""

from __future__ import annotations

import re
import unicodedata
from decimal import Decimal, InvalidOperation

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
