"""Leakage warnings: does the evaluation data overlap what the model was pretrained on?

A model card lists its pretraining data as text (``pretraining_data``, e.g.
"PhysioNet/CinC Challenge 2021 (incl. PTB-XL, CPSC 2018, Georgia,
Chapman-Shaoxing, Ningbo)"). The datasets named there are recognised by
name, together with the datasets they contain (the CinC 2021 challenge set
holds PTB-XL, CPSC 2018, Georgia, Chapman-Shaoxing, Ningbo, PTB and INCART).
The datasets of an evaluation table are recognised from what a table carries
about its records: the ``source`` paths and the command lines of its history
(folder names such as ``ptbxl``, ``cinc2017``), the record ids (PTB-XL's
``00001_lr``, CinC 2017's ``A00001``, the CinC 2021 prefixes ``HR``, ``E``,
``JS``, ``Q``/``A`` + 4 digits, ``S``, ``I``) and dataset-specific columns
(PTB-XL's ``strat_fold`` and ``scp_codes``). An overlap is reported as a
warning: the card names a dataset, not the records, so a model that held
out the evaluated records (as the bundled default model held out PTB-XL
fold 10) still gets it, and the user decides.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any, Iterable, Sequence

if TYPE_CHECKING:
    from ecgtool.io.schema import TableMeta

log = logging.getLogger("ecgtool")

# dataset -> regular expressions matching its name in a card's pretraining text
NAMES: dict[str, tuple[str, ...]] = {
    "PTB-XL": (r"ptb[-_ ]?xl",),
    "PTB": (r"\bptb\b(?![-_ ]?xl)", r"ptb diagnostic"),
    "CinC 2017": (r"(?:cinc|challenge)[^0-9]{0,16}2017", r"af classification from a short single lead"),
    "CinC 2021": (r"(?:cinc|challenge)[^0-9]{0,16}2021", r"will two do"),
    "CinC 2020": (r"(?:cinc|challenge)[^0-9]{0,16}2020",),
    "CPSC 2018": (r"cpsc[^0-9]{0,3}2018", r"cpsc[-_ ]?extra"),
    "CPSC 2021": (r"cpsc[^0-9]{0,3}2021",),
    "Georgia": (r"georgia",),
    "Chapman-Shaoxing": (r"chapman", r"shaoxing"),
    "Ningbo": (r"ningbo",),
    "INCART": (r"incart", r"st[-_ ]petersburg"),
    "LUDB": (r"\bludb\b", r"lobachevsky"),
    "MIMIC-IV-ECG": (r"mimic[-_ ]?iv[-_ ]?ecg", r"\bmimic\b"),
    "CODE-15%": (r"code[-_ ]?15",),
    "HEEDB": (r"heedb", r"harvard[-_ ]emory"),
}
# a dataset that holds others (a pretraining on it saw them too)
CONTAINS: dict[str, tuple[str, ...]] = {
    "CinC 2021": ("PTB-XL", "CPSC 2018", "Georgia", "Chapman-Shaoxing", "Ningbo", "PTB", "INCART"),
    "CinC 2020": ("PTB-XL", "CPSC 2018", "Georgia", "PTB", "INCART"),
}
# dataset -> patterns in source paths / history command lines
PATHS: dict[str, tuple[str, ...]] = {
    "PTB-XL": (r"ptb[-_]?xl", r"records(?:100|500)/\d{5}/\d{5}_(?:lr|hr)"),
    "CinC 2017": (r"cinc[-_]?2017", r"training2017", r"challenge[-_]2017", r"af[-_]classification"),
    "CinC 2021": (r"cinc[-_]?2021", r"challenge[-_]2021"),
    "CPSC 2021": (r"cpsc[-_]?2021",),
    "CPSC 2018": (r"cpsc[-_]?2018",),
    "Georgia": (r"georgia",),
    "Chapman-Shaoxing": (r"chapman", r"shaoxing", r"ecg-arrhythmia", r"wfdbrecords"),
    "Ningbo": (r"ningbo",),
    "LUDB": (r"\bludb\b",),
    "MIMIC-IV-ECG": (r"mimic[-_]?iv[-_]?ecg",),
    "CODE-15%": (r"code[-_]?15",),
}
# dataset -> record-id patterns (a dataset is recognised when most ids of the table match)
IDS: dict[str, str] = {
    "PTB-XL": r"^(?:\d{5}_(?:lr|hr)|HR\d{5})$",
    "CinC 2017": r"^A\d{5}$",
    "CPSC 2018": r"^(?:A|Q)\d{4}$",
    "Georgia": r"^E\d{5}$",
    "Chapman-Shaoxing": r"^JS\d{5}$",
    "PTB": r"^S\d{4}$",
    "INCART": r"^I\d{4}$",
}


def card_datasets(pretraining_data: Iterable[str]) -> dict[str, str]:
    """Datasets named (or contained) in a card's pretraining list -> the card's text naming it."""
    found: dict[str, str] = {}
    for text in pretraining_data or ():
        t = str(text).lower()
        for ds, pats in NAMES.items():
            if any(re.search(p, t) for p in pats):
                found.setdefault(ds, str(text))
                for sub in CONTAINS.get(ds, ()):
                    found.setdefault(sub, str(text))
    return found


def _sources_from_strings(strings: Iterable[str]) -> set[str]:
    out: set[str] = set()
    for s in strings:
        t = str(s).lower().replace("\\", "/")
        for ds, pats in PATHS.items():
            if any(re.search(p, t) for p in pats):
                out.add(ds)
    return out


def detect_sources(table=None, meta=None, record_ids: Sequence[str] | None = None,
                   columns: Sequence[str] | None = None, extra_strings: Sequence[str] = ()) -> list[str]:
    """The datasets an evaluation table's records come from (sorted), from its paths, history, ids, columns."""
    strings: list[str] = list(extra_strings)
    cols = list(columns or [])
    if table is not None:
        cols = list(table.column_names)
        if "source" in cols:
            vals = table.column("source").to_pylist()
            step = max(1, len(vals) // 2000)
            strings += [v for v in vals[::step] if v]
        if record_ids is None and "record_id" in cols:
            record_ids = [str(v) for v in table.column("record_id").to_pylist()]
    if meta is not None:
        for h in getattr(meta, "history", None) or []:
            strings.append(str(h.get("command", "") if isinstance(h, dict) else h))
    found = _sources_from_strings(strings)
    if record_ids:
        ids = list(record_ids)
        step = max(1, len(ids) // 5000)
        sample = ids[::step]
        for ds, pat in IDS.items():
            hits = sum(1 for r in sample if re.match(pat, str(r)))
            if hits and hits >= 0.05 * len(sample):
                found.add(ds)
    if {"strat_fold", "scp_codes"} & set(cols):
        found.add("PTB-XL")
    return sorted(found)


def overlaps(pretraining_data: Iterable[str] | None, sources: Iterable[str]) -> list[dict[str, str]]:
    """[{"dataset", "card_text"}] for every evaluation dataset the card's pretraining data names."""
    named = card_datasets(pretraining_data or ())
    return [{"dataset": ds, "card_text": named[ds]} for ds in sorted(set(sources)) if ds in named]


def pretraining_of(info: TableMeta | dict[str, Any] | None) -> tuple[str | None, list[str] | None]:
    """(model name, pretraining data) from a table's metadata (embeddings or predictions): its
    :class:`~ecgtool.io.schema.TableMeta`, or the fields of one as a dict."""
    from ecgtool.io.schema import TableMeta

    meta = info if isinstance(info, TableMeta) else TableMeta(info=dict(info or {}))
    model = meta.model
    if (meta.embedding or {}).get("random_init"):
        return model, []
    data = meta.pretraining_data
    if data is None:
        from ecgtool.models.card import card

        arch = meta.architecture or model
        c = card(str(arch)) if arch else None
        data = list(c.pretraining_data) if c is not None else None
    return model, (list(data) if data is not None else None)


def warn_overlap(model: str | None, pretraining_data: Iterable[str] | None, sources: Iterable[str],
                 where: str) -> list[dict[str, str]]:
    """Log one warning per overlap and return the overlaps (for the report)."""
    found = overlaps(pretraining_data, sources)
    for o in found:
        log.warning("possible leakage: the model card of %s lists %r in its pretraining data, and %s holds %s "
                    "records; unless these records were held out of pretraining, the numbers may be optimistic",
                    model or "the model", o["card_text"], where, o["dataset"])
    return found
