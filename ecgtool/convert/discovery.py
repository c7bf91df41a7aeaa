"""Discovery for ``ecgtool convert``: inputs (files, folders scanned recursively, glob patterns,
PhysioNet ``RECORDS`` files, paths read from stdin) -> an ordered list of :class:`Item` (path,
unique record id, sniffed format) in a :class:`Discovery`, with the archive layouts met.

:func:`discover` is the entry; :func:`_assign_ids` gives the record ids (file names, or paths
relative to the inputs' common folder where names clash)."""

from __future__ import annotations

import glob
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from ecgtool.errors import EcgtoolError, InputError, UsageError
from ecgtool.formats import ARRAY_EXTENSIONS, RECORD_EXTENSIONS, SIGNAL_EXTENSIONS

_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class Item:
    path: str
    record_id: str
    fmt: str | None = None  # the reader's format, when discovery sniffed it
    part: int | None = None  # the record's index inside a container file (a CODE-15 exam)


@dataclass
class Discovery:
    items: list[Item]
    ignored: int = 0  # files in scanned folders that are not records (signal, annotation, label files)
    segments: int = 0  # segment/layout headers folded into multi-segment records
    layouts: list = field(default_factory=list)  # archive layouts found (ecgtool.formats.archives.Layout)

    @property
    def formats(self) -> set[str]:
        return {it.fmt for it in self.items if it.fmt}


class _Found:
    """What the discovery walk collects: plain files (with their sniffed format) and archive layouts."""

    def __init__(self):
        self.paths: list[Path] = []
        self.fmts: dict[str, str | None] = {}
        self.layouts: list = []
        self.order: list = []  # Path or Layout, in input order
        self.ignored = 0

    def add(self, p: Path, fmt: str | None = None) -> None:
        self.paths.append(p)
        if fmt is not None:
            self.fmts[str(p)] = fmt
        self.order.append(p)

    def add_layout(self, lay) -> None:
        self.layouts.append(lay)
        self.order.append(lay)


def _scan(folder: Path, out: _Found) -> None:
    from ecgtool.formats import scan_format
    from ecgtool.formats.archives import file_layout, folder_layout

    for root, dirs, files in os.walk(folder):
        dirs.sort()
        lay = folder_layout(Path(root))
        if lay is not None:
            out.add_layout(lay)
            dirs[:] = []  # the archive's own list says what is in its tree
            continue
        for f in sorted(files):
            p = Path(root) / f
            fmt = scan_format(p)
            if fmt == "code15":
                _hdf5(p, out, file_layout)
            elif fmt is not None:
                out.add(p, fmt)
            elif p.suffix.lower() not in SIGNAL_EXTENSIONS:
                out.ignored += 1


def _records_file(path: Path, out: _Found) -> None:
    base = path.parent
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    for line in lines:
        name = line.strip()
        if not name or name.startswith("#"):
            continue
        p = base / name
        if p.is_dir():
            _scan(p, out)
        elif p.suffix.lower() in RECORD_EXTENSIONS and p.exists():
            out.add(p)
        else:
            out.add(Path(str(p) + ".hea"))  # a missing header becomes a per-record error


def _file(p: Path, out: _Found) -> None:
    """A file named explicitly: a record whatever its content (the reader says why it is not one)."""
    from ecgtool.formats import sniff_format
    from ecgtool.formats.archives import file_layout

    try:
        fmt = sniff_format(p)
    except EcgtoolError:
        fmt = None
    if fmt == "code15":
        _hdf5(p, out, file_layout)
    else:
        out.add(p, fmt)


def _hdf5(p: Path, out: _Found, file_layout) -> None:
    """A CODE-15 part file: one entry per exam; a file that cannot be opened is one record that says why."""
    from ecgtool.formats.archives import readable_hdf5

    if readable_hdf5(p):
        out.add_layout(file_layout(p))
    else:
        out.add(p, "code15")


