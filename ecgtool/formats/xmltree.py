"""XML helpers the XML readers share (HL7 aECG, Philips Sierra): safe parsing, namespace-free tag lookup."""

from __future__ import annotations

from pathlib import Path

from ecgtool.errors import RecordError


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


def _parse(path: Path, name: str):
    import defusedxml.ElementTree as DET
    from defusedxml import DefusedXmlException
    from xml.etree.ElementTree import ParseError

    try:
        return DET.parse(str(path), forbid_dtd=False, forbid_entities=True, forbid_external=True).getroot()
    except DefusedXmlException as exc:
        raise RecordError(name, f"refused unsafe XML ({type(exc).__name__}: entity declarations and external "
                          "references are not expanded or fetched)") from None
    except ParseError as exc:
        raise RecordError(name, f"not well-formed XML ({exc})") from None
    except OSError as exc:
        raise RecordError(name, f"cannot read: {exc.strerror or exc}") from None
