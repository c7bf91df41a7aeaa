"""WFDB (PhysioNet) records: ``.hea`` header + signal files (``.dat``, ``.mat``, FLAC, ...).

Signals equal ``wfdb.rdrecord(...).p_signal`` cast to float32. Two paths give
that result:

* a fast path for the common layout — one signal file, format 16 (or 61),
  one sample per frame, no skew — reads the file with numpy and applies
  ``(digital - baseline) / gain`` in float64 exactly as wfdb does (the
  format's invalid value, -32768, becomes NaN);
* everything else (formats 8/80/212/310/311/FLAC/..., skew, frames,
  multi-segment records, several signal files) goes through
  ``wfdb.rdrecord``.

The header is parsed here in both cases, so metadata (age, sex, SNOMED
``Dx`` codes, LUDB diagnoses, base date/time) comes out the same way, and a
date wfdb cannot parse does not cost the record on the fast path.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ecgtool.errors import RecordError
from ecgtool.formats import RawRecord

# Storage formats wfdb reads (0 marks a null signal).
KNOWN_FORMATS = {"0", "8", "16", "24", "32", "61", "80", "160", "212", "310", "311", "508", "516", "524"}
_FAST = {"16": "<i2", "61": ">i2"}
_DEFAULT_GAIN = 200.0
_UNIT_SCALE = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "v": 1e3, "nv": 1e-6}

_SIG_FMT = re.compile(r"^(\d+)(?:x(\d+))?(?::(\d+))?(?:\+(\d+))?$")
_GAIN = re.compile(r"^([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)?(?:\((-?\d+)\))?(?:/(.*))?$")


@dataclass
class Signal:
    file_name: str
    fmt: str
    samps_per_frame: int = 1
    skew: int = 0
    byte_offset: int = 0
    gain: float = _DEFAULT_GAIN
    baseline: int = 0
    units: str = "mV"
    description: str = ""


@dataclass
class Header:
    name: str
    n_seg: int | None
    n_sig: int
    fs: float
    sig_len: int | None
    base_time: str | None
    base_date: str | None
    signals: list[Signal] = field(default_factory=list)
    segments: list[tuple[str, int]] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    fast_ok: bool = True


def read_text(path: Path, record: str) -> tuple[str, list[str]]:
    """Header text (UTF-8, else Latin-1 with a warning) and warnings."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RecordError(record, f"cannot read header {path}: {exc.strerror or exc}") from None
    if not raw.strip():
        raise RecordError(record, f"empty header file {path.name}")
    try:
        return raw.decode("utf-8"), []
    except UnicodeDecodeError:
        return raw.decode("latin-1"), [f"{record}: header {path.name} is not UTF-8; read as Latin-1"]


def parse_header(text: str, record: str) -> Header:
    """Parse a WFDB header (record line, signal or segment lines, comments)."""
    lines, comments = [], []
    for line in text.splitlines():
        s = line.strip()
        if not s:
            continue
        if s.startswith("#"):
            comments.append(s[1:].strip())
            continue
        # a comment after the fields
        lines.append(line.split("#", 1)[0].rstrip() if "#" in line else line)
    if not lines:
        raise RecordError(record, "the header has no record line")
    tok = lines[0].split()
    try:
        name, _, nseg = tok[0].partition("/")
        n_sig = int(tok[1]) if len(tok) > 1 else 0
        fs_tok = tok[2] if len(tok) > 2 else "250"
        fs = float(fs_tok.split("/")[0]) if fs_tok.split("/")[0] else 250.0
        sig_len = int(tok[3]) if len(tok) > 3 and tok[3].isdigit() else None
    except (ValueError, IndexError):
        raise RecordError(record, f"unreadable record line {lines[0].strip()!r}") from None
    rest = tok[4:] if sig_len is not None else tok[3:]
    base_time = rest[0] if rest and ":" in rest[0] else None
    base_date = None
    for t in rest:
        if "/" in t:
            base_date = t
    hdr = Header(name=name, n_seg=int(nseg) if nseg else None, n_sig=n_sig, fs=fs, sig_len=sig_len,
                 base_time=base_time, base_date=base_date, comments=comments)
    body = lines[1:]
    if hdr.n_seg is not None:
        for line in body[: hdr.n_seg]:
            t = line.split()
            if len(t) >= 2:
                hdr.segments.append((t[0], int(t[1]) if t[1].isdigit() else 0))
        hdr.fast_ok = False
        return hdr
    if len(body) < n_sig:
        raise RecordError(record, f"the header announces {n_sig} signals but has {len(body)} signal lines")
    for line in body[:n_sig]:
        hdr.signals.append(_parse_signal(line, hdr, record))
    return hdr


