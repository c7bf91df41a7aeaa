"""XML helpers the XML readers share (HL7 aECG, Philips Sierra, GE MUSE): safe parsing, namespace-free
tag lookup, and recovery from a wrong encoding declaration.

Documents are parsed with defusedxml: entity declarations (internal expansion, "billion laughs") and
external references are refused, never expanded or fetched; a DOCTYPE naming an external DTD
(``<!DOCTYPE RestingECG SYSTEM "restecg.dtd">``) is allowed and the DTD is not read.

A document whose XML declaration names an encoding its bytes are not in (a Philips PageWriter file
that declares UTF-16 but is ASCII) is read in the encoding its bytes show — a byte-order mark, the
zero bytes of UTF-16, else UTF-8 if it decodes, else Latin-1 — with a warning.
"""

from __future__ import annotations

import codecs
import io
import re
from pathlib import Path

from ecgtool.errors import RecordError

_DECL = re.compile(rb"^(\xef\xbb\xbf)?(<\?xml[^>]*?encoding\s*=\s*)([\"'])([A-Za-z0-9._-]+)\3", re.S)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _children(el, name):
    return [c for c in el if _local(c.tag) == name]


def _child(el, name):
    """First child with local tag ``name`` (None when there is none, or ``el`` is None)."""
    if el is None:
        return None
    for c in el:
        if _local(c.tag) == name:
            return c
    return None


def _text(el) -> str:
    return (el.text or "").strip() if el is not None else ""


def _find(el, name):
    """First descendant (or self) with local tag ``name``."""
    if el is None:
        return None
    for x in el.iter():
        if _local(x.tag) == name:
            return x
    return None


def actual_encoding(data: bytes) -> str:
    """The encoding a document's bytes are in, whatever its declaration says."""
    if data.startswith(codecs.BOM_UTF8):
        return "UTF-8"
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "UTF-16"
    if data[:2] == b"<\x00":
        return "UTF-16LE"
    if data[:2] == b"\x00<":
        return "UTF-16BE"
    try:
        data.decode("utf-8")
        return "UTF-8"
    except UnicodeDecodeError:
        return "ISO-8859-1"


def _declared(data: bytes) -> str | None:
    m = _DECL.match(data)
    return m.group(4).decode("ascii") if m else None


def recovered_bytes(data: bytes) -> tuple[bytes, str | None]:
    """``data`` with its encoding declaration corrected when the bytes are in another encoding
    (8-bit text declared UTF-16, or UTF-16 declared 8-bit); the note says what was done (None: nothing)."""
    declared = _declared(data)
    if declared is None:
        return data, None
    real = actual_encoding(data)
    dec_16 = declared.upper().replace("-", "").startswith("UTF16")
    real_16 = real.startswith("UTF-16")
    if dec_16 == real_16:
        return data, None
    if real_16:
        return data, None  # a UTF-16 document's declaration is not reached as bytes: expat reads it from the BOM
    fixed = _DECL.sub(lambda m: (m.group(1) or b"") + m.group(2) + m.group(3) + real.encode() + m.group(3), data, 1)
    return fixed, f"the XML declaration says encoding {declared!r} but the bytes are {real}; read as {real}"


def xml_source(path: Path, name: str, warnings: list[str] | None = None):
    """What to hand to a parser for ``path``: the path itself, or the corrected bytes (a file object)
    when the document's encoding declaration is wrong."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError as exc:
        raise RecordError(name, f"cannot read: {exc.strerror or exc}") from None
    _, note = recovered_bytes(head)
    if note is None:
        return str(path)
    fixed, note = recovered_bytes(Path(path).read_bytes())
    if warnings is not None and note:
        warnings.append(f"{name}: {note}")
    return io.BytesIO(fixed)


def _parse(path: Path, name: str, warnings: list[str] | None = None):
    import defusedxml.ElementTree as DET
    from defusedxml import DefusedXmlException
    from xml.etree.ElementTree import ParseError

    try:
        src = xml_source(path, name, warnings)
        if not isinstance(src, str) and src.getbuffer().nbytes == 0:
            raise RecordError(name, "not well-formed XML (an empty file: 0 bytes)")
        return DET.parse(src, forbid_dtd=False, forbid_entities=True, forbid_external=True).getroot()
    except DefusedXmlException as exc:
        raise RecordError(name, f"refused unsafe XML ({type(exc).__name__}: entity declarations and external "
                          "references are not expanded or fetched)") from None
    except ParseError as exc:
        if Path(path).stat().st_size == 0:
            raise RecordError(name, "not well-formed XML (an empty file: 0 bytes)") from None
        raise RecordError(name, f"not well-formed XML ({exc})") from None
    except OSError as exc:
        raise RecordError(name, f"cannot read: {exc.strerror or exc}") from None
