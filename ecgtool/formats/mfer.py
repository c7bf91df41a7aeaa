"""MFER (Medical waveform Format Encoding Rules, ISO 22077-1), as Nihon Kohden and others write it
(``.MWF``, ``.mfer``).

The file is a stream of tags: a tag byte, a length (one byte, or ``0x80 | n`` followed by an
``n``-byte big-endian length) and the contents. The walk reads, until ``END`` (0x80):

* the frame: byte order (``BLE`` 0x01), character set (``TXC`` 0x03, which may switch mid-header,
  e.g. to UTF-16LE for the patient name), samples per block (``BLK`` 0x04), channels (``CHN`` 0x05),
  sequences (``SEQ`` 0x06), data type (``DTP`` 0x0A), sampling interval or rate (``IVL`` 0x0B),
  resolution (``SEN`` 0x0C), offset (``OFF`` 0x0D), null value (``NUL`` 0x12), lead (``LDN`` 0x09);
* per-channel attributes (``ATT`` 0x3F, channel number, then nested tags): each channel's own
  ``LDN``, ``BLK``, ``IVL``, ``SEN``, ``DTP``, ``NUL``, overriding the file-wide values;
* ``WAV`` (0x1E): the samples, sequence by sequence, each holding every channel's block in turn;
* patient id (``PID`` 0x82), sex (``SEX`` 0x84), age (``AGE`` 0x83), measurement time (``TIM``
  0x85), manufacturer (``MAN`` 0x17).

A sample's value is ``resolution × (raw + offset)``; raw values equal to the null value become NaN.
Channels whose lead code is an ECG lead (the SCP-ECG lead codes 1–255) and whose resolution is in
volts are ECG; others (blood pressures in mmHg, status channels) are dropped unless
``--all-channels`` is given. Channels at different rates give one record per rate or, with ``--fs``,
one resampled record (``channels.py``). The ``WAV`` data must hold exactly sequences × the channels'
blocks; a file that ends early is read up to its last whole sequence, with a warning.

Data types read: 16/32-bit signed and unsigned integers, 8-bit signed and unsigned, 32/64-bit
floats; the AHA 8-bit difference and other compressed encodings are refused.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ecgtool.errors import RecordError
from ecgtool.formats import RawRecord, file_bytes
from ecgtool.formats.channels import Channel, to_records

PRE, BLE, VER, TXC, BLK, CHN, SEQ, PNT, WFM, LDN, DTP, IVL, SEN, OFF = (
    0x40, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x0D)
NUL, MAN, WAV, ATT, END, PNM, PID, AGE, SEX, TIM = 0x12, 0x17, 0x1E, 0x3F, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85
# tags a file-wide walk may meet (others are skipped over by their length)
KNOWN_TAGS = {PRE, BLE, VER, TXC, BLK, CHN, SEQ, PNT, WFM, LDN, DTP, IVL, SEN, OFF, NUL, MAN, WAV, ATT, END,
              PNM, PID, AGE, SEX, TIM, 0x0E, 0x11, 0x15, 0x16, 0x41, 0x42, 0x43, 0x44, 0x63, 0x67, 0x86, 0x87}
# data type code -> (numpy dtype without byte order, bytes)
DTYPES = {0: ("i2", 2), 1: ("u2", 2), 2: ("i4", 4), 3: ("u1", 1), 4: ("u2", 2), 5: ("i1", 1), 6: ("u4", 4),
          7: ("f4", 4), 8: ("f8", 8)}
# SEN units: 0 volt, 1 mmHg, 2 Pa, 3 cmH2O, 4 mmHg/s, 5 dyne, 6 N, 7 %, 8 °C, ...
SEN_UNITS = {0: "V", 1: "mmHg", 2: "Pa", 3: "cmH2O", 4: "mmHg/s", 5: "dyn", 6: "N", 7: "%", 8: "degC",
             9: "1/min", 10: "1/s", 11: "Ohm", 12: "A", 13: "rpm", 14: "W", 15: "dB", 16: "kg", 17: "J",
             18: "dyne s m-2 cm-5", 19: "L", 20: "L/s", 21: "L/min", 22: "cd"}


@dataclass
class Attrs:
    """Channel attributes (file-wide defaults, overridden per channel)."""

    lead: int | None = None
    block: int | None = None
    dtype: int = 0
    interval_s: float | None = None  # sampling interval
    resolution: float | None = None
    unit: str = ""
    offset: float = 0.0
    null: int | None = None


@dataclass
class Mfer:
    little: bool = False
    channels: int | None = None
    sequences: int | None = None
    defaults: Attrs = field(default_factory=Attrs)
    per_channel: dict[int, dict] = field(default_factory=dict)
    wav: list[memoryview] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    encoding: str = "ascii"
    ended: bool = False


def _length(buf, i: int, name: str) -> tuple[int, int]:
    if i >= len(buf):
        raise RecordError(name, "MFER: truncated inside a tag")
    n = buf[i]
    if n & 0x80:
        k = n & 0x7F
        if i + 1 + k > len(buf) or k > 8:
            raise RecordError(name, "MFER: truncated inside a tag length")
        return int.from_bytes(buf[i + 1:i + 1 + k], "big"), i + 1 + k
    return n, i + 1


def looks_like_mfer(head: bytes) -> bool:
    """A tag walk over the first bytes meets only known tags, with a byte order or character set tag."""
    i, seen = 0, []
    try:
        while i < len(head) and len(seen) < 6:
            tag = head[i]
            if tag not in KNOWN_TAGS or tag == END:
                return False
            i += 1
            if tag == ATT:
                i += 1
            n, i = _length(head, i, "")
            seen.append(tag)
            if tag == WAV:
                break
            i += n
    except RecordError:
        return len(seen) >= 3 and bool({BLE, TXC, PRE} & set(seen))
    return len(seen) >= 3 and bool({BLE, TXC, PRE} & set(seen))


def _int(b, little: bool, signed: bool = False) -> int:
    return int.from_bytes(bytes(b), "little" if little else "big", signed=signed)


def _scaled(b, little: bool) -> tuple[int, float]:
    """IVL/SEN contents: unit code, then exponent (signed byte) and mantissa -> (unit, value)."""
    if len(b) < 3:
        return (b[0] if b else 0), 0.0
    return b[0], _int(b[2:], little, signed=True) * 10.0 ** int.from_bytes(b[1:2], "big", signed=True)


def _apply(attrs: Attrs, tag: int, v, f: Mfer, name: str) -> bool:
    """Set one attribute tag on ``attrs``; False if the tag is not an attribute."""
    if tag == LDN:
        attrs.lead = _int(v, f.little)
    elif tag == BLK:
        attrs.block = _int(v, f.little)
    elif tag == DTP:
        attrs.dtype = v[0] if len(v) else 0
    elif tag == IVL:
        unit, value = _scaled(v, f.little)
        if value <= 0:
            raise RecordError(name, f"MFER: sampling interval/rate {value:g} is not positive")
        attrs.interval_s = value if unit == 1 else (1.0 / value if unit == 0 else None)
        if attrs.interval_s is None:
            raise RecordError(name, f"MFER: IVL unit code {unit} is not a time or a frequency")
    elif tag == SEN:
        unit, value = _scaled(v, f.little)
        attrs.resolution, attrs.unit = value, SEN_UNITS.get(unit, f"unit{unit}")
    elif tag == OFF:
        attrs.offset = float(_int(v, f.little, signed=True)) if len(v) else 0.0
    elif tag == NUL:
        attrs.null = _int(v, f.little)
    else:
        return False
    return True


def _walk(buf: bytes, name: str) -> Mfer:
    f = Mfer()
    i = 0
    while i < len(buf):
        tag = buf[i]
        i += 1
        if tag == END:
            f.ended = True
            break
        if tag == 0x00:
            continue  # zero padding between tags
        chan = None
        if tag == ATT:
            if i >= len(buf):
                raise RecordError(name, "MFER: truncated inside a channel attribute tag")
            chan = buf[i]
            i += 1
        n, i = _length(buf, i, name)
        if tag == WAV and i + n > len(buf):
            f.wav.append(memoryview(buf)[i:])
            f.meta["_wav_short"] = (n, len(buf) - i)
            break
        if i + n > len(buf):
            raise RecordError(name, f"MFER: truncated inside tag 0x{tag:02X} ({n} bytes declared, "
                              f"{len(buf) - i} left)")
        v = memoryview(buf)[i:i + n]
        i += n
        if tag == BLE:
            f.little = bool(v[0]) if len(v) else False
        elif tag == TXC:
            text = bytes(v).split(b"\0", 1)[0].decode("ascii", errors="replace").strip()
            f.encoding = "utf-16-le" if "UTF-16" in text.upper() else ("utf-8" if "UTF-8" in text.upper() else "latin-1")
        elif tag == CHN:
            f.channels = _int(v, f.little)
        elif tag == SEQ:
            f.sequences = _int(v, f.little)
        elif tag == WAV:
            f.wav.append(v)
        elif tag == ATT:
            f.per_channel.setdefault(chan, {}).update(_nested(bytes(v), name))
        elif tag == PID:
            text = _decode(v, f.encoding)
            if text:
                f.meta["patient_id"] = text
        elif tag == SEX and len(v):
            sex = {1: "M", 2: "F"}.get(v[0])
            if sex:
                f.meta["sex"] = sex
        elif tag == AGE and len(v) >= 1 and v[0] != 0xFF:
            f.meta["age"] = float(v[0])
        elif tag == TIM and len(v) >= 7:
            try:
                f.meta["base_datetime"] = _dt.datetime(_int(v[0:2], f.little), v[2], v[3], v[4], v[5], v[6])
            except ValueError:
                pass
        elif tag == MAN:
            text = _decode(v, f.encoding)
            if text:
                f.meta["device"] = "^".join(x for x in text.split("^")[:2] if x).strip()
        elif not _apply(f.defaults, tag, v, f, name):
            pass
    return f


def _nested(v: bytes, name: str) -> dict:
    """The raw attribute tags of one ATT block: tag -> contents (interpreted later, after BLE is known)."""
    out, i = {}, 0
    while i < len(v):
        tag = v[i]
        i += 1
        if tag == 0x00:
            continue
        n, i = _length(v, i, name)
        out[tag] = v[i:i + n]
        i += n
    return out


def _decode(v, encoding: str) -> str:
    raw = bytes(v)
    if encoding.startswith("utf-16"):
        raw = raw[: len(raw) - len(raw) % 2]
        return raw.decode(encoding, errors="replace").split("\0", 1)[0].strip()
    return raw.split(b"\0", 1)[0].decode(encoding, errors="replace").strip()


def _is_ecg(a: Attrs) -> bool:
    return a.lead is not None and 1 <= a.lead <= 255 and a.unit == "V"


def channel_attrs(f: Mfer, name: str) -> list[Attrs]:
    n = f.channels or (max(f.per_channel) + 1 if f.per_channel else 1)
    out = []
    for c in range(n):
        a = replace(f.defaults)
        for tag, v in f.per_channel.get(c, {}).items():
            _apply(a, tag, v, f, name)
        if a.block is None or a.block <= 0:
            raise RecordError(name, f"MFER: channel {c} has no block length (BLK)")
        if a.interval_s is None:
            raise RecordError(name, f"MFER: channel {c} has no sampling interval (IVL)")
        if a.dtype not in DTYPES:
            raise RecordError(name, f"MFER: channel {c} data type {a.dtype} (a compressed encoding) is not read")
        out.append(a)
    return out


def _lead_name(a: Attrs, c: int) -> str:
    from ecgtool.formats.scp import LEAD_CODES

    if a.lead is not None and _is_ecg(a):
        return LEAD_CODES.get(a.lead, f"lead{a.lead}")
    return f"ch{c}" if a.lead is None else f"ch{c} (0x{a.lead:04X})"


def read_mfer(path: str, all_channels: bool = False, fs: float | None = None, **_options) -> list[RawRecord]:
    p = Path(path)
    name = p.stem
    buf = file_bytes(p, name)
    if not buf:
        raise RecordError(name, "empty file (0 bytes)")
    f = _walk(buf, name)
    warns: list[str] = []
    if not f.wav:
        raise RecordError(name, "MFER: the file holds no waveform (WAV tag)" + ("" if f.ended else ": truncated"))
    attrs = channel_attrs(f, name)
    data = b"".join(bytes(w) for w in f.wav)
    per_seq = sum(a.block * DTYPES[a.dtype][1] for a in attrs)
    whole = len(data) // per_seq
    seqs = f.sequences if f.sequences is not None else whole
    short = f.meta.pop("_wav_short", None)
    if whole < seqs or short:
        warns.append(f"{name}: MFER declares {seqs} sequences, the waveform data hold {whole} whole ones: "
                     "read up to the data")
        seqs = min(seqs, whole)
    elif len(data) != seqs * per_seq:
        warns.append(f"{name}: MFER waveform data are {len(data)} bytes, {seqs} sequences need {seqs * per_seq}; "
                     "the rest is ignored")
    if seqs == 0:
        raise RecordError(name, "MFER: the waveform data hold no whole sequence: truncated")
    order = "<" if f.little else ">"
    blocks: list[list[np.ndarray]] = [[] for _ in attrs]
    pos = 0
    for _ in range(seqs):
        for c, a in enumerate(attrs):
            code, size = DTYPES[a.dtype]
            nbytes = a.block * size
            blocks[c].append(np.frombuffer(data, dtype=order + code, count=a.block, offset=pos))
            pos += nbytes
    channels = []
    for c, a in enumerate(attrs):
        if not (all_channels or _is_ecg(a)):
            continue
        raw = np.concatenate(blocks[c])
        x = (raw.astype(np.float64) + a.offset) * (a.resolution if a.resolution is not None else 1.0)
        if a.null is not None:
            x[raw.astype(np.int64) == _null_value(a)] = np.nan
        channels.append(Channel(_lead_name(a, c), 1.0 / a.interval_s, x, a.unit if a.resolution is not None else "",
                                _is_ecg(a)))
    if not channels:
        found = ", ".join(_lead_name(a, c) for c, a in enumerate(attrs))
        raise RecordError(name, f"MFER: no ECG channel among its {len(attrs)} channels ({found})",
                          "--all-channels keeps every channel")
    return to_records(name, str(p), channels, f.meta, warns, fs=fs)


def _null_value(a: Attrs) -> int:
    """The null value as the data type reads it (NUL is stored unsigned: 0x8000 is -32768 for int16)."""
    code, size = DTYPES[a.dtype]
    v = int(a.null)  # type: ignore[arg-type]
    if code.startswith("i") and v >= 1 << (8 * size - 1):
        v -= 1 << (8 * size)
    return v
