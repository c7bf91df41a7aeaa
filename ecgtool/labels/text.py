"""Free-text ECG statements -> concepts, with negation, uncertainty and synonyms.

The patterns, cues and spelling fixes are data (``vocab/concepts.json`` and
``vocab/modifiers.json``); this module only applies them:

1. spelling fixes (``replace``) are applied, case-insensitively;
2. every pattern of every concept is searched (phrases case-insensitively,
   abbreviations case-sensitively, both on word boundaries); overlapping
   matches are resolved longest first, so "incomplete right bundle branch
   block" is not also read as "right bundle branch block";
3. a finding is negated when a negation cue stands before it (or a post cue
   after it) in the same clause, and uncertain (weight < 1) when an
   uncertainty cue stands before it in the same clause (the nearest cue wins).

Results are cached per statement (line), because report lines repeat.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterable

WORD_SEP = r"[\W_]+"


def phrase_regex(phrase: str, case_sensitive: bool = False) -> re.Pattern:
    """A phrase from a data file as a regular expression (see concepts.json 'about')."""
    if phrase.startswith("re:"):
        return re.compile(phrase[3:], 0 if case_sensitive else re.IGNORECASE)
    words = [w for w in re.split(r"[\W_]+", phrase.replace("*", "STAR0")) if w]
    parts = []
    for w in words:
        if w.endswith("STAR0"):
            parts.append(re.escape(w[: -len("STAR0")]) + r"\w*")
        else:
            parts.append(re.escape(w))
    body = WORD_SEP.join(parts)
    return re.compile(r"(?<!\w)" + body + r"(?!\w)", 0 if case_sensitive else re.IGNORECASE)


@dataclass
class Mention:
    concept: str
    start: int
    end: int
    negated: bool = False
    weight: float = 1.0
    text: str = ""


@dataclass
class TextResult:
    """What one text says: affirmed concepts (weight) and negated ones."""

    positive: dict[str, float] = field(default_factory=dict)
    negative: set[str] = field(default_factory=set)
    mentions: list[Mention] = field(default_factory=list)

    @property
    def recognised(self) -> bool:
        return bool(self.positive or self.negative)

    def merge(self, other: "TextResult") -> None:
        for c, w in other.positive.items():
            self.positive[c] = max(w, self.positive.get(c, 0.0))
        self.negative |= other.negative
        self.mentions.extend(other.mentions)


class TextLabeler:
    """Pattern matcher built from a concepts list and a modifiers object."""

    def __init__(self, concepts: list[dict], modifiers: dict):
        self._patterns: list[tuple[str, re.Pattern]] = []
        for c in concepts:
            for p in c.get("patterns", []) or []:
                self._patterns.append((c["id"], phrase_regex(p)))
            for a in c.get("abbreviations", []) or []:
                self._patterns.append((c["id"], phrase_regex(a, case_sensitive=True)))
        self._replace = [
            (re.compile(r"(?<!\w)" + re.escape(k) + r"(?!\w)", re.IGNORECASE), v)
            for k, v in (modifiers.get("replace") or {}).items()
        ]
        neg = modifiers.get("negation") or {}
        self._neg_pre = [phrase_regex(p) for p in neg.get("pre", [])]
        self._neg_post = [phrase_regex(p) for p in neg.get("post", [])]
        self._unc = [(phrase_regex(u["cue"]), float(u["weight"])) for u in modifiers.get("uncertainty", [])]
        breaks = modifiers.get("clause_breaks", [".", ";", "\n"])
        alts = []
        for b in breaks:
            if re.fullmatch(r"\w+", b):
                alts.append(r"(?<!\w)" + re.escape(b) + r"(?!\w)")
            else:
                alts.append(re.escape(b))
        self._breaks = re.compile("|".join(alts), re.IGNORECASE) if alts else None
        self._cached = lru_cache(maxsize=65536)(self._label_statement)

    # ------------------------------------------------------------------ public
    def label(self, text: str | None) -> TextResult:
        """Concepts in a text (one or many statements)."""
        out = TextResult()
        if not text:
            return out
        for line in re.split(r"[\r\n;]+", str(text)):
            line = line.strip()
            if line:
                out.merge(self._cached(line))
        return out

    # ----------------------------------------------------------------- details
    def _clean(self, text: str) -> str:
        for rx, new in self._replace:
            text = rx.sub(new, text)
        return text

    def _label_statement(self, line: str) -> TextResult:
        text = self._clean(line)
        cands = []
        for cid, rx in self._patterns:
            for m in rx.finditer(text):
                if m.end() > m.start():
                    cands.append((m.start(), m.end(), cid))
        unc = []
        for rx, w in self._unc:
            for m in rx.finditer(text):
                unc.append((m.start(), m.end(), w))
        unc = _greedy(unc)
        found = _greedy(cands)
        taken = [(s, e) for s, e, _ in found] + [(s, e) for s, e, _ in unc]
        neg_pre = [(m.start(), m.end()) for rx in self._neg_pre for m in rx.finditer(text)
                   if not _overlaps(m.start(), m.end(), taken)]
        neg_post = [(m.start(), m.end()) for rx in self._neg_post for m in rx.finditer(text)
                    if not _overlaps(m.start(), m.end(), taken)]
        bounds = [0] + sorted({m.start() for m in self._breaks.finditer(text)} if self._breaks else set()) + [len(text)]
        res = TextResult()
        for s, e, cid in sorted(found):
            lo, hi = _clause(bounds, s)
            negated = any(lo <= ce <= s for cs, ce in neg_pre) or any(e <= cs < hi for cs, ce in neg_post)
            weight = 1.0
            before = [(ce, w) for cs, ce, w in unc if lo <= cs and ce <= s]
            if before:
                weight = max(before)[1]
            mention = Mention(cid, s, e, negated, weight, line[s:e])
            res.mentions.append(mention)
            if negated:
                res.negative.add(cid)
            else:
                res.positive[cid] = max(weight, res.positive.get(cid, 0.0))
        res.negative -= set(res.positive)
        return res


def _greedy(cands: Iterable[tuple]) -> list[tuple]:
    """Non-overlapping matches, longest first (ties: leftmost)."""
    out: list[tuple] = []
    for c in sorted(cands, key=lambda c: (-(c[1] - c[0]), c[0])):
        if not _overlaps(c[0], c[1], [(o[0], o[1]) for o in out]):
            out.append(c)
    return out


def _overlaps(s: int, e: int, spans) -> bool:
    return any(s < oe and os_ < e for os_, oe in spans)


def _clause(bounds: list[int], pos: int) -> tuple[int, int]:
    lo, hi = 0, bounds[-1]
    for b in bounds:
        if b <= pos:
            lo = b
        else:
            hi = b
            break
    return lo, hi
