"""Raw ECG readers for ``ecgtool convert``.

Every reader turns one source file into :class:`RawRecord` objects whose
signals are float32 in mV (leads × samples), with the source's own lead names
(normalised later) and whatever header metadata the format carries. A file
that cannot be read raises :class:`ecgtool.errors.RecordError` naming the
record and the cause.

Which reader handles a file is decided from its first bytes
(:func:`sniff_format`), not from its name; only WFDB headers (``.hea``) and
plain arrays (``.csv`` / ``.npy``, which carry no signature) go by their
extension:

* ``.hea`` — WFDB (PhysioNet) records, including ``.mat`` challenge files,
  multi-segment records, every storage format wfdb reads (``wfdb.py``);
* XML — by its root element: GE MUSE ``<RestingECG>`` (``muse.py``), Philips
  Sierra ``<restingecgdata>`` (``philips.py``), HL7 aECG ``<AnnotatedECG>``
  (``hl7aecg.py``); a wrong encoding declaration is recovered
  (``xmltree.py``);
* the ``DICM`` marker at byte 128 — DICOM 12-lead waveforms (``dicom.py``);
* section 0 at byte 6 (``SCPECG``) — SCP-ECG, EN 1064 (``scp.py``);
* ``0`` and a numeric fixed header (EDF/EDF+) or ``\\xffBIOSEMI`` (BDF) —
  ``edf.py``;
* an MFER preamble or tag stream — MFER, ISO 22077 (``mfer.py``);
* a text header with ``Sample Rate,`` and ``Lead,`` lines — Apple Health ECG
  CSV (``apple.py``);
* the HDF5 signature — a CODE-15-layout ``tracings`` file (``archives.py``);
* a Contec ECG90A header (case number, ``YYYY-MM-DD hh:mm:ss`` at byte 10) — ``contec.py``;
* ``.csv`` / ``.npy`` otherwise — plain arrays with a sampling rate given by
  the user (``array.py``).

A folder scan takes every file whose content is one of these (so ``.SCP``,
``.MWF``, ``.edf`` and Apple ``.csv`` exports are found whatever their case
or extension), except an EDF that is a WFDB record's signal file or holds only
EDF+ annotations; a file named like a record (``.xml``, ``.scp``, ``.edf``,
``.mwf``, ...) that is empty or unrecognisable is reported; label tables and
other files are counted as ignored.
"""

from __future__ import annotations

import codecs
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ecgtool.errors import RecordError

# Extensions a folder scan picks up as records without looking inside. Arrays (.csv/.npy) are taken
# only when named explicitly: folders hold label tables as .csv too.
RECORD_EXTENSIONS = {".hea", ".xml", ".dcm"}
ARRAY_EXTENSIONS = {".csv", ".npy"}
# Files that belong to a record but are not records themselves (an EDF file is a record of its own
# unless a WFDB header of the same name sits beside it).
ANNOTATION_EXTENSIONS = {
    ".atr", ".qrs", ".ecg", ".pu", ".pu0", ".pu1", ".wqrs", ".wabp", ".sqrs", ".gqrsh", ".gqrsl",
    ".ari", ".anI", ".xyz",
}
# WFDB signal files, read through their headers.
SIGNAL_EXTENSIONS = {".dat", ".mat", ".d0", ".d1", ".d2", ".d3", ".d4", ".d5", ".d6", ".d7", ".d8", ".d9"}

# Extensions of record formats: a file so named that is empty or whose content matches no format is
# reported (one line saying why) rather than passed over by a folder scan.
NAMED_EXTENSIONS = {".xml", ".dcm", ".scp", ".edf", ".bdf", ".rec", ".mwf", ".mfer", ".mfr", ".hdf5", ".h5"}

