"""Philips Sierra XML (``<restingecgdata>``): PageWriter / IntelliSpace ECG documents.

Document versions 1.03, 1.04, 1.04.01 and 1.04.02 (``documenttype``
SierraECG or PhilipsECG) with Base64, XLI-compressed ``<parsedwaveforms>``
are read; UTF-8 and UTF-16 documents alike. The waveforms are decoded by the
``sierraecg`` library (LZW + second-difference XLI decoding; it also rebuilds
leads III, aVR, aVL and aVF, which XLI stores as residuals against I and II).
Other encodings or compressions, and lead layouts that do not start with I,
II, III, aVR, aVL, aVF, are refused with a message.

The document is first parsed with defusedxml (entity declarations and
external references refused, never expanded or fetched, as for HL7 aECG), and
``sierraecg`` parses it with defusedxml too.

Values: counts × the signal resolution in µV per count (``resolution`` on
``<parsedwaveforms>`` or in ``<signalcharacteristics>``, ``signalresolution``
in 1.03), scaled to mV; the sampling rate is ``<samplingrate>``. Philips
stores ``durationperchannel`` (usually 11 s) per lead: the ECG (about 10.5 s),
then zero padding with a 1 mV calibration pulse that is the same on every
lead. That trailing stretch, where every lead holds the same value, is not
ECG and is cut off. Lead names are taken from ``leadlabels`` (1.04) or from
the acquisition type (1.03, via ``sierraecg``).

Metadata: ``age`` (years, from ``<years>``/``<months>``/... or from the date of
birth and the acquisition date; the ``defaultage`` the analysis program falls
back on is not an age), ``sex`` (M/F), ``base_datetime`` (the acquisition date
and time) and ``diagnosis`` (the left-hand statements of the first
``<interpretation>``, "; "-joined: the analysis program's or, where edited,
the reader's interpretation).
"""

from __future__ import annotations

import binascii
import datetime as _dt
import warnings
from pathlib import Path

import numpy as np

from ecgtool.errors import RecordError
from ecgtool.formats import RawRecord
from ecgtool.formats.xmltree import _child, _local, _parse, xml_source

VERSIONS = ("1.03", "1.04", "1.04.01", "1.04.02")
DOCUMENT_TYPES = ("SierraECG", "PhilipsECG")
# The first six leads of every layout XLI lead reconstruction applies to.
LIMB_LEADS = ("I", "II", "III", "aVR", "aVL", "aVF")
# A trailing stretch where all leads are equal is dropped when it lasts at least this long.
_MIN_TAIL_S = 0.1


def _find(el, name):
    """First descendant (or self) with local tag ``name``."""
    for x in el.iter():
        if _local(x.tag) == name:
            return x
    return None


def _text(el) -> str:
    return (el.text or "").strip() if el is not None else ""


def _number(name: str, what: str, value: str | None) -> float:
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise RecordError(name, f"Philips XML: unreadable {what} {value!r}") from None
    if not np.isfinite(x) or x <= 0:
        raise RecordError(name, f"Philips XML: {what} {value!r} is not a positive number")
    return x


def read_philips(path: str, **_options) -> list[RawRecord]:
    p = Path(path)
    name = p.stem
    warns: list[str] = []
    root = _parse(p, name, warns)
    tag = _local(root.tag)
    if tag != "restingecgdata":
        raise RecordError(name, f"XML root <{tag}> is not Philips Sierra XML (<restingecgdata>)")
    info = _child(root, "documentinfo")
    doc_type, version = _text(_child(info, "documenttype")), _text(_child(info, "documentversion"))
    if doc_type not in DOCUMENT_TYPES or version not in VERSIONS:
        raise RecordError(name, f"Philips XML {doc_type or '(no documenttype)'} version {version or '(none)'} "
                          f"is not read (versions {', '.join(VERSIONS)} are)")
    sig = _find(root, "signalcharacteristics")
    waves = _find(root, "parsedwaveforms")
    if sig is None:
        raise RecordError(name, "Philips XML without <signalcharacteristics> (sampling rate and resolution unknown)")
    if waves is None:
        raise RecordError(name, "Philips XML without <parsedwaveforms>: the document holds no rhythm waveforms")
    encoding = waves.get("dataencoding") or ""
    compression = waves.get("compression") or waves.get("compressmethod") or ""
    if (waves.get("compressflag") or "True").lower() == "false":
        compression = "none"
    if encoding != "Base64" or compression != "XLI":
        raise RecordError(name, f"Philips XML waveforms with encoding {encoding or '(none)'} and compression "
                          f"{compression or '(none)'} are not read (Base64 XLI-compressed waveforms are)")
    fs = _number(name, "sampling rate", _text(_child(sig, "samplingrate")) or waves.get("samplespersecond"))
    resolution = waves.get("resolution") or _text(_child(sig, "resolution")) or _text(_child(sig, "signalresolution"))
    if not resolution:
        raise RecordError(name, "Philips XML gives no signal resolution (µV per count) in <signalcharacteristics>")
    uv_per_count = _number(name, "signal resolution", resolution)
    offset = waves.get("signaloffset") or _text(_child(sig, "signaloffset")) or "0"
    if offset.strip() not in ("0", "0.0"):
        raise RecordError(name, f"Philips XML signal offset {offset!r} is not supported (only 0 is)")
    duration_ms = _number(name, "durationperchannel", waves.get("durationperchannel"))
    expected = int(round(duration_ms * fs / 1000.0))

    labels, counts = _decode(p, name)
    if tuple(labels[:6]) != LIMB_LEADS:
        raise RecordError(name, f"Philips XML lead layout {' '.join(labels) or '(none)'} is not read: XLI lead "
                          f"reconstruction needs {' '.join(LIMB_LEADS)} first")
    for label, x in zip(labels, counts):
        if len(x) != expected:
            raise RecordError(name, f"lead {label}: the waveform data decode to {len(x)} samples, the file says "
                              f"{expected} ({duration_ms:g} ms at {fs:g} Hz): damaged or truncated waveform data")
    counts_arr = np.stack([np.asarray(x, dtype=np.int32) for x in counts])
    counts_arr = counts_arr[:, : _ecg_end(counts_arr, fs)]
    signal = (counts_arr * (uv_per_count * 1e-3)).astype(np.float32)
    return [RawRecord(name=name, fs=fs, leads=list(labels), signal=signal, source=str(p),
                      units=["mV"] * len(labels), meta=_meta(root), warnings=warns)]


