"""DICOM waveforms (12-lead ECG IODs) through pydicom (the ``dicom`` extra).

The first multiplex group labelled ``RHYTHM`` (else the first group) is read;
pydicom applies each channel's sensitivity, correction factor and baseline,
and the channel's sensitivity unit (usually uV) is scaled to mV. Lead names
come from the channel source's code meaning ("Lead I (Einthoven)" -> "I").
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ecgtool.errors import EcgtoolError, RecordError
from ecgtool.formats import RawRecord

_UNIT = {"uv": 1e-3, "mv": 1.0, "v": 1e3, "nv": 1e-6}


def _pydicom():
    try:
        import pydicom
    except ImportError:
        raise EcgtoolError("reading DICOM needs pydicom", "pip install 'ecgtool[dicom]'") from None
    return pydicom


def _lead_name(meaning: str) -> str:
    m = re.sub(r"\(.*?\)", "", meaning or "").strip()
    m = re.sub(r"^lead\s+", "", m, flags=re.I).strip()
    return m or meaning


def read_dicom(path: str, **_options) -> list[RawRecord]:
    pydicom = _pydicom()
    p = Path(path)
    name = p.stem
    try:
        ds = pydicom.dcmread(str(p))
    except Exception as exc:
        raise RecordError(name, f"not a readable DICOM file ({type(exc).__name__}: {exc})") from None
    groups = ds.get("WaveformSequence")
    if not groups:
        raise RecordError(name, "the DICOM file holds no waveform (no WaveformSequence)")
    index = 0
    for i, g in enumerate(groups):
        if str(g.get("MultiplexGroupLabel", "")).upper() == "RHYTHM":
            index = i
            break
    g = groups[index]
    try:
        arr = ds.waveform_array(index)  # (samples, channels), sensitivity and baseline applied
    except Exception as exc:
        raise RecordError(name, f"cannot decode the waveform ({type(exc).__name__}: {exc})") from None
    leads, scale, units = [], [], []
    for ch in g.ChannelDefinitionSequence:
        src = ch.get("ChannelSourceSequence")
        meaning = src[0].get("CodeMeaning", "") if src else ""
        leads.append(_lead_name(str(meaning)) or f"ch{len(leads)}")
        useq = ch.get("ChannelSensitivityUnitsSequence")
        unit = str(useq[0].get("CodeValue", "uV")) if useq else "uV"
        f = _UNIT.get(unit.lower())
        scale.append(1.0 if f is None else f)
        units.append("mV" if f is not None else unit)
    sig = (np.asarray(arr, dtype=np.float64).T * np.asarray(scale)[:, None]).astype(np.float32)
    meta = {}
    age = str(ds.get("PatientAge", "") or "")
    m = re.match(r"^(\d+)([DWMY])$", age)
    if m:
        meta["age"] = float(m.group(1)) / {"D": 365.25, "W": 52.18, "M": 12.0, "Y": 1.0}[m.group(2)]
    sex = str(ds.get("PatientSex", "") or "").upper()
    if sex in ("M", "F"):
        meta["sex"] = sex
    return [RawRecord(name=name, fs=float(g.SamplingFrequency), leads=leads, signal=sig, source=str(p),
                      units=units, meta=meta)]
