"""GE MUSE XML exports (``<RestingECG>``, restecg.dtd), MUSE 7–9.

The document is parsed with defusedxml (``xmltree.py``): entity declarations and external
references are refused, the ``restecg.dtd`` it names is not read.

Waveforms: every ``<Waveform>`` holds a ``WaveformType`` (``Rhythm``: the 10 s recording;
``Median``: one representative beat per lead, usually 1.2 s) and one ``<LeadData>`` per stored lead:
``WaveFormData`` is base64 of little-endian signed integers of ``LeadSampleSize`` bytes;
``LeadDataCRC32`` is the CRC-32 (zlib) of the decoded bytes, checked for every lead (a mismatch
refuses the record, naming the lead); ``LeadByteCountTotal`` and ``LeadSampleCountTotal`` must match
what decodes. Values are counts × ``LeadAmplitudeUnitsPerBit`` in ``LeadAmplitudeUnits``
(MICROVOLTS in every export seen) scaled to mV. The sampling rate is ``SampleBase`` ×
10^``SampleExponent``. ``--waveform rhythm`` (default) or ``median`` chooses the waveform.

MUSE stores 8 leads (I, II, V1–V6). The other limb leads are derived from I and II as MUSE derives
them for display: III = II − I, aVR = −(I + II)/2, aVL = I − II/2, aVF = II − I/2, computed on the
physical values in float64 and stored as float32; leads a file stores itself are never replaced.

Metadata: ``age`` (``PatientAge`` in ``AgeUnits``), ``sex`` (``Gender`` MALE/FEMALE → M/F),
``base_datetime`` (``AcquisitionDate`` MM-DD-YYYY and ``AcquisitionTime``), ``patient_id``
(``PatientID``), ``device`` (``AcquisitionDevice``) and ``diagnosis``: the ``Diagnosis`` (the
confirmed or, before confirmation, the machine's) statements, where ``StmtText`` fragments up to an
``ENDSLINE`` flag form one statement and statements are joined with "; "; sign-off lines
("Confirmed by ...", "Electronically signed ...") are left out.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import zlib
from pathlib import Path

import numpy as np

from ecgtool.errors import RecordError, UsageError
from ecgtool.formats import RawRecord
from ecgtool.formats.xmltree import _child, _children, _find, _local, _parse, _text

WAVEFORMS = ("rhythm", "median")
STORED = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")
ORDER = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
_UNITS = {"MICROVOLTS": 1e-3, "MILLIVOLTS": 1.0, "VOLTS": 1e3, "NANOVOLTS": 1e-6}
_AGE = {"YEARS": 1.0, "MONTHS": 12.0, "WEEKS": 52.18, "DAYS": 365.25, "HOURS": 365.25 * 24}
_SIGN_OFF = ("confirmed by", "electronically signed", "electronically confirmed")


def _int(name: str, what: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise RecordError(name, f"MUSE XML: unreadable {what} {text!r}") from None


def _float(name: str, what: str, text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise RecordError(name, f"MUSE XML: unreadable {what} {text!r}") from None
    if not np.isfinite(x):
        raise RecordError(name, f"MUSE XML: {what} {text!r} is not a finite number")
    return x


def _waveform(root, kind: str, name: str):
    found = {}
    for w in _children(root, "Waveform"):
        found.setdefault(_text(_child(w, "WaveformType")).lower(), w)
    if kind not in found:
        have = ", ".join(sorted(k.capitalize() for k in found)) or "none"
        raise RecordError(name, f"MUSE XML has no {kind.capitalize()} waveform (waveforms: {have})",
                          "choose another with --waveform rhythm|median" if found else None)
    return found[kind]


def decode_lead(lead, name: str) -> tuple[str, np.ndarray, float]:
    """(lead name, counts, mV per count) of one ``<LeadData>``, its CRC-32 and byte counts checked."""
    lead_id = _text(_child(lead, "LeadID")) or "?"
    what = f"lead {lead_id}"
    size = _int(name, f"{what} LeadSampleSize", _text(_child(lead, "LeadSampleSize")) or "2")
    if size not in (1, 2, 4):
        raise RecordError(name, f"MUSE XML {what}: LeadSampleSize {size} is not read (1, 2 or 4 bytes are)")
    text = "".join((_text(_child(lead, "WaveFormData"))).split())
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RecordError(name, f"MUSE XML {what}: WaveFormData is not valid base64 ({exc})") from None
    crc_text = _text(_child(lead, "LeadDataCRC32"))
    if crc_text:
        want = _int(name, f"{what} LeadDataCRC32", crc_text) & 0xFFFFFFFF
        got = zlib.crc32(raw) & 0xFFFFFFFF
        if want != got:
            raise RecordError(name, f"MUSE XML {what}: CRC-32 mismatch (the file says {want}, the decoded "
                              f"WaveFormData give {got}): damaged waveform data")
    n_bytes = _text(_child(lead, "LeadByteCountTotal"))
    if n_bytes and _int(name, f"{what} LeadByteCountTotal", n_bytes) != len(raw):
        raise RecordError(name, f"MUSE XML {what}: LeadByteCountTotal says {n_bytes} bytes, WaveFormData holds "
                          f"{len(raw)}")
    if len(raw) % size:
        raise RecordError(name, f"MUSE XML {what}: {len(raw)} bytes is not a whole number of {size}-byte samples")
    counts = np.frombuffer(raw, dtype={1: "i1", 2: "<i2", 4: "<i4"}[size])
    n_samples = _text(_child(lead, "LeadSampleCountTotal"))
    if n_samples and _int(name, f"{what} LeadSampleCountTotal", n_samples) != len(counts):
        raise RecordError(name, f"MUSE XML {what}: LeadSampleCountTotal says {n_samples}, WaveFormData holds "
                          f"{len(counts)} samples")
    unit = (_text(_child(lead, "LeadAmplitudeUnits")) or "MICROVOLTS").upper()
    if unit not in _UNITS:
        raise RecordError(name, f"MUSE XML {what}: amplitude unit {unit!r} is not a voltage")
    per_bit = _float(name, f"{what} LeadAmplitudeUnitsPerBit", _text(_child(lead, "LeadAmplitudeUnitsPerBit")) or "")
    return lead_id, counts, per_bit * _UNITS[unit]


def derive_limb_leads(leads: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """III, aVR, aVL, aVF from I and II (float64, mV), as MUSE derives them; stored leads are kept."""
    out = dict(leads)
    if "I" in leads and "II" in leads:
        i, ii = leads["I"], leads["II"]
        derived = {"III": ii - i, "aVR": -(i + ii) / 2, "aVL": i - ii / 2, "aVF": ii - i / 2}
        for k, v in derived.items():
            out.setdefault(k, v)
    return out


def read_muse(path: str, root=None, waveform: str | None = None, **_options) -> list[RawRecord]:
    p = Path(path)
    name = p.stem
    warns: list[str] = []
    root = _parse(p, name, warns) if root is None else root
    tag = _local(root.tag)
    if tag != "RestingECG":
        raise RecordError(name, f"XML root <{tag}> is not GE MUSE XML (<RestingECG>)")
    kind = (waveform or "rhythm").lower()
    if kind not in WAVEFORMS:
        raise UsageError(f"--waveform {waveform!r}: choose rhythm or median")
    w = _waveform(root, kind, name)
    base = _float(name, "SampleBase", _text(_child(w, "SampleBase")) or "")
    exponent = _int(name, "SampleExponent", _text(_child(w, "SampleExponent")) or "0")
    fs = base * 10.0 ** exponent
    if fs <= 0:
        raise RecordError(name, f"MUSE XML: sampling rate {fs:g} Hz is not positive")
    leads: dict[str, np.ndarray] = {}
    for lead in _children(w, "LeadData"):
        lead_id, counts, mv = decode_lead(lead, name)
        if lead_id in leads:
            raise RecordError(name, f"MUSE XML: lead {lead_id} is stored twice in the {kind} waveform")
        baseline = _text(_child(lead, "FirstSampleBaseline"))
        if baseline not in ("", "0"):
            warns.append(f"{name}: MUSE lead {lead_id} FirstSampleBaseline {baseline} is not applied (it "
                         "describes the first sample, the samples are stored as they are)")
        leads[lead_id] = counts.astype(np.float64) * mv
    if not leads:
        raise RecordError(name, f"MUSE XML: the {kind} waveform holds no <LeadData>")
    if "I" in leads and "II" in leads and len(leads["I"]) != len(leads["II"]):
        raise RecordError(name, "MUSE XML: leads I and II differ in length, the limb leads cannot be derived")
    full = derive_limb_leads(leads)
    names = [x for x in ORDER if x in full] + [x for x in full if x not in ORDER]
    arrays = [full[x].astype(np.float32) for x in names]
    signal = np.stack(arrays) if len({len(a) for a in arrays}) == 1 else arrays
    return [RawRecord(name=name, fs=fs, leads=names, signal=signal, source=str(p), units=["mV"] * len(names),
                      meta=_meta(root), warnings=warns)]


def statements(diagnosis) -> list[str]:
    """A ``<Diagnosis>``'s statements: ``StmtText`` fragments joined up to each ``ENDSLINE`` flag."""
    out: list[str] = []
    line: list[str] = []
    for st in _children(diagnosis, "DiagnosisStatement") if diagnosis is not None else []:
        text = _text(_child(st, "StmtText"))
        flags = {_text(f).upper() for f in _children(st, "StmtFlag")}
        if text:
            line.append(text)
        if "ENDSLINE" in flags and line:
            out.append(_join(line))
            line = []
    if line:
        out.append(_join(line))
    return [s for s in out if not s.lower().startswith(_SIGN_OFF)]