def _parse_signal(line: str, hdr: Header, record: str) -> Signal:
    t = line.split(None, 8)
    if len(t) < 2:
        raise RecordError(record, f"unreadable signal line {line.strip()!r}")
    m = _SIG_FMT.match(t[1])
    if not m:
        raise RecordError(record, f"unreadable storage format {t[1]!r} in signal line {line.strip()!r}")
    fmt = m.group(1)
    if fmt not in KNOWN_FORMATS:
        raise RecordError(record, f"unknown WFDB storage format {fmt}",
                          f"known formats: {', '.join(sorted(KNOWN_FORMATS, key=int))}")
    sig = Signal(file_name=t[0], fmt=fmt, samps_per_frame=int(m.group(2) or 1), skew=int(m.group(3) or 0),
                 byte_offset=int(m.group(4) or 0))
    adc_zero = None
    baseline = None
    if len(t) > 2:
        g = _GAIN.match(t[2])
        if not g:
            hdr.fast_ok = False
        else:
            if g.group(1):
                sig.gain = float(g.group(1)) or _DEFAULT_GAIN
            if g.group(2) is not None:
                baseline = int(g.group(2))
            if g.group(3):
                sig.units = g.group(3)
    if len(t) > 4:
        try:
            adc_zero = int(t[4])
        except ValueError:
            hdr.fast_ok = False
    sig.baseline = baseline if baseline is not None else (adc_zero or 0)
    if len(t) > 8:
        sig.description = t[8].strip()
    elif len(t) < 9:
        hdr.fast_ok = False  # wfdb fills default names; let it
    return sig


# --------------------------------------------------------------------------- metadata

_SEX = {"m": "M", "male": "M", "f": "F", "female": "F"}


def _age(text: str):
    m = re.match(r"^\s*(\d+(?:\.\d+)?)", text)
    return float(m.group(1)) if m else None


def header_meta(hdr: Header, record: str) -> tuple[dict, list[str]]:
    """Metadata columns from a header: age, sex, dx, diagnosis, base_datetime."""
    meta: dict = {}
    warnings: list[str] = []
    diag: list[str] = []
    in_diag = False
    for c in hdr.comments:
        key, sep, value = c.partition(":")
        k = key.strip().strip("<>").strip().lower()
        v = value.strip()
        if sep and k in ("age",):
            meta["age"] = _age(v)
            in_diag = False
        elif sep and k in ("sex", "gender"):
            meta["sex"] = _SEX.get(v.lower())
            in_diag = False
        elif sep and k == "dx":
            meta["dx"] = [x.strip() for x in v.split(",") if x.strip()]
            in_diag = False
        elif sep and k in ("diagnoses", "diagnosis") and key.strip().startswith("<"):
            in_diag = True
            if v:
                diag.append(v)
        elif in_diag and c:
            diag.append(c.strip())
    if diag:
        meta["diagnosis"] = "; ".join(d.rstrip(" ") for d in diag)
    if hdr.base_date:
        try:
            date = _dt.datetime.strptime(hdr.base_date, "%d/%m/%Y").date()
            t = _dt.time()
            if hdr.base_time:
                parts = hdr.base_time.split(":")
                sec = float(parts[-1]) if parts[-1] else 0.0
                hms = [int(p) if p else 0 for p in parts[:-1]]
                hms = [0] * (2 - len(hms)) + hms
                t = _dt.time(hms[0], hms[1], int(sec), int(round((sec % 1) * 1e6)) % 1000000)
            meta["base_datetime"] = _dt.datetime.combine(date, t)
        except (ValueError, IndexError):
            warnings.append(f"{record}: base date/time {hdr.base_date!r} {hdr.base_time or ''} is not a valid "
                            "DD/MM/YYYY date; left empty")
    return meta, warnings


# --------------------------------------------------------------------------- reading


def _units(names: list[str], p: np.ndarray | None = None):
    """Scale factors to mV and the unit names after scaling."""
    scale, out = [], []
    for u in names:
        f = _UNIT_SCALE.get((u or "").strip().lower())
        if f is None:
            scale.append(1.0)
            out.append(u)
        else:
            scale.append(f)
            out.append("mV")
    return scale, out