# Metadata columns beyond convert's base schema, by the format whose reader fills them (their types and
# order: ecgtool.io.schema.COLUMNS and FORMAT_METADATA).
FORMAT_META = {
    "muse": ["patient_id", "device"],
    "scp": ["patient_id", "device"],
    "edf": ["patient_id", "device", "annotations", "q_out_of_range"],
    "mfer": ["patient_id", "device"],
    "apple": ["device", "classification", "symptoms"],
    "code15": ["patient_id", "study_id"],
    "contec": ["device"],
}


@dataclass
class RawRecord:
    """One record as read from its source, before it becomes a table row."""

    name: str
    fs: float
    leads: list[str]
    # (L, T) float32 array, or a list of 1-D float32 arrays when leads differ in length
    signal: Any
    source: str
    units: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # the row's record id when the source states it (an archive's exam id); else the file's id is used
    record_id: str | None = None
    # appended to the file's record id when a file holds several records (``@125Hz``)
    id_suffix: str | None = None

    def lead_lengths(self) -> list[int]:
        if isinstance(self.signal, np.ndarray):
            return [self.signal.shape[1]] * self.signal.shape[0]
        return [len(x) for x in self.signal]


def record_name(path: str | os.PathLike) -> str:
    p = Path(path)
    return p.stem if p.suffix else p.name


def file_bytes(path: Path, name: str) -> bytes:
    """The whole of the file ``path``; one that cannot be read is a :class:`RecordError` of record ``name``."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise RecordError(name, f"cannot read: {exc.strerror or exc}") from None


HEAD_BYTES = 512


def _sniff(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(HEAD_BYTES)
    except IsADirectoryError:
        raise RecordError(str(path), "a folder, not a file") from None
    except OSError as exc:
        raise RecordError(str(path), f"cannot open: {exc.strerror or exc}") from None


# XML declaration, comments, a DOCTYPE and white space before the root element's name
_XML_PROLOG = re.compile(r"(?:<\?.*?\?>|<!--.*?-->|<!DOCTYPE[^>\[]*(?:\[.*?\])?\s*>|\s)*<([A-Za-z_][\w.:-]*)", re.S)


def xml_root_name(path: str | os.PathLike, size: int = 8192) -> str | None:
    """The local name of an XML document's root element, from its first bytes (None when not found there)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(size)
    except OSError:
        return None
    m = _XML_PROLOG.match(_decode_head(head))
    return m.group(1).rsplit(":", 1)[-1] if m else None


def _decode_head(head: bytes) -> str:
    """The first bytes of a file as text: UTF-16 (with a byte-order mark or recognised by its zero bytes) or UTF-8."""
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        enc = "utf-16"
    elif head[:2] == b"<\x00":
        enc = "utf-16-le"
    elif head[:2] == b"\x00<":
        enc = "utf-16-be"
    else:
        return head.decode("utf-8-sig", errors="replace")
    return head[: len(head) - len(head) % 2].decode(enc, errors="replace")


_XML_START = re.compile(r"\s*<(?:\?xml[\s?]|!--|!DOCTYPE\s|[A-Za-z_][\w.:-]*[\s>/])")


def _is_xml(head: bytes) -> bool:
    """Text that opens like an XML document (a declaration, comment, DOCTYPE or element), not binary data
    that happens to start with '<'."""
    text = _decode_head(head)
    if not _XML_START.match(text):
        return False
    sample = text[:256]
    printable = sum(ch.isprintable() or ch in "\r\n\t" for ch in sample)
    return printable >= 0.95 * len(sample)


# --------------------------------------------------------------------------- content sniffing

# XML roots read by their own reader; any other XML (HL7 aECG among them) is parsed first and dispatched on
# its root by read_xml
_XML_ROOTS = {"RestingECG": "muse", "restingecgdata": "philips"}
_EDF_NUMERIC = ((184, 192), (236, 244), (244, 252), (252, 256))  # header bytes, records, duration, signals
_CONTEC_TIME = re.compile(rb"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")


