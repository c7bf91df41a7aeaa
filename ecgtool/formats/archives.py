"""Research archive layouts: MIMIC-IV-ECG and CODE-15%.

A layout is recognised from a folder (or, for CODE-15, from an HDF5 file) and turns into a list of
entries — one per ECG, with the archive's own ids — plus the archive's CSV tables, which ``convert``
joins to the records as it does ``--join`` tables (:class:`Layout`).

MIMIC-IV-ECG: a folder holding ``record_list.csv`` (``subject_id, study_id, file_name, ecg_time,
path``). Each row is a WFDB record at ``<folder>/<path>.hea`` (10 s, 500 Hz, 12 leads); its
``record_id`` and ``study_id`` are the study id, its ``patient_id`` the subject id. The folder is not
walked (the tree holds ~800,000 records): the list says what is there, and a listed record whose
files are missing gets its own one-line error. ``machine_measurements.csv`` beside it, when present,
is joined by study id, and its ``report_0`` … ``report_17`` statements are also joined into
``diagnosis`` ("; "), for ``ecgtool label``'s text labeler.

CODE-15%: HDF5 files (``exams_part0.hdf5`` …) each holding ``tracings`` [N, 4096, 12] (float32, 400
Hz, leads I, II, III, aVR, aVL, aVF, V1–V6) and ``exam_id`` [N], with ``exams.csv`` (``exam_id, age,
is_male, ..., patient_id, trace_file``) beside them. A folder with ``exams.csv`` and HDF5 files, or
one HDF5 file, is read one exam at a time (memory stays bounded by the batch, whatever N): ``record_id``
and ``study_id`` are the exam id, ``patient_id`` comes from ``exams.csv``, ``sex`` from ``is_male``.
Rows with exam id 0 (the zero-filled rows that close each part file) are skipped, and said so. The
recordings (7–10 s) are zero-padded to 4096 samples on both sides: the padding (leading and trailing
samples that are exactly 0 on all 12 leads) is cut off. Values are taken as mV, as the PhysioNet/CinC
Challenge 2025 conversion of CODE-15% writes them (the dataset's own description of the scale is
ambiguous: "1e-4 V ... multiplied by 1000 to obtain V"). Reading HDF5 needs h5py (the ``hdf5`` extra).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ecgtool.errors import EcgtoolError, InputError, RecordError
from ecgtool.formats import RawRecord

log = logging.getLogger("ecgtool")

CODE15_LEADS = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
CODE15_FS = 400.0
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
HDF5_EXTENSIONS = {".hdf5", ".h5", ".hdf"}


@dataclass
class Entry:
    path: str
    record_id: str
    fmt: str
    part: int | None = None


@dataclass
class Layout:
    """A recognised archive: its records and the tables to join to them (name, Arrow table, key columns)."""

    name: str
    root: Path
    entries: list[Entry] = field(default_factory=list)
    joins: list[tuple[str, Any, list[str]]] = field(default_factory=list)


def _h5py():
    try:
        import h5py
    except ImportError:
        raise EcgtoolError("reading CODE-15 HDF5 files needs h5py", "pip install 'ecgtool[hdf5]'") from None
    return h5py


def _read_csv(path: Path):
    import pyarrow.csv as pcsv

    import pyarrow as pa

    try:
        t = pcsv.read_csv(str(path))
    except Exception as exc:  # pyarrow raises ArrowInvalid and OSError subclasses
        raise InputError(f"{path}: cannot read the CSV ({exc})") from None
    for k, f in enumerate(t.schema):  # an all-empty column is text, not Arrow's null type
        if pa.types.is_null(f.type):
            t = t.set_column(k, f.name, t.column(k).cast(pa.string()))
    return t


def _as_string(table, column: str, name: str | None = None):
    import pyarrow as pa
    import pyarrow.compute as pc

    col = table.column(column)
    if pa.types.is_floating(col.type):
        col = pc.cast(col, pa.int64(), safe=False)
    col = pc.cast(col, pa.string())
    name = name or column
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, col)
    return table.append_column(name, col)


def is_mimic(folder: Path) -> bool:
    return (folder / "record_list.csv").is_file()


def is_code15(folder: Path) -> bool:
    return (folder / "exams.csv").is_file() and any(
        p.suffix.lower() in HDF5_EXTENSIONS for p in folder.iterdir() if p.is_file())


def mimic_layout(folder: Path) -> Layout:
    import pyarrow as pa
    import pyarrow.compute as pc

    rl = _read_csv(folder / "record_list.csv")
    missing = [c for c in ("study_id", "path") if c not in rl.column_names]
    if missing:
        raise InputError(f"{folder / 'record_list.csv'}: not a MIMIC-IV-ECG record list (no {', '.join(missing)} "
                         "column)")
    lay = Layout("MIMIC-IV-ECG", folder)
    studies = pc.cast(rl.column("study_id"), pa.string()).to_pylist()
    for sid, rel in zip(studies, rl.column("path").to_pylist()):
        if sid is None or rel is None:
            continue
        rel = str(rel).strip().strip("/")
        if rel.lower().endswith(".hea"):
            rel = rel[:-4]
        lay.entries.append(Entry(str(folder / (rel + ".hea")), sid, "wfdb"))
    rl = _as_string(rl, "study_id")
    if "subject_id" in rl.column_names:
        rl = _as_string(rl, "subject_id", "patient_id")
    lay.joins.append(("record_list.csv", rl, ["study_id"]))
    mm_path = folder / "machine_measurements.csv"
    if mm_path.is_file():
        mm = _read_csv(mm_path)
        if "study_id" in mm.column_names:
            mm = _as_string(mm, "study_id")
            reports = [c for c in mm.column_names if c.startswith("report_")]
            if reports:
                rows = zip(*(mm.column(c).to_pylist() for c in reports))
                text = ["; ".join(str(x).strip() for x in row if x is not None and str(x).strip()) or None
                        for row in rows]
                mm = mm.append_column("diagnosis", pa.array(text, type=pa.string()))
            lay.joins.append(("machine_measurements.csv", mm, ["study_id"]))
        else:
            log.warning("%s has no study_id column; not joined", mm_path)
    return lay


def code15_layout(files: list[Path], exams: Path | None) -> Layout:
    import pyarrow as pa

    h5py = _h5py()
    root = files[0].parent
    lay = Layout("CODE-15", root)
    padding = 0
    for f in files:
        try:
            with h5py.File(f, "r") as h:
                if "tracings" not in h:
                    raise InputError(f"{f}: an HDF5 file without a 'tracings' dataset is not a CODE-15 part file")
                n = h["tracings"].shape[0]
                ids = np.asarray(h["exam_id"][:]).astype(np.int64) if "exam_id" in h else None
        except OSError:
            lay.entries.append(Entry(str(f), f.stem, "code15", None))  # one record that says why
            continue
        if ids is not None and len(ids) != n:
            raise InputError(f"{f}: 'exam_id' has {len(ids)} entries, 'tracings' {n} rows")
        for i in range(n):
            if ids is not None and ids[i] == 0:
                padding += 1
                continue
            rid = str(int(ids[i])) if ids is not None else f"{f.stem}#{i}"
            lay.entries.append(Entry(str(f), rid, "code15", i))
    if padding:
        log.info("CODE-15: skipped %d rows with exam_id 0 (the zero-filled rows closing part files)", padding)
    if exams is not None:
        t = _read_csv(exams)
        if "exam_id" not in t.column_names:
            raise InputError(f"{exams}: not a CODE-15 exams table (no exam_id column)")
        t = _as_string(t, "exam_id")
        t = t.append_column("study_id", t.column("exam_id"))
        if "patient_id" in t.column_names:
            t = _as_string(t, "patient_id")
        if "is_male" in t.column_names:
            vals = t.column("is_male").to_pylist()
            sex = [None if v is None else ("M" if str(v).strip().lower() in ("true", "1", "1.0") else "F")
                   for v in vals]
            t = t.append_column("sex", pa.array(sex, type=pa.string()))
        lay.joins.append((exams.name, t, ["exam_id"]))
    else:
        log.warning("CODE-15: no exams.csv beside %s; records carry no patient id or labels", files[0])
    return lay


def folder_layout(folder: Path) -> Layout | None:
    """The archive layout of a folder, or None when it is an ordinary folder of files."""
    if is_mimic(folder):
        return mimic_layout(folder)
    if is_code15(folder):
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in HDF5_EXTENSIONS)
        return code15_layout(files, folder / "exams.csv")
    return None


def readable_hdf5(path: Path) -> bool:
    """Whether h5py opens the file (a truncated or damaged one is then reported as one record)."""
    h5py = _h5py()
    try:
        with h5py.File(path, "r"):
            return True
    except OSError:
        return False


def file_layout(path: Path) -> Layout:
    """A CODE-15 HDF5 file given by name (``exams.csv`` beside it is joined when present)."""
    exams = path.parent / "exams.csv"
    return code15_layout([path], exams if exams.is_file() else None)


# --------------------------------------------------------------------------- reading

_OPEN: dict[str, Any] = {}


def _dataset(path: str, name: str):
    key = os.path.abspath(path)
    h = _OPEN.get(key)
    if h is None:
        for old in list(_OPEN.values()):
            try:
                old.close()
            except Exception:
                pass
        _OPEN.clear()
        try:
            h = _h5py().File(path, "r")
        except OSError as exc:
            raise RecordError(name, f"cannot read the HDF5 file {path} ({exc})") from None
        _OPEN[key] = h
    if "tracings" not in h:
        raise RecordError(name, f"{path}: no 'tracings' dataset (not a CODE-15 part file)")
    return h["tracings"]


def read_code15(path: str, part: int | None = None, **_options) -> list[RawRecord]:
    """One exam (row ``part``) of a CODE-15 part file; every exam when ``part`` is None (small files only)."""
    name = Path(path).stem
    ds = _dataset(path, name)
    if ds.ndim != 3 or ds.shape[2] != 12:
        raise RecordError(name, f"CODE-15 'tracings' has shape {ds.shape}, not [N, samples, 12]")
    if part is None and ds.shape[0] > 64:
        raise RecordError(name, f"{path} holds {ds.shape[0]} exams", "convert reads a CODE-15 file exam by exam: "
                          "give the file or its folder to ecgtool convert")
    rows = [part] if part is not None else list(range(ds.shape[0]))
    out = []
    for i in rows:
        rid = f"{name}#{i}"
        try:
            x = np.asarray(ds[i], dtype=np.float32)
        except (OSError, ValueError, IndexError) as exc:
            raise RecordError(rid, f"cannot read row {i} of {path} ({exc})") from None
        nonzero = np.flatnonzero(np.any(x != 0, axis=1))
        if nonzero.size == 0:
            raise RecordError(rid, f"row {i} of {path} is all zeros (no ECG)")
        x = x[nonzero[0]: nonzero[-1] + 1]
        out.append(RawRecord(name=name, fs=CODE15_FS, leads=list(CODE15_LEADS), signal=np.ascontiguousarray(x.T),
                             source=f"{path}#{i}", units=["mV"] * 12))
    return out
