"""Final-answer extraction and checking for every math task (GSM8K, MATH500, the synthetic ones).

The metric of papers/daedal.md "Metrics": take the LAST ``\\boxed{...}`` of the output (brace
matching, as ``last_boxed_only_string`` of Hendrycks et al. 2021, "Measuring Mathematical Problem
Solving With the MATH Dataset"), normalise both sides MATH-style (the ``strip_string`` steps of
that paper's evaluation code, plus the unit/``\\text`` clean-ups of Minerva, Lewkowycz et al. 2022,
App. D.1, as in the math-evaluation-harness), then compare as numbers within 1e-6 when both sides
parse as numbers (fractions included), else as normalised strings.

    >>> from adaptive_lm.tasks.answers import last_boxed, is_equiv
    >>> is_equiv(last_boxed(r"so $x = \\boxed{\\dfrac12}$."), "0.5")
    True
"""
from __future__ import annotations

import math
import re
from typing import Optional

from adaptive_lm.errors import DataError

ABS_TOL = 1e-6   # numbers closer than this are the same answer

_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


def _match_brace(s: str, i: int) -> int:
    """Index just past the ``}`` that closes the ``{`` at ``s[i]``; -1 if it never closes.
    A backslash escapes the next character, so ``\\{`` and ``\\}`` are not counted."""
    depth, j = 0, i
    while j < len(s):
        c = s[j]
        if c == "\\":
            j += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return j + 1
        j += 1
    return -1


def last_boxed(text: Optional[str]) -> Optional[str]:
    """The content of the LAST ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, with nested
    braces matched; also the brace-less form ``\\boxed 5`` (up to the next ``$`` or line end).
    None when there is no box or the last box never closes (a truncated answer is no answer,
    as in Hendrycks et al.'s ``last_boxed_only_string``)."""
    if not text:
        return None
    hits = list(_BOX.finditer(text))
    if not hits:
        return None
    j = hits[-1].end()
    while j < len(text) and text[j] in " \t":
        j += 1
    if j < len(text) and text[j] == "{":
        end = _match_brace(text, j)
        return None if end < 0 else text[j + 1:end - 1].strip()
    if j == hits[-1].end():            # "\boxed" glued to something that is not "{"
        return None
    rest = re.split(r"[$\n]", text[j:], maxsplit=1)[0].strip()
    return rest or None


# ---------------------------------------------------------------------------- normalisation
_UNIT_WORDS = (
    "square units|square feet|square inches|square meters|square centimeters|sq units|units|"
    "unit|inches|inch|feet|foot|ft|yards|yard|miles|mile|mph|km|cm|mm|meters|meter|metres|"
    "centimeters|kilometers|hours|hour|hrs|minutes|minute|mins|seconds|second|days|day|weeks|"
    "week|months|years|year|dollars|dollar|cents|cent|degrees|degree|pounds|pound|lbs|ounces|"
    "grams|gram|kg|liters|litres|gallons|points|point|ways|people|students|marbles|cookies|"
    "apples|pages|times|steps|digits|integers|numbers"
)
_TEXT_CMDS = ("text", "textrm", "textnormal", "textbf", "textit", "mbox", "mathrm", "mathbf",
              "mathit", "mathsf", "operatorname")
_TEXT_RE = re.compile(r"\\(?:%s)\s*\{" % "|".join(_TEXT_CMDS))
_TRAILING_UNIT = re.compile(r"(?<=[\d}])\s*(?:%s)(?:\^\{?[23]\}?)?\s*$" % _UNIT_WORDS)
_TRAILING_TEXT_UNIT = re.compile(r"\\text\{\s*(?:%s)\s*\}(?:\^\{?[23]\}?)?\s*$" % _UNIT_WORDS)
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")


def _unwrap(s: str, pattern: re.Pattern) -> str:
    """Replace every ``\\cmd{X}`` matched by ``pattern`` (which ends at the ``{``) with ``X``."""
    out, i = [], 0
    for m in list(pattern.finditer(s)):
        if m.start() < i:                  # inside a group already unwrapped
            continue
        end = _match_brace(s, m.end() - 1)
        if end < 0:
            break
        out.append(s[i:m.start()])
        out.append(_unwrap(s[m.end():end - 1], pattern))
        i = end
    out.append(s[i:])
    return "".join(out)


def _tex_arg(s: str, j: int) -> tuple[str, int]:
    """One TeX macro argument starting at ``s[j]``: a ``{group}``, a control word (``\\pi``) or a
    single character. Returns (argument without braces, index after it); ("", j) if none."""
    if j >= len(s):
        return "", j
    if s[j] == "{":
        end = _match_brace(s, j)
        return (s[j + 1:end - 1], end) if end > 0 else ("", j)
    if s[j] == "\\":
        m = re.match(r"\\[A-Za-z]+|\\.", s[j:])
        return (m.group(0), j + m.end()) if m else ("", j)
    return s[j], j + 1


def _brace_args(s: str, cmd: str, nargs: int) -> str:
    """Write ``\\frac12`` as ``\\frac{1}{2}`` and ``\\sqrt3`` as ``\\sqrt{3}`` (Hendrycks'
    ``fix_fracs`` / ``fix_sqrt``), keeping ``\\sqrt[n]{x}``'s optional argument."""
    out, i, pat = [], 0, re.compile(r"\\%s(?![A-Za-z])" % cmd)
    while True:
        m = pat.search(s, i)
        if not m:
            out.append(s[i:])
            return "".join(out)
        out.append(s[i:m.end()])
        j = m.end()
        if cmd == "sqrt" and j < len(s) and s[j] == "[":
            k = s.find("]", j)
            if k > 0:
                out.append(s[j:k + 1])
                j = k + 1
        for _ in range(nargs):
            arg, k = _tex_arg(s, j)
            if k == j:
                break
            out.append("{" + _brace_args(arg, cmd, nargs) + "}")
            j = k
        i = j


