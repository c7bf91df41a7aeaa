"""The index file: one container, no pickle (docs/retrieval.md, "The index file").

Layout (all integers little-endian)::

    8 bytes   magic  b"ECGIDX\\r\\n"  (the CR LF catches a file mangled by a text-mode copy)
    8 bytes   header length H (uint64)
    H bytes   header: UTF-8 JSON (format version, kind, metric, dimension, rows, model, contract,
              provenance, and the list of sections with offset, length and CRC-32)
    ...       sections, each starting on a 64-byte boundary:
              "meta"    an Arrow IPC file: one row per stored vector (record_id, segment, patient_id,
                        dates, labels, other metadata columns), in index order
              "vectors" (exact indexes) row-major float32, rows x dim, memory-mapped when searched
              "faiss"   (approximate indexes) the bytes of faiss.serialize_index

A reader refuses a file whose major format version is newer than its own, a file
shorter than its header says (truncated), and a section whose CRC-32 differs.
"""

from __future__ import annotations

import json
import mmap
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ecgtool.errors import InputError

MAGIC = b"ECGIDX\r\n"
FORMAT_NAME = "ecgtool-index"
FORMAT_VERSION = "1.0"
ALIGN = 64
_CRC_CHUNK = 64 << 20


def _crc(buf) -> int:
    mv = memoryview(buf).cast("B")
    c = 0
    for i in range(0, len(mv), _CRC_CHUNK):
        c = zlib.crc32(mv[i : i + _CRC_CHUNK], c)
    return c & 0xFFFFFFFF


def _pad(n: int) -> int:
    return (-n) % ALIGN


def is_index_file(path: str | os.PathLike) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def write_container(path: str | os.PathLike, header: dict, sections: dict[str, object]) -> None:
    """Write header + sections atomically (a temporary file beside ``path``, then a rename).

    ``sections`` maps a name to a bytes-like object (a C-contiguous numpy array is written
    without a copy)."""
    from ecgtool.io.files import AtomicOutput

    names = list(sections)
    views = {n: memoryview(np.ascontiguousarray(s) if isinstance(s, np.ndarray) else s).cast("B")
             for n, s in sections.items()}
    table = [{"name": n, "length": len(views[n]), "crc32": _crc(views[n])} for n in names]
    hdr = dict(header)
    hdr["format"] = FORMAT_NAME
    hdr["format_version"] = FORMAT_VERSION
    # offsets depend on the header's length, which depends on the offsets' digits: fixed-width offsets
    for entry in table:
        entry["offset"] = 0
    for _ in range(3):
        text = json.dumps(hdr | {"sections": table}).encode()
        pos = len(MAGIC) + 8 + len(text)
        pos += _pad(pos)
        changed = False
        for entry in table:
            if entry["offset"] != pos:
                entry["offset"] = pos
                changed = True
            pos += entry["length"] + _pad(entry["length"])
        if not changed:
            break
    text = json.dumps(hdr | {"sections": table}).encode()
    out = AtomicOutput(path)
    try:
        fh = out.fh
        fh.write(MAGIC)
        fh.write(len(text).to_bytes(8, "little"))
        fh.write(text)
        written = len(MAGIC) + 8 + len(text)
        for entry in table:
            gap = entry["offset"] - written
            if gap < 0:
                raise RuntimeError("index container layout error")
            fh.write(b"\0" * gap)
            fh.write(views[entry["name"]])
            written = entry["offset"] + entry["length"]
        out.commit()
    except BaseException:
        out.discard()
        raise


@dataclass
class Container:
    """An opened index file: its header and its sections as memory-mapped views."""

    path: str
    header: dict
    _mm: mmap.mmap | None
    _fh: object

    def section(self, name: str) -> memoryview | None:
        for entry in self.header["sections"]:
            if entry["name"] == name:
                start = entry["offset"]
                return memoryview(self._mm)[start : start + entry["length"]]
        return None

    def close(self) -> None:
        # views handed out keep the map alive; closing is left to the garbage collector then
        self._fh.close()


def read_container(path: str | os.PathLike, verify: bool = True) -> Container:
    """Open an index file, checking magic, version, size and (``verify``) every section's CRC-32."""
    name = str(path)
    p = Path(path)
    if not p.exists():
        raise InputError(f"{name}: no such index file", "build one with 'ecgtool index EMBEDDINGS -o INDEX'")
    if p.is_dir():
        raise InputError(f"{name}: is a folder, not an index file")
    fh = open(p, "rb")
    try:
        size = os.fstat(fh.fileno()).st_size
        head = fh.read(len(MAGIC) + 8)
        if not head.startswith(MAGIC):
            from ecgtool.io.stream import sniff

            what = sniff(head)
            hint = ("it is a table: build an index from it with 'ecgtool index'" if what
                    else "give a file written by 'ecgtool index'")
            if MAGIC.startswith(head[: len(MAGIC)]) and len(head) < len(MAGIC) + 8:
                raise InputError(f"{name}: index file is truncated ({size} bytes)",
                                 "the file was cut short (an interrupted copy?); rebuild or copy it again")
            raise InputError(f"{name}: not an ecgtool index file (starts with {head[:8]!r})", hint)
        if len(head) < len(MAGIC) + 8:
            raise InputError(f"{name}: index file is truncated ({size} bytes)",
                             "the file was cut short (an interrupted copy?); rebuild or copy it again")
        n = int.from_bytes(head[len(MAGIC):], "little")
        if n > size - len(head):
            raise InputError(f"{name}: index file is truncated (its header needs {n} bytes, "
                             f"{size - len(head)} follow)", "rebuild the index or copy it again")
        try:
            header = json.loads(fh.read(n).decode())
        except (UnicodeDecodeError, ValueError) as exc:
            raise InputError(f"{name}: the index header is corrupt ({exc})", "rebuild the index") from None
        version = str(header.get("format_version", ""))
        try:
            major = int(version.split(".")[0])
        except ValueError:
            raise InputError(f"{name}: unreadable index format version {version!r}") from None
        ours = int(FORMAT_VERSION.split(".")[0])
        if major > ours:
            raise InputError(
                f"{name}: index format {version} is newer than this ecgtool understands ({FORMAT_VERSION})",
                "upgrade ecgtool to read it, or rebuild the index with this version")
        end = max((e["offset"] + e["length"] for e in header.get("sections", [])), default=len(head) + n)
        if size < end:
            raise InputError(f"{name}: index file is truncated ({size} bytes of {end})",
                             "the file was cut short (an interrupted copy?); rebuild or copy it again")
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        cont = Container(name, header, mm, fh)
        if verify:
            for entry in header.get("sections", []):
                if _crc(cont.section(entry["name"])) != entry["crc32"]:
                    raise InputError(f"{name}: section {entry['name']!r} of the index is corrupt (CRC-32 differs)",
                                     "rebuild the index or copy it again")
        return cont
    except BaseException:
        fh.close()
        raise
