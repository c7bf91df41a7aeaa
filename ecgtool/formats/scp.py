"""SCP-ECG (EN 1064 / ISO 11073-91064), protocol versions 1.0–3.0.

What is read, in the order it is checked:

* section 0's ``SCPECG`` identifier, and the file's length (bytes 2–5), which must not exceed the
  file's size (else it is truncated);
* section 0, the section table: each section's pointer (id, length, 1-based byte index); every
  present section's header (id, length) must match its pointer and its own CRC-CCITT must hold;
  then the file's CRC-CCITT (bytes 0–1, over the rest of the file);
* section 1, header tags: patient id (tag 2), age (4, with its unit), sex (8), acquiring device
  (14: the 6-byte model description), acquisition date and time (25, 26);
* section 2, Huffman tables: absent (no Huffman coding), the default table (``19999``) or tables
  given in the file, with table switching;
* section 3, lead definitions: start and end sample (1-based, inclusive) and lead code of every
  lead, and the flags (reference-beat subtraction);
* section 6, rhythm data: the amplitude multiplier (nV per count), sample interval (µs), first or
  second differences, and one encoded stream per lead;
* section 8, the interpretation's full-text statements (``diagnosis``).

Refused, with the file and the rule it breaks named: a missing ``SCPECG`` identifier (a file that is
not EN 1064 compliant, such as Healforce PC-180D exports), any CRC mismatch (damaged file), a file or
section shorter than it declares (truncated), reference-beat subtraction (section 3 flag bit 0) and
bimodal compression (section 6 byte 6), neither of which is implemented.

Quirks handled: a lead whose section 3 range promises more samples than its stream holds (a writer
whose per-lead byte counts overflowed at 65,534 bytes; a 0-based start sample) is read up to the data,
with a warning naming the record and both numbers; byte-swapped years in section 1 (written by one
anonymiser) are swapped back, with a warning. The sampling rate is 10^6 / the sample interval, as the
file states it (1667 µs gives 599.88 Hz).
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ecgtool.errors import RecordError
from ecgtool.formats import RawRecord, file_bytes

# SCP-ECG lead codes (section 3; MFER uses the same numbering for ECG leads)
LEAD_CODES = {
    0: "unspecified", 1: "I", 2: "II", 3: "V1", 4: "V2", 5: "V3", 6: "V4", 7: "V5", 8: "V6", 9: "V7",
    10: "V2R", 11: "V3R", 12: "V4R", 13: "V5R", 14: "V6R", 15: "V7R", 16: "X", 17: "Y", 18: "Z",
    19: "CC5", 20: "CM5", 21: "LA", 22: "RA", 23: "LL", 24: "fI", 25: "fE", 26: "fC", 27: "fA", 28: "fM",
    29: "fF", 30: "fH", 31: "dI", 32: "dII", 33: "dV1", 34: "dV2", 35: "dV3", 36: "dV4", 37: "dV5",
    38: "dV6", 39: "dV7", 40: "dV2R", 41: "dV3R", 42: "dV4R", 43: "dV5R", 44: "dV6R", 45: "dV7R",
    46: "dX", 47: "dY", 48: "dZ", 49: "dCC5", 50: "dCM5", 51: "dLA", 52: "dRA", 53: "dLL", 54: "dfI",
    55: "dfE", 56: "dfC", 57: "dfA", 58: "dfM", 59: "dfF", 60: "dfH", 61: "III", 62: "aVR", 63: "aVL",
    64: "aVF", 65: "-aVR", 66: "V8", 67: "V9", 68: "V8R", 69: "V9R", 70: "D", 71: "A", 72: "J",
    73: "Defib", 74: "Extern", 75: "A1", 76: "A2", 77: "A3", 78: "A4", 79: "dV8", 80: "dV9",
    81: "dV8R", 82: "dV9R", 83: "dD", 84: "dA", 85: "dJ", 86: "Chest", 87: "V", 88: "VR", 89: "VL",
    90: "VF", 91: "MCL", 92: "MCL1", 93: "MCL2", 94: "MCL3", 95: "MCL4", 96: "MCL5", 97: "MCL6",
    98: "CC", 99: "CC1", 100: "CC2", 101: "CC3", 102: "CC4", 103: "CC6", 104: "CC7", 105: "CM",
    106: "CM1", 107: "CM2", 108: "CM3", 109: "CM4", 110: "CM6", 111: "dIII", 112: "daVR", 113: "daVL",
    114: "daVF", 115: "d-aVR", 116: "dChest", 117: "dV", 118: "dVR", 119: "dVL", 120: "dVF",
    121: "CM7", 122: "CH5", 123: "CS5", 124: "CC8", 125: "CM8", 126: "CB5", 127: "CS5", 128: "CH5",
    129: "CM5", 130: "CR5", 131: "ML", 132: "AB1", 133: "AB2", 134: "AB3", 135: "AB4", 136: "ES",
    137: "AS", 138: "AI", 139: "S", 140: "dDefib", 141: "dExtern", 142: "dA1", 143: "dA2", 144: "dA3",
    145: "dA4", 146: "dMCL1", 147: "dMCL2", 148: "dMCL3", 149: "dMCL4", 150: "dMCL5", 151: "dMCL6",
}
DEFAULT_TABLE_ID = 19999
# The default Huffman table (EN 1064 annex): (prefix bits, total bits, mode switch, base value, base code),
# the base code holding the code's bits in reading order from its least significant bit up.
DEFAULT_TABLE = [
    (1, 1, 1, 0, 0), (3, 3, 1, 1, 1), (3, 3, 1, -1, 5), (4, 4, 1, 2, 3), (4, 4, 1, -2, 11),
    (5, 5, 1, 3, 7), (5, 5, 1, -3, 23), (6, 6, 1, 4, 15), (6, 6, 1, -4, 47), (7, 7, 1, 5, 31),
    (7, 7, 1, -5, 95), (8, 8, 1, 6, 63), (8, 8, 1, -6, 191), (9, 9, 1, 7, 127), (9, 9, 1, -7, 383),
    (10, 10, 1, 8, 255), (10, 10, 1, -8, 767), (10, 18, 1, 0, 511), (10, 26, 1, 0, 1023),
]
_AGE_UNITS = {1: 1.0, 2: 12.0, 3: 52.18, 4: 365.25, 5: 365.25 * 24}


def crc_ccitt(data: bytes | memoryview) -> int:
    """CRC-CCITT as EN 1064 specifies it (polynomial 0x1021, initial value 0xFFFF, no reflection)."""
    import binascii

    return binascii.crc_hqx(bytes(data), 0xFFFF)


@dataclass
class Section:
    id: int
    offset: int  # 0-based byte offset of the section header in the file
    length: int  # including the 16-byte header
    version: int = 0
    protocol: int = 0

    def data(self, buf: bytes) -> memoryview:
        return memoryview(buf)[self.offset + 16: self.offset + self.length]


@dataclass
class Lead:
    code: int
    start: int
    end: int

    @property
    def name(self) -> str:
        return LEAD_CODES.get(self.code, f"lead{self.code}")

    @property
    def declared(self) -> int:
        return self.end - self.start + 1


@dataclass
class ScpFile:
    name: str
    buf: bytes
    sections: dict[int, Section] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def section(self, sid: int) -> memoryview | None:
        s = self.sections.get(sid)
        return s.data(self.buf) if s is not None else None


def _u16(b, i: int) -> int:
    return int.from_bytes(b[i:i + 2], "little")


def _u32(b, i: int) -> int:
    return int.from_bytes(b[i:i + 4], "little")


def parse(buf: bytes, name: str) -> ScpFile:
    """The section table of an SCP-ECG file, every CRC checked (RecordError naming the broken rule)."""
    if len(buf) == 0:
        raise RecordError(name, "empty file (0 bytes)")
    if len(buf) < 6 + 16 + 10:
        raise RecordError(name, f"SCP-ECG: truncated ({len(buf)} bytes, shorter than a header and section 0)")
    if bytes(buf[16:22]) != b"SCPECG":
        raise RecordError(name, "not EN 1064 compliant: section 0 lacks the 'SCPECG' identifier (bytes 17-22); "
                          "a vendor's own variant of SCP-ECG is not read")
    declared = _u32(buf, 2)
    if declared > len(buf):
        raise RecordError(name, f"SCP-ECG: truncated (the header says {declared} bytes, the file has {len(buf)})")
    if declared < 6 + 16:
        raise RecordError(name, f"SCP-ECG: the header's file length {declared} is impossible")
    scp = ScpFile(name, bytes(buf[:declared]))
    s0 = _header(scp, 6, 0, name)
    data = s0.data(scp.buf)
    for k in range(0, len(data) - 9, 10):
        sid, length, index = _u16(data, k), _u32(data, k + 2), _u32(data, k + 6)
        if sid == 0 or length == 0 or index == 0:
            continue
        if index - 1 + length > declared:
            raise RecordError(name, f"SCP-ECG: section {sid} runs past the end of the file (index {index}, "
                              f"{length} bytes, file {declared}): truncated")
        scp.sections[sid] = _header(scp, index - 1, sid, name, length)
    scp.sections[0] = s0
    # the sections' own CRCs first (they say which part is damaged), then the whole file's
    want, got = _u16(buf, 0), crc_ccitt(memoryview(buf)[2:declared])
    if want != got:
        raise RecordError(name, f"SCP-ECG: file CRC mismatch (the file says 0x{want:04X}, its bytes give "
                          f"0x{got:04X}): damaged file")
    return scp


def _header(scp: ScpFile, offset: int, sid: int, name: str, length: int | None = None) -> Section:
    buf = scp.buf
    if offset + 16 > len(buf):
        raise RecordError(name, f"SCP-ECG: section {sid} header lies past the end of the file: truncated")
    got_id, got_len = _u16(buf, offset + 2), _u32(buf, offset + 4)
    if got_id != sid:
        raise RecordError(name, f"SCP-ECG: the section table points to section {sid} at byte {offset + 1}, "
                          f"the header there says section {got_id}")
    if length is not None and got_len != length:
        raise RecordError(name, f"SCP-ECG: section {sid} is {got_len} bytes by its header, {length} by the "
                          "section table")
    if got_len < 16 or offset + got_len > len(buf):
        raise RecordError(name, f"SCP-ECG: section {sid} length {got_len} runs past the end of the file: truncated")
    want, got = _u16(buf, offset), crc_ccitt(memoryview(buf)[offset + 2: offset + got_len])
    if want != got:
        raise RecordError(name, f"SCP-ECG: section {sid} CRC mismatch (the file says 0x{want:04X}, its bytes "
                          f"give 0x{got:04X}): damaged file")
    return Section(sid, offset, got_len, buf[offset + 8], buf[offset + 9])


# --------------------------------------------------------------------------- Huffman coding


def huffman_tables(scp: ScpFile) -> list[list[tuple]] | None:
    """The Huffman tables of section 2 (None when section 2 is absent: the data are not Huffman coded)."""
    d = scp.section(2)
    if d is None:
        return None
    n = _u16(d, 0)
    if n == DEFAULT_TABLE_ID:
        return [DEFAULT_TABLE]
    tables, i = [], 2
    for _ in range(n):
        if i + 2 > len(d):
            raise RecordError(scp.name, "SCP-ECG: section 2 ends inside its Huffman tables")
        count = _u16(d, i)
        i += 2
        table = []
        for _ in range(count):
            if i + 9 > len(d):
                raise RecordError(scp.name, "SCP-ECG: section 2 ends inside a Huffman code")
            pre, total, switch = d[i], d[i + 1], d[i + 2]
            base = int.from_bytes(d[i + 3:i + 5], "little", signed=True)
            code = _u32(d, i + 5)
            table.append((pre, total, switch, base, code))
            i += 9
        tables.append(table)
    if not tables:
        raise RecordError(scp.name, "SCP-ECG: section 2 holds no Huffman table")
    return tables


class _Decoder:
    """Huffman decoding of one stream, MSB first, with a lookup over the longest prefix."""

    def __init__(self, tables: list[list[tuple]], name: str):
        self.name = name
        self.lookups = []
        for t in tables:
            width = max(e[0] for e in t)
            look: list = [None] * (1 << width)
            for pre, total, switch, base, code in t:
                bits = [(code >> k) & 1 for k in range(pre)]  # in reading order
                value = 0
                for b in bits:
                    value = (value << 1) | b
                for rest in range(1 << (width - pre)):
                    look[(value << (width - pre)) | rest] = (pre, total - pre, switch, base)
            self.lookups.append((width, look))

    def decode(self, data: bytes | memoryview, n: int, what: str) -> tuple[np.ndarray, int]:
        """Up to ``n`` values from ``data``; also the number of bits used."""
        bits = "".join(f"{b:08b}" for b in bytes(data))
        nbits = len(bits)
        out = np.empty(n, dtype=np.int64)
        pos = k = table = 0
        width, look = self.lookups[0]
        while k < n and pos < nbits:
            window = bits[pos:pos + width]
            idx = int(window.ljust(width, "0"), 2)
            entry = look[idx]
            if entry is None or pos + entry[0] > nbits:
                if nbits - pos < 8:
                    break  # padding at the end of the stream
                raise RecordError(self.name, f"SCP-ECG {what}: a bit pattern at bit {pos} is no Huffman code "
                                  "of the table in use: damaged data")
            pre, extra, switch, base = entry
            pos += pre
            if switch == 0:
                if not 1 <= base <= len(self.lookups):
                    raise RecordError(self.name, f"SCP-ECG {what}: switch to Huffman table {base}, which the file "
                                      "does not have")
                width, look = self.lookups[base - 1]
                continue
            if extra:
                if pos + extra > nbits:
                    break
                v = int(bits[pos:pos + extra], 2)
                if v >= 1 << (extra - 1):
                    v -= 1 << extra
                pos += extra
                out[k] = v
            else:
                out[k] = base
            k += 1
        return out[:k], pos


def undifference(d: np.ndarray, order: int) -> np.ndarray:
    """Samples from first (``order`` 1) or second (2) differences, as EN 1064 defines them."""
    if order == 0 or len(d) == 0:
        return d.astype(np.int64)
    if order == 1:
        return np.cumsum(d, dtype=np.int64)
    x = np.empty(len(d), dtype=np.int64)
    x[: min(2, len(d))] = d[:2]
    a = int(x[0])
    b = int(x[1]) if len(d) > 1 else 0
    for i in range(2, len(d)):
        a, b = b, int(d[i]) + 2 * b - a
        x[i] = b
    return x


# --------------------------------------------------------------------------- sections


def leads(scp: ScpFile) -> tuple[list[Lead], int]:
    d = scp.section(3)
    if d is None or len(d) < 2:
        raise RecordError(scp.name, "SCP-ECG: section 3 (lead definitions) is missing")
    n, flags = d[0], d[1]
    if len(d) < 2 + 9 * n:
        raise RecordError(scp.name, f"SCP-ECG: section 3 declares {n} leads but holds {(len(d) - 2) // 9}")
    out = [Lead(d[2 + 9 * k + 8], _u32(d, 2 + 9 * k), _u32(d, 2 + 9 * k + 4)) for k in range(n)]
    for ld in out:
        if ld.end < ld.start:
            raise RecordError(scp.name, f"SCP-ECG: lead {ld.name} ends (sample {ld.end}) before it starts ({ld.start})")
    return out, flags


def rhythm(scp: ScpFile) -> tuple[float, list[str], list[np.ndarray]]:
    """(fs, lead names, samples in mV) from sections 2, 3 and 6."""
    name = scp.name
    defs, flags = leads(scp)
    if flags & 1:
        raise RecordError(name, "SCP-ECG: reference-beat subtraction is used (section 3 flag bit 0); such "
                          "files are not read", "export the ECG without reference-beat subtraction (or as "
                          "another format)")
    d = scp.section(6)
    if d is None:
        raise RecordError(name, "SCP-ECG: section 6 (rhythm data) is missing: the file holds no rhythm ECG")
    if len(d) < 6 + 2 * len(defs):
        raise RecordError(name, "SCP-ECG: section 6 is shorter than its header")
    avm_nv, interval_us, diff, bimodal = _u16(d, 0), _u16(d, 2), d[4], d[5]
    if bimodal:
        raise RecordError(name, "SCP-ECG: bimodal compression is used (section 6 byte 6); such files are not read",
                          "export the ECG without bimodal compression")
    if diff not in (0, 1, 2):
        raise RecordError(name, f"SCP-ECG: section 6 difference encoding {diff} is not 0, 1 or 2")
    if interval_us == 0 or avm_nv == 0:
        raise RecordError(name, f"SCP-ECG: section 6 gives sample interval {interval_us} µs and amplitude "
                          f"multiplier {avm_nv} nV: neither may be 0")
    counts = [_u16(d, 6 + 2 * k) for k in range(len(defs))]
    pos = 6 + 2 * len(defs)
    if pos + sum(counts) > len(d):
        raise RecordError(name, f"SCP-ECG: section 6 streams need {sum(counts)} bytes, the section holds "
                          f"{len(d) - pos}: truncated")
    tables = huffman_tables(scp)
    decoder = _Decoder(tables, name) if tables is not None else None
    names, signals, short = [], [], []
    for ld, nbytes in zip(defs, counts):
        stream = d[pos:pos + nbytes]
        pos += nbytes
        what = f"lead {ld.name}"
        if decoder is None:
            values = np.frombuffer(bytes(stream[: nbytes - nbytes % 2]), dtype="<i2").astype(np.int64)
            values = values[: ld.declared]
        else:
            values, _ = decoder.decode(stream, ld.declared, what)
        if len(values) < ld.declared:
            short.append((ld.name, ld.declared, len(values)))
        x = undifference(values, diff)
        names.append(ld.name)
        signals.append((x * (avm_nv * 1e-6)).astype(np.float32))
    if short:
        got = sorted({s[2] for s in short})
        scp.warnings.append(
            f"{name}: SCP-ECG section 3 declares {short[0][1]} samples for lead{'s' if len(short) > 1 else ''} "
            f"{', '.join(s[0] for s in short)}, section 6 holds {', '.join(map(str, got))}: read up to the data")
    return 1e6 / interval_us, names, signals


def _text(b) -> str:
    raw = bytes(b).split(b"\0", 1)[0]
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return raw.decode("latin-1").strip()


def _year(scp: ScpFile, y: int, what: str) -> int | None:
    if 1800 <= y <= 2200:
        return y
    swapped = ((y & 0xFF) << 8) | (y >> 8)
    if 1800 <= swapped <= 2200:
        scp.warnings.append(f"{scp.name}: SCP-ECG section 1 {what} year {y} is byte-swapped; read as {swapped}")
        return swapped
    if y:
        scp.warnings.append(f"{scp.name}: SCP-ECG section 1 {what} year {y} is not plausible; left empty")
    return None


def header_meta(scp: ScpFile) -> dict:
    d = scp.section(1)
    meta: dict = {}
    if d is None:
        return meta
    tags: dict[int, bytes] = {}
    i = 0
    while i + 3 <= len(d):
        tag, length = d[i], _u16(d, i + 1)
        if tag == 255:
            break
        tags.setdefault(tag, bytes(d[i + 3:i + 3 + length]))
        i += 3 + length
    if 2 in tags and _text(tags[2]):
        meta["patient_id"] = _text(tags[2])
    if 4 in tags and len(tags[4]) >= 3:
        value, unit = _u16(tags[4], 0), tags[4][2]
        if unit in _AGE_UNITS and value:
            meta["age"] = value / _AGE_UNITS[unit]
    if 8 in tags and tags[8]:
        sex = {1: "M", 2: "F"}.get(tags[8][0])
        if sex:
            meta["sex"] = sex
    if 14 in tags and len(tags[14]) >= 14:
        model = _text(tags[14][8:14])
        if model:
            meta["device"] = model
    if 25 in tags and len(tags[25]) >= 4:
        y = _year(scp, _u16(tags[25], 0), "acquisition date")
        t = tags.get(26, b"\0\0\0")
        if y is not None:
            try:
                meta["base_datetime"] = _dt.datetime(y, tags[25][2], tags[25][3],
                                                     *(t[:3] if len(t) >= 3 else (0, 0, 0)))
            except ValueError:
                scp.warnings.append(f"{scp.name}: SCP-ECG acquisition date/time is not a valid date; left empty")
    return meta


def statements(scp: ScpFile) -> list[str]:
    """Section 8's full-text interpretive statements."""
    d = scp.section(8)
    if d is None or len(d) < 9:
        return []
    out, i = [], 9
    for _ in range(d[8]):
        if i + 3 > len(d):
            break
        length = _u16(d, i + 1)
        text = _text(d[i + 3:i + 3 + length])
        i += 3 + length
        out.extend(line.strip() for line in text.replace("\r", "\n").split("\n") if line.strip())
    return out


def read_scp(path: str, **_options) -> list[RawRecord]:
    p = Path(path)
    name = p.stem
    buf = file_bytes(p, name)
    scp = parse(buf, name)
    fs, names, signals = rhythm(scp)
    meta = header_meta(scp)
    diag = statements(scp)
    if diag:
        meta["diagnosis"] = "; ".join(diag)
    sig = np.stack(signals) if len({len(s) for s in signals}) == 1 else signals
    return [RawRecord(name=name, fs=fs, leads=names, signal=sig, source=str(p), units=["mV"] * len(names),
                      meta=meta, warnings=scp.warnings)]