def normalize_math(s: Optional[str]) -> str:
    """A final answer in canonical MATH form (Hendrycks et al. ``strip_string`` + Minerva's
    ``normalize_final_answer``): no ``$``/``\\$``, ``\\left``/``\\right``, spacing commands,
    degrees, percent signs, trailing units or trailing ``.``; ``\\text{X}`` → ``X``;
    ``\\dfrac``/``\\tfrac`` → ``\\frac``; ``\\frac12`` → ``\\frac{1}{2}``; ``\\sqrt2`` →
    ``\\sqrt{2}``; ``.5`` → ``0.5``; ``a/b`` of integers → ``\\frac{a}{b}``; ``1,000`` → ``1000``;
    ``x = 5`` → ``5``; ``(C)`` → ``C``; no spaces. Idempotent; None → ""."""
    if s is None:
        return ""
    s = str(s).replace("\n", " ").strip()
    while True:                                            # a whole-string \boxed{...}
        m = re.fullmatch(r"\\(?:boxed|fbox)\s*(\{.*\})", s, re.S)
        if not m or _match_brace(m.group(1), 0) != len(m.group(1)):
            break
        s = m.group(1)[1:-1].strip()
    s = s.replace("\\$", "").replace("$", "")
    s = re.sub(r"\\[dt]frac(?![A-Za-z])", r"\\frac", s)
    s = re.sub(r"\\(?:left|right|big|Big|bigg|Bigg)(?![A-Za-z])|\\(?:displaystyle|limits)(?![A-Za-z])",
               "", s)
    s = re.sub(r"\\[!,;: ]|~|\{,\}", lambda m: "" if m.group(0) != "\\ " else " ", s)
    s = re.sub(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ(?![A-Za-z])|°|\\degree(?![A-Za-z])", "", s)
    s = s.replace("\\%", "").replace("%", "")
    s = _TRAILING_TEXT_UNIT.sub("", s).strip()
    m = re.search(r"\\(?:text|mbox)\{\s", s)               # Hendrycks: "10\text{ cm}" → "10"
    if m and m.start() > 0 and s[:m.start()].strip():
        s = s[:m.start()]
    s = _unwrap(s, _TEXT_RE)
    s = _TRAILING_UNIT.sub("", s).strip()
    s = s.replace(" ", "")
    s = s.rstrip(".")
    s = _brace_args(_brace_args(s, "frac", 2), "sqrt", 1)
    if s.count("=") == 1 and len(s.split("=")[0]) <= 2:    # "x=5", "k=-2" → the value
        s = s.split("=")[1]
    s = re.sub(r"(?<![\d.])\.(\d)", r"0.\1", s)            # ".5" → "0.5", "{.5" → "{0.5"
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    m = re.fullmatch(r"(-?)(\d+)/(\d+)", s)
    if m:
        s = f"{m.group(1)}\\frac{{{m.group(2)}}}{{{m.group(3)}}}"
    m = re.fullmatch(r"\(([A-Za-z])\)", s)                 # a multiple-choice letter
    if m:
        s = m.group(1)
    if len(s) > 2 and s[0] == "{" and _match_brace(s, 0) == len(s):
        s = s[1:-1]
    return s


def _as_number(s: str) -> Optional[float]:
    """The value of a normalised answer that is a plain number or a numeric ``\\frac{a}{b}``."""
    if _NUMBER.fullmatch(s):
        return float(s)
    m = re.fullmatch(r"([+-]?)\\frac\{(%s)\}\{(%s)\}" % (_NUMBER.pattern, _NUMBER.pattern), s)
    if m:
        den = float(m.group(3))
        if den == 0:
            return None
        return (-1.0 if m.group(1) == "-" else 1.0) * float(m.group(2)) / den
    return None


def is_equiv(pred: Optional[str], gold: Optional[str]) -> bool:
    """True when two final answers agree: after ``normalize_math``, as numbers within ``ABS_TOL``
    when both parse as numbers (``0.5`` equals ``\\frac{1}{2}`` and ``1/2``), else as strings.
    A missing prediction (None or empty) is never correct."""
    if pred is None or gold is None:
        return False
    p, g = normalize_math(pred), normalize_math(gold)
    if not p:
        return False
    if p == g:
        return True
    a, b = _as_number(p), _as_number(g)
    if a is not None and b is not None and math.isfinite(a) and math.isfinite(b):
        return abs(a - b) <= ABS_TOL
    return False


def check_math(output: Optional[str], gold: str) -> bool:
    """The accuracy of one generation: its last ``\\boxed{}`` against the gold answer."""
    return is_equiv(last_boxed(output), gold)


def gsm8k_gold(answer_field: str) -> str:
    """The gold answer of a GSM8K row: the number after the final ``####``, commas removed
    (the convention of Cobbe et al. 2021's ``extract_answer``). ``"... #### 1,000"`` → ``"1000"``."""
    if "####" not in answer_field:
        raise DataError("a GSM8K answer has no '#### N' line; is this the GSM8K jsonl file?")
    return answer_field.rsplit("####", 1)[1].strip().replace(",", "")