def _join(parts: list[str]) -> str:
    s = parts[0]
    for x in parts[1:]:
        s += x if x[:1] in ",.;:)" else " " + x
    return s


def _meta(root) -> dict:
    meta: dict = {}
    pd = _child(root, "PatientDemographics")
    td = _child(root, "TestDemographics")
    age_text = _text(_child(pd, "PatientAge"))
    unit = _text(_child(pd, "AgeUnits")).upper() or "YEARS"
    try:
        age = float(age_text)
        if age >= 0 and unit in _AGE:
            meta["age"] = age / _AGE[unit]
    except ValueError:
        pass
    sex = _text(_child(pd, "Gender")).upper()
    if sex in ("MALE", "FEMALE"):
        meta["sex"] = sex[0]
    pid = _text(_child(pd, "PatientID"))
    if pid:
        meta["patient_id"] = pid
    device = _text(_child(td, "AcquisitionDevice"))
    if device:
        meta["device"] = device
    day = _text(_child(td, "AcquisitionDate"))
    time = _text(_child(td, "AcquisitionTime")) or "00:00:00"
    try:
        meta["base_datetime"] = _dt.datetime.strptime(f"{day} {time}", "%m-%d-%Y %H:%M:%S")
    except ValueError:
        pass
    el = _child(root, "Diagnosis")
    diag = statements(el if el is not None else _find(root, "Diagnosis"))
    if diag:
        meta["diagnosis"] = "; ".join(diag)
    return meta
