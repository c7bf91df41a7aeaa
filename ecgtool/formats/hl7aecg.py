"""HL7 aECG (annotated ECG) XML, the FDA's format for ECG waveforms.

Parsed with defusedxml: a document that declares entities (internal
expansion, "billion laughs") or refers to external ones is refused, never
expanded or fetched. The first ``RHYTHM`` series is read (falling back to the
first series of any kind); each ``SLIST_PQ`` lead sequence becomes
``origin + scale * digits`` in its unit, scaled to mV; the sampling rate comes
from the ``increment`` of the time sequence. Leads whose digit counts differ
are kept at their own lengths.

A Philips Sierra XML document (``<restingecgdata>``) that reaches this reader
(its root element lay beyond the bytes :func:`ecgtool.formats.reader_for`
looks at) is handed to ``philips.py``.
"""

from __future__ import annotations

import datetime as _dt
import re
from pathlib import Path

import numpy as np

from ecgtool.errors import RecordError
from ecgtool.formats import RawRecord
from ecgtool.formats.xmltree import _child, _children, _local, _parse

_UNIT = {"uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "mv": 1.0, "v": 1e3, "nv": 1e-6}
_TIME_UNIT = {"s": 1.0, "ms": 1e-3, "us": 1e-6}


def read_aecg(path: str, root=None, **_options) -> list[RawRecord]:
    """One HL7 aECG file (``root``: its parsed root element, when the caller has it)."""
    p = Path(path)
    name = p.stem
    root = _parse(p, name) if root is None else root
    tag = _local(root.tag)
    if tag != "AnnotatedECG":
        raise RecordError(name, f"XML root <{tag}> is not HL7 aECG (<AnnotatedECG>)")
    return [_read_aecg(root, p, name)]


def _series(root):
    found = []
    for el in root.iter():
        if _local(el.tag) == "series":
            code = _child(el, "code")
            found.append(((code.get("code") if code is not None else "") or "", el))
    for code, el in found:
        if code.upper() == "RHYTHM":
            return el
    return found[0][1] if found else None


def _sequences(series):
    """The series' own sequences (series/component/sequenceSet/component/sequence), not nested series'."""
    for comp in _children(series, "component"):
        for sset in _children(comp, "sequenceSet"):
            for comp2 in _children(sset, "component"):
                yield from _children(comp2, "sequence")


def _ts(el) -> _dt.datetime | None:
    """An HL7 TS value ('20021122091000', '200211220737', '20021122091000.123+0100') as a naive datetime."""
    value = (el.get("value") or "") if el is not None else ""
    m = re.fullmatch(r"(\d{4})(\d{2})(\d{2})(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,6}))?(?:[+-]\d{4})?", value.strip())
    if not m:
        return None
    y, mo, d, h, mi, sec, frac = m.groups()
    try:
        return _dt.datetime(int(y), int(mo), int(d), int(h or 0), int(mi or 0), int(sec or 0),
                            int((frac or "0").ljust(6, "0")))
    except ValueError:
        return None


def _read_aecg(root, path: Path, name: str) -> RawRecord:
    series = _series(root)
    if series is None:
        raise RecordError(name, "HL7 aECG document has no <series> with waveforms")
    fs = None
    leads, signals, units = [], [], []
    for seq in _sequences(series):
        code_el = _child(seq, "code")
        value = _child(seq, "value")
        if code_el is None or value is None:
            continue
        code = code_el.get("code") or ""
        vtype = next((v for k, v in value.attrib.items() if _local(k) == "type"), "")
        if code.startswith("TIME_"):
            inc = _child(value, "increment")
            if inc is not None and fs is None:
                try:
                    step = float(inc.get("value")) * _TIME_UNIT.get((inc.get("unit") or "s").lower(), 1.0)
                    fs = 1.0 / step
                except (TypeError, ValueError, ZeroDivisionError):
                    raise RecordError(name, f"unreadable time increment {inc.get('value')!r}") from None
            continue
        if vtype != "SLIST_PQ":
            continue
        origin, scale, digits = _child(value, "origin"), _child(value, "scale"), _child(value, "digits")
        if digits is None or scale is None:
            raise RecordError(name, f"lead {code}: SLIST_PQ without <scale> or <digits>")
        try:
            d = np.array((digits.text or "").split(), dtype=np.float64)
            sc = float(scale.get("value"))
            org = float(origin.get("value")) if origin is not None else 0.0
        except (TypeError, ValueError) as exc:
            raise RecordError(name, f"lead {code}: unreadable samples ({exc})") from None
        unit = (scale.get("unit") or "uV").lower()
        factor = _UNIT.get(unit)
        if factor is None:
            raise RecordError(name, f"lead {code}: unit {scale.get('unit')!r} is not a voltage")
        signals.append(((org + sc * d) * factor).astype(np.float32))
        lead = code[len("MDC_ECG_LEAD_"):] if code.startswith("MDC_ECG_LEAD_") else code
        leads.append(lead)
        units.append("mV")
    if not signals:
        raise RecordError(name, "HL7 aECG rhythm series has no lead sequences")
    if fs is None:
        raise RecordError(name, "HL7 aECG series has no time increment (sampling rate unknown)")
    lengths = {len(s) for s in signals}
    sig = np.stack(signals) if len(lengths) == 1 else signals
    meta = {}
    for el in root.iter():
        t = _local(el.tag)
        if t == "administrativeGenderCode" and "sex" not in meta:
            meta["sex"] = {"M": "M", "F": "F"}.get((el.get("code") or "").upper())
    when = _ts(_child(_child(series, "effectiveTime"), "low"))  # start of the waveforms
    if when is None:
        when = _ts(_child(_child(root, "effectiveTime"), "center"))  # the document's time of the ECG
    if when is not None:
        meta["base_datetime"] = when
    return RawRecord(name=name, fs=fs, leads=leads, signal=sig, source=str(path), units=units, meta=meta)