def _decode(path: Path, name: str) -> tuple[list[str], list[np.ndarray]]:
    """Lead labels and int16 sample counts, decoded by sierraecg."""
    try:
        import sierraecg
    except ImportError:  # pragma: no cover - a core dependency
        raise RecordError(name, "reading Philips XML needs the sierraecg package", "pip install sierraecg") from None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ecg = sierraecg.read_file(xml_source(path, name))  # type: ignore[arg-type]
        except (sierraecg.MissingXmlElementError, sierraecg.MissingXmlAttributeError) as exc:
            raise RecordError(name, f"Philips XML is missing <{exc}> (element or attribute)") from None
        except sierraecg.UnsupportedXmlFileError as exc:
            raise RecordError(name, f"Philips XML: {exc}") from None
        except MemoryError:
            raise
        except Exception as exc:  # damaged Base64 or XLI data
            detail = f"invalid Base64: {exc}" if isinstance(exc, binascii.Error) else f"{type(exc).__name__}: {exc}"
            raise RecordError(name, f"damaged or truncated waveform data: the Base64 XLI-compressed "
                              f"<parsedwaveforms> do not decode ({detail})") from None
    if any(issubclass(w.category, RuntimeWarning) and "overflow" in str(w.message) for w in caught):
        raise RecordError(name, "sample values overflow while rebuilding leads III, aVR, aVL, aVF: damaged "
                          "waveform data")
    return [lead.label for lead in ecg.leads], [lead.samples for lead in ecg.leads]


def _ecg_end(counts: np.ndarray, fs: float) -> int:
    """Where the ECG ends: before the trailing stretch in which every lead holds the same value."""
    same = np.all(counts == counts[:1], axis=0)
    differ = np.flatnonzero(~same)
    end = int(differ[-1]) + 1 if differ.size else 0
    if counts.shape[1] - end >= _MIN_TAIL_S * fs and end > 0:
        return end
    return counts.shape[1]


def _date(text: str) -> _dt.date | None:
    try:
        return _dt.date.fromisoformat(text.strip()[:10])
    except ValueError:
        return None


def _meta(root) -> dict:
    meta: dict = {}
    acq = _find(root, "dataacquisition")
    when = None
    if acq is not None and acq.get("date"):
        day = _date(acq.get("date") or "")
        if day is not None:
            try:
                t = _dt.time.fromisoformat((acq.get("time") or "00:00:00").strip())
            except ValueError:
                t = _dt.time()
            when = _dt.datetime.combine(day, t.replace(tzinfo=None))
            meta["base_datetime"] = when
    patient = _find(root, "generalpatientdata")
    if patient is not None:
        sex = _text(_child(patient, "sex")).lower()
        if sex in ("male", "female"):
            meta["sex"] = sex[0].upper()
        age = _age(_child(patient, "age"), when)
        if age is not None:
            meta["age"] = age
    interp = _find(root, "interpretation")
    if interp is not None:
        statements = [_text(_child(s, "leftstatement")) for s in interp if _local(s.tag) == "statement"]
        statements = [s for s in statements if s]
        if statements:
            meta["diagnosis"] = "; ".join(statements)
    return meta


_AGE_UNITS = {"years": 1.0, "months": 12.0, "weeks": 52.18, "days": 365.25, "hours": 365.25 * 24,
              "minutes": 365.25 * 24 * 60}


def _age(el, when: _dt.datetime | None) -> float | None:
    if el is None:
        return None
    for unit, per_year in _AGE_UNITS.items():
        text = _text(_child(el, unit))
        if text:
            try:
                value = float(text)
            except ValueError:
                return None
            return value / per_year if value >= 0 else None
    born = _date(_text(_child(el, "dateofbirth")))
    if born is None or when is None:
        return None
    day = when.date()
    years = day.year - born.year - ((day.month, day.day) < (born.month, born.day))
    return float(years) if years >= 0 else None
