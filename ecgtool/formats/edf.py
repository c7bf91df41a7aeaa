"""EDF, EDF+ (continuous) and BDF files, read with edfio.

The fixed header is checked first: its "bytes in header" field must be 256 + 256 × the number of
signals (a header whose length field lies is refused: every field after it would be misread) and the
file must hold the whole header. Samples are then read by edfio, which maps digital to physical values
with each signal's digital and physical range.

Channels: ECG channels are those whose physical dimension is a voltage and whose label names ECG
(``ECG``, ``EKG``) or an ECG lead (``I``, ``V2``, ``MLII``, ...), or whose transducer says ECG/EKG;
``ECG V2`` becomes lead ``V2``, ``ECG ECG1`` becomes ``ECG1``. Other signals (EEG, accelerometers,
SpO2, ...) are dropped unless ``--all-channels`` is given; a file with no ECG channel is refused with
the labels it has. Channels at different rates give one record per rate (``channels.py``) or, with
``--fs``, one resampled record.

Physical range: samples whose digital value lies outside the declared digital range (saturation,
lead-off: their physical value lies outside the declared physical range) are kept as they are, not
clipped, and counted in the quality column ``q_out_of_range`` (samples over the chosen channels),
with a warning.

Truncated data: a file holding fewer data records than its header declares (or ending inside one) is
read up to its last whole data record, with a warning naming the record and both counts.

Metadata: ``base_datetime`` (start date and time), ``annotations`` (EDF+ annotations as
``+ONSETs TEXT`` or ``+ONSETs/DURATIONs TEXT``), and from an EDF+ patient field (``code sex birthdate
name``) ``patient_id``, ``sex`` and ``age`` (at the start date); a plain EDF's patient field becomes
``patient_id`` only when it is one word; ``device`` is the EDF+ recording's equipment field.
"""

from __future__ import annotations

import datetime as _dt
import re
import warnings as _warnings
from pathlib import Path

import numpy as np

from ecgtool.errors import EcgtoolError, RecordError
from ecgtool.formats import RawRecord
from ecgtool.formats.channels import Channel, is_ecg_label, to_records

