"""Contec ECG90A native recordings (``.ECG``), a 12-lead cart's own file format.

There is no published specification: the layout is the one the open-source ``ecg-contec`` tools
reverse-engineered, checked here against the SCP-ECG export of the same recording by those tools
(equal samples, ``tests/test_formats2.py``). A 43-byte header (case number, 8 bytes ASCIIZ; two
bytes; the acquisition time ``YYYY-MM-DD hh:mm:ss``, 20 bytes; two bytes; the patient name, 8 bytes,
not read; sex, age and weight bytes, not read: their coding is not known), then frames of 8
little-endian unsigned 16-bit values at 800 Hz — leads II, III, V1–V6, 5 µV per count around 2048,
``0x6800`` marking a lead that was not recorded (NaN) — then a 37-byte footer. Leads I, aVR, aVL and
aVF are derived from II and III (I = II − III, aVR = −(I + II)/2, aVL = I − II/2, aVF = II − I/2).
A file whose size is not 80 bytes plus whole frames is refused (truncated or not this format).
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import numpy as np

from ecgtool.errors import RecordError
from ecgtool.formats import RawRecord, file_bytes

HEADER, FOOTER, FRAME = 43, 37, 16
FS = 800.0
UV_PER_COUNT = 5.0
ZERO = 2048
INVALID = 0x6800
STORED = ("II", "III", "V1", "V2", "V3", "V4", "V5", "V6")


def read_contec(path: str, **_options) -> list[RawRecord]:
    p = Path(path)
    name = p.stem
    buf = file_bytes(p, name)
    body = len(buf) - HEADER - FOOTER
    if body <= 0 or body % FRAME:
        raise RecordError(name, f"Contec ECG90A: {len(buf)} bytes is not a 43-byte header, whole 16-byte frames "
                          "and a 37-byte footer: truncated or damaged")
    counts = np.frombuffer(buf, dtype="<u2", count=body // 2, offset=HEADER).reshape(-1, 8).T
    stored = {}
    for lead, x in zip(STORED, counts):
        mv = (x.astype(np.float64) - ZERO) * (UV_PER_COUNT * 1e-3)
        mv[x == INVALID] = np.nan
        stored[lead] = mv
    ii, iii = stored["II"], stored["III"]
    i = ii - iii
    leads = {"I": i, "II": ii, "III": iii, "aVR": -(i + ii) / 2, "aVL": i - ii / 2, "aVF": ii - i / 2}
    leads.update({k: stored[k] for k in STORED[2:]})
    names = list(leads)
    meta: dict = {"device": "Contec ECG90A"}
    try:
        meta["base_datetime"] = _dt.datetime.strptime(buf[10:29].decode("ascii"), "%Y-%m-%d %H:%M:%S")
    except (UnicodeDecodeError, ValueError):
        pass
    warns = []
    absent = [k for k in STORED if np.isnan(stored[k]).all()]
    if absent:
        warns.append(f"{name}: Contec ECG90A leads {', '.join(absent)} were not recorded (invalid-value marker); "
                     "kept as NaN")
    return [RawRecord(name=name, fs=FS, leads=names, signal=np.stack([leads[k] for k in names]).astype(np.float32),
                      source=str(p), units=["mV"] * len(names), meta=meta, warnings=warns)]