def _is_edf(head: bytes) -> bool:
    if len(head) < 256:
        return False
    if not (head[:8] == b"0       " or head[:8] == b"\xffBIOSEMI"):
        return False
    for a, b in _EDF_NUMERIC:
        try:
            float(head[a:b].decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            return False
    return True


def _is_scp(head: bytes) -> bool:
    """Section 0 at byte 6 (id 0) whose pointer table starts with itself: SCP-ECG, compliant or not."""
    if len(head) < 32:
        return False
    if head[16:22] == b"SCPECG" and head[8:10] == b"\0\0":
        return True
    sec_id = int.from_bytes(head[8:10], "little")
    sec_len = int.from_bytes(head[10:14], "little")
    ptr_id = int.from_bytes(head[22:24], "little")
    ptr_len = int.from_bytes(head[24:28], "little")
    return sec_id == 0 and ptr_id == 0 and sec_len == ptr_len and sec_len >= 26 and (sec_len - 16) % 10 == 0


def _is_mfer(head: bytes) -> bool:
    if len(head) >= 6 and head[0] == 0x40 and head[1] <= 0x7F and head[2:6] in (b"MFR ", b"MFER"):
        return True
    from ecgtool.formats.mfer import looks_like_mfer

    return looks_like_mfer(head)


_APPLE_KEYS = ("Name,", "Date of Birth,", "Recorded Date,", "Classification,", "Symptoms,", "Software Version,",
               "Device,", "Sample Rate,")


def _is_apple(head: bytes) -> bool:
    """The key,value header of an Apple Health ECG export (two of its keys, in its first lines)."""
    lines = [x.strip() for x in head.decode("utf-8", errors="replace").splitlines()[:12]]
    return sum(any(x.startswith(k) for x in lines) for k in _APPLE_KEYS) >= 2 and lines[0].startswith(_APPLE_KEYS)


def _is_contec(head: bytes) -> bool:
    return (len(head) >= 43 and head[:7].isdigit() and head[7:8] == b"\0"
            and _CONTEC_TIME.fullmatch(head[10:29]) is not None)


def sniff_format(path: str | os.PathLike, head: bytes | None = None) -> str | None:
    """The format of a file from its first bytes (``.hea``/``.csv``/``.npy`` also by name): one of
    wfdb, muse, philips, xml (any other XML: HL7 aECG, dispatched on its root once parsed), dicom, scp, edf,
    mfer, apple, code15, contec, array; None if unknown."""
    p = Path(path)
    ext = p.suffix.lower()
    if ext == ".hea":
        return "wfdb"
    head = _sniff(p) if head is None else head
    if not head:
        return None
    if head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "code15"
    if _is_edf(head):
        return "edf"
    if _is_scp(head):
        return "scp"
    if _is_xml(head):
        return _XML_ROOTS.get(xml_root_name(p) or "", "xml")
    if _is_apple(head):
        return "apple"
    if _is_contec(head):
        return "contec"
    if _is_mfer(head):
        return "mfer"
    if ext in ARRAY_EXTENSIONS:
        return "array"
    return None


def _edf_annotations_only(path: Path) -> bool:
    """An EDF+ file whose only signals are 'EDF Annotations' (an annotation file, not a recording)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(256)
            ns = int(head[252:256].decode("ascii").strip())
            labels = fh.read(16 * ns)
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    names = {labels[16 * k:16 * k + 16].decode("ascii", "replace").strip() for k in range(ns)}
    return bool(names) and names <= {"EDF Annotations", "BDF Annotations"}


def scan_format(path: Path) -> str | None:
    """The format of a file found in a folder scan, or None when it is not a record of its own
    (signal and annotation files, label tables, documents, files of unknown content)."""
    ext = path.suffix.lower()
    if ext == ".hea":
        return "wfdb"
    if ext in SIGNAL_EXTENSIONS:
        return None
    try:
        fmt = sniff_format(path)
    except RecordError:
        return None
    if fmt == "array":
        return None
    if fmt == "edf" and (path.with_suffix(".hea").exists() or _edf_annotations_only(path)):
        return None  # the signal file of a WFDB record, or an EDF+ annotation file
    if fmt is None and ext in NAMED_EXTENSIONS:
        return "unknown"  # named like a record but empty or unrecognisable: reported, not passed over
    return fmt


_READERS = {
    "wfdb": ("ecgtool.formats.wfdb", "read_wfdb"),
    "array": ("ecgtool.formats.array", "read_array"),
    "dicom": ("ecgtool.formats.dicom", "read_dicom"),
    "philips": ("ecgtool.formats.philips", "read_philips"),
    "hl7aecg": ("ecgtool.formats.hl7aecg", "read_aecg"),
    "muse": ("ecgtool.formats.muse", "read_muse"),
    "scp": ("ecgtool.formats.scp", "read_scp"),
    "edf": ("ecgtool.formats.edf", "read_edf"),
    "mfer": ("ecgtool.formats.mfer", "read_mfer"),
    "apple": ("ecgtool.formats.apple", "read_apple"),
    "code15": ("ecgtool.formats.archives", "read_code15"),
    "contec": ("ecgtool.formats.contec", "read_contec"),
}


def reader_for(path: str | os.PathLike, fmt: str | None = None) -> Callable[..., list[RawRecord]]:
    """The reader function for one file (raises RecordError when none fits)."""
    import importlib

    p = Path(path)
    name = record_name(p)
    if fmt == "unknown":
        fmt = None
    if fmt is None:
        if p.suffix.lower() not in (".hea", ".csv", ".npy"):
            head = _sniff(p)
            if not head:
                cause = ("not well-formed XML (an empty file: 0 bytes)" if p.suffix.lower() == ".xml"
                         else f"{p.name} is empty (0 bytes)")
                raise RecordError(name, cause)
        fmt = sniff_format(p)
    if fmt == "xml":
        return read_xml
    if fmt is None and p.suffix.lower() == ".xml":
        return read_xml  # says why it does not parse
    if fmt is None and p.suffix.lower() == ".dcm":
        fmt = "dicom"
    if fmt is None:
        ext = p.suffix
        if ext.lower() in ANNOTATION_EXTENSIONS:
            raise RecordError(name, f"{p.name} is an annotation file, not a record",
                              "give the record's .hea file or its folder")
        if ext.lower() in (".dat", ".mat"):
            raise RecordError(name, f"{p.name} is a WFDB signal file without its header", "give the record's .hea file")
        raise RecordError(name, f"{p.name}: unknown file type ({ext or 'no extension'}; the content matches no "
                          "format convert reads)", "see docs/formats.md for the formats and how they are recognised")
    module, func = _READERS[fmt]
    return getattr(importlib.import_module(module), func)


def read_xml(path: str, **options) -> list[RawRecord]:
    """An XML file whose root element was not found in its first bytes: parse it, then dispatch on the root."""
    from ecgtool.formats.xmltree import _local, _parse

    p = Path(path)
    root = _parse(p, p.stem)
    tag = _local(root.tag)
    if tag == "restingecgdata":
        from ecgtool.formats.philips import read_philips

        return read_philips(path, **options)
    if tag == "AnnotatedECG":
        from ecgtool.formats.hl7aecg import read_aecg

        return read_aecg(path, root=root, **options)
    if tag == "RestingECG":
        from ecgtool.formats.muse import read_muse

        return read_muse(path, root=root, **options)
    raise RecordError(p.stem, f"XML root <{tag}> is none of GE MUSE (<RestingECG>), HL7 aECG (<AnnotatedECG>), "
                      "Philips Sierra (<restingecgdata>)")


def read_file(path: str | os.PathLike, fmt: str | None = None, **options) -> list[RawRecord]:
    """Read one file into records (a reader may return several, e.g. none for a layout header)."""
    return reader_for(path, fmt)(str(path), **options)