def _one(arg: str, out: _Found) -> None:
    from ecgtool.formats import scan_format

    p = Path(arg)
    if p.is_dir():
        _scan(p, out)
    elif p.is_file():
        if p.name == "RECORDS":
            _records_file(p, out)
        else:
            _file(p, out)
    elif Path(arg + ".hea").is_file():
        out.add(Path(arg + ".hea"), "wfdb")
    elif _GLOB_CHARS & set(arg):
        matches = sorted(glob.glob(arg, recursive=True))
        if not matches:
            raise InputError(f"{arg}: the pattern matches no file")
        for m in matches:
            mp = Path(m)
            if mp.is_dir():
                _scan(mp, out)
            elif mp.name == "RECORDS" or mp.suffix.lower() in ARRAY_EXTENSIONS or scan_format(mp) is not None:
                _one(m, out)
            else:
                out.ignored += 1
    else:
        raise InputError(f"{arg}: no such file or folder")


def discover(inputs: Sequence[str], stdin: Iterable[str] | None = None) -> Discovery:
    """Inputs -> ordered, de-duplicated records with unique ids."""
    if not inputs:
        raise UsageError("no input given", "give files, folders, glob patterns, a RECORDS file, or '-' for stdin")
    found = _Found()
    for arg in inputs:
        if arg == "-":
            lines = stdin if stdin is not None else sys.stdin
            for line in lines:
                line = line.strip()
                if line and line != "-":
                    _one(line, found)
        else:
            _one(arg, found)
    paths = found.paths
    # multi-segment records: their segment and layout headers are not records of their own
    parts: set[str] = set()
    from ecgtool.formats.wfdb import multi_segment_parts

    for p in paths:
        if p.suffix.lower() == ".hea":
            parts.update(os.path.abspath(x) for x in multi_segment_parts(p))
    seen: set[str] = set()
    unique: list[Path] = []
    folded = 0
    for p in paths:
        key = os.path.abspath(p)
        if key in seen:
            continue
        seen.add(key)
        if key in parts:
            folded += 1
            continue
        unique.append(p)
    plain = iter(_assign_ids(unique, found.fmts))
    keep = {str(p) for p in unique}
    items: list[Item] = []
    used: set[str] = set()
    for entry in found.order:
        if isinstance(entry, Path):
            if str(entry) in keep:
                keep.discard(str(entry))
                items.append(next(plain))
            continue
        for e in entry.entries:
            items.append(Item(e.path, e.record_id, e.fmt, e.part))
    # archive ids may meet file ids: keep every id unique
    out: list[Item] = []
    for it in items:
        rid, k = it.record_id, 2
        while rid in used:
            rid = f"{it.record_id}#{k}"
            k += 1
        used.add(rid)
        out.append(it if rid == it.record_id else Item(it.path, rid, it.fmt, it.part))
    return Discovery(items=out, ignored=found.ignored, segments=folded, layouts=found.layouts)


def _quiet_format(p: Path) -> str | None:
    """The sniffed format of a path (None when it cannot be read: the reader says why, per record)."""
    from ecgtool.formats import sniff_format

    try:
        return sniff_format(p) if p.is_file() else None
    except EcgtoolError:
        return None


def _assign_ids(paths: list[Path], fmts: dict[str, str | None] | None = None) -> list[Item]:
    fmts = dict(fmts or {})
    names = [p.stem if p.suffix else p.name for p in paths]
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    clashing = [p for p, n in zip(paths, names) if counts[n] > 1]
    root = None
    if clashing:
        try:
            root = os.path.commonpath([os.path.abspath(p.parent) for p in clashing])
        except ValueError:
            root = None
    ids: list[str] = []
    used: set[str] = set()
    for p in paths:
        if str(p) not in fmts:
            fmts[str(p)] = _quiet_format(p)
    for p, n in zip(paths, names):
        rid = n
        if counts[n] > 1:
            full = os.path.abspath(p.with_suffix("") if p.suffix else p)
            rid = os.path.relpath(full, root).replace(os.sep, "/") if root else full
        base, k = rid, 2
        while rid in used:
            rid = f"{base}#{k}"
            k += 1
        used.add(rid)
        ids.append(rid)
    return [Item(str(p), rid, fmts.get(str(p))) for p, rid in zip(paths, ids)]
