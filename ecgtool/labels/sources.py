"""Reading what a record's columns say: SNOMED code lists, PTB-XL SCP dicts, CinC 2017 classes, text."""

from __future__ import annotations

import ast
import json
import math
import re
from typing import Any

_SPLIT = re.compile(r"[,;|\s]+")


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return False


def parse_codes(value: Any) -> list[str]:
    """A SNOMED code list: a list, ``"164889003,59118001"`` or ``"['164889003', ...]"``."""
    if _is_missing(value):
        return []
    if isinstance(value, (list, tuple)):
        out = []
        for v in value:
            out.extend(parse_codes(v))
        return out
    if isinstance(value, (int,)):
        return [str(value)]
    if isinstance(value, float):
        return [str(int(value))] if value.is_integer() else [str(value)]
    s = str(value).strip()
    if not s:
        return []
    if s[0] in "[(":
        try:
            return parse_codes(list(ast.literal_eval(s)))
        except (ValueError, SyntaxError):
            s = s.strip("[]()")
    return [c.strip().strip("'\"") for c in _SPLIT.split(s) if c.strip().strip("'\"")]


def parse_scp(value: Any) -> dict[str, float]:
    """PTB-XL's ``scp_codes``: ``"{'NORM': 100.0, 'SR': 0.0}"`` (or a dict, a JSON
    string, an Arrow map as a list of (key, value) pairs)."""
    if _is_missing(value):
        return {}
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = []
        for v in value:
            if isinstance(v, dict) and "key" in v:
                items.append((v["key"], v.get("value")))
            elif isinstance(v, (list, tuple)) and len(v) == 2:
                items.append((v[0], v[1]))
            else:
                items.append((v, 0.0))
    else:
        s = str(value).strip()
        if not s:
            return {}
        try:
            obj = ast.literal_eval(s)
        except (ValueError, SyntaxError):
            try:
                obj = json.loads(s)
            except ValueError:
                obj = {c: 0.0 for c in _SPLIT.split(s.strip("{}[]")) if c}
        if isinstance(obj, dict):
            items = obj.items()
        elif isinstance(obj, (list, tuple, set)):
            items = [(c, 0.0) for c in obj]
        else:
            items = [(str(obj), 0.0)]
    out: dict[str, float] = {}
    for k, v in items:
        try:
            lik = float(v) if v is not None else 0.0
        except (TypeError, ValueError):
            lik = 0.0
        out[str(k).strip()] = lik
    return out


def parse_class(value: Any) -> str | None:
    if _is_missing(value):
        return None
    s = str(value).strip()
    return s or None


def parse_text(value: Any) -> str | None:
    """Free text; a list of statements is joined one per line."""
    if _is_missing(value):
        return None
    if isinstance(value, (list, tuple)):
        parts = [parse_text(v) for v in value]
        s = "\n".join(p for p in parts if p)
    else:
        s = str(value)
    s = s.strip()
    return s or None
