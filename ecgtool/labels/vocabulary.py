"""Vocabularies, code tables, the concept index and the hierarchy (all read from vocab/).

Tokens: everything a record can assert is a string token --

* a concept id from ``concepts.json`` (``atrial_fibrillation``),
* ``snomed:<code>`` for a SNOMED CT code,
* ``scp:<code>``, ``scp_subclass:<name>``, ``scp_class:<name>`` for PTB-XL,
* ``cinc2017:<class>`` for a CinC 2017 class.

A target vocabulary is a list of labels, each of which names the tokens that
make it positive (``match``: any of them; ``all``: every one of them).
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from ecgtool.errors import InputError, UsageError

VOCAB_FORMAT = "ecgtool-vocabulary/1"


def _vocab_dir():
    return resources.files("ecgtool.labels") / "vocab"


def read_text(name: str) -> str:
    return (_vocab_dir() / name).read_text(encoding="utf-8")


def has_file(name: str) -> bool:
    return (_vocab_dir() / name).is_file()


# --------------------------------------------------------------------------- hierarchy


class Hierarchy:
    """child -> parents (a DAG); a child implies every ancestor."""

    def __init__(self, edges: list[tuple[str, str]]):
        self.parents: dict[str, set[str]] = {}
        self.children: dict[str, set[str]] = {}
        for c, p in edges:
            self.parents.setdefault(c, set()).add(p)
            self.children.setdefault(p, set()).add(c)

    @classmethod
    def from_csv(cls, text: str) -> "Hierarchy":
        rows = list(csv.DictReader(io.StringIO(text)))
        return cls([(r["child"].strip(), r["parent"].strip()) for r in rows if r.get("child")])

    def ancestors(self, node: str) -> set[str]:
        out: set[str] = set()
        todo = [node]
        while todo:
            for p in self.parents.get(todo.pop(), ()):
                if p not in out:
                    out.add(p)
                    todo.append(p)
        return out

    def descendants(self, node: str) -> set[str]:
        out: set[str] = set()
        todo = [node]
        while todo:
            for c in self.children.get(todo.pop(), ()):
                if c not in out:
                    out.add(c)
                    todo.append(c)
        return out

    def expand(self, positive: dict[str, float], negative: set[str]) -> tuple[dict[str, float], set[str]]:
        """Ancestors of positives become positive (highest weight of their
        descendants); descendants of negatives become negative unless positive."""
        pos = dict(positive)
        for c, w in positive.items():
            for a in self.ancestors(c):
                pos[a] = max(w, pos.get(a, 0.0))
        neg = set(negative)
        for c in negative:
            neg |= self.descendants(c)
        return pos, neg - set(pos)


# --------------------------------------------------------------------------- code tables


@dataclass
class SnomedTable:
    names: dict[str, str]
    abbreviations: dict[str, str]
    scored: set[str]
    equivalent: dict[str, set[str]]

    @classmethod
    def load(cls) -> "SnomedTable":
        names, abbr, scored = {}, {}, set()
        for r in csv.DictReader(io.StringIO(read_text("snomed-ct-cinc2021.csv"))):
            code = r["snomed_code"].strip()
            names[code] = r["dx_name"].strip()
            abbr[code] = r["abbreviation"].strip()
            if str(r.get("scored", "0")).strip() == "1":
                scored.add(code)
        eq: dict[str, set[str]] = {}
        for r in csv.DictReader(io.StringIO(read_text("snomed-equivalent.csv"))):
            a, b = r["code"].strip(), r["equivalent_code"].strip()
            eq.setdefault(a, set()).add(b)
            eq.setdefault(b, set()).add(a)
        return cls(names, abbr, scored, eq)


@dataclass
class ScpTable:
    description: dict[str, str]
    diagnostic: set[str]
    subclass: dict[str, str]
    superclass: dict[str, str]
    form: set[str]
    rhythm: set[str]

    @classmethod
    def load(cls) -> "ScpTable":
        desc, diag, sub, sup, form, rhythm = {}, set(), {}, {}, set(), set()
        rows = list(csv.reader(io.StringIO(read_text("ptbxl-scp_statements.csv"))))
        head = rows[0]
        col = {name: i for i, name in enumerate(head)}
        for r in rows[1:]:
            if not r or not r[0].strip():
                continue
            code = r[0].strip()
            desc[code] = r[col["description"]].strip()

            def flag(name):
                v = r[col[name]].strip()
                return v not in ("", "0", "0.0", "nan")

            if flag("diagnostic"):
                diag.add(code)
                sub[code] = r[col["diagnostic_subclass"]].strip()
                sup[code] = r[col["diagnostic_class"]].strip()
            if flag("form"):
                form.add(code)
            if flag("rhythm"):
                rhythm.add(code)
        return cls(desc, diag, sub, sup, form, rhythm)

    @property
    def superclasses(self) -> list[str]:
        order = ["NORM", "MI", "STTC", "CD", "HYP"]
        found = set(self.superclass.values())
        return [c for c in order if c in found] + sorted(found - set(order))

    @property
    def subclasses(self) -> list[str]:
        return sorted(set(self.subclass.values()))


CINC2017_CLASSES = {"N": "normal", "A": "AF", "O": "other rhythm", "~": "noisy"}


# --------------------------------------------------------------------------- concepts


@dataclass
class Concepts:
    """The concept list, the text labeler over it, and code -> concept maps."""

    concepts: list[dict]
    modifiers: dict
    hierarchy: Hierarchy
    by_code: dict[str, set[str]] = field(default_factory=dict)  # token -> concepts

    @classmethod
    def load(cls, extra: list[dict] | None = None) -> "Concepts":
        data = json.loads(read_text("concepts.json"))
        concepts = list(data["concepts"]) + list(extra or [])
        mods = json.loads(read_text("modifiers.json"))
        hier = Hierarchy.from_csv(read_text("hierarchy.csv"))
        self = cls(concepts, mods, hier)
        for c in concepts:
            for kind in ("snomed", "scp", "cinc2017"):
                for code in c.get(kind, []) or []:
                    self.by_code.setdefault(f"{kind}:{code}", set()).add(c["id"])
        return self

    @property
    def ids(self) -> list[str]:
        return [c["id"] for c in self.concepts]

    @property
    def names(self) -> dict[str, str]:
        return {c["id"]: c.get("name", c["id"]) for c in self.concepts}

    @property
    def labeler(self):
        if not hasattr(self, "_labeler"):
            from ecgtool.labels.text import TextLabeler

            self._labeler = TextLabeler(self.concepts, self.modifiers)
        return self._labeler

    def concepts_for_code(self, token: str, name: str | None = None) -> set[str]:
        """Concepts a code asserts: listed in concepts.json, plus those its name reads as."""
        out = set(self.by_code.get(token, ()))
        if name:
            res = self.labeler.label(name)
            out |= {c for c, w in res.positive.items() if w >= 1.0}
        return out


@lru_cache(maxsize=1)
def default_concepts() -> Concepts:
    return Concepts.load()


@lru_cache(maxsize=1)
def snomed_table() -> SnomedTable:
    return SnomedTable.load()


@lru_cache(maxsize=1)
def scp_table() -> ScpTable:
    return ScpTable.load()


# --------------------------------------------------------------------------- vocabularies


@dataclass
class Label:
    name: str
    match: list[str] = field(default_factory=list)
    all: list[str] = field(default_factory=list)
    code: str | None = None

    @property
    def mapped(self) -> bool:
        return bool(self.match or self.all)

    def tokens(self) -> set[str]:
        return set(self.match) | set(self.all)


@dataclass
class Vocabulary:
    name: str
    labels: list[Label]
    title: str = ""
    source: str = ""
    exclusive: bool = False
    scope: list[str] = field(default_factory=list)  # token prefixes a record must carry

    @property
    def label_names(self) -> list[str]:
        return [lab.name for lab in self.labels]

    @property
    def unmapped(self) -> list[str]:
        return [lab.name for lab in self.labels if not lab.mapped]

    def to_json(self) -> dict:
        return {
            "format": VOCAB_FORMAT,
            "name": self.name,
            "title": self.title,
            "source": self.source,
            "exclusive": self.exclusive,
            "scope": self.scope,
            "labels": [
                {k: v for k, v in (("name", lab.name), ("code", lab.code), ("match", lab.match), ("all", lab.all)) if v}
                for lab in self.labels
            ],
        }


def vocabulary_from_json(obj: dict, origin: str = "vocabulary") -> Vocabulary:
    if not isinstance(obj, dict) or "labels" not in obj:
        raise InputError(f"{origin}: not a vocabulary (expected a JSON object with 'labels')",
                         "see docs/labels.md for the format, or 'ecgtool label --list-vocabs'")
    labels = []
    known = set(default_concepts().ids)
    for i, lab in enumerate(obj["labels"]):
        if isinstance(lab, str):
            lab = {"name": lab}
        if "name" not in lab:
            raise InputError(f"{origin}: label #{i + 1} has no 'name'")
        match = [str(t) for t in lab.get("match", []) or []]
        alls = [str(t) for t in lab.get("all", []) or []]
        for t in match + alls:
            if ":" not in t and t not in known:
                raise InputError(f"{origin}: label {lab['name']!r} names unknown concept {t!r}",
                                 "use a concept id from concepts.json or a code token such as snomed:164889003")
        if not match and not alls:
            # a bare name: read it as text
            match, alls = _tokens_from_name(lab["name"])
        labels.append(Label(str(lab["name"]), match, alls, lab.get("code")))
    names = [lab.name for lab in labels]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InputError(f"{origin}: duplicate label names: {', '.join(dup)}")
    return Vocabulary(
        name=str(obj.get("name", Path(origin).stem)),
        labels=labels,
        title=str(obj.get("title", "")),
        source=str(obj.get("source", "")),
        exclusive=bool(obj.get("exclusive", False)),
        scope=list(obj.get("scope", []) or []),
    )


def _tokens_from_name(name: str, exclude: list[re.Pattern] | None = None) -> tuple[list[str], list[str]]:
    """A label name read by the text labeler: one concept -> match; several -> all."""
    for rx in exclude or []:
        if rx.search(name):
            return [], []
    con = default_concepts()
    res = con.labeler.label(name)
    if res.negative or not res.positive or any(w < 1.0 for w in res.positive.values()):
        return [], []
    found = set(res.positive)
    # keep the most specific concepts: drop those implied by another one found
    specific = {c for c in found if not any(c in con.hierarchy.ancestors(o) for o in found if o != c)}
    specific = sorted(specific)
    if len(specific) == 1:
        return specific, []
    return [], specific


def vocabulary_from_names(names: list[str], name: str, title: str = "", source: str = "",
                          overrides: dict | None = None) -> Vocabulary:
    """A vocabulary from label names only (e.g. a model's output list): each
    name is read by the text labeler; ``overrides`` may map names explicitly
    ({"NAME": ["concept", ...] or null}) and exclude names by regex."""
    overrides = overrides or {}
    exclude = [re.compile(p) for p in overrides.get("exclude", [])]
    explicit = overrides.get("labels", {})
    labels = []
    for n in names:
        if n in explicit:
            m = explicit[n]
            if isinstance(m, dict):
                labels.append(Label(n, list(m.get("match", [])), list(m.get("all", []))))
            else:
                labels.append(Label(n, list(m) if m else []))
            continue
        match, alls = _tokens_from_name(n, exclude)
        labels.append(Label(n, match, alls))
    return Vocabulary(name=name, labels=labels, title=title, source=source)


def _concepts_vocabulary() -> Vocabulary:
    con = default_concepts()
    return Vocabulary(
        name="concepts",
        title="every finding ecgtool's text labeler and code maps know (concepts.json)",
        source="ecgtool concepts.json + hierarchy.csv",
        labels=[Label(c["id"], [c["id"]]) for c in con.concepts],
    )


def _snomed_vocabulary(scored_only: bool = True) -> Vocabulary:
    t = snomed_table()
    codes = [c for c in t.names if (c in t.scored or not scored_only)]
    labels, seen = [], set()
    for code in codes:
        if code in seen:
            continue
        group = [code] + sorted(e for e in t.equivalent.get(code, ()) if e in t.names)
        seen |= set(group)
        name = "|".join(t.abbreviations[g] for g in group)
        labels.append(Label(name, [f"snomed:{g}" for g in group], code="|".join(group)))
    return Vocabulary(
        name="snomed" if scored_only else "snomed-all",
        title=("SNOMED CT classes scored by the PhysioNet/CinC Challenge 2021 (equivalent codes merged)"
               if scored_only else "every SNOMED CT code in the CinC 2021 code table (equivalent codes merged)"),
        source="PhysioNet/CinC Challenge 2021, CC BY 4.0",
        labels=labels,
        scope=["snomed:"],
    )


def _ptbxl_vocabulary(level: str) -> Vocabulary:
    t = scp_table()
    if level == "superclass":
        labels = [Label(c, [f"scp_class:{c}"]) for c in t.superclasses]
        scope = ["scp_class:"]
        title = "PTB-XL diagnostic superclasses (NORM, MI, STTC, CD, HYP)"
    elif level == "subclass":
        labels = [Label(c, [f"scp_subclass:{c}"]) for c in t.subclasses]
        scope = ["scp_subclass:"]
        title = "PTB-XL diagnostic subclasses"
    else:
        if level == "statement":
            codes = list(t.description)
        elif level == "diagnostic":
            codes = [c for c in t.description if c in t.diagnostic]
        elif level == "form":
            codes = [c for c in t.description if c in t.form]
        else:
            codes = [c for c in t.description if c in t.rhythm]
        labels = [Label(c, [f"scp:{c}"]) for c in codes]
        scope = ["scp:"]
        title = f"PTB-XL SCP-ECG statements ({level})"
    return Vocabulary(name=f"ptbxl-{level}", labels=labels, title=title,
                      source="PTB-XL scp_statements.csv (Wagner et al. 2020), CC BY 4.0", scope=scope)


def _ecgfounder_vocabulary(path: Path | None = None) -> Vocabulary:
    if path is None:
        if not has_file("ecgfounder-150.txt"):
            raise InputError("the ECGFounder label list (vocab/ecgfounder-150.txt) is not installed",
                             "give the file itself: --vocab ecgfounder-labels.txt")
        text = read_text("ecgfounder-150.txt")
    else:
        text = Path(path).read_text(encoding="utf-8")
    names = _names(text)
    overrides = json.loads(read_text("ecgfounder-150-map.json")) if has_file("ecgfounder-150-map.json") else {}
    return vocabulary_from_names(
        names, "ecgfounder-150", title="ECGFounder's 150 output labels (line i = output i)",
        source="ECGFounder tasks.txt (MIT); mapped by reading each name with ecgtool's text labeler",
        overrides=overrides,
    )


NAMED = {
    "concepts": _concepts_vocabulary,
    "snomed": lambda: _snomed_vocabulary(True),
    "snomed-all": lambda: _snomed_vocabulary(False),
    "ptbxl-superclass": lambda: _ptbxl_vocabulary("superclass"),
    "ptbxl-subclass": lambda: _ptbxl_vocabulary("subclass"),
    "ptbxl-statement": lambda: _ptbxl_vocabulary("statement"),
    "ptbxl-diagnostic": lambda: _ptbxl_vocabulary("diagnostic"),
    "ptbxl-form": lambda: _ptbxl_vocabulary("form"),
    "ptbxl-rhythm": lambda: _ptbxl_vocabulary("rhythm"),
    "cinc2017": lambda: vocabulary_from_json(json.loads(read_text("cinc2017.json")), "cinc2017.json"),
    "ecgfm-17": lambda: vocabulary_from_json(json.loads(read_text("ecgfm-17.json")), "ecgfm-17.json"),
    "ecgfounder-150": _ecgfounder_vocabulary,
}


def list_vocabularies() -> list[str]:
    return list(NAMED)


def load_vocabulary(spec: str) -> Vocabulary:
    """A named vocabulary, or a file: .json (vocabulary format) or .txt (one label name a line)."""
    if spec in NAMED:
        return NAMED[spec]()
    p = Path(spec)
    if not p.exists():
        raise UsageError(f"unknown vocabulary {spec!r}",
                         f"choose one of {', '.join(NAMED)}, or give a .json/.txt vocabulary file")
    if p.suffix.lower() == ".json":
        try:
            obj = json.loads(p.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise InputError(f"{spec}: not valid JSON ({exc})") from None
        return vocabulary_from_json(obj, spec)
    names = _names(p.read_text(encoding="utf-8"))
    if len(names) == 150 and names[0] == "ABNORMAL ECG":
        return _ecgfounder_vocabulary(p)
    return vocabulary_from_names(names, p.stem, source=str(p))


def _names(text: str) -> list[str]:
    """Label names from a text file: one a line; blank lines and '#' comments skipped."""
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def describe_vocabulary(v: Vocabulary) -> dict[str, Any]:
    return {"name": v.name, "title": v.title, "labels": len(v.labels), "unmapped": v.unmapped}
