"""Raw ECG readers for ``ecgtool convert``.

Every reader turns one source file into :class:`RawRecord` objects whose
signals are float32 in mV (leads × samples), with the source's own lead names
(normalised later) and whatever header metadata the format carries. A file
that cannot be read raises :class:`ecgtool.errors.RecordError` naming the
record and the cause.

Which reader handles a file is decided by its name and first bytes
(:func:`reader_for`):

* ``.hea`` — WFDB (PhysioNet) records, including ``.mat`` challenge files,
  multi-segment records, every storage format wfdb reads (``wfdb.py``);
* ``.xml`` (or a file whose first bytes are XML) — Philips Sierra XML
  (``<restingecgdata>``, versions 1.03–1.04.02, XLI-compressed; ``philips.py``)
  when its root element says so, in UTF-8 or UTF-16; else HL7 aECG
  (``hl7aecg.py``);
* ``.dcm`` or the ``DICM`` marker — DICOM 12-lead waveforms (``dicom.py``,
  needs the ``dicom`` extra: pydicom);
* ``.csv`` / ``.npy`` — plain arrays with a sampling rate given by the user
  (``array.py``).
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

# Extensions a folder scan picks up as records. Arrays (.csv/.npy) are taken
# only when named explicitly: folders hold label tables as .csv too.
RECORD_EXTENSIONS = {".hea", ".xml", ".dcm"}
ARRAY_EXTENSIONS = {".csv", ".npy"}
# Files that belong to a record but are not records themselves.
ANNOTATION_EXTENSIONS = {
    ".atr", ".qrs", ".ecg", ".pu", ".pu0", ".pu1", ".wqrs", ".wabp", ".sqrs", ".gqrsh", ".gqrsl",
    ".ari", ".anI", ".xyz", ".edf",
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

    def lead_lengths(self) -> list[int]:
        if isinstance(self.signal, np.ndarray):
            return [self.signal.shape[1]] * self.signal.shape[0]
        return [len(x) for x in self.signal]


def record_name(path: str | os.PathLike) -> str:
    p = Path(path)
    return p.stem if p.suffix else p.name


def _sniff(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(256)
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


def _looks_like_xml(head: bytes) -> bool:
    return _decode_head(head).lstrip().startswith("<")


def reader_for(path: str | os.PathLike) -> Callable[..., list[RawRecord]]:
    """The reader function for one file (raises RecordError when none fits)."""
    p = Path(path)
    ext = p.suffix.lower()
    if ext == ".hea":
        from ecgtool.formats.wfdb import read_wfdb

        return read_wfdb
    if ext == ".csv" or ext == ".npy":
        from ecgtool.formats.array import read_array

        return read_array
    head = _sniff(p)
    if ext == ".dcm" or head[128:132] == b"DICM":
        from ecgtool.formats.dicom import read_dicom

        return read_dicom
    if ext == ".xml" or _looks_like_xml(head):
        if xml_root_name(p) == "restingecgdata":
            from ecgtool.formats.philips import read_philips

            return read_philips
        return read_xml
    if p.suffix in ANNOTATION_EXTENSIONS or ext in ANNOTATION_EXTENSIONS:
        raise RecordError(str(path), "an annotation file, not a record", "give the record's .hea file or its folder")
    if ext in (".dat", ".mat"):
        raise RecordError(str(path), "a WFDB signal file without its header", "give the record's .hea file")
    raise RecordError(str(path), f"unknown file type {p.suffix or '(no extension)'}",
                      "convert reads WFDB .hea, HL7 aECG and Philips .xml, DICOM .dcm, .csv and .npy")


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
    raise RecordError(p.stem, f"XML root <{tag}> is neither HL7 aECG (<AnnotatedECG>) nor Philips Sierra "
                      "(<restingecgdata>)")


def read_file(path: str | os.PathLike, **options) -> list[RawRecord]:
    """Read one file into records (a reader may return several, e.g. none for a layout header)."""
    return reader_for(path)(str(path), **options)