_MONTHS = {m: i + 1 for i, m in enumerate("JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split())}
_DATE_TEMPLATE = re.compile(r"^[dmyDMY]+(?:[-./][dmyDMY]+)+$")


def _edfio():
    try:
        import edfio
    except ImportError:
        raise EcgtoolError("reading EDF needs the edfio package", "pip install edfio") from None
    return edfio


def check_header(path: Path, name: str) -> tuple[int, int]:
    """(number of signals, header bytes) from the fixed header, refusing a header that lies about its size."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(256)
        size = path.stat().st_size
    except OSError as exc:
        raise RecordError(name, f"cannot read: {exc.strerror or exc}") from None
    if size == 0:
        raise RecordError(name, "empty file (0 bytes)")
    if len(head) < 256:
        raise RecordError(name, f"EDF: truncated ({size} bytes, shorter than the 256-byte fixed header)")
    try:
        ns = int(head[252:256].decode("ascii").strip())
        declared = int(head[184:192].decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise RecordError(name, "EDF: the number of signals or of header bytes is not a number") from None
    if ns < 0:
        raise RecordError(name, f"EDF: the header declares {ns} signals")
    need = 256 * (ns + 1)
    if declared != need:
        raise RecordError(name, f"EDF: the header length field says {declared} bytes, but {ns} signals make a "
                          f"{need}-byte header (256 + 256 × signals): the header length lies")
    if size < need:
        raise RecordError(name, f"EDF: truncated inside the header ({size} bytes of a {need}-byte header)")
    return ns, need


def _physical(path: Path, name: str, warns: list[str]):
    edfio = _edfio()
    with _warnings.catch_warnings(record=True) as caught:
        _warnings.simplefilter("always")
        try:
            try:
                edf = edfio.read_edf(path, lazy_load_data=False)
            except UnicodeDecodeError:
                edf = edfio.read_edf(path, lazy_load_data=False, header_encoding="latin-1")
                warns.append(f"{name}: EDF header fields are not ASCII; read as Latin-1")
        except (ValueError, IndexError, OSError) as exc:
            raise RecordError(name, f"EDF: unreadable ({type(exc).__name__}: {exc})") from None
    for w in caught:
        msg = str(w.message)
        m = re.search(r"indicates (\d+) data records, but file contains (\d+)", msg)
        if m:
            warns.append(f"{name}: EDF header declares {m.group(1)} data records, the file holds {m.group(2)} "
                         "whole ones: read up to the data")
        elif "Incomplete data record" in msg:
            continue  # said with the count above
        else:
            warns.append(f"{name}: EDF: {msg}")
    return edf


def _age(birth: _dt.date, when: _dt.date) -> float | None:
    years = when.year - birth.year - ((when.month, when.day) < (birth.month, birth.day))
    return float(years) if 0 <= years < 150 else None


def _edf_date(text: str) -> _dt.date | None:
    m = re.fullmatch(r"(\d{2})-([A-Z]{3})-(\d{4})", text.strip().upper())
    if not m or m.group(2) not in _MONTHS:
        return None
    try:
        return _dt.date(int(m.group(3)), _MONTHS[m.group(2)], int(m.group(1)))
    except ValueError:
        return None


def _meta(edf, plus: bool, start: _dt.datetime | None) -> dict:
    meta: dict = {}
    if start is not None:
        meta["base_datetime"] = start
    patient = (edf.local_patient_identification or "").strip()
    recording = (edf.local_recording_identification or "").strip()
    if plus:
        parts = patient.split()
        if parts and parts[0] != "X":
            meta["patient_id"] = parts[0]
        if len(parts) > 1 and parts[1] in ("M", "F"):
            meta["sex"] = parts[1]
        if len(parts) > 2 and start is not None:
            born = _edf_date(parts[2])
            age = _age(born, start.date()) if born else None
            if age is not None:
                meta["age"] = age
        rec = recording.split()
        if len(rec) > 4 and rec[0] == "Startdate" and rec[4] != "X":
            meta["device"] = rec[4]
    elif patient and len(patient.split()) == 1 and not _DATE_TEMPLATE.match(patient):
        meta["patient_id"] = patient
    return meta


def _annotation(a) -> str:
    onset = f"+{a.onset:g}s"
    if a.duration is not None and a.duration >= 0:
        onset += f"/{a.duration:g}s"
    return f"{onset} {a.text}".rstrip()


def read_edf(path: str, all_channels: bool = False, fs: float | None = None, **_options) -> list[RawRecord]:
    p = Path(path)
    name = p.stem
    check_header(p, name)
    warns: list[str] = []
    edf = _physical(p, name, warns)
    if edf.num_data_records == 0:
        raise RecordError(name, "EDF: the file holds no data record")
    plus = str(getattr(edf, "reserved", "") or "").startswith(("EDF+", "BDF+"))
    if str(getattr(edf, "reserved", "")).startswith(("EDF+D", "BDF+D")):
        raise RecordError(name, "EDF+D (discontinuous) recordings are not read: their data records are not "
                          "contiguous in time", "convert the continuous EDF+C export")
    signals = list(edf.signals)
    if not signals:
        raise RecordError(name, "EDF: the file holds only annotations, no signal")
    chosen = [s for s in signals if is_ecg_label(s.label, s.transducer_type, s.physical_dimension)]
    if not chosen and not all_channels:
        labels = ", ".join(repr(s.label) for s in signals[:12]) + (" ..." if len(signals) > 12 else "")
        raise RecordError(name, f"EDF: no ECG channel among its {len(signals)} signals ({labels})",
                          "--all-channels keeps every signal")
    if all_channels:
        chosen = signals
    ecg = {id(s) for s in signals if is_ecg_label(s.label, s.transducer_type, s.physical_dimension)}
    out_of_range = 0
    channels = []
    for s in chosen:
        dig = s.digital
        lo, hi = s.digital_range
        bad = int(np.count_nonzero((dig < lo) | (dig > hi)))
        out_of_range += bad
        channels.append(Channel(s.label, float(s.sampling_frequency), np.asarray(s.data, dtype=np.float64),
                                s.physical_dimension, id(s) in ecg, bad))
    total = sum(len(ch.data) for ch in channels)
    if out_of_range:
        warns.append(f"{name}: EDF: {out_of_range} of {total} samples ({100.0 * out_of_range / max(total, 1):.2f}%) "
                     "lie outside the declared physical range (saturation or lead-off); kept, counted in "
                     "q_out_of_range")
    try:
        start = edf.startdatetime
    except Exception:  # an unreadable start date or time
        start = None
        warns.append(f"{name}: EDF start date/time is unreadable; base_datetime left empty")
    meta = _meta(edf, plus, start)
    meta["q_out_of_range"] = out_of_range
    if plus:
        notes = [_annotation(a) for a in edf.annotations]
        if notes:
            meta["annotations"] = notes
    return to_records(name, str(p), channels, meta, warns, fs=fs)