def _fast_signal(hdr: Header, folder: Path, record: str) -> np.ndarray | None:
    sigs = hdr.signals
    if not hdr.fast_ok or not sigs:
        return None
    first = sigs[0]
    if first.fmt not in _FAST:
        return None
    for s in sigs:
        if (s.file_name != first.file_name or s.fmt != first.fmt or s.samps_per_frame != 1 or s.skew
                or s.byte_offset != first.byte_offset):
            return None
    path = folder / first.file_name
    n = len(sigs)
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        raise RecordError(record, f"file {first.file_name} is missing",
                          "the header names it; put it beside the .hea") from None
    avail = max(size - first.byte_offset, 0) // (2 * n)
    length = hdr.sig_len if hdr.sig_len is not None else avail
    if avail < length:
        raise RecordError(record, f"signal file {first.file_name} holds {avail} samples per signal, the header says "
                          f"{length} (truncated file or wrong header)")
    d = np.fromfile(path, dtype=_FAST[first.fmt], count=length * n, offset=first.byte_offset)
    d = d.reshape(length, n).T
    p = np.array(d, dtype=np.float64, order="C")
    baseline = np.array([s.baseline for s in sigs], dtype=np.float64)[:, None]
    gain = np.array([s.gain for s in sigs], dtype=np.float64)[:, None]
    np.subtract(p, baseline, out=p)
    np.divide(p, gain, out=p)
    nan = d == -32768
    if nan.any():
        p[nan] = np.nan
    return p


def _wfdb_signal(base: Path, hdr: Header, record: str):
    import warnings

    import wfdb

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rec = wfdb.rdrecord(str(base))
    except FileNotFoundError as exc:
        missing = Path(exc.filename).name if getattr(exc, "filename", None) else str(exc)
        raise RecordError(record, f"file {missing} is missing",
                          "the header names it; put it beside the .hea") from None
    except Exception as exc:  # wfdb raises plain ValueError/IndexError/... for bad files
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RecordError(record, f"wfdb cannot read it: {type(exc).__name__}: {msg}") from None
    p = rec.p_signal
    if p is None:
        raise RecordError(record, "the record has no signals")
    names = list(rec.sig_name or [f"ch{i}" for i in range(p.shape[1])])
    units = list(rec.units or ["mV"] * p.shape[1])
    expected = hdr.sig_len
    if expected and p.shape[0] < expected:
        raise RecordError(record, f"the signal files hold {p.shape[0]} samples per signal, the header says "
                          f"{expected} (truncated file or wrong header)")
    return p.T, names, units, float(rec.fs)


def read_wfdb(path: str, **_options) -> list[RawRecord]:
    """Read one WFDB record given its ``.hea`` path."""
    hea = Path(path)
    name = hea.stem
    text, warnings = read_text(hea, name)
    hdr = parse_header(text, name)
    if hdr.n_seg is None and hdr.sig_len == 0:
        raise RecordError(name, "a header with no samples (a multi-segment layout header?)",
                          "convert the multi-segment record's master header instead")
    if hdr.n_sig == 0:
        raise RecordError(name, "the header declares no signals")
    meta, w = header_meta(hdr, name)
    warnings += w
    p = _fast_signal(hdr, hea.parent, name)
    if p is not None:
        leads = [s.description for s in hdr.signals]
        units = [s.units for s in hdr.signals]
        fs = hdr.fs
    else:
        p, leads, units, fs = _wfdb_signal(hea.with_suffix(""), hdr, name)
    scale, units = _units(units)
    if any(f != 1.0 for f in scale):
        p = p * np.asarray(scale, dtype=np.float64)[:, None]
    sig = np.ascontiguousarray(p, dtype=np.float32)
    return [RawRecord(name=name, fs=float(fs), leads=leads, signal=sig, source=str(hea), units=units, meta=meta,
                      warnings=warnings)]


def multi_segment_parts(hea: Path) -> list[Path]:
    """Headers a multi-segment master header refers to (segments and layout), else []."""
    try:
        with open(hea, "rb") as fh:
            first = b""
            for line in fh:
                if line.strip() and not line.lstrip().startswith(b"#"):
                    first = line
                    break
            tok = first.split()
            if not tok or b"/" not in tok[0]:
                return []
            nseg = int(tok[0].split(b"/")[1])
            parts = []
            for line in fh:
                s = line.strip()
                if not s or s.startswith(b"#"):
                    continue
                seg = s.split()[0].decode("latin-1")
                if seg != "~":
                    parts.append(hea.parent / f"{seg}.hea")
                if len(parts) >= nseg:
                    break
            return parts
    except (OSError, ValueError, IndexError):
        return []
