"""Parse the free-text answers of generative (VLM) judges such as UnifiedReward into numbers.

Pure functions, one per output format in reward-scorers.md §8.2:

=========================================  ==============================================  ================================
format                                     example output                                  function
=========================================  ==============================================  ================================
(a) pairwise verdict (v1)                  ``Image 1 is better.``                          :func:`parse_pairwise_verdict`
(b) pointwise final score (v1)             ``... Final Score: 4``                          :func:`parse_final_score`
(c) pointwise dimension scores (2.0)       ``Alignment Score (1-5): 2.69`` (one per line)  :func:`parse_dimension_scores`
(d) pairwise score split (2.0)             ``Alignment Score:\\n Image 1: 0.6\\n Image 2: 0.4``  :func:`parse_pairwise_split`
(e) chain-of-thought verdict (Think)       ``<think>...</think><answer>Image 2 is better</answer>``  :func:`parse_think_verdict`
=========================================  ==============================================  ================================

Every function returns a :class:`Judgement`. A failure (no verdict, no number, a number out of range, ``nan`` text,
contradicting answers) gives ``value = NaN``, ``ok = False`` and the reason, never a silent 0 (Flow-GRPO's
UnifiedReward reward returns 0.0 on a missing match; reward-scorers.md §8.2(b)). Matching ignores case, extra
whitespace and markdown emphasis (``**Final Score:** 4``). When a format appears several times with different
values, the output is treated as contradictory and fails rather than guessing which one the judge meant.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

# A whole number as written: digits with optional thousands commas ("5,000"), decimals and an exponent ("1e3").
_NUMBER = r"([-+]?(?:(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d*)?|\.\d+)(?:e[-+]?\d+)?|nan)"
_GAP = r"[\s*_]*"  # whitespace and markdown emphasis between a label and its value
_OUT_OF = rf"(?:{_GAP}/{_GAP}(\d+(?:\.\d+)?))?"  # an optional scale after the score: "3/10"


@dataclass(frozen=True)
class Judgement:
    """One parsed judge output: ``value`` is NaN exactly when ``ok`` is False, and ``error`` then says why.

    ``fields`` holds the per-dimension numbers of formats that have them (NaN for the ones that failed).
    """

    value: float
    ok: bool
    error: str = ""
    fields: Mapping[str, float] = field(default_factory=dict)


def _fail(error: str, fields: Mapping[str, float] | None = None) -> Judgement:
    return Judgement(math.nan, False, error, dict(fields or {}))


def _only_value(values: Sequence[float], what: str) -> tuple[float | None, str]:
    """The single distinct value among matches, or None and why not."""
    distinct = sorted(set(values))
    if not distinct:
        return None, f"no {what} found"
    if len(distinct) > 1:
        return None, f"contradictory {what}s: {', '.join(map(str, distinct))}"
    return distinct[0], ""


def _to_float(text: str) -> float:
    return math.nan if text.lower() == "nan" else float(text.replace(",", ""))


def _scores(matches: Sequence[tuple[str, str]], high: float, what: str) -> tuple[list[float], str]:
    """Values of ``(number, out_of)`` matches. A score written with its scale ("4/5") must be on the ``high`` scale:
    "3/10" on a 1–5 scale is refused rather than read as 3 or guessed as 1.5."""
    values = []
    for number, out_of in matches:
        if out_of and float(out_of) != high:
            return [], f"{what} {number}/{out_of} is not on the expected scale (out of {high:g})"
        values.append(_to_float(number))
    return values, ""


def parse_pairwise_verdict(text: str, subject: str = "Image") -> Judgement:
    """v1 pairwise rank: ``"{S} 1 is better"`` → 1.0, ``"{S} 2 is better"`` → 0.0, ``"Both {S}s are equally good"``
    → 0.5, where ``S`` is ``Image`` (image generation), ``Video`` or ``Answer`` (understanding). ``value`` is
    P(first ≻ second). The LLaVA judges' ``"Image 1 is better than Image 2."`` counts as the first verdict.
    """
    s = re.escape(subject)
    patterns = {
        1.0: rf"\b{s}{_GAP}1{_GAP}is{_GAP}better\b",
        0.0: rf"\b{s}{_GAP}2{_GAP}is{_GAP}better\b",
        0.5: rf"\bboth{_GAP}{s}s{_GAP}are{_GAP}equally{_GAP}good\b",
    }
    found = [v for v, pattern in patterns.items() if re.search(pattern, text, flags=re.IGNORECASE)]
    value, error = _only_value(found, f"{subject.lower()} verdict")
    return _fail(error) if value is None else Judgement(value, True)


def parse_final_score(text: str, low: float = 1.0, high: float = 5.0) -> Judgement:
    """v1 pointwise score: the number after ``"Final Score:"``, which must lie in ``[low, high]`` (1–5 for image
    generation, 1–10 for video, 0–100 for understanding). Numbers are read whole (``1e3``, ``5,000``);
    ``"Final Score: 4/5"`` reads 4, a score on another scale (``3/10`` for 1–5) fails."""
    matches = re.findall(rf"final{_GAP}score{_GAP}[:：]{_GAP}{_NUMBER}{_OUT_OF}", text, flags=re.IGNORECASE)
    values, error = _scores(matches, high, "final score")
    if error:
        return _fail(error)
    value, error = _only_value(values, "final score")
    if value is None:
        return _fail(error)
    if not low <= value <= high:  # also rejects NaN
        return _fail(f"final score {value} outside [{low}, {high}]")
    return Judgement(value, True)


def parse_dimension_scores(
    text: str,
    dimensions: Sequence[str] = ("Alignment", "Coherence", "Style"),
    low: float = 1.0,
    high: float = 5.0,
) -> Judgement:
    """UnifiedReward-2.0 pointwise lines ``"{Dim} Score (1-5): x"`` (image: Alignment/Coherence/Style; video:
    Alignment/Physics/Style). ``fields`` has each requested dimension (NaN when missing or out of range); ``value``
    is their mean when all parsed. Pref-GRPO instead imputes a missing dimension with the batch mean; that choice
    is left to the caller, who sees which dimension failed."""
    fields: dict[str, float] = {}
    errors = []
    for dim in dimensions:
        pattern = rf"\b{re.escape(dim)}{_GAP}score{_GAP}(?:\([^)]*\))?{_GAP}[:：]{_GAP}{_NUMBER}{_OUT_OF}"
        matches, error = _scores(re.findall(pattern, text, flags=re.IGNORECASE), high, f"{dim} score")
        value, error = (None, error) if error else _only_value(matches, f"{dim} score")
        if value is not None and not low <= value <= high:
            value, error = None, f"{dim} score {value} outside [{low}, {high}]"
        fields[dim] = math.nan if value is None else value
        if error:
            errors.append(error)
    if errors:
        return _fail("; ".join(errors), fields)
    return Judgement(sum(fields.values()) / len(fields), True, "", fields)


def parse_pairwise_split(
    text: str,
    dimensions: Sequence[str] = ("Alignment", "Coherence", "Style"),
    subject: str = "Image",
    sum_tolerance: float = 0.05,
) -> Judgement:
    """UnifiedReward-2.0 pairwise scores: per dimension a block ``"{Dim} Score:\\n Image 1: x\\n Image 2: y"`` with
    x, y in [0, 1] summing to 1 (within ``sum_tolerance``). ``fields[dim]`` = x / (x + y), the share of the first
    image, so swapping the images maps it to 1 − itself; ``value`` is the mean share = P(first ≻ second)."""
    s = re.escape(subject)
    fields: dict[str, float] = {}
    errors = []
    for dim in dimensions:
        pattern = (rf"\b{re.escape(dim)}{_GAP}score{_GAP}[:：]?{_GAP}{s}{_GAP}1{_GAP}[:：]{_GAP}{_NUMBER}"
                   rf"[\s,;*_]*{s}{_GAP}2{_GAP}[:：]{_GAP}{_NUMBER}")
        pairs = {(_to_float(a), _to_float(b)) for a, b in re.findall(pattern, text, flags=re.IGNORECASE)}
        share = math.nan
        if not pairs:
            errors.append(f"no {dim} score block found")
        elif len(pairs) > 1:
            errors.append(f"contradictory {dim} score blocks: {sorted(pairs)}")
        else:
            (x, y), = pairs
            if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):  # also rejects NaN
                errors.append(f"{dim} scores ({x}, {y}) outside [0, 1]")
            elif abs(x + y - 1.0) > sum_tolerance:
                errors.append(f"{dim} scores ({x}, {y}) do not sum to 1")
            else:
                share = x / (x + y)
        fields[dim] = share
    if errors:
        return _fail("; ".join(errors), fields)
    return Judgement(sum(fields.values()) / len(fields), True, "", fields)


def parse_think_verdict(text: str, subject: str = "Image") -> Judgement:
    """UnifiedReward-Think: the verdict inside ``<answer>...</answer>`` (the last block if several), parsed as
    :func:`parse_pairwise_verdict`. Without an answer block, the text after ``</think>`` is searched instead (the
    benchmark scripts' substring fallback), never the reasoning itself."""
    answers = re.findall(r"<answer>(.*?)</answer>", text, flags=re.IGNORECASE | re.DOTALL)
    if answers:
        return parse_pairwise_verdict(answers[-1], subject)
    if re.search(r"<think>", text, flags=re.IGNORECASE) and not re.search(r"</think>", text, flags=re.IGNORECASE):
        return _fail("unterminated <think> block and no <answer>")
    tail = re.split(r"</think>", text, flags=re.IGNORECASE)[-1]
    return parse_pairwise_verdict(tail, subject)
