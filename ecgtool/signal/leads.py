"""Lead names: canonical spelling, standard orders, aliases.

``normalize_lead("AVR") == "aVR"``, ``normalize_lead("avr") == "aVR"``,
``normalize_lead("MLII") == "II"``. Unknown names come back cleaned but
otherwise unchanged (the caller decides whether that is an error).
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

STANDARD_12 = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
LIMB = STANDARD_12[:6]
PRECORDIAL = STANDARD_12[6:]
FRANK = ("VX", "VY", "VZ")
KNOWN = set(STANDARD_12) | set(FRANK) | {"V7", "V8", "V9", "V3R", "V4R", "V5R"}

# Spellings seen in PhysioNet databases and vendor exports (keys in upper case,
# separators removed).
_ALIASES = {
    "I": "I", "II": "II", "III": "III",
    "LEADI": "I", "LEADII": "II", "LEADIII": "III",
    "L1": "I", "L2": "II", "L3": "III", "DI": "I", "DII": "II", "DIII": "III",
    "MLI": "I", "MLII": "II", "MLIII": "III", "ML2": "II",
    # 'ECG I' names Einthoven's lead; 'ECG1', 'ECG 2' are numbered channels (MIT-BIH style), not leads I/II.
    "ECGI": "I", "ECGII": "II", "ECGIII": "III",
    "AVR": "aVR", "AVL": "aVL", "AVF": "aVF", "LEADAVR": "aVR", "LEADAVL": "aVL", "LEADAVF": "aVF",
    "-AVR": "-aVR",
    "VX": "VX", "VY": "VY", "VZ": "VZ",
}
for _i in range(1, 10):
    _ALIASES[f"V{_i}"] = f"V{_i}"
    _ALIASES[f"LEADV{_i}"] = f"V{_i}"
    _ALIASES[f"MCLV{_i}"] = f"V{_i}"
    _ALIASES[f"C{_i}"] = f"V{_i}"
for _r in ("3", "4", "5"):
    _ALIASES[f"V{_r}R"] = f"V{_r}R"

_SEP = re.compile(r"[\s_\-.:]+")


def normalize_lead(name: str) -> str:
    """Canonical spelling of one lead name (unknown names are only trimmed)."""
    raw = str(name).strip()
    key = _SEP.sub("", raw).upper()
    if raw.startswith("-") and key.lstrip("-") in ("AVR",):
        return "-aVR"
    key = key.lstrip("-") if not raw.startswith("-") else key
    if key in _ALIASES:
        return _ALIASES[key]
    return raw


def normalize_leads(names: Iterable[str]) -> list[str]:
    return [normalize_lead(n) for n in names]


def is_known(name: str) -> bool:
    return normalize_lead(name) in KNOWN


def parse_lead_list(text: str | Sequence[str]) -> list[str]:
    """'I,II,V1' or a named set ('12', 'limb', 'precordial', 'I') to lead names.

    Names are separated by commas. A piece with spaces is split at them only
    when every word is a known lead ('I II V1'); otherwise it is one name, as
    WFDB headers spell them ('col 0', 'ECG lead II').
    """
    if not isinstance(text, str):
        return normalize_leads(text)
    named = {
        "12": STANDARD_12, "standard": STANDARD_12, "12-lead": STANDARD_12,
        "limb": LIMB, "precordial": PRECORDIAL, "chest": PRECORDIAL, "frank": FRANK,
    }
    t = text.strip()
    if t.lower() in named:
        return list(named[t.lower()])
    names: list[str] = []
    for piece in (p.strip() for p in t.split(",")):
        words = piece.split()
        if len(words) > 1 and all(is_known(w) for w in words):
            names.extend(words)
        elif piece:
            names.append(piece)
    return normalize_leads(names)
