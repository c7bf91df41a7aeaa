"""Apple Health ECG exports (Apple Watch, ``electrocardiograms/ecg_YYYY-MM-DD.csv``).

Layout: ``key,value`` header lines (``Name``, ``Date of Birth``, ``Recorded Date`` with its UTC
offset, ``Classification``, ``Symptoms``, ``Software Version``, ``Device``, ``Sample Rate`` as
``512.508 hertz``), blank lines, ``Lead,Lead I``, ``Unit,µV``, a blank line, then one sample per
line. The header keys are read in English, as Apple writes them in the export.

Values are scaled from the stated unit (µV) to mV; the lead is the one the ``Lead`` line names
(``Lead I`` -> ``I``); ``fs`` is the stated sample rate, fractional as it is (the watch's clock). The
recording's length is what the file holds (usually 30 s; a recording the wearer ended early is
shorter and is kept as it is).

Metadata: ``classification`` (the watch's result, e.g. ``Sinus Rhythm``, ``Atrial Fibrillation``,
``Heart Rate Below 50``, ``Inconclusive``), also given as ``diagnosis`` for ``ecgtool label``'s text
labeler; ``symptoms``; ``device`` (``Watch5,1``, with the software version); ``base_datetime``
(the recorded date in the wearer's local time); ``age`` at the recording, from the date of birth
(left empty, with a warning, outside 0–120 years). The name is not read.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import re
from pathlib import Path

import numpy as np

from ecgtool.errors import RecordError
from ecgtool.formats import RawRecord
from ecgtool.formats.channels import volt_scale

_RATE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(hertz|hz)?\s*$", re.I)


def read_apple(path: str, **_options) -> list[RawRecord]:
    p = Path(path)
    name = p.stem
    try:
        text = p.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise RecordError(name, "Apple Health ECG CSV is not UTF-8") from None
    except OSError as exc:
        raise RecordError(name, f"cannot read: {exc.strerror or exc}") from None
    lines = text.splitlines()
    warns: list[str] = []
    if text and not text.endswith(("\n", "\r")):
        lines = lines[:-1]
        warns.append(f"{name}: Apple Health ECG CSV ends inside a line (truncated?); its last line is dropped")
    header: dict[str, str] = {}
    start = None
    for k, line in enumerate(lines):
        s = line.strip()
        if not s:
            continue
        if re.fullmatch(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?", s):
            start = k
            break
        row = next(csv.reader(io.StringIO(s)))
        if row:
            header[row[0].strip()] = ",".join(row[1:]).strip()
    if "Sample Rate" not in header:
        raise RecordError(name, "Apple Health ECG CSV without a 'Sample Rate' line")
    m = _RATE.match(header["Sample Rate"])
    if not m or float(m.group(1)) <= 0:
        raise RecordError(name, f"Apple Health ECG CSV: unreadable sample rate {header['Sample Rate']!r}")
    fs = float(m.group(1))
    if start is None:
        raise RecordError(name, "Apple Health ECG CSV holds no samples: truncated")
    try:
        values = np.array([float(x) for x in (ln.strip() for ln in lines[start:]) if x], dtype=np.float64)
    except ValueError as exc:
        raise RecordError(name, f"Apple Health ECG CSV: a sample is not a number ({exc})") from None
    unit = header.get("Unit", "µV")
    scale = volt_scale(unit)
    if scale is None:
        raise RecordError(name, f"Apple Health ECG CSV: unit {unit!r} is not a voltage")
    lead = header.get("Lead", "Lead I")
    lead = re.sub(r"^lead\s+", "", lead.strip(), flags=re.I) or "I"
    meta: dict = {}
    when = None
    recorded = header.get("Recorded Date", "")
    rm = re.match(r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2})", recorded)
    if rm:
        when = _dt.datetime.strptime(rm.group(1), "%Y-%m-%d %H:%M:%S")
        meta["base_datetime"] = when
    classification = header.get("Classification", "")
    if classification:
        meta["classification"] = classification
        meta["diagnosis"] = classification
    if header.get("Symptoms"):
        meta["symptoms"] = header["Symptoms"]
    device = header.get("Device", "")
    if device:
        sw = header.get("Software Version")
        meta["device"] = f"{device} (software {sw})" if sw else device
    born = header.get("Date of Birth", "")
    if born and when is not None:
        try:
            b = _dt.datetime.strptime(born, "%d %b %Y").date()
            years = when.year - b.year - ((when.month, when.day) < (b.month, b.day))
            if 0 <= years <= 120:
                meta["age"] = float(years)
            else:
                warns.append(f"{name}: Apple Health date of birth {born!r} gives an age of {years} years; "
                             "age left empty")
        except ValueError:
            pass
    signal = (values * scale).astype(np.float32)[None, :]
    return [RawRecord(name=name, fs=fs, leads=[lead], signal=signal, source=str(p), units=["mV"], meta=meta,
                      warnings=warns)]
