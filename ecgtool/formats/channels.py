"""Channels of a multi-channel recording (EDF, MFER) -> records: ECG choice, units, sampling-rate groups.

A recording whose channels run at different rates (ECG at 250 Hz, pressures at 125 Hz; ECG at 256 Hz,
accelerometers at 21.33 Hz) becomes one record per rate group, each with its own ``fs``: the group
holding the ECG keeps the file's record id (or the first group, when none holds ECG), the others get
``@<rate>Hz`` appended to it. With ``--fs HZ`` every channel is resampled (polyphase, as ``preprocess``
does) to that rate instead and the file gives one record.

Voltages are scaled to mV; other channels (kept with ``--all-channels``) keep their values and their
unit in the ``units`` column.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ecgtool.formats import RawRecord

VOLTS = {"v": 1e3, "mv": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "nv": 1e-6, "microvolt": 1e-3,
         "microvolts": 1e-3, "millivolt": 1.0, "millivolts": 1.0}
_ECG_LABEL = re.compile(r"\b(ECG|EKG|ELECTROCARDIO\w*)", re.I)
_EEG_LIKE = re.compile(r"^C\d$", re.I)


def volt_scale(unit: str) -> float | None:
    """Factor from ``unit`` to mV (None when the unit is not a voltage)."""
    return VOLTS.get(unit.strip().lower().replace(" ", ""))


def lead_label(label: str) -> str:
    """An ECG channel's lead name from its label: 'ECG V2' -> 'V2', 'EKG II' -> 'II', 'ECG ECG1' -> 'ECG1'."""
    s = label.strip()
    m = re.match(r"^(?:ECG|EKG)[\s_\-:]+(.+)$", s, re.I)
    return m.group(1).strip() if m else s


def is_ecg_label(label: str, transducer: str, unit: str) -> bool:
    """An ECG channel: a voltage whose label names ECG or an ECG lead, or whose transducer says ECG."""
    from ecgtool.signal.leads import KNOWN, normalize_lead

    if volt_scale(unit) is None:
        return False
    name = label.strip()
    # C3, C4 ... are EEG electrodes of the 10-20 system here, not the chest leads some ECG exports call C1-C6
    if _ECG_LABEL.search(name) or (normalize_lead(name) in KNOWN and not _EEG_LIKE.match(name)):
        return True
    return bool(_ECG_LABEL.search(transducer or ""))


def channel_name(label: str, ecg: bool, unit: str) -> str:
    """The lead name of a channel: an ECG channel's lead (``lead_label``); another channel keeps its label,
    with its unit added where the bare label would read as an ECG lead name (an EEG ``C3`` is not V3)."""
    from ecgtool.signal.leads import KNOWN, normalize_lead

    if ecg:
        return lead_label(label)
    name = label.strip()
    return f"{name} ({unit or 'non-ECG'})" if normalize_lead(name) in KNOWN else name


@dataclass
class Channel:
    label: str
    fs: float
    data: np.ndarray  # physical values in ``unit``
    unit: str
    ecg: bool
    out_of_range: int = 0  # samples outside the declared range


def to_records(name: str, source: str, channels: list[Channel], meta: dict, warnings: list[str],
               fs: float | None = None) -> list[RawRecord]:
    """Records from the chosen channels, one per sampling rate (or one, resampled to ``fs``)."""
    from ecgtool.signal.resample import resample

    prepared = []
    for ch in channels:
        scale = volt_scale(ch.unit)
        x = np.asarray(ch.data, dtype=np.float64)
        if scale is not None:
            x = x * scale
        unit = "mV" if scale is not None else ch.unit
        prepared.append((ch, x, unit))
    if fs:
        for k, (ch, x, unit) in enumerate(prepared):
            if abs(ch.fs - fs) > 1e-9 * fs:
                prepared[k] = (Channel(ch.label, fs, x, unit, ch.ecg, ch.out_of_range), resample(x, ch.fs, fs), unit)
        groups = {round(fs, 6): prepared}
    else:
        groups: dict[float, list] = {}
        for item in prepared:
            groups.setdefault(round(item[0].fs, 6), []).append(item)
    if not groups:
        return []
    main = next((r for r, g in groups.items() if any(ch.ecg for ch, _, _ in g)), next(iter(groups)))
    out = []
    for rate, group in groups.items():
        arrays = [x.astype(np.float32) for _, x, _ in group]
        gmeta = dict(meta)
        if "q_out_of_range" in gmeta:
            gmeta["q_out_of_range"] = sum(ch.out_of_range for ch, _, _ in group)
        sig = np.stack(arrays) if len({len(a) for a in arrays}) == 1 else arrays
        out.append(RawRecord(name=name, fs=float(group[0][0].fs if not fs else fs),
                             leads=[channel_name(ch.label, ch.ecg, u) for ch, _, u in group],
                             signal=sig, source=source, units=[u for _, _, u in group], meta=gmeta,
                             warnings=list(warnings) if rate == main else [],
                             id_suffix=None if rate == main else f"@{rate:g}Hz"))
    out.sort(key=lambda r: r.id_suffix is not None)
    return out
